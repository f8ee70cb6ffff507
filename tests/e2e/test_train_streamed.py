"""`chiron train --local` on a data set larger than the streaming limit (1 GiB).

The enclave never decrypts it whole: it holds out whole chunks and streams the rest
through the child's ring of two windows. The weights must be exactly those of a plain
run over the same records in the same order (`sdk.train_plain` with the streamed
plan), and a chunk the host rewrote must stop the job before any model exists.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.e2e.conftest import train_args
from tests.e2e.model_access import open_model

from chiron.core.crypto import random_key
from chiron.core.data_windows import (
    STREAM_ABOVE_BYTES,
    EpochWindows,
    StreamLayout,
    split_chunks,
)
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.keys import DataKey
from chiron.core.recipe_protocol import TrainingPlan
from chiron.core.schema import DatasetSchema

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("streamed-data")]

SCHEMA = DatasetSchema((3, 64, 64), "uint8", 3)
# Just over the limit: the smallest data set that streams.
RECORDS = STREAM_ABOVE_BYTES // (SCHEMA.record_bytes + 8) + 2000
BATCH = 512
SEED = 7
WIDE_RECIPE = textwrap.dedent(
    """
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 1, "batch_size": 512, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU(),
                             nn.Linear(8, schema.num_classes))
    """
)


def _batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The records, regenerated identically on every call (1.1 GB is not kept around)."""
    rng = np.random.default_rng(3)
    for start in range(0, RECORDS, 8192):
        count = min(8192, RECORDS - start)
        y = rng.integers(0, SCHEMA.num_classes, size=count)
        x = rng.integers(0, 40, size=(count, *SCHEMA.input_shape), dtype=np.uint8)
        x[np.arange(count), y] += 150  # the label's channel is bright: learnable
        yield x, y.astype(np.int64)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("big")
    key = random_key()
    header = encrypt_dataset(
        _batches(), folder / "big.chd", key, schema=SCHEMA, record_count=RECORDS
    )
    DataKey(header.dataset_id, key).save(folder / "big.key")
    return folder / "big.chd", folder / "big.key"


def _streamed_args(world, dataset: Path, key: Path, out: Path) -> list:
    recipe = world.write_recipe("wide.py", WIDE_RECIPE)
    return train_args(world, recipe=recipe, dataset=dataset, data_key=key, out=out)


def _windows(dataset: Path) -> EpochWindows:
    """The windows the enclave streams `dataset` through, from its public header."""
    header, _ = read_dataset_header_and_digest(dataset)
    layout = StreamLayout.for_dataset(
        record_count=RECORDS,
        records_per_chunk=header.records_per_chunk,
        record_bytes=SCHEMA.record_bytes,
        batch_size=BATCH,
    )
    return layout.windows(SEED, BATCH)


@pytest.fixture(scope="module")
def plain_weights(big_dataset) -> bytes:
    """The weights of a plain run over the same records in the streamed plan's order."""
    from chiron.recipes.sdk import train_plain

    windows = _windows(big_dataset[0])
    assert windows.per_epoch > 2, "the data set must span several windows"
    plan = TrainingPlan.fixed(
        num_train=windows.num_train,
        batch_size=BATCH,
        epochs=1,
        seed=SEED,
        checkpoint_every=200,
        stream=windows.layout,
    )
    x = np.concatenate([x for x, _ in _batches()])
    y = np.concatenate([y for _, y in _batches()])
    return train_plain(WIDE_RECIPE, SCHEMA, x, y, plan)


def test_a_data_set_over_the_limit_streams_to_the_plain_runs_weights(
    world, run_chiron, big_dataset, plain_weights
) -> None:
    dataset, key = big_dataset
    out = world.root / "big-model.chm"
    result = run_chiron(*_streamed_args(world, dataset, key, out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.with_suffix(".report.json").read_text())

    header, _ = read_dataset_header_and_digest(dataset)
    _, held = split_chunks(RECORDS, header.records_per_chunk, SEED)
    per_chunk = header.records_per_chunk
    held_records = sum(min(per_chunk, RECORDS - c * per_chunk) for c in held)
    assert summary["holdout_records"] == held_records
    assert summary["final_holdout_accuracy"] > 0.9
    assert open_model(out, world.owner, world.provider).weights == plain_weights


# Calibrated on this machine and then held to its clock: other tests' load would make it
# overrun its slots, hence alone.
@pytest.mark.alone
def test_a_fixed_rate_job_calibrates_and_streams_on_its_clock_to_the_same_weights(
    world, run_chiron, big_dataset, plain_weights
) -> None:
    dataset, key = big_dataset
    out = world.root / "paced-model.chm"
    result = run_chiron(*_streamed_args(world, dataset, key, out), "--fixed-rate")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["fixed_rate"]["calibrated"] and report["fixed_rate"]["period_ms"] > 0
    assert open_model(out, world.owner, world.provider).weights == plain_weights


def test_a_chunk_rewritten_by_the_host_stops_a_streamed_job_without_a_model(
    world, run_chiron, big_dataset, tmp_path
) -> None:
    dataset, key = big_dataset
    header, _ = read_dataset_header_and_digest(dataset)
    windows = _windows(dataset)
    # A chunk of the second window: the job has started training when it reaches it.
    target = int(windows.chunks(1)[0])
    tampered = tmp_path / "tampered.chd"
    blob = bytearray(dataset.read_bytes())
    header_size = len(blob) - RECORDS * header.stored_record_bytes - header.chunk_count * 16
    blob[header_size + target * (header.chunk_size + 16) + 1000] ^= 0x40
    tampered.write_bytes(bytes(blob))
    del blob
    # The manifest names the file's header, which the host left alone.
    out = world.root / "tampered-model.chm"
    result = run_chiron(*_streamed_args(world, tampered, key, out))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    # What failed crosses the enclave's boundary as a class only, as for any dataset.
    assert last == "chiron: error: training failed: integrity"
    assert not out.exists()
    assert not list(world.root.glob("tampered-model*"))


def test_a_group_refuses_a_data_set_that_streams_before_starting_anything(
    world, run_chiron, big_dataset
) -> None:
    dataset, key = big_dataset
    out = world.root / "group-model.chm"
    result = run_chiron(*_streamed_args(world, dataset, key, out), "--workers", "2")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"chiron: error: {dataset}: a group trains on data sets of at most 1 GiB; "
        "train a larger one on one enclave"
    ]
    assert not out.exists()
