"""The simulated platform's public side: its root key and platform certificates.

On a machine without a TEE, the `sim` platform stands in for the CPU vendor: a root key
created once per installation in the state directory certifies a platform key, which
signs evidence. Verifiers trust a root by its public key. Anyone who can read the state
directory (the host's root) holds the private root key and can forge evidence, so
simulated evidence exercises every protocol step and check but protects nothing against
the host; verifiers refuse it unless told otherwise.

The state-directory layout below is the one contract between the enclave process that
creates the root and the local client that trusts it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chiron.core.crypto import KEY_BYTES
from chiron.core.encoding import b64decode, b64encode, canonical_json
from chiron.core.errors import AttestationError
from chiron.core.fileio import read_input_file
from chiron.core.limits import MAX_ROOT_DOCUMENT_BYTES

SIM_PLATFORM_DIRECTORY = "sim-platform"
SIM_ROOT_PUBLIC_FILE = "root.pub"
SIM_ROOT_PRIVATE_FILE = "root.key"
SIM_ROOT_TYPE = "chiron.attestation.sim-root"
SIM_CERTIFICATE_TYPE = "chiron.attestation.sim-platform-certificate"
# The simulated platform's current security version; `old TCB` evidence is below it.
SIM_TCB_LEVEL = 1


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SimRoot:
    """A trusted simulation root: the public key that certifies simulated platforms."""

    key: Ed25519PublicKey

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(b"chiron/sim-root/v1\x00" + raw_public_bytes(self.key)).hexdigest()

    def to_document(self) -> dict[str, Any]:
        return {
            "type": SIM_ROOT_TYPE,
            "version": 1,
            "key": b64encode(raw_public_bytes(self.key)),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_document(cls, document: Any, *, source: str) -> SimRoot:
        """Parse a root document (file or service answer); malformed is an AttestationError."""
        try:
            raw = _typed_key(document, SIM_ROOT_TYPE, "key")
            root = cls(Ed25519PublicKey.from_public_bytes(raw))
            if document.get("fingerprint") not in (None, root.fingerprint):
                raise ValueError("fingerprint does not match the key")
        except (KeyError, TypeError, ValueError):
            raise AttestationError(f"{source} is not a valid simulation root") from None
        return root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimRoot) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)


def sim_platform_directory(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / SIM_PLATFORM_DIRECTORY


def load_sim_root(state_dir: str | os.PathLike[str]) -> SimRoot | None:
    """The simulation root created in `state_dir`, or None if there is none yet."""
    path = sim_platform_directory(state_dir) / SIM_ROOT_PUBLIC_FILE
    if not path.exists():
        return None
    raw = read_input_file(path, what="simulation root", limit=MAX_ROOT_DOCUMENT_BYTES)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AttestationError(f"{path} is not a valid simulation root") from None
    return SimRoot.from_document(document, source=str(path))


def platform_certificate(platform_key: Ed25519PublicKey, root: SimRoot) -> bytes:
    """The bytes a root signs to certify a simulated platform key."""
    return canonical_json(
        {
            "type": SIM_CERTIFICATE_TYPE,
            "version": 1,
            "platform_key": b64encode(raw_public_bytes(platform_key)),
            "root": root.fingerprint,
        }
    )


@dataclass(frozen=True)
class PlatformCertificate:
    platform_key: Ed25519PublicKey
    root_fingerprint: str


def parse_platform_certificate(data: bytes) -> PlatformCertificate:
    try:
        document = json.loads(data.decode("utf-8"))
        raw = _typed_key(document, SIM_CERTIFICATE_TYPE, "platform_key")
        root_fingerprint = document["root"]
        if not isinstance(root_fingerprint, str):
            raise TypeError("root must be a fingerprint")
        return PlatformCertificate(Ed25519PublicKey.from_public_bytes(raw), root_fingerprint)
    except (KeyError, TypeError, ValueError):
        raise AttestationError("malformed evidence: bad simulated platform certificate") from None


def _typed_key(document: object, type_tag: str, field: str) -> bytes:
    """The raw 32-byte key in `document[field]`, after checking the type tag and version."""
    if not isinstance(document, dict) or document.get("type") != type_tag:
        raise ValueError(f"not a {type_tag} document")
    if document.get("version") != 1:
        raise ValueError("unsupported version")
    raw = b64decode(document[field])
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{field} has the wrong length")
    return raw
