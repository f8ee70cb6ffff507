"""Upload throughput through `chiron serve` against a plain file copy of the same bytes.

Encrypts a synthetic data set into a .chd file, then, in the same run, (1) copies it
with the same fsync the service does (the plain baseline: what storing it costs at
all), and (2) uploads it to a service on a loopback port with the client SDK: chunked
PUTs each with its SHA-256, fsync per chunk, whole-file SHA-256 and header check at
completion, registration in SQLite. The ratio is upload time over copy time.

    .venv/bin/python benchmarks/service_upload.py [--sizes-mib 64 256] [--chunk-mib 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from chiron.client.remote import ServiceClient
from chiron.core.crypto import random_key
from chiron.core.dataset import encrypt_dataset
from chiron.core.schema import DatasetSchema
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.server import running_service

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


def upload(path: Path, work: Path, chunk_bytes: int) -> float:
    state = Path(tempfile.mkdtemp(dir=work))
    with running_service(ServiceConfig(state_dir=state)) as (service, url):
        token = create_account(service.db, service.pepper, name="bench", role="owner")
        with ServiceClient(url, token) as client:
            start = time.perf_counter()
            client.upload(path, kind="dataset", progress=False, chunk_bytes=chunk_bytes)
            elapsed = time.perf_counter() - start
    shutil.rmtree(state)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=options.dir) as scratch:
        work = Path(scratch)
        print(f"{'size':>8} {'copy s':>8} {'upload s':>9} {'MiB/s':>7} {'ratio':>6}")
        for size in options.sizes_mib:
            dataset = work / f"data-{size}.chd"
            make_dataset(dataset, size)
            mib = dataset.stat().st_size / MIB
            copies = [copy_with_fsync(dataset, work / "copy") for _ in range(options.repeats)]
            uploads = [
                upload(dataset, work, options.chunk_mib * MIB) for _ in range(options.repeats)
            ]
            best_copy, best_upload = min(copies), min(uploads)
            print(
                f"{mib:7.0f}M {best_copy:8.3f} {best_upload:9.3f} "
                f"{mib / best_upload:7.1f} {best_upload / best_copy:5.1f}x"
            )


if __name__ == "__main__":
    main()
