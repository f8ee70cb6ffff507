"""Readers for the fields of a wire document, shared by every call's documents.

Each reader refuses a missing or malformed field with an InputError naming the request,
so a document type's `from_wire` is a list of reads and an enclave never looks at a raw
argument. The limits here bound fields that several call families carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chiron.core.errors import InputError, KeyFileError
from chiron.core.keys import PublicIdentity

MAX_PATH_CHARS = 4096
MAX_MODEL_FILE_BYTES = 512 * 1024 * 1024
MAX_TIMEOUT_SECONDS = 24 * 3600.0


def read_document(args: object, what: str) -> Mapping[str, Any]:
    """A wire document's fields, or a refusal: it may not even be a mapping."""
    if not isinstance(args, Mapping):
        raise InputError(f"malformed {what}: not a document")
    return args


def read_field(args: Mapping[str, Any], name: str, what: str) -> Any:
    # `args` comes off the wire: it may not even be a mapping.
    if not isinstance(args, Mapping) or name not in args:
        raise InputError(f"malformed {what} request: missing {name}")
    return args[name]


def read_bytes(args: Mapping[str, Any], name: str, what: str, limit: int) -> bytes:
    value = read_field(args, name, what)
    if not isinstance(value, bytes) or not 0 < len(value) <= limit:
        raise InputError(f"malformed {what} request: {name} must be 1 to {limit} bytes")
    return value


def read_text(args: Mapping[str, Any], name: str, what: str, limit: int = MAX_PATH_CHARS) -> str:
    value = read_field(args, name, what)
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        raise InputError(f"malformed {what} request: {name} must be text")
    return value


def read_optional_text(args: Mapping[str, Any], name: str, what: str) -> str | None:
    return None if args.get(name) is None else read_text(args, name, what)


def read_int(args: Mapping[str, Any], name: str, what: str, low: int, high: int) -> int:
    value = read_field(args, name, what)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"malformed {what} request: {name} must be {low} to {high}")
    return value


def read_seconds(args: Mapping[str, Any], name: str, what: str, default: float) -> float:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"malformed {what} request: {name} must be a number")
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise InputError(f"malformed {what} request: {name} must be positive and at most a day")
    return float(value)


def read_identity(value: Any, what: str) -> PublicIdentity:
    try:
        return PublicIdentity.from_bytes(value)
    except (KeyFileError, ValueError, TypeError):
        raise InputError(f"malformed {what} request: not a 64-byte public identity") from None
