"""Checkpoint cost: one sealed checkpoint of a recipe's training state, stage by stage.

One run measures, on the same machine and the same training state (by default the CNN
recipe on records of Fashion-MNIST's shape; synthetic records, since a checkpoint's
size and cost do not depend on the values):

- in a real sandbox, driven the way the training enclave drives it: the child
  serialising its state (from the enclave reading its last TICK to the first byte of
  its CHECKPOINT frame; when the enclave reads that TICK late, some of the serialising
  is already done, so the same code's time outside the sandbox is printed too), the
  transfer (to the frame's last byte), then the enclave's sealing and its write with
  one fsync, each timed apart, and the enclave's part whole as the trainer runs it;
- end to end, as the trainer does it: `--repeats` segments of `--steps` steps back to
  back without checkpoints, then as many each ending in one (sealed and written in the
  background while the next steps run, as the trainer does), twice over. The time from
  a segment's last step to the next one's first, across a checkpoint less across a plain
  RUN, is what a checkpoint costs the training (medians, so a step slowed by other work
  on the machine counts little); with the trainer's schedule (every
  `CHECKPOINT_EVERY_STEPS` steps and every epoch end) it gives the share of an epoch of
  `--records` records;
- the baseline, in this process: `torch.save` of the same state (model, optimizer,
  generators, step) to a file with fsync, and the same state serialised by the
  sandbox's own code outside the sandbox.

    .venv/bin/python benchmarks/checkpoint.py [--repeats 15] [--steps 5]
        [--records 55000] [--recipe examples/recipes/cnn.py] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chiron.core.crypto import random_key
from chiron.core.fileio import atomic_write
from chiron.core.recipe_protocol import LABEL_DTYPE, FromChild, ToChild, TrainingPlan, encode_json
from chiron.core.schema import DatasetSchema
from chiron.enclave.checkpoints import Checkpoints, Progress
from chiron.enclave.recipe_session import (
    receive_declaration,
    share_training_data,
    spawn_recipe,
)
from chiron.enclave.sealing import SealingKey
from chiron.enclave.trainer import CHECKPOINT_EVERY_STEPS
from chiron.recipes.hooks import load_recipe
from chiron.recipes.loop import _rng_state, declare

REPO = Path(__file__).resolve().parents[1]
SCHEMA = DatasetSchema((1, 28, 28), "uint8", 10)
MEASUREMENT = "00" * 48


def ms(seconds: list[float]) -> str:
    return f"{1000 * statistics.median(seconds):7.1f} ms (min {1000 * min(seconds):.1f})"


def synthetic(records: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(records, *SCHEMA.input_shape), dtype=np.uint8)
    y = rng.integers(0, SCHEMA.num_classes, size=records).astype(LABEL_DTYPE)
    return x, y


def baseline(source: bytes, repeats: int, directory: Path) -> dict[str, list[float]]:
    """torch.save of the same state to a file with fsync; the child's serialiser in process."""
    recipe = load_recipe(source, filename="bench.py", overrides={})
    _, probe = declare(recipe, SCHEMA)  # the state has its final structure after one step
    times: dict[str, list[float]] = {"torch.save + fsync": [], "serialise (no sandbox)": []}
    path = directory / "torch.pt"
    for _ in range(repeats):
        started = time.perf_counter()
        with open(path, "wb") as handle:
            torch.save(
                {
                    "step": probe.step,
                    "model": probe.model.state_dict(),
                    "optimizer": probe.optimizer.state_dict(),
                    "rng": _rng_state(),
                },
                handle,
            )
            handle.flush()
            os.fsync(handle.fileno())
        times["torch.save + fsync"].append(time.perf_counter() - started)
        started = time.perf_counter()
        probe.checkpoint()
        times["serialise (no sandbox)"].append(time.perf_counter() - started)
    path.unlink()
    return times


@dataclass
class Sandboxed:
    stages: dict[str, list[float]]
    enclave: list[float]  # the enclave's part as the trainer runs it, in the foreground
    per_checkpoint: float  # what one checkpoint adds between two steps
    gaps: dict[str, list[float]]  # from a segment's last step to the next one's first
    nbytes: int
    batch_size: int
    step: float


def sandboxed(source: bytes, args: argparse.Namespace, directory: Path) -> Sandboxed:
    """Stage times in a real sandbox, and the end-to-end cost of one checkpoint."""
    repeats, steps = args.repeats, args.steps
    stages: dict[str, list[float]] = {
        "child serialise": [],
        "transfer": [],
        "seal": [],
        "write + fsync": [],
    }
    enclave: list[float] = []
    step_times: list[float] = []
    key = SealingKey.for_job(random_key(), measurement=MEASUREMENT, purpose="benchmark")
    with spawn_recipe() as sandbox:
        declaration = receive_declaration(
            sandbox,
            mode="train",
            schema=SCHEMA,
            recipe_name="bench.py",
            recipe_source=source,
            overrides={"epochs": 1},
        )
        # One epoch with room for every segment: no epoch end among the measured ones.
        records = (5 * repeats + 2) * steps * declaration.batch_size
        x, y = synthetic(records)
        plan = TrainingPlan.fixed(
            num_train=records,
            batch_size=declaration.batch_size,
            epochs=1,
            seed=1,
            checkpoint_every=steps,
        )
        binding = {
            "job": "benchmark",
            "plan": plan.to_dict(),
            "checkpoint_nbytes": declaration.checkpoint_nbytes,
        }
        checkpoints = Checkpoints(directory, key, binding)
        progress = Progress(0, [])
        sandbox.send(ToChild.PLAN, encode_json(plan.to_dict()))
        share_training_data(sandbox, x, y, SCHEMA)
        sandbox.expect(FromChild.READY, size=0)
        step = 0

        def segment(checkpoint: bool) -> tuple[bytes | None, list[float]]:
            """Run `steps` steps, then take a checkpoint or not; the state and the tick times."""
            nonlocal step
            step += steps
            sandbox.send(ToChild.RUN, encode_json({"until_step": step, "checkpoint": checkpoint}))
            ticks = []
            for _ in range(steps):
                sandbox.expect(FromChild.TICK, size=0)
                ticks.append(time.perf_counter())
            step_times.extend(np.diff(ticks).tolist())
            if not checkpoint:
                return None, ticks
            # The first byte of the frame: the child has serialised its state. (A
            # benchmark's peek at the enclave's end of the pipe; the trainer never waits so.)
            select.select([sandbox._from_child], [], [])
            header = time.perf_counter()
            state = sandbox.expect(FromChild.CHECKPOINT, size=declaration.checkpoint_nbytes)
            done = time.perf_counter()
            stages["child serialise"].append(header - ticks[-1])
            stages["transfer"].append(done - header)
            return state, ticks

        def phase(checkpoint: bool) -> list[float]:
            """`repeats` segments back to back, as the trainer runs them: the times from each
            segment's last step to the next one's first (which pays for a background write)."""
            gaps = []
            previous: float | None = None
            for _ in range(repeats):
                state, ticks = segment(checkpoint)
                if previous is not None:
                    gaps.append(ticks[0] - previous)
                if state is not None:
                    checkpoints.save(progress, state, plan)  # sealed and written meanwhile
                previous = ticks[-1]
            checkpoints.wait()
            return gaps

        segment(False)  # warm-up: the first steps allocate
        for _ in range(repeats):
            state, _ = segment(True)
            assert state is not None
            # The enclave's part stage by stage, in the foreground.
            started = time.perf_counter()
            meta = progress.to_bytes(plan)
            sealed = key.seal(len(meta).to_bytes(4, "big") + meta + state, binding)
            sealed_at = time.perf_counter()
            stages["seal"].append(sealed_at - started)
            atomic_write(directory / "stage.sealed", sealed, mode=0o600)
            stages["write + fsync"].append(time.perf_counter() - sealed_at)
            # And whole, as the trainer's checkpoints do it (here waited for).
            started = time.perf_counter()
            checkpoints.save(progress, state, plan)
            checkpoints.wait()
            enclave.append(time.perf_counter() - started)
        # End to end: phases without and with checkpoints, alternating against drift.
        without = phase(False)
        with_checkpoints = phase(True)
        without += phase(False)
        with_checkpoints += phase(True)
    return Sandboxed(
        stages=stages,
        enclave=enclave,
        per_checkpoint=statistics.median(with_checkpoints) - statistics.median(without),
        gaps={"without": without, "with": with_checkpoints},
        nbytes=declaration.checkpoint_nbytes,
        batch_size=declaration.batch_size,
        step=statistics.median(step_times),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "examples/recipes/cnn.py")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per segment")
    parser.add_argument("--records", type=int, default=55000, help="records of the epoch costed")
    parser.add_argument("--dir", type=Path, default=None, help="where checkpoints are written")
    args = parser.parse_args()
    torch.set_num_threads(2)
    source = args.recipe.read_bytes()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        directory = Path(scratch)
        measured = sandboxed(source, args, directory)
        plain = baseline(source, args.repeats, directory)
    load = os.getloadavg()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    nbytes = measured.nbytes
    print(
        f"recipe {args.recipe.name}: checkpoint {nbytes} bytes ({nbytes / 2**20:.2f} MiB), "
        f"written under {directory.parent}; medians of {args.repeats} (fastest)"
    )
    for name, times in measured.stages.items():
        print(f"  {name:30} {ms(times)}")
    staged = sum(statistics.median(times) for times in measured.stages.values())
    print(f"  {'sum of the stages':30} {1000 * staged:7.1f} ms")
    print(f"  {'enclave part, as the trainer':30} {ms(measured.enclave)}")
    for name, times in plain.items():
        print(f"  {name:30} {ms(times)}")
    reference = statistics.median(plain["torch.save + fsync"])
    print(f"ratio, sum of the stages / torch.save + fsync: {staged / reference:.2f}")
    per_checkpoint = measured.per_checkpoint
    print(
        f"end to end, from one step to the next across a checkpoint minus across a RUN "
        f"without one (medians of {2 * args.repeats - 2} each): {1000 * per_checkpoint:.1f} ms"
    )
    for name, gaps in measured.gaps.items():
        low, _, high = statistics.quantiles(gaps, n=4)
        print(
            f"  gaps {name} a checkpoint: median {1000 * statistics.median(gaps):.1f} ms, "
            f"quartiles {1000 * low:.1f}-{1000 * high:.1f} ms (a busy machine's noise)"
        )
    steps_per_epoch = -(-args.records // measured.batch_size)
    every = min(CHECKPOINT_EVERY_STEPS, steps_per_epoch)
    count = len(set(range(every, steps_per_epoch, every)) | {steps_per_epoch})
    epoch = steps_per_epoch * measured.step
    print(
        f"per epoch of {args.records} records ({steps_per_epoch} steps of "
        f"{1000 * measured.step:.1f} ms, {epoch:.1f} s): {count} checkpoints (every {every} "
        f"steps and the epoch's end) cost {1000 * count * staged:.0f} ms by the stages, "
        f"{1000 * count * per_checkpoint:.0f} ms end to end "
        f"({100 * count * per_checkpoint / epoch:.2f} % of the epoch)"
    )


if __name__ == "__main__":
    main()
