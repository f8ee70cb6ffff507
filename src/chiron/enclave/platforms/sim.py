"""The simulated platform: a software root of trust for machines without a TEE.

A root key, created once per installation in `<state_dir>/sim-platform/` (directory
0700, private key 0600), certifies a platform key that this process generates at start;
the platform key signs evidence. In simulation the "CPU" that measures the enclave is
this very code, and the root key sits on the host's disk: anyone with access to the
state directory can forge evidence. Simulation therefore exercises every step of the
protocol and every check of the verifier, and protects nothing against the host.

`SimFault` makes the platform produce each kind of bad evidence on purpose, so tests
drive the real verifier through every refusal. It is not reachable through the enclave
boundary.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chiron.core import purposes
from chiron.core.attestation.evidence import (
    PLATFORM_SIM,
    Evidence,
    SimSignatureChain,
    check_nonce,
    report_data_for,
)
from chiron.core.attestation.sim import (
    SIM_PLATFORM_DIRECTORY,
    SIM_ROOT_PRIVATE_FILE,
    SIM_ROOT_PUBLIC_FILE,
    SIM_TCB_LEVEL,
    SimRoot,
    platform_certificate,
)
from chiron.core.crypto import KEY_BYTES, sign
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import EnclaveError
from chiron.core.fileio import atomic_write, read_input_file
from chiron.core.keys import PublicIdentity

_ROOT_PRIVATE_TYPE = "chiron.attestation.sim-root.private"
# How old a STALE_TIMESTAMP evidence claims to be: far beyond any sensible max age.
STALE_SECONDS = 24 * 3600


class SimFault(enum.Enum):
    """A defect to build into simulated evidence on purpose."""

    DEBUG = "debug"
    OLD_TCB = "old-tcb"
    WRONG_MEASUREMENT = "wrong-measurement"
    STALE_TIMESTAMP = "stale-timestamp"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_ROOT = "unknown-root"
    WRONG_NONCE = "wrong-nonce"


class SimPlatform:
    """Evidence signed by a platform key that the installation's simulation root certified."""

    def __init__(self, state_dir: Path) -> None:
        self._root_key = load_or_create_root(Path(state_dir))
        self._platform_key = Ed25519PrivateKey.generate()

    def evidence(
        self,
        *,
        measurement: str,
        identity: PublicIdentity,
        nonce: bytes,
        role: str,
        binding: str,
        fault: SimFault | None = None,
    ) -> bytes:
        check_nonce(nonce)
        timestamp = int(time.time())
        if fault is SimFault.STALE_TIMESTAMP:
            timestamp -= STALE_SECONDS
        if fault is SimFault.WRONG_MEASUREMENT:
            measurement = "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in measurement)
        bound_nonce = os.urandom(len(nonce)) if fault is SimFault.WRONG_NONCE else nonce
        unsigned = Evidence(
            platform=PLATFORM_SIM,
            measurement=measurement,
            debug=fault is SimFault.DEBUG,
            tcb_level=SIM_TCB_LEVEL - 1 if fault is SimFault.OLD_TCB else SIM_TCB_LEVEL,
            timestamp=timestamp,
            report_data=report_data_for(
                nonce=bound_nonce,
                enclave_identity=identity.to_bytes(),
                measurement=measurement,
                timestamp=timestamp,
                role=role,
                binding=binding,
            ),
            enclave_identity=identity.to_bytes(),
            signature_chain=SimSignatureChain(b"", b"", b""),  # signed_bytes() excludes it
            role=role,
            binding=binding,
        )
        root_key = (
            Ed25519PrivateKey.generate() if fault is SimFault.UNKNOWN_ROOT else self._root_key
        )
        certificate = platform_certificate(
            self._platform_key.public_key(), SimRoot(root_key.public_key())
        )
        signature = sign(self._platform_key, unsigned.signed_bytes(), purpose=purposes.SIM_EVIDENCE)
        if fault is SimFault.BAD_SIGNATURE:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        chain = SimSignatureChain(
            certificate=certificate,
            certificate_signature=sign(
                root_key, certificate, purpose=purposes.SIM_PLATFORM_CERTIFICATE
            ),
            evidence_signature=signature,
        )
        return dataclasses.replace(unsigned, signature_chain=chain).to_bytes()


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def load_or_create_root(state_dir: Path) -> Ed25519PrivateKey:
    """This installation's simulation root key, created on first use.

    Several enclave processes may start at once on a fresh state directory: the root
    is written into a private staging directory that is renamed into place in one
    step, and whoever loses the race uses the winner's root.
    """
    directory = state_dir / SIM_PLATFORM_DIRECTORY
    if not directory.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=f".{SIM_PLATFORM_DIRECTORY}.", dir=state_dir))
        try:
            key = Ed25519PrivateKey.generate()
            private = {
                "type": _ROOT_PRIVATE_TYPE,
                "version": 1,
                "key": b64encode(_raw_private(key)),
            }
            atomic_write(staging / SIM_ROOT_PRIVATE_FILE, _dump(private), mode=0o600)
            public = SimRoot(key.public_key()).to_document()
            atomic_write(staging / SIM_ROOT_PUBLIC_FILE, _dump(public), mode=0o644)
            os.rename(staging, directory)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise EnclaveError(f"cannot create the simulation root: {exc.strerror}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _load_root(directory / SIM_ROOT_PRIVATE_FILE)


def _load_root(path: Path) -> Ed25519PrivateKey:
    raw = read_input_file(path, what="simulation root key", limit=4096)
    try:
        document = json.loads(raw.decode("utf-8"))
        if document.get("type") != _ROOT_PRIVATE_TYPE or document.get("version") != 1:
            raise ValueError("not a simulation root key")
        key = b64decode(document["key"])
        if len(key) != KEY_BYTES:
            raise ValueError("wrong key length")
        return Ed25519PrivateKey.from_private_bytes(key)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise EnclaveError(f"{path} is not a valid simulation root key") from None


def _dump(document: dict[str, object]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")
