"""The envelope of every document a party signs: type, version, body, signature.

Job manifests (the owner's) and recipe statements (the provider's) travel and rest as
one JSON object `{"type", "version", <body field>: {...}, "signature": base64}`. The
signature is over the canonical JSON of the body alone; the type and version select how
the body is read, so a document of one kind never parses as another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chiron.core.encoding import b64decode, b64encode, canonical_json
from chiron.core.errors import InputError


@dataclass(frozen=True)
class DocumentKind:
    """One kind of signed document: its type tag, version, body field and size limit."""

    type: str
    version: int
    body_field: str
    max_bytes: int
    what: str  # for messages: "job manifest", "recipe statement"

    def encode(self, body: dict[str, Any], signature: bytes, *, pretty: bool = False) -> bytes:
        document = {
            "type": self.type,
            "version": self.version,
            self.body_field: body,
            "signature": b64encode(signature),
        }
        if pretty:  # for files a person may open
            return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
        return canonical_json(document)

    def decode(self, data: object) -> tuple[object, bytes]:
        """The (unchecked) body and the signature; the caller parses and verifies them."""
        if not isinstance(data, bytes) or len(data) > self.max_bytes:
            raise InputError(f"malformed {self.what}")
        try:
            document = json.loads(data.decode("utf-8"))
            if document.get("type") != self.type or document.get("version") != self.version:
                raise ValueError("type or version")
            signature = b64decode(document["signature"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"malformed {self.what}") from None
        return document.get(self.body_field), signature
