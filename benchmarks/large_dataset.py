"""A data set larger than memory: encrypt, upload and one training pass, against plain baselines.

For each size (GiB of plaintext: records and their 8-byte labels), a synthetic data set
of 3x64x64 bytes per record, three classes each with a bright channel (learnable), is
made in batches from a small pool of records, so this script's own memory stays small
whatever the size. In the same run, each phase against its plain baseline:

1. encrypt: `encrypt_dataset` to a .chd file, against writing the same raw bytes (the
   records, then the labels) to one file with one fsync; both consume the same batches;
2. upload: the client SDK to what `chiron serve` runs, on loopback (`service_upload`),
   against a plain copy of the .chd with fsync;
3. one training pass (one epoch, a small wide MLP, batch 512): the whole `chiron train
   --local --allow-simulation` process, which streams the data set through the ring of
   two windows, against `sdk.train_plain` with the same streamed plan over an np.memmap
   of the raw file (the same batches in the same order), one process timed whole; the
   two alternate (`--pairs`), and the median of the pairs' ratios is printed. `chiron
   train --local` hashes the whole .chd on each run and, on its first, copies it into
   the local host's store (in CHIRON_HOME, here in the scratch folder): that is timed too.

Times come from runs whose memory is not sampled (reading a process's PSS from
`/proc/<pid>/smaps_rollup` 20 times a second costs it time, more the larger its
mappings). The memory figures come from one more run of each, sampled
(`peak_memory.PeakRss`): the peak of the enclave process with its sandboxed child
(found in the process tree of `chiron train` by their command lines), of the sandbox
alone, and of the whole tree with the client, as RSS and PSS. The claim is that the
enclave's and the sandbox's stays about flat as the data set grows: two slots of the
ring, the held-out records and torch. A memory map's pages count in the plain run's RSS
once touched, so its peak grows with the data it reads. Files stay warm in the page
cache where memory allows, for both sides alike; encryption and upload take the median
of `--repeats`.

    .venv/bin/python benchmarks/large_dataset.py                      # 1.1 GiB and 8 GiB
    .venv/bin/python benchmarks/large_dataset.py --sizes-gib 1.1      # a few minutes
    .venv/bin/python benchmarks/large_dataset.py --repeats 3 --pairs 2 --profile

The scratch folder (default /root) needs about three times the largest size free, and
the smaller sizes once more: the .chd, the raw file, and the uploaded or copied .chd or
the local host's copy (kept until the end). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
from peak_memory import PeakRss
from service_upload import copy_with_fsync, upload
from train_end_to_end import chiron, profile, train_command

from chiron.client.remote.file_digests import DEFAULT_CHUNK_BYTES
from chiron.core.crypto import random_key
from chiron.core.data_windows import LABEL_BYTES, StreamLayout, holdout_records, streams
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.keys import DataKey
from chiron.core.recipe_protocol import TrainingPlan
from chiron.core.schema import DatasetSchema

SCHEMA = DatasetSchema((3, 64, 64), "uint8", 3)
BATCH = 512
GIB = 1 << 30
MIB = 1 << 20
# Records are made in batches of this many, as views into a pool of twice as many.
MAKE_BATCH = 4096
R = TypeVar("R", "Timed", "Tracked")
RECIPE = textwrap.dedent(
    """
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 1, "batch_size": 512, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU(),
                             nn.Linear(8, schema.num_classes))
    """
)


def record_count(size_gib: float) -> int:
    return int(size_gib * GIB) // (SCHEMA.record_bytes + LABEL_BYTES)


def batches(count: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`count` records in batches: views at seeded offsets into a pool of 2 * MAKE_BATCH.

    Regenerated identically on every call; making a batch costs next to nothing, so both
    sides of the encryption comparison measure writing, not making, the data.
    """
    rng = np.random.default_rng(seed)
    pool = 2 * MAKE_BATCH
    y = rng.integers(0, SCHEMA.num_classes, size=pool)
    x = rng.integers(0, 40, size=(pool, *SCHEMA.input_shape), dtype=np.uint8)
    x[np.arange(pool), y] += 150  # the label's channel is bright
    y = y.astype(np.int64)
    for start in range(0, count, MAKE_BATCH):
        take = min(MAKE_BATCH, count - start)
        offset = int(rng.integers(0, pool - take + 1))
        yield x[offset : offset + take], y[offset : offset + take]


def write_raw(path: Path, count: int, seed: int) -> float:
    """The encryption baseline: the records, then the labels, written to one file, one fsync."""
    labels = np.empty(count, dtype=np.int64)
    start = time.perf_counter()
    with open(path, "wb") as out:
        done = 0
        for x, y in batches(count, seed):
            out.write(x.data)
            labels[done : done + len(y)] = y
            done += len(y)
        out.write(labels.data)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - start


def encrypt(path: Path, key_path: Path, count: int, seed: int) -> float:
    key = random_key()
    start = time.perf_counter()
    header = encrypt_dataset(batches(count, seed), path, key, schema=SCHEMA, record_count=count)
    elapsed = time.perf_counter() - start
    DataKey(header.dataset_id, key).save(key_path)
    return elapsed


def streamed_plan(count: int, records_per_chunk: int, seed: int) -> TrainingPlan:
    """The plan `chiron train` makes for this data set (the checkpoint cadence aside)."""
    layout = StreamLayout.for_dataset(
        record_count=count,
        records_per_chunk=records_per_chunk,
        record_bytes=SCHEMA.record_bytes,
        batch_size=BATCH,
    )
    windows = layout.windows(seed, BATCH)
    return TrainingPlan.fixed(
        num_train=windows.num_train,
        batch_size=BATCH,
        epochs=1,
        seed=seed,
        checkpoint_every=200,
        stream=layout,
    )


def plain_pass(raw: Path, recipe: Path, count: int, records_per_chunk: int, seed: int) -> None:
    """The training baseline, run as its own process: `train_plain` over a memory map."""
    import torch

    from chiron.recipes.sdk import train_plain

    torch.set_num_threads(os.cpu_count() or 1)  # as the sandbox sets its pool
    x = np.memmap(raw, dtype=np.uint8, mode="r", shape=(count, *SCHEMA.input_shape))
    y = np.memmap(raw, dtype=np.int64, mode="r", shape=(count,), offset=count * x[0].nbytes)
    plan = streamed_plan(count, records_per_chunk, seed)
    weights = train_plain(recipe.read_text(), SCHEMA, x, y, plan)
    print(json.dumps({"steps": plan.total_steps, "weight_bytes": len(weights)}))


class Timed:
    """A process run to completion: wall time, CPU time of it and its children, output."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with open(log, "wb") as out:
            self.returncode = subprocess.run(
                command, env=env, stdout=out, stderr=subprocess.STDOUT
            ).returncode
        self.wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.output = log.read_text(errors="replace")


def attempt(run: Callable[[], R], what: str, root: Path) -> R:
    """`run()`, once more if the enclave refused a runtime measurement that moved.

    The measurement covers the installed sources: edited between the client's
    measurement and the enclave's, it differs, and the job stops before it starts.
    """
    for tries in (1, 2):
        (root / "model.chm").unlink(missing_ok=True)
        result = run()
        if not result.returncode:
            return result
        if tries == 1 and "measurement: runtime" in result.output:
            say(f"{what}: the runtime measurement changed under it; once more")
            continue
        sys.exit(f"{what} failed:\n{result.output[-3000:]}")
    raise AssertionError


class Tracked:
    """A process tree run to completion, its peaks sampled, by role, while it runs."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.peaks: dict[str, list[PeakRss]] = {"tree": [], "enclave": [], "sandbox": []}
        seen: set[int] = set()
        started = time.perf_counter()
        with open(log, "wb") as err:
            process = subprocess.Popen(command, env=env, stdout=err, stderr=subprocess.STDOUT)
            with PeakRss(process.pid) as whole:
                self.peaks["tree"].append(whole)
                while process.poll() is None:
                    self._find(process.pid, seen)
                    time.sleep(0.05)
        self.wall = time.perf_counter() - started
        for peak in (*self.peaks["enclave"], *self.peaks["sandbox"]):
            peak.__exit__()
        self.returncode = process.returncode
        self.output = log.read_text(errors="replace")

    def _find(self, root: int, seen: set[int]) -> None:
        """Start a sampler on each enclave and each sandbox (its outermost process)."""
        try:
            children = psutil.Process(root).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            if child.pid in seen:
                continue
            try:
                command = " ".join(child.cmdline())
                parent = " ".join(child.parent().cmdline()) if child.parent() else ""
            except psutil.Error:
                continue
            role = None
            if "chiron.enclave.main" in command:
                role = "enclave"
            elif "chiron.enclave.sandbox.child" in command and "sandbox.child" not in parent:
                role = "sandbox"
            seen.add(child.pid)
            if role:
                try:
                    self.peaks[role].append(PeakRss(child.pid).__enter__())
                except psutil.Error:
                    pass

    def peak(self, role: str) -> tuple[float, float]:
        """(PSS, RSS) in MiB: the largest peak of any process tree of that role."""
        found = self.peaks[role]
        return (
            max((p.peak_pss for p in found), default=0) / MIB,
            max((p.peak for p in found), default=0) / MIB,
        )


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}  (load {load()})", flush=True)


def run_size(size: float, options: argparse.Namespace, root: Path, env: dict[str, str]) -> dict:
    seed = options.seed
    count = record_count(size)
    if not streams(count, SCHEMA.record_bytes):
        sys.exit(f"{size} GiB does not stream: pick a size above 1 GiB")
    folder = root / f"size-{size:g}"
    folder.mkdir()
    data, raw = folder / "data.chd", folder / "raw.bin"
    row: dict = {"size": size, "records": count}

    encrypts, raws = [], []
    for repeat in range(options.repeats):
        # Taking turns to go first; the last repeat leaves both files in place.
        for phase in ("encrypt", "raw") if repeat % 2 == 0 else ("raw", "encrypt"):
            say(f"{size:g} GiB: {phase} {count:,} records ({repeat + 1}/{options.repeats})")
            if phase == "encrypt":
                data.unlink(missing_ok=True)
                (root / "data.key").unlink(missing_ok=True)
                encrypts.append(encrypt(data, root / "data.key", count, seed))
            else:
                raw.unlink(missing_ok=True)
                raws.append(write_raw(raw, count, seed))
    row["encrypt"], row["raw"] = float(np.median(encrypts)), float(np.median(raws))
    say(
        f"{size:g} GiB: encrypt {row['encrypt']:.1f} s, raw write {row['raw']:.1f} s, "
        f"ratio {row['encrypt'] / row['raw']:.2f} (medians)"
    )

    copies, uploads = [], []
    for repeat in range(options.repeats):
        say(f"{size:g} GiB: plain copy with fsync ({repeat + 1}/{options.repeats})")
        copies.append(copy_with_fsync(data, folder / "copy.chd"))
        (folder / "copy.chd").unlink()
        say(f"{size:g} GiB: upload through chiron serve ({repeat + 1}/{options.repeats})")
        uploads.append(upload(data, folder, DEFAULT_CHUNK_BYTES, cold=False))
    row["copy"] = float(np.median(copies))
    row["upload"], client_cpu, service_cpu = (float(x) for x in np.median(uploads, axis=0))
    row["upload_cpu"] = f"client {client_cpu:.1f} s, service {service_cpu:.1f} s"
    say(
        f"{size:g} GiB: upload {row['upload']:.1f} s (CPU: {row['upload_cpu']}), "
        f"copy {row['copy']:.1f} s, ratio {row['upload'] / row['copy']:.2f} (medians)"
    )

    header, _ = read_dataset_header_and_digest(data)
    plan = streamed_plan(count, header.records_per_chunk, seed)
    layout = plan.stream
    assert layout is not None
    windows = layout.windows(seed, BATCH)
    row["ring_mib"] = 2 * windows.slot_bytes(SCHEMA.record_bytes) / MIB
    row["windows"] = windows.per_epoch
    held = holdout_records(count)
    row["held_mib"] = held * (SCHEMA.record_bytes + LABEL_BYTES) / MIB
    row["steps"] = plan.total_steps
    say(
        f"{size:g} GiB: chiron train, 1 epoch, {plan.total_steps} steps, "
        f"{windows.per_epoch} windows "
        f"(ring {row['ring_mib']:.0f} MiB, about {row['held_mib']:.0f} MiB held out)"
    )
    command = train_command(root, root / "wide.py", data, 1, seed)
    plain_cmd = [
        sys.executable, __file__, "--plain", str(raw), str(root / "wide.py"),
        str(count), str(header.records_per_chunk), str(seed),
    ]  # fmt: skip
    log = folder / "run.log"
    # Timed without sampling memory (reading smaps_rollup costs the sampled process
    # time); the memory figures come from one more run of each.
    ours, plain, ratios = [], [], []
    for pair in range(options.pairs):
        say(f"{size:g} GiB: chiron train ({pair + 1}/{options.pairs})")
        ours.append(attempt(lambda: Timed(command, env, log), "chiron train", root))
        report = json.loads((root / "model.report.json").read_text())
        row["accuracy"] = report.get("final_holdout_accuracy")
        say(
            f"{size:g} GiB: chiron train {ours[-1].wall:.1f} s wall, {ours[-1].cpu:.1f} s CPU; "
            f"held-out accuracy {row['accuracy']}"
        )
        say(f"{size:g} GiB: plain train_plain over a memory map ({pair + 1}/{options.pairs})")
        plain.append(attempt(lambda: Timed(plain_cmd, env, log), "the plain run", root))
        ratios.append(ours[-1].wall / plain[-1].wall)
        say(
            f"{size:g} GiB: plain {plain[-1].wall:.1f} s wall, {plain[-1].cpu:.1f} s CPU; "
            f"train ratio {ratios[-1]:.2f}"
        )
    row["train"], row["plain_train"] = (
        float(np.median([r.wall for r in runs])) for runs in (ours, plain)
    )
    row["train_cpu"], row["plain_cpu"] = (
        float(np.median([r.cpu for r in runs])) for runs in (ours, plain)
    )
    row["train_ratio"] = float(np.median(ratios))

    say(f"{size:g} GiB: chiron train again, its memory sampled")
    tracked = attempt(lambda: Tracked(command, env, log), "chiron train", root)
    row["tree"], row["enclave"], row["sandbox"] = (
        tracked.peak("tree"),
        tracked.peak("enclave"),
        tracked.peak("sandbox"),
    )
    say(
        f"{size:g} GiB: enclave+sandbox peak PSS {row['enclave'][0]:.0f} MiB, RSS "
        f"{row['enclave'][1]:.0f} MiB (sandbox PSS {row['sandbox'][0]:.0f}, whole tree PSS "
        f"{row['tree'][0]:.0f}; {tracked.wall:.0f} s sampled)"
    )
    say(f"{size:g} GiB: plain run again, its memory sampled")
    row["plain"] = attempt(lambda: Tracked(plain_cmd, env, log), "the plain run", root).peak("tree")
    say(f"{size:g} GiB: plain peak PSS {row['plain'][0]:.0f} MiB, RSS {row['plain'][1]:.0f} MiB")
    if options.profile:
        say(f"{size:g} GiB: chiron train again, sampled by py-spy")
        (root / "model.chm").unlink(missing_ok=True)
        profile(command, env, root)
    data.unlink()
    raw.unlink()
    log.unlink()
    folder.rmdir()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gib", type=float, nargs="+", default=[1.1, 8.0])
    parser.add_argument("--repeats", type=int, default=1, help="repeats of encrypt and upload")
    parser.add_argument("--pairs", type=int, default=2, help="timed training pairs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/root"), help="scratch parent folder")
    parser.add_argument("--profile", action="store_true", help="where chiron train's time goes")
    parser.add_argument("--plain", nargs=5, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.plain:
        raw, recipe, count, per_chunk, seed = options.plain
        plain_pass(Path(raw), Path(recipe), int(count), int(per_chunk), int(seed))
        return
    threads = os.cpu_count() or 1
    print(
        f"sizes {options.sizes_gib} GiB, batch {BATCH}, seed {options.seed}; "
        f"{os.uname().nodename}, {threads} CPUs, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB, load {load()}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="chiron-large-", dir=options.dir) as scratch:
        root = Path(scratch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
        env["CHIRON_HOME"] = str(root / "home")
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        os.environ.clear()
        os.environ.update(env)  # the served Service of the upload, too
        chiron("keygen", "--out", root / "owner.key", env=env)
        chiron("keygen", "--out", root / "provider.key", env=env)
        (root / "wide.py").write_text(RECIPE)
        chiron("recipe", "sign", root / "wide.py", "--key", root / "provider.key", env=env)
        for size in options.sizes_gib:
            rows.append(run_size(size, options, root, env))

    print()
    print(
        "| GiB | records | encrypt s / raw write s | ratio | upload s / copy s | ratio "
        "| train s / plain s (CPU s / CPU s) | ratio | enclave+sandbox peak PSS / RSS MiB "
        "| sandbox PSS | chiron tree PSS | plain peak PSS / RSS MiB |"
    )
    print("|" + "---|" * 12)
    for r in rows:
        print(
            f"| {r['size']:g} | {r['records']:,} "
            f"| {r['encrypt']:.1f} / {r['raw']:.1f} | {r['encrypt'] / r['raw']:.2f} "
            f"| {r['upload']:.1f} / {r['copy']:.1f} | {r['upload'] / r['copy']:.2f} "
            f"| {r['train']:.1f} / {r['plain_train']:.1f} ({r['train_cpu']:.0f} / "
            f"{r['plain_cpu']:.0f}) | {r['train_ratio']:.2f} "
            f"| {r['enclave'][0]:.0f} / {r['enclave'][1]:.0f} | {r['sandbox'][0]:.0f} "
            f"| {r['tree'][0]:.0f} | {r['plain'][0]:.0f} / {r['plain'][1]:.0f} |"
        )
    for r in rows:
        print(
            f"{r['size']:g} GiB: upload CPU {r['upload_cpu']}; ring {r['ring_mib']:.0f} MiB, "
            f"held out about {r['held_mib']:.0f} MiB, {r['windows']} windows, {r['steps']} steps, "
            f"held-out accuracy {r['accuracy']}"
        )
    if len(rows) > 1:
        small, large = min(rows, key=lambda r: r["size"]), max(rows, key=lambda r: r["size"])
        for index, name in ((0, "PSS"), (1, "RSS")):
            grew = large["enclave"][index] - small["enclave"][index]
            print(
                f"enclave+sandbox peak {name}: {small['enclave'][index]:.0f} MiB at "
                f"{small['size']:g} GiB, {large['enclave'][index]:.0f} MiB at {large['size']:g} GiB"
                f" ({grew:+.0f} MiB, {100 * grew / small['enclave'][index]:+.1f}%) for "
                f"{large['size'] / small['size']:.1f}x the data"
            )
    print(f"load average now {load()}")


if __name__ == "__main__":
    main()
