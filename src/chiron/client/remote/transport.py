"""The HTTP plumbing under `ServiceClient`: requests, errors, streamed downloads, retries.

Every failure becomes a one-line `chiron.core.errors` exception: the service's own
error class when it sent one (docs/api.md gives the shape), `ServiceError` when it
could not be reached or answered something else.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx

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

TRANSIENT_RETRIES = 5

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


class HttpTransport:
    """One service's base URL and token over httpx; `transport` lets tests plug in an app."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _retrying(self, request: Callable[[], Any]) -> Any:
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return request()
            except ServiceError:
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
                time.sleep(min(8.0, 0.25 * 2 ** (attempt + 1)))
        raise AssertionError("unreachable")
