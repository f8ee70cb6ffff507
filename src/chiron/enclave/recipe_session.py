"""Enclave-side helpers shared by every conversation with a sandboxed recipe.

The training and query enclaves both start a confined child, hand it the recipe,
check its declaration, and ask it for predictions; the checks live here once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from chiron.core.limits import MAX_BATCH_SIZE, MAX_EPOCHS
from chiron.core.query_protocol import normalize_query_policy
from chiron.core.recipe_protocol import (
    LABEL_DTYPE,
    MAX_DECLARE_BYTES,
    PREDICTION_DTYPE,
    FromChild,
    ReasonClass,
    ToChild,
    decode_json,
    encode_json,
)
from chiron.core.schema import DatasetSchema
from chiron.enclave.sandbox import Sandbox, SandboxFailure, SandboxLimits

MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 4 * MAX_MODEL_BYTES
PREDICT_BATCH_RECORDS = 1024
# Records go into the shared data file this many bytes at a time (bounds the enclave's
# transient copy while it writes the training set).
SHARE_CHUNK_BYTES = 16 * 1024 * 1024


class Declaration:
    """What the recipe declared about itself before it saw any data, validated."""

    def __init__(self, doc: Any, schema: DatasetSchema) -> None:
        try:
            hyperparameters = doc["hyperparameters"]
            self.model_nbytes = _positive_int(doc["model_nbytes"])
            self.checkpoint_nbytes = _positive_int(doc["checkpoint_nbytes"])
            self.num_outputs = _positive_int(doc["num_outputs"])
            self.epochs = _positive_int(hyperparameters["epochs"])
            self.batch_size = _positive_int(hyperparameters["batch_size"])
            self.query_policy = normalize_query_policy(doc.get("query_policy") or {})
        except (KeyError, TypeError, ValueError):
            raise SandboxFailure(ReasonClass.BAD_OUTPUT) from None
        if not isinstance(hyperparameters, dict):
            raise SandboxFailure(ReasonClass.BAD_OUTPUT)
        self.hyperparameters: dict[str, Any] = hyperparameters
        if self.num_outputs != schema.num_classes:
            raise SandboxFailure(ReasonClass.BAD_OUTPUT)
        if self.model_nbytes > MAX_MODEL_BYTES or self.checkpoint_nbytes > MAX_CHECKPOINT_BYTES:
            raise SandboxFailure(ReasonClass.RESOURCE_LIMIT)
        if self.epochs > MAX_EPOCHS or self.batch_size > MAX_BATCH_SIZE:
            raise SandboxFailure(ReasonClass.BAD_OUTPUT)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("not a positive integer")
    return value


def spawn_recipe() -> Sandbox:
    """Start a confined child; it is ready for SETUP when this returns."""
    return Sandbox.spawn(limits=SandboxLimits())


def receive_declaration(
    sandbox: Sandbox,
    *,
    mode: str,
    schema: DatasetSchema,
    recipe_name: str,
    recipe_source: bytes,
    overrides: dict[str, Any],
) -> Declaration:
    sandbox.send(
        ToChild.SETUP,
        encode_json(
            {
                "mode": mode,
                "schema": schema.to_dict(),
                "recipe_filename": recipe_name,
                "overrides": overrides,
            }
        ),
    )
    sandbox.send(ToChild.SOURCE, recipe_source)
    payload = sandbox.expect(FromChild.DECLARE, max_size=MAX_DECLARE_BYTES)
    try:
        doc = decode_json(payload)
    except ValueError:
        raise SandboxFailure(ReasonClass.BAD_OUTPUT) from None
    return Declaration(doc, schema)


def share_training_data(
    sandbox: Sandbox,
    x: np.ndarray,
    y: np.ndarray,
    schema: DatasetSchema,
    index: np.ndarray | None = None,
) -> None:
    """Give the child the records `x[index]` and labels `y[index]` (all, without `index`).

    They go into the child's shared data file (layout: `core.recipe_protocol`), a slice
    at a time, so the enclave never holds a second copy of the training set.
    """
    if index is None:
        index = np.arange(len(y))
    dtype = np.dtype(schema.dtype).newbyteorder("<")
    step = max(1, SHARE_CHUNK_BYTES // schema.record_bytes)

    def parts() -> Iterator[memoryview]:
        yield np.ascontiguousarray(y[index], dtype=LABEL_DTYPE).data
        for start in range(0, len(index), step):
            yield np.ascontiguousarray(x[index[start : start + step]], dtype=dtype).data

    sandbox.share(parts())
    sandbox.send(ToChild.DATA)


def send_records(sandbox: Sandbox, kind: ToChild, x: np.ndarray, schema: DatasetSchema) -> None:
    dtype = np.dtype(schema.dtype).newbyteorder("<")
    # Sent from the array's own memory (no copy when it already holds contiguous records
    # in this byte order), as flat bytes, so an empty batch is an empty payload.
    sandbox.send(kind, np.ascontiguousarray(x, dtype=dtype).reshape(-1).view(np.uint8).data)


def predict_logits(
    sandbox: Sandbox, x: np.ndarray, schema: DatasetSchema, num_outputs: int
) -> np.ndarray:
    """Ask the child for logits of `x`, batch by batch, each answer of exact size."""
    parts = []
    for start in range(0, len(x), PREDICT_BATCH_RECORDS):
        batch = x[start : start + PREDICT_BATCH_RECORDS]
        send_records(sandbox, ToChild.PREDICT, batch, schema)
        payload = sandbox.expect(
            FromChild.PREDICTIONS,
            size=len(batch) * num_outputs * np.dtype(PREDICTION_DTYPE).itemsize,
        )
        logits = np.frombuffer(payload, dtype=PREDICTION_DTYPE).reshape(len(batch), num_outputs)
        parts.append(logits.astype(np.float32))
    if not parts:
        return np.zeros((0, num_outputs), dtype=np.float32)
    return np.concatenate(parts)
