"""Upload throughput through `chiron serve` against a plain file copy of the same bytes.

Encrypts a synthetic data set into a .chd file, then, in the same run and alternating,
(1) copies it with the same fsync the service does (the plain baseline: what storing it
costs at all), and (2) uploads it with the client SDK to what `chiron serve` runs
(`serve_forever`), in its own process, on a loopback port: the whole file hashed once
(chunk digests alongside), chunked PUTs each checked against its SHA-256, the
whole-file SHA-256 and header checked at completion, one fsync, registration in
SQLite. The service has answered one request before the clock starts, as a running
service would have (`--cold` times its first request too: connecting and the web
framework's first-call set-up, about 50 ms here). The ratio is upload time over copy
time; beside it the median CPU seconds the client and the service spent (all threads;
less moved by other work than the wall clock) and the load average, since on a shared
machine it moves the figures.

    .venv/bin/python benchmarks/service_upload.py [--sizes-mib 128] [--chunk-mib 32] [--repeats 5] [--cold]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from chiron.client.remote import ServiceClient
from chiron.client.remote.file_digests import DEFAULT_CHUNK_BYTES
from chiron.core.crypto import random_key
from chiron.core.dataset import encrypt_dataset
from chiron.core.schema import DatasetSchema
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.server import serve_forever
from chiron.host.service import Service

SCHEMA = DatasetSchema((3, 32, 32), "uint8", 10)
MIB = 1 << 20


def make_dataset(path: Path, size_mib: int) -> None:
    records = size_mib * MIB // SCHEMA.record_bytes
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(1024, *SCHEMA.input_shape), dtype=np.uint8)
    y = rng.integers(0, 10, size=1024)

    def batches():
        left = records
        while left:
            take = min(left, 1024)
            yield x[:take], y[:take]
            left -= take

    encrypt_dataset(batches(), path, random_key(), schema=SCHEMA, record_count=records)


def copy_with_fsync(source: Path, target: Path) -> float:
    start = time.perf_counter()
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 * MIB)
        dst.flush()
        os.fsync(dst.fileno())
    return time.perf_counter() - start


def _serve(state: Path, ready: Connection) -> None:
    """What `chiron serve` runs, in this child process; sends its URL and an owner token."""

    def on_ready(service: Service, url: str) -> None:
        ready.send((url, create_account(service.db, service.pepper, name="bench", role="owner")))

    serve_forever(ServiceConfig(state_dir=state), host="127.0.0.1", port=0, on_ready=on_ready)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload(path: Path, work: Path, chunk_bytes: int, *, cold: bool) -> tuple[float, float, float]:
    """Seconds for one upload, and the CPU seconds the client and the service spent on it."""
    state = Path(tempfile.mkdtemp(dir=work))
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_serve, args=(state, theirs))
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        url, token = ours.recv()
        with ServiceClient(url, token) as client:
            if not cold:
                client.health()
            cpu = cpu_seconds(os.getpid()), cpu_seconds(pid)
            start = time.perf_counter()
            client.upload(path, kind="dataset", progress=False, chunk_bytes=chunk_bytes)
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(os.getpid()) - cpu[0], cpu_seconds(pid) - cpu[1]
    finally:
        server.terminate()
        server.join(timeout=60)
    shutil.rmtree(state)
    return elapsed, *cpu


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[128])
    parser.add_argument("--chunk-mib", type=int, default=DEFAULT_CHUNK_BYTES // MIB)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--cold", action="store_true", help="time the service's first request")
    options = parser.parse_args()
    warm = "first request timed" if options.cold else "service warmed by one request"
    print(f"chunks of {options.chunk_mib} MiB; {warm}; best and median of {options.repeats}")
    with tempfile.TemporaryDirectory(dir=options.dir) as scratch:
        work = Path(scratch)
        print(
            f"{'size':>8} {'copy s':>8} {'upload s':>9} {'MiB/s':>7} {'ratio':>6} "
            f"{'median':>7} {'cpu client':>10} {'service':>8}  load (1/5/15 min)"
        )
        for size in options.sizes_mib:
            dataset = work / f"data-{size}.chd"
            make_dataset(dataset, size)
            mib = dataset.stat().st_size / MIB
            copies, runs = [], []
            for _ in range(options.repeats):
                copies.append(copy_with_fsync(dataset, work / "copy"))
                runs.append(upload(dataset, work, options.chunk_mib * MIB, cold=options.cold))
            uploads = [elapsed for elapsed, _, _ in runs]
            best_copy, best_upload = min(copies), min(uploads)
            median = statistics.median(u / c for u, c in zip(uploads, copies, strict=True))
            client_cpu = statistics.median(cpu for _, cpu, _ in runs)
            service_cpu = statistics.median(cpu for _, _, cpu in runs)
            print(
                f"{mib:7.0f}M {best_copy:8.3f} {best_upload:9.3f} "
                f"{mib / best_upload:7.1f} {best_upload / best_copy:5.1f}x {median:6.1f}x "
                f"{client_cpu:10.2f} {service_cpu:8.2f}  {load()}"
            )


if __name__ == "__main__":
    main()
