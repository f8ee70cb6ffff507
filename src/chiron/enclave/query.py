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
"""

from __future__ import annotations

import fcntl
import gc
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chiron.core import dataset as container
from chiron.core import modelfile, purposes, replies
from chiron.core.contract import (
    EvaluateRequest,
    EvaluateResult,
    LoadModelRequest,
    LoadModelResult,
    ProvisionShareRequest,
    ProvisionShareResult,
    QueryRequest,
    QueryResult,
)
from chiron.core.crypto import open_sealed, reply_public_key, seal, verify_signature
from chiron.core.errors import InputError, IntegrityError
from chiron.core.identifiers import check_dataset_id, check_model_id
from chiron.core.query_channel import (
    ChannelKeys,
    channel_opening_message,
    channel_secret_context,
)
from chiron.core.query_protocol import (
    QueryPolicy,
    confusion_matrix,
    decode_query_inputs,
    encode_answers,
    encode_evaluation_report,
    evaluation_data_key_context,
    evaluation_report_context,
    evaluation_request_message,
)
from chiron.core.recipe_protocol import FromChild, ToChild
from chiron.enclave.context import EnclaveContext
from chiron.enclave.recipe_session import predict_logits, receive_declaration, spawn_recipe
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.sealing import SealingKey

Emit = Callable[[dict[str, Any]], None]
BUDGET_DIRECTORY = "query-budget"
# Channels one enclave keeps open at once; opening another forgets the least recently
# used (its later queries are refused, and its id stays spent in the ledger).
MAX_OPEN_CHANNELS = 64
_REPLAYED = "this request was already received (replayed request)"


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
    ledger: _Ledger | None = None
    channels: OrderedDict[str, _Channel] = field(default_factory=OrderedDict)
    # Channel ids and evaluation request ids this process has accepted.
    seen_requests: set[str] = field(default_factory=set)


def _session(context: EnclaveContext, *, ready: bool = True) -> _Session:
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
    session = _session(context, ready=False)
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
    ledger = _Ledger(context, session.model_id)
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


def _budget_key(context: EnclaveContext) -> SealingKey:
    return SealingKey(
        state_dir=context.state_dir,
        platform_name=context.platform_name,
        measurement=context.measurement,
        purpose="query-budget",
    )


def _budget_path(context: EnclaveContext, model_id: str) -> Path:
    """Where a model's sealed ledger lies; the name comes from a checked model id only."""
    return context.state_dir / BUDGET_DIRECTORY / f"{check_model_id(model_id)}.sealed"


# The ledger is a file of fixed-size sealed records, appended one at a time: a channel
# opened or an evaluation accepted (its 16-byte id), or units charged (negative: given
# back). Each record is sealed to the runtime measurement and bound to the model id,
# its own index and the tag of the record before it, so the host can neither read,
# forge, edit, reorder nor splice records (from this file or another model's); it can
# only cut the file short or replace it, which is the rollback docs/query.md describes.
# Every record has one size whatever it says: the host learns how many channels,
# evaluations and charged queries there were (it relays each of them anyway), never
# how many units they cost.
_RECORD = struct.Struct(">B16sq")  # kind, id (zeros for a charge), units
_OPENED, _EVALUATED, _CHARGED = 1, 2, 3
_NO_ID = bytes(16)


class _Ledger:
    """One model's lifetime use, shared through its sealed file by every enclave of it.

    This enclave keeps the file open and, in memory, the state as of the last record it
    read: under the exclusive lock it reads only the records other enclaves appended
    since, then checks and appends, so a query costs a lock, a small read at most and a
    write of one record, not a rewrite of the whole ledger.
    """

    def __init__(self, context: EnclaveContext, model_id: str) -> None:
        self._path = _budget_path(context, model_id)
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = _budget_key(context)
        self._model_id = model_id
        self._record_bytes = len(self._seal(0, b"", _RECORD.pack(0, _NO_ID, 0)))
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stat = os.fstat(self._fd)
        self._file = (stat.st_dev, stat.st_ino)
        self._records = 0
        self._previous = b""  # the tag of the last record read or written
        self.used = 0
        self.ids: set[bytes] = set()

    def close(self) -> None:
        os.close(self._fd)

    def _seal(self, index: int, previous: bytes, plaintext: bytes) -> bytes:
        return self._key.seal(plaintext, self._binding(index, previous))

    def _binding(self, index: int, previous: bytes) -> dict[str, object]:
        return {"model_id": self._model_id, "record": index, "previous": previous.hex()}

    @contextmanager
    def locked(self) -> Iterator[_Ledger]:
        """Hold the ledger's lock, caught up with every record: one check-and-write at a time.

        Every query enclave of a model on this state directory takes the same exclusive
        `flock`, so two of them cannot both read "one unit left" and both spend it.
        """
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            yield self
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        try:
            on_disk = os.stat(self._path)
        except FileNotFoundError:
            on_disk = None
        # A ledger deleted, replaced or cut short under a running enclave is a rollback
        # this enclave can see: it refuses to go on rather than forget what it knows.
        size = os.fstat(self._fd).st_size
        known = self._records * self._record_bytes
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != self._file or size < known:
            raise IntegrityError("the model's query ledger was replaced or rolled back")
        if (size - known) % self._record_bytes:
            raise IntegrityError("the model's sealed query ledger is malformed")
        if size > known:
            data = os.pread(self._fd, size - known, known)
            for offset in range(0, len(data), self._record_bytes):
                self._apply(data[offset : offset + self._record_bytes])

    def _apply(self, blob: bytes) -> None:
        plaintext = self._key.unseal(blob, self._binding(self._records, self._previous))
        kind, request_id, units = _RECORD.unpack(plaintext)
        if kind not in (_OPENED, _EVALUATED, _CHARGED):
            raise IntegrityError("the model's sealed query ledger is malformed")
        self._count(blob, kind, request_id, units)

    def _count(self, blob: bytes, kind: int, request_id: bytes, units: int) -> None:
        if kind != _CHARGED:
            self.ids.add(request_id)
        self.used += units
        self._records += 1
        self._previous = blob[-16:]

    def append(self, kind: int, request_id: bytes, units: int, *, durable: bool) -> None:
        """Append one record (call inside `locked`).

        Every enclave of the model sees it once written (the page cache is shared);
        `durable` also syncs it to disk. What a crash before a sync forgets, a host can
        forget at will by rolling the file back, so only the rare records that refuse
        replays pay for a sync, never a query's charge (docs/query.md).
        """
        blob = self._seal(self._records, self._previous, _RECORD.pack(kind, request_id, units))
        os.pwrite(self._fd, blob, self._records * self._record_bytes)
        if durable:
            os.fsync(self._fd)
        self._count(blob, kind, request_id, units)

    def accept(self, request_id: str, kind: int, units: int, budget: int | None) -> int | None:
        """Record a channel or an evaluation, refusing an id already spent; the budget left."""
        key = bytes.fromhex(request_id)
        with self.locked():
            if key in self.ids:
                raise InputError(_REPLAYED)
            _check_budget(self.used, units, budget)
            self.append(kind, key, units, durable=True)
            return None if budget is None else budget - self.used

    def charge(self, units: int, budget: int) -> int:
        """Charge `units` of `budget` before the recipe runs; the budget left.

        One locked step: the budget check and the write that spends it. Charging before
        answering means an answer is never given on budget that a concurrent request has
        already spent.
        """
        with self.locked():
            _check_budget(self.used, units, budget)
            self.append(_CHARGED, _NO_ID, units, durable=False)
            return budget - self.used

    def refund(self, units: int) -> None:
        """Give back the units of a request whose prediction failed; its id stays spent.

        The owner got no answer, only a one-line failure, and the recipe's sandbox is gone
        with it (this enclave answers nothing more), so a refund cannot buy answers.
        """
        with self.locked():
            self.append(_CHARGED, _NO_ID, -units, durable=False)

    def spent(self, request_id: str) -> bool:
        with self.locked():
            return bytes.fromhex(request_id) in self.ids


def _check_budget(used: int, units: int, budget: int | None) -> None:
    if budget is not None and used + units > budget:
        raise InputError(
            f"query budget exhausted: {budget - used} of {budget} left, this request needs {units}"
        )


def _ready(session: _Session) -> tuple[QueryPolicy, _Ledger, Sandbox]:
    assert session.policy is not None and session.ledger is not None
    assert session.sandbox is not None
    return session.policy, session.ledger, session.sandbox


def _refuse_replay(session: _Session, request_id: str) -> None:
    """Refuse a request id this process has seen; remember it otherwise.

    Called once the owner's signature checked out and before any work, so a replayed
    request (the same signed bytes sent again) gets nothing, even if its first run
    failed half-way. The sealed ledger's check (`_Ledger.accept`) refuses what other
    enclaves of the model accepted.
    """
    if request_id in session.seen_requests:
        raise InputError(_REPLAYED)
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
    _refuse_replay(session, channel_id)
    _ready(session)[1].accept(channel_id, _OPENED, 0, None)
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
    session = _session(context)
    policy, ledger, _ = _ready(session)
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
    logits = _predict(session, inputs, charged=policy.budget is not None)
    answers = encode_answers(logits, session.header.query_policy)
    return QueryResult(channel.keys.seal_answers(sequence, budget_left, answers), budget_left)


def handle_evaluate(
    context: EnclaveContext, request: EvaluateRequest, emit: Emit
) -> EvaluateResult:
    session = _session(context)
    policy, ledger, _ = _ready(session)
    header, model_id, request_id = session.header, session.model_id, request.request_id
    reply_key = reply_public_key(request.reply_key)
    verify_signature(
        header.owner.signing_key,
        request.signature,
        evaluation_request_message(
            model_id, request_id, request.sealed_data_key, request.reply_key
        ),
        purpose=purposes.EVALUATION_REQUEST,
        what="the owner's signature on this evaluation",
    )
    # Refused before any work; recorded (and charged) below, in one locked step that
    # checks the ledger again, for a replay racing its original.
    _refuse_replay(session, request_id)
    if ledger.spent(request_id):
        raise InputError(_REPLAYED)
    # The path is the host's; the file it names is believed only once the owner's data
    # key, sealed under the dataset id its header states, opens and authenticates it.
    dataset_header = container.read_dataset_header(request.dataset_path)
    dataset_id = check_dataset_id(dataset_header.dataset_id)
    if dataset_header.schema.input_shape != header.schema.input_shape or (
        dataset_header.schema.num_classes != header.schema.num_classes
    ):
        raise InputError("the dataset's schema does not match the model's")
    # Refused before the data key is even opened when the header says it is too small.
    _check_evaluation_size(policy, dataset_header.record_count)
    key = open_sealed(
        context.identity.hpke_key,
        request.sealed_data_key,
        purpose=purposes.EVALUATION_DATA_KEY,
        context=evaluation_data_key_context(model_id, request_id, dataset_id),
        what="the evaluation data key",
    )
    _, x, y = container.load_dataset(request.dataset_path, key)
    # Counted again on the records the key authenticated (the header's count is the
    # host's until then).
    _check_evaluation_size(policy, len(y))
    budget_left = ledger.accept(request_id, _EVALUATED, len(y), policy.budget)
    logits = _predict(session, x, charged=True)
    matrix = confusion_matrix(y, logits.argmax(1), header.schema.num_classes)
    sealed = seal(
        reply_key,
        encode_evaluation_report(model_id, dataset_id, matrix, budget_left),
        purpose=purposes.EVALUATION_REPORT,
        context=evaluation_report_context(model_id, request_id),
    )
    signature = replies.sign_evaluation_report(context.identity, model_id, request_id, sealed)
    return EvaluateResult(sealed, signature)


def _check_evaluation_size(policy: QueryPolicy, records: int) -> None:
    """An evaluation runs on at least the policy's minimum number of records.

    Each record is charged to the budget like a queried input, and the report holds
    only counts over the whole set: with a minimum, no single record's answer stands
    alone in the matrix, however the owner composes its labelled set.
    """
    if records < policy.min_evaluation_records:
        raise InputError(
            f"an evaluation needs at least {policy.min_evaluation_records} records "
            f"(this model's query policy), the dataset has {records}"
        )


def _predict(session: _Session, x: np.ndarray, *, charged: bool) -> np.ndarray:
    """The recipe's logits for `x`, whose units were charged if `charged`.

    If the recipe fails, the charged units are refunded (see `_Ledger.refund`) and the
    failure raised.
    """
    _, ledger, sandbox = _ready(session)
    try:
        return predict_logits(sandbox, x, session.header.schema, session.header.schema.num_classes)
    except BaseException:
        if charged:
            ledger.refund(len(x))
        raise
