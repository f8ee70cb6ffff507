"""The escrowed model file (`.chm`): a public header and an encrypted payload.

The public header names the two parties, carries each party's key share sealed to
that party, the recipe's query policy and the input schema; every byte of it is
authenticated by the payload encryption, so a host that edits the header (to swap a
share, loosen the policy, or change the schema) makes the file unreadable. The payload
(recipe source and safetensors weights) is readable only with the model key, which
exists only inside an enclave holding both shares.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from typing import Any

from chiron.core import container
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import InputError
from chiron.core.keys import PublicIdentity
from chiron.core.schema import DatasetSchema

MODEL_KIND = "model"
MODEL_FORMAT_VERSION = 1
PARTIES = ("owner", "provider")
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class ModelHeader:
    """Public facts about an escrowed model; authenticated, not secret."""

    model_id: str
    schema: DatasetSchema
    query_policy: dict[str, Any]
    owner: PublicIdentity
    provider: PublicIdentity
    owner_share: bytes
    provider_share: bytes
    # SHA-256 of each plaintext share: lets a query enclave refuse a wrong share at
    # once, before any decryption; a hash of a uniformly random 256-bit share reveals
    # nothing about it.
    owner_share_sha256: str
    provider_share_sha256: str
    measurement: str
    created: int

    def to_metadata(self) -> dict[str, Any]:
        return {
            "model_format_version": MODEL_FORMAT_VERSION,
            "schema": self.schema.to_dict(),
            "query_policy": self.query_policy,
            "owner": b64encode(self.owner.to_bytes()),
            "provider": b64encode(self.provider.to_bytes()),
            "owner_share": b64encode(self.owner_share),
            "provider_share": b64encode(self.provider_share),
            "owner_share_sha256": self.owner_share_sha256,
            "provider_share_sha256": self.provider_share_sha256,
            "measurement": self.measurement,
            "created": self.created,
        }

    @classmethod
    def from_metadata(cls, model_id: str, meta: dict[str, Any]) -> ModelHeader:
        try:
            if meta["model_format_version"] != MODEL_FORMAT_VERSION:
                raise InputError("unsupported model file version")
            return cls(
                model_id=model_id,
                schema=DatasetSchema.from_dict(meta["schema"]),
                query_policy=dict(meta["query_policy"]),
                owner=PublicIdentity.from_bytes(b64decode(meta["owner"])),
                provider=PublicIdentity.from_bytes(b64decode(meta["provider"])),
                owner_share=b64decode(meta["owner_share"]),
                provider_share=b64decode(meta["provider_share"]),
                owner_share_sha256=str(meta["owner_share_sha256"]),
                provider_share_sha256=str(meta["provider_share_sha256"]),
                measurement=str(meta["measurement"]),
                created=int(meta["created"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError("not a Chiron model file (malformed header)") from None

    def share_for(self, party: str) -> bytes:
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}")
        return self.owner_share if party == "owner" else self.provider_share

    def share_sha256(self, party: str) -> str:
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}")
        return self.owner_share_sha256 if party == "owner" else self.provider_share_sha256

    def identity_of(self, party: str) -> PublicIdentity:
        if party not in PARTIES:
            raise ValueError(f"unknown party {party!r}")
        return self.owner if party == "owner" else self.provider


@dataclass(frozen=True)
class ModelPayload:
    """The secret part: what a query enclave needs to rebuild and run the model."""

    recipe_name: str
    recipe_source: bytes
    weights: bytes

    def to_bytes(self) -> bytes:
        name = self.recipe_name.encode("utf-8")
        return (
            _LENGTH.pack(len(name))
            + name
            + _LENGTH.pack(len(self.recipe_source))
            + self.recipe_source
            + self.weights
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelPayload:
        try:
            (name_len,) = _LENGTH.unpack_from(data, 0)
            name = data[4 : 4 + name_len].decode("utf-8")
            offset = 4 + name_len
            (source_len,) = _LENGTH.unpack_from(data, offset)
            offset += 4
            source = data[offset : offset + source_len]
            if len(source) != source_len:
                raise ValueError("short payload")
            return cls(name, source, data[offset + source_len :])
        except (struct.error, UnicodeDecodeError, ValueError):
            raise InputError("model payload is malformed") from None


def encrypt_model(header: ModelHeader, payload: ModelPayload, model_key: bytes) -> bytes:
    out = io.BytesIO()
    container.write_encrypted(
        out,
        model_key,
        kind=MODEL_KIND,
        file_id=header.model_id,
        metadata=header.to_metadata(),
        chunks=[payload.to_bytes()],
    )
    return out.getvalue()


def read_model_header(data: bytes) -> ModelHeader:
    """Parse the public header (no key needed, nothing authenticated yet)."""
    public = container.read_header(io.BytesIO(data), expected_kind=MODEL_KIND)
    return ModelHeader.from_metadata(public.file_id, public.metadata)


def decrypt_model(data: bytes, model_key: bytes) -> tuple[ModelHeader, ModelPayload]:
    """Authenticate the whole file (header included) and return its contents."""
    public, chunks = container.read_encrypted(io.BytesIO(data), model_key, expected_kind=MODEL_KIND)
    payload = b"".join(chunks)
    return ModelHeader.from_metadata(public.file_id, public.metadata), ModelPayload.from_bytes(
        payload
    )


def share_digest(share: bytes) -> str:
    return hashlib.sha256(b"chiron/model-share/v1\x00" + share).hexdigest()


def receipt_nonce(statement: bytes) -> bytes:
    """The attestation nonce that ties evidence to one receipt statement."""
    return hashlib.sha256(b"chiron/receipt/v1\x00" + statement).digest()


def model_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
