"""The routes that drive enclaves: training jobs and query sessions.

A job's routes create it (its training enclave starts and waits to be attested), hand
it the owner's signed manifest and sealed keys, and serve its results; a query
session's relay calls to its query enclave. Relayed calls use the boundary's own
encoding, where bytes are `{"$bytes": base64}`.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from chiron.core.contract import TrainAuthorization
from chiron.core.encoding import b64encode
from chiron.core.errors import InputError
from chiron.enclave.boundary import decode_message, encode_message
from chiron.host.api.deps import (
    ERRORS,
    OCTETS,
    current_account,
    decode,
    download,
    service_of,
)
from chiron.host.api.schemas import (
    CallIn,
    CallOut,
    EvidenceOut,
    JobIn,
    JobOut,
    JobStartIn,
    QuerySessionIn,
    QuerySessionOut,
    ResultName,
)
from chiron.host.db import Account, Job
from chiron.host.enclaves import parse_nonce
from chiron.host.job_records import job_view

router = APIRouter(prefix="/v1", responses=ERRORS)


def _job_out(job: Job, account: Account) -> JobOut:
    return JobOut(**job_view(job, account))


# --- jobs ----------------------------------------------------------------------


@router.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"])
def create_job(body: JobIn, request: Request, caller: Account = Depends(current_account)) -> JobOut:
    job = service_of(request).jobs.create(caller, recipe_name=body.recipe, dataset_pk=body.dataset)
    return _job_out(job, caller)


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(request: Request, caller: Account = Depends(current_account)) -> list[JobOut]:
    return [_job_out(j, caller) for j in service_of(request).jobs.list(caller)]


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: str, request: Request, caller: Account = Depends(current_account)) -> JobOut:
    return _job_out(service_of(request).jobs.get(caller, job_id), caller)


@router.get("/jobs/{job_id}/evidence", response_model=EvidenceOut, tags=["jobs"])
def job_evidence(
    job_id: str,
    request: Request,
    nonce: str = Query(max_length=256),
    caller: Account = Depends(current_account),
) -> EvidenceOut:
    """Evidence from the job's own training enclave, before it starts (the job's owner)."""
    evidence = service_of(request).jobs.evidence(caller, job_id, parse_nonce(nonce))
    return EvidenceOut(evidence=b64encode(evidence))


@router.post("/jobs/{job_id}/start", response_model=JobOut, tags=["jobs"])
def start_job(
    job_id: str, body: JobStartIn, request: Request, caller: Account = Depends(current_account)
) -> JobOut:
    """Queue the job's `train` call with the owner's manifest and sealed data key."""
    authorization = TrainAuthorization.from_wire(
        {
            "manifest": decode(body.manifest, "manifest"),
            "sealed_data_key": decode(body.sealed_data_key, "sealed_data_key"),
            "sealed_job_secret": (
                None
                if body.sealed_job_secret is None
                else decode(body.sealed_job_secret, "sealed_job_secret")
            ),
        }
    )
    return _job_out(service_of(request).jobs.start(caller, job_id, authorization), caller)


@router.post("/jobs/{job_id}/resume", response_model=JobOut, tags=["jobs"])
def resume_job(job_id: str, request: Request, caller: Account = Depends(current_account)) -> JobOut:
    """Give an interrupted job a fresh training enclave: the job is `created` again.

    The owner attests the new enclave and starts it under a new manifest for the same
    job (the same job binding); the enclave continues from the job's sealed checkpoints.
    """
    return _job_out(service_of(request).jobs.resume(caller, job_id), caller)


@router.get(
    "/jobs/{job_id}/manifest",
    response_class=StreamingResponse,
    responses={200: {"content": OCTETS}},
    tags=["jobs"],
)
def job_manifest(
    job_id: str, request: Request, caller: Account = Depends(current_account)
) -> Response:
    """The job's latest signed manifest (`SignedManifest.to_wire()`), for its owner."""
    service = service_of(request)
    return download(service, service.jobs.manifest(caller, job_id), f"{job_id}.manifest")


@router.get(
    "/jobs/{job_id}/results/{name}",
    response_class=StreamingResponse,
    responses={200: {"content": OCTETS}},
    tags=["jobs"],
)
def job_result(
    job_id: str,
    name: ResultName,
    request: Request,
    caller: Account = Depends(current_account),
) -> Response:
    service = service_of(request)
    return download(service, service.jobs.result(caller, job_id, name), f"{job_id}.{name}")


# --- query sessions --------------------------------------------------------------


@router.post(
    "/query-sessions", response_model=QuerySessionOut, status_code=201, tags=["query sessions"]
)
def create_query_session(
    body: QuerySessionIn, request: Request, caller: Account = Depends(current_account)
) -> QuerySessionOut:
    session, model = service_of(request).queries.create(caller, body.model)
    return QuerySessionOut(id=session.id, model=model.id, model_id=model.model_id)


@router.get("/query-sessions/{session_id}", response_model=QuerySessionOut, tags=["query sessions"])
def get_query_session(
    session_id: str, request: Request, caller: Account = Depends(current_account)
) -> QuerySessionOut:
    service = service_of(request)
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
    caller: Account = Depends(current_account),
) -> EvidenceOut:
    """Evidence from the session's query enclave (whoever sees the session)."""
    evidence = service_of(request).queries.evidence(caller, session_id, parse_nonce(nonce))
    return EvidenceOut(evidence=b64encode(evidence))


@router.post(
    "/query-sessions/{session_id}/calls/{name}", response_model=CallOut, tags=["query sessions"]
)
def query_session_call(
    session_id: str,
    name: Literal["load_model", "provision_share", "query", "evaluate"],
    body: CallIn,
    request: Request,
    caller: Account = Depends(current_account),
) -> CallOut:
    """Relay one call to the query enclave; the service adds the model or dataset path."""
    args = decode_message(json.dumps(body.args).encode("utf-8"))
    if not isinstance(args, dict):
        raise InputError("args must be an object")
    result = service_of(request).queries.call(caller, session_id, name, args)
    return CallOut(result=json.loads(encode_message(result)))


@router.delete("/query-sessions/{session_id}", status_code=204, tags=["query sessions"])
def close_query_session(
    session_id: str, request: Request, caller: Account = Depends(current_account)
) -> Response:
    service_of(request).queries.close(caller, session_id)
    return Response(status_code=204)
