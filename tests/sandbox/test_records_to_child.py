"""The records a sandboxed child is sent: little-endian, contiguous, in order, any batch."""

from __future__ import annotations

import numpy as np
import pytest

from chiron.core.recipe_protocol import ToChild
from chiron.core.schema import DatasetSchema
from chiron.enclave.recipe_session import send_records


class _Recorder:
    """Stands in for the sandbox: keeps each payload as `Sandbox.send` would see it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, kind: ToChild, payload: bytes | bytearray | memoryview = b"") -> None:
        self.sent.append(memoryview(payload).cast("B").tobytes())


@pytest.mark.parametrize(
    "records",
    [
        np.arange(24, dtype="<f4").reshape(2, 3, 4),  # as they are
        np.arange(48, dtype="<f4").reshape(2, 3, 8)[:, :, ::2],  # not contiguous
        np.arange(24, dtype=">f4").reshape(2, 3, 4),  # big-endian
        np.arange(24, dtype="<f8").reshape(2, 3, 4),  # another dtype
        np.zeros((0, 3, 4), dtype="<f4"),  # no records
    ],
)
def test_records_go_as_the_schemas_little_endian_bytes(records):
    recorder = _Recorder()
    send_records(recorder, ToChild.PREDICT, records, DatasetSchema((3, 4), "float32", 2))  # type: ignore[arg-type]
    assert recorder.sent == [np.asarray(records, dtype="<f4").tobytes()]
