"""The fixed-rate mode's cost: one job trained freely and on the enclave's fixed clock.

Both runs go the way `chiron train --local` goes (attest, seal the key, enclave process,
sandboxed recipe, sealed checkpoints, held-out evaluation, escrow) on the same synthetic
records, recipe, plan and seed; they differ only in the owner's `Plan.fixed_rate`. The
fixed-rate run calibrates its period itself (a second sandbox runs a few steps on
synthetic records before the data) unless `--period-ms` fixes it. The runs alternate,
free first, `--repeats` times; reported are the medians of:

- total: the `train` call from start to the verified result;
- until step 0: from the start to the first progress event (start-up, decryption,
  declaration, and in fixed-rate mode the calibration and the load slots);
- training: from the first progress event to the end of the call;

and, for the fixed-rate run, the period T, the slots the job took and the slot counts
of each kind of work. The cost is the ratio of the totals: waiting out every slot (the
margin over the calibrated step time) plus the calibration.

    .venv/bin/python benchmarks/fixed_rate.py [--recipe examples/recipes/mlp.py]
        [--records 4000] [--epochs 2] [--repeats 3] [--period-ms N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from chiron.client.attestation import load_policy
from chiron.client.sessions import LocalEnclaveSession
from chiron.client.training import run_training
from chiron.core.contract import TrainMaterials
from chiron.core.crypto import random_key
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.keys import DataKey, Identity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import make_statement
from chiron.core.schema import DatasetSchema
from chiron.enclave.sandbox.dryrun import synthetic_records

REPO = Path(__file__).resolve().parents[1]
SCHEMA = DatasetSchema((1, 28, 28), "uint8", 10)


def run_job(
    root: Path, dataset: Path, data_key: DataKey, source: bytes, plan: Plan, run: int
) -> dict:
    owner, provider = Identity.generate(), Identity.generate()
    statement = make_statement(source, name="bench", version="1", provider=provider)
    header, digest = read_dataset_header_and_digest(dataset)
    state = root / f"state-{run}"
    marks: dict[str, float] = {}

    def on_event(event: dict) -> None:
        if event.get("event") == "progress":
            marks.setdefault("first", time.perf_counter())

    host = TrainMaterials(
        recipe_name="bench.py",
        recipe_source=source,
        recipe_statement=statement,
        dataset_path=str(dataset),
        checkpoint_dir=str(state / "ckpt"),
    ).to_wire()
    start = time.perf_counter()
    with LocalEnclaveSession("train", state, extra_args={"train": host}) as session:
        outcome = run_training(
            session,
            job_id=f"bench-{run}",
            data_key=data_key,
            dataset=DatasetRef(header.dataset_id, digest),
            owner=owner,
            statement=statement,
            plan=plan,
            policy=load_policy(None, allow_simulation=True),
            state_dir=state,
            on_event=on_event,
        )
    end = time.perf_counter()
    return {
        "total": end - start,
        "startup": marks["first"] - start,
        "training": end - marks["first"],
        "rate": outcome.report.get("fixed_rate"),
        "steps": outcome.report["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "recipes" / "mlp.py")
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--period-ms", type=int, default=None)
    args = parser.parse_args()
    source = args.recipe.read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        key = random_key()
        x, y = synthetic_records(SCHEMA, args.records, 0)
        header = encrypt_dataset(
            [(x, y)], root / "data.chd", key, schema=SCHEMA, record_count=args.records
        )
        data_key = DataKey(header.dataset_id, key)
        free = Plan(seed=1, epochs=args.epochs)
        fixed = Plan(seed=1, epochs=args.epochs, fixed_rate=True, period_ms=args.period_ms)
        results: dict[str, list[dict]] = {"free": [], "fixed": []}
        run = 0
        for _ in range(args.repeats):
            for name, plan in (("free", free), ("fixed", fixed)):
                run += 1
                results[name].append(run_job(root, root / "data.chd", data_key, source, plan, run))

    def median(name: str, field: str) -> float:
        return statistics.median(r[field] for r in results[name])

    rate = results["fixed"][-1]["rate"]
    steps = results["fixed"][-1]["steps"]
    print(
        f"machine: {os.cpu_count()} CPU threads; {args.recipe.name}, {args.records} records "
        f"of {SCHEMA.input_shape}, {args.epochs} epoch(s), {steps} steps; "
        f"median of {args.repeats}"
    )
    print(f"{'':22}{'free':>10}{'fixed-rate':>12}{'ratio':>9}")
    for field, label in (
        ("total", "total"),
        ("startup", "until step 0"),
        ("training", "training"),
    ):
        a, b = median("free", field), median("fixed", field)
        print(f"{label:<22}{a:9.2f}s{b:11.2f}s{b / a:9.3f}")
    print(
        f"period T {rate['period_ms']} ms ({'calibrated' if rate['calibrated'] else 'fixed'}), "
        f"{rate['slots']} slots = {rate['slots'] * rate['period_ms'] / 1000:.2f} s on the clock; "
        f"slots per load {rate['load']}, checkpoint {rate['checkpoint']}, "
        f"evaluation {rate['evaluate']}, finish {rate['finish']}"
    )


if __name__ == "__main__":
    main()
