"""Mutual attestation and the group key: which enclaves take part, and the key they share.

Over the rendezvous store (untrusted: what is posted there is public or sealed):

  1. every member posts a fresh nonce;
  2. the parameter server posts evidence over each worker's nonce, and each worker
     evidence over the server's nonce;
  3. each side verifies the other's with the peer policy: the measurement must be this
     enclave's own, simulated evidence is accepted only by an enclave that itself runs
     on the simulated platform, and the attested identity must be the one the members
     list names for that rank (the enclave the owner's client attested);
  4. the server draws a fresh group key and posts to each worker a grant: the key
     HPKE-sealed to the worker's attested key, signed with the server's attested key
     (or, if it refuses any worker, the reason). The grant is bound to the job's
     manifest and to the nonce the worker posted in step 1 for this very run, so a
     grant recorded from an earlier run (same enclaves, same job) does not open: a
     replayed grant would have made a worker reuse an old key with sequence numbers
     starting again from 0, i.e. reuse AES-GCM nonces;
  5. each worker checks the grant's signature, opens the key and posts its verdict on the
     server: accepted, or why not.

A refusal fails the job on every member, with the reason.
"""

from __future__ import annotations

import json
import os
from typing import Any

from chiron.core import purposes
from chiron.core.attestation import Policy, VerificationReport, load_sim_root, verify_evidence
from chiron.core.crypto import open_sealed, random_key, seal, sign, verify_signature
from chiron.core.encoding import b64decode, b64encode, canonical_json
from chiron.core.errors import AttestationError, IntegrityError, PeerFailure
from chiron.core.roles import Role
from chiron.enclave.context import EnclaveContext
from chiron.enclave.distributed.group import Board
from chiron.enclave.distributed.messages import member_name
from chiron.enclave.distributed.settings import GroupSettings

NONCE_BYTES = 32
_ACCEPTED = {"accepted": True}


def peer_policy(context: EnclaveContext) -> Policy:
    """What an enclave accepts of a peer: its own runtime, simulated only if it is itself."""
    return Policy(
        measurements=(context.measurement,),
        UNSAFE_allow_simulation=context.platform_name == "sim",
    )


def admit_workers(context: EnclaveContext, board: Board, settings: GroupSettings) -> bytes:
    """The parameter server's side: attest every worker, grant each the group key.

    Returns the key once the grants are posted; `await_verdicts` then collects the
    workers' verdicts on the server.
    """
    timeout = settings.handshake_timeout
    workers = range(1, settings.workers + 1)
    nonce = os.urandom(NONCE_BYTES)
    for worker in workers:
        board.post(f"nonce/0/{worker}", nonce, to=worker, kind="nonce")
    worker_nonces: dict[int, bytes] = {}
    for worker in workers:
        theirs = board.fetch(f"nonce/{worker}", sender=worker, kind="nonce", timeout=timeout)
        board.post(f"evidence/0/{worker}", _evidence(context, theirs), to=worker, kind="evidence")
        worker_nonces[worker] = theirs
    refusal = None
    for worker in workers:
        evidence = board.fetch(
            f"evidence/{worker}/0", sender=worker, kind="evidence", timeout=timeout
        )
        problem = _appraise(context, evidence, nonce, settings, worker)
        if problem and refusal is None:
            refusal = f"{member_name(worker)} failed attestation: {problem}"
    if refusal is not None:
        for worker in workers:
            board.post(
                f"grant/{worker}", canonical_json({"refused": refusal}), to=worker, kind="grant"
            )
        raise AttestationError(refusal)
    key = random_key()
    for worker in workers:
        board.post(
            f"grant/{worker}",
            _grant(context, settings, worker, worker_nonces[worker], key),
            to=worker,
            kind="grant",
        )
    return key


def await_verdicts(board: Board, settings: GroupSettings) -> None:
    """The parameter server's last step: every worker accepted it and holds the key.

    Separate from `admit_workers` because by now the workers that accepted are loading
    their data: if another refused, the caller must tell them (it holds the key to).
    """
    for worker in range(1, settings.workers + 1):
        verdict = _document(
            board.fetch(
                f"ack/{worker}", sender=worker, kind="ack", timeout=settings.handshake_timeout
            )
        )
        if verdict != _ACCEPTED:
            raise PeerFailure(
                f"worker {worker} refused the parameter server: "
                f"{str(verdict.get('refused', 'no reason given'))[:512]}"
            )


def join_server(context: EnclaveContext, board: Board, settings: GroupSettings) -> bytes:
    """A worker's side: attest the parameter server, receive the group key from it."""
    timeout = settings.handshake_timeout
    rank = settings.rank
    nonce = os.urandom(NONCE_BYTES)
    board.post(f"nonce/{rank}", nonce, to=0, kind="nonce")
    theirs = board.fetch(f"nonce/0/{rank}", sender=0, kind="nonce", timeout=timeout)
    board.post(f"evidence/{rank}/0", _evidence(context, theirs), to=0, kind="evidence")
    evidence = board.fetch(f"evidence/0/{rank}", sender=0, kind="evidence", timeout=timeout)
    problem = _appraise(context, evidence, nonce, settings, 0)
    grant = board.fetch(f"grant/{rank}", sender=0, kind="grant", timeout=timeout)
    try:
        if problem:
            raise AttestationError(f"the parameter server failed attestation: {problem}")
        document = _document(grant)
        if "refused" in document:
            raise PeerFailure(
                f"the parameter server refused the job: {str(document['refused'])[:512]}"
            )
        key = _open_grant(context, settings, nonce, document)
    except (AttestationError, IntegrityError) as exc:
        board.post(f"ack/{rank}", canonical_json({"refused": str(exc)}), to=0, kind="ack")
        raise
    board.post(f"ack/{rank}", canonical_json(_ACCEPTED), to=0, kind="ack")
    return key


def _evidence(context: EnclaveContext, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise IntegrityError("a peer's attestation nonce has the wrong length")
    return context.evidence(nonce)


def _appraise(
    context: EnclaveContext, evidence: bytes, nonce: bytes, settings: GroupSettings, rank: int
) -> str | None:
    """Why the peer of `rank` is refused, or None if it is accepted.

    Besides the runtime and the identity the owner attested for that rank, the peer
    must attest the role of its rank and that it serves this very manifest.
    """
    root = load_sim_root(context.state_dir)
    try:
        report = verify_evidence(
            evidence, peer_policy(context), nonce=nonce, sim_roots=(root,) if root else ()
        )
    except AttestationError as exc:
        return str(exc)
    if not report.ok:
        return _failures(report)
    if report.identity != settings.members[rank]:
        return "it is not the enclave the owner's client attested for its place in the job"
    role = Role.PARAMSERVER if rank == 0 else Role.TRAIN
    if report.claims.role != role:
        return f"it is a {report.claims.role} enclave, not a {role} enclave"
    if report.claims.binding != settings.manifest_digest:
        return "it does not serve this job's manifest"
    return None


def _failures(report: VerificationReport) -> str:
    listed = "; ".join(f"{check.name}: {check.reason}" for check in report.failures)
    return listed or "the evidence does not authenticate the enclave"


def _grant_context(settings: GroupSettings, worker: int, worker_nonce: bytes) -> dict[str, object]:
    return {
        "job_id": settings.job_id,
        "manifest": settings.manifest_digest,
        "rank": worker,
        "members": [member.fingerprint for member in settings.members],
        # This run's nonce of the worker: a grant of another run does not verify.
        "nonce": worker_nonce.hex(),
    }


def _grant(
    context: EnclaveContext, settings: GroupSettings, worker: int, worker_nonce: bytes, key: bytes
) -> bytes:
    binding = _grant_context(settings, worker, worker_nonce)
    sealed = seal(
        settings.members[worker].hpke_key,
        key,
        purpose=purposes.EXCHANGE_GROUP_KEY,
        context=binding,
    )
    signature = sign(
        context.identity.signing_key,
        canonical_json({**binding, "sealed": b64encode(sealed)}),
        purpose=purposes.EXCHANGE_GROUP_KEY_GRANT,
    )
    return canonical_json({"sealed": b64encode(sealed), "signature": b64encode(signature)})


def _open_grant(
    context: EnclaveContext, settings: GroupSettings, nonce: bytes, grant: dict[str, Any]
) -> bytes:
    binding = _grant_context(settings, settings.rank, nonce)
    try:
        sealed = b64decode(grant["sealed"])
        signature = b64decode(grant["signature"])
    except (KeyError, TypeError, ValueError):
        raise IntegrityError("the group key grant is malformed") from None
    # Anyone can seal a key to this enclave's public key; only the attested server's
    # signature says the key is the group's, and not one the host chose to read along.
    verify_signature(
        settings.members[0].signing_key,
        signature,
        canonical_json({**binding, "sealed": b64encode(sealed)}),
        purpose=purposes.EXCHANGE_GROUP_KEY_GRANT,
        what="the group key grant's signature",
    )
    return open_sealed(
        context.identity.hpke_key,
        sealed,
        purpose=purposes.EXCHANGE_GROUP_KEY,
        context=binding,
        what="the group key",
    )


def _document(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise IntegrityError("a peer posted a malformed handshake message")
    return document
