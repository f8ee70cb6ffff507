"""Encrypted dataset throughput and memory against plain AES-256-GCM.

Encrypts a synthetic data set of CIFAR-sized records into a .chd file and verifies it
(full authenticated read), then does the same bytes with raw AES-256-GCM in chunks of
the same size, once writing and reading a file with the same fsync and once in memory,
all in the same run. Each size runs in a fresh process so its peak RSS is its own: the peak
must not grow with the data set size.

    .venv/bin/python benchmarks/dataset_crypto.py [--sizes-mib 64 256] [--dir DIR] [--repeats 3]

"raw+file" is the plain baseline doing the same file I/O (write + fsync, read back);
"raw mem" is AES-256-GCM alone in memory, an upper bound no file format can reach.
Ratios are Chiron's throughput over the baseline's, from the best of the repeats (and,
beside it, the median of the repeats' own ratios); Chiron and the baseline take turns
going first. The load average is printed beside the figures: on a shared machine it
moves them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chiron.core.crypto import random_key
from chiron.core.dataset import DatasetHeader, encrypt_dataset, verify_dataset
from chiron.core.schema import DatasetSchema

SCHEMA = DatasetSchema((3, 32, 32), "uint8", 10)
BATCH_RECORDS = 1024
MIB = 1 << 20


def synthetic_batches(record_count: int, rng: np.random.Generator):
    """The same random batch over and over: generating data is not what is measured."""
    x = rng.integers(0, 256, size=(BATCH_RECORDS, *SCHEMA.input_shape), dtype=np.uint8)
    y = rng.integers(0, SCHEMA.num_classes, size=BATCH_RECORDS)
    for start in range(0, record_count, BATCH_RECORDS):
        take = min(BATCH_RECORDS, record_count - start)
        yield x[:take], y[:take]


def raw_chunks(total: int, chunk_size: int, rng: np.random.Generator):
    block = rng.integers(0, 256, size=chunk_size, dtype=np.uint8).tobytes()
    for start in range(0, total, chunk_size):
        yield block[: min(chunk_size, total - start)]


def raw_encrypt(key: bytes, total: int, chunk_size: int, rng, out_path: Path | None) -> float:
    aead = AESGCM(key)
    start = time.perf_counter()
    handle = open(out_path, "wb") if out_path else None
    for index, chunk in enumerate(raw_chunks(total, chunk_size, rng)):
        sealed = aead.encrypt(index.to_bytes(12, "big"), chunk, b"")
        if handle:
            handle.write(sealed)
    if handle:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
    return time.perf_counter() - start


def raw_decrypt_file(key: bytes, path: Path, chunk_size: int) -> float:
    aead = AESGCM(key)
    start = time.perf_counter()
    with open(path, "rb") as handle:
        index = 0
        while sealed := handle.read(chunk_size + 16):
            aead.decrypt(index.to_bytes(12, "big"), sealed, b"")
            index += 1
    return time.perf_counter() - start


def raw_decrypt_memory(key: bytes, total: int, chunk_size: int, rng) -> float:
    aead = AESGCM(key)
    sealed = [
        aead.encrypt(i.to_bytes(12, "big"), chunk, b"")
        for i, chunk in enumerate(raw_chunks(min(total, 8 * chunk_size), chunk_size, rng))
    ]
    start = time.perf_counter()
    done = 0
    index = 0
    while done < total:
        blob = sealed[index % len(sealed)]
        aead.decrypt((index % len(sealed)).to_bytes(12, "big"), blob, b"")
        done += len(blob) - 16
        index += 1
    return time.perf_counter() - start


def child(size_mib: int, directory: Path, repeats: int) -> dict:
    """Best of `repeats` for each measurement, alternating Chiron and raw runs."""
    rng = np.random.default_rng(0)
    key = random_key()
    header = DatasetHeader.plan("0" * 32, SCHEMA, size_mib * MIB // (SCHEMA.record_bytes + 8))
    total = header.record_count * header.stored_record_bytes
    chd = directory / f"bench-{size_mib}.chd"
    raw = directory / f"bench-{size_mib}.raw"
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    def chiron() -> None:
        start = time.perf_counter()
        encrypt_dataset(
            synthetic_batches(header.record_count, rng),
            chd,
            key,
            schema=SCHEMA,
            record_count=header.record_count,
            overwrite=True,
        )
        record("chiron_encrypt_s", time.perf_counter() - start)
        start = time.perf_counter()
        verify_dataset(chd, key)
        record("chiron_verify_s", time.perf_counter() - start)
        chd.unlink()

    def baseline() -> None:
        record("raw_encrypt_file_s", raw_encrypt(key, total, header.chunk_size, rng, raw))
        record("raw_verify_file_s", raw_decrypt_file(key, raw, header.chunk_size))
        raw.unlink()

    for repeat in range(repeats):
        for run in (chiron, baseline) if repeat % 2 == 0 else (baseline, chiron):
            run()
        record("raw_encrypt_memory_s", raw_encrypt(key, total, header.chunk_size, rng, None))
        record("raw_verify_memory_s", raw_decrypt_memory(key, total, header.chunk_size, rng))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        {
            "size_mib": size_mib,
            "records": header.record_count,
            "chunk_size": header.chunk_size,
            "bytes": total,
            "peak_rss_mib": peak_kib / 1024,
        }
        | {name: min(values) for name, values in times.items()}
        | {
            f"median_ratio_{step}": statistics.median(
                raw_s / chiron_s
                for chiron_s, raw_s in zip(
                    times[f"chiron_{step}_s"], times[f"raw_{step}_file_s"], strict=True
                )
            )
            for step in ("encrypt", "verify")
        }
    )


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the test files")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.repeats)))
        return

    load_before = load()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        results = []
        for size in args.sizes_mib:
            completed = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(size),
                    "--dir",
                    directory,
                    "--repeats",
                    str(args.repeats),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            results.append(json.loads(completed.stdout))

    def rate(result: dict, key: str) -> float:
        return result["bytes"] / MIB / result[key]

    print(
        f"chunk size {results[0]['chunk_size']} bytes; throughput in MiB/s, best of "
        f"{args.repeats}; load average (1/5/15 min) {load_before} before, {load()} after"
    )
    print(
        f"{'size':>8} {'step':>8} {'chiron':>8} {'raw+file':>9} {'ratio':>6} {'median':>7} "
        f"{'raw mem':>8} {'ratio':>6} {'peak RSS':>9}"
    )
    for result in results:
        for step in ("encrypt", "verify"):
            chiron = rate(result, f"chiron_{step}_s")
            raw_file = rate(result, f"raw_{step}_file_s")
            raw_memory = rate(result, f"raw_{step}_memory_s")
            print(
                f"{result['size_mib']:>5} MiB {step:>8} {chiron:>8.0f} {raw_file:>9.0f} "
                f"{chiron / raw_file:>6.2f} {result[f'median_ratio_{step}']:>7.2f} "
                f"{raw_memory:>8.0f} {chiron / raw_memory:>6.2f} "
                f"{result['peak_rss_mib']:>6.0f} MiB"
            )
    peaks = [r["peak_rss_mib"] for r in results]
    print(
        f"peak RSS from {results[0]['size_mib']} to {results[-1]['size_mib']} MiB of data: "
        f"{peaks[0]:.0f} -> {peaks[-1]:.0f} MiB"
    )


if __name__ == "__main__":
    main()
