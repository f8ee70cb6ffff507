"""The enclave processes this service runs, and one lock each so calls never interleave.

The host holds these only to relay: it starts an enclave for a job or query session,
passes boundary calls through `chiron.enclave.boundary.EnclaveProcess`, and stops it.
It cannot read what crosses, and every argument it adds (recipe source, dataset path,
checkpoint folder) the enclave checks itself.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from chiron.core.errors import EnclaveError, InputError
from chiron.core.limits import CALL_SILENCE_SECONDS
from chiron.enclave.boundary import EnclaveProcess

EventHandler = Callable[[dict[str, Any]], None]
MIN_NONCE_BYTES, MAX_NONCE_BYTES = 16, 64
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


def parse_nonce(text: str) -> bytes:
    """A verifier's nonce from hex, checked before any enclave sees it."""
    if not _HEX.match(text) or not MIN_NONCE_BYTES <= len(text) // 2 <= MAX_NONCE_BYTES:
        raise InputError(
            f"nonce must be {MIN_NONCE_BYTES}-{MAX_NONCE_BYTES} bytes written as hex digits"
        )
    return bytes.fromhex(text)


class EnclaveChannel(Protocol):
    """What a host holds of one enclave process: its calls, and stopping it."""

    def call(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        on_event: EventHandler | None = None,
        timeout: float = CALL_SILENCE_SECONDS,
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def kill(self) -> None: ...


class ManagedEnclave:
    """One enclave process; `call` serialises callers and records when it was last used.

    It starts its own process, or wraps `channel`, one its host started some other way
    (`chiron train --local` runs its enclaves as the client's own local sessions).
    """

    def __init__(
        self,
        role: str,
        state_dir: Path,
        *,
        platform: str,
        log_path: Path | None,
        channel: EnclaveChannel | None = None,
    ) -> None:
        self.role = role
        self._process: EnclaveChannel = channel or EnclaveProcess.start(
            role=role, state_dir=state_dir, platform=platform, log_path=log_path
        )
        self._lock = threading.Lock()
        self._closed = False
        self.last_used = time.monotonic()

    def call(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        on_event: EventHandler | None = None,
        timeout: float = CALL_SILENCE_SECONDS,
    ) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise EnclaveError("this enclave has been stopped")
            try:
                return self._process.call(name, args, on_event=on_event, timeout=timeout)
            finally:
                self.last_used = time.monotonic()

    def evidence(self, nonce: bytes) -> bytes:
        result = self.call("attest", {"nonce": nonce})
        evidence = result.get("evidence")
        if not isinstance(evidence, bytes):
            raise EnclaveError("the enclave returned no evidence")
        return evidence

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def close(self) -> None:
        """Stop the process: ask politely when idle, kill it if a call is in flight."""
        if self._lock.acquire(blocking=False):
            try:
                self._closed = True
                self._process.close()
            finally:
                self._lock.release()
        else:
            self._closed = True
            self._process.kill()


class ServiceEnclave:
    """The service-level enclave behind `GET /v1/attestation/evidence`, started on demand.

    It proves which runtime this service runs; job and query enclaves answer the same
    call for themselves, which is what a client attests before releasing a secret.
    """

    def __init__(self, state_dir: Path, *, platform: str, log_path: Path) -> None:
        self._state_dir = state_dir
        self._platform = platform
        self._log_path = log_path
        self._enclave: ManagedEnclave | None = None
        self._guard = threading.Lock()

    def evidence(self, nonce: bytes) -> bytes:
        with self._guard:
            if self._enclave is None:
                self._enclave = ManagedEnclave(
                    "train", self._state_dir, platform=self._platform, log_path=self._log_path
                )
            enclave = self._enclave
        try:
            return enclave.evidence(nonce)
        except EnclaveError:
            # A dead process is replaced on the next request rather than kept broken.
            with self._guard:
                if self._enclave is enclave:
                    self._enclave = None
            enclave.close()
            raise

    def close(self) -> None:
        with self._guard:
            enclave, self._enclave = self._enclave, None
        if enclave is not None:
            enclave.close()
