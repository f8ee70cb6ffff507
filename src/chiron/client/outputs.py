"""What a trained model is written as: the escrowed model with its receipt and report.

`chiron train`, `chiron service jobs resume` and the SDK's `TrainingRun.save` write
through here, so a model file on disk always has its receipt beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chiron.client import plots
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
    """Write a model with its receipt and report (and plots); the model file goes last.

    Each file is written atomically, and the model last, so a model file on disk always
    has its receipt beside it. Without `overwrite`, nothing is written if any exists.
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
    if with_plots:
        plots.training_curve(report["epoch_accuracy"], paths["curve"], title="held-out accuracy")
        plots.confusion_matrix(
            report["confusion_matrix"],
            report["class_names"],
            paths["confusion"],
            title="held-out confusion matrix",
        )
    atomic_write(out, model, overwrite=overwrite)
    return paths
