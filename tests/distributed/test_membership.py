"""Mutual attestation between the job's enclaves and the sealed group key.

Members are the enclaves of one owner's manifest: rank 0 a `paramserver` enclave, the
others `train` enclaves, each bound to the manifest's digest. The host runs the board
between them and may rewrite or replay anything posted there.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chiron.core import purposes
from chiron.core.contract import Rendezvous
from chiron.core.crypto import seal, sign
from chiron.core.encoding import b64encode, canonical_json
from chiron.core.errors import AttestationError, IntegrityError, PeerFailure
from chiron.core.keys import Identity
from chiron.core.measurement import measure_runtime
from chiron.core.roles import Role
from chiron.enclave.context import EnclaveContext
from chiron.enclave.distributed import messages
from chiron.enclave.distributed.membership import admit_workers, await_verdicts, join_server
from chiron.enclave.distributed.messages import CONTROL_SLOT_BYTES, MessageKind, SecureChannel
from chiron.enclave.distributed.settings import GroupSettings

# What each member is bound to: the digest of the owner's signed manifest.
DIGEST = "ab" * 32
OTHER_DIGEST = "cd" * 32


class MemoryBoard:
    """The rendezvous store's role, in memory; `tamper` rewrites values as they are posted."""

    def __init__(self, tamper=None) -> None:
        self._values: dict[str, bytes] = {}
        self._changed = threading.Condition()
        self._tamper = tamper or (lambda key, value: value)
        # What the members posted, before any tampering: what a host records.
        self.posted: dict[str, bytes] = {}

    def post(self, key: str, value: bytes, *, to: int, kind: str) -> None:
        with self._changed:
            self.posted[key] = value
            self._values[key] = self._tamper(key, value)
            self._changed.notify_all()

    def fetch(self, key: str, *, sender: int, kind: str, timeout: float) -> bytes:
        with self._changed:
            if not self._changed.wait_for(lambda: key in self._values, timeout):
                raise PeerFailure(f"nothing from {sender} ({kind})")
            return self._values[key]


@functools.cache
def runtime_measurement() -> str:
    return measure_runtime().hex


def enclave(
    state_dir: Path, role: str = Role.TRAIN, *, binding: str | None = DIGEST, platform: str = "sim"
) -> EnclaveContext:
    # As `EnclaveContext.create` makes one, the runtime measured once for the module.
    context = EnclaveContext(
        role=role,
        state_dir=state_dir,
        platform_name=platform,
        identity=Identity.generate(),
        measurement=runtime_measurement(),
    )
    if binding:
        context.bind(binding)
    return context


def settings_for(members: list[EnclaveContext], rank: int, digest: str) -> GroupSettings:
    return GroupSettings(
        job_id="job",
        manifest_digest=digest,
        rank=rank,
        members=tuple(m.identity.public for m in members),
        exchange_every=5,
        mode="sync",
        staleness=0,
        fixed_rate=False,
        period_ms=None,
        handshake_timeout=20.0,
        exchange_timeout=20.0,
        rendezvous=Rendezvous("127.0.0.1", 1, None, False),
    )


def handshake(members: list[EnclaveContext], board=None, listed=None):
    """Run the server's and every worker's side at once; (outcome or error) per rank.

    Each member holds the manifest it is bound to (as `train` and `exchange` bind the
    enclave to the manifest its settings come from).
    """
    board = board or MemoryBoard()
    listed = listed or members

    def admit(member: EnclaveContext, board, settings: GroupSettings) -> bytes:
        key = admit_workers(member, board, settings)
        await_verdicts(board, settings)
        return key

    with ThreadPoolExecutor(len(members)) as pool:
        futures = [
            pool.submit(
                admit if rank == 0 else join_server,
                member,
                board,
                settings_for(listed, rank, member.binding),
            )
            for rank, member in enumerate(members)
        ]
        return [f.exception() or f.result() for f in futures]


def verdict(board: MemoryBoard, worker: int) -> dict:
    return json.loads(board.posted[f"ack/{worker}"])


@pytest.fixture
def group(tmp_path: Path) -> list[EnclaveContext]:
    state = tmp_path / "state"
    return [enclave(state, Role.PARAMSERVER), enclave(state), enclave(state)]


def test_attested_members_share_one_fresh_key(group):
    board = MemoryBoard()
    outcomes = handshake(group, board)
    assert all(isinstance(o, bytes) and len(o) == 32 for o in outcomes)
    assert len(set(outcomes)) == 1
    assert verdict(board, 1) == verdict(board, 2) == {"accepted": True}
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


def test_a_worker_bound_to_another_manifest_is_refused(group, tmp_path):
    """Worker 2 serves another manifest (another job, or the same job signed again)."""
    group[2] = enclave(tmp_path / "state", binding=OTHER_DIGEST)
    board = MemoryBoard()
    server, first, second = handshake(group, board)
    assert isinstance(server, AttestationError)
    assert "worker 2 failed attestation: it does not serve this job's manifest" in str(server)
    assert isinstance(first, PeerFailure) and "refused the job" in str(first)
    # And worker 2, holding its manifest, refuses the server that serves another.
    assert isinstance(second, AttestationError)
    assert "the parameter server failed attestation: it does not serve" in str(second)


def test_a_worker_bound_to_no_manifest_is_refused(group, tmp_path):
    group[1] = enclave(tmp_path / "state", binding=None)
    server = handshake(group, listed=group)[0]
    assert isinstance(server, AttestationError)
    assert "worker 1 failed attestation: it does not serve this job's manifest" in str(server)


def test_a_server_bound_to_another_manifest_is_refused(group, tmp_path):
    group[0] = enclave(tmp_path / "state", Role.PARAMSERVER, binding=OTHER_DIGEST)
    server, first, second = handshake(group)
    for worker in (first, second):
        assert isinstance(worker, AttestationError)
        assert "the parameter server failed attestation: it does not serve" in str(worker)
    # The server refuses them as well: they serve another manifest than its own.
    assert isinstance(server, AttestationError)


@pytest.mark.parametrize(
    ("rank", "role", "refused_by", "message"),
    [
        (
            0,
            Role.TRAIN,
            1,
            "the parameter server failed attestation: it is a train enclave, "
            "not a paramserver enclave",
        ),
        (0, Role.QUERY, 1, "the parameter server failed attestation: it is a query enclave"),
        (
            1,
            Role.QUERY,
            0,
            "worker 1 failed attestation: it is a query enclave, not a train enclave",
        ),
        (2, Role.PARAMSERVER, 0, "worker 2 failed attestation: it is a paramserver enclave"),
    ],
)
def test_an_enclave_attesting_the_wrong_role_for_its_rank_is_refused(
    group, tmp_path, rank, role, refused_by, message
):
    group[rank] = enclave(tmp_path / "state", role)
    outcomes = handshake(group)
    assert isinstance(outcomes[refused_by], AttestationError)
    assert message in str(outcomes[refused_by])
    # Nobody ends up holding a key.
    assert not any(isinstance(outcome, bytes) for outcome in outcomes)


def test_a_wrong_role_server_is_told_by_the_workers(group, tmp_path):
    group[0] = enclave(tmp_path / "state", Role.TRAIN)
    board = MemoryBoard()
    server = handshake(group, board)[0]
    assert isinstance(server, PeerFailure)
    assert "worker 1 refused the parameter server: the parameter server failed" in str(server)
    assert "it is a train enclave" in verdict(board, 2)["refused"]


def forged_grant(group: list[EnclaveContext], worker: int, nonce: bytes) -> bytes:
    """A grant as the host can make one: everything right but the server's signature."""
    binding = {
        "job_id": "job",
        "manifest": DIGEST,
        "rank": worker,
        "members": [m.identity.public.fingerprint for m in group],
        "nonce": nonce.hex(),
    }
    sealed = seal(
        group[worker].identity.public.hpke_key,
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


def test_a_group_key_not_signed_by_the_server_is_refused(group):
    # The host swaps worker 1's grant for a key of its own, sealed properly to the
    # worker's public key for this very run and signed with the host's key instead
    # of the server's.
    nonces: dict[str, bytes] = {}

    def swap_grant(key: str, value: bytes) -> bytes:
        if key == "nonce/1":
            nonces[key] = value
        if key != "grant/1":
            return value
        return forged_grant(group, 1, nonces["nonce/1"])

    board = MemoryBoard(swap_grant)
    server, worker, _ = handshake(group, board=board)
    assert isinstance(worker, IntegrityError)
    assert "grant's signature is not valid" in str(worker)
    assert isinstance(server, PeerFailure)
    assert "worker 1 refused the parameter server" in str(server)
    assert "grant's signature is not valid" in verdict(board, 1)["refused"]


def test_a_replayed_grant_is_refused(group):
    """The host records worker 1's grant, then (same enclaves, same job, a second run)
    hands it over again in place of the new one: the worker would reuse the old key
    with its sequence numbers starting again from 0."""
    first = MemoryBoard()
    assert all(isinstance(o, bytes) for o in handshake(group, first))
    recorded = first.posted["grant/1"]

    def replay(key: str, value: bytes) -> bytes:
        return recorded if key == "grant/1" else value

    board = MemoryBoard(replay)
    server, worker, other = handshake(group, board)
    assert board.posted["grant/1"] != recorded
    assert isinstance(worker, IntegrityError)
    assert "grant's signature is not valid" in str(worker)
    assert "grant's signature is not valid" in verdict(board, 1)["refused"]
    assert isinstance(server, PeerFailure)
    assert "worker 1 refused the parameter server" in str(server)
    # The worker whose grant was not touched got this run's key, not the old one.
    assert isinstance(other, bytes) and verdict(board, 2) == {"accepted": True}


def test_a_replayed_worker_nonce_does_not_bring_back_an_old_grant(group):
    """The host shows the server worker 1's nonce of an earlier run, so that the server
    attests and signs a grant for that run: the worker, with this run's nonce, refuses."""
    first = MemoryBoard()
    assert all(isinstance(o, bytes) for o in handshake(group, first))
    old_nonce = first.posted["nonce/1"]

    def replay(key: str, value: bytes) -> bytes:
        return old_nonce if key == "nonce/1" else value

    board = MemoryBoard(replay)
    server, worker, _ = handshake(group, board)
    # The server's evidence is over the old nonce too: the worker refuses it first.
    assert isinstance(worker, AttestationError)
    assert "the parameter server failed attestation: report data" in str(worker)
    assert "the parameter server failed" in verdict(board, 1)["refused"]
    assert isinstance(server, PeerFailure)


def test_replayed_worker_evidence_is_refused(group):
    """Worker 1's evidence of an earlier run, in place of this run's."""
    first = MemoryBoard()
    assert all(isinstance(o, bytes) for o in handshake(group, first))
    old = first.posted["evidence/1/0"]
    board = MemoryBoard(lambda key, value: old if key == "evidence/1/0" else value)
    server, worker, _ = handshake(group, board)
    assert isinstance(server, AttestationError)
    assert "worker 1 failed attestation" in str(server)
    assert isinstance(worker, PeerFailure) and "refused the job" in str(worker)


# -- no (key, nonce) pair twice across a killed and restarted job ----------------------


def exchange(keys: list[bytes], rounds: int) -> None:
    """What the members seal once they hold the group key: every worker's HELLO, the
    server's START, then `rounds` rounds of PARAMS and AVERAGE (each end checks)."""
    server = SecureChannel(keys[0], job_id="job", rank=0)
    workers = [SecureChannel(key, job_id="job", rank=rank) for rank, key in enumerate(keys) if rank]

    def send(
        sender: SecureChannel, receiver: SecureChannel, kind: MessageKind, round_number: int
    ) -> None:
        slot = CONTROL_SLOT_BYTES if kind in (MessageKind.HELLO, MessageKind.START) else 64
        sealed = sender.seal(
            kind, receiver=receiver.rank, round_number=round_number, payload=b"x", slot_bytes=slot
        )
        receiver.open(
            sealed, sender=sender.rank, kinds=(kind,), round_number=round_number, slot_bytes=slot
        )

    for worker in workers:
        send(worker, server, MessageKind.HELLO, 0)
    for worker in workers:
        send(server, worker, MessageKind.START, 0)
    for round_number in range(rounds):
        for worker in workers:
            send(worker, server, MessageKind.PARAMS, round_number)
        for worker in workers:
            send(server, worker, MessageKind.AVERAGE, round_number)


@pytest.mark.parametrize("restart", ["same enclaves", "new enclaves"])
def test_no_key_and_nonce_pair_is_used_twice_across_a_killed_and_restarted_job(
    group, tmp_path, monkeypatch, restart
):
    used: list[tuple[bytes, bytes]] = []
    encrypt = messages.aead_encrypt_into

    def recording(key: bytes, nonce: bytes, plaintext, associated: bytes, out) -> None:
        used.append((key, nonce))
        encrypt(key, nonce, plaintext, associated, out)

    monkeypatch.setattr(messages, "aead_encrypt_into", recording)

    # The first run: the handshake, a few rounds, then the job is killed.
    first = handshake(group)
    assert all(isinstance(k, bytes) for k in first) and len(set(first)) == 1
    exchange(first, rounds=3)
    first_run = list(used)

    # The job restarts: the same job's enclaves again, or (as a real restart does, an
    # enclave serving one job only) new ones; every channel counts from 0 again.
    state = tmp_path / "state"
    if restart == "new enclaves":
        group = [enclave(state, Role.PARAMSERVER), enclave(state), enclave(state)]
    second = handshake(group)
    assert all(isinstance(k, bytes) for k in second) and len(set(second)) == 1
    exchange(second, rounds=5)
    second_run = used[len(first_run) :]

    assert second[0] != first[0]
    # The nonces alone do repeat (same senders, receivers and sequence numbers)...
    assert {n for _, n in first_run} <= {n for _, n in second_run}
    # ...but never under the same key: within a run or across both.
    assert len(set(used)) == len(used) == len(first_run) + len(second_run)
    assert {k for k, _ in first_run} == {first[0]} and {k for k, _ in second_run} == {second[0]}
