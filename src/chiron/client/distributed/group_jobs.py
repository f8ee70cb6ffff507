"""A distributed job run on this machine, kept until it ends so that it can be continued.

`chiron train --local --workers N` keeps each of its group jobs in a folder of
`<state>/group-jobs/`, named by the job id: the job's terms (what the owner would sign
again: recipe statement, dataset, plan, owner; not the enclaves) and one folder of
sealed checkpoints per worker, `worker-<rank>`. Running the same `chiron train` again
finds the job by its terms and continues it under its id: the owner attests a fresh
group, signs a new manifest with the same job binding and seals the job's secret to
each worker, whose enclave then opens its own rank's checkpoints (they are bound to the
job and the rank, so a host cannot hand one worker's state to another, or to another job).

A job ends, and its folder goes, when it succeeds, when its recipe failed (running it
again would fail the same way), or when it stopped before any worker sealed a
checkpoint (there is nothing to continue from). Otherwise (a member lost, a peer gone
silent, a message tampered with, an enclave refused, a fixed-rate slot overrun, the
command killed or stopped) it is kept. One process runs a group job at a time: a lock
beside its folder (`<id>.lock`, so that removing the folder never removes the lock a
concurrent command would wait on) that ends with the process, however it ends.
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
from chiron.core.errors import ChironError, InputError, JobFailed, ServiceError
from chiron.core.fileio import atomic_write, try_lock_file
from chiron.core.identifiers import check_job_id
from chiron.core.keys import PublicIdentity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement

FOLDER = "group-jobs"
TERMS_FILE = "terms"
LOCK_SUFFIX = ".lock"


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

    Ends the job (its folder removed) or keeps it as the module docstring says.
    """
    root = state_dir / FOLDER
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    job, lock = _open(root, terms)
    ended = True
    try:
        yield job
    except BaseException as exc:
        ended = not _kept(job, exc)
        if not ended and isinstance(exc, ChironError) and not isinstance(exc, JobFailed):
            raise type(exc)(f"{exc} (the same command continues the job)") from None
        raise
    finally:
        if ended:
            _remove(root, job.job_id)
        os.close(lock)


def _kept(job: GroupJob, error: BaseException) -> bool:
    """Whether a job that stopped with `error` is kept for the next run to continue."""
    if isinstance(error, JobFailed) and error.reason_class != "timeout":
        return False  # the recipe failed: it would fail the same way again
    return any(job.directory.glob("worker-*/checkpoint*.sealed"))


def _lock_path(root: Path, job_id: str) -> Path:
    return root / f"{job_id}{LOCK_SUFFIX}"


def _read_terms(directory: Path) -> str | None:
    try:
        return (directory / TERMS_FILE).read_text().strip()
    except OSError:
        return None


def _remove(root: Path, job_id: str) -> None:
    """The job's folder, then its lock file (taken by whoever removes)."""
    shutil.rmtree(root / job_id, ignore_errors=True)
    _lock_path(root, job_id).unlink(missing_ok=True)


def _open(root: Path, terms: str) -> tuple[GroupJob, int]:
    for directory in sorted(root.iterdir()):
        try:
            if not directory.is_dir():
                continue
            check_job_id(directory.name)
        except InputError:
            continue
        # Another job's folder is only looked at: locking it, even briefly, would tell
        # a command running that job that another one is.
        if _read_terms(directory) not in (terms, None):
            continue
        lock = try_lock_file(_lock_path(root, directory.name))
        if lock is None:
            if _read_terms(directory) == terms:
                raise ServiceError(f"another chiron command is running group job {directory.name}")
            continue  # one being made or removed by its command
        found = _read_terms(directory)  # again, under the lock: it may have changed since
        if found == terms:
            return GroupJob(directory.name, directory, resumed=True), lock
        if found is None:
            # Made and never given its terms (its command died), or removed halfway:
            # nothing to continue from.
            _remove(root, directory.name)
        os.close(lock)
    job_id = uuid.uuid4().hex
    lock = try_lock_file(_lock_path(root, job_id))
    assert lock is not None  # a fresh random id: nobody else holds its lock
    directory = root / job_id
    directory.mkdir(mode=0o700)
    atomic_write(directory / TERMS_FILE, (terms + "\n").encode(), mode=0o600)
    return GroupJob(job_id, directory, resumed=False), lock
