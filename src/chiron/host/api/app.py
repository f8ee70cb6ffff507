"""The ASGI application: the routers, and one JSON error shape for every failure.

Every failure is answered as `{"error": ClassName, "message": one line}` with a 4xx
status chosen by the error's class (502/503 when an enclave or a backing service
failed); nothing a client sends can make a handler raise anything else.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

import chiron
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
)
from chiron.host.accounts import Unauthenticated
from chiron.host.api import enclave_routes, routes
from chiron.host.api.deps import BodyTooLarge
from chiron.host.api.schemas import ErrorOut
from chiron.host.service import Service

log = logging.getLogger("chiron.host.api")

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[ChironError], int], ...] = (
    (Unauthenticated, 401),
    (AccessDenied, 403),
    (NotFound, 404),
    (Conflict, 409),
    (JobFailed, 422),
    (AttestationError, 502),
    (EnclaveError, 502),
    (ServiceError, 503),
    (IntegrityError, 400),
    (InputError, 400),
    (ChironError, 400),
)


def _status(exc: ChironError) -> int:
    return next(code for cls, code in _STATUS if isinstance(exc, cls))


def error_response(exc: ChironError) -> JSONResponse:
    body = ErrorOut(
        error=type(exc).__name__ if not isinstance(exc, Unauthenticated) else "AccessDenied",
        message=str(exc),
        reason_class=exc.reason_class if isinstance(exc, JobFailed) else None,
    )
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(status_code=_status(exc), content=body.model_dump(), headers=headers)


def create_app(service: Service) -> FastAPI:
    """The ASGI application serving `service` (its lifetime is the caller's to manage)."""
    app = FastAPI(
        title="Chiron service",
        version=chiron.__version__,
        description=(
            "Untrusted host of Chiron: stores ciphertext, runs attested enclaves and relays "
            "calls to them. See docs/api.md."
        ),
    )
    app.state.service = service
    app.include_router(routes.router)
    app.include_router(enclave_routes.router)

    @app.exception_handler(ChironError)
    async def _chiron_error(request: Request, exc: ChironError) -> JSONResponse:
        if isinstance(exc, BodyTooLarge):
            response = error_response(InputError(str(exc)))
            response.status_code = 413
            return response
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content=ErrorOut(error="InputError", message=_validation_message(exc)).model_dump(),
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        error = "NotFound" if exc.status_code == 404 else "InputError"
        return JSONResponse(
            status_code=exc.status_code,
            content=ErrorOut(error=error, message=str(exc.detail)).model_dump(),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            status_code=500,
            content=ErrorOut(error="ServiceError", message="internal service error").model_dump(),
        )

    return app


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(problems)
