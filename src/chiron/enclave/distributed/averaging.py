"""Parameter vectors as the sandboxed child sends them (safetensors bytes), averaged in numpy.

The parameter server never imports torch for arithmetic: it parses the safetensors
layout once, checks every vector against it byte for byte, and averages the floating
tensors in float64. Integer tensors (BatchNorm's batch counters) are not averaged: they
are the same in every worker, which runs the same number of steps, and are taken from
one of them. The result keeps the layout exactly, so the child can load it as is.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chiron.core.errors import IntegrityError

_NUMPY_FLOATS = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
_FLOAT_DTYPES = {*_NUMPY_FLOATS, "BF16"}
# A vector as it arrives: the payload of an opened message, or the child's bytes.
Vector = bytes | bytearray


@dataclass(frozen=True)
class _Tensor:
    dtype: str
    start: int
    stop: int

    @property
    def elements(self) -> int:
        width = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}[self.dtype]
        return (self.stop - self.start) // width


class ParameterLayout:
    """The tensor layout of one recipe's parameter vectors, fixed by its first vector."""

    def __init__(self, template: Vector) -> None:
        try:
            (header_len,) = struct.unpack_from("<Q", template)
            header = json.loads(template[8 : 8 + header_len].decode("utf-8"))
            base = 8 + header_len
            self._floats = [
                _Tensor(
                    entry["dtype"], base + entry["data_offsets"][0], base + entry["data_offsets"][1]
                )
                for name, entry in sorted(header.items(), key=lambda item: str(item[0]))
                if name != "__metadata__" and entry["dtype"] in _FLOAT_DTYPES
            ]
        except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
            raise IntegrityError("a parameter vector is not a safetensors file") from None
        self._prefix = template[:base]
        self.nbytes = len(template)
        self.float_elements = sum(tensor.elements for tensor in self._floats)

    def check(self, vector: Vector, *, who: str) -> None:
        """Refuse a vector whose layout differs from the template's in any byte."""
        if len(vector) != self.nbytes or not vector.startswith(self._prefix):
            raise IntegrityError(f"the parameters of {who} do not have the job's layout")

    def to_floats(self, vector: Vector) -> np.ndarray:
        """All floating tensors of `vector`, concatenated, as float64."""
        parts = [_read(vector, tensor) for tensor in self._floats]
        return np.concatenate(parts) if parts else np.zeros(0)

    def with_floats(self, template: Vector, values: np.ndarray) -> bytes:
        """`template` with its floating tensors replaced by `values` (in their own dtypes)."""
        out = bytearray(template)
        offset = 0
        for tensor in self._floats:
            part = values[offset : offset + tensor.elements]
            out[tensor.start : tensor.stop] = _encode(part, tensor.dtype)
            offset += tensor.elements
        return bytes(out)

    def average(self, vectors: Sequence[Vector]) -> bytes:
        """The element-wise mean of the floating tensors; other tensors from the first.

        Tensor by tensor, summed in float64 in rank order and narrowed once, as
        `to_floats` and `with_floats` would: the same bits, with no whole-model copies.
        """
        out = bytearray(vectors[0])
        for tensor in self._floats:
            total = _read(vectors[0], tensor)
            for vector in vectors[1:]:
                if tensor.dtype == "BF16":
                    total += _read(vector, tensor)
                else:  # added straight from the vector's bytes, widened on the fly
                    np.add(total, _view(vector, tensor), out=total)
            total /= len(vectors)
            if tensor.dtype == "BF16":
                out[tensor.start : tensor.stop] = _encode(total, tensor.dtype)
            else:  # narrowed straight into the answer's bytes (as `astype` rounds)
                _view(out, tensor)[...] = total
        return bytes(out)


class AsynchronousModel:
    """The parameter server's global parameters under asynchronous updates.

    Round 0 sets them to the average of every worker's initial vector. Afterwards each
    worker's vector counts for its progress since its last answer: the server adds that
    difference, divided by the number of workers, to the global parameters. When every
    worker was answered the same parameters, one update from each is exactly the
    synchronous average.
    """

    def __init__(self, layout: ParameterLayout, workers: int) -> None:
        self.layout = layout
        self._workers = workers
        self._initial: dict[int, Vector] = {}
        self._global = np.zeros(layout.float_elements)
        self._answered: dict[int, np.ndarray] = {}
        self._latest: Vector = b""  # integer tensors are taken from the last vector received

    def start(self, worker: int, vector: Vector) -> None:
        """A worker's initial vector (round 0); all of them before any answer."""
        self._initial[worker] = vector
        self._latest = vector
        if len(self._initial) == self._workers:
            self._global = self.layout.to_floats(
                self.layout.average([self._initial[w] for w in sorted(self._initial)])
            )

    def update(self, worker: int, vector: Vector) -> None:
        progress = self.layout.to_floats(vector) - self._answered[worker]
        self._global = self._global + progress / self._workers
        self._latest = vector

    def answer(self, worker: int) -> bytes:
        """The current global parameters, remembered as what `worker` continues from."""
        answer = self.layout.with_floats(self._latest, self._global)
        self._answered[worker] = self.layout.to_floats(answer)
        return answer


def _view(vector: Vector, tensor: _Tensor) -> np.ndarray:
    """A float tensor of `vector` in place (writable when `vector` is a bytearray)."""
    return np.frombuffer(
        vector, dtype=_NUMPY_FLOATS[tensor.dtype], count=tensor.elements, offset=tensor.start
    )


def _read(vector: Vector, tensor: _Tensor) -> np.ndarray:
    raw = np.frombuffer(
        vector, dtype=np.uint8, count=tensor.stop - tensor.start, offset=tensor.start
    )
    if tensor.dtype == "BF16":
        widened = raw.view("<u2").astype(np.uint32) << 16
        return widened.view(np.float32).astype(np.float64)
    return raw.view(_NUMPY_FLOATS[tensor.dtype]).astype(np.float64)


def _encode(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32)
        # Round to nearest even, as torch does when it narrows float32 to bfloat16.
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    return values.astype(_NUMPY_FLOATS[dtype]).tobytes()
