"""The owner's side of using an escrowed model: unlock it, evaluate, query.

The owner's client opens the owner's share of the model key from the model file and
re-seals it to a query enclave it has just attested as a fresh query enclave. The
provider's share comes from a `ProviderShareSource`: in every command, the provider's
key-release agent (`client.key_release.AgentShareSource`), which checks the enclave
against the provider's release policy and seals the share to it, so the owner never
holds the provider's key nor anything it could open with its own. Queries and
evaluations are made by the owner named in the model file: queries on a channel the
owner's client opens once, with a signature, to the enclave it attested (its secret
sealed to that enclave's key, `core.query_protocol`), evaluations each signed and
answered under a fresh reply key. So only that owner can ask and only that owner can
read the answers.

The host relaying all of this may forge, swap or replay anything. So a reply is
believed only once it authenticates as the attested enclave's answer to the very
request it answers: under the channel's answer key, bound to the query's sequence
number and the budget left, or, for an evaluation, under the enclave's signature made
with the key its evidence authenticated.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import EnclaveSession
from chiron.core import modelfile, purposes, replies
from chiron.core.attestation import Policy
from chiron.core.contract import (
    Call,
    ChannelOpening,
    EvaluateRequest,
    EvaluateResult,
    LoadModelRequest,
    LoadModelResult,
    ProvisionShareRequest,
    ProvisionShareResult,
    QueryRequest,
    QueryResult,
)
from chiron.core.crypto import open_sealed, random_key, reply_key_pair, seal, sign
from chiron.core.errors import InputError, IntegrityError
from chiron.core.identifiers import check_model_id
from chiron.core.key_release import open_escrowed_share, seal_share_to_enclave
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.query_channel import (
    ChannelKeys,
    channel_opening_message,
    channel_secret_context,
)
from chiron.core.query_protocol import (
    Answers,
    decode_answers,
    decode_evaluation_report,
    encode_query_inputs,
    evaluation_data_key_context,
    evaluation_report_context,
    evaluation_request_message,
)
from chiron.core.roles import Role


@dataclass
class _Channel:
    """The owner's end of a query channel to one attested enclave."""

    keys: ChannelKeys
    # Sent with each query until one is answered: the enclave opens the channel then.
    opening: ChannelOpening | None
    next_sequence: int = 0


@dataclass
class UnlockedModel:
    """A query enclave holding both shares of one model, ready to answer the owner."""

    session: EnclaveSession
    header: modelfile.ModelHeader
    owner: Identity
    # The query enclave's identity as its evidence authenticated it: a channel's secret
    # is sealed to this key, and evaluation reports must be signed by it.
    enclave: PublicIdentity
    _channel: _Channel | None = field(default=None, repr=False)
    # Queries on one channel go one at a time, in sequence order (the enclave refuses a
    # sequence number below one it accepted).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


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


def _open_channel(unlocked: UnlockedModel) -> _Channel:
    """A fresh channel: its secret sealed to the attested enclave, the opening signed."""
    model_id, channel_id, secret = unlocked.header.model_id, _new_request_id(), random_key()
    sealed_secret = seal(
        unlocked.enclave.hpke_key,
        secret,
        purpose=purposes.QUERY_CHANNEL_SECRET,
        context=channel_secret_context(model_id, channel_id),
    )
    signature = sign(
        unlocked.owner.signing_key,
        channel_opening_message(model_id, channel_id, sealed_secret),
        purpose=purposes.QUERY_CHANNEL_OPENING,
    )
    keys = ChannelKeys.derive(secret, model_id, channel_id)
    return _Channel(keys, ChannelOpening(sealed_secret, signature))


def query(unlocked: UnlockedModel, inputs: np.ndarray) -> tuple[Answers, int | None]:
    """Ask for predictions of `inputs`; returns the answers and the budget left."""
    header = unlocked.header
    plaintext = encode_query_inputs(inputs, header.schema)
    count = len(plaintext) // header.schema.record_bytes
    with unlocked._lock:
        channel = unlocked._channel or _open_channel(unlocked)
        unlocked._channel = channel
        sequence = channel.next_sequence
        channel.next_sequence += 1
        request = QueryRequest(
            channel.keys.channel_id,
            sequence,
            channel.keys.seal_inputs(sequence, plaintext),
            channel.opening,
        )
        try:
            result = QueryResult.from_wire(
                unlocked.session.call(Call.QUERY.value, request.to_wire())
            )
            # Only the attested enclave (and this client) holds the answer key: what opens
            # under it, for this sequence number and this budget left, is its answer to
            # this query. A forged, swapped or rewritten reply opens to nothing.
            answers = channel.keys.open_answers(sequence, result.budget_left, result.sealed_answers)
        except BaseException:
            if channel.opening is not None:
                # Whether the enclave opened the channel is unknown: the next query opens
                # a fresh one (this one's id stays spent in the model's ledger).
                unlocked._channel = None
            raise
        channel.opening = None
    decoded = decode_answers(answers, count, header.schema.num_classes, header.query_policy)
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
