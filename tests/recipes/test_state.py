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
