"""How a client reaches an enclave: a process on this machine, or one behind a service.

Client flows (training, evaluation, queries) are written once against these small
interfaces; `--local` and `--url` differ only in which implementation they get. A
training job always runs on a host (`JobHost`): a Chiron service over REST, or the
same service code in this process (`chiron.host.local.LocalHost`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from chiron.core.contract import TrainAuthorization
from chiron.core.limits import CALL_SILENCE_SECONDS, TRAIN_SILENCE_SECONDS
from chiron.enclave.boundary import EnclaveProcess

EventHandler = Callable[[dict[str, Any]], None]

# Longest silence tolerated from a training enclave (it reports progress every 1% of
# steps); the enclave bounds each sandbox step itself.


class EnclaveSession(Protocol):
    """One enclave the client is talking to."""

    def evidence(self, nonce: bytes) -> bytes: ...

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...


class JobHost(Protocol):
    """A host's training jobs as the owner's client drives them (docs/api.md, "Training jobs").

    `client.remote.ServiceClient` answers it over REST, `host.local.LocalHost` in this
    process; jobs, records and errors are the same either way.
    """

    def recipe_statement(self, name: str) -> bytes: ...

    def upload_dataset(
        self, path: str | os.PathLike[str], *, progress: bool = ...
    ) -> dict[str, Any]: ...

    def create_job(self, *, recipe: str, dataset: str) -> dict[str, Any]: ...

    def jobs(self) -> list[dict[str, Any]]: ...

    def job(self, job_id: str) -> dict[str, Any]: ...

    def job_evidence(self, job_id: str, nonce: bytes) -> bytes: ...

    def start_job(self, job_id: str, authorization: TrainAuthorization) -> dict[str, Any]: ...

    def resume_job(self, job_id: str) -> dict[str, Any]: ...

    def job_manifest(self, job_id: str) -> bytes: ...

    def wait_job(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = ...,
        poll_seconds: float = ...,
    ) -> dict[str, Any]: ...

    def job_result(self, job_id: str, name: str) -> bytes | None: ...


class LocalEnclaveSession:
    """An enclave process started on this machine (`--local`)."""

    def __init__(
        self,
        role: str,
        state_dir: Path,
        *,
        extra_args: dict[str, Any] | None = None,
        sandbox_at_start: bool = False,
    ):
        # `sandbox_at_start`: a training enclave for a job about to arrive starts its
        # sandbox with the process (`EnclaveContext.create`).
        self._process = EnclaveProcess.start(
            role=role,
            state_dir=state_dir,
            extra_args=("--sandbox-at-start",) if sandbox_at_start else (),
        )
        # Arguments only a host holds (recipe, dataset location, checkpoint folder):
        # with --local the client plays the host's part too.
        self._extra_args = extra_args or {}

    def evidence(self, nonce: bytes) -> bytes:
        return self._process.call("attest", {"nonce": nonce})["evidence"]

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]:
        merged = {**self._extra_args.get(name, {}), **args}
        timeout = TRAIN_SILENCE_SECONDS if name in ("train", "exchange") else CALL_SILENCE_SECONDS
        return self._process.call(name, merged, on_event=on_event, timeout=timeout)

    def close(self) -> None:
        self._process.close()

    def kill(self) -> None:
        """Stop the enclave at once, even in the middle of a call (another thread's)."""
        self._process.kill()

    def __enter__(self) -> LocalEnclaveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
