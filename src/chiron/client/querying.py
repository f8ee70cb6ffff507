"""Owner and provider sides of using an escrowed model: unlock it, evaluate, query.

Each party opens its own share of the model key from the model file and re-seals it to
a query enclave that its client has just attested. Queries and evaluations are signed
by the owner named in the model file and answered under a fresh reply key, so only
that owner can ask and only that owner can read the answers.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import EnclaveSession
from chiron.core import modelfile, purposes
from chiron.core.attestation import Policy
from chiron.core.crypto import open_sealed, seal, sign
from chiron.core.errors import InputError
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.query_protocol import (
    decode_answers,
    evaluation_job_id,
    evaluation_request_message,
    query_request_message,
)


@dataclass
class UnlockedModel:
    """A query enclave holding both shares of one model, ready to answer the owner."""

    session: EnclaveSession
    header: modelfile.ModelHeader
    owner: Identity
    enclave: PublicIdentity


def _release_share(
    session: EnclaveSession,
    header: modelfile.ModelHeader,
    party: str,
    identity: Identity,
    enclave: PublicIdentity,
) -> None:
    if identity.public != header.identity_of(party):
        raise InputError(f"the {party} key given is not the {party} named in this model file")
    share = open_sealed(
        identity.hpke_key,
        header.share_for(party),
        purpose=purposes.MODEL_SHARE_ESCROW,
        context={"model_id": header.model_id, "party": party},
        what=f"the {party}'s key share",
    )
    session.call(
        "provision_share",
        {
            "party": party,
            "sealed_share": seal(
                enclave.hpke_key,
                share,
                purpose=purposes.MODEL_SHARE_PROVISION,
                context={"model_id": header.model_id, "party": party},
            ),
        },
    )


def unlock_model(
    session: EnclaveSession,
    *,
    model: bytes,
    owner: Identity,
    provider: Identity | None,
    policy: Policy,
    state_dir: Path,
    sim_roots: SimRootSource | None = None,
) -> UnlockedModel:
    """Attest the query enclave, load the model, release the shares we hold."""
    header = modelfile.read_model_header(model)
    attested = verify_enclave(session.evidence, policy, state_dir=state_dir, sim_roots=sim_roots)
    session.call("load_model", {"model": model})
    _release_share(session, header, "owner", owner, attested.identity)
    if provider is not None:
        _release_share(session, header, "provider", provider, attested.identity)
    return UnlockedModel(session, header, owner, attested.identity)


def _reply_key() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, public


def query(unlocked: UnlockedModel, inputs: np.ndarray) -> tuple[list[dict[str, Any]], int | None]:
    """Ask for predictions of `inputs`; returns the answers and the budget left."""
    header = unlocked.header
    buffer = io.BytesIO()
    np.save(buffer, inputs, allow_pickle=False)
    request_id = os.urandom(16).hex()
    reply_private, reply_public = _reply_key()
    sealed_inputs = seal(
        unlocked.enclave.hpke_key,
        buffer.getvalue(),
        purpose=purposes.QUERY_INPUTS,
        context={"model_id": header.model_id, "request_id": request_id},
    )
    signature = sign(
        unlocked.owner.signing_key,
        query_request_message(header.model_id, request_id, sealed_inputs, reply_public),
        purpose=purposes.QUERY_REQUEST,
    )
    result = unlocked.session.call(
        "query",
        {
            "request_id": request_id,
            "sealed_inputs": sealed_inputs,
            "reply_key": reply_public,
            "signature": signature,
        },
    )
    answers = open_sealed(
        reply_private,
        result["sealed_answers"],
        purpose=purposes.QUERY_ANSWERS,
        context={"model_id": header.model_id, "request_id": request_id},
        what="query answers",
    )
    decoded = decode_answers(answers, len(inputs), header.schema.num_classes, header.query_policy)
    return decoded, result.get("budget_left")


def evaluate(unlocked: UnlockedModel, *, dataset_path: str, data_key: DataKey) -> dict[str, Any]:
    """Accuracy and per-class figures of the model on an encrypted dataset of the owner's."""
    header = unlocked.header
    reply_private, reply_public = _reply_key()
    sealed_key = seal(
        unlocked.enclave.hpke_key,
        data_key.key,
        purpose=purposes.DATASET_KEY,
        context={"job_id": evaluation_job_id(header.model_id), "dataset_id": data_key.dataset_id},
    )
    signature = sign(
        unlocked.owner.signing_key,
        evaluation_request_message(header.model_id, sealed_key, reply_public),
        purpose=purposes.EVALUATION_REQUEST,
    )
    result = unlocked.session.call(
        "evaluate",
        {
            "dataset_path": dataset_path,
            "sealed_data_key": sealed_key,
            "reply_key": reply_public,
            "signature": signature,
        },
    )
    return json.loads(
        open_sealed(
            reply_private,
            result["sealed_report"],
            purpose=purposes.EVALUATION_REPORT,
            context={"model_id": header.model_id},
            what="evaluation report",
        )
    )
