"""What every route needs from a request: the service, the caller, decoded and bounded input.

Also the one way an artifact leaves the store (a streamed download naming its SHA-256).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chiron.core.encoding import b64decode
from chiron.core.errors import InputError, NotFound
from chiron.host.api.schemas import ErrorOut
from chiron.host.db import Account
from chiron.host.service import Service

OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 502, 503)
}


class BodyTooLarge(InputError):
    """A request body over its limit: answered 413 (see `app`)."""


def decode(value: str, name: str) -> bytes:
    try:
        return b64decode(value)
    except (ValueError, UnicodeEncodeError):
        raise InputError(f"{name} is not valid base64") from None


def service_of(request: Request) -> Service:
    return request.app.state.service


_bearer = HTTPBearer(
    auto_error=False, description="an account token (`chiron service account create`)"
)


def current_account(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Account:
    return service_of(request).authenticate(credentials.credentials if credentials else None)


def download(service: Service, sha256: str, filename: str) -> StreamingResponse:
    if not service.store.exists(sha256):
        raise NotFound("the artifact is missing from the store")
    return StreamingResponse(
        service.store.iter_bytes(sha256),
        media_type="application/octet-stream",
        headers={
            "X-Content-SHA256": sha256,
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


@dataclass(frozen=True)
class ReceivedBody:
    """A request body of at most the route's limit, as the blocks it arrived in."""

    blocks: tuple[bytes, ...]
    size: int
    sha256: str


async def read_body(request: Request, limit: int) -> ReceivedBody:
    """Receive a body, hashing each block as it arrives.

    Hashing overlaps the transfer instead of following it. The blocks are kept as they
    came, not joined: a growing buffer would be copied again and again as it moves, and
    the blocks can be written out as they are. Memory grows with what arrives, not with
    what Content-Length announces.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"a chunk holds at most {limit} bytes")
    blocks: list[bytes] = []
    size = 0
    digest = hashlib.sha256()
    async for block in request.stream():
        size += len(block)
        if size > limit:
            raise BodyTooLarge(f"a chunk holds at most {limit} bytes")
        if block:
            blocks.append(block)
            digest.update(block)
    return ReceivedBody(tuple(blocks), size, digest.hexdigest())
