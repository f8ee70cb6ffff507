"""A service's enclaves seen as enclave sessions (`client.sessions.EnclaveSession`).

`RemoteJobSession` and `RemoteQuerySession` present a service's job and query enclaves
through the same interface as an enclave process on this machine, so client flows are
written once for `--local` and `--url`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from chiron.client.remote.service_client import ServiceClient
from chiron.client.sessions import EventHandler, JobHost
from chiron.core.contract import TrainAuthorization, TrainResult
from chiron.core.errors import EnclaveError, UsageError


class RemoteJobSession:
    """A host's training job seen as an enclave session (`train` via the job API).

    The host is a service (`ServiceClient`) or the same code in this process
    (`host.local.LocalHost`): anything answering `client.sessions.JobHost`.

    `call("train", TrainAuthorization(...).to_wire())` starts the job with the owner's
    signed manifest and sealed key, reports progress events while it runs, and returns
    the enclave's `TrainResult` (wire form) once it is done. The service adds the
    recipe, its statement and the dataset; the enclave checks them against the manifest.
    """

    def __init__(self, client: JobHost, job_id: str, *, poll_seconds: float = 1.0) -> None:
        self.client = client
        self.job_id = job_id
        self._poll = poll_seconds

    def evidence(self, nonce: bytes) -> bytes:
        return self.client.job_evidence(self.job_id, nonce)

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]:
        if name != "train":
            raise EnclaveError(f"a training job has no call {name!r}")
        authorization = TrainAuthorization.from_wire(args)
        if authorization.manifest.manifest.job_id != self.job_id:
            raise UsageError("the train call must use the service's job id")
        self.client.start_job(self.job_id, authorization)
        return self.wait(on_event)

    def wait(self, on_event: EventHandler | None = None) -> dict[str, Any]:
        """Wait for the started job and return its `TrainResult` (wire form).

        Also how a client that did not start the job (the first one was killed) gets
        its result; an interrupted job raises Conflict (resume it).
        """

        def update(job: dict[str, Any]) -> None:
            if on_event is not None and job["state"] in ("running", "done") and job["total"]:
                on_event({"event": "progress", "step": job["step"], "total": job["total"]})

        self.client.wait_job(self.job_id, on_update=update, poll_seconds=self._poll)
        return TrainResult(
            model=self.client.job_result(self.job_id, "model"),
            receipt=self.client.job_result(self.job_id, "receipt"),
            owner_report=self.client.job_result(self.job_id, "owner_report"),
            owner_report_signature=self.client.job_result(self.job_id, "owner_report_signature"),
        ).to_wire()

    def close(self) -> None:
        """Nothing to stop: the service ends a job's enclave when the job ends."""


class RemoteQuerySession:
    """A service's query enclave seen as an enclave session.

    The service holds the model and the datasets, so the two calls that name local
    files are translated: `load_model` checks that the bytes given are the session's
    model (the service loads its own copy), and `evaluate` uploads the dataset at
    `dataset_path` (skipped when already there) and names it by id. With
    `provider_client` (a provider's token), the provider's share is released through it.
    """

    def __init__(
        self,
        client: ServiceClient,
        model: str,
        *,
        provider_client: ServiceClient | None = None,
        progress: bool = True,
    ) -> None:
        self.client = client
        self._provider_client = provider_client
        self._progress = progress
        self._model = client.model(model)
        self.session_id = client.open_query_session(model)["id"]

    @classmethod
    def for_model_file(
        cls,
        client: ServiceClient,
        path: str | os.PathLike[str],
        *,
        provider_client: ServiceClient | None = None,
        progress: bool = True,
    ) -> RemoteQuerySession:
        """Upload a local model file if the service lacks it, then open a session on it."""
        model = client.upload_model(path, progress=progress)["id"]
        return cls(client, model, provider_client=provider_client, progress=progress)

    def evidence(self, nonce: bytes) -> bytes:
        return self.client.query_session_evidence(self.session_id, nonce)

    def call(
        self, name: str, args: dict[str, Any], on_event: EventHandler | None = None
    ) -> dict[str, Any]:
        args = dict(args)
        if name == "load_model":
            model = args.pop("model", None)
            if model is not None and hashlib.sha256(model).hexdigest() != self._model["sha256"]:
                raise UsageError("this query session was opened on a different model file")
        elif name == "evaluate" and "dataset_path" in args:
            dataset = self.client.upload_dataset(args.pop("dataset_path"), progress=self._progress)
            args["dataset"] = dataset["id"]
        elif name == "provision_share" and args.get("party") == "provider":
            via = self._provider_client or self.client
            return via.query_session_call(self.session_id, name, args)
        return self.client.query_session_call(self.session_id, name, args)

    def close(self) -> None:
        self.client.close_query_session(self.session_id)

    def __enter__(self) -> RemoteQuerySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
