"""The enclave boundary's pipe form: byte strings travel raw behind the JSON, and every
length a host writes is checked against what it sent before anything is believed.

The host writes these frames into the enclave's stdin: a message whose lengths point
past its end, leave bytes unused, or whose JSON runs past the frame is one refusal,
never a partial read or an allocation the host chose.
"""

from __future__ import annotations

import json
import struct

import pytest

from chiron.core.errors import EnclaveError
from chiron.enclave.boundary import decode_message, encode_message, pack_message, unpack_message

MESSAGE = {
    "call": "query",
    "args": {
        "sealed_inputs": bytes(range(256)) * 800,
        "nested": [b"", b"\x00one", {"deep": bytearray(b"two")}, 3, None, "text"],
        "sequence": 7,
    },
}
EXPECTED = {
    "call": "query",
    "args": {
        "sealed_inputs": bytes(range(256)) * 800,
        "nested": [b"", b"\x00one", {"deep": b"two"}, 3, None, "text"],
        "sequence": 7,
    },
}


def test_byte_strings_round_trip_raw_and_in_order():
    packed = pack_message(MESSAGE)
    assert unpack_message(packed) == EXPECTED
    # Raw, not base64: the records are in the frame as they are, once.
    assert packed.count(bytes(range(256)) * 800) == 1
    assert len(packed) < len(encode_message(MESSAGE)) * 0.8
    # The JSON form (REST, relays) carries the same message.
    assert decode_message(encode_message(MESSAGE)) == EXPECTED


def _frame(document: object, tail: bytes) -> bytes:
    text = json.dumps(document).encode()
    return struct.pack(">I", len(text)) + text + tail


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x00", id="truncated_length"),
        pytest.param(struct.pack(">I", 1000) + b"{}", id="json_past_the_frame"),
        pytest.param(_frame({"a": {"$raw": 10}}, b"123"), id="raw_past_the_frame"),
        pytest.param(_frame({"a": {"$raw": 2}}, b"123"), id="bytes_left_unused"),
        pytest.param(_frame({"a": {"$raw": -1}}, b""), id="negative_length"),
        pytest.param(_frame({"a": {"$raw": True}}, b"1"), id="boolean_length"),
        pytest.param(_frame({"a": {"$raw": 1.0}}, b"1"), id="float_length"),
        pytest.param(_frame({"a": {"$raw": "1"}}, b"1"), id="text_length"),
        pytest.param(struct.pack(">I", 2) + b"\xff\xfe", id="not_utf8"),
        pytest.param(_frame({}, b"")[:-1] + b"x", id="not_json"),
    ],
)
def test_a_malformed_message_is_one_refusal(payload):
    with pytest.raises(EnclaveError, match="malformed message across the enclave boundary"):
        unpack_message(payload)
