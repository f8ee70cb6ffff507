"""A training job's records in and out: how it is shown, what starts it, what it made.

`job_view` is a job as an account sees it (the REST API's and `LocalHost`'s answer);
`prepare` checks the owner's signed manifest against the recipe and dataset the host
holds for the job before its `train` call is queued (a courtesy: the enclave checks it
all again); `store_result` keeps what the enclave returned and marks the job done.
`model_record` is the one way a model's row is made, for a job's model here and for an
owner's uploaded one (`uploads`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from chiron.core.contract import TrainAuthorization, TrainResult
from chiron.core.dataset import read_dataset_header_and_digest
from chiron.core.encoding import canonical_json, sha256_hex
from chiron.core.errors import Conflict, InputError, JobFailed, NotFound
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.schema import DatasetSchema
from chiron.host import headers
from chiron.host.authorization import sees_private_fields
from chiron.host.db import Account, Database, Dataset, Job, Model, Recipe, now
from chiron.host.recipes import Recipes
from chiron.host.store import ArtifactStore

RESULT_NAMES = ("model", "receipt", "owner_report", "owner_report_signature")


@dataclass(frozen=True)
class PreparedTrain:
    """What a queued job's `train` call is made of, fixed when the owner starts it."""

    authorization: TrainAuthorization
    recipe_name: str
    recipe_sha256: str
    statement: SignedRecipeStatement
    dataset_sha256: str
    binding_sha256: str


def status_text(job: Job) -> str:
    """The one line a provider or owner sees, e.g. 'running (step 40 of 600)'."""
    if job.state == "running" and job.total:
        return f"running (step {job.step} of {job.total})"
    if job.state in ("failed", "interrupted"):
        return f"{job.state} ({job.reason})"
    return job.state


def job_view(job: Job, account: Account) -> dict[str, Any]:
    """A job as `account` sees it (docs/api.md): the owner's own fields are None for others."""
    private = sees_private_fields(account, job)
    return {
        "id": job.id,
        "recipe": job.recipe_name,
        "dataset": job.dataset_pk if private else None,
        "state": job.state,
        "status": status_text(job),
        "step": job.step,
        "total": job.total,
        "reason": job.reason,
        "message": job.message if private else None,
        "model": job.model_pk,
        "created": job.created,
        "updated": job.updated,
    }


def prepare(
    db: Database,
    store: ArtifactStore,
    recipes: Recipes,
    job: Job,
    authorization: TrainAuthorization,
) -> PreparedTrain:
    """Check the owner's manifest against what this service holds for the job."""
    manifest = authorization.manifest.manifest
    if authorization.group is not None or manifest.plan.workers != 1:
        raise InputError("this service runs single-enclave jobs: the plan must have 1 worker")
    if manifest.job_id != job.id:
        raise InputError(f"the manifest is for job {manifest.job_id}, not {job.id}")
    with db.transaction() as session:
        recipe = session.get_one(Recipe, job.recipe_name)
        dataset = session.get_one(Dataset, job.dataset_pk)
    statement = recipes.statement(recipe)
    if manifest.recipe_sha256 != recipe.source_sha256:
        raise InputError(f"the manifest names another recipe than {recipe.name!r}")
    if manifest.recipe_statement_sha256 != statement.sha256:
        raise InputError(
            f"the manifest names another provider statement than recipe {recipe.name!r} has"
        )
    if manifest.provider != statement.provider:
        raise InputError("the manifest names another provider than the recipe's statement")
    if manifest.dataset.dataset_id != dataset.dataset_id:
        raise InputError(f"the manifest names another dataset than {dataset.dataset_id}")
    if manifest.dataset.header_sha256 != _header_sha256(db, store, dataset):
        raise InputError(f"the manifest names another file of dataset {dataset.dataset_id}")
    return PreparedTrain(
        authorization=authorization,
        recipe_name=f"{recipe.name}.py",
        recipe_sha256=recipe.source_sha256,
        statement=statement,
        dataset_sha256=dataset.sha256,
        binding_sha256=sha256_hex(canonical_json(manifest.job_binding())),
    )


def _header_sha256(db: Database, store: ArtifactStore, dataset: Dataset) -> str:
    """The dataset's header digest: recorded at upload, or read once from the file."""
    if dataset.header_sha256 is not None:
        return dataset.header_sha256
    _, digest = read_dataset_header_and_digest(store.local_path(dataset.sha256))
    with db.transaction() as session:
        session.execute(
            update(Dataset).where(Dataset.id == dataset.id).values(header_sha256=digest)
        )
    return digest


def store_result(db: Database, store: ArtifactStore, job_id: str, wire: dict[str, Any]) -> None:
    """Check the enclave's result for its form, store it, and mark the job done.

    Its form only: whether it is what the owner asked for, the owner's client checks.
    """
    try:
        result = TrainResult.from_wire(wire)
    except InputError:
        raise JobFailed("bad_result", "the enclave's result is malformed") from None
    if not result.complete:
        raise JobFailed("bad_result", "the enclave's result is incomplete")
    blobs: dict[str, bytes] = {name: getattr(result, name) for name in RESULT_NAMES}
    try:
        info = headers.model_info_from_bytes(blobs["model"])
    except InputError:
        raise JobFailed("bad_result", "the enclave's model file is malformed") from None
    digests = {name: store.put_bytes(blob) for name, blob in blobs.items()}
    with db.transaction() as session:
        job = session.get_one(Job, job_id)
        model = model_record(
            info,
            account_id=job.account_id,
            job_id=job_id,
            size=len(blobs["model"]),
            sha256=digests["model"],
        )
        session.add(model)
        job.state, job.updated = "done", now()
        job.step = job.total
        job.model_pk = model.id
        job.receipt_sha256 = digests["receipt"]
        job.owner_report_sha256 = digests["owner_report"]
        job.owner_report_signature_sha256 = digests["owner_report_signature"]


def model_record(
    info: headers.ModelInfo, *, account_id: str, job_id: str | None, size: int, sha256: str
) -> Model:
    """A new row for an escrowed model file: its public header, size and digest.

    `job_id` names the job that made it; None for a model its owner uploaded.
    """
    return Model(
        id=uuid.uuid4().hex,
        account_id=account_id,
        model_id=info.model_id,
        job_id=job_id,
        schema=json.dumps(info.schema),
        query_policy=json.dumps(info.query_policy),
        size=size,
        sha256=sha256,
        created=now(),
    )


def result_digest(db: Database, job: Job, name: str) -> str:
    """The SHA-256 of one of a finished job's results, by name (one of `RESULT_NAMES`)."""
    if job.state != "done":
        raise Conflict(f"job {job.id} is {status_text(job)}; results exist once it is done")
    if name == "model":
        with db.transaction() as session:
            return session.get_one(Model, job.model_pk).sha256
    digest = {
        "receipt": job.receipt_sha256,
        "owner_report": job.owner_report_sha256,
        "owner_report_signature": job.owner_report_signature_sha256,
    }[name]
    if digest is None:
        raise NotFound(f"job {job.id} finished before the service kept its {name}")
    return digest


def check_schema(recipe: Recipe, dataset: Dataset) -> None:
    """Refuse at once a dataset the recipe says it cannot take."""
    if recipe.input_schema is None:
        return
    wanted = DatasetSchema.from_dict(json.loads(recipe.input_schema))
    have = DatasetSchema.from_dict(json.loads(dataset.schema))
    if (wanted.input_shape, wanted.dtype, wanted.num_classes) != (
        have.input_shape,
        have.dtype,
        have.num_classes,
    ):
        raise InputError(
            f"recipe {recipe.name!r} takes {wanted.dtype} inputs of shape {wanted.input_shape} "
            f"with {wanted.num_classes} classes; this dataset has {have.dtype} "
            f"{have.input_shape} with {have.num_classes}"
        )
