"""What owner clients and the query enclave agree on: signed requests and sealed answers.

Shared by `client` (which builds requests and opens answers) and the query enclave
(which checks and answers), so both derive the exact same bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from chiron.core.encoding import canonical_json
from chiron.core.errors import IntegrityError
from chiron.core.roles import Role

MAX_QUERY_BATCH = 1024
QUERY_OUTPUTS = ("label", "probabilities")
MAX_ROUNDING = 8


def normalize_query_policy(policy: Any) -> dict[str, Any]:
    """A recipe's QUERY_POLICY in its one normal form; ValueError if it is not one.

    The provider signs the digest of this form (core.recipe_statement) and the query
    enclave enforces it, so both sides must derive it the same way: here, once.
    """
    if not isinstance(policy, dict) or set(policy) - {"output", "rounding", "budget"}:
        raise ValueError("bad query policy")
    output = policy.get("output", "probabilities")
    rounding = policy.get("rounding")
    budget = policy.get("budget")
    if output not in QUERY_OUTPUTS:
        raise ValueError("bad query output")
    if rounding is not None and (
        isinstance(rounding, bool)
        or not isinstance(rounding, int)
        or not 0 <= rounding <= MAX_ROUNDING
    ):
        raise ValueError("bad rounding")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
        raise ValueError("bad budget")
    if budget is not None and budget <= 0:
        raise ValueError("bad budget")
    return {"output": output, "rounding": rounding, "budget": budget}


def query_policy_sha256(policy: dict[str, Any]) -> str:
    """The digest a provider signs of its recipe's normalised query policy."""
    return hashlib.sha256(canonical_json(policy)).hexdigest()


def query_context(model_id: str, request_id: str) -> dict[str, str]:
    """The sealing context of one query's inputs (to the enclave) and answers (back)."""
    return {"model_id": model_id, "request_id": request_id}


def evaluation_report_context(model_id: str, request_id: str) -> dict[str, str]:
    """The sealing context of one evaluation's report, sealed to the owner's reply key."""
    return {"model_id": model_id, "request_id": request_id}


def evaluation_data_key_context(model_id: str, request_id: str, dataset_id: str) -> dict[str, str]:
    """The sealing context of a data key the owner releases for exactly one evaluation.

    With the purpose `purposes.EVALUATION_DATA_KEY` (not the training one) and the role,
    such a key opens only in a query enclave, for this model, this request and this
    dataset: never in a training enclave, and never for a second evaluation.
    """
    return {
        "model_id": model_id,
        "request_id": request_id,
        "dataset_id": dataset_id,
        "role": Role.QUERY.value,
    }


def query_request_message(
    model_id: str, request_id: str, sealed_inputs: bytes, reply_key: bytes
) -> bytes:
    """What the owner signs to authorise exactly one query."""
    return canonical_json(
        {
            "model_id": model_id,
            "request_id": request_id,
            "inputs_sha256": hashlib.sha256(sealed_inputs).hexdigest(),
            "reply_key": reply_key.hex(),
        }
    )


def evaluation_request_message(
    model_id: str, request_id: str, sealed_data_key: bytes, reply_key: bytes
) -> bytes:
    """What the owner signs to authorise exactly one evaluation.

    The dataset's location is not signed: the host supplies it (it stores the file).
    Which dataset is bound all the same: the sealed data key (signed here by digest)
    opens only under that dataset's id, and only that dataset decrypts under it.
    """
    return canonical_json(
        {
            "model_id": model_id,
            "request_id": request_id,
            "data_key_sha256": hashlib.sha256(sealed_data_key).hexdigest(),
            "reply_key": reply_key.hex(),
        }
    )


def encode_answers(logits: np.ndarray, policy: dict[str, Any]) -> bytes:
    """Fixed size per input: int32 labels, then (if the policy allows) float32 probabilities."""
    labels = logits.argmax(1).astype("<i4")
    if policy.get("output") == "label":
        return labels.tobytes()
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(1, keepdims=True)
    if policy.get("rounding") is not None:
        probabilities = np.round(probabilities, int(policy["rounding"]))
    return labels.tobytes() + probabilities.astype("<f4").tobytes()


def decode_answers(
    data: bytes, count: int, num_classes: int, policy: dict[str, Any]
) -> list[dict[str, Any]]:
    with_probabilities = policy.get("output") != "label"
    expected = count * 4 * (1 + (num_classes if with_probabilities else 0))
    if len(data) != expected:
        raise IntegrityError("the enclave's answer has the wrong size")
    labels = np.frombuffer(data[: count * 4], dtype="<i4")
    answers: list[dict[str, Any]] = [{"label": int(label)} for label in labels]
    if with_probabilities:
        probabilities = np.frombuffer(data[count * 4 :], dtype="<f4").reshape(count, num_classes)
        for answer, row in zip(answers, probabilities, strict=True):
            answer["probabilities"] = [float(p) for p in row]
    return answers


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix
