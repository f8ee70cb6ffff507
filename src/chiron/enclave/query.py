"""The query enclave: load an escrowed model once both parties released their shares, answer.

The owner gets answers, never weights or architecture; the provider's recipe decides
(in its authenticated QUERY_POLICY) whether answers are labels or rounded
probabilities and how many queries the model may answer in its lifetime. Every query is
signed by the owner named in the model file, so the host that relays traffic cannot
use a model the owner has unlocked; inputs arrive sealed to this enclave and answers
leave sealed to a reply key the owner chose, so the host relays only ciphertext.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from chiron.core import container, modelfile, purposes
from chiron.core.crypto import open_sealed, seal, verify_signature
from chiron.core.errors import InputError, IntegrityError
from chiron.core.fileio import atomic_write
from chiron.core.query_protocol import (
    MAX_QUERY_BATCH,
    confusion_matrix,
    encode_answers,
    evaluation_job_id,
    evaluation_request_message,
    query_request_message,
)
from chiron.core.recipe_protocol import FromChild, ToChild, decode_json, encode_json
from chiron.enclave.context import EnclaveContext
from chiron.enclave.recipe_session import predict_logits, receive_declaration, spawn_recipe
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.sealing import SealingKey

_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class _Session:
    """One loaded model in this enclave process."""

    file_bytes: bytes
    header: modelfile.ModelHeader
    shares: dict[str, bytes] = field(default_factory=dict)
    sandbox: Sandbox | None = None
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
    context: EnclaveContext, args: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    data = args.get("model")
    if not isinstance(data, bytes):
        raise InputError("malformed load_model request")
    if "query" in context.session:
        raise InputError("this query enclave already holds a model")
    header = modelfile.read_model_header(data)
    context.session["query"] = _Session(data, header)
    return {
        "model_id": header.model_id,
        "query_policy": header.query_policy,
        "schema": header.schema.to_dict(),
    }


def handle_provision_share(
    context: EnclaveContext, args: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    session = _session(context, ready=False)
    party, sealed_share = args.get("party"), args.get("sealed_share")
    if party not in modelfile.PARTIES or not isinstance(sealed_share, bytes):
        raise InputError("malformed provision_share request")
    share = open_sealed(
        context.identity.hpke_key,
        sealed_share,
        purpose=purposes.MODEL_SHARE_PROVISION,
        context={"model_id": session.header.model_id, "party": party},
        what=f"the {party}'s key share",
    )
    if modelfile.share_digest(share) != session.header.share_sha256(party):
        raise IntegrityError(f"the {party}'s key share does not belong to this model")
    session.shares[party] = share
    if len(session.shares) == len(modelfile.PARTIES) and session.sandbox is None:
        _unlock(session)
    return {"unlocked": session.sandbox is not None}


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


def _used_budget(context: EnclaveContext, model_id: str) -> int:
    """Queries answered so far, from sealed state that survives enclave restarts.

    The host stores the sealed counter and can roll it back to an older copy; on the
    sim platform nothing stops that (a TEE with monotonic counters would). See
    docs/query.md.
    """
    path = context.state_dir / "query-budget" / f"{model_id}.sealed"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return 0
    return int(decode_json(_budget_key(context).unseal(blob, {"model_id": model_id}))["used"])


def _record_budget(context: EnclaveContext, model_id: str, used: int) -> None:
    directory = context.state_dir / "query-budget"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    blob = _budget_key(context).seal(encode_json({"used": used}), {"model_id": model_id})
    atomic_write(directory / f"{model_id}.sealed", blob, mode=0o600)


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


def _reply_key(args: dict[str, Any]) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(args["reply_key"])
    except (KeyError, TypeError, ValueError):
        raise InputError("malformed reply key") from None


def handle_query(
    context: EnclaveContext, args: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    session = _session(context)
    header = session.header
    request_id = args.get("request_id")
    sealed_inputs, signature = args.get("sealed_inputs"), args.get("signature")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise InputError("malformed query request id")
    if not isinstance(sealed_inputs, bytes) or not isinstance(signature, bytes):
        raise InputError("malformed query request")
    reply_key = _reply_key(args)
    verify_signature(
        header.owner.signing_key,
        signature,
        query_request_message(header.model_id, request_id, sealed_inputs, args["reply_key"]),
        purpose=purposes.QUERY_REQUEST,
        what="the owner's signature on this query",
    )
    if request_id in session.seen_requests:
        raise InputError("this query was already answered (replayed request)")
    inputs = parse_inputs(
        open_sealed(
            context.identity.hpke_key,
            sealed_inputs,
            purpose=purposes.QUERY_INPUTS,
            context={"model_id": header.model_id, "request_id": request_id},
            what="query inputs",
        ),
        header,
    )
    budget = header.query_policy.get("budget")
    used = _used_budget(context, header.model_id)
    if budget is not None and used + len(inputs) > budget:
        raise InputError(
            f"query budget exhausted: {budget - used} of {budget} queries left, "
            f"asked for {len(inputs)}"
        )
    assert session.sandbox is not None
    logits = predict_logits(session.sandbox, inputs, header.schema, header.schema.num_classes)
    if budget is not None:
        _record_budget(context, header.model_id, used + len(inputs))
    session.seen_requests.add(request_id)
    answers = encode_answers(logits, header.query_policy)
    return {
        "sealed_answers": seal(
            reply_key,
            answers,
            purpose=purposes.QUERY_ANSWERS,
            context={"model_id": header.model_id, "request_id": request_id},
        ),
        "budget_left": None if budget is None else budget - used - len(inputs),
    }


def handle_evaluate(
    context: EnclaveContext, args: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    session = _session(context)
    header = session.header
    dataset_path, sealed_data_key = args.get("dataset_path"), args.get("sealed_data_key")
    signature = args.get("signature")
    if not isinstance(dataset_path, str) or not isinstance(sealed_data_key, bytes):
        raise InputError("malformed evaluate request")
    if not isinstance(signature, bytes):
        raise InputError("malformed evaluate request")
    reply_key = _reply_key(args)
    verify_signature(
        header.owner.signing_key,
        signature,
        evaluation_request_message(header.model_id, sealed_data_key, args["reply_key"]),
        purpose=purposes.EVALUATION_REQUEST,
        what="the owner's signature on this evaluation",
    )
    dataset_header = container.read_dataset_header(dataset_path)
    if dataset_header.schema.input_shape != header.schema.input_shape or (
        dataset_header.schema.num_classes != header.schema.num_classes
    ):
        raise InputError("the dataset's schema does not match the model's")
    key = open_sealed(
        context.identity.hpke_key,
        sealed_data_key,
        purpose=purposes.DATASET_KEY,
        context={
            "job_id": evaluation_job_id(header.model_id),
            "dataset_id": dataset_header.dataset_id,
        },
        what="data key",
    )
    _, x, y = container.load_dataset(dataset_path, key)
    assert session.sandbox is not None
    predicted = predict_logits(session.sandbox, x, header.schema, header.schema.num_classes).argmax(
        1
    )
    matrix = confusion_matrix(y, predicted, header.schema.num_classes)
    support = matrix.sum(1)
    predicted_totals = matrix.sum(0)
    diagonal = np.diag(matrix)
    report = {
        "model_id": header.model_id,
        "dataset_id": dataset_header.dataset_id,
        "records": len(y),
        "accuracy": float(diagonal.sum() / max(1, len(y))),
        "per_class": [
            {
                "class": name,
                "support": int(support[i]),
                "recall": float(diagonal[i] / support[i]) if support[i] else None,
                "precision": float(diagonal[i] / predicted_totals[i])
                if predicted_totals[i]
                else None,
            }
            for i, name in enumerate(
                header.schema.class_names or [str(i) for i in range(header.schema.num_classes)]
            )
        ],
        "confusion_matrix": matrix.tolist(),
    }
    return {
        "sealed_report": seal(
            reply_key,
            encode_json(report),
            purpose=purposes.EVALUATION_REPORT,
            context={"model_id": header.model_id},
        )
    }
