"""A data set larger than memory: the enclave's ring filler against the child's reader.

These drive the real `StreamedData` (decrypting a real encrypted file into a real
memfd ring on its loader thread) and the real `WindowedRecords` (mapping that ring
read-only) in one process, step by step as the trainer and the child's loop do, with
a stand-in for the sandbox's pipe that keeps the WINDOW frames in order. Every batch
is compared with the one the documented order picks from the plaintext.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from chiron.core import data_windows
from chiron.core.crypto import random_key
from chiron.core.data_windows import EpochWindows, StreamLayout, holdout_records, split_chunks
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.errors import EnclaveError, InputError, IntegrityError
from chiron.core.recipe_protocol import ReasonClass, ToChild, TrainingPlan
from chiron.core.schema import DatasetSchema
from chiron.enclave import streamed_data
from chiron.enclave.sandbox import SandboxFailure
from chiron.enclave.sandbox.shared_file import RingWriter, SharedFile
from chiron.enclave.streamed_data import StreamedData
from chiron.enclave.training_data import calibration_plan
from chiron.recipes.hooks import load_recipe
from chiron.recipes.loop import TrainingRun
from chiron.recipes.windowed_records import (
    WindowedRecords,
    WindowedRecordsInMemory,
    WindowError,
)

# 16 KiB records: 63 to a 1 MiB chunk, so a few hundred records make dozens of chunks.
SCHEMA = DatasetSchema((1, 128, 128), "uint8", 10)
RECORDS = 2000
SEED = 11


class FakePipe:
    """The sandbox as the enclave's filler sees it: a ring, and frames in order."""

    def __init__(self, time_left: float = 60.0) -> None:
        self.ring = SharedFile("test-ring")
        self.frames: list[tuple[ToChild, bytes]] = []
        self.seconds_left = time_left

    def time_left(self) -> float:
        return self.seconds_left

    def share_ring(self, size: int) -> RingWriter:
        return self.ring.make_ring(size)

    def notify(self, kind: ToChild, payload: bytes = b"") -> None:
        self.frames.append((kind, payload))

    def send(self, kind: ToChild, payload: bytes = b"") -> None:
        self.frames.append((kind, payload))

    def newest_window(self) -> int:
        windows = [json.loads(p)["window"] for k, p in self.frames if k == ToChild.WINDOW]
        assert windows == sorted(windows) and len(set(windows)) == len(windows)
        return windows[-1] if windows else -1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(RECORDS, *SCHEMA.input_shape), dtype=np.uint8)
    # Each record's first byte pair names it, so a batch says which records it holds.
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(RECORDS) % 256, np.arange(RECORDS) // 256
    y = rng.integers(0, 10, size=RECORDS).astype(np.int64)
    path = tmp_path_factory.mktemp("streamed") / "data.chd"
    key = random_key()
    encrypt_dataset([(x, y)], path, key, schema=SCHEMA, record_count=RECORDS)
    return path, key, x, y


def _plan(path: Path, batch_size: int, epochs: int, window_chunks: int) -> TrainingPlan:
    header, _ = read_dataset_header_and_digest(path)
    layout = StreamLayout(header.record_count, header.records_per_chunk, window_chunks)
    windows = layout.windows(SEED, batch_size)
    return TrainingPlan.fixed(
        num_train=windows.num_train,
        batch_size=batch_size,
        epochs=epochs,
        seed=SEED,
        checkpoint_every=10,
        stream=layout,
    )


def _open(path: Path, key: bytes) -> StreamedData:
    return StreamedData(path, key, read_dataset_header_and_digest(path)[1], SEED)


def _header_size(path: Path, blob: bytes | bytearray) -> int:
    chunks = read_dataset_header_and_digest(path)[0].chunk_count
    return len(blob) - RECORDS * (SCHEMA.record_bytes + 8) - chunks * 16


def _sealed_chunk(path: Path) -> int:
    return read_dataset_header_and_digest(path)[0].chunk_size + 16


def _record_ids(records: np.ndarray) -> list[int]:
    return (records[:, 0, 0, 0].astype(int) + 256 * records[:, 0, 0, 1].astype(int)).tolist()


def _expected_ids(windows: EpochWindows, step: int) -> list[int]:
    """Step `step`'s records by the documented order, from the plaintext layout alone."""
    ids = []
    per_chunk = windows.layout.records_per_chunk
    for window, positions in windows.batch_positions(step):
        slot = [c * per_chunk + r for c in windows.chunks(window) for r in range(per_chunk)]
        slot = [i for i in slot if i < windows.layout.record_count]
        ids.extend(slot[p] for p in positions)
    return ids


def _drive(data: StreamedData, pipe: FakePipe, plan: TrainingPlan, start: int) -> WindowedRecords:
    """The trainer's calls and the child's reads, interleaved as in a run from `start`."""

    def wait_for(window: int) -> int:
        newest = pipe.newest_window()
        assert newest >= window, "the child would wait for a window the enclave never sent"
        return newest

    data.share(pipe, plan, start)  # type: ignore[arg-type]
    child = WindowedRecords(pipe.ring.reader_fd, plan, SCHEMA, wait_for)
    return child


def test_the_child_reads_every_batch_the_order_names(dataset) -> None:
    path, key, x, y = dataset
    plan = _plan(path, batch_size=50, epochs=2, window_chunks=3)
    pipe = FakePipe()
    with _open(path, key) as data:
        child = _drive(data, pipe, plan, 0)
        windows = child.windows
        assert windows.per_epoch > 3, "the data set must span several windows"
        seen: list[int] = []
        for step in range(plan.total_steps):
            data.before_step(step)
            records, labels = child.batch(step, plan)
            ids = _record_ids(records)
            assert ids == _expected_ids(windows, step)
            assert np.array_equal(records, x[ids]) and np.array_equal(labels, y[ids])
            seen.extend(ids)
            data.steps_done(step + 1)
    assert pipe.frames[0][0] == ToChild.DATA
    train, held = windows.train_chunks, windows.holdout_chunks
    per_chunk = windows.layout.records_per_chunk
    holdout = {i for c in held for i in range(c * per_chunk, min((c + 1) * per_chunk, RECORDS))}
    for epoch in range(2):
        visited = seen[epoch * windows.num_train : (epoch + 1) * windows.num_train]
        # Every training record once per epoch; no held-out record ever.
        assert sorted(visited) == sorted(set(range(RECORDS)) - holdout)
    assert (
        len(holdout) >= holdout_records(RECORDS)
        and len(train) + len(held) == windows.layout.chunk_count
    )
    # The two epochs visit the records in different orders.
    assert seen[: windows.num_train] != seen[windows.num_train :]


def test_the_plain_reference_draws_the_same_batches_as_the_ring(dataset) -> None:
    path, key, x, y = dataset
    plan = _plan(path, batch_size=50, epochs=2, window_chunks=3)
    plain = WindowedRecordsInMemory(x, y, plan)
    pipe = FakePipe()
    with _open(path, key) as data:
        child = _drive(data, pipe, plan, 0)
        for step in range(plan.total_steps):
            data.before_step(step)
            ring_x, ring_y = child.batch(step, plan)
            plain_x, plain_y = plain.batch(step, plan)
            assert np.array_equal(ring_x, plain_x) and np.array_equal(ring_y, plain_y)
            data.steps_done(step + 1)


def test_the_ring_never_holds_a_held_out_record(dataset) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=40, epochs=1, window_chunks=2)
    pipe = FakePipe()
    with _open(path, key) as data:
        held_x, held_y = data.holdout()
        child = _drive(data, pipe, plan, 0)
        held_ids = set(_record_ids(held_x))
        assert len(held_ids) == len(held_y) >= holdout_records(RECORDS)
        for step in range(plan.total_steps):
            data.before_step(step)
            child.batch(step, plan)
            for records, _ in child._slots:
                assert not held_ids & set(_record_ids(records))
            data.steps_done(step + 1)


def test_a_run_resumed_in_the_middle_continues_to_the_same_weights(dataset) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=64, epochs=2, window_chunks=2)
    source = (Path(__file__).parents[2] / "examples" / "recipes" / "mlp.py").read_text()
    recipe = load_recipe(source, overrides={"epochs": 2, "batch_size": 64})

    def run(start_state: bytes | None, start: int, stop: int) -> tuple[bytes, bytes]:
        pipe = FakePipe()
        with _open(path, key) as data:
            child = _drive(data, pipe, plan, start)
            training = TrainingRun(recipe, SCHEMA, plan, child)
            if start_state is not None:
                training.restore(start_state)
            for step in range(start, stop):
                data.before_step(step)
                training.run_until(step + 1)
                data.steps_done(step + 1)
            return bytes(training.checkpoint()), training.model_weights()

    middle = plan.total_steps // 2 + 3
    _, uninterrupted = run(None, 0, plan.total_steps)
    state, _ = run(None, 0, middle)
    _, resumed = run(state, middle, plan.total_steps)
    assert resumed == uninterrupted


def test_a_chunk_the_host_rewrote_stops_the_run_before_the_child_sees_it(dataset, tmp_path) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=50, epochs=1, window_chunks=3)
    windows = plan.stream.windows(SEED, 50)
    late = int(windows.chunks(windows.per_epoch - 1)[0])  # read only in the last window
    tampered = tmp_path / "tampered.chd"
    blob = bytearray(path.read_bytes())
    header_size = _header_size(path, blob)
    blob[header_size + late * _sealed_chunk(path) + 100] ^= 1
    tampered.write_bytes(bytes(blob))
    pipe = FakePipe()
    with StreamedData(tampered, key, read_dataset_header_and_digest(path)[1], SEED) as data:
        child = _drive(data, pipe, plan, 0)
        with pytest.raises(IntegrityError, match=f"chunk {late} does not authenticate"):
            for step in range(plan.total_steps):
                data.before_step(step)
                child.batch(step, plan)
                data.steps_done(step + 1)
        # The last window was never announced: the child got nothing of the rewritten chunk.
        assert pipe.newest_window() < windows.per_epoch - 1


def test_the_loader_writes_only_into_the_ring_after_the_sandbox_closed(dataset, tmp_path) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=50, epochs=1, window_chunks=3)
    windows = plan.stream.windows(SEED, 50)
    pipe = FakePipe()
    with _open(path, key) as data:
        data.share(pipe, plan, 0)  # type: ignore[arg-type]
        data.before_step(0)
        # The child failed: the sandbox closes its end of the shared file, and files the
        # enclave opens next (checkpoints on the host's disk) get the numbers it freed.
        pipe.ring.close()
        victims = [open(tmp_path / f"victim-{i}", "wb") for i in range(8)]
        try:
            freed = windows.last_step_of(0) + 1
            data.steps_done(freed)  # window 2 loads into slot 0 now
            data.before_step(windows.last_step_of(1))  # the first step that needs it
        finally:
            for victim in victims:
                victim.close()
    assert pipe.newest_window() >= 2
    assert all((tmp_path / f"victim-{i}").stat().st_size == 0 for i in range(8))


def test_chunks_swapped_by_the_host_do_not_authenticate(dataset, tmp_path) -> None:
    path, key, _, _ = dataset
    blob = bytearray(path.read_bytes())
    sealed = _sealed_chunk(path)
    header_size = _header_size(path, blob)
    first, second = header_size, header_size + sealed
    blob[first:second], blob[second : second + sealed] = (
        blob[second : second + sealed],
        blob[first:second],
    )
    swapped = tmp_path / "swapped.chd"
    swapped.write_bytes(bytes(blob))
    with StreamedData(swapped, key, read_dataset_header_and_digest(path)[1], SEED) as data:
        with pytest.raises(IntegrityError, match="does not authenticate"):
            data._chunks.chunk(0)


def test_a_file_other_than_the_one_the_job_names_is_refused(dataset, tmp_path) -> None:
    path, key, x, y = dataset
    other = tmp_path / "other.chd"
    encrypt_dataset([(x, y)], other, key, schema=SCHEMA, record_count=RECORDS)
    with pytest.raises(IntegrityError, match="not the one the job names"):
        StreamedData(other, key, read_dataset_header_and_digest(path)[1], SEED)
    cut = tmp_path / "cut.chd"
    cut.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IntegrityError, match="truncated, extended or tampered"):
        StreamedData(cut, key, read_dataset_header_and_digest(path)[1], SEED)
    with pytest.raises(IntegrityError, match="wrong key"):
        StreamedData(path, random_key(), read_dataset_header_and_digest(path)[1], SEED)


def test_the_child_refuses_a_window_announced_over_one_it_still_reads(dataset) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=50, epochs=1, window_chunks=3)
    pipe = FakePipe()
    with _open(path, key) as data:
        _drive(data, pipe, plan, 0)
        child = WindowedRecords(pipe.ring.reader_fd, plan, SCHEMA, lambda window: window + 2)
        with pytest.raises(WindowError, match="replaced"):
            child.batch(0, plan)


def test_a_step_whose_window_was_never_loaded_is_an_enclave_error(dataset) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=50, epochs=1, window_chunks=3)
    with _open(path, key) as data:
        data.share(FakePipe(), plan, 0)  # type: ignore[arg-type]
        windows = plan.stream.windows(SEED, 50)
        with pytest.raises(EnclaveError, match="never loaded"):
            data.before_step(windows.last_step_of(3))


def test_the_layout_keeps_a_batch_within_two_windows() -> None:
    layout = StreamLayout.for_dataset(
        record_count=10**6, records_per_chunk=97, record_bytes=10_000, batch_size=1000
    )
    windows = layout.windows(3, 1000)
    assert windows.per_epoch > 2
    for step in range(windows.steps_per_epoch * 2):
        assert len(windows.windows_of(step)) <= 2
    sizes = [len(windows.chunks(w)) for w in range(windows.per_epoch)]
    assert min(sizes) >= layout.window_chunks and max(sizes) <= 2 * layout.window_chunks - 1
    with pytest.raises(InputError, match="whole batch"):
        StreamLayout(10**6, 97, 2).windows(3, 1000)


def test_streaming_starts_above_the_limit_only() -> None:
    limit = data_windows.STREAM_ABOVE_BYTES
    assert not data_windows.streams(limit // 1000, 1000 - 8)
    assert data_windows.streams(limit // 1000 + 1, 1000 - 8)


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"record_count": 1, "records_per_chunk": 1},
        {"record_count": True, "records_per_chunk": 1, "window_chunks": 1},
        {"record_count": 0, "records_per_chunk": 1, "window_chunks": 1},
        {"record_count": 1.0, "records_per_chunk": 1, "window_chunks": 1},
        {"record_count": 1, "records_per_chunk": 1, "window_chunks": 1, "extra": 1},
    ],
)
def test_a_malformed_stream_layout_is_refused(doc) -> None:
    with pytest.raises(ValueError, match="malformed stream layout"):
        StreamLayout.from_dict(doc)


def test_a_host_that_stalls_a_read_fails_the_job_as_timeout_by_its_deadline(
    dataset, monkeypatch
) -> None:
    path, key, _, _ = dataset
    plan = _plan(path, batch_size=50, epochs=1, window_chunks=3)
    windows = plan.stream.windows(SEED, 50)
    stalled = int(windows.chunks(2)[0])
    release = threading.Event()
    monkeypatch.setattr(streamed_data, "_STOP_SECONDS", 0.2)
    pipe = FakePipe(time_left=0.5)
    data = _open(path, key)
    real_chunk = data._chunks.chunk

    def chunk(index: int):
        if index == stalled:
            release.wait(30)  # the host's file system never answers, until the test ends
        return real_chunk(index)

    monkeypatch.setattr(data._chunks, "chunk", chunk)
    try:
        data.share(pipe, plan, 0)  # type: ignore[arg-type]
        data.steps_done(windows.last_step_of(0) + 1)  # window 2's load stalls
        with pytest.raises(SandboxFailure) as failure:
            data.before_step(windows.last_step_of(1))
        assert failure.value.reason == ReasonClass.TIMEOUT
        data.close()  # returns although the read is still stalled
        assert pipe.newest_window() == 1
    finally:
        release.set()


def test_a_ring_too_large_for_the_sandbox_is_refused_with_the_reason() -> None:
    layout = StreamLayout.for_dataset(
        record_count=10**5, records_per_chunk=1, record_bytes=600_000, batch_size=2048
    )
    with pytest.raises(InputError, match=r"a batch of 2048 records of 600000 bytes needs .* GiB"):
        layout.windows(1, 2048).check_ring(600_000)
    StreamLayout.for_dataset(
        record_count=10**5, records_per_chunk=1, record_bytes=600_000, batch_size=64
    ).windows(1, 64).check_ring(600_000)


def test_a_slot_is_the_largest_window_and_no_larger() -> None:
    layout = StreamLayout.for_dataset(
        record_count=3 * 10**5, records_per_chunk=85, record_bytes=12_288, batch_size=512
    )
    windows = layout.windows(9, 512)
    sizes = [len(windows.chunks(w)) for w in range(windows.per_epoch)]
    assert windows.slot_records == max(sizes) * layout.records_per_chunk
    assert max(sizes) < 2 * layout.window_chunks - 1  # the bound a slot used to take


def test_the_calibration_of_a_streamed_plan_holds_two_slots_whatever_the_size() -> None:
    for records in (10**5, 10**7):
        layout = StreamLayout.for_dataset(
            record_count=records, records_per_chunk=85, record_bytes=12_288, batch_size=512
        )
        windows = layout.windows(9, 512)
        plan = TrainingPlan.fixed(
            num_train=windows.num_train, batch_size=512, epochs=2, seed=9,
            checkpoint_every=200, stream=layout,
        )  # fmt: skip
        stand_in = calibration_plan(plan)
        assert stand_in.stream is None and stand_in.batch_size == 512 and stand_in.epochs == 2
        assert stand_in.num_train == 2 * windows.slot_records


def test_the_cached_split_cannot_be_shuffled_in_place() -> None:
    train, held = split_chunks(10**5, 85, 3)
    for array in (train, held):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = array[-1]


def test_a_streamed_fixed_rate_job_calibrates_on_two_slots_of_synthetic_records() -> None:
    from chiron.enclave.fixed_rate import calibrate
    from chiron.enclave.recipe_session import Declaration
    from chiron.recipes.loop import declare

    source = (Path(__file__).parents[2] / "examples" / "recipes" / "mlp.py").read_bytes()
    overrides = {"epochs": 1, "batch_size": 64}
    declared, _ = declare(load_recipe(source, overrides=overrides), SCHEMA)
    declaration = Declaration(json.loads(declared.to_json()), SCHEMA)
    # 16 GB of records: the calibration must not make them.
    layout = StreamLayout.for_dataset(
        record_count=10**6, records_per_chunk=63, record_bytes=SCHEMA.record_bytes, batch_size=64
    )
    windows = layout.windows(SEED, 64)
    plan = TrainingPlan.fixed(
        num_train=windows.num_train, batch_size=64, epochs=1, seed=SEED,
        checkpoint_every=200, stream=layout,
    )  # fmt: skip
    rate = calibrate(
        schema=SCHEMA,
        recipe_name="mlp.py",
        recipe_source=source,
        overrides=overrides,
        plan=calibration_plan(plan),
        declaration=declaration,
        holdout_records=5000,
        exchanges=False,
    )
    assert rate.period_ms >= 10 and rate.load >= 1


def test_the_ring_s_label_size_is_the_protocol_s() -> None:
    from chiron.core.recipe_protocol import LABEL_DTYPE

    assert np.dtype(LABEL_DTYPE).itemsize == data_windows.LABEL_BYTES
