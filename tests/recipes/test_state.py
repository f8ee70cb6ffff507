"""Fixed-size training state: the size depends on the structure, never on the values."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from chiron.core.errors import InputError, RecipeError
from chiron.recipes.state import decode_state, encode_state


def sample_state(step: int, lr: float | None, fill: float) -> dict:
    return {
        "step": step,
        "flag": step % 2 == 0,
        "lr": lr,
        "name": "adam",
        "groups": [{"params": [0, 1], "betas": (0.9, 0.999)}],
        "state": {0: {"exp_avg": torch.full((3, 2), fill)}, 1: {"step": torch.tensor(fill)}},
        "numpy": ("MT19937", np.arange(5, dtype=np.uint32) * (step % 7), step, 0, fill),
        "python": random.getstate(),
        "bytes": torch.zeros(7, dtype=torch.uint8),
    }


def test_a_state_comes_back_exactly():
    state = sample_state(3, 0.5, 1.25)
    back = decode_state(encode_state(state))
    assert back.keys() == state.keys()
    assert back["step"] == 3 and back["flag"] is False and back["lr"] == 0.5
    assert back["groups"] == [{"params": [0, 1], "betas": (0.9, 0.999)}]
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["state"][1]["step"].dtype == torch.float32
    assert back["numpy"][0] == "MT19937"
    np.testing.assert_array_equal(back["numpy"][1], state["numpy"][1])
    assert back["numpy"][1].dtype == np.uint32
    assert back["python"] == state["python"]
    assert torch.equal(back["bytes"], state["bytes"])


def test_the_size_does_not_depend_on_the_values():
    random.seed(1)
    small = encode_state(sample_state(0, None, 0.0))
    random.gauss(0, 1)  # Python's generator now caches a float where it held None
    large = encode_state(sample_state(2**40 + 1, 1e-300 / 3, -1.0 / 3))
    assert len(small) == len(large)
    assert small != large


def test_shared_tensors_are_saved_as_copies():
    weight = torch.ones(2, 2)
    back = decode_state(encode_state({"a": weight, "b": weight}))
    assert torch.equal(back["a"], back["b"])


@pytest.mark.parametrize("value", [object(), np.array([object()]), 2**64, {1.5j}])
def test_what_cannot_be_saved_is_a_recipe_error(value):
    with pytest.raises(RecipeError):
        encode_state({"x": value})


@pytest.mark.parametrize(
    "data",
    [b"", b"CHRNCKPT", b"CHRNCKPT" + (5).to_bytes(8, "little") + b"[1,2]", b"PK\x03\x04" * 10],
)
def test_a_malformed_checkpoint_is_refused(data):
    with pytest.raises(InputError):
        decode_state(data)


DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint64, torch.uint32,
    torch.uint16, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2,
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_and_layout_comes_back_bit_for_bit(dtype):
    base = torch.arange(12, dtype=torch.int64).reshape(3, 4).to(dtype)
    values = [base, base.t(), base[:, 1::2], base[0, 0], base[:0]]
    back = decode_state(encode_state(values))
    for value, restored in zip(values, back, strict=True):
        assert restored.dtype == value.dtype and restored.shape == value.shape
        assert restored.is_contiguous()
        raw = value.contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(restored.reshape(-1).view(torch.uint8), raw)


def test_numpy_arrays_keep_their_dtype_byte_order_and_shape():
    big_endian = np.arange(12, dtype=">u4").reshape(3, 4)[:, ::2]
    back = decode_state(encode_state([big_endian, np.zeros((), np.int16), np.zeros(0)]))
    assert back[0].dtype == big_endian.dtype
    np.testing.assert_array_equal(back[0], big_endian)
    assert back[1].shape == () and back[2].shape == (0,)


def test_the_checkpoint_is_a_copy_of_the_state_at_the_time():
    weight = torch.ones(4)
    array = np.ones(3)
    data = encode_state({"w": weight, "a": array})
    frozen = bytes(data)
    weight.add_(1)
    array += 1
    assert data == frozen
    back = decode_state(data)
    assert torch.equal(back["w"], torch.ones(4))
    np.testing.assert_array_equal(back["a"], np.ones(3))


def test_tensor_data_is_aligned_widest_first():
    # A byte tensor before a float64 one in the state: the layout still puts each
    # tensor's data at an offset that is a multiple of its element size.
    data = encode_state(
        {"b": torch.zeros(3, dtype=torch.uint8), "d": torch.ones(2, dtype=torch.float64)}
    )
    skeleton_len = int.from_bytes(data[8:16], "little")
    blob = 16 + skeleton_len
    header_len = int.from_bytes(data[blob : blob + 8], "little")
    assert blob % 8 == 0 and header_len % 8 == 0
    start = blob + 8 + header_len
    assert np.frombuffer(data, dtype=np.float64, count=2, offset=start).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "value", [torch.zeros(2).to_sparse(), torch.zeros(2, dtype=torch.complex128)], ids=str
)
def test_a_tensor_safetensors_cannot_hold_is_a_recipe_error(value):
    with pytest.raises(RecipeError):
        encode_state({"x": value})
