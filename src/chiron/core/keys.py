"""Party identities and secret key files.

An identity is an Ed25519 signing key plus an X25519 key for receiving HPKE-sealed
secrets. Key files are small versioned JSON documents with a type tag, so a data key
can never be mistaken for an identity or a public key for a private one. Private files
are created 0600 and never overwritten silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from chiron.core.crypto import KEY_BYTES, derive_key
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import KeyFileError
from chiron.core.fileio import atomic_write, read_input_file

KEY_FILE_VERSION = 1
PRIVATE_IDENTITY_TYPE = "chiron.identity.private"
PUBLIC_IDENTITY_TYPE = "chiron.identity.public"
DATA_KEY_TYPE = "chiron.dataset.key"
_MAX_KEY_FILE = 64 * 1024

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw
_NO_ENCRYPTION = serialization.NoEncryption()


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, _RAW_PUBLIC)


@dataclass(frozen=True)
class PublicIdentity:
    """The public half of an identity: what others seal secrets to and verify against."""

    signing_key: Ed25519PublicKey
    hpke_key: X25519PublicKey

    def to_bytes(self) -> bytes:
        """Fixed 64-byte encoding (signing ‖ hpke) used in bindings and fingerprints."""
        return _raw_public(self.signing_key) + _raw_public(self.hpke_key)

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicIdentity:
        if len(data) != 2 * KEY_BYTES:
            raise KeyFileError("public identity must be 64 bytes")
        return cls(
            Ed25519PublicKey.from_public_bytes(data[:KEY_BYTES]),
            X25519PublicKey.from_public_bytes(data[KEY_BYTES:]),
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the public keys, hex; what people compare out of band."""
        return hashlib.sha256(b"chiron/identity/v1\x00" + self.to_bytes()).hexdigest()

    def to_document(self) -> dict[str, Any]:
        return {
            "type": PUBLIC_IDENTITY_TYPE,
            "version": KEY_FILE_VERSION,
            "signing_key": b64encode(_raw_public(self.signing_key)),
            "hpke_key": b64encode(_raw_public(self.hpke_key)),
            "fingerprint": self.fingerprint,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicIdentity) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())


@dataclass(frozen=True)
class Identity:
    """A party's private identity (owner, provider, or an enclave's ephemeral one)."""

    signing_key: Ed25519PrivateKey
    hpke_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.signing_key.public_key(), self.hpke_key.public_key())

    def __repr__(self) -> str:  # never print private material
        return f"Identity(fingerprint={self.public.fingerprint[:16]}...)"

    def derive_secret(self, label: str, context: bytes) -> bytes:
        """A 256-bit secret only this identity can recompute, for one use and one context.

        HKDF over the private HPKE key, domain-separated by `label` and bound to
        `context`: the owner's client recomputes a job's secret to resume that job,
        without storing it anywhere.
        """
        raw = self.hpke_key.private_bytes(_RAW, _RAW_PRIVATE, _NO_ENCRYPTION)
        return derive_key(
            raw,
            salt=hashlib.sha256(context).digest(),
            info=b"chiron/identity-secret/v1\x00" + label.encode("utf-8"),
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "type": PRIVATE_IDENTITY_TYPE,
            "version": KEY_FILE_VERSION,
            "signing_key": b64encode(
                self.signing_key.private_bytes(_RAW, _RAW_PRIVATE, _NO_ENCRYPTION)
            ),
            "hpke_key": b64encode(self.hpke_key.private_bytes(_RAW, _RAW_PRIVATE, _NO_ENCRYPTION)),
            "fingerprint": self.public.fingerprint,
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the private file (0600) and `path.pub`; return the public file's path."""
        path = Path(path)
        public_path = path.with_name(path.name + ".pub")
        if not overwrite:
            for candidate in (path, public_path):
                if candidate.exists():
                    raise KeyFileError(f"refusing to overwrite existing key file {candidate}")
        atomic_write(path, _dump(self.to_document()), mode=0o600, overwrite=overwrite)
        atomic_write(public_path, _dump(self.public.to_document()), mode=0o644, overwrite=overwrite)
        return public_path


@dataclass(frozen=True)
class DataKey:
    """A dataset's 256-bit AES key, tied to the dataset id it was made for."""

    dataset_id: str
    key: bytes

    def __repr__(self) -> str:
        return f"DataKey(dataset_id={self.dataset_id!r})"

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        doc = {
            "type": DATA_KEY_TYPE,
            "version": KEY_FILE_VERSION,
            "dataset_id": self.dataset_id,
            "key": b64encode(self.key),
        }
        atomic_write(path, _dump(doc), mode=0o600, overwrite=overwrite)


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _load_document(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    raw = read_input_file(path, what=what, limit=_MAX_KEY_FILE)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"{path} is not a Chiron key file") from None
    if not isinstance(doc, dict) or "type" not in doc:
        raise KeyFileError(f"{path} is not a Chiron key file")
    if doc.get("version") != KEY_FILE_VERSION:
        raise KeyFileError(f"{path}: unsupported key file version {doc.get('version')!r}")
    return doc


def _field(doc: dict[str, Any], name: str, path: object) -> bytes:
    try:
        value = b64decode(doc[name])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KeyFileError(f"{path} is corrupt: bad or missing {name}") from None
    if len(value) != KEY_BYTES:
        raise KeyFileError(f"{path} is corrupt: {name} has the wrong length")
    return value


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Load a private identity file written by `chiron keygen`."""
    doc = _load_document(path, "key file")
    if doc["type"] != PRIVATE_IDENTITY_TYPE:
        raise KeyFileError(
            f"{path} is a {doc['type']} file, not a private identity (use the file without .pub)"
        )
    identity = Identity(
        Ed25519PrivateKey.from_private_bytes(_field(doc, "signing_key", path)),
        X25519PrivateKey.from_private_bytes(_field(doc, "hpke_key", path)),
    )
    if doc.get("fingerprint") not in (None, identity.public.fingerprint):
        raise KeyFileError(f"{path} is corrupt: fingerprint does not match its keys")
    return identity


def load_public_identity(path: str | os.PathLike[str]) -> PublicIdentity:
    """Load a public identity from a .pub file, or the public half of a private file."""
    doc = _load_document(path, "key file")
    if doc["type"] == PRIVATE_IDENTITY_TYPE:
        return load_identity(path).public
    if doc["type"] != PUBLIC_IDENTITY_TYPE:
        raise KeyFileError(f"{path} is a {doc['type']} file, not an identity")
    public = PublicIdentity(
        Ed25519PublicKey.from_public_bytes(_field(doc, "signing_key", path)),
        X25519PublicKey.from_public_bytes(_field(doc, "hpke_key", path)),
    )
    if doc.get("fingerprint") not in (None, public.fingerprint):
        raise KeyFileError(f"{path} is corrupt: fingerprint does not match its keys")
    return public


def load_data_key(path: str | os.PathLike[str]) -> DataKey:
    doc = _load_document(path, "data key file")
    if doc["type"] != DATA_KEY_TYPE:
        raise KeyFileError(f"{path} is a {doc['type']} file, not a dataset key")
    dataset_id = doc.get("dataset_id")
    if not isinstance(dataset_id, str) or not dataset_id:
        raise KeyFileError(f"{path} is corrupt: missing dataset_id")
    return DataKey(dataset_id, _field(doc, "key", path))
