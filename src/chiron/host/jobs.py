"""Training jobs: one training enclave each, a queue in front of the `train` call.

A job is created with its enclave already running, so the owner's client can attest
that very enclave and seal the data key to it; starting the job queues the `train` call,
which runs when one of `concurrency` worker slots is free. What anyone but the owner
learns of a job is its state, its step count and a reason class on failure; who may see
or act on a job is decided in `host.authorization`.

A job whose enclave was lost mid-run (the service restarted, the enclave process died)
is `interrupted`, not failed: its owner may resume it (`resume`), which starts a fresh
enclave for the same job. The owner attests that enclave and starts it under a new
manifest with the same job binding; the enclave then opens the job's sealed checkpoints
with the owner's job secret and continues from the last one.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update

from chiron.core.contract import TrainAuthorization, TrainMaterials, TrainRequest
from chiron.core.errors import (
    AttestationError,
    ChironError,
    Conflict,
    EnclaveError,
    InputError,
    IntegrityError,
    JobFailed,
    NotFound,
)
from chiron.core.limits import TRAIN_SILENCE_SECONDS

# Imported by name: in this module "authorization" is the owner's signed TrainAuthorization.
from chiron.host.authorization import Action, Kind, find, listing, require
from chiron.host.db import ACTIVE_JOB_STATES, Account, Database, Job, now
from chiron.host.enclaves import ManagedEnclave
from chiron.host.job_records import (
    RESULT_NAMES,
    PreparedTrain,
    check_schema,
    prepare,
    result_digest,
    status_text,
    store_result,
)
from chiron.host.recipes import Recipes
from chiron.host.state_changes import StateChanges
from chiron.host.store import ArtifactStore

log = logging.getLogger("chiron.host.jobs")

# Longest silence tolerated from a training enclave; it reports progress every 1% of steps.
HOST_RESTART = "host_restart"
ABANDONED = "abandoned"
# Makes a job's training enclave, for hosts that start enclaves their own way.
EnclaveStarter = Callable[[str], ManagedEnclave]
# Told each progress event as the enclave sends it: job id, step, total.
ProgressListener = Callable[[str, int, int], None]

# What a failure is called when the enclave gave no reason class of its own.
_REASONS: tuple[tuple[type[ChironError], str], ...] = (
    (IntegrityError, "integrity"),
    (AttestationError, "attestation"),
    (InputError, "bad_input"),
)


class Jobs:
    """Job records, their enclaves, and the worker pool that runs `train` calls."""

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        recipes: Recipes,
        *,
        enclave_dir: Path,
        checkpoints_dir: Path,
        logs_dir: Path,
        instance_id: str,
        platform: str,
        concurrency: int,
        start_enclave: EnclaveStarter | None = None,
        on_progress: ProgressListener | None = None,
    ) -> None:
        self._db = db
        self._instance_id = instance_id
        self._store = store
        self._recipes = recipes
        self._enclave_dir = enclave_dir
        self._checkpoints = checkpoints_dir
        self._logs = logs_dir
        self._platform = platform
        self._start_enclave = start_enclave
        self._on_progress = on_progress
        self._enclaves: dict[str, ManagedEnclave] = {}
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="chiron-job")
        self._stopping = False
        self.state_changes = StateChanges()  # for waiters in this process

    def recover(self) -> int:
        """Mark jobs this instance had in flight when it last stopped; return how many.

        Their enclaves died with the service. A job that was started (queued, running,
        or created again by a resume) becomes `interrupted`: its owner may resume it in
        a fresh enclave (`resume`). A job never started fails (`host_restart`): it has
        nothing to resume, and its owner simply starts another.
        """
        mine = (Job.runner == self._instance_id, Job.state.in_(ACTIVE_JOB_STATES))
        with self._db.transaction() as session:
            interrupted = session.execute(
                update(Job)
                .where(*mine, or_(Job.state != "created", Job.binding_sha256.is_not(None)))
                .values(state="interrupted", reason=HOST_RESTART, updated=now())
            )
            failed = session.execute(
                update(Job).where(*mine).values(state="failed", reason=HOST_RESTART, updated=now())
            )
            count = int(interrupted.rowcount or 0) + int(failed.rowcount or 0)
            keep = set(
                session.scalars(
                    select(Job.id).where(
                        Job.runner == self._instance_id, Job.state == "interrupted"
                    )
                )
            )
        # An interrupted job's sealed checkpoints are KEPT for its resume. Keeping them
        # gives nobody anything: they are sealed under a key derived from the owner's job
        # secret, which leaves the owner's machine only sealed to an enclave the owner has
        # attested, and they open only for a manifest with this job's binding (its job id,
        # recipe statement, dataset, owner and plan). Checkpoints of any other job are
        # leftovers of jobs that ended and are dropped.
        if self._checkpoints.is_dir():
            for folder in self._checkpoints.iterdir():
                if folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
        return count

    # --- records -------------------------------------------------------------

    def get(self, account: Account, job_id: str) -> Job:
        """A job its owner or its recipe's provider may see (`host.authorization`)."""
        with self._db.transaction() as session:
            return find(session, Kind.JOB, account, job_id)

    def list(self, account: Account) -> list[Job]:
        with self._db.transaction() as session:
            return listing(session, Kind.JOB, account)

    def create(self, account: Account, *, recipe_name: str, dataset_pk: str) -> Job:
        require(Action.CREATE_JOB, account)
        with self._db.transaction() as session:
            recipe = find(session, Kind.RECIPE, account, recipe_name)
            dataset = find(session, Kind.DATASET, account, dataset_pk)
        check_schema(recipe, dataset)
        job = Job(
            id=uuid.uuid4().hex,
            account_id=account.id,
            recipe_name=recipe.name,
            dataset_pk=dataset.id,
            runner=self._instance_id,
            state="created",
            step=0,
            total=0,
            created=now(),
            updated=now(),
        )
        with self._db.transaction() as session:
            session.add(job)
        try:
            enclave = self._new_enclave(job.id)
        except ChironError as exc:
            self._finish_failed(job.id, "enclave_error", str(exc))
            raise
        with self._guard:
            self._enclaves[job.id] = enclave
        return job

    def resume(self, account: Account, job_id: str) -> Job:
        """Give an interrupted job a fresh training enclave; the job is `created` again.

        The owner then attests the new enclave and starts it (`start`) under a new
        manifest for the same job: one whose job binding equals the first start's. Only
        `interrupted` jobs resume; a failed or abandoned one has ended for good.
        """
        job = self.get(account, job_id)
        require(Action.RESUME_JOB, account, job)
        if job.state != "interrupted":
            raise Conflict(f"job {job_id} is {status_text(job)}; only an interrupted job resumes")
        try:
            enclave = self._new_enclave(job_id)
        except ChironError:
            raise Conflict(f"no training enclave could be started for job {job_id}") from None
        with self._db.transaction() as session:
            # One conditional UPDATE: of two resumes racing, exactly one gets the enclave.
            resumed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "interrupted")
                .values(
                    state="created",
                    runner=self._instance_id,
                    reason=None,
                    message=None,
                    updated=now(),
                )
            )
            current = session.get_one(Job, job_id, populate_existing=True)
        if not resumed.rowcount:
            enclave.close()
            raise Conflict(
                f"job {job_id} is {status_text(current)}; only an interrupted job resumes"
            )
        with self._guard:
            self._enclaves[job_id] = enclave
        return current

    def manifest(self, account: Account, job_id: str) -> str:
        """The SHA-256 of the job's latest signed manifest in the store (owner only)."""
        job = self.get(account, job_id)
        require(Action.READ_JOB_MANIFEST, account, job)
        if job.manifest_sha256 is None:
            raise NotFound(f"job {job_id} has not been started under a manifest")
        return job.manifest_sha256

    def _new_enclave(self, job_id: str) -> ManagedEnclave:
        if self._start_enclave is not None:
            return self._start_enclave(job_id)
        return ManagedEnclave(
            "train",
            self._enclave_dir,
            platform=self._platform,
            log_path=self._logs / f"job-{job_id}.log",
        )

    def evidence(self, account: Account, job_id: str, nonce: bytes) -> bytes:
        require(Action.ATTEST_JOB, account, self.get(account, job_id))
        with self._guard:
            enclave = self._enclaves.get(job_id)
        if enclave is None or enclave.busy:
            raise Conflict(f"job {job_id} has no enclave waiting to be attested")
        return enclave.evidence(nonce)

    def start(self, account: Account, job_id: str, authorization: TrainAuthorization) -> Job:
        """Queue the job's `train` call with the owner's signed manifest and sealed key.

        The manifest is checked against this job first, as a courtesy: a manifest for
        another job, recipe or dataset, or for a distributed plan, is refused here and
        the job stays startable, its enclave untouched. The enclave checks all of it
        again itself; nothing here is what makes a job safe.
        """
        job = self.get(account, job_id)
        require(Action.START_JOB, account, job)
        with self._guard:
            enclave = self._enclaves.get(job_id)
        if job.state != "created" or enclave is None:
            raise Conflict(f"job {job_id} is {status_text(job)}, not waiting to start")
        prepared = prepare(self._db, self._store, self._recipes, job, authorization)
        if job.binding_sha256 not in (None, prepared.binding_sha256):
            raise InputError(
                f"job {job_id} was started under another job binding: a resumed job keeps "
                "its recipe statement, dataset, owner and plan"
            )
        manifest_sha256 = self._store.put_bytes(authorization.manifest.to_wire())
        with self._db.transaction() as session:
            # One conditional UPDATE: of two starts racing, exactly one queues the call.
            queued = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state == "created",
                    or_(
                        Job.binding_sha256.is_(None),
                        Job.binding_sha256 == prepared.binding_sha256,
                    ),
                )
                .values(
                    state="queued",
                    binding_sha256=prepared.binding_sha256,
                    manifest_sha256=manifest_sha256,
                    updated=now(),
                )
            )
            current = session.get_one(Job, job_id, populate_existing=True)
        if not queued.rowcount:
            raise Conflict(f"job {job_id} is {status_text(current)}, not waiting to start")
        self._pool.submit(self._run, job_id, enclave, prepared)
        return current

    def result(self, account: Account, job_id: str, name: str) -> str:
        """The SHA-256 of one of a finished job's results (owner only)."""
        if name not in RESULT_NAMES:
            raise NotFound(f"a job has no result {name!r} (use one of {', '.join(RESULT_NAMES)})")
        job = self.get(account, job_id)
        require(Action.DOWNLOAD_RESULTS, account, job)
        return result_digest(self._db, job, name)

    # --- running -------------------------------------------------------------

    def _run(self, job_id: str, enclave: ManagedEnclave, prepared: PreparedTrain) -> None:
        resumable = False
        try:
            self._set(job_id, state="running")
            checkpoint_dir = self._checkpoints / job_id
            checkpoint_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            materials = TrainMaterials(
                recipe_name=prepared.recipe_name,
                recipe_source=self._store.read_bytes(prepared.recipe_sha256),
                recipe_statement=prepared.statement,
                dataset_path=str(self._store.local_path(prepared.dataset_sha256)),
                checkpoint_dir=str(checkpoint_dir),
            )
            result = enclave.call(
                "train",
                TrainRequest(prepared.authorization, materials).to_wire(),
                on_event=lambda e: self._on_event(job_id, e),
                timeout=TRAIN_SILENCE_SECONDS,
            )
            store_result(self._db, self._store, job_id, result)
        except JobFailed as exc:
            self._finish_failed(job_id, exc.reason_class, str(exc))
        except ChironError as exc:
            if self._stopping or type(exc) is EnclaveError:
                # The enclave was lost (the service stopping, its process dying or going
                # silent), not refused: the job may resume from its sealed checkpoints.
                resumable = True
                reason = HOST_RESTART if self._stopping else "enclave_error"
                self._set(job_id, state="interrupted", reason=reason, message=str(exc))
            else:
                reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), "enclave_error")
                self._finish_failed(job_id, reason, str(exc))
        except Exception:
            log.exception("job %s: internal error", job_id)
            self._finish_failed(job_id, "internal", "internal service error")
        finally:
            with self._guard:
                self._enclaves.pop(job_id, None)
            enclave.close()
            if not resumable:
                shutil.rmtree(self._checkpoints / job_id, ignore_errors=True)
            self.state_changes.note()  # the job ended: done, failed or interrupted

    def _on_event(self, job_id: str, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        step, total = event.get("step"), event.get("total")
        if isinstance(step, int) and isinstance(total, int) and 0 <= step <= total < 2**31:
            if self._on_progress is not None:
                self._on_progress(job_id, step, total)
            self._set(job_id, step=step, total=total)

    def _set(self, job_id: str, **values: Any) -> None:
        with self._db.transaction() as session:
            session.execute(update(Job).where(Job.id == job_id).values(updated=now(), **values))

    def _finish_failed(self, job_id: str, reason: str, message: str) -> None:
        self._set(job_id, state="failed", reason=reason, message=message)

    # --- housekeeping --------------------------------------------------------

    def reap_idle(self, idle_seconds: float, now_monotonic: float) -> None:
        """Stop enclaves of jobs created but never started, and fail those jobs."""
        with self._guard:
            stale = [
                (job_id, enclave)
                for job_id, enclave in self._enclaves.items()
                if not enclave.busy and now_monotonic - enclave.last_used > idle_seconds
            ]
        for job_id, enclave in stale:
            with self._db.transaction() as session:
                job = session.get(Job, job_id)
                if job is None or job.state != "created":
                    continue
                job.state, job.reason, job.updated = "failed", ABANDONED, now()
                job.message = "the job was not started in time"
            with self._guard:
                self._enclaves.pop(job_id, None)
            enclave.close()
            # A resumed job left unstarted ends here: its checkpoints go with it.
            shutil.rmtree(self._checkpoints / job_id, ignore_errors=True)

    def close(self) -> None:
        """Stop every enclave; jobs in flight are interrupted (host_restart), as after a crash."""
        self._stopping = True
        with self._guard:
            enclaves = list(self._enclaves.values())
            self._enclaves.clear()
        for enclave in enclaves:
            enclave.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.recover()
