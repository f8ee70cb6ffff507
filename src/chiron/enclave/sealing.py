"""Sealed storage: encrypt enclave state so only the same runtime on the same platform opens it.

Like SGX's MRENCLAVE sealing, the key is derived from a platform secret and the runtime
measurement, so a changed runtime cannot read old state and the host, which stores the
ciphertext, cannot read or forge it. On the `sim` platform the platform secret is a file
in the state directory: it exercises the protocol but protects nothing against the
host's root (see docs/attestation.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chiron.core.crypto import KEY_BYTES, NONCE_BYTES, aead_decrypt, aead_encrypt, random_key
from chiron.core.encoding import canonical_json
from chiron.core.errors import EnclaveError, IntegrityError
from chiron.core.fileio import atomic_write

_SEALED_MAGIC = b"CHIRON-SEALED-1\n"


def _platform_secret(state_dir: Path, platform_name: str) -> bytes:
    if platform_name != "sim":
        raise EnclaveError(
            f"sealed storage is not available on platform {platform_name!r}; "
            "checkpoints need a key-release service there"
        )
    directory = state_dir / "sim-sealing"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "fuse.key"
    if not path.exists():
        # Write aside, then link into place: link never replaces an existing file, so
        # enclaves starting together all end up with the first one's secret, whole.
        candidate = directory / f".fuse.key.{os.getpid()}"
        atomic_write(candidate, random_key(), mode=0o600)
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    secret = path.read_bytes()
    if len(secret) != KEY_BYTES:
        raise EnclaveError(f"the simulated sealing secret {path} is corrupt")
    return secret


class SealingKey:
    """A key bound to (platform secret, runtime measurement, purpose)."""

    def __init__(self, *, state_dir: Path, platform_name: str, measurement: str, purpose: str):
        secret = _platform_secret(state_dir, platform_name)
        self._key = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=bytes.fromhex(measurement),
            info=b"chiron/sealing/v1\x00" + purpose.encode(),
        ).derive(secret)

    def seal(self, plaintext: bytes, binding: dict[str, object]) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = _SEALED_MAGIC + canonical_json(binding)
        return _SEALED_MAGIC + nonce + aead_encrypt(self._key, nonce, plaintext, aad)

    def unseal(self, blob: bytes, binding: dict[str, object]) -> bytes:
        if not blob.startswith(_SEALED_MAGIC) or len(blob) < len(_SEALED_MAGIC) + NONCE_BYTES:
            raise IntegrityError("sealed state is malformed")
        nonce = blob[len(_SEALED_MAGIC) : len(_SEALED_MAGIC) + NONCE_BYTES]
        body = blob[len(_SEALED_MAGIC) + NONCE_BYTES :]
        aad = _SEALED_MAGIC + canonical_json(binding)
        return aead_decrypt(self._key, nonce, body, aad, what="sealed state")
