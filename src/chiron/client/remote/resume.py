"""Resuming a service job after the client, its enclave or the service was killed.

The owner's client never has to restate the job: the service keeps the job's latest
signed manifest, and the client believes it only because the owner's own signature on
it verifies and it names this job. From its state the job is then

- `interrupted` (its enclave was lost): the client asks the service for a fresh
  enclave, attests it, and signs a new manifest with the same job binding (job id,
  recipe statement, dataset, owner, plan) naming the new enclave; it seals the data key
  and the job secret to it. The job secret is derived from the owner's key and the
  binding, so the new enclave opens the job's sealed checkpoints and continues;
- `created` again after a resume whose client died before starting it: the same;
- `queued`, `running` or `done` (only the client died): the client waits and checks the
  result against the manifest and the enclave it names, as the first client would have.

A failed or abandoned job has ended; it does not resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chiron.client.attestation import SimRootSource
from chiron.client.remote.service_client import ServiceClient
from chiron.client.remote.sessions import RemoteJobSession
from chiron.client.training import TrainOutcome, check_training_result, run_training
from chiron.core import dataset as container
from chiron.core.attestation import Policy
from chiron.core.contract import TrainResult
from chiron.core.encoding import b64decode
from chiron.core.errors import Conflict, InputError, IntegrityError
from chiron.core.keys import Identity, PublicIdentity, load_data_key
from chiron.core.manifest import DatasetRef, SignedManifest
from chiron.core.recipe_statement import SignedRecipeStatement

RESTARTABLE = ("interrupted", "created")
ATTACHABLE = ("queued", "running", "done")


def resume_job(
    client: ServiceClient,
    job_id: str,
    *,
    owner: Identity,
    dataset: Path,
    data_key_path: Path,
    policy: Policy,
    state_dir: Path,
    sim_roots: SimRootSource | None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    poll_seconds: float = 1.0,
) -> TrainOutcome:
    """Continue one of the owner's service jobs to its verified result."""
    job = client.job(job_id)
    if job["state"] not in RESTARTABLE + ATTACHABLE:
        raise Conflict(f"job {job_id} is {job['status']}; only an interrupted job resumes")
    manifest = owners_manifest(client, job_id, owner)
    signed = manifest.manifest
    header, header_sha256 = container.read_dataset_header_and_digest(dataset)
    dataset_ref = DatasetRef(header.dataset_id, header_sha256)
    data_key = load_data_key(data_key_path)
    if dataset_ref != signed.dataset:
        raise InputError(f"{dataset} is not the dataset job {job_id} trains on")
    if data_key.dataset_id != signed.dataset.dataset_id:
        raise InputError(f"{data_key_path} is not the key of the dataset job {job_id} trains on")
    session = RemoteJobSession(client, job_id, poll_seconds=poll_seconds)
    if job["state"] in ATTACHABLE:
        return _attach(session, manifest, owner, on_event)
    if job["state"] == "interrupted":
        client.resume_job(job_id)
    statement = SignedRecipeStatement.from_bytes(client.recipe_statement(job["recipe"]))
    if statement.sha256 != signed.recipe_statement_sha256:
        raise IntegrityError(
            f"recipe {job['recipe']!r} now has another provider statement than job {job_id}"
        )
    return run_training(
        session,
        job_id=job_id,
        data_key=data_key,
        dataset=dataset_ref,
        owner=owner,
        statement=statement,
        plan=signed.plan,
        policy=policy,
        state_dir=state_dir,
        on_event=on_event,
        sim_roots=sim_roots,
    )


def owners_manifest(client: ServiceClient, job_id: str, owner: Identity) -> SignedManifest:
    """The job's latest manifest, believed only if this owner signed it for this job."""
    try:
        manifest = SignedManifest.from_wire(client.job_manifest(job_id))
    except InputError:
        raise IntegrityError(f"the service sent a malformed manifest for job {job_id}") from None
    if manifest.manifest.owner != owner.public:
        raise IntegrityError(f"the manifest of job {job_id} is not signed by this owner key")
    if manifest.manifest.job_id != job_id:
        raise IntegrityError(f"the service sent the manifest of another job than {job_id}")
    return manifest


def _attach(
    session: RemoteJobSession,
    manifest: SignedManifest,
    owner: Identity,
    on_event: Callable[[dict[str, Any]], None] | None,
) -> TrainOutcome:
    """Wait for a job another client started, and check its result as that client would."""
    result = TrainResult.from_wire(session.wait(on_event))
    enclave = _receipt_signer(result.receipt)
    # The owner attested the enclave whose fingerprint it signed into the manifest.
    if enclave.fingerprint not in manifest.manifest.enclaves:
        raise IntegrityError("the receipt is not signed by the enclave the manifest names")
    return check_training_result(result, manifest, enclave, owner)


def _receipt_signer(receipt: bytes | None) -> PublicIdentity:
    try:
        statement = json.loads(receipt or b"")["statement"]
        return PublicIdentity.from_bytes(b64decode(statement["enclave_identity"]))
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("the receipt is malformed") from None
