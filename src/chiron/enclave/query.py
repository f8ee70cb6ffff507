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
- each signed request id is answered at most once by this process; a request cannot be
  replayed to another process either, since its inputs or data key are sealed to this
  process's ephemeral key;
- every reply is signed by this enclave's attested key over the request it answers
  (`core.replies`), so the client rejects a forged or swapped reply before opening it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
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
    confusion_matrix,
    encode_answers,
    evaluation_data_key_context,
    evaluation_report_context,
    evaluation_request_message,
    query_context,
    query_request_message,
)
from chiron.core.recipe_protocol import FromChild, ToChild, decode_json, encode_json
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
    session = context.session.get("query")
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


def _used_budget(context: EnclaveContext, model_id: str) -> int:
    """Queries answered so far, from sealed state that survives enclave restarts.

    The host stores the sealed counter and can roll it back to an older copy; on the
    sim platform nothing stops that (a TEE with monotonic counters would). See
    docs/query.md.
    """
    try:
        blob = _budget_path(context, model_id).read_bytes()
    except FileNotFoundError:
        return 0
    return int(decode_json(_budget_key(context).unseal(blob, {"model_id": model_id}))["used"])


def _record_budget(context: EnclaveContext, model_id: str, used: int) -> None:
    path = _budget_path(context, model_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    blob = _budget_key(context).seal(encode_json({"used": used}), {"model_id": model_id})
    atomic_write(path, blob, mode=0o600)


def parse_inputs(data: bytes, header: modelfile.ModelHeader) -> np.ndarray:
    """Decode a .npy batch and check it against the model's schema."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError("query inputs are not a valid .npy array") from None
    schema = header.schema
    if array.shape == schema.input_shape:
        array = array[None]
    if array.shape[1:] != schema.input_shape:
        raise InputError(
            f"inputs have shape {tuple(array.shape)}; this model takes "
            f"(N, {', '.join(map(str, schema.input_shape))})"
        )
    if len(array) == 0:
        raise InputError("the batch is empty")
    if len(array) > MAX_QUERY_BATCH:
        raise InputError(f"a batch holds at most {MAX_QUERY_BATCH} inputs, got {len(array)}")
    if array.dtype != np.dtype(schema.dtype):
        raise InputError(f"inputs are {array.dtype}; this model takes {schema.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("inputs contain NaN or infinite values")
    return array


def _accept_request(session: _Session, request_id: str) -> None:
    """Refuse a request id this process has seen; remember it otherwise.

    Called once the owner's signature checked out and before any work, so a replayed
    request (a query or an evaluation, the same signed bytes sent again) gets nothing,
    even if its first run failed half-way.
    """
    if request_id in session.seen_requests:
        raise InputError("this request was already received (replayed request)")
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
    _accept_request(session, request_id)
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
    budget = header.query_policy.get("budget")
    used = _used_budget(context, model_id)
    if budget is not None and used + len(inputs) > budget:
        raise InputError(
            f"query budget exhausted: {budget - used} of {budget} queries left, "
            f"asked for {len(inputs)}"
        )
    assert session.sandbox is not None
    logits = predict_logits(session.sandbox, inputs, header.schema, header.schema.num_classes)
    if budget is not None:
        _record_budget(context, model_id, used + len(inputs))
    budget_left = None if budget is None else budget - used - len(inputs)
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
    _accept_request(session, request_id)
    # The path is the host's; the file it names is believed only once the owner's data
    # key, sealed under the dataset id its header states, opens and authenticates it.
    dataset_header = container.read_dataset_header(request.dataset_path)
    dataset_id = check_dataset_id(dataset_header.dataset_id)
    if dataset_header.schema.input_shape != header.schema.input_shape or (
        dataset_header.schema.num_classes != header.schema.num_classes
    ):
        raise InputError("the dataset's schema does not match the model's")
    key = open_sealed(
        context.identity.hpke_key,
        request.sealed_data_key,
        purpose=purposes.EVALUATION_DATA_KEY,
        context=evaluation_data_key_context(model_id, request_id, dataset_id),
        what="the evaluation data key",
    )
    _, x, y = container.load_dataset(request.dataset_path, key)
    assert session.sandbox is not None
    logits = predict_logits(session.sandbox, x, header.schema, header.schema.num_classes)
    report = _evaluation_report(header, model_id, dataset_id, y, logits.argmax(1))
    sealed = seal(
        reply_key,
        encode_json(report),
        purpose=purposes.EVALUATION_REPORT,
        context=evaluation_report_context(model_id, request_id),
    )
    signature = replies.sign_evaluation_report(context.identity, model_id, request_id, sealed)
    return EvaluateResult(sealed, signature)


def _evaluation_report(
    header: modelfile.ModelHeader,
    model_id: str,
    dataset_id: str,
    truth: np.ndarray,
    predicted: np.ndarray,
) -> dict[str, Any]:
    """Aggregate figures only: accuracy, per-class precision and recall, confusion matrix."""
    num_classes = header.schema.num_classes
    matrix = confusion_matrix(truth, predicted, num_classes)
    support = matrix.sum(1)
    predicted_totals = matrix.sum(0)
    diagonal = np.diag(matrix)
    names = header.schema.class_names or tuple(str(i) for i in range(num_classes))
    return {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "records": len(truth),
        "accuracy": float(diagonal.sum() / max(1, len(truth))),
        "per_class": [
            {
                "class": name,
                "support": int(support[i]),
                "recall": float(diagonal[i] / support[i]) if support[i] else None,
                "precision": (
                    float(diagonal[i] / predicted_totals[i]) if predicted_totals[i] else None
                ),
            }
            for i, name in enumerate(names)
        ],
        "confusion_matrix": matrix.tolist(),
    }
