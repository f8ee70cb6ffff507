"""A distributed job run on this machine, kept until it ends so that it can be continued.

`chiron train --local --workers N` keeps each of its group jobs in a folder of
`<state>/group-jobs/`, named by the job id: the job's terms (what the owner would sign
again: recipe statement, dataset, plan, owner; not the enclaves) and one folder of
sealed checkpoints per worker, `worker-<rank>`. Running the same `chiron train` again
finds the job by its terms and continues it under its id: the owner attests a fresh
group, signs a new manifest with the same job binding and seals the job's secret to
each worker, whose enclave then opens its own rank's checkpoints (they are bound to the
job and the rank, so a host cannot hand one worker's state to another, or to another job).

A job ends, and its folder goes, when it succeeds or is refused (a recipe error, an
integrity or attestation failure: running it again would end the same way). A job whose
group lost a member (a process killed, a peer gone silent) or whose client was stopped
is kept. One process runs a group job at a time: a lock on its folder that ends with
the process, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chiron.core.encoding import canonical_json, sha256_hex
from chiron.core.errors import EnclaveError, InputError, PeerFailure, ServiceError
from chiron.core.fileio import atomic_write
from chiron.core.identifiers import check_job_id
from chiron.core.keys import PublicIdentity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.host.service import lock_state_dir

FOLDER = "group-jobs"
TERMS_FILE = "terms"
HOLDER = "chiron train running this group job"


@dataclass(frozen=True)
class GroupJob:
    """One group job's folder on this machine; `resumed`: it existed before this run."""

    job_id: str
    directory: Path
    resumed: bool

    def checkpoint_dir(self, rank: int) -> Path:
        """Where worker `rank` keeps its sealed checkpoints (the host's side of the job)."""
        return self.directory / f"worker-{rank}"


def job_terms(
    owner: PublicIdentity, statement: SignedRecipeStatement, dataset: DatasetRef, plan: Plan
) -> str:
    """What makes two runs one job: the same owner, recipe statement, dataset and plan."""
    return sha256_hex(
        canonical_json(
            {
                "owner": owner.fingerprint,
                "recipe_statement_sha256": statement.sha256,
                "dataset": [dataset.dataset_id, dataset.header_sha256],
                "plan": plan.to_wire(),
            }
        )
    )


@contextlib.contextmanager
def group_job(state_dir: Path, terms: str) -> Iterator[GroupJob]:
    """The unfinished group job with these terms, or a new one, held by this process.

    Ends the job (its folder removed) when the block succeeds or fails with a refusal;
    keeps it when a member was lost or the client was stopped (see the module docstring).
    """
    root = state_dir / FOLDER
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    job, lock = _open(root, terms)
    ended = True
    try:
        yield job
    except BaseException as exc:
        ended = not _lost(exc)
        if isinstance(exc, EnclaveError) and not ended:
            raise type(exc)(f"{exc} (the same command continues the job)") from None
        raise
    finally:
        if ended:
            shutil.rmtree(job.directory, ignore_errors=True)
        os.close(lock)


def _lost(error: BaseException) -> bool:
    """Whether the group lost a member (its process died, or it went silent) or its
    client was stopped, rather than refused the job: then the job is kept."""
    return type(error) in (EnclaveError, PeerFailure, KeyboardInterrupt, SystemExit)


def _open(root: Path, terms: str) -> tuple[GroupJob, int]:
    for directory in sorted(root.iterdir()):
        try:
            check_job_id(directory.name)
            if (directory / TERMS_FILE).read_text().strip() != terms:
                continue
            lock = lock_state_dir(directory, holder=HOLDER)
        except ServiceError:
            raise ServiceError(
                f"another chiron command is running group job {directory.name}"
            ) from None
        except (OSError, InputError):
            continue  # not a job's folder, or ended by its runner meanwhile
        if not (directory / TERMS_FILE).exists():  # ended between the look and the lock
            os.close(lock)
            continue
        return GroupJob(directory.name, directory, resumed=True), lock
    job_id = uuid.uuid4().hex
    directory = root / job_id
    directory.mkdir(mode=0o700)
    lock = lock_state_dir(directory, holder=HOLDER)
    atomic_write(directory / TERMS_FILE, (terms + "\n").encode(), mode=0o600)
    return GroupJob(job_id, directory, resumed=False), lock
