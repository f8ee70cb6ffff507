"""Whole `chiron train --local` against the plain PyTorch script beside it, as a user feels it.

Each side is one process started from the shell, timed from start to exit: start-up,
imports, the runtime measurement, attestation, decryption, the sandbox, every epoch
with its held-out evaluation, checkpoints and escrow on Chiron's side; imports, loading
and the same epochs and evaluations in `plain_train.py`. Same data, model, optimizer,
seed, held-out split and threads. The two alternate, and the ratio of each pair's wall
times is printed with their median, CPU time (user, system) beside them. The peak memory
of the whole process tree (RSS, and PSS, which counts shared pages once: `peak_memory`)
comes from further pairs (`--memory-pairs`), run again with memory polled and not timed.

    .venv/bin/python benchmarks/train_end_to_end.py                     # CNN, Fashion-MNIST
    .venv/bin/python benchmarks/train_end_to_end.py --workload cifar    # ResNet-20, 50,000
    .venv/bin/python benchmarks/train_end_to_end.py --profile           # + where time goes

`--profile` samples Chiron's run with py-spy (every process but the confined child,
which is not dumpable) and prints the share of wall time per phase.

The recipe's sandbox runs with glibc's allocator tuned to keep freed memory
(`chiron.enclave.sandbox.startup.MALLOC_TUNABLES`); the plain script gets the same
setting, so the ratio compares like with like. `--plain-default-malloc` runs the plain
script with glibc's defaults instead: what a user's usual script does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from peak_memory import PeakRss

from chiron.enclave.sandbox.startup import MALLOC_TUNABLES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
RECIPES = REPO / "examples" / "recipes"


def measured(command: list[str], env: dict[str, str], *, memory: bool) -> dict[str, float]:
    """Run `command` to completion: wall, user and system seconds; with `memory`, peak tree
    RSS and PSS.

    Memory is polled only when asked, in runs of its own: reading a process's PSS walks
    its whole address space under its memory-map lock, 20 times a second for each of
    Chiron's four processes against the plain script's one, which slowed Chiron's runs
    by a quarter and the plain script's by a sixth when every timed run was also polled.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with PeakRss(process.pid) if memory else contextlib.nullcontext() as peak:
        out, err = process.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode:
        sys.exit(f"{command[0]} failed:\n{err.decode(errors='replace')[-2000:]}")
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "rss_mib": peak.peak / 2**20 if peak is not None else 0.0,
        "pss_mib": peak.peak_pss / 2**20 if peak is not None else 0.0,
        "output": out.decode(errors="replace"),  # type: ignore[dict-item]
    }


def chiron(*args: object, env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "chiron"), *map(str, args)], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def prepare(workload: str, root: Path, env: dict[str, str]) -> tuple[Path, Path, Path]:
    """Keys, the encrypted dataset, the signed recipe; returns (recipe, data, plain data)."""
    chiron("keygen", "--out", root / "owner.key", env=env)
    chiron("keygen", "--out", root / "provider.key", env=env)
    if workload == "fashion":
        plain_data = FASHION
        chiron("dataset", "encrypt", FASHION, "--split", "train", "--out", root / "data.chd",
               "--key", root / "data.key", env=env)  # fmt: skip
        recipe = root / "cnn.py"
        shutil.copyfile(RECIPES / "cnn.py", recipe)
    else:
        # CIFAR-10-shaped synthetic data: 50,000 records of 3x32x32 bytes, 10 classes.
        rng = np.random.default_rng(7)
        plain_data = root / "cifar-shaped.npz"
        np.savez(
            plain_data,
            x=rng.integers(0, 256, size=(50_000, 3, 32, 32), dtype=np.uint8),
            y=rng.integers(0, 10, size=50_000, dtype=np.int64),
        )
        chiron("dataset", "encrypt", plain_data, "--out", root / "data.chd",
               "--key", root / "data.key", env=env)  # fmt: skip
        recipe = root / "resnet20.py"
        shutil.copyfile(RECIPES / "resnet20.py", recipe)
    chiron("recipe", "sign", recipe, "--key", root / "provider.key", env=env)
    return recipe, root / "data.chd", plain_data


def train_command(root: Path, recipe: Path, data: Path, epochs: int, seed: int) -> list[str]:
    return [
        str(BIN / "chiron"), "train", "--local", "--allow-simulation",
        "--recipe", str(recipe), "--dataset", str(data), "--data-key", str(root / "data.key"),
        "--owner", str(root / "owner.key"), "--provider", str(root / "provider.key.pub"),
        "--out", str(root / "model.chm"), "--epochs", str(epochs), "--seed", str(seed),
    ]  # fmt: skip


def plain_command(recipe: Path, data: Path, epochs: int, seed: int, threads: int) -> list[str]:
    return [
        sys.executable, str(REPO / "benchmarks" / "plain_train.py"), "--recipe", str(recipe),
        "--data", str(data), "--epochs", str(epochs), "--seed", str(seed),
        "--threads", str(threads),
    ]  # fmt: skip


# Phases of a `chiron train` run, by the outermost frame of a sampled stack that names
# one (py-spy's raw format: "process PID:\"argv\";...;function (file:line);... count").
PHASES = (
    ("measure_runtime", "runtime measurement"),
    ("appraise_enclave", "attestation checks"),
    ("verify_enclave", "attestation checks"),
    ("load_dataset", "decryption"),
    ("Sandbox.spawn", "sandbox start"),
    ("receive_declaration", "declaration"),
    ("_fix_rate", "rate calibration"),
    ("share_training_data", "data to the sandbox"),
    ("predict_logits", "held-out evaluation"),
    ("Checkpoints._write", "checkpoint sealing and write"),
    ("seal_model", "escrow"),
    ("_train", "training steps (waiting for the child)"),
    ("run_training", "waiting for the enclave"),
    # In the sandboxed child:
    ("warm_up", "torch warm-up"),
    ("TrainingRun.checkpoint", "checkpoint serialisation"),
    ("TrainingRun.predict", "predictions"),
    ("TrainingRun.run_until", "training steps"),
    ("_converse", "declaration and data"),
)


def _process_name(processes: list[str]) -> str:
    """The sampled process, named by its role (the sandbox's bootstrap starts its worker)."""
    argv = processes[-1].partition(":")[2].strip('"')
    if "sandbox.child" in argv:
        nested = sum("sandbox.child" in entry for entry in processes)
        return "sandbox worker (the recipe)" if nested > 1 else "sandbox bootstrap"
    if "chiron.enclave.main" in argv:
        return "enclave"
    if "chiron train" in argv or len(processes) == 1:
        return "client (chiron train)"
    return argv[:40]


def profile(command: list[str], env: dict[str, str], root: Path) -> None:
    """Sample the run with py-spy (wall clock, idle included) and print phase shares."""
    spy = BIN / "py-spy"
    if not spy.exists():
        print("py-spy is not installed: no profile")
        return
    raw = root / "profile.txt"
    rate = 50
    subprocess.run(
        [str(spy), "record", "--subprocesses", "--idle", "--rate", str(rate), "--format", "raw",
         "--output", str(raw), "--", *command],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    by_process: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        entries = stack.split(";")
        processes = [entry for entry in entries if entry.startswith("process ")]
        frames = [entry.split(" (")[0] for entry in entries if not entry.startswith("process ")]
        # The main thread of each process only: with --idle every thread is sampled.
        if not processes or "_bootstrap" in frames or "Thread._bootstrap" in frames:
            continue
        phase = next((label for name, label in PHASES if name in frames), "other (imports, I/O)")
        by_process.setdefault(_process_name(processes), Counter())[phase] += int(count)
    for process, phases in by_process.items():
        total = sum(phases.values())
        print(f"profile of {process} (main thread): {total / rate:.1f} s sampled")
        for phase, samples in phases.most_common():
            print(f"  {phase:<42} {samples / rate:7.2f} s  {100 * samples / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("fashion", "cifar"), default="fashion")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--memory-pairs", type=int, default=1,
                        help="pairs run again with their peak memory polled (not timed)")  # fmt: skip
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--plain-default-malloc", action="store_true",
                        help="the plain script with glibc's allocator defaults")  # fmt: skip
    options = parser.parse_args()
    threads = os.cpu_count() or 1
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    plain_env = {**env, "GLIBC_TUNABLES": MALLOC_TUNABLES}
    if options.plain_default_malloc:
        plain_env.pop("GLIBC_TUNABLES")
    print(
        f"{options.workload}: {options.epochs} epoch(s), seed {options.seed}, {threads} threads;"
        f" {os.uname().nodename}, {threads} CPUs, load average {os.getloadavg()[0]:.2f};"
        f" plain script's allocator: {'glibc defaults' if options.plain_default_malloc else 'as the sandbox'}"
    )
    with tempfile.TemporaryDirectory(prefix="chiron-e2e-") as scratch:
        root = Path(scratch)
        recipe, data, plain_data = prepare(options.workload, root, env)
        chiron_cmd = train_command(root, recipe, data, options.epochs, options.seed)
        plain_cmd = plain_command(recipe, plain_data, options.epochs, options.seed, threads)
        ratios: list[float] = []
        for pair in range(options.pairs):
            (root / "model.chm").unlink(missing_ok=True)
            ours = measured(chiron_cmd, env, memory=False)
            plain = measured(plain_cmd, plain_env, memory=False)
            ratios.append(ours["wall"] / plain["wall"])
            accuracy = json.loads(plain["output"])["holdout_accuracy"]  # type: ignore[arg-type]
            for name, run in (("chiron train", ours), ("plain PyTorch", plain)):
                print(
                    f"pair {pair + 1}  {name:<13} {run['wall']:7.2f} s wall"
                    f"  {run['user']:7.2f} s user  {run['sys']:6.2f} s sys"
                )
            print(f"pair {pair + 1}  ratio {ratios[-1]:.3f}   (plain held-out accuracy {accuracy})")
        if ratios:
            print(f"whole-run wall ratio (median of pairs): {statistics.median(ratios):.3f}"
                  f"  goal <= 1.05; load average now {os.getloadavg()[0]:.2f}")  # fmt: skip
        memory: list[tuple[float, float]] = []
        for pair in range(options.memory_pairs):
            (root / "model.chm").unlink(missing_ok=True)
            ours = measured(chiron_cmd, env, memory=True)
            plain = measured(plain_cmd, plain_env, memory=True)
            memory.append((ours["rss_mib"] / plain["rss_mib"], ours["pss_mib"] / plain["pss_mib"]))
            for name, run in (("chiron train", ours), ("plain PyTorch", plain)):
                print(
                    f"memory pair {pair + 1}  {name:<13} peak RSS {run['rss_mib']:6.0f} MiB"
                    f"  PSS {run['pss_mib']:6.0f} MiB  (polled: {run['wall']:.2f} s wall)"
                )
        if memory:
            print(f"peak memory ratio (median of pairs): RSS {statistics.median(m[0] for m in memory):.3f}"
                  f", PSS {statistics.median(m[1] for m in memory):.3f}  goal <= 1.10")  # fmt: skip
        if options.profile:
            (root / "model.chm").unlink(missing_ok=True)
            profile(chiron_cmd, env, root)


if __name__ == "__main__":
    main()
