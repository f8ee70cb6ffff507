"""Sealed storage: encrypt enclave state so only the same runtime, for the same secret, opens it.

Like SGX's MRENCLAVE sealing, a key is derived from a secret and the runtime
measurement, so a changed runtime cannot read old state and the host, which stores the
ciphertext, cannot read or forge it. Two secrets are used:

- a job's secret (`SealingKey.for_job`): derived by the owner's client for one job and
  sealed to the attested training enclave beside the data key. Checkpoints are sealed
  under it, so they work on every platform (a TDX or SEV-SNP VM has no sealing key of
  its own that survives a restart), and only a runtime the owner released the job's
  secret to can resume them;
- the platform secret (`SealingKey`), on the `sim` platform only: a file in the state
  directory. It exercises the protocol but protects nothing against the host's root
  (see docs/attestation.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from chiron.core.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    aead_decrypt,
    aead_encrypt_into,
    derive_key,
    random_key,
)
from chiron.core.encoding import canonical_json
from chiron.core.errors import EnclaveError, IntegrityError
from chiron.core.fileio import atomic_output, atomic_write

_SEALED_MAGIC = b"CHIRON-SEALED-1\n"


def sealed_size(plaintext_size: int) -> int:
    """How many bytes `plaintext_size` bytes take sealed."""
    return len(_SEALED_MAGIC) + NONCE_BYTES + plaintext_size + TAG_BYTES


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


def _derive(secret: bytes, measurement: str, purpose: str) -> bytes:
    return derive_key(
        secret,
        salt=bytes.fromhex(measurement),
        info=b"chiron/sealing/v1\x00" + purpose.encode(),
    )


class SealingKey:
    """A key bound to (secret, runtime measurement, purpose); by default the platform's."""

    def __init__(self, *, state_dir: Path, platform_name: str, measurement: str, purpose: str):
        self._key = _derive(_platform_secret(state_dir, platform_name), measurement, purpose)

    @classmethod
    def for_job(cls, job_secret: bytes, *, measurement: str, purpose: str) -> SealingKey:
        """A key from the secret the owner released for one job (any platform)."""
        if len(job_secret) != KEY_BYTES:
            raise EnclaveError("a job secret is 32 bytes")
        key = cls.__new__(cls)
        key._key = _derive(job_secret, measurement, purpose)
        return key

    def seal(self, plaintext: bytes, binding: dict[str, object]) -> bytes:
        return bytes(self._sealed(plaintext, binding))

    def seal_to_file(
        self,
        path: Path,
        plaintext: bytes | bytearray,
        binding: dict[str, object],
        *,
        buffer: bytearray | None = None,
    ) -> None:
        """Seal `plaintext` into `path`, atomically: one buffer, one write, one fsync.

        The ciphertext is produced straight into the buffer that is written, so a large
        state (a training checkpoint) is copied by the cipher and the kernel only. A
        caller sealing states of one size again and again passes the same `buffer` (of
        `sealed_size` bytes) each time.
        """
        sealed = self._sealed(plaintext, binding, buffer)
        with atomic_output(path, mode=0o600) as handle:
            handle.write(sealed)

    def _sealed(
        self,
        plaintext: bytes | bytearray,
        binding: dict[str, object],
        buffer: bytearray | None = None,
    ) -> bytearray:
        # A fresh random nonce per seal: a key seals many states (a checkpoint each time),
        # and 96 random bits make a repeat negligible for any count a job reaches.
        nonce = os.urandom(NONCE_BYTES)
        aad = _SEALED_MAGIC + canonical_json(binding)
        head = len(_SEALED_MAGIC) + NONCE_BYTES
        sealed = bytearray(sealed_size(len(plaintext))) if buffer is None else buffer
        if len(sealed) != sealed_size(len(plaintext)):
            raise ValueError("the buffer is not of the sealed size")
        sealed[:head] = _SEALED_MAGIC + nonce
        aead_encrypt_into(self._key, nonce, plaintext, aad, memoryview(sealed)[head:])
        return sealed

    def unseal(self, blob: bytes, binding: dict[str, object]) -> bytes:
        if not blob.startswith(_SEALED_MAGIC) or len(blob) < len(_SEALED_MAGIC) + NONCE_BYTES:
            raise IntegrityError("sealed state is malformed")
        nonce = blob[len(_SEALED_MAGIC) : len(_SEALED_MAGIC) + NONCE_BYTES]
        body = blob[len(_SEALED_MAGIC) + NONCE_BYTES :]
        aad = _SEALED_MAGIC + canonical_json(binding)
        return aead_decrypt(self._key, nonce, body, aad, what="sealed state")
