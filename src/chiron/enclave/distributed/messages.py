"""The exchange's message layer: AES-GCM under the group key, checked on receipt.

A message is a cleartext header followed by one AES-256-GCM ciphertext:

    header      version (1) ‖ kind (1) ‖ sender (2) ‖ receiver (2) ‖ round (4) ‖ sequence (8)
    nonce       sender (2) ‖ receiver (2) ‖ sequence (8)
    associated  domain ‖ job id ‖ header
    plaintext   payload length (8) ‖ payload ‖ zeros up to the slot size

Sequence numbers count the messages of one (sender, receiver) pair from 0. Every job has
a fresh group key, so a nonce never repeats under a key, and a receiver always knows the
exact number that comes next: a lower one is a replay, a higher one means a message was
dropped or the order changed. The kind and round must be the ones the receiver's fixed
schedule expects next. Anything altered (header or body) fails authentication.

Every message of one slot has the same size whatever it carries: an ABORT sent in place
of parameters is padded to the size of the parameters it replaces.
"""

from __future__ import annotations

import enum
import json
import struct
import time
from typing import Any

from chiron.core.crypto import KEY_BYTES, TAG_BYTES, aead_decrypt_into, aead_encrypt_into
from chiron.core.encoding import canonical_json
from chiron.core.errors import ChironError, IntegrityError, PeerFailure

VERSION = 1
_HEADER = struct.Struct(">BBHHIQ")
HEADER_BYTES = _HEADER.size
_LENGTH = struct.Struct(">Q")
_DOMAIN = b"chiron/exchange/v1\x00"
# HELLO, START and ABORT before training: small, but every one of them this size.
CONTROL_SLOT_BYTES = 4096
_MAX_ABORT_TEXT = 1024


class MessageKind(enum.IntEnum):
    HELLO = 1  # worker → server, before training: what it will exchange
    START = 2  # server → worker: everyone agrees, training starts
    PARAMS = 3  # worker → server: its parameters at an exchange point
    AVERAGE = 4  # server → worker: the parameters to continue from
    ABORT = 5  # either way, in place of the message due: the job stops, and why


def member_name(rank: int) -> str:
    return "the parameter server" if rank == 0 else f"worker {rank}"


def parameter_slot_bytes(model_nbytes: int) -> int:
    """The plaintext slot of PARAMS and AVERAGE: a whole parameter vector and its length."""
    return _LENGTH.size + model_nbytes


def wire_bytes(slot_bytes: int) -> int:
    """Size on the wire of every message whose plaintext slot is `slot_bytes`."""
    return HEADER_BYTES + slot_bytes + TAG_BYTES


def kind_name(kind: int) -> str:
    try:
        return MessageKind(kind).name
    except ValueError:
        return f"unknown kind {kind}"


def header_kind(message: bytes | bytearray) -> str:
    """The kind named in a message's cleartext header: what an observer of the wire sees."""
    return kind_name(message[1]) if len(message) >= HEADER_BYTES else "malformed"


def header_sender(message: bytes | bytearray) -> int:
    """The sender a header claims; `SecureChannel.open` authenticates it."""
    if len(message) < HEADER_BYTES:
        raise IntegrityError("a message from the group is truncated")
    return _HEADER.unpack_from(message)[2]


class SecureChannel:
    """One member's end of the group's messages: seals what it sends, checks what it gets."""

    def __init__(self, key: bytes, *, job_id: str, rank: int) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the group key must be 32 bytes")
        self._key = key
        self._job = job_id.encode("utf-8")
        self.rank = rank
        self._next_sent: dict[int, int] = {}
        self._next_received: dict[int, int] = {}

    def seal(
        self,
        kind: MessageKind,
        *,
        receiver: int,
        round_number: int,
        payload: bytes,
        slot_bytes: int,
    ) -> bytearray:
        if len(payload) > slot_bytes - _LENGTH.size:
            raise ValueError("payload larger than its slot")
        sequence = self._next_sent.get(receiver, 0)
        self._next_sent[receiver] = sequence + 1
        header = _HEADER.pack(VERSION, kind, self.rank, receiver, round_number, sequence)
        plaintext = bytearray(slot_bytes)
        plaintext[: _LENGTH.size] = _LENGTH.pack(len(payload))
        plaintext[_LENGTH.size : _LENGTH.size + len(payload)] = payload
        nonce = _nonce(self.rank, receiver, sequence)
        # The ciphertext goes straight behind the header in the buffer that is sent: a
        # parameter vector is copied once into its slot and once by the cipher.
        message = bytearray(wire_bytes(slot_bytes))
        message[:HEADER_BYTES] = header
        aead_encrypt_into(
            self._key, nonce, plaintext, self._aad(header), memoryview(message)[HEADER_BYTES:]
        )
        return message

    def open(
        self,
        message: bytes | bytearray,
        *,
        sender: int,
        kinds: tuple[MessageKind, ...],
        round_number: int,
        slot_bytes: int,
    ) -> tuple[MessageKind, bytearray]:
        """Authenticate the next message from `sender` and return (kind, payload).

        Raises IntegrityError naming what was wrong: forged or altered, replayed,
        dropped or out of order, or not the message the schedule expects.
        """
        who = member_name(sender)
        if len(message) != wire_bytes(slot_bytes):
            raise IntegrityError(
                f"a message from {who} has {len(message)} bytes instead of "
                f"{wire_bytes(slot_bytes)}: it was altered"
            )
        header = message[:HEADER_BYTES]
        version, kind, claimed, receiver, round_seen, sequence = _HEADER.unpack(header)
        if version != VERSION or claimed != sender or receiver != self.rank:
            raise IntegrityError(
                f"a message from {who} has a forged header: it names another sender or receiver"
            )
        plaintext = bytearray(slot_bytes)
        aead_decrypt_into(
            self._key,
            _nonce(sender, receiver, sequence),
            memoryview(message)[HEADER_BYTES:],
            self._aad(bytes(header)),
            plaintext,
            what=f"a message from {who}",
        )
        expected = self._next_received.get(sender, 0)
        if sequence < expected:
            raise IntegrityError(
                f"replayed message from {who}: sequence number {sequence} was already received"
            )
        if sequence > expected:
            raise IntegrityError(
                f"message {expected} from {who} is missing: it was dropped or reordered "
                f"(received message {sequence} instead)"
            )
        self._next_received[sender] = expected + 1
        if kind not in kinds or round_seen != round_number:
            raise IntegrityError(
                f"out-of-order message from {who}: {kind_name(kind)} of round {round_seen} while "
                f"{'/'.join(k.name for k in kinds)} of round {round_number} was due"
            )
        (length,) = _LENGTH.unpack_from(plaintext)
        if length > slot_bytes - _LENGTH.size:
            raise IntegrityError(f"a message from {who} is malformed")
        # The payload in place: dropping a bytearray's head or tail copies nothing.
        del plaintext[_LENGTH.size + length :]
        del plaintext[: _LENGTH.size]
        return MessageKind(kind), plaintext

    def _aad(self, header: bytes) -> bytes:
        return _DOMAIN + _LENGTH.pack(len(self._job)) + self._job + header


def _nonce(sender: int, receiver: int, sequence: int) -> bytes:
    return struct.pack(">HHQ", sender, receiver, sequence)


def abort_payload(error: BaseException) -> bytes:
    """Why a member stops, in words the enclave wrote itself (never the recipe's text).

    Chiron's errors carry only enclave-written text (a sandbox failure, a reason class);
    anything else is an internal fault whose details stay in the enclave's log.
    """
    message = str(error) if isinstance(error, ChironError) else "internal enclave error"
    return canonical_json({"message": message[:_MAX_ABORT_TEXT]})


def abort_error(payload: bytes | bytearray, sender: int) -> PeerFailure:
    """The error a member raises when `sender` aborted the job."""
    try:
        message = str(json.loads(payload.decode("utf-8"))["message"])[:_MAX_ABORT_TEXT]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        message = "no reason given"
    if sender == 0:
        return PeerFailure(f"the parameter server ended the job: {message}")
    return PeerFailure(f"worker {sender} stopped the job: {message}")


class WireTrace:
    """What an observer of the network sees of one member: (time, direction, peer, kind, size).

    Kept for the owner to audit that traffic follows the fixed schedule and sizes.
    """

    def __init__(self) -> None:
        self._start = time.monotonic()
        self.entries: list[dict[str, Any]] = []

    def record(self, direction: str, peer: int, kind: str, size: int) -> None:
        self.entries.append(
            {
                "time": round(time.monotonic() - self._start, 6),
                "direction": direction,
                "peer": peer,
                "kind": kind,
                "size": size,
            }
        )
