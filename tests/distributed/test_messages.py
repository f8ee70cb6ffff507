"""The exchange's message layer: fixed sizes, and every replay, reordering, drop or forgery caught."""

from __future__ import annotations

import os

import pytest

from chiron.core.errors import IntegrityError, PeerFailure
from chiron.enclave.distributed.messages import (
    HEADER_BYTES,
    MessageKind,
    SecureChannel,
    abort_error,
    abort_payload,
    wire_bytes,
)

JOB = "job-1"
SLOT = 256
PARAMS = (MessageKind.PARAMS, MessageKind.ABORT)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def worker(key):
    return SecureChannel(key, job_id=JOB, rank=1)


@pytest.fixture
def server(key):
    return SecureChannel(key, job_id=JOB, rank=0)


def params(channel: SecureChannel, round_number: int, payload: bytes = b"weights") -> bytes:
    return channel.seal(
        MessageKind.PARAMS, receiver=0, round_number=round_number, payload=payload, slot_bytes=SLOT
    )


def receive(channel: SecureChannel, message: bytes, round_number: int, sender: int = 1):
    return channel.open(
        message, sender=sender, kinds=PARAMS, round_number=round_number, slot_bytes=SLOT
    )


def test_messages_open_in_order_and_are_all_one_size(worker, server):
    messages = [params(worker, r, os.urandom(r * 40)) for r in range(5)]
    assert {len(m) for m in messages} == {wire_bytes(SLOT)}
    for round_number, message in enumerate(messages):
        kind, payload = receive(server, message, round_number)
        assert kind == MessageKind.PARAMS
        assert len(payload) == round_number * 40


def test_a_flipped_bit_anywhere_is_caught(worker, server, key):
    message = params(worker, 0)
    for position in (HEADER_BYTES - 1, HEADER_BYTES + 3, len(message) - 1):
        tampered = bytearray(message)
        tampered[position] ^= 1
        with pytest.raises(IntegrityError, match="failed authentication"):
            receive(SecureChannel(key, job_id=JOB, rank=0), bytes(tampered), 0)
    assert receive(server, message, 0)[1] == b"weights"


def test_a_replayed_message_is_caught(worker, server):
    first = params(worker, 0)
    receive(server, first, 0)
    with pytest.raises(IntegrityError, match="replayed message from worker 1"):
        receive(server, first, 1)


def test_a_dropped_message_is_caught(worker, server):
    first, _dropped, third = (params(worker, r) for r in range(3))
    receive(server, first, 0)
    with pytest.raises(IntegrityError, match="message 1 from worker 1 is missing"):
        receive(server, third, 1)


def test_reordered_messages_are_caught(worker, server):
    _first, second = params(worker, 0), params(worker, 1)
    with pytest.raises(IntegrityError, match="dropped or reordered"):
        receive(server, second, 0)


def test_a_message_of_another_round_or_kind_is_caught(worker, server):
    with pytest.raises(IntegrityError, match="PARAMS of round 3 while PARAMS/ABORT of round 0"):
        receive(server, params(worker, 3), 0)
    hello = worker.seal(
        MessageKind.HELLO, receiver=0, round_number=1, payload=b"{}", slot_bytes=SLOT
    )
    with pytest.raises(IntegrityError, match="out-of-order message from worker 1: HELLO"):
        receive(server, hello, 1)


def test_a_forger_without_the_group_key_is_caught(server):
    forger = SecureChannel(os.urandom(32), job_id=JOB, rank=1)
    with pytest.raises(IntegrityError, match="failed authentication"):
        receive(server, params(forger, 0), 0)


def test_a_message_from_another_job_is_caught(key, server):
    other_job = SecureChannel(key, job_id="job-2", rank=1)
    with pytest.raises(IntegrityError, match="failed authentication"):
        receive(server, params(other_job, 0), 0)


def test_a_message_passed_off_as_another_members_is_caught(key, worker):
    message = params(worker, 0)
    with pytest.raises(IntegrityError, match="forged header"):
        receive(SecureChannel(key, job_id=JOB, rank=0), message, 0, sender=2)
    meant_for_server = params(worker, 1)
    with pytest.raises(IntegrityError, match="forged header"):
        receive(SecureChannel(key, job_id=JOB, rank=2), meant_for_server, 0)


def test_a_truncated_or_padded_message_is_caught(worker, server):
    message = params(worker, 0)
    for altered in (message[:-1], message + b"\x00"):
        with pytest.raises(IntegrityError, match="bytes instead of"):
            receive(server, altered, 0)


def test_an_abort_says_why_without_growing_its_slot(worker, server):
    reason = abort_payload(PeerFailure("x" * 5000))
    message = worker.seal(
        MessageKind.ABORT, receiver=0, round_number=0, payload=reason, slot_bytes=SLOT * 8
    )
    assert len(message) == wire_bytes(SLOT * 8)
    kind, payload = server.open(
        message, sender=1, kinds=PARAMS, round_number=0, slot_bytes=SLOT * 8
    )
    assert kind == MessageKind.ABORT
    error = abort_error(payload, 1)
    assert isinstance(error, PeerFailure)
    assert str(error).startswith("worker 1 stopped the job: xxx")
    assert str(abort_error(abort_payload(ValueError("secret")), 0)) == (
        "the parameter server ended the job: internal enclave error"
    )
