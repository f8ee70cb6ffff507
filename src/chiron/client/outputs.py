"""What a trained model is written as: the escrowed model with its receipt and report.

`chiron train`, `chiron service jobs resume` and the SDK's `TrainingRun.save` write
through here, so a model file on disk always has its receipt beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chiron.client import plots
from chiron.client.training import TrainOutcome
from chiron.core.errors import InputError
from chiron.core.fileio import atomic_write


def output_paths(model_path: Path) -> dict[str, Path]:
    """What a trained model is written with: `model.chm` → `model.receipt.json`, ..."""
    stem = model_path.with_suffix("") if model_path.suffix == ".chm" else model_path
    return {
        "receipt": Path(f"{stem}.receipt.json"),
        "report": Path(f"{stem}.report.json"),
        "curve": Path(f"{stem}.curve.png"),
        "confusion": Path(f"{stem}.confusion.png"),
    }


def write_training_outputs(
    out: Path,
    *,
    model: bytes,
    receipt: bytes,
    report: dict[str, Any],
    overwrite: bool,
    with_plots: bool,
) -> dict[str, Path]:
    """Write a model with its receipt and report (and plots).

    Each file is written atomically, the receipt and report before the model, so a model
    file on disk always has its receipt beside it; the plots come after it, so a plot
    that cannot be drawn never costs the trained model. Without `overwrite`, nothing is
    written if any exists.
    """
    paths = output_paths(out)
    if not with_plots:
        paths = {name: paths[name] for name in ("receipt", "report")}
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: directory {out.parent} does not exist")
    if not overwrite:
        for path in (out, *paths.values()):
            if path.exists():
                raise InputError(f"refusing to overwrite existing file {path}")
    atomic_write(paths["receipt"], receipt, overwrite=overwrite)
    atomic_write(
        paths["report"], (json.dumps(report, indent=2) + "\n").encode(), overwrite=overwrite
    )
    atomic_write(out, model, overwrite=overwrite)
    if with_plots:
        plots.training_curve(report["epoch_accuracy"], paths["curve"], title="held-out accuracy")
        plots.confusion_matrix(
            report["confusion_matrix"],
            report["class_names"],
            paths["confusion"],
            title="held-out confusion matrix",
        )
    return paths


def check_destination(out: Path, *, force: bool) -> None:
    """Before any training: refuse a model file that exists (without --force) or has no folder."""
    if out.exists() and not force:
        raise InputError(f"{out} already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: directory {out.parent} does not exist")


def save_trained(out: Path, outcome: TrainOutcome) -> dict[str, Any]:
    """Write a verified result with its plots; return the summary `--json` prints.

    What is there is replaced: `check_destination` settled --force before training.
    """
    report = outcome.report
    paths = write_training_outputs(
        out,
        model=outcome.model,
        receipt=outcome.receipt,
        report=report,
        overwrite=True,
        with_plots=True,
    )
    return {
        "job": outcome.manifest.manifest.job_id,
        "model": str(out),
        "model_id": report["model_id"],
        "holdout_accuracy": report["final_holdout_accuracy"],
        "epoch_accuracy": report["epoch_accuracy"],
        "resumed_from_step": report["resumed_from_step"],
        **{name: str(path) for name, path in paths.items()},
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary of `save_trained` for people."""
    lines = [
        f"model     {summary['model']} (escrowed: needs both the owner's and the provider's share)",
        f"held-out accuracy {summary['holdout_accuracy']:.4f}",
    ]
    if summary["resumed_from_step"]:
        lines.append(f"resumed from step {summary['resumed_from_step']}")
    names = [name for name in output_paths(Path(summary["model"])) if name in summary]
    return lines + [f"{name:<9} {summary[name]}" for name in names]
