"""Mutual attestation between the job's enclaves and the sealed group key."""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chiron.core import purposes
from chiron.core.crypto import seal, sign
from chiron.core.encoding import b64encode, canonical_json
from chiron.core.errors import AttestationError, IntegrityError, PeerFailure
from chiron.enclave.context import EnclaveContext
from chiron.enclave.distributed.membership import admit_workers, await_verdicts, join_server
from chiron.enclave.distributed.settings import GroupSettings, Rendezvous


class MemoryBoard:
    """The rendezvous store's role, in memory; `tamper` rewrites values as they are posted."""

    def __init__(self, tamper=None) -> None:
        self._values: dict[str, bytes] = {}
        self._changed = threading.Condition()
        self._tamper = tamper or (lambda key, value: value)

    def post(self, key: str, value: bytes, *, to: int, kind: str) -> None:
        with self._changed:
            self._values[key] = self._tamper(key, value)
            self._changed.notify_all()

    def fetch(self, key: str, *, sender: int, kind: str, timeout: float) -> bytes:
        with self._changed:
            if not self._changed.wait_for(lambda: key in self._values, timeout):
                raise PeerFailure(f"nothing from {sender} ({kind})")
            return self._values[key]


def enclave(state_dir: Path, platform: str = "sim") -> EnclaveContext:
    return EnclaveContext.create(role="train", state_dir=str(state_dir), platform_name=platform)


def settings_for(members: list[EnclaveContext], rank: int) -> GroupSettings:
    return GroupSettings(
        job_id="job",
        rank=rank,
        members=tuple(m.identity.public for m in members),
        exchange_every=5,
        mode="sync",
        staleness=0,
        handshake_timeout=20.0,
        exchange_timeout=20.0,
        rendezvous=Rendezvous("127.0.0.1", 1, None, False),
    )


def handshake(members: list[EnclaveContext], board=None, listed=None):
    """Run the server's and every worker's side at once; (outcome or error) per rank."""
    board = board or MemoryBoard()
    listed = listed or members

    def admit(member: EnclaveContext, board, settings: GroupSettings) -> bytes:
        key = admit_workers(member, board, settings)
        await_verdicts(board, settings)
        return key

    with ThreadPoolExecutor(len(members)) as pool:
        futures = [
            pool.submit(
                admit if rank == 0 else join_server, member, board, settings_for(listed, rank)
            )
            for rank, member in enumerate(members)
        ]
        return [f.exception() or f.result() for f in futures]


@pytest.fixture
def group(tmp_path: Path) -> list[EnclaveContext]:
    return [enclave(tmp_path / "state") for _ in range(3)]


def test_attested_members_share_one_fresh_key(group):
    outcomes = handshake(group)
    assert all(isinstance(o, bytes) and len(o) == 32 for o in outcomes)
    assert len(set(outcomes)) == 1
    assert handshake(group)[0] != outcomes[0]


def test_a_worker_running_other_code_is_refused(group):
    group[2] = dataclasses.replace(group[2], measurement="0" * 64)
    server, first, second = handshake(group)
    assert isinstance(server, AttestationError)
    assert "worker 2 failed attestation: measurement" in str(server)
    assert isinstance(first, PeerFailure) and "refused the job" in str(first)
    # Worker 2 refuses the server too: its runtime is not worker 2's own.
    assert isinstance(second, AttestationError)
    assert "the parameter server failed attestation" in str(second)


def test_a_worker_of_another_simulated_platform_is_refused(group, tmp_path):
    group[1] = enclave(tmp_path / "elsewhere")
    server = handshake(group)[0]
    assert isinstance(server, AttestationError)
    assert "worker 1 failed attestation: root of trust: unknown root" in str(server)


def test_an_enclave_on_hardware_refuses_simulated_peers(group):
    group[1] = dataclasses.replace(group[1], platform_name="tsm", _platform=group[0].platform)
    worker = handshake(group)[1]
    assert isinstance(worker, AttestationError)
    assert "simulation" in str(worker)


def test_an_enclave_other_than_the_one_the_owner_attested_is_refused(group, tmp_path):
    impostor = enclave(tmp_path / "state")
    listed = [group[0], group[1], impostor]
    server = handshake(group, listed=listed)[0]
    assert isinstance(server, AttestationError)
    assert "not the enclave the owner's client attested" in str(server)


def test_a_group_key_not_signed_by_the_server_is_refused(group):
    # The host swaps worker 1's grant for a key of its own, sealed properly to the
    # worker's public key and signed with the host's key instead of the server's.
    def swap_grant(key: str, value: bytes) -> bytes:
        if key != "grant/1":
            return value
        binding = {
            "job_id": "job",
            "rank": 1,
            "members": [m.identity.public.fingerprint for m in group],
        }
        sealed = seal(
            group[1].identity.public.hpke_key,
            os.urandom(32),
            purpose=purposes.EXCHANGE_GROUP_KEY,
            context=binding,
        )
        signature = sign(
            Ed25519PrivateKey.generate(),
            canonical_json({**binding, "sealed": b64encode(sealed)}),
            purpose=purposes.EXCHANGE_GROUP_KEY_GRANT,
        )
        return canonical_json({"sealed": b64encode(sealed), "signature": b64encode(signature)})

    server, worker, _ = handshake(group, board=MemoryBoard(swap_grant))
    assert isinstance(worker, IntegrityError)
    assert "grant's signature is not valid" in str(worker)
    assert isinstance(server, PeerFailure)
    assert "worker 1 refused the parameter server" in str(server)
