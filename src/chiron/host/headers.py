"""The public headers the service reads from ciphertext it is given, and nothing more.

The host learns what the owner's client published in the clear (dataset id, schema,
record count; a model's id, schema and query policy) and uses it only to describe and
match artifacts; enclaves authenticate these same headers before trusting them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.core import modelfile
from chiron.core.contract import MAX_MODEL_FILE_BYTES
from chiron.core.dataset import read_dataset_header_and_digest
from chiron.core.errors import InputError
from chiron.core.fileio import read_input_file


@dataclass(frozen=True)
class DatasetInfo:
    dataset_id: str
    schema: dict[str, Any]
    record_count: int
    # SHA-256 of the header's exact bytes: what a job manifest names.
    header_sha256: str


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    schema: dict[str, Any]
    query_policy: dict[str, Any]


def dataset_info(path: Path) -> DatasetInfo:
    """The public header of an encrypted dataset file (InputError if it is not one)."""
    header, header_sha256 = read_dataset_header_and_digest(path)
    return DatasetInfo(
        header.dataset_id, header.schema.to_dict(), int(header.record_count), header_sha256
    )


def model_info(path: Path) -> ModelInfo:
    """The public header of an escrowed model file (InputError if it is not one)."""
    return model_info_from_bytes(read_input_file(path, what="model", limit=MAX_MODEL_FILE_BYTES))


def model_info_from_bytes(data: bytes) -> ModelInfo:
    try:
        header = modelfile.read_model_header(data)
    except (ValueError, KeyError, TypeError):
        raise InputError("not a Chiron model file") from None
    return ModelInfo(header.model_id, header.schema.to_dict(), dict(header.query_policy))
