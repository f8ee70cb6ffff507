"""Typed fields of a policy file's TOML tables, each refused with a one-line reason."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chiron.core.errors import PolicyError


def string_list(
    document: dict[str, Any], key: str, source: str, default: Iterable[str]
) -> list[str]:
    if key not in document:
        return list(default)
    value = document[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{source}: {key} must be a list of strings")
    if not value:
        raise PolicyError(f"{source}: {key} must not be empty")
    return value


def integer(document: dict[str, Any], key: str, source: str, default: int) -> int:
    value = document.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PolicyError(f"{source}: {key} must be an integer")
    return value


def boolean(document: dict[str, Any], key: str, source: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{source}: {key} must be true or false")
    return value
