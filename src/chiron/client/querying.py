"""The owner's side of using an escrowed model: unlock it, evaluate, query.

The owner's client opens the owner's share of the model key from the model file and
re-seals it to a query enclave it has just attested as a fresh query enclave. The
provider's share comes from a `ProviderShareSource`: in every command, the provider's
key-release agent (`client.key_release.AgentShareSource`), which checks the enclave
against the provider's release policy and seals the share to it, so the owner never
holds the provider's key nor anything it could open with its own. Queries and
evaluations are signed by the owner named in the model file and answered under a fresh
reply key, so only that owner can ask and only that owner can read the answers.

The host relaying all of this may forge, swap or replay anything. So a reply is
believed only once the enclave's signature over it, made with the key its evidence
authenticated, checks out for the very request it answers; only then is it opened.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import EnclaveSession
from chiron.core import modelfile, purposes, replies
from chiron.core.attestation import Policy
from chiron.core.contract import (
    Call,
    EvaluateRequest,
    EvaluateResult,
    LoadModelRequest,
    LoadModelResult,
    ProvisionShareRequest,
    ProvisionShareResult,
    QueryRequest,
    QueryResult,
)
from chiron.core.crypto import open_sealed, reply_key_pair, seal, sign
from chiron.core.errors import InputError, IntegrityError
from chiron.core.identifiers import check_model_id
from chiron.core.key_release import open_escrowed_share, seal_share_to_enclave
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.query_protocol import (
    decode_answers,
    decode_evaluation_report,
    evaluation_data_key_context,
    evaluation_report_context,
    evaluation_request_message,
    query_context,
    query_request_message,
)
from chiron.core.roles import Role


@dataclass
class UnlockedModel:
    """A query enclave holding both shares of one model, ready to answer the owner."""

    session: EnclaveSession
    header: modelfile.ModelHeader
    owner: Identity
    # The query enclave's identity as its evidence authenticated it: replies must be
    # signed by this key.
    enclave: PublicIdentity


def _new_request_id() -> str:
    return os.urandom(16).hex()


class ProviderShareSource(Protocol):
    """Where the provider's share comes from: sealed to `enclave`, for `header`'s model."""

    def sealed_share(
        self,
        session: EnclaveSession,
        header: modelfile.ModelHeader,
        enclave: PublicIdentity,
        owner: Identity,
    ) -> bytes: ...


class ProviderKeyShare:
    """The provider's share re-sealed with the provider's own key, on the provider's side.

    What the key-release agent does after its checks; used directly only where one
    process legitimately holds the provider's key (the agent's own tests, benchmarks of
    the enclave). No command gives the owner this.
    """

    def __init__(self, provider: Identity) -> None:
        self._provider = provider

    def sealed_share(
        self,
        session: EnclaveSession,
        header: modelfile.ModelHeader,
        enclave: PublicIdentity,
        owner: Identity,
    ) -> bytes:
        if self._provider.public != header.provider:
            raise InputError("the provider key given is not the provider named in this model file")
        share = open_escrowed_share(self._provider, header, "provider")
        return seal_share_to_enclave(enclave, share, header.model_id, "provider")


def _provision(session: EnclaveSession, party: str, sealed_share: bytes) -> bool:
    """Hand a share sealed to the enclave over; whether the model is now unlocked."""
    request = ProvisionShareRequest(party, sealed_share)
    result = session.call(Call.PROVISION_SHARE.value, request.to_wire())
    return ProvisionShareResult.from_wire(result).unlocked


def unlock_model(
    session: EnclaveSession,
    *,
    model: bytes,
    owner: Identity,
    provider: ProviderShareSource | Identity | None,
    policy: Policy,
    state_dir: Path,
    sim_roots: SimRootSource | None = None,
) -> UnlockedModel:
    """Attest the query enclave, load the model, release the owner's share and the provider's.

    `provider` is normally the provider's key-release agent; an `Identity` stands for
    the provider's own key (`ProviderKeyShare`); None leaves the model locked.
    """
    header = modelfile.read_model_header(model)
    check_model_id(header.model_id)
    if owner.public != header.identity_of("owner"):
        raise InputError("the owner key given is not the owner named in this model file")
    source = ProviderKeyShare(provider) if isinstance(provider, Identity) else provider
    # A share goes only to a fresh query enclave: not a training enclave (whose key must
    # never see a model key), not one already serving another model.
    attested = verify_enclave(
        session.evidence, policy, state_dir=state_dir, sim_roots=sim_roots, role=Role.QUERY
    )
    loaded = LoadModelResult.from_wire(
        session.call(Call.LOAD_MODEL.value, LoadModelRequest(model).to_wire())
    )
    if loaded.model_id != header.model_id:
        raise IntegrityError("the query enclave loaded another model than this model file")
    owner_share = open_escrowed_share(owner, header, "owner")
    _provision(
        session,
        "owner",
        seal_share_to_enclave(attested.identity, owner_share, header.model_id, "owner"),
    )
    if source is not None:
        # The enclave is now bound to this model: the provider's agent checks exactly
        # that in fresh evidence of its own before it seals its share to this enclave.
        sealed = source.sealed_share(session, header, attested.identity, owner)
        _provision(session, "provider", sealed)
    return UnlockedModel(session, header, owner, attested.identity)


def query(unlocked: UnlockedModel, inputs: np.ndarray) -> tuple[list[dict[str, Any]], int | None]:
    """Ask for predictions of `inputs`; returns the answers and the budget left."""
    header = unlocked.header
    model_id = header.model_id
    buffer = io.BytesIO()
    np.save(buffer, inputs, allow_pickle=False)
    request_id = _new_request_id()
    reply_private, reply_public = reply_key_pair()
    sealed_inputs = seal(
        unlocked.enclave.hpke_key,
        buffer.getvalue(),
        purpose=purposes.QUERY_INPUTS,
        context=query_context(model_id, request_id),
    )
    signature = sign(
        unlocked.owner.signing_key,
        query_request_message(model_id, request_id, sealed_inputs, reply_public),
        purpose=purposes.QUERY_REQUEST,
    )
    request = QueryRequest(request_id, sealed_inputs, reply_public, signature)
    result = QueryResult.from_wire(unlocked.session.call(Call.QUERY.value, request.to_wire()))
    # Anyone can seal to the reply key (the host saw it): believe only what the attested
    # enclave signed for this request, budget included, and open nothing else.
    replies.verify_query_answers(
        unlocked.enclave,
        result.signature,
        model_id,
        request_id,
        result.sealed_answers,
        result.budget_left,
    )
    answers = open_sealed(
        reply_private,
        result.sealed_answers,
        purpose=purposes.QUERY_ANSWERS,
        context=query_context(model_id, request_id),
        what="query answers",
    )
    decoded = decode_answers(answers, len(inputs), header.schema.num_classes, header.query_policy)
    return decoded, result.budget_left


def evaluate(unlocked: UnlockedModel, *, dataset_path: str, data_key: DataKey) -> dict[str, Any]:
    """Accuracy and per-class figures of the model on an encrypted dataset of the owner's."""
    model_id = unlocked.header.model_id
    request_id = _new_request_id()
    reply_private, reply_public = reply_key_pair()
    # Sealed for this one evaluation: it opens only in a query enclave, for this model,
    # request and dataset (never in a training enclave, never for a replay).
    sealed_key = seal(
        unlocked.enclave.hpke_key,
        data_key.key,
        purpose=purposes.EVALUATION_DATA_KEY,
        context=evaluation_data_key_context(model_id, request_id, data_key.dataset_id),
    )
    signature = sign(
        unlocked.owner.signing_key,
        evaluation_request_message(model_id, request_id, sealed_key, reply_public),
        purpose=purposes.EVALUATION_REQUEST,
    )
    request = EvaluateRequest(request_id, dataset_path, sealed_key, reply_public, signature)
    result = EvaluateResult.from_wire(unlocked.session.call(Call.EVALUATE.value, request.to_wire()))
    replies.verify_evaluation_report(
        unlocked.enclave, result.signature, model_id, request_id, result.sealed_report
    )
    return decode_evaluation_report(
        open_sealed(
            reply_private,
            result.sealed_report,
            purpose=purposes.EVALUATION_REPORT,
            context=evaluation_report_context(model_id, request_id),
            what="evaluation report",
        ),
        model_id=model_id,
        dataset_id=data_key.dataset_id,
        schema=unlocked.header.schema,
    )
