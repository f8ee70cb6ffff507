"""Sandbox overhead: one recipe trained on the same data in the sandbox and in a plain process.

Both runs use the recipe SDK's loop on the same synthetic records, plan, seed and thread
count, in one invocation, epoch by epoch in turn (so a change in the machine's load
affects both alike):

- sandbox: `run_synthetic`, the enclave's conversation with a confined child (namespaces,
  Landlock, rlimits, seccomp), epoch times taken from the child's TICK frames as the
  enclave receives them;
- plain: the SDK's `TrainingRun` in this process, run for one epoch each time the
  sandboxed child has finished one (the child then waits for the enclave).

An epoch's time runs from its first step to its last, scaled to all its steps, so the
checkpoint and held-out predictions between the sandbox's epochs are not counted. The
first epoch is left out of the ratio (warm-up on both sides). Prints the epoch-time
ratio (goal <= 1.05) and the sandbox start-up time.

    .venv/bin/python benchmarks/sandbox_overhead.py [--recipe examples/recipes/cnn.py]
        [--records 6000] [--epochs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from chiron.core.recipe_protocol import TrainingPlan, holdout_split
from chiron.core.schema import DatasetSchema
from chiron.enclave.sandbox import SandboxLimits
from chiron.enclave.sandbox.dryrun import run_synthetic, synthetic_records
from chiron.recipes.loop import TrainingRun
from chiron.recipes.sdk import load_recipe

REPO = Path(__file__).resolve().parents[1]
SEED = 0


def epoch_times(step_times: list[float], steps_per_epoch: int) -> list[float]:
    """Per epoch: first-to-last step time, scaled to the epoch's number of steps."""
    times = []
    for start in range(0, len(step_times), steps_per_epoch):
        epoch = step_times[start : start + steps_per_epoch]
        times.append((epoch[-1] - epoch[0]) * len(epoch) / (len(epoch) - 1))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "examples/recipes/cnn.py")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    options = parser.parse_args()
    if options.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not counted)")

    load_at_start = os.getloadavg()[0]
    source = options.recipe.read_bytes()
    schema = DatasetSchema((1, 28, 28), "uint8", 10)
    x, y = synthetic_records(schema, options.records, SEED)
    train_index, _ = holdout_split(options.records, SEED)
    batch_size = load_recipe(source, filename=options.recipe.name).hyperparameters["batch_size"]
    plan = TrainingPlan.fixed(
        num_train=len(train_index),
        batch_size=batch_size,
        epochs=options.epochs,
        seed=SEED,
        checkpoint_every=1,
    )
    print(
        f"{options.recipe.name}: {plan.num_train} records of {schema.input_shape}, "
        f"{plan.epochs} epochs of {plan.steps_per_epoch} steps, {options.threads} threads; "
        f"{platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )

    torch.set_num_threads(options.threads)
    recipe = load_recipe(source, filename=options.recipe.name, overrides={"epochs": plan.epochs})
    plain_run = TrainingRun(recipe, schema, plan, x[train_index], y[train_index])
    plain: list[float] = []
    sandboxed: list[float] = []

    def on_sandbox_step(step: int, total: int) -> None:
        sandboxed.append(time.perf_counter())
        if step % plan.steps_per_epoch == 0:
            plain_run.run_until(step, lambda _: plain.append(time.perf_counter()))

    report = run_synthetic(
        source,
        filename=options.recipe.name,
        schema=schema,
        records=options.records,
        epochs=options.epochs,
        seed=SEED,
        limits=SandboxLimits(threads=options.threads),
        dry_run=False,
        on_progress=on_sandbox_step,
    )

    sandbox_epochs = epoch_times(sandboxed, plan.steps_per_epoch)
    plain_epochs = epoch_times(plain, plan.steps_per_epoch)
    for epoch, (inside, outside) in enumerate(zip(sandbox_epochs, plain_epochs, strict=True), 1):
        note = "  (warm-up, not counted)" if epoch == 1 else ""
        print(f"epoch {epoch}: sandbox {inside:7.2f} s   plain {outside:7.2f} s{note}")
    ratio = statistics.mean(sandbox_epochs[1:]) / statistics.mean(plain_epochs[1:])
    paired = statistics.median(
        inside / outside
        for inside, outside in zip(sandbox_epochs[1:], plain_epochs[1:], strict=True)
    )
    print(
        f"epoch-time ratio sandbox/plain: {ratio:.3f} (goal <= 1.05); median per epoch {paired:.3f}"
    )
    # Other work on the machine moves these figures far more than the sandbox does.
    print(f"load average (1 min) at start {load_at_start:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"sandbox start-up (spawn until confined and ready): {report.startup_seconds:.2f} s")


if __name__ == "__main__":
    main()
