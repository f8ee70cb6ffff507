"""Fixed-size serialization of a training state (model, optimizer, RNGs, step).

A checkpoint leaves the sandbox, so its size must be declared before the recipe sees
any data and must not vary with it. Here the size depends only on the state's
*structure*: tensors go into a safetensors blob (size fixed by names, shapes and
dtypes), and every Python scalar in the structure is written with the same width
whatever its value or type (float, int, bool, None), so a learning rate that changes,
or a cached Gaussian that comes and goes, cannot change the size. A structure that
does change (an optimizer growing new state) changes the size, which the caller
detects and refuses.

Layout: `MAGIC` ‖ skeleton length (8 bytes, little-endian) ‖ skeleton (JSON) ‖ a
safetensors blob. Both JSON texts are padded with spaces to a multiple of 8 and the
tensors are laid out widest element first, so every tensor's data is aligned. The
layout, like the size, is a function of the structure alone.

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
# Both JSON texts are padded with spaces to this multiple, so every tensor's data starts
# at an offset aligned to its element size (tensors are laid out widest first).
_ALIGNMENT = 8
# The safetensors names of the dtypes a checkpoint may hold.
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}

_Array = torch.Tensor | np.ndarray


def encode_state(state: Any) -> bytearray:
    """Serialize a nest of dicts, lists, tuples, tensors, numpy arrays and scalars.

    The result is built in one buffer of its final size and each tensor is copied into
    it once, straight from the live state: a checkpoint costs one pass over the state,
    and the caller sends the buffer as it is (framing takes a view, never a copy).
    """
    arrays: list[_Array] = []
    skeleton = _padded(json.dumps(_encode(state, arrays), separators=(",", ":")).encode("utf-8"))
    entries: dict[str, dict[str, Any]] = {}
    placed: list[tuple[_Array, int, int]] = []
    offset = 0
    # Widest elements first, ties by position: the layout is a function of the structure.
    for index in sorted(range(len(arrays)), key=lambda i: (-_itemsize(arrays[i]), i)):
        array = arrays[index]
        nbytes = _nbytes(array)
        if isinstance(array, torch.Tensor):
            dtype, shape = _DTYPES[array.dtype], list(array.shape)
        else:
            dtype, shape = "U8", [nbytes]
        entries[str(index)] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        placed.append((array, offset, nbytes))
        offset += nbytes
    header = _padded(json.dumps(entries, separators=(",", ":")).encode("utf-8"))
    blob = len(MAGIC) + _LENGTH.size + len(skeleton)
    data = blob + _LENGTH.size + len(header)
    out = bytearray(data + offset)
    out[: len(MAGIC)] = MAGIC
    _LENGTH.pack_into(out, len(MAGIC), len(skeleton))
    out[len(MAGIC) + _LENGTH.size : blob] = skeleton
    _LENGTH.pack_into(out, blob, len(header))
    out[blob + _LENGTH.size : data] = header
    for array, start, nbytes in placed:
        if nbytes:
            _copy_bytes(
                array, np.frombuffer(out, dtype=np.uint8, count=nbytes, offset=data + start)
            )
    return out


def decode_state(data: bytes | bytearray | memoryview) -> Any:
    """Inverse of `encode_state`."""
    view = memoryview(data).cast("B")
    head = len(MAGIC) + _LENGTH.size
    if len(view) < head or view[: len(MAGIC)] != MAGIC:
        raise InputError("not a training checkpoint")
    (skeleton_len,) = _LENGTH.unpack_from(view, len(MAGIC))
    try:
        skeleton = json.loads(bytes(view[head : head + skeleton_len]))
        tensors = safetensors.torch.load(bytes(view[head + skeleton_len :]))
        return _decode(skeleton, tensors)
    except (ValueError, KeyError, TypeError, IndexError, struct.error, safetensors.SafetensorError):
        raise InputError("malformed training checkpoint") from None


def _padded(text: bytes) -> bytes:
    return text + b" " * (-len(text) % _ALIGNMENT)


def _itemsize(array: _Array) -> int:
    return array.element_size() if isinstance(array, torch.Tensor) else 1


def _nbytes(array: _Array) -> int:
    if isinstance(array, torch.Tensor):
        return array.numel() * array.element_size()
    return int(array.nbytes)


def _copy_bytes(array: _Array, target: np.ndarray) -> None:
    """Copy `array`'s elements, in C order, into the uint8 buffer `target`."""
    if isinstance(array, torch.Tensor):
        # contiguous() copies only a tensor that is not (a transposed weight, say).
        flat = array.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
        array = flat.view(torch.uint8).numpy()
    # numpy's copy, a plain memcpy: torch's own splits the copy over its thread pool,
    # which costs more than the copy whenever another process holds one of the cores.
    target[:] = array.reshape(-1).view(np.uint8)


def _scalar(tag: str, packed: bytes) -> str:
    return tag + packed.hex()


def _encode(value: Any, arrays: list[_Array]) -> Any:
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
        if value.layout != torch.strided or value.dtype not in _DTYPES or value.is_quantized:
            raise RecipeError(f"training state holds a {value.dtype} tensor, which cannot be saved")
        # Tensors that share storage (tied weights) are written once each, as any other.
        key = str(len(arrays))
        arrays.append(value.detach())
        return ["t", key]
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        key = str(len(arrays))
        # ascontiguousarray makes a 0-d array 1-d: the shape is the value's own.
        raw = np.ascontiguousarray(value)
        arrays.append(raw)
        return ["a", raw.dtype.str, list(value.shape), key]
    if isinstance(value, dict):
        return ["d", [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]]
    if isinstance(value, list):
        return ["l", [_encode(v, arrays) for v in value]]
    if isinstance(value, tuple):
        return ["u", [_encode(v, arrays) for v in value]]
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
