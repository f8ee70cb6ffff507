"""Averaging parameter vectors (safetensors bytes) without torch, layout kept byte for byte."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from chiron.core.errors import IntegrityError
from chiron.enclave.distributed.averaging import AsynchronousModel, ParameterLayout


def vector(weight: np.ndarray, bias: np.ndarray, count: int) -> bytes:
    return safetensors.numpy.save(
        {
            "layer.weight": weight.astype(np.float32),
            "layer.bias": bias.astype(np.float16),
            "norm.num_batches_tracked": np.array(count, dtype=np.int64),
        }
    )


def test_the_average_keeps_the_layout_and_averages_only_floats():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)) for _ in range(3)]
    biases = [rng.normal(size=4) for _ in range(3)]
    vectors = [vector(w, b, 7) for w, b in zip(weights, biases, strict=True)]
    layout = ParameterLayout(vectors[0])
    average = layout.average(vectors)
    assert len(average) == len(vectors[0])
    layout.check(average, who="the average")
    loaded = safetensors.numpy.load(average)
    np.testing.assert_allclose(loaded["layer.weight"], np.mean(weights, axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        loaded["layer.bias"], np.mean([b.astype(np.float16) for b in biases], axis=0), atol=1e-3
    )
    assert loaded["norm.num_batches_tracked"] == 7


def test_floats_round_trip_exactly():
    original = vector(np.arange(12.0).reshape(3, 4) / 7, np.ones(4) / 3, 1)
    layout = ParameterLayout(original)
    assert layout.float_elements == 16
    assert layout.with_floats(original, layout.to_floats(original)) == original


def test_bfloat16_tensors_are_averaged_too():
    def bf16(values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)

    # safetensors.numpy has no bfloat16: write the header by hand.
    def blob(values: np.ndarray) -> bytes:
        data = bf16(values).astype("<u2").tobytes()
        header = json.dumps(
            {"w": {"dtype": "BF16", "shape": [len(values)], "data_offsets": [0, len(data)]}}
        ).encode()
        return struct.pack("<Q", len(header)) + header + data

    first, second = blob(np.array([1.0, 2.0, -4.0])), blob(np.array([3.0, 4.0, 4.0]))
    layout = ParameterLayout(first)
    np.testing.assert_array_equal(layout.to_floats(layout.average([first, second])), [2, 3, 0])


def test_a_vector_of_another_layout_is_refused():
    layout = ParameterLayout(vector(np.zeros((3, 4)), np.zeros(4), 0))
    with pytest.raises(IntegrityError, match="do not have the job's layout"):
        layout.check(vector(np.zeros((4, 3)), np.zeros(4), 0), who="worker 2")
    with pytest.raises(IntegrityError, match="not a safetensors file"):
        ParameterLayout(b"\xff" * 16)


def test_asynchronous_updates_add_each_workers_progress():
    start = [vector(np.full((3, 4), v), np.zeros(4), 0) for v in (1.0, 3.0)]
    model = AsynchronousModel(ParameterLayout(start[0]), workers=2)
    for worker, initial in enumerate(start, 1):
        model.start(worker, initial)
    first = [safetensors.numpy.load(model.answer(w))["layer.weight"] for w in (1, 2)]
    assert all(np.all(w == 2.0) for w in first)
    # Worker 1 moved its weights by +4, worker 2 by -2: each counts for half.
    model.update(1, vector(np.full((3, 4), 6.0), np.zeros(4), 5))
    after_one = safetensors.numpy.load(model.answer(1))
    assert np.all(after_one["layer.weight"] == 4.0)
    assert after_one["norm.num_batches_tracked"] == 5
    model.update(2, vector(np.full((3, 4), 0.0), np.zeros(4), 5))
    assert np.all(safetensors.numpy.load(model.answer(2))["layer.weight"] == 3.0)


def test_one_update_from_everyone_is_the_synchronous_average():
    rng = np.random.default_rng(1)
    initial = vector(rng.normal(size=(3, 4)), rng.normal(size=4), 0)
    layout = ParameterLayout(initial)
    model = AsynchronousModel(layout, workers=3)
    for worker in (1, 2, 3):
        model.start(worker, initial)
    for worker in (1, 2, 3):
        model.answer(worker)
    updates = [vector(rng.normal(size=(3, 4)), rng.normal(size=4), 1) for _ in range(3)]
    for worker, update in enumerate(updates, 1):
        model.update(worker, update)
    np.testing.assert_allclose(
        layout.to_floats(model.answer(1)), layout.to_floats(layout.average(updates)), atol=1e-3
    )
