"""The REST API (FastAPI): thin handlers over `Service`, one JSON error shape for everything.

Every failure is answered as `{"error": ClassName, "message": one line}` with a 4xx
status chosen by the error's class (502/503 when an enclave or a backing service
failed); nothing a client sends can make a handler raise anything else. Binary values
travel as base64 strings; relayed enclave calls use the boundary's own encoding, where
bytes are `{"$bytes": base64}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, get_args

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

import chiron
from chiron.core.contract import TrainAuthorization
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
)
from chiron.core.limits import MAX_SEALED_KEY_BYTES
from chiron.core.manifest import MAX_MANIFEST_BYTES
from chiron.core.recipe_statement import MAX_STATEMENT_BYTES
from chiron.enclave.boundary import decode_message, encode_message
from chiron.host import authorization
from chiron.host.accounts import Unauthenticated
from chiron.host.config import MAX_CHUNK_BYTES
from chiron.host.db import Account, Dataset, Job, Model, Recipe
from chiron.host.enclaves import parse_nonce
from chiron.host.jobs import RESULT_NAMES, status_text
from chiron.host.recipes import (
    MAX_DESCRIPTION_CHARS,
    MAX_RECIPE_BYTES,
    RecipeSubmission,
    RegisteredRecipe,
)
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
_HEX64 = r"^[0-9a-f]{64}$"
ResultName = Literal["model", "receipt", "owner_report", "owner_report_signature"]
assert set(get_args(ResultName)) == set(RESULT_NAMES)


def _b64_chars(limit: int) -> int:
    """The longest base64 text of at most `limit` bytes."""
    return 4 * -(-limit // 3)


class ErrorOut(BaseModel):
    error: str
    message: str
    reason_class: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    platform: str


class AccountOut(BaseModel):
    name: str
    role: str


class EvidenceOut(BaseModel):
    evidence: str = Field(description="the enclave's evidence, base64")


class SimRootOut(BaseModel):
    type: str
    version: int
    key: str = Field(description="Ed25519 public key, base64")
    fingerprint: str


class RecipeIn(BaseModel):
    # No field may name a provider: only the signed statement does.
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="lowercase letters, digits, '_' or '-'")
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    task: str = Field(default="classification", max_length=64)
    input_schema: dict[str, Any] | None = Field(
        default=None, description="DatasetSchema the recipe takes (input_shape, dtype, ...)"
    )
    source: str = Field(
        max_length=_b64_chars(MAX_RECIPE_BYTES),
        description="the recipe file, base64 (stays on the host)",
    )
    statement: str = Field(
        max_length=_b64_chars(MAX_STATEMENT_BYTES),
        description="the provider's signed recipe statement over `source`, base64",
    )


class RecipeOut(BaseModel):
    name: str
    description: str
    task: str
    input_schema: dict[str, Any] | None
    source_sha256: str
    statement: str | None = Field(
        description="the provider's signed statement, base64; verify it before believing it"
    )
    recipe_statement_sha256: str | None = Field(
        description="the statement's digest, as a job manifest names it"
    )
    version: str | None = Field(description="the version the provider signed")
    provider_public: str | None = Field(
        description="the 64-byte public identity the statement names, base64"
    )
    provider_fingerprint: str | None
    created: int


class UploadIn(BaseModel):
    kind: Literal["dataset", "model"]
    size: int = Field(gt=0, le=2**53)
    sha256: str = Field(pattern=_HEX64, description="SHA-256 of the whole file, hex")


class UploadOut(BaseModel):
    id: str
    kind: str
    size: int
    sha256: str
    offset: int = Field(description="bytes the service holds: where to continue")
    chunk_bytes: int = Field(description="largest chunk the service accepts")
    complete: bool
    result_id: str | None = Field(description="the dataset or model made from it")


class DatasetOut(BaseModel):
    id: str
    dataset_id: str
    schema_: dict[str, Any] = Field(alias="schema")
    record_count: int
    size: int
    sha256: str
    created: int


class ModelOut(BaseModel):
    id: str
    model_id: str
    job: str | None
    schema_: dict[str, Any] = Field(alias="schema")
    query_policy: dict[str, Any]
    size: int
    sha256: str
    created: int


class JobIn(BaseModel):
    recipe: str = Field(max_length=64, description="a registered recipe's name")
    dataset: str = Field(max_length=64, description="id of one of your datasets")


class JobStartIn(BaseModel):
    # Everything the enclave acts on is in the owner's signed manifest.
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        max_length=_b64_chars(MAX_MANIFEST_BYTES),
        description="the owner's signed job manifest (SignedManifest.to_wire()), base64",
    )
    sealed_data_key: str = Field(
        max_length=_b64_chars(MAX_SEALED_KEY_BYTES),
        description="the data key HPKE-sealed to the job's attested enclave, base64",
    )
    sealed_job_secret: str | None = Field(
        default=None,
        max_length=_b64_chars(MAX_SEALED_KEY_BYTES),
        description="the owner's secret for this job (checkpoints are sealed under it), "
        "HPKE-sealed like the data key, base64",
    )


class JobOut(BaseModel):
    id: str
    recipe: str
    dataset: str | None = Field(description="the owner's dataset (owner only)")
    state: str
    status: str
    step: int
    total: int
    reason: str | None
    message: str | None = Field(description="the enclave's failure message (owner only)")
    model: str | None
    created: int
    updated: int


class QuerySessionIn(BaseModel):
    model: str = Field(max_length=64, description="id of one of your models")


class QuerySessionOut(BaseModel):
    id: str
    model: str
    model_id: str


class CallIn(BaseModel):
    args: dict[str, Any] = Field(
        default_factory=dict, description='call arguments; bytes as {"$bytes": base64}'
    )


class CallOut(BaseModel):
    result: dict[str, Any]


def _decode(value: str, name: str) -> bytes:
    try:
        return b64decode(value)
    except (ValueError, UnicodeEncodeError):
        raise InputError(f"{name} is not valid base64") from None


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


def _recipe_out(registered: RegisteredRecipe) -> RecipeOut:
    recipe: Recipe = registered.record
    signed, data = registered.statement, registered.statement_bytes
    return RecipeOut(
        name=recipe.name,
        description=recipe.description,
        task=recipe.task,
        input_schema=None if recipe.input_schema is None else json.loads(recipe.input_schema),
        source_sha256=recipe.source_sha256,
        statement=None if data is None else b64encode(data),
        recipe_statement_sha256=None if signed is None else signed.sha256,
        version=None if signed is None else signed.statement.version,
        provider_public=None if signed is None else b64encode(signed.provider.to_bytes()),
        provider_fingerprint=None if signed is None else signed.provider.fingerprint,
        created=recipe.created,
    )


def _dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(
        id=dataset.id,
        dataset_id=dataset.dataset_id,
        schema=json.loads(dataset.schema),
        record_count=dataset.record_count,
        size=dataset.size,
        sha256=dataset.sha256,
        created=dataset.created,
    )


def _model_out(model: Model) -> ModelOut:
    return ModelOut(
        id=model.id,
        model_id=model.model_id,
        job=model.job_id,
        schema=json.loads(model.schema),
        query_policy=json.loads(model.query_policy),
        size=model.size,
        sha256=model.sha256,
        created=model.created,
    )


def _job_out(job: Job, account: Account) -> JobOut:
    private = authorization.sees_private_fields(account, job)
    return JobOut(
        id=job.id,
        recipe=job.recipe_name,
        dataset=job.dataset_pk if private else None,
        state=job.state,
        status=status_text(job),
        step=job.step,
        total=job.total,
        reason=job.reason,
        message=job.message if private else None,
        model=job.model_pk,
        created=job.created,
        updated=job.updated,
    )


def _service(request: Request) -> Service:
    return request.app.state.service


_bearer = HTTPBearer(auto_error=False, description="an account token (`chiron account create`)")


def _caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Account:
    return _service(request).authenticate(credentials.credentials if credentials else None)


def _download(service: Service, sha256: str, filename: str) -> StreamingResponse:
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


_OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 502, 503)
}

router = APIRouter(prefix="/v1", responses=_ERRORS)


@router.get("/health", response_model=HealthOut, tags=["service"])
def health(request: Request) -> HealthOut:
    return HealthOut(
        status="ok", version=chiron.__version__, platform=_service(request).config.platform
    )


@router.get("/whoami", response_model=AccountOut, tags=["service"])
def whoami(caller: Account = Depends(_caller)) -> AccountOut:
    return AccountOut(name=caller.name, role=caller.role)


@router.get("/attestation/evidence", response_model=EvidenceOut, tags=["attestation"])
def service_evidence(request: Request, nonce: str = Query(max_length=256)) -> EvidenceOut:
    """Evidence from the service's own enclave, for `chiron attest --url` (public)."""
    evidence = _service(request).attestation.evidence(parse_nonce(nonce))
    return EvidenceOut(evidence=b64encode(evidence))


@router.get("/attestation/sim-root", response_model=SimRootOut, tags=["attestation"])
def sim_root(request: Request) -> SimRootOut:
    """The simulated platform's root public key (public; only meaningful in simulation)."""
    return SimRootOut(**_service(request).sim_root().to_document())


# --- recipes -------------------------------------------------------------------


@router.post("/recipes", response_model=RecipeOut, status_code=201, tags=["recipes"])
def register_recipe(
    body: RecipeIn, request: Request, caller: Account = Depends(_caller)
) -> RecipeOut:
    submission = RecipeSubmission(
        name=body.name,
        description=body.description,
        task=body.task,
        input_schema=body.input_schema,
        source=_decode(body.source, "source"),
        statement=_decode(body.statement, "statement"),
    )
    return _recipe_out(_service(request).recipes.register(caller, submission))


@router.get("/recipes", response_model=list[RecipeOut], tags=["recipes"])
def list_recipes(request: Request, caller: Account = Depends(_caller)) -> list[RecipeOut]:
    return [_recipe_out(r) for r in _service(request).recipes.list(caller)]


@router.get("/recipes/{name}", response_model=RecipeOut, tags=["recipes"])
def get_recipe(name: str, request: Request, caller: Account = Depends(_caller)) -> RecipeOut:
    return _recipe_out(_service(request).recipes.get(caller, name))


# --- uploads -------------------------------------------------------------------


def _upload_out(service: Service, caller: Account, upload_id: str) -> UploadOut:
    upload, offset = service.uploads.get(caller, upload_id)
    return UploadOut(
        id=upload.id,
        kind=upload.kind,
        size=upload.size,
        sha256=upload.sha256,
        offset=offset,
        chunk_bytes=MAX_CHUNK_BYTES,
        complete=upload.result_id is not None,
        result_id=upload.result_id,
    )


@router.post("/uploads", response_model=UploadOut, status_code=201, tags=["uploads"])
def create_upload(
    body: UploadIn, request: Request, caller: Account = Depends(_caller)
) -> UploadOut:
    service = _service(request)
    upload = service.uploads.create(caller, kind=body.kind, size=body.size, sha256=body.sha256)
    return _upload_out(service, caller, upload.id)


@router.get("/uploads", response_model=list[UploadOut], tags=["uploads"])
def list_uploads(request: Request, caller: Account = Depends(_caller)) -> list[UploadOut]:
    """Your unfinished uploads (to resume one after a crash)."""
    service = _service(request)
    return [_upload_out(service, caller, u.id) for u in service.uploads.open_uploads(caller)]


@router.get("/uploads/{upload_id}", response_model=UploadOut, tags=["uploads"])
def get_upload(upload_id: str, request: Request, caller: Account = Depends(_caller)) -> UploadOut:
    return _upload_out(_service(request), caller, upload_id)


@router.put(
    "/uploads/{upload_id}/chunks",
    response_model=UploadOut,
    tags=["uploads"],
    openapi_extra={"requestBody": {"content": _OCTETS, "required": True}},
)
async def put_chunk(
    upload_id: str,
    request: Request,
    offset: int = Query(ge=0, le=2**53, description="where this chunk starts"),
    sha256: str = Query(pattern=_HEX64, description="SHA-256 of this chunk, hex"),
    caller: Account = Depends(_caller),
) -> UploadOut:
    data = await _read_body(request, MAX_CHUNK_BYTES)
    service = _service(request)
    await run_in_threadpool(
        service.uploads.write_chunk, caller, upload_id, offset=offset, data=data, sha256=sha256
    )
    return await run_in_threadpool(_upload_out, service, caller, upload_id)


class _TooLarge(InputError):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _TooLarge(f"a chunk holds at most {limit} bytes")
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > limit:
            raise _TooLarge(f"a chunk holds at most {limit} bytes")
    return bytes(body)


@router.post("/uploads/{upload_id}/complete", response_model=UploadOut, tags=["uploads"])
def complete_upload(
    upload_id: str, request: Request, caller: Account = Depends(_caller)
) -> UploadOut:
    service = _service(request)
    service.uploads.complete(caller, upload_id)
    return _upload_out(service, caller, upload_id)


@router.delete("/uploads/{upload_id}", status_code=204, tags=["uploads"])
def discard_upload(
    upload_id: str, request: Request, caller: Account = Depends(_caller)
) -> Response:
    _service(request).uploads.discard(caller, upload_id)
    return Response(status_code=204)


# --- datasets and models -------------------------------------------------------


@router.get("/datasets", response_model=list[DatasetOut], tags=["datasets"])
def list_datasets(request: Request, caller: Account = Depends(_caller)) -> list[DatasetOut]:
    return [_dataset_out(d) for d in _service(request).datasets(caller)]


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, tags=["datasets"])
def get_dataset(
    dataset_id: str, request: Request, caller: Account = Depends(_caller)
) -> DatasetOut:
    return _dataset_out(_service(request).dataset(caller, dataset_id))


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(request: Request, caller: Account = Depends(_caller)) -> list[ModelOut]:
    return [_model_out(m) for m in _service(request).models(caller)]


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"])
def get_model(model_id: str, request: Request, caller: Account = Depends(_caller)) -> ModelOut:
    return _model_out(_service(request).model(caller, model_id))


@router.get(
    "/models/{model_id}/file",
    response_class=StreamingResponse,
    responses={200: {"content": _OCTETS}},
    tags=["models"],
)
def download_model(model_id: str, request: Request, caller: Account = Depends(_caller)) -> Response:
    service = _service(request)
    model = service.model_file(caller, model_id)
    return _download(service, model.sha256, f"{model.id}.chm")


# --- jobs ----------------------------------------------------------------------


@router.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"])
def create_job(body: JobIn, request: Request, caller: Account = Depends(_caller)) -> JobOut:
    job = _service(request).jobs.create(caller, recipe_name=body.recipe, dataset_pk=body.dataset)
    return _job_out(job, caller)


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(request: Request, caller: Account = Depends(_caller)) -> list[JobOut]:
    return [_job_out(j, caller) for j in _service(request).jobs.list(caller)]


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: str, request: Request, caller: Account = Depends(_caller)) -> JobOut:
    return _job_out(_service(request).jobs.get(caller, job_id), caller)


@router.get("/jobs/{job_id}/evidence", response_model=EvidenceOut, tags=["jobs"])
def job_evidence(
    job_id: str,
    request: Request,
    nonce: str = Query(max_length=256),
    caller: Account = Depends(_caller),
) -> EvidenceOut:
    """Evidence from the job's own training enclave, before it starts (the job's owner)."""
    evidence = _service(request).jobs.evidence(caller, job_id, parse_nonce(nonce))
    return EvidenceOut(evidence=b64encode(evidence))


@router.post("/jobs/{job_id}/start", response_model=JobOut, tags=["jobs"])
def start_job(
    job_id: str, body: JobStartIn, request: Request, caller: Account = Depends(_caller)
) -> JobOut:
    """Queue the job's `train` call with the owner's manifest and sealed data key."""
    authorization = TrainAuthorization.from_wire(
        {
            "manifest": _decode(body.manifest, "manifest"),
            "sealed_data_key": _decode(body.sealed_data_key, "sealed_data_key"),
            "sealed_job_secret": (
                None
                if body.sealed_job_secret is None
                else _decode(body.sealed_job_secret, "sealed_job_secret")
            ),
        }
    )
    return _job_out(_service(request).jobs.start(caller, job_id, authorization), caller)


@router.get(
    "/jobs/{job_id}/results/{name}",
    response_class=StreamingResponse,
    responses={200: {"content": _OCTETS}},
    tags=["jobs"],
)
def job_result(
    job_id: str,
    name: ResultName,
    request: Request,
    caller: Account = Depends(_caller),
) -> Response:
    service = _service(request)
    return _download(service, service.jobs.result(caller, job_id, name), f"{job_id}.{name}")


# --- query sessions --------------------------------------------------------------


@router.post(
    "/query-sessions", response_model=QuerySessionOut, status_code=201, tags=["query sessions"]
)
def create_query_session(
    body: QuerySessionIn, request: Request, caller: Account = Depends(_caller)
) -> QuerySessionOut:
    session, model = _service(request).queries.create(caller, body.model)
    return QuerySessionOut(id=session.id, model=model.id, model_id=model.model_id)


@router.get("/query-sessions/{session_id}", response_model=QuerySessionOut, tags=["query sessions"])
def get_query_session(
    session_id: str, request: Request, caller: Account = Depends(_caller)
) -> QuerySessionOut:
    service = _service(request)
    session = service.queries.get(caller, session_id)
    model = service.model(caller, session.model_pk)
    return QuerySessionOut(id=session.id, model=model.id, model_id=model.model_id)


@router.get(
    "/query-sessions/{session_id}/evidence", response_model=EvidenceOut, tags=["query sessions"]
)
def query_session_evidence(
    session_id: str,
    request: Request,
    nonce: str = Query(max_length=256),
    caller: Account = Depends(_caller),
) -> EvidenceOut:
    """Evidence from the session's query enclave (whoever sees the session)."""
    evidence = _service(request).queries.evidence(caller, session_id, parse_nonce(nonce))
    return EvidenceOut(evidence=b64encode(evidence))


@router.post(
    "/query-sessions/{session_id}/calls/{name}", response_model=CallOut, tags=["query sessions"]
)
def query_session_call(
    session_id: str,
    name: Literal["load_model", "provision_share", "query", "evaluate"],
    body: CallIn,
    request: Request,
    caller: Account = Depends(_caller),
) -> CallOut:
    """Relay one call to the query enclave; the service adds the model or dataset path."""
    args = decode_message(json.dumps(body.args).encode("utf-8"))
    if not isinstance(args, dict):
        raise InputError("args must be an object")
    result = _service(request).queries.call(caller, session_id, name, args)
    return CallOut(result=json.loads(encode_message(result)))


@router.delete("/query-sessions/{session_id}", status_code=204, tags=["query sessions"])
def close_query_session(
    session_id: str, request: Request, caller: Account = Depends(_caller)
) -> Response:
    _service(request).queries.close(caller, session_id)
    return Response(status_code=204)


# --- the application ------------------------------------------------------------------


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
    app.include_router(router)

    @app.exception_handler(ChironError)
    async def _chiron_error(request: Request, exc: ChironError) -> JSONResponse:
        if isinstance(exc, _TooLarge):
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
