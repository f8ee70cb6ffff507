"""The query enclave: load an escrowed model once both parties released their shares, answer.

The owner gets answers, never weights or architecture; the provider's recipe decides
(in its authenticated QUERY_POLICY) whether answers are labels or rounded
probabilities and how many queries the model may answer in its lifetime. Every query is
signed by the owner named in the model file, so the host that relays traffic cannot
use a model the owner has unlocked; inputs arrive sealed to this enclave and answers
leave sealed to a reply key the owner chose, so the host relays only ciphertext.

Against a host that rewrites, replays and forges messages:
- the enclave serves one model for its whole life (`EnclaveContext.bind`), whose id is
  checked before it names anything (the sealed budget file);
- each signed request id is answered at most once per model: this process remembers
  it, and the model's sealed ledger (shared by every query enclave of the model on
  this state directory) records it in the same locked step that charges the budget,
  so a replay to this or another enclave gets a refusal, never a second answer that a
  recipe could vary;
- every reply is signed by this enclave's attested key over the request it answers
  (`core.replies`), so the client rejects a forged or swapped reply before opening it.

Against an owner who wants more than the policy allows:
- every input queried and every record evaluated is charged to the budget before the
  recipe runs, under an exclusive lock, so concurrent enclaves cannot overspend it;
- an evaluation needs at least the policy's `min_evaluation_records` and returns only
  a confusion matrix, sealed at a size fixed by the number of classes.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
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
from chiron.core.fileio import atomic_write
from chiron.core.identifiers import check_dataset_id, check_model_id
from chiron.core.query_protocol import (
    MAX_QUERY_BATCH,
    QueryPolicy,
    as_batch,
    confusion_matrix,
    encode_answers,
    encode_evaluation_report,
    evaluation_data_key_context,
    evaluation_report_context,
    evaluation_request_message,
    query_context,
    query_request_message,
)
from chiron.core.recipe_protocol import FromChild, ToChild, decode_json
from chiron.enclave.context import EnclaveContext
from chiron.enclave.recipe_session import predict_logits, receive_declaration, spawn_recipe
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.sealing import SealingKey

Emit = Callable[[dict[str, Any]], None]
BUDGET_DIRECTORY = "query-budget"


@dataclass
class _Session:
    """The one model this enclave process serves."""

    model_id: str  # checked by `check_model_id`: safe in a file name
    file_bytes: bytes
    header: modelfile.ModelHeader
    shares: dict[str, bytes] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    # Request ids (queries and evaluations alike) this process has accepted.
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
    # the sealed budget file: check it before anything uses it.
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
        _unlock(session)
    return ProvisionShareResult(session.sandbox is not None)


def _unlock(session: _Session) -> None:
    """Rebuild the model key in memory, decrypt, and start the recipe's predict sandbox."""
    model_key = bytes(
        a ^ b for a, b in zip(session.shares["owner"], session.shares["provider"], strict=True)
    )
    header, payload = modelfile.decrypt_model(session.file_bytes, model_key)
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
        raise
    session.sandbox = sandbox


def _budget_key(context: EnclaveContext) -> SealingKey:
    return SealingKey(
        state_dir=context.state_dir,
        platform_name=context.platform_name,
        measurement=context.measurement,
        purpose="query-budget",
    )


def _budget_path(context: EnclaveContext, model_id: str) -> Path:
    """Where a model's sealed budget lies; the name comes from a checked model id only."""
    return context.state_dir / BUDGET_DIRECTORY / f"{check_model_id(model_id)}.sealed"


# The ledger's plaintext: magic, units used, then the 16-byte request ids it answered,
# sorted. Its sealed size grows by 16 bytes per request, which tells the host only the
# number of requests (it relays every one of them anyway), never the units charged.
_LEDGER_MAGIC = b"CHIRON-QUERY-LEDGER-1\n"
_LEDGER_USED = struct.Struct(">Q")
_REQUEST_ID_BYTES = 16


@dataclass
class _Ledger:
    """A model's lifetime use: units charged and every request id it accepted."""

    used: int = 0
    requests: set[bytes] = field(default_factory=set)

    def to_bytes(self) -> bytes:
        return _LEDGER_MAGIC + _LEDGER_USED.pack(self.used) + b"".join(sorted(self.requests))

    @classmethod
    def from_bytes(cls, data: bytes) -> _Ledger:
        if data.startswith(b"{"):  # a counter sealed before request ids were recorded
            return cls(int(decode_json(data)["used"]))
        body = data[len(_LEDGER_MAGIC) + _LEDGER_USED.size :]
        if not data.startswith(_LEDGER_MAGIC) or len(body) % _REQUEST_ID_BYTES:
            raise IntegrityError("the model's sealed query ledger is malformed")
        (used,) = _LEDGER_USED.unpack_from(data, len(_LEDGER_MAGIC))
        ids = {body[i : i + _REQUEST_ID_BYTES] for i in range(0, len(body), _REQUEST_ID_BYTES)}
        return cls(used, ids)


def _read_ledger(context: EnclaveContext, model_id: str) -> _Ledger:
    """The model's ledger, from sealed state that survives enclave restarts.

    The host stores the sealed ledger and can roll it back to an older copy; on the sim
    platform nothing stops that (a TEE with monotonic counters would). See docs/query.md.
    """
    try:
        blob = _budget_path(context, model_id).read_bytes()
    except FileNotFoundError:
        return _Ledger()
    return _Ledger.from_bytes(_budget_key(context).unseal(blob, {"model_id": model_id}))


def _write_ledger(context: EnclaveContext, model_id: str, ledger: _Ledger) -> None:
    blob = _budget_key(context).seal(ledger.to_bytes(), {"model_id": model_id})
    atomic_write(_budget_path(context, model_id), blob, mode=0o600)


@contextmanager
def _ledger_locked(context: EnclaveContext, model_id: str) -> Iterator[None]:
    """Hold the model's ledger lock: one read-check-write at a time, across processes.

    Every query enclave of a model on this state directory takes the same exclusive
    `flock`, so two of them cannot both read "one unit left" and both spend it. (A host
    that gives enclaves different state directories, or copies the file back, is
    rolling the ledger back: see `_read_ledger`.)
    """
    path = _budget_path(context, model_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def _refuse_replay(context: EnclaveContext, model_id: str, request_id: str) -> None:
    """Refuse a request id any enclave of this model already accepted (before any work)."""
    if bytes.fromhex(request_id) in _read_ledger(context, model_id).requests:
        raise InputError("this request was already received (replayed request)")


def _reserve(
    context: EnclaveContext, model_id: str, request_id: str, units: int, budget: int | None
) -> int | None:
    """Record the request and charge `units` before the recipe runs; the budget left.

    One locked step: the replay check, the budget check and the write that spends it.
    Charging before answering means an answer is never given on budget that a
    concurrent request has already spent.
    """
    with _ledger_locked(context, model_id):
        ledger = _read_ledger(context, model_id)
        key = bytes.fromhex(request_id)
        if key in ledger.requests:
            raise InputError("this request was already received (replayed request)")
        if budget is not None and ledger.used + units > budget:
            raise InputError(
                f"query budget exhausted: {budget - ledger.used} of {budget} left, "
                f"this request needs {units}"
            )
        ledger.requests.add(key)
        ledger.used += units
        _write_ledger(context, model_id, ledger)
        return None if budget is None else budget - ledger.used


def _refund(context: EnclaveContext, model_id: str, units: int) -> None:
    """Give back the units of a request whose prediction failed; its id stays spent.

    The owner got no answer, only a one-line failure, and the recipe's sandbox is gone
    with it (this enclave answers nothing more), so a refund cannot buy answers. The
    request id stays recorded: a replay of it is still refused.
    """
    with _ledger_locked(context, model_id):
        ledger = _read_ledger(context, model_id)
        ledger.used = max(0, ledger.used - units)
        _write_ledger(context, model_id, ledger)


def parse_inputs(data: bytes, header: modelfile.ModelHeader) -> np.ndarray:
    """Decode a .npy batch and check it against the model's schema."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError("query inputs are not a valid .npy array") from None
    schema = header.schema
    array = as_batch(array, schema.input_shape)
    if len(array) == 0:
        raise InputError("the batch is empty")
    if len(array) > MAX_QUERY_BATCH:
        raise InputError(f"a batch holds at most {MAX_QUERY_BATCH} inputs, got {len(array)}")
    if array.dtype != np.dtype(schema.dtype):
        raise InputError(f"inputs are {array.dtype}; this model takes {schema.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("inputs contain NaN or infinite values")
    return array


def _accept_request(context: EnclaveContext, session: _Session, request_id: str) -> None:
    """Refuse a request id this model has seen; remember it in this process otherwise.

    Called once the owner's signature checked out and before any work, so a replayed
    request (a query or an evaluation, the same signed bytes sent again) gets nothing,
    even if its first run failed half-way. The sealed ledger holds the ids every enclave
    of this model accepted, so a replay to another enclave is refused here too; the
    locked `_reserve` checks again, for a replay racing its original.
    """
    if request_id in session.seen_requests:
        raise InputError("this request was already received (replayed request)")
    _refuse_replay(context, session.model_id, request_id)
    session.seen_requests.add(request_id)


def handle_query(context: EnclaveContext, request: QueryRequest, emit: Emit) -> QueryResult:
    session = _session(context)
    header, model_id, request_id = session.header, session.model_id, request.request_id
    reply_key = reply_public_key(request.reply_key)
    verify_signature(
        header.owner.signing_key,
        request.signature,
        query_request_message(model_id, request_id, request.sealed_inputs, request.reply_key),
        purpose=purposes.QUERY_REQUEST,
        what="the owner's signature on this query",
    )
    _accept_request(context, session, request_id)
    inputs = parse_inputs(
        open_sealed(
            context.identity.hpke_key,
            request.sealed_inputs,
            purpose=purposes.QUERY_INPUTS,
            context=query_context(model_id, request_id),
            what="query inputs",
        ),
        header,
    )
    policy = QueryPolicy.of(header.query_policy)
    budget_left = _reserve(context, model_id, request_id, len(inputs), policy.budget)
    logits = _predict(context, session, inputs, len(inputs))
    sealed = seal(
        reply_key,
        encode_answers(logits, header.query_policy),
        purpose=purposes.QUERY_ANSWERS,
        context=query_context(model_id, request_id),
    )
    # Sealing keeps the answers secret but anyone can seal to the reply key; the
    # signature says this enclave made them, for this request, with this budget left.
    signature = replies.sign_query_answers(
        context.identity, model_id, request_id, sealed, budget_left
    )
    return QueryResult(sealed, budget_left, signature)


def handle_evaluate(
    context: EnclaveContext, request: EvaluateRequest, emit: Emit
) -> EvaluateResult:
    session = _session(context)
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
    _accept_request(context, session, request_id)
    policy = QueryPolicy.of(header.query_policy)
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
    budget_left = _reserve(context, model_id, request_id, len(y), policy.budget)
    logits = _predict(context, session, x, len(y))
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


def _predict(context: EnclaveContext, session: _Session, x: np.ndarray, units: int) -> np.ndarray:
    """The recipe's logits for `x`, which `units` of budget were reserved for.

    If the recipe fails, the units are refunded (see `_refund`) and the failure raised.
    """
    assert session.sandbox is not None
    try:
        return predict_logits(
            session.sandbox, x, session.header.schema, session.header.schema.num_classes
        )
    except BaseException:
        _refund(context, session.model_id, units)
        raise
