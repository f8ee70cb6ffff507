"""What owner clients and the query enclave agree on: signed requests and sealed answers.

Shared by `client` (which builds requests and opens answers) and the query enclave
(which checks and answers), so both derive the exact same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError
from chiron.core.roles import Role
from chiron.core.schema import DatasetSchema

MAX_QUERY_BATCH = 1024
QUERY_OUTPUTS = ("label", "probabilities")
MAX_ROUNDING = 8
# The smallest labelled set an evaluation runs on unless the provider's policy says
# otherwise: below it, a confusion matrix is close to a per-record answer (with one
# record it *is* one: the model's label for it, next to the owner's).
DEFAULT_MIN_EVALUATION_RECORDS = 100
_POLICY_KEYS = frozenset({"output", "rounding", "budget", "min_evaluation_records"})
# "No budget", where a budget left is written as a signed 64-bit number.
_NO_BUDGET = -1


def normalize_query_policy(policy: Any) -> dict[str, Any]:
    """A recipe's QUERY_POLICY in its one normal form; ValueError if it is not one.

    The provider signs the digest of this form (core.recipe_statement) and the query
    enclave enforces it, so both sides must derive it the same way: here, once.
    """
    if not isinstance(policy, dict) or set(policy) - _POLICY_KEYS:
        raise ValueError("bad query policy")
    output = policy.get("output", "probabilities")
    rounding = policy.get("rounding")
    budget = policy.get("budget")
    min_records = policy.get("min_evaluation_records", DEFAULT_MIN_EVALUATION_RECORDS)
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
    if isinstance(min_records, bool) or not isinstance(min_records, int) or min_records < 1:
        raise ValueError("bad minimum evaluation size")
    return {
        "output": output,
        "rounding": rounding,
        "budget": budget,
        "min_evaluation_records": min_records,
    }


@dataclass(frozen=True)
class QueryPolicy:
    """The provider's normalised query policy, as the query enclave enforces it."""

    output: str
    rounding: int | None
    # Inputs (queries) plus records (evaluations) the model answers in its lifetime.
    budget: int | None
    min_evaluation_records: int

    @classmethod
    def of(cls, document: Any) -> QueryPolicy:
        """The policy of a model header (authenticated once the model is unlocked).

        A model file written before `min_evaluation_records` existed gets the default.
        """
        try:
            normal = normalize_query_policy(document)
        except ValueError:
            raise IntegrityError("the model's query policy is malformed") from None
        return cls(**normal)


def query_policy_sha256(policy: dict[str, Any]) -> str:
    """The digest a provider signs of its recipe's normalised query policy."""
    return hashlib.sha256(canonical_json(policy)).hexdigest()


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
    labels: np.ndarray = logits.argmax(1).astype("<i4")
    if policy.get("output") == "label":
        return labels.tobytes()
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    probabilities: np.ndarray = np.exp(shifted)
    probabilities /= probabilities.sum(1, keepdims=True)
    if policy.get("rounding") is not None:
        probabilities = np.round(probabilities, int(policy["rounding"]))
    return labels.tobytes() + probabilities.astype("<f4").tobytes()


def as_batch(array: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """`array` as a batch (N, *input_shape), or an InputError naming the shapes.

    Accepted: one input of exactly `input_shape`, a batch of them, and for a
    single-channel image model (1, H, W) bare grayscale images (N, H, W), the way the
    dataset importer reads them. Only an axis of length 1 is ever added; no data moves.
    """
    if array.shape == input_shape:
        return array[None]
    if (
        len(input_shape) == 3
        and input_shape[0] == 1
        and array.ndim == 3
        and array.shape[1:] == input_shape[1:]
    ):
        return array[:, None]
    if array.ndim == 0 or array.shape[1:] != input_shape:
        takes = ", ".join(map(str, input_shape))
        grayscale = (
            f" or (N, {', '.join(map(str, input_shape[1:]))})"
            if len(input_shape) == 3 and input_shape[0] == 1
            else ""
        )
        raise InputError(
            f"inputs have shape {tuple(array.shape)}; this model takes (N, {takes}){grayscale}"
        )
    return array


def encode_query_inputs(array: np.ndarray, schema: DatasetSchema) -> bytes:
    """The plaintext of a query: the batch's records, little-endian, back to back.

    The owner's client checks the batch here (shape, dtype, size, finite values), so a
    mistake is refused before anything is sealed; the enclave checks the plaintext again
    in `decode_query_inputs`, as it checks everything it is sent.
    """
    batch = as_batch(np.asarray(array), schema.input_shape)
    _check_batch(len(batch))
    if batch.dtype != np.dtype(schema.dtype):
        raise InputError(f"inputs are {batch.dtype}; this model takes {schema.dtype}")
    _check_finite(batch)
    return np.ascontiguousarray(batch, dtype=np.dtype(schema.dtype).newbyteorder("<")).tobytes()


def decode_query_inputs(data: bytes, schema: DatasetSchema) -> np.ndarray:
    """The batch a query's plaintext holds: a whole number of records, 1 to the maximum."""
    if len(data) % schema.record_bytes:
        raise InputError("query inputs are not a whole number of records of this model")
    _check_batch(len(data) // schema.record_bytes)
    dtype = np.dtype(schema.dtype).newbyteorder("<")
    batch = np.frombuffer(data, dtype=dtype).reshape(-1, *schema.input_shape)
    _check_finite(batch)
    return batch


def _check_batch(count: int) -> None:
    if count == 0:
        raise InputError("the batch is empty")
    if count > MAX_QUERY_BATCH:
        raise InputError(f"a batch holds at most {MAX_QUERY_BATCH} inputs, got {count}")


def _check_finite(batch: np.ndarray) -> None:
    if batch.dtype.kind == "f" and not np.isfinite(batch).all():
        raise InputError("inputs contain NaN or infinite values")


def answers_size(count: int, num_classes: int, policy: dict[str, Any]) -> int:
    """The plaintext size of the answers to `count` inputs: fixed by the policy."""
    return count * 4 * (1 + (num_classes if policy.get("output") != "label" else 0))


@dataclass(frozen=True, eq=False)
class Answers:
    """The opened answers to one query batch, as arrays.

    `labels` has one int32 per input; `probabilities` one float32 row per input, or None
    when the policy answers labels only. Each is the answers' own read-only copy, whatever
    it was made from: nobody can change an answer after it was checked, nor its hash. A
    batch's answers are not turned into a Python object per input unless a caller asks
    (`as_dicts`), so a stream of batches costs the client little more than their bytes.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels, "<i4"))
        if self.probabilities is not None:
            object.__setattr__(self, "probabilities", _frozen(self.probabilities, "<f4"))

    def __len__(self) -> int:
        return len(self.labels)

    # Compared and hashed by value, as the lists they replace were; the arrays never
    # change (`_frozen`), so neither does the hash.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answers):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[type[Answers], tuple[np.ndarray, np.ndarray | None]]:
        # Pickled and copied through the constructor, so a copy is frozen too.
        return Answers, (self.labels, self.probabilities)

    def _key(self) -> tuple[tuple[int, ...], bytes, tuple[int, ...] | None, bytes | None]:
        labels, rows = self.labels, self.probabilities
        if rows is None:
            return labels.shape, labels.tobytes(), None, None
        return labels.shape, labels.tobytes(), rows.shape, rows.tobytes()

    def as_dicts(self) -> list[dict[str, Any]]:
        """One `{"label": ..., "probabilities": [...]}` per input (the CLI's JSON form)."""
        labels = self.labels.tolist()
        if self.probabilities is None:
            return [{"label": label} for label in labels]
        return [
            {"label": label, "probabilities": row}
            for label, row in zip(labels, self.probabilities.tolist(), strict=True)
        ]


def _frozen(array: np.ndarray, dtype: str) -> np.ndarray:
    """A read-only copy of `array` as `dtype` that owns its memory."""
    copy = np.array(array, dtype=dtype, copy=True)
    copy.setflags(write=False)
    return copy


def decode_answers(data: bytes, count: int, num_classes: int, policy: dict[str, Any]) -> Answers:
    """The answers `encode_answers` wrote for `count` inputs; IntegrityError if mis-sized."""
    if len(data) != answers_size(count, num_classes, policy):
        raise IntegrityError("the enclave's answer has the wrong size")
    labels = np.frombuffer(data, dtype="<i4", count=count)
    if policy.get("output") == "label":
        return Answers(labels, None)
    rows = np.frombuffer(data, dtype="<f4", offset=count * 4).reshape(count, num_classes)
    return Answers(labels, rows)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


# -- the sealed evaluation report --------------------------------------------------------
#
# Its size depends only on the number of classes: a fixed header (both ids, the budget
# left) and the k x k confusion matrix as unsigned 64-bit counts. Accuracy, precision and
# recall are derived from the matrix by the client, so nothing of variable length (no
# float printed in as many digits as it happens to need) is ever sealed, and the host,
# which sees the ciphertext's length, learns nothing from it.

_EVALUATION_MAGIC = b"CHIRON-EVALUATION-1\n"
_EVALUATION_HEADER = struct.Struct(">16s16sq")  # model id, dataset id, budget left or -1


def evaluation_report_size(num_classes: int) -> int:
    """The plaintext size of every evaluation report of a model with `num_classes`."""
    return len(_EVALUATION_MAGIC) + _EVALUATION_HEADER.size + 8 * num_classes * num_classes


def encode_evaluation_report(
    model_id: str, dataset_id: str, matrix: np.ndarray, budget_left: int | None
) -> bytes:
    """The report the query enclave seals to the owner: ids, budget left, the matrix."""
    header = _EVALUATION_HEADER.pack(
        bytes.fromhex(model_id),
        bytes.fromhex(dataset_id),
        _NO_BUDGET if budget_left is None else budget_left,
    )
    counts = np.ascontiguousarray(matrix, dtype=">u8").tobytes()
    data = _EVALUATION_MAGIC + header + counts
    assert len(data) == evaluation_report_size(len(matrix))
    return data


def decode_evaluation_report(
    data: bytes, *, model_id: str, dataset_id: str, schema: DatasetSchema
) -> dict[str, Any]:
    """The owner's evaluation report from the opened plaintext, checked and derived.

    Accuracy and per-class precision and recall are computed here from the confusion
    matrix (rows are true classes, columns predicted ones); the class names come from
    the model's authenticated schema.
    """
    num_classes = schema.num_classes
    if len(data) != evaluation_report_size(num_classes) or not data.startswith(_EVALUATION_MAGIC):
        raise IntegrityError("the evaluation report is malformed")
    offset = len(_EVALUATION_MAGIC)
    model, dataset, budget_left = _EVALUATION_HEADER.unpack_from(data, offset)
    if (model.hex(), dataset.hex()) != (model_id, dataset_id):
        raise IntegrityError("the evaluation report is about another model or dataset")
    matrix = np.frombuffer(data, dtype=">u8", offset=offset + _EVALUATION_HEADER.size)
    matrix = matrix.reshape(num_classes, num_classes).astype(np.int64)
    support, predicted_totals, diagonal = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    records = int(matrix.sum())
    names = schema.class_names or tuple(str(i) for i in range(num_classes))
    return {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "records": records,
        "accuracy": float(diagonal.sum() / max(1, records)),
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
        "budget_left": None if budget_left == _NO_BUDGET else int(budget_left),
    }
