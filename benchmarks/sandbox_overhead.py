"""Sandbox overhead: one recipe trained on the same data in the sandbox and in a plain process.

Two measurements, in one invocation, on the same synthetic records, plan, seed and
thread count:

- whole run (the figure that counts): the wall time of a complete job, start-up and
  first epoch included. Sandbox: `run_synthetic`, the enclave's conversation with a
  freshly spawned, confined child (namespaces, overlay, Landlock, rlimits, seccomp,
  warm-up), from spawn until the child has sent the model and exited. Plain: a fresh
  interpreter running this file with `--plain`, which imports torch and the SDK, loads
  the recipe and does the same work in process (every epoch, a checkpoint and
  predictions on the held-out records after each), timed from launch to exit. The
  runs alternate, plain first, `--repeats` times; the ratio is the median of the
  pairs' ratios (goal <= 1.05).
- per epoch: the sandboxed child and an in-process `TrainingRun`, epoch by epoch in
  turn (so a change in the machine's load affects both alike); an epoch runs from its
  first step to its last, scaled to all its steps.

    .venv/bin/python benchmarks/sandbox_overhead.py [--recipe examples/recipes/cnn.py]
        [--records 6000] [--epochs 3] [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from chiron.core.recipe_protocol import TrainingPlan, holdout_split
from chiron.core.schema import DatasetSchema
from chiron.enclave.sandbox import SandboxLimits
from chiron.enclave.sandbox.dryrun import run_synthetic, synthetic_records
from chiron.recipes.loop import RecordsInMemory, TrainingRun, declare
from chiron.recipes.sdk import load_recipe

REPO = Path(__file__).resolve().parents[1]
SEED = 0
SCHEMA = DatasetSchema((1, 28, 28), "uint8", 10)


def epoch_times(step_times: list[float], steps_per_epoch: int) -> list[float]:
    """Per epoch: first-to-last step time, scaled to the epoch's number of steps."""
    times = []
    for start in range(0, len(step_times), steps_per_epoch):
        epoch = step_times[start : start + steps_per_epoch]
        times.append((epoch[-1] - epoch[0]) * len(epoch) / (len(epoch) - 1))
    return times


def plain_job(recipe_path: Path, records: int, epochs: int) -> None:
    """What the sandboxed job does, in this process: the plain side of the whole run."""
    source = recipe_path.read_bytes()
    x, y = synthetic_records(SCHEMA, records, SEED)
    train_index, holdout_index = holdout_split(records, SEED)
    recipe = load_recipe(source, filename=recipe_path.name, overrides={"epochs": epochs})
    declaration, _ = declare(recipe, SCHEMA)
    hyperparameters = declaration.hyperparameters
    plan = _plan(len(train_index), hyperparameters["batch_size"], hyperparameters["epochs"])
    run = TrainingRun(recipe, SCHEMA, plan, RecordsInMemory(x[train_index], y[train_index]))
    for epoch in range(1, plan.epochs + 1):
        run.run_until(epoch * plan.steps_per_epoch)
        run.checkpoint()
        run.predict(x[holdout_index])
    run.model_weights()


def _plan(num_train: int, batch_size: int, epochs: int) -> TrainingPlan:
    steps = -(-num_train // batch_size)
    return TrainingPlan.fixed(
        num_train=num_train, batch_size=batch_size, epochs=epochs, seed=SEED, checkpoint_every=steps
    )


def whole_runs(options: argparse.Namespace, source: bytes) -> list[tuple[float, float]]:
    """(sandbox, plain) wall times of complete jobs, alternating, plain first."""
    pairs = []
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    command = [
        sys.executable, __file__, "--plain", "--recipe", str(options.recipe),
        "--records", str(options.records), "--epochs", str(options.epochs),
        "--threads", str(options.threads),
    ]  # fmt: skip
    for _ in range(options.repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, env=environment)
        plain = time.perf_counter() - started
        started = time.perf_counter()
        run_synthetic(
            source,
            filename=options.recipe.name,
            schema=SCHEMA,
            records=options.records,
            epochs=options.epochs,
            seed=SEED,
            limits=SandboxLimits(threads=options.threads),
            dry_run=False,
        )
        pairs.append((time.perf_counter() - started, plain))
    return pairs


def per_epoch(options: argparse.Namespace, source: bytes) -> tuple[list[float], list[float], float]:
    """Epoch times in the sandbox and in process, epoch by epoch in turn; start-up."""
    x, y = synthetic_records(SCHEMA, options.records, SEED)
    train_index, _ = holdout_split(options.records, SEED)
    recipe = load_recipe(source, filename=options.recipe.name, overrides={"epochs": options.epochs})
    plan = _plan(len(train_index), recipe.hyperparameters["batch_size"], options.epochs)
    plain_run = TrainingRun(recipe, SCHEMA, plan, RecordsInMemory(x[train_index], y[train_index]))
    plain: list[float] = []
    sandboxed: list[float] = []

    def on_sandbox_step(step: int, total: int) -> None:
        sandboxed.append(time.perf_counter())
        if step % plan.steps_per_epoch == 0:
            plain_run.run_until(step, lambda _: plain.append(time.perf_counter()))

    report = run_synthetic(
        source,
        filename=options.recipe.name,
        schema=SCHEMA,
        records=options.records,
        epochs=options.epochs,
        seed=SEED,
        limits=SandboxLimits(threads=options.threads),
        dry_run=False,
        on_progress=on_sandbox_step,
    )
    steps = plan.steps_per_epoch
    return epoch_times(sandboxed, steps), epoch_times(plain, steps), report.startup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "examples/recipes/cnn.py")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if options.plain:
        plain_job(options.recipe, options.records, options.epochs)
        return

    load_at_start = os.getloadavg()[0]
    source = options.recipe.read_bytes()
    print(
        f"{options.recipe.name}: {options.records} synthetic records of {SCHEMA.input_shape}, "
        f"{options.epochs} epochs, {options.threads} threads; "
        f"{platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    pairs = whole_runs(options, source)
    for inside, outside in pairs:
        print(
            f"whole run: sandbox {inside:7.2f} s   plain {outside:7.2f} s   {inside / outside:.3f}"
        )
    ratio = statistics.median(inside / outside for inside, outside in pairs)
    print(f"whole-run ratio sandbox/plain (median of pairs): {ratio:.3f} (goal <= 1.05)")

    sandbox_epochs, plain_epochs, startup = per_epoch(options, source)
    for epoch, (inside, outside) in enumerate(zip(sandbox_epochs, plain_epochs, strict=True), 1):
        print(f"epoch {epoch}: sandbox {inside:7.2f} s   plain {outside:7.2f} s")
    print(f"first-epoch ratio: {sandbox_epochs[0] / plain_epochs[0]:.3f}")
    if len(sandbox_epochs) > 1:
        later = statistics.mean(sandbox_epochs[1:]) / statistics.mean(plain_epochs[1:])
        print(f"later epochs ratio: {later:.3f}")
    print(f"sandbox start-up (spawn until confined and ready): {startup:.2f} s")
    # Other work on the machine moves these figures far more than the sandbox does.
    print(f"load average (1 min) at start {load_at_start:.2f}, at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
