"""The HTTP client SDK for a Chiron service (`--url`).

`ServiceClient` covers every endpoint of the REST API (docs/api.md) and turns every
failure into a one-line `chiron.core.errors` exception: the service's own error class
when it sent one, `ServiceError` when it could not be reached. `RemoteJobSession` and
`RemoteQuerySession` present a service's job and query enclaves through the same
interface as an enclave process on this machine (`client.sessions.EnclaveSession`),
so client flows are written once for `--local` and `--url`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from chiron.core.contract import TrainAuthorization, TrainResult
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import (
    AccessDenied,
    AttestationError,
    ChironError,
    Conflict,
    EnclaveError,
    InputError,
    IntegrityError,
    JobFailed,
    NotFound,
    ServiceError,
    UsageError,
)
from chiron.core.fileio import atomic_output
from chiron.enclave.boundary import decode_message, encode_message

EventHandler = Callable[[dict[str, Any]], None]
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
TRANSIENT_RETRIES = 5
_HASH_BLOCK = 1024 * 1024

# Error classes the service may name; anything else becomes ServiceError.
_ERRORS: dict[str, type[ChironError]] = {
    cls.__name__: cls
    for cls in (
        AccessDenied,
        NotFound,
        Conflict,
        InputError,
        IntegrityError,
        AttestationError,
        EnclaveError,
        ServiceError,
        UsageError,
        ChironError,
    )
}


def _error_from(response: httpx.Response) -> ChironError:
    try:
        body = response.json()
        name, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return ServiceError(f"the service answered HTTP {response.status_code}")
    if name == "JobFailed":
        return JobFailed(str(body.get("reason_class") or "unknown"), message)
    return _ERRORS.get(name, ServiceError)(message)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class ServiceClient:
    """A typed client for one Chiron service; `transport` lets tests plug in an app."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 120.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, not {url!r}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + "/v1", headers=headers, transport=transport, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(f"cannot reach the Chiron service at {self.url}: {exc}") from None
        if response.is_success:
            return response
        raise _error_from(response)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(f"the service sent a malformed answer to {path}") from None

    @contextmanager
    def _stream(self, path: str) -> Iterator[httpx.Response]:
        try:
            with self._http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    raise _error_from(response)
                yield response
        except httpx.TransportError as exc:
            raise ServiceError(f"cannot reach the Chiron service at {self.url}: {exc}") from None

    def _download(self, path: str, out: Path | None) -> bytes | None:
        """Fetch an artifact, checking the SHA-256 the service names; write it atomically."""
        digest = hashlib.sha256()
        with self._stream(path) as response:
            expected = response.headers.get("x-content-sha256")
            if out is None:
                data = response.read()
                digest.update(data)
            else:
                data = None
                with atomic_output(out) as handle:
                    for block in response.iter_bytes():
                        digest.update(block)
                        handle.write(block)
                    if expected is not None and digest.hexdigest() != expected:
                        raise IntegrityError(f"the download of {path} was corrupted")
        if expected is not None and digest.hexdigest() != expected:
            raise IntegrityError(f"the download of {path} was corrupted")
        return data

    # --- service and attestation -------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def whoami(self) -> dict[str, Any]:
        return self._json("GET", "/whoami")

    def attestation_evidence(self, nonce: bytes) -> bytes:
        """Evidence from the service-level enclave (what `chiron attest --url` checks)."""
        return _evidence(self._json("GET", "/attestation/evidence", params={"nonce": nonce.hex()}))

    def sim_root(self) -> dict[str, Any]:
        """The simulated platform's root public key (only meaningful in simulation)."""
        return self._json("GET", "/attestation/sim-root")

    # --- recipes -------------------------------------------------------------------

    def register_recipe(
        self,
        name: str,
        *,
        source: bytes,
        statement: bytes,
        description: str = "",
        task: str = "classification",
        input_schema: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register a recipe with its provider's signed statement (`SignedRecipeStatement`)."""
        body = {
            "name": name,
            "description": description,
            "task": task,
            "input_schema": input_schema,
            "source": b64encode(source),
            "statement": b64encode(statement),
        }
        return self._json("POST", "/recipes", json=body)

    def recipes(self) -> list[dict[str, Any]]:
        return self._json("GET", "/recipes")

    def recipe(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/recipes/{name}")

    def recipe_statement(self, name: str) -> bytes:
        """The provider's signed statement of a recipe, as the service relays it.

        The service is not trusted to vouch for it: verify it with
        `SignedRecipeStatement.from_bytes` before believing who the provider is.
        """
        encoded = self.recipe(name).get("statement")
        if encoded is None:
            raise Conflict(
                f"recipe {name!r} has no provider statement; its provider must register it again"
            )
        try:
            return b64decode(encoded)
        except (TypeError, ValueError):
            raise ServiceError("the service sent a malformed recipe statement") from None

    # --- uploads, datasets, models ----------------------------------------------------

    def create_upload(self, *, kind: str, size: int, sha256: str) -> dict[str, Any]:
        return self._json("POST", "/uploads", json={"kind": kind, "size": size, "sha256": sha256})

    def uploads(self) -> list[dict[str, Any]]:
        return self._json("GET", "/uploads")

    def upload_status(self, upload_id: str) -> dict[str, Any]:
        return self._json("GET", f"/uploads/{upload_id}")

    def put_chunk(self, upload_id: str, offset: int, data: bytes) -> dict[str, Any]:
        return self._json(
            "PUT",
            f"/uploads/{upload_id}/chunks",
            params={"offset": offset, "sha256": hashlib.sha256(data).hexdigest()},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def complete_upload(self, upload_id: str) -> dict[str, Any]:
        return self._json("POST", f"/uploads/{upload_id}/complete")

    def discard_upload(self, upload_id: str) -> None:
        self._send("DELETE", f"/uploads/{upload_id}")

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        progress: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> dict[str, Any]:
        """Upload a file, resuming an unfinished upload of the same file if there is one.

        Transient failures (the service restarting, a dropped connection) are retried
        from the offset the service reports; the file is registered only when the
        service has every byte and the SHA-256 matches.
        """
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        if size == 0:
            raise InputError(f"{path} is empty")
        sha256 = file_sha256(path)
        upload = self._resumable(kind, size, sha256)
        upload_id = upload["id"]
        with (
            _progress_bar(progress, f"uploading {path.name}", size) as advance,
            open(path, "rb") as source,
        ):
            advance(upload["offset"])
            attempts = 0
            while not upload["complete"] and upload["offset"] < size:
                offset = upload["offset"]
                source.seek(offset)
                data = source.read(min(chunk_bytes, upload["chunk_bytes"]))
                try:
                    upload = self.put_chunk(upload["id"], offset, data)
                    attempts = 0
                except (ServiceError, Conflict, IntegrityError):
                    attempts += 1
                    if attempts > TRANSIENT_RETRIES:
                        raise
                    time.sleep(min(8.0, 0.25 * 2**attempts))
                    upload = self._retrying(lambda: self.upload_status(upload_id))
                advance(upload["offset"] - offset)
        return self._retrying(lambda: self.complete_upload(upload_id))

    def _resumable(self, kind: str, size: int, sha256: str) -> dict[str, Any]:
        for candidate in self._retrying(self.uploads):
            if (candidate["kind"], candidate["size"], candidate["sha256"]) == (kind, size, sha256):
                return candidate
        return self.create_upload(kind=kind, size=size, sha256=sha256)

    def _retrying(self, request: Callable[[], Any]) -> Any:
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return request()
            except ServiceError:
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
                time.sleep(min(8.0, 0.25 * 2 ** (attempt + 1)))
        raise AssertionError("unreachable")

    def upload_dataset(
        self, path: str | os.PathLike[str], *, progress: bool = True
    ) -> dict[str, Any]:
        """Upload an encrypted dataset (.chd) unless it is there already; return its record."""
        sha256 = file_sha256(Path(path))
        for dataset in self.datasets():
            if dataset["sha256"] == sha256:
                return dataset
        done = self.upload(path, kind="dataset", progress=progress)
        return self.dataset(done["result_id"])

    def upload_model(
        self, path: str | os.PathLike[str], *, progress: bool = True
    ) -> dict[str, Any]:
        """Upload an escrowed model file unless it is there already; return its record."""
        sha256 = file_sha256(Path(path))
        for model in self.models():
            if model["sha256"] == sha256:
                return model
        done = self.upload(path, kind="model", progress=progress)
        return self.model(done["result_id"])

    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/datasets")

    def dataset(self, dataset: str) -> dict[str, Any]:
        return self._json("GET", f"/datasets/{dataset}")

    def models(self) -> list[dict[str, Any]]:
        return self._json("GET", "/models")

    def model(self, model: str) -> dict[str, Any]:
        return self._json("GET", f"/models/{model}")

    def model_file(self, model: str, out: Path | None = None) -> bytes | None:
        """The escrowed model file: returned, or written atomically to `out`."""
        return self._download(f"/models/{model}/file", out)

    # --- jobs ----------------------------------------------------------------------------

    def create_job(self, *, recipe: str, dataset: str) -> dict[str, Any]:
        """Create a job; its training enclave starts and waits to be attested."""
        return self._json("POST", "/jobs", json={"recipe": recipe, "dataset": dataset})

    def jobs(self) -> list[dict[str, Any]]:
        return self._json("GET", "/jobs")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def job_evidence(self, job_id: str, nonce: bytes) -> bytes:
        return _evidence(
            self._json("GET", f"/jobs/{job_id}/evidence", params={"nonce": nonce.hex()})
        )

    def start_job(self, job_id: str, authorization: TrainAuthorization) -> dict[str, Any]:
        """Start a job with the owner's signed manifest and the data key sealed for it."""
        if authorization.group is not None:
            raise UsageError("a service job runs on one enclave; it takes no group")
        body = {
            "manifest": b64encode(authorization.manifest.to_wire()),
            "sealed_data_key": b64encode(authorization.sealed_data_key),
        }
        if authorization.sealed_job_secret is not None:
            body["sealed_job_secret"] = b64encode(authorization.sealed_job_secret)
        return self._json("POST", f"/jobs/{job_id}/start", json=body)

    def wait_job(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_seconds: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the job is done (returned) or failed (JobFailed raised)."""
        last: tuple[Any, ...] | None = None
        while True:
            job = self._retrying(lambda: self.job(job_id))
            seen = (job["state"], job["step"], job["total"])
            if seen != last and on_update is not None:
                on_update(job)
            last = seen
            if job["state"] == "done":
                return job
            if job["state"] == "failed":
                raise JobFailed(job["reason"] or "unknown", job.get("message") or None)
            time.sleep(poll_seconds)

    def job_result(self, job_id: str, name: str, out: Path | None = None) -> bytes | None:
        """A finished job's `model`, `receipt`, `owner_report` or `owner_report_signature`.

        Returned, or written atomically to `out`.
        """
        return self._download(f"/jobs/{job_id}/results/{name}", out)

    # --- query sessions ----------------------------------------------------------------------

    def open_query_session(self, model: str) -> dict[str, Any]:
        return self._json("POST", "/query-sessions", json={"model": model})

    def query_session(self, session_id: str) -> dict[str, Any]:
        return self._json("GET", f"/query-sessions/{session_id}")

    def query_session_evidence(self, session_id: str, nonce: bytes) -> bytes:
        return _evidence(
            self._json(
                "GET", f"/query-sessions/{session_id}/evidence", params={"nonce": nonce.hex()}
            )
        )

    def query_session_call(
        self, session_id: str, name: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        """Relay one call; bytes in `args` and in the result are plain `bytes`."""
        body = {"args": json.loads(encode_message(args))}
        answer = self._json("POST", f"/query-sessions/{session_id}/calls/{name}", json=body)
        result = decode_message(json.dumps(answer.get("result", {})).encode("utf-8"))
        if not isinstance(result, dict):
            raise ServiceError("the service sent a malformed call result")
        return result

    def close_query_session(self, session_id: str) -> None:
        self._send("DELETE", f"/query-sessions/{session_id}")


def _evidence(answer: Any) -> bytes:
    try:
        return b64decode(answer["evidence"])
    except (KeyError, TypeError, ValueError):
        raise ServiceError("the service sent malformed evidence") from None


@contextmanager
def _progress_bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


class RemoteJobSession:
    """A service's training job seen as an enclave session (`train` via the job API).

    `call("train", TrainAuthorization(...).to_wire())` starts the job with the owner's
    signed manifest and sealed key, reports progress events while it runs, and returns
    the enclave's `TrainResult` (wire form) once it is done. The service adds the
    recipe, its statement and the dataset; the enclave checks them against the manifest.
    """

    def __init__(self, client: ServiceClient, job_id: str, *, poll_seconds: float = 1.0) -> None:
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
