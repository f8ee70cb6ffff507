"""The owner's side of a training job on a host: start it, or continue it after a kill.

A host is a Chiron service over REST (`--url`) or the same service code in this process
(`--local`, `chiron.host.local.LocalHost`); both answer `client.sessions.JobHost`, so
everything here is written once and a job resumes the same way on either.

The owner's client never has to restate a job: the host keeps the job's latest signed
manifest, and the client believes it only because the owner's own signature on it
verifies and it names this job. From its state the job is then

- `interrupted` (its enclave was lost: the client, the enclave or the service was
  killed): the client asks the host for a fresh enclave, attests it, and signs a new
  manifest with the same job binding (job id, recipe statement, dataset, owner, plan)
  naming the new enclave; it seals the data key and the job secret to it. The job
  secret is derived from the owner's key and the binding, so the new enclave opens the
  job's sealed checkpoints and continues;
- `created` again after a resume whose client died before starting it: the same;
- `queued`, `running` or `done` (only the client died): the client waits and checks the
  result against the manifest and the enclave it names, as the first client would have.

A failed or abandoned job has ended; it does not resume. Training again what an
unfinished job of this owner already trains (same recipe statement, dataset and plan)
continues that job rather than starting another.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chiron.client import signed_jobs
from chiron.client.attestation import SimRootSource
from chiron.client.remote.sessions import RemoteJobSession
from chiron.client.sessions import JobHost
from chiron.client.training import TrainOutcome, check_training_result, run_training
from chiron.core import dataset as container
from chiron.core.attestation import Policy
from chiron.core.contract import TrainResult
from chiron.core.encoding import b64decode
from chiron.core.errors import Conflict, InputError, IntegrityError, NotFound
from chiron.core.keys import DataKey, Identity, PublicIdentity, load_data_key
from chiron.core.manifest import DatasetRef, Plan, SignedManifest
from chiron.core.recipe_statement import SignedRecipeStatement

RESTARTABLE = ("interrupted", "created")
ATTACHABLE = ("queued", "running", "done")
EventHandler = Callable[[dict[str, Any]], None]


def train_on_host(
    host: JobHost,
    *,
    recipe: str,
    dataset: str,
    data_key: DataKey,
    dataset_ref: DatasetRef,
    owner: Identity,
    statement: SignedRecipeStatement,
    plan: Plan,
    policy: Policy,
    state_dir: Path,
    sim_roots: SimRootSource | None,
    on_event: EventHandler | None = None,
    poll_seconds: float = 1.0,
) -> TrainOutcome:
    """Train `recipe` on the host's `dataset` (its id there), to a verified result.

    An unfinished job of this owner with the same recipe statement, dataset and plan
    is continued (resumed, or waited for); otherwise a new job is created.
    """
    common: dict[str, Any] = {
        "data_key": data_key,
        "dataset": dataset_ref,
        "owner": owner,
        "statement": statement,
        "plan": plan,
        "policy": policy,
        "state_dir": state_dir,
        "on_event": on_event,
        "sim_roots": sim_roots,
    }
    for job in host.jobs():
        if (job["recipe"], job["dataset"]) != (recipe, dataset):
            continue
        if job["state"] not in (*RESTARTABLE, "queued", "running"):
            continue
        try:
            manifest = owners_manifest(host, job["id"], owner)
        except (NotFound, IntegrityError):
            continue  # never started, or not this owner's: not this job
        signed = manifest.manifest
        if (signed.recipe_statement_sha256, signed.dataset, signed.plan) == (
            statement.sha256,
            dataset_ref,
            plan,
        ):
            return _continue(host, job, manifest, poll_seconds=poll_seconds, **common)
    job_id = host.create_job(recipe=recipe, dataset=dataset)["id"]
    session = RemoteJobSession(host, job_id, poll_seconds=poll_seconds)
    return run_training(session, job_id=job_id, **common)


def resume_job(
    host: JobHost,
    job_id: str,
    *,
    owner: Identity,
    dataset: Path,
    data_key_path: Path,
    policy: Policy,
    state_dir: Path,
    sim_roots: SimRootSource | None,
    on_event: EventHandler | None = None,
    poll_seconds: float = 1.0,
) -> TrainOutcome:
    """Continue one of the owner's jobs, named by its id, to its verified result."""
    job = host.job(job_id)
    if job["state"] not in RESTARTABLE + ATTACHABLE:
        raise Conflict(f"job {job_id} is {job['status']}; only an interrupted job resumes")
    manifest = owners_manifest(host, job_id, owner)
    signed = manifest.manifest
    signed_jobs.check_terms(state_dir, signed)
    header, header_sha256 = container.read_dataset_header_and_digest(dataset)
    dataset_ref = DatasetRef(header.dataset_id, header_sha256)
    data_key = load_data_key(data_key_path)
    if dataset_ref != signed.dataset:
        raise InputError(f"{dataset} is not the dataset job {job_id} trains on")
    if data_key.dataset_id != signed.dataset.dataset_id:
        raise InputError(f"{data_key_path} is not the key of the dataset job {job_id} trains on")
    statement = SignedRecipeStatement.from_bytes(host.recipe_statement(job["recipe"]))
    if statement.sha256 != signed.recipe_statement_sha256:
        raise IntegrityError(
            f"recipe {job['recipe']!r} now has another provider statement than job {job_id}"
        )
    return _continue(
        host,
        job,
        manifest,
        poll_seconds=poll_seconds,
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


def owners_manifest(host: JobHost, job_id: str, owner: Identity) -> SignedManifest:
    """The job's latest manifest, believed only if this owner signed it for this job."""
    try:
        manifest = SignedManifest.from_wire(host.job_manifest(job_id))
    except InputError:
        raise IntegrityError(f"the host sent a malformed manifest for job {job_id}") from None
    if manifest.manifest.owner != owner.public:
        raise IntegrityError(f"the manifest of job {job_id} is not signed by this owner key")
    if manifest.manifest.job_id != job_id:
        raise IntegrityError(f"the host sent the manifest of another job than {job_id}")
    return manifest


def _continue(
    host: JobHost,
    job: dict[str, Any],
    manifest: SignedManifest,
    *,
    poll_seconds: float,
    **training: Any,
) -> TrainOutcome:
    """Attach to a job that runs, or attest a fresh enclave for one that lost its own.

    `training` is what `run_training` takes besides the session and the job id.
    """
    job_id = job["id"]
    session = RemoteJobSession(host, job_id, poll_seconds=poll_seconds)
    if job["state"] in ATTACHABLE:
        return _attach(session, manifest, training["owner"], training["on_event"])
    if job["state"] == "interrupted":
        host.resume_job(job_id)
    return run_training(session, job_id=job_id, **training)


def _attach(
    session: RemoteJobSession,
    manifest: SignedManifest,
    owner: Identity,
    on_event: EventHandler | None,
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
