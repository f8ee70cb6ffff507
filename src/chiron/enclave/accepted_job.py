"""A `train` request the enclave has accepted: every host-supplied part checked against
the owner's signed manifest and the provider's signed statement, the data key opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chiron.core import dataset, purposes
from chiron.core.contract import TrainRequest
from chiron.core.crypto import open_sealed
from chiron.core.dataset import DatasetHeader
from chiron.core.errors import InputError, IntegrityError
from chiron.core.manifest import JobManifest, SignedManifest, training_data_key_context
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.enclave.context import EnclaveContext


@dataclass(frozen=True)
class AcceptedJob:
    """A `train` request whose every host-supplied part matched the owner's manifest.

    Only `accept_job` makes one; the training loop reads nothing else, so nothing the
    host chose without the owner's or the provider's signature reaches it.
    """

    signed: SignedManifest
    statement: SignedRecipeStatement
    recipe_name: str
    recipe_source: bytes
    dataset_path: Path
    header: DatasetHeader
    data_key: bytes
    checkpoint_dir: Path | None
    # The owner's secret for this job, when released: checkpoints are sealed under it.
    job_secret: bytes | None = None

    @property
    def manifest(self) -> JobManifest:
        return self.signed.manifest

    @property
    def job_id(self) -> str:
        return self.manifest.job_id


def accept_job(context: EnclaveContext, request: TrainRequest) -> AcceptedJob:
    """Check the host's half of the request against the owner's, bind, open the data key.

    Every check runs before the data key is opened, and the enclave commits to the
    manifest (`context.bind`) before it opens it: a second `train` on this enclave,
    with any manifest, is refused, so the owner's sealed key serves one job only.
    """
    signed = request.manifest
    manifest = signed.manifest
    materials = request.materials
    statement = materials.recipe_statement
    # The recipe: the file the provider signed, the statement the owner named.
    if statement.sha256 != manifest.recipe_statement_sha256:
        raise IntegrityError("the recipe statement is not the one the owner's manifest names")
    statement.check_recipe(materials.recipe_source)
    if statement.statement.recipe_sha256 != manifest.recipe_sha256:
        raise IntegrityError("the recipe is not the one the owner's manifest names")
    # The provider: named by its own signature, never by the host or the owner alone.
    if statement.provider != manifest.provider:
        raise IntegrityError("the manifest's provider is not the one who signed the recipe")
    # This enclave: the very one the owner attested for its place in the job.
    group = request.authorization.group
    if manifest.plan.distributed != (group is not None):
        raise InputError("the manifest's plan and the call disagree on the number of workers")
    rank = group.rank if group is not None else 0
    if rank == 0 and group is not None:
        raise InputError("rank 0 of a job is the parameter server, not a training enclave")
    if manifest.enclaves[rank] != context.identity.public.fingerprint:
        raise IntegrityError("this enclave is not the one the owner's manifest names")
    # The dataset: the exact ciphertext file the owner named.
    dataset_path = Path(materials.dataset_path)
    header, digest = dataset.read_dataset_header_and_digest(dataset_path)
    if (header.dataset_id, digest) != (manifest.dataset.dataset_id, manifest.dataset.header_sha256):
        raise IntegrityError("the dataset is not the one the owner's manifest names")
    context.bind(signed.digest)
    key_context = training_data_key_context(signed.digest, header.dataset_id)
    data_key = open_sealed(
        context.identity.hpke_key,
        request.authorization.sealed_data_key,
        purpose=purposes.TRAINING_DATA_KEY,
        context=key_context,
        what="data key",
    )
    sealed_secret = request.authorization.sealed_job_secret
    job_secret = (
        None
        if sealed_secret is None
        else open_sealed(
            context.identity.hpke_key,
            sealed_secret,
            purpose=purposes.JOB_SECRET,
            context=key_context,
            what="job secret",
        )
    )
    return AcceptedJob(
        signed=signed,
        statement=statement,
        # The provider's signed name, not the host's: it is stored in the model file.
        recipe_name=f"{statement.statement.name}.py",
        recipe_source=materials.recipe_source,
        dataset_path=dataset_path,
        header=header,
        data_key=data_key,
        checkpoint_dir=Path(materials.checkpoint_dir) if materials.checkpoint_dir else None,
        job_secret=job_secret,
    )
