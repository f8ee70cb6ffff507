"""The small hazardous layer: HPKE sealing, signatures and AEAD, each domain-separated.

Higher layers never call `cryptography` directly. Every operation takes a `purpose`
(and, for HPKE, a context such as the job or dataset id) that is bound into the
cryptographic operation, so a ciphertext or signature made for one purpose can never
be replayed as another: a data key sealed for job A does not open for job B.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError

# RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
_HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HPKE_LABEL = b"chiron/hpke/v1"
_SIGNATURE_LABEL = b"chiron/signature/v1"

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
REPLY_KEY_BYTES = 32


def random_key() -> bytes:
    """A fresh 256-bit symmetric key from the OS CSPRNG."""
    return os.urandom(KEY_BYTES)


def _bound(label: bytes, purpose: str, context: Mapping[str, object]) -> bytes:
    if not purpose:
        raise ValueError("purpose must be non-empty")
    return label + b"\x00" + canonical_json({"purpose": purpose, "context": dict(context)})


def seal(
    public_key: X25519PublicKey,
    plaintext: bytes,
    *,
    purpose: str,
    context: Mapping[str, object],
) -> bytes:
    """HPKE-encrypt `plaintext` to `public_key`, bound to `purpose` and `context`."""
    return _HPKE_SUITE.encrypt(plaintext, public_key, info=_bound(_HPKE_LABEL, purpose, context))


def open_sealed(
    private_key: X25519PrivateKey,
    ciphertext: bytes,
    *,
    purpose: str,
    context: Mapping[str, object],
    what: str = "sealed secret",
) -> bytes:
    """Open an HPKE ciphertext; any mismatch of key, purpose or context is an IntegrityError."""
    try:
        return _HPKE_SUITE.decrypt(
            ciphertext, private_key, info=_bound(_HPKE_LABEL, purpose, context)
        )
    except (InvalidTag, ValueError):
        raise IntegrityError(
            f"{what} does not open: it was sealed to another key, for another purpose, "
            "or has been tampered with"
        ) from None


def reply_key_pair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh one-use X25519 key pair to receive one sealed reply; the public half raw.

    A client makes one per request, so a reply sealed for one request cannot be opened
    as the reply to another, and nothing sealed to it outlives the request.
    """
    private = X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, raw


def reply_public_key(raw: bytes) -> X25519PublicKey:
    """A client's raw reply key as a key to seal to; InputError if it is not one."""
    if not isinstance(raw, bytes) or len(raw) != REPLY_KEY_BYTES:
        raise InputError(f"malformed reply key: it must be {REPLY_KEY_BYTES} bytes")
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise InputError("malformed reply key") from None


def sign(private_key: Ed25519PrivateKey, message: bytes, *, purpose: str) -> bytes:
    """Ed25519 signature over `message`, domain-separated by `purpose`."""
    return private_key.sign(_bound(_SIGNATURE_LABEL, purpose, {}) + b"\x00" + message)


def verify_signature(
    public_key: Ed25519PublicKey,
    signature: bytes,
    message: bytes,
    *,
    purpose: str,
    what: str = "signature",
) -> None:
    """Raise IntegrityError unless `signature` is valid for `message` and `purpose`."""
    try:
        public_key.verify(signature, _bound(_SIGNATURE_LABEL, purpose, {}) + b"\x00" + message)
    except InvalidSignature:
        raise IntegrityError(f"{what} is not valid") from None


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM. Callers own nonce uniqueness; see core.container for the scheme."""
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(
    key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes, *, what: str = "data"
) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise IntegrityError(
            f"{what} failed authentication: wrong key, or the file was tampered with"
        ) from None


def aead_encrypt_into(
    key: bytes,
    nonce: bytes,
    plaintext: bytes | bytearray | memoryview,
    associated_data: bytes,
    out: bytearray | memoryview,
) -> None:
    """AES-256-GCM into a caller's buffer of exactly len(plaintext) + TAG_BYTES bytes.

    Streaming code reuses one buffer per chunk instead of allocating a fresh one.
    """
    AESGCM(key).encrypt_into(nonce, plaintext, associated_data, out)


def aead_decrypt_into(
    key: bytes,
    nonce: bytes,
    ciphertext: bytes | memoryview,
    associated_data: bytes,
    out: bytearray | memoryview,
    *,
    what: str = "data",
) -> None:
    """AES-256-GCM decryption into a buffer of exactly len(ciphertext) - TAG_BYTES bytes."""
    try:
        AESGCM(key).decrypt_into(nonce, ciphertext, associated_data, out)
    except InvalidTag:
        raise IntegrityError(
            f"{what} failed authentication: wrong key, or the file was tampered with"
        ) from None


def derive_key(secret: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256: an independent key for one use (`info`) and one file (`salt`)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)
