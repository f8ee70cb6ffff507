"""Fixed-size serialization of a training state (model, optimizer, RNGs, step).

A checkpoint leaves the sandbox, so its size must be declared before the recipe sees
any data and must not vary with it. Here the size depends only on the state's
*structure*: tensors go into a safetensors blob (size fixed by names, shapes and
dtypes), and every Python scalar in the structure is written with the same width
whatever its value or type (float, int, bool, None), so a learning rate that changes,
or a cached Gaussian that comes and goes, cannot change the size. A structure that
does change (an optimizer growing new state) changes the size, which the caller
detects and refuses.

No pickle: a checkpoint is parsed, never executed.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from chiron.core.errors import InputError, RecipeError

MAGIC = b"CHRNCKPT"
_LENGTH = struct.Struct("<Q")
_SCALAR_WIDTH = 16  # hex digits of one 64-bit value


def encode_state(state: Any) -> bytes:
    """Serialize a nest of dicts, lists, tuples, tensors, numpy arrays and scalars."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(state, tensors), separators=(",", ":")).encode("utf-8")
    blob = safetensors.torch.save(tensors)
    return MAGIC + _LENGTH.pack(len(skeleton)) + skeleton + blob


def decode_state(data: bytes) -> Any:
    """Inverse of `encode_state`."""
    head = len(MAGIC) + _LENGTH.size
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise InputError("not a training checkpoint")
    (skeleton_len,) = _LENGTH.unpack_from(data, len(MAGIC))
    try:
        skeleton = json.loads(data[head : head + skeleton_len])
        tensors = safetensors.torch.load(data[head + skeleton_len :])
        return _decode(skeleton, tensors)
    except (ValueError, KeyError, TypeError, IndexError, struct.error, safetensors.SafetensorError):
        raise InputError("malformed training checkpoint") from None


def _scalar(tag: str, packed: bytes) -> str:
    return tag + packed.hex()


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    # bool before int (bool is an int); numpy scalars as their Python equivalents.
    if value is None:
        return _scalar("n", bytes(8))
    if isinstance(value, bool | np.bool_):
        return _scalar("b", struct.pack(">q", int(value)))
    if isinstance(value, int | np.integer):
        if not -(2**63) <= int(value) < 2**63:
            raise RecipeError("training state holds an integer beyond 64 bits")
        return _scalar("i", struct.pack(">q", int(value)))
    if isinstance(value, float | np.floating):
        return _scalar("f", struct.pack(">d", float(value)))
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        # A private, contiguous copy: state_dict tensors may share storage (tied weights).
        tensors[key] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
        return ["t", key]
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        key = str(len(tensors))
        raw = np.ascontiguousarray(value)
        tensors[key] = torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8)
        return ["a", raw.dtype.str, list(raw.shape), key]
    if isinstance(value, dict):
        return ["d", [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]]
    if isinstance(value, list):
        return ["l", [_encode(v, tensors) for v in value]]
    if isinstance(value, tuple):
        return ["u", [_encode(v, tensors) for v in value]]
    raise RecipeError(f"training state holds a {type(value).__name__}, which cannot be saved")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, str):
        tag, packed = node[0], bytes.fromhex(node[1:])
        if len(packed) != _SCALAR_WIDTH // 2:
            raise ValueError("bad scalar")
        if tag == "n":
            return None
        if tag == "b":
            return bool(struct.unpack(">q", packed)[0])
        if tag == "i":
            return struct.unpack(">q", packed)[0]
        if tag == "f":
            return struct.unpack(">d", packed)[0]
        raise ValueError("bad scalar tag")
    tag = node[0]
    if tag == "s":
        return str(node[1])
    if tag == "t":
        return tensors[node[1]]
    if tag == "a":
        dtype, shape, key = np.dtype(node[1]), tuple(node[2]), node[3]
        return np.frombuffer(tensors[key].numpy().tobytes(), dtype=dtype).reshape(shape).copy()
    if tag == "d":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node[1]}
    if tag == "l":
        return [_decode(v, tensors) for v in node[1]]
    if tag == "u":
        return tuple(_decode(v, tensors) for v in node[1])
    raise ValueError("bad node tag")
