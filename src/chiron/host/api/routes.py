"""The REST API's routes for the service itself and its stored things.

Health, identity, the service enclave's evidence, recipes, resumable uploads, datasets
and models. Handlers only translate: a request body into the service's call, a record
into its response schema. Who may see or do what is decided in `host.authorization`,
what a failure answers in `host.api.app`; jobs and query sessions are in
`host.api.enclave_routes`.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

import chiron
from chiron.core.encoding import b64encode
from chiron.host.api.deps import (
    ERRORS,
    OCTETS,
    current_account,
    decode,
    download,
    read_body,
    service_of,
)
from chiron.host.api.schemas import (
    HEX64,
    AccountOut,
    DatasetOut,
    EvidenceOut,
    HealthOut,
    ModelOut,
    RecipeIn,
    RecipeOut,
    SimRootOut,
    UploadIn,
    UploadOut,
)
from chiron.host.config import MAX_CHUNK_BYTES
from chiron.host.db import Account, Dataset, Model, Recipe
from chiron.host.enclaves import parse_nonce
from chiron.host.recipes import RecipeSubmission, RegisteredRecipe
from chiron.host.service import Service


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


router = APIRouter(prefix="/v1", responses=ERRORS)


@router.get("/health", response_model=HealthOut, tags=["service"])
def health(request: Request) -> HealthOut:
    return HealthOut(
        status="ok", version=chiron.__version__, platform=service_of(request).config.platform
    )


@router.get("/whoami", response_model=AccountOut, tags=["service"])
def whoami(caller: Account = Depends(current_account)) -> AccountOut:
    return AccountOut(name=caller.name, role=caller.role)


@router.get("/attestation/evidence", response_model=EvidenceOut, tags=["attestation"])
def service_evidence(request: Request, nonce: str = Query(max_length=256)) -> EvidenceOut:
    """Evidence from the service's own enclave, for `chiron attest --url` (public)."""
    evidence = service_of(request).attestation.evidence(parse_nonce(nonce))
    return EvidenceOut(evidence=b64encode(evidence))


@router.get("/attestation/sim-root", response_model=SimRootOut, tags=["attestation"])
def sim_root(request: Request) -> SimRootOut:
    """The simulated platform's root public key (public; only meaningful in simulation)."""
    return SimRootOut(**service_of(request).sim_root().to_document())


# --- recipes -------------------------------------------------------------------


@router.post("/recipes", response_model=RecipeOut, status_code=201, tags=["recipes"])
def register_recipe(
    body: RecipeIn, request: Request, caller: Account = Depends(current_account)
) -> RecipeOut:
    submission = RecipeSubmission(
        name=body.name,
        description=body.description,
        task=body.task,
        input_schema=body.input_schema,
        source=decode(body.source, "source"),
        statement=decode(body.statement, "statement"),
    )
    return _recipe_out(service_of(request).recipes.register(caller, submission))


@router.get("/recipes", response_model=list[RecipeOut], tags=["recipes"])
def list_recipes(request: Request, caller: Account = Depends(current_account)) -> list[RecipeOut]:
    return [_recipe_out(r) for r in service_of(request).recipes.list(caller)]


@router.get("/recipes/{name}", response_model=RecipeOut, tags=["recipes"])
def get_recipe(
    name: str, request: Request, caller: Account = Depends(current_account)
) -> RecipeOut:
    return _recipe_out(service_of(request).recipes.get(caller, name))


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
    body: UploadIn, request: Request, caller: Account = Depends(current_account)
) -> UploadOut:
    service = service_of(request)
    upload = service.uploads.create(caller, kind=body.kind, size=body.size, sha256=body.sha256)
    return _upload_out(service, caller, upload.id)


@router.get("/uploads", response_model=list[UploadOut], tags=["uploads"])
def list_uploads(request: Request, caller: Account = Depends(current_account)) -> list[UploadOut]:
    """Your unfinished uploads (to resume one after a crash)."""
    service = service_of(request)
    return [_upload_out(service, caller, u.id) for u in service.uploads.open_uploads(caller)]


@router.get("/uploads/{upload_id}", response_model=UploadOut, tags=["uploads"])
def get_upload(
    upload_id: str, request: Request, caller: Account = Depends(current_account)
) -> UploadOut:
    return _upload_out(service_of(request), caller, upload_id)


@router.put(
    "/uploads/{upload_id}/chunks",
    response_model=UploadOut,
    tags=["uploads"],
    openapi_extra={"requestBody": {"content": OCTETS, "required": True}},
)
async def put_chunk(
    upload_id: str,
    request: Request,
    offset: int = Query(ge=0, le=2**53, description="where this chunk starts"),
    sha256: str = Query(pattern=HEX64, description="SHA-256 of this chunk, hex"),
    caller: Account = Depends(current_account),
) -> UploadOut:
    body = await read_body(request, MAX_CHUNK_BYTES)
    service = service_of(request)
    await run_in_threadpool(
        service.uploads.write_chunk,
        caller,
        upload_id,
        offset=offset,
        data=body.blocks,
        sha256=sha256,
        data_sha256=body.sha256,
    )
    return await run_in_threadpool(_upload_out, service, caller, upload_id)


@router.post("/uploads/{upload_id}/complete", response_model=UploadOut, tags=["uploads"])
def complete_upload(
    upload_id: str, request: Request, caller: Account = Depends(current_account)
) -> UploadOut:
    service = service_of(request)
    service.uploads.complete(caller, upload_id)
    return _upload_out(service, caller, upload_id)


@router.delete("/uploads/{upload_id}", status_code=204, tags=["uploads"])
def discard_upload(
    upload_id: str, request: Request, caller: Account = Depends(current_account)
) -> Response:
    service_of(request).uploads.discard(caller, upload_id)
    return Response(status_code=204)


# --- datasets and models -------------------------------------------------------


@router.get("/datasets", response_model=list[DatasetOut], tags=["datasets"])
def list_datasets(request: Request, caller: Account = Depends(current_account)) -> list[DatasetOut]:
    return [_dataset_out(d) for d in service_of(request).datasets(caller)]


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, tags=["datasets"])
def get_dataset(
    dataset_id: str, request: Request, caller: Account = Depends(current_account)
) -> DatasetOut:
    return _dataset_out(service_of(request).dataset(caller, dataset_id))


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(request: Request, caller: Account = Depends(current_account)) -> list[ModelOut]:
    return [_model_out(m) for m in service_of(request).models(caller)]


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"])
def get_model(
    model_id: str, request: Request, caller: Account = Depends(current_account)
) -> ModelOut:
    return _model_out(service_of(request).model(caller, model_id))


@router.get(
    "/models/{model_id}/file",
    response_class=StreamingResponse,
    responses={200: {"content": OCTETS}},
    tags=["models"],
)
def download_model(
    model_id: str, request: Request, caller: Account = Depends(current_account)
) -> Response:
    service = service_of(request)
    model = service.model_file(caller, model_id)
    return download(service, model.sha256, f"{model.id}.chm")
