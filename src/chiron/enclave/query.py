"""The query enclave: load an escrowed model once both parties released their shares, answer.

The owner gets answers, never weights or architecture; the provider's recipe decides
(in its authenticated QUERY_POLICY) whether answers are labels or rounded
probabilities and how many queries the model may answer in its lifetime. Every query is
made on a query channel the owner named in the model file opened with a signature,
under keys only the owner's client and this enclave hold (`core.query_protocol`), so
the host that relays traffic cannot use a model the owner has unlocked, and relays
only ciphertext.

Against a host that rewrites, replays and forges messages:
- the enclave serves one model for its whole life (`EnclaveContext.bind`), whose id is
  checked before it names anything (the sealed ledger file);
- each query is answered at most once per model: a channel's id is recorded in the
  model's sealed ledger (shared by every query enclave of the model on this state
  directory) when the channel opens, so its opening is refused by this and every other
  enclave afterwards; within the channel, only sequence numbers above the last one
  accepted are answered, so a replayed or reordered query gets a refusal, never a
  second answer that a recipe could vary; an evaluation's signed request id is
  recorded the same way;
- answers are sealed under the channel's answer key, bound to the query's sequence
  number and the budget left, so the client rejects a forged or swapped reply before
  anything in it is believed; evaluation reports are signed (`core.replies`).

Against an owner who wants more than the policy allows:
- every input queried and every record evaluated is charged to the budget before the
  recipe runs, under an exclusive lock, so concurrent enclaves cannot overspend it;
- an evaluation needs at least the policy's `min_evaluation_records` and returns only
  a confusion matrix, sealed at a size fixed by the number of classes.

This module loads, unlocks and serves the model and answers `query`;
`enclave.evaluation` answers `evaluate` on the same session, and `enclave.query_ledger`
keeps the model's sealed ledger.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chiron.core import modelfile, purposes
from chiron.core.contract import (
    LoadModelRequest,
    LoadModelResult,
    ProvisionShareRequest,
    ProvisionShareResult,
    QueryRequest,
    QueryResult,
)
from chiron.core.crypto import open_sealed, verify_signature
from chiron.core.errors import InputError, IntegrityError
from chiron.core.identifiers import check_model_id
from chiron.core.query_channel import (
    ChannelKeys,
    channel_opening_message,
    channel_secret_context,
)
from chiron.core.query_protocol import QueryPolicy, decode_query_inputs, encode_answers
from chiron.core.recipe_protocol import FromChild, ToChild
from chiron.enclave.context import EnclaveContext
from chiron.enclave.query_ledger import OPENED, REPLAYED, Ledger
from chiron.enclave.recipe_session import predict_logits, receive_declaration, spawn_recipe
from chiron.enclave.sandbox import Sandbox

Emit = Callable[[dict[str, Any]], None]
# Channels one enclave keeps open at once; opening another forgets the least recently
# used (its later queries are refused, and its id stays spent in the ledger).
MAX_OPEN_CHANNELS = 64


@dataclass
class _Channel:
    """An open query channel: its keys and the lowest sequence number still acceptable."""

    keys: ChannelKeys
    next_sequence: int = 0


@dataclass
class _Session:
    """The one model this enclave process serves."""

    model_id: str  # checked by `check_model_id`: safe in a file name
    file_bytes: bytes
    header: modelfile.ModelHeader
    shares: dict[str, bytes] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    policy: QueryPolicy | None = None  # the authenticated header's, once unlocked
    ledger: Ledger | None = None
    channels: OrderedDict[str, _Channel] = field(default_factory=OrderedDict)
    # Channel ids and evaluation request ids this process has accepted.
    seen_requests: set[str] = field(default_factory=set)


def current_session(context: EnclaveContext, *, ready: bool = True) -> _Session:
    session: _Session | None = context.session.get("query")
    if session is None:
        raise InputError("no model is loaded in this query enclave")
    if ready and session.sandbox is None:
        missing = [p for p in modelfile.PARTIES if p not in session.shares]
        raise InputError(f"the model is locked: waiting for the {' and '.join(missing)} share")
    return session


def handle_load_model(
    context: EnclaveContext, request: LoadModelRequest, emit: Emit
) -> LoadModelResult:
    header = modelfile.read_model_header(request.model)
    # The header is not authenticated until both shares arrive, and its model id names
    # the sealed ledger file: check it before anything uses it.
    model_id = check_model_id(header.model_id)
    # One model per enclave for life: a host cannot swap in another model after the
    # owner attested this enclave, nor load a second one beside it.
    context.bind(model_id)
    context.session["query"] = _Session(model_id, request.model, header)
    return LoadModelResult(model_id, header.query_policy, header.schema.to_dict())


def handle_provision_share(
    context: EnclaveContext, request: ProvisionShareRequest, emit: Emit
) -> ProvisionShareResult:
    session = current_session(context, ready=False)
    party = request.party
    share = open_sealed(
        context.identity.hpke_key,
        request.sealed_share,
        purpose=purposes.MODEL_SHARE_PROVISION,
        context={"model_id": session.model_id, "party": party},
        what=f"the {party}'s key share",
    )
    if modelfile.share_digest(share) != session.header.share_sha256(party):
        raise IntegrityError(f"the {party}'s key share does not belong to this model")
    session.shares[party] = share
    if len(session.shares) == len(modelfile.PARTIES) and session.sandbox is None:
        _unlock(context, session)
    return ProvisionShareResult(session.sandbox is not None)


def _unlock(context: EnclaveContext, session: _Session) -> None:
    """Rebuild the model key in memory, decrypt, and start the recipe's predict sandbox."""
    model_key = bytes(
        a ^ b for a, b in zip(session.shares["owner"], session.shares["provider"], strict=True)
    )
    header, payload = modelfile.decrypt_model(session.file_bytes, model_key)
    policy = QueryPolicy.of(header.query_policy)
    ledger = Ledger(context, session.model_id)
    sandbox = spawn_recipe()
    try:
        declaration = receive_declaration(
            sandbox,
            mode="query",
            schema=header.schema,
            recipe_name=payload.recipe_name,
            recipe_source=payload.recipe_source,
            overrides={},
        )
        if declaration.model_nbytes != len(payload.weights):
            raise IntegrityError("the model's weights do not match its recipe")
        sandbox.send(ToChild.WEIGHTS, payload.weights)
        sandbox.expect(FromChild.READY, size=0)
    except BaseException:
        sandbox.close()
        ledger.close()
        raise
    session.header, session.policy, session.ledger = header, policy, ledger
    session.sandbox = sandbox
    # What the enclave holds now lives as long as it does: move it out of the
    # collector's generations, so a collection while answering walks only what the
    # queries allocated (a full collection of everything is a tail on some query).
    gc.collect()
    gc.freeze()


def unlocked(session: _Session) -> tuple[QueryPolicy, Ledger, Sandbox]:
    assert session.policy is not None and session.ledger is not None
    assert session.sandbox is not None
    return session.policy, session.ledger, session.sandbox


def refuse_replay(session: _Session, request_id: str) -> None:
    """Refuse a request id this process has seen; remember it otherwise.

    Called once the owner's signature checked out and before any work, so a replayed
    request (the same signed bytes sent again) gets nothing, even if its first run
    failed half-way. The sealed ledger's check (`Ledger.accept`) refuses what other
    enclaves of the model accepted.
    """
    if request_id in session.seen_requests:
        raise InputError(REPLAYED)
    session.seen_requests.add(request_id)


def _channel(context: EnclaveContext, session: _Session, request: QueryRequest) -> _Channel:
    """The open channel `request` is made on; its first query opens it."""
    channel_id = request.channel_id
    if request.opening is None:
        channel = session.channels.get(channel_id)
        if channel is None:
            raise InputError(
                "this query's channel is not open in this enclave (a replayed or forged request)"
            )
        session.channels.move_to_end(channel_id)
        return channel
    model_id = session.model_id
    verify_signature(
        session.header.owner.signing_key,
        request.opening.signature,
        channel_opening_message(model_id, channel_id, request.opening.sealed_secret),
        purpose=purposes.QUERY_CHANNEL_OPENING,
        what="the owner's signature on this query channel",
    )
    # Recorded before the secret is opened: an opening is accepted once per model, by
    # one enclave, whatever happens next.
    refuse_replay(session, channel_id)
    unlocked(session)[1].accept(channel_id, OPENED, 0, None)
    secret = open_sealed(
        context.identity.hpke_key,
        request.opening.sealed_secret,
        purpose=purposes.QUERY_CHANNEL_SECRET,
        context=channel_secret_context(model_id, channel_id),
        what="the query channel's secret",
    )
    channel = _Channel(ChannelKeys.derive(secret, model_id, channel_id))
    session.channels[channel_id] = channel
    while len(session.channels) > MAX_OPEN_CHANNELS:
        session.channels.popitem(last=False)
    return channel


def handle_query(context: EnclaveContext, request: QueryRequest, emit: Emit) -> QueryResult:
    session = current_session(context)
    policy, ledger, _ = unlocked(session)
    channel = _channel(context, session, request)
    sequence = request.sequence
    if sequence < channel.next_sequence:
        raise InputError("this query was already received (replayed or reordered request)")
    # Authenticates the query as the owner's, for this channel and sequence number.
    plaintext = channel.keys.open_inputs(sequence, request.sealed_inputs)
    # Spent once authentic, whatever happens next: this sequence number and every one
    # below it are never answered again.
    channel.next_sequence = sequence + 1
    inputs = decode_query_inputs(plaintext, session.header.schema)
    budget_left = None if policy.budget is None else ledger.charge(len(inputs), policy.budget)
    logits = predict(session, inputs, charged=policy.budget is not None)
    answers = encode_answers(logits, session.header.query_policy)
    return QueryResult(channel.keys.seal_answers(sequence, budget_left, answers), budget_left)


def predict(session: _Session, x: np.ndarray, *, charged: bool) -> np.ndarray:
    """The recipe's logits for `x`, whose units were charged if `charged`.

    If the recipe fails, the charged units are refunded (see `Ledger.refund`) and the
    failure raised.
    """
    _, ledger, sandbox = unlocked(session)
    try:
        return predict_logits(sandbox, x, session.header.schema, session.header.schema.num_classes)
    except BaseException:
        if charged:
            ledger.refund(len(x))
        raise
