"""A recipe's whole training conversation on synthetic data, for providers and red-team tests.

`run_synthetic` drives a sandboxed recipe exactly as the training enclave does (SETUP,
SOURCE, DECLARE, PLAN, DATA, READY, RUN/TICK/CHECKPOINT and PREDICT per epoch, FINISH,
MODEL, SHUTDOWN) but on random records of a given schema, so nothing confidential is
involved. In a dry run the child's stdout and stderr, tracebacks included, go to the
provider.

`python -m chiron.enclave.sandbox.dryrun` is the process `chiron recipe dry-run` starts
(clients reach enclave code only through a process): it reports on stdout with the
framing of the enclave boundary, EVENT frames for log output and progress, then one
RESULT or FAILURE.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chiron.core.errors import ChironError, JobFailed
from chiron.core.fileio import read_input_file
from chiron.core.framing import write_frame
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.recipe_protocol import (
    FromChild,
    ToChild,
    TrainingPlan,
    encode_json,
    holdout_split,
)
from chiron.core.schema import DatasetSchema
from chiron.enclave.boundary import EVENT, FAILURE, RESULT, pack_message
from chiron.enclave.escrow import check_weights
from chiron.enclave.recipe_session import (
    predict_logits,
    receive_declaration,
    share_training_data,
)
from chiron.enclave.sandbox.startup import SandboxLimits
from chiron.enclave.sandbox.supervisor import Sandbox

DEFAULT_RECORDS = 256


@dataclass(frozen=True)
class SyntheticRunReport:
    """What a provider learns from a successful run on synthetic data."""

    model_nbytes: int
    checkpoint_nbytes: int
    epochs: int
    batch_size: int
    steps: int
    train_records: int
    holdout_records: int
    startup_seconds: float
    seconds: float


def synthetic_records(
    schema: DatasetSchema, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random records and labels of `schema` (uniform bytes or standard normal floats)."""
    generator = np.random.Generator(np.random.PCG64(seed))
    shape = (count, *schema.input_shape)
    x: np.ndarray
    if schema.dtype == "uint8":
        x = generator.integers(0, 256, size=shape, dtype=np.uint8)
    else:
        x = generator.standard_normal(size=shape, dtype=np.float32)
    y = generator.integers(0, schema.num_classes, size=count, dtype=np.int64)
    return x, y


def run_synthetic(
    source: bytes,
    *,
    filename: str,
    schema: DatasetSchema,
    records: int = DEFAULT_RECORDS,
    epochs: int | None = 1,
    seed: int = 0,
    limits: SandboxLimits | None = None,
    dry_run: bool = True,
    output: Callable[[bytes], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    entry: str = "chiron.recipes.runtime",
) -> SyntheticRunReport:
    """Train `source` in a sandbox on `records` synthetic records; raise SandboxFailure.

    `epochs` overrides the recipe's own (None keeps it). With `dry_run` the child's
    output goes to `output`; without, it is discarded as in a real job.
    """
    started = time.monotonic()
    x, y = synthetic_records(schema, records, seed)
    train_index, holdout_index = holdout_split(records, seed)
    x_holdout = x[holdout_index]
    with Sandbox.spawn(
        limits=limits or SandboxLimits(), entry=entry, dry_run=dry_run, output=output
    ) as sandbox:
        declaration = receive_declaration(
            sandbox,
            mode="dryrun" if dry_run else "train",
            schema=schema,
            recipe_name=filename,
            recipe_source=source,
            overrides={"epochs": epochs},
        )
        plan = TrainingPlan.fixed(
            num_train=len(train_index),
            batch_size=declaration.batch_size,
            epochs=declaration.epochs,
            seed=seed,
            checkpoint_every=-(-len(train_index) // declaration.batch_size),
        )
        sandbox.send(ToChild.PLAN, encode_json(plan.to_dict()))
        share_training_data(sandbox, x, y, schema, train_index)
        sandbox.expect(FromChild.READY, size=0)
        step = 0
        for epoch in range(1, plan.epochs + 1):
            until = epoch * plan.steps_per_epoch
            sandbox.send(ToChild.RUN, encode_json({"until_step": until, "checkpoint": True}))
            while step < until:
                sandbox.expect(FromChild.TICK, size=0)
                step += 1
                if on_progress is not None:
                    on_progress(step, plan.total_steps)
            sandbox.expect(FromChild.CHECKPOINT, size=declaration.checkpoint_nbytes)
            predict_logits(sandbox, x_holdout, schema, declaration.num_outputs)
        sandbox.send(ToChild.FINISH)
        check_weights(sandbox.expect(FromChild.MODEL, size=declaration.model_nbytes))
        sandbox.end()
    return SyntheticRunReport(
        model_nbytes=declaration.model_nbytes,
        checkpoint_nbytes=declaration.checkpoint_nbytes,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        steps=plan.total_steps,
        train_records=len(train_index),
        holdout_records=len(x_holdout),
        startup_seconds=sandbox.startup_seconds,
        seconds=time.monotonic() - started,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chiron-dry-run")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--shape", required=True, help="comma-separated, e.g. 1,28,28")
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    # The report stream is private: a stray print here would corrupt its framing.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    lock = threading.Lock()

    def emit(kind: int, message: dict[str, object]) -> None:
        with lock:
            write_frame(out_fd, kind, pack_message(message))

    try:
        schema = DatasetSchema(
            input_shape=tuple(int(d) for d in options.shape.split(",")),
            dtype=options.dtype,
            num_classes=options.classes,
        )
        report = run_synthetic(
            read_input_file(options.recipe, what="recipe", limit=MAX_RECIPE_BYTES),
            filename=Path(options.recipe).name,
            schema=schema,
            records=options.records,
            epochs=options.epochs,
            seed=options.seed,
            output=lambda chunk: emit(EVENT, {"event": "log", "data": chunk}),
            on_progress=lambda step, total: emit(
                EVENT, {"event": "progress", "step": step, "total": total}
            ),
        )
    except JobFailed as exc:
        emit(FAILURE, {"error": "JobFailed", "message": str(exc), "reason_class": exc.reason_class})
    except ChironError as exc:
        emit(FAILURE, {"error": type(exc).__name__, "message": str(exc), "reason_class": None})
    else:
        emit(RESULT, asdict(report))


if __name__ == "__main__":
    main()
