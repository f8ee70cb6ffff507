"""Training overhead: the CNN recipe through the confidential path vs plain PyTorch.

One run measures both, on the same machine, data, recipe, plan and thread count:

- enclave: the same flow `chiron train --local` runs (attest, seal the key, enclave
  process, sandboxed recipe, sealed checkpoints, held-out evaluation, escrow), with the
  fixed start-up (enclave + sandbox start, decryption, declaration) timed apart from the
  training steps;
- plain: `chiron.recipes.sdk.train_plain`, the same SDK loop in this process, no enclave.

Prints the wall-time ratio of the training part (goal <= 1.05), the start-up time, and
the peak-memory ratio (goal <= 1.5; resident memory of the whole process tree).

    .venv/bin/python benchmarks/training_overhead.py [--epochs 1] [--records 60000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from peak_memory import PeakRss

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


PLAIN = """
import json, sys, time
import numpy as np
from chiron.core.dataset import load_dataset
from chiron.core.keys import load_data_key
from chiron.core.recipe_protocol import TrainingPlan, holdout_split
from chiron.recipes.sdk import train_plain
dataset, key, recipe, epochs, seed = sys.argv[1:6]
header, x, y = load_dataset(dataset, load_data_key(key).key)
train, _ = holdout_split(len(y), int(seed))
plan = TrainingPlan.fixed(num_train=len(train), batch_size=128, epochs=int(epochs),
                          seed=int(seed), checkpoint_every=200)
source = open(recipe).read()
start = time.perf_counter()
train_plain(source, header.schema, x[train], y[train], plan)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

ENCLAVE = """
import json, sys, time
from pathlib import Path
from chiron.client.attestation import load_policy
from chiron.client.sessions import LocalEnclaveSession
from chiron.client.training import run_training
from chiron.core.dataset import read_dataset_header_and_digest
from chiron.core.contract import TrainMaterials
from chiron.core.keys import Identity, load_data_key
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import make_statement
dataset, key, recipe, epochs, seed, state = sys.argv[1:7]
owner, provider = Identity.generate(), Identity.generate()
source = Path(recipe).read_bytes()
statement = make_statement(source, name="cnn", version="1", provider=provider)
data_key = load_data_key(key)
header, digest = read_dataset_header_and_digest(dataset)
marks = {}
def on_event(event):
    if event.get("event") != "progress":
        return
    now = time.perf_counter()
    marks.setdefault("first", now)
    marks["last"] = now
start = time.perf_counter()
host = TrainMaterials(recipe_name="cnn.py", recipe_source=source, recipe_statement=statement,
                      dataset_path=dataset, checkpoint_dir=state + "/ckpt").to_wire()
with LocalEnclaveSession("train", Path(state), extra_args={"train": host}) as session:
    run_training(session, job_id="bench", data_key=data_key,
                 dataset=DatasetRef(header.dataset_id, digest), owner=owner,
                 statement=statement, plan=Plan(seed=int(seed), epochs=int(epochs)),
                 policy=load_policy(None, allow_simulation=True), state_dir=Path(state),
                 on_event=on_event)
end = time.perf_counter()
print(json.dumps({"startup": marks["first"] - start, "training": marks["last"] - marks["first"],
                  "total": end - start}))
"""


def run_measured(code: str, args: list[str]) -> tuple[dict, int]:
    import json

    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True
    )
    with PeakRss(process.pid) as peak:
        out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"benchmark step failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1]), peak.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not FASHION.exists():
        raise SystemExit("needs Debian's dataset-fashion-mnist (make datasets)")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        chd, key = root / "fm.chd", root / "fm.key"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chiron",
                "dataset",
                "encrypt",
                str(FASHION),
                "--split",
                "train",
                "--out",
                str(chd),
                "--key",
                str(key),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        recipe = str(REPO / "examples" / "recipes" / "cnn.py")
        common = [str(chd), str(key), recipe, str(args.epochs), str(args.seed)]
        plain, plain_peak = run_measured(PLAIN, common)
        enclave, enclave_peak = run_measured(ENCLAVE, [*common, str(root / "state")])
    threads = os.cpu_count()
    print(f"machine: {threads} CPU threads; CNN recipe, {args.epochs} epoch(s) of Fashion-MNIST")
    print(
        f"plain PyTorch training      {plain['seconds']:8.2f} s   peak RSS {plain_peak / 2**20:7.0f} MiB"
    )
    print(
        f"enclave training (steps)    {enclave['training']:8.2f} s   peak RSS {enclave_peak / 2**20:7.0f} MiB"
    )
    print(
        f"enclave fixed start-up      {enclave['startup']:8.2f} s   (enclave, sandbox, decrypt, declare)"
    )
    print(
        f"wall-time ratio (training)  {enclave['training'] / plain['seconds']:8.3f}   goal <= 1.05"
    )
    print(f"peak-memory ratio           {enclave_peak / plain_peak:8.3f}   goal <= 1.5")


if __name__ == "__main__":
    main()
