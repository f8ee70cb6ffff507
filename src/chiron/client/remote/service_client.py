"""`ServiceClient`: every endpoint of a Chiron service's REST API (docs/api.md), typed.

Uploads resume where the service says they stopped and survive the service restarting;
downloads are checked against the SHA-256 the service names. The HTTP plumbing and the
error mapping are `transport`'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chiron.client.remote.file_digests import (
    DEFAULT_CHUNK_BYTES,
    FileDigests,
    digests_of,
    read_into,
)
from chiron.client.remote.progress import progress_bar
from chiron.client.remote.transport import TRANSIENT_RETRIES, HttpTransport
from chiron.core.contract import TrainAuthorization
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import (
    Conflict,
    InputError,
    IntegrityError,
    ServiceError,
    UsageError,
)
from chiron.core.job_outcome import job_outcome
from chiron.enclave.boundary import decode_message, encode_message

# A chunk's body goes to the HTTP stack in pieces of this size: after each partial
# socket send it copies what remains of the piece, which for one large piece costs
# time quadratic in its size.
_SEND_PIECE = 1024 * 1024
Buffer = bytes | bytearray | memoryview


class ServiceClient(HttpTransport):
    """A typed client for one Chiron service: `ServiceClient(url, token)`."""

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

    def put_chunk(
        self,
        upload_id: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        sha256: str | None = None,
    ) -> dict[str, Any]:
        """Send one chunk; `sha256` is its digest if already known (else computed here)."""
        view = memoryview(data).cast("B")
        digest = sha256 or hashlib.sha256(view).hexdigest()
        pieces = (view[i : i + _SEND_PIECE] for i in range(0, len(view), _SEND_PIECE))
        return self._put_chunk(upload_id, offset, len(view), digest, pieces)

    def _put_chunk(
        self, upload_id: str, offset: int, length: int, sha256: str, pieces: Iterator[Buffer]
    ) -> dict[str, Any]:
        return self._json(
            "PUT",
            f"/uploads/{upload_id}/chunks",
            params={"offset": offset, "sha256": sha256},
            content=pieces,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
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
        return self._upload(path, kind, digests_of(path, chunk_bytes), progress=progress)

    def _upload(
        self, path: Path, kind: str, digests: FileDigests, *, progress: bool
    ) -> dict[str, Any]:
        size, chunk_bytes = digests.size, digests.chunk_bytes
        upload = self._resumable(kind, size, digests.sha256)
        upload_id = upload["id"]
        with (
            progress_bar(progress, f"uploading {path.name}", size) as advance,
            open(path, "rb", buffering=0) as source,
        ):
            advance(upload["offset"])
            attempts = 0
            buffer: memoryview | None = None
            while not upload["complete"] and upload["offset"] < size:
                offset = upload["offset"]
                length = min(chunk_bytes, upload["chunk_bytes"], size - offset)
                # A chunk whose digest the first read gave goes straight from the file to
                # the socket. Any other (a resumed offset, a retry, in case the file changed
                # meanwhile) is read into memory and hashed, and exactly those bytes are sent.
                known = digests.of_chunk(offset, length) if not attempts else None
                try:
                    if known is not None:
                        pieces = _file_pieces(source, path, offset, length)
                        upload = self._put_chunk(upload_id, offset, length, known, pieces)
                    else:
                        if buffer is None:
                            buffer = memoryview(bytearray(min(chunk_bytes, size)))
                        source.seek(offset)
                        data = buffer[: read_into(source, buffer[:length])]
                        upload = self.put_chunk(upload_id, offset, data)
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

    def upload_dataset(
        self, path: str | os.PathLike[str], *, progress: bool = True
    ) -> dict[str, Any]:
        """Upload an encrypted dataset (.chd) unless it is there already; return its record."""
        digests = digests_of(Path(path), DEFAULT_CHUNK_BYTES)
        for dataset in self.datasets():
            if dataset["sha256"] == digests.sha256:
                return dataset
        done = self._upload(Path(path), "dataset", digests, progress=progress)
        return self.dataset(done["result_id"])

    def upload_model(
        self, path: str | os.PathLike[str], *, progress: bool = True
    ) -> dict[str, Any]:
        """Upload an escrowed model file unless it is there already; return its record."""
        digests = digests_of(Path(path), DEFAULT_CHUNK_BYTES)
        for model in self.models():
            if model["sha256"] == digests.sha256:
                return model
        done = self._upload(Path(path), "model", digests, progress=progress)
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

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """Give an interrupted job a fresh training enclave; the job is `created` again."""
        return self._json("POST", f"/jobs/{job_id}/resume")

    def job_manifest(self, job_id: str) -> bytes:
        """The job's latest signed manifest as the service kept it (verify it before use)."""
        data = self._download(f"/jobs/{job_id}/manifest", None)
        assert data is not None
        return data

    def wait_job(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_seconds: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the job is done (returned) or failed (JobFailed raised).

        An interrupted job (its enclave was lost) raises Conflict naming how to resume it.
        """
        last: tuple[Any, ...] | None = None
        while True:
            job = self._retrying(lambda: self.job(job_id))
            seen = (job["state"], job["step"], job["total"])
            if seen != last and on_update is not None:
                on_update(job)
            last = seen
            done = job_outcome(job, f"chiron service jobs resume {job_id}")
            if done is not None:
                return done
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


def _file_pieces(source: io.RawIOBase, path: Path, offset: int, length: int) -> Iterator[bytes]:
    """`length` bytes of `source` from `offset`, read as the HTTP stack asks for them.

    Each piece is a fresh `bytes` read from the file, which the HTTP stack sends as it
    is; a view into a reused buffer would be copied into one first.
    """
    source.seek(offset)
    while length:
        piece = source.read(min(_SEND_PIECE, length))
        if not piece:
            raise InputError(f"{path} got shorter while it was being uploaded")
        length -= len(piece)
        yield piece


def _evidence(answer: Any) -> bytes:
    try:
        return b64decode(answer["evidence"])
    except (KeyError, TypeError, ValueError):
        raise ServiceError("the service sent malformed evidence") from None
