"""Training jobs: one training enclave each, a queue in front of the `train` call.

A job is created with its enclave already running, so the owner's client can attest
that very enclave and seal the data key to it; starting the job queues the `train` call,
which runs when one of `concurrency` worker slots is free. What anyone but the owner
learns of a job is its state, its step count and a reason class on failure.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from chiron.core.errors import (
    AccessDenied,
    AttestationError,
    ChironError,
    Conflict,
    InputError,
    IntegrityError,
    JobFailed,
    KeyFileError,
    NotFound,
)
from chiron.core.keys import PublicIdentity
from chiron.core.schema import DatasetSchema
from chiron.host import headers
from chiron.host.db import ACTIVE_JOB_STATES, Account, Database, Dataset, Job, Model, Recipe, now
from chiron.host.enclaves import ManagedEnclave
from chiron.host.store import ArtifactStore

log = logging.getLogger("chiron.host.jobs")

RESULT_NAMES = ("model", "receipt", "owner_report")
# Longest silence tolerated from a training enclave; it reports progress every 1% of steps.
TRAIN_SILENCE_SECONDS = 6 * 3600.0
MAX_SEALED_KEY_BYTES = 4096
MAX_EPOCHS = 1000
HOST_RESTART = "host_restart"
ABANDONED = "abandoned"

# What a failure is called when the enclave gave no reason class of its own.
_REASONS: tuple[tuple[type[ChironError], str], ...] = (
    (IntegrityError, "integrity"),
    (AttestationError, "attestation"),
    (InputError, "bad_input"),
)


@dataclass(frozen=True)
class StartRequest:
    """The owner's half of the `train` call, checked before the job is queued."""

    sealed_data_key: bytes
    owner_public: bytes
    provider_public: bytes | None
    epochs: int | None
    seed: int

    def check(self) -> None:
        if not 0 < len(self.sealed_data_key) <= MAX_SEALED_KEY_BYTES:
            raise InputError("sealed_data_key is empty or too long")
        for name, value in (
            ("owner_public", self.owner_public),
            ("provider_public", self.provider_public),
        ):
            if value is not None:
                _public_identity(value, name)
        if self.epochs is not None and not 1 <= self.epochs <= MAX_EPOCHS:
            raise InputError(f"epochs must be between 1 and {MAX_EPOCHS}")
        if not 0 <= self.seed < 2**63:
            raise InputError("seed must be a non-negative 63-bit integer")


def _public_identity(value: bytes, name: str) -> PublicIdentity:
    try:
        return PublicIdentity.from_bytes(value)
    except (KeyFileError, ValueError):
        raise InputError(f"{name} is not a 64-byte public identity") from None


def status_text(job: Job) -> str:
    """The one line a provider or owner sees, e.g. 'running (step 40 of 600)'."""
    if job.state == "running" and job.total:
        return f"running (step {job.step} of {job.total})"
    if job.state == "failed":
        return f"failed ({job.reason})"
    return job.state


class Jobs:
    """Job records, their enclaves, and the worker pool that runs `train` calls."""

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        *,
        enclave_dir: Path,
        checkpoints_dir: Path,
        logs_dir: Path,
        instance_id: str,
        platform: str,
        concurrency: int,
    ) -> None:
        self._db = db
        self._instance_id = instance_id
        self._store = store
        self._enclave_dir = enclave_dir
        self._checkpoints = checkpoints_dir
        self._logs = logs_dir
        self._platform = platform
        self._enclaves: dict[str, ManagedEnclave] = {}
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="chiron-job")
        self._stopping = False

    def recover(self) -> int:
        """Mark jobs this instance had in flight when it last stopped as failed.

        Their enclaves died with the service, and the data key was sealed to the dead
        enclave's ephemeral key, which no new enclave can open: resuming needs the owner
        to attest a new enclave, i.e. a new job.
        """
        with self._db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.runner == self._instance_id, Job.state.in_(ACTIVE_JOB_STATES))
                .values(state="failed", reason=HOST_RESTART, updated=now())
            )
            failed = int(result.rowcount or 0)
        # Nothing of this instance runs now, and a failed job's sealed checkpoints can
        # never be used again (a new job has a new id): drop them.
        shutil.rmtree(self._checkpoints, ignore_errors=True)
        return failed

    # --- records -------------------------------------------------------------

    def get(self, account: Account, job_id: str) -> Job:
        with self._db.transaction() as session:
            job = session.get(Job, job_id)
        if job is None or (account.role == "owner" and job.account_id != account.id):
            raise NotFound(f"no job {job_id}")
        return job

    def list(self, account: Account) -> list[Job]:
        query = select(Job).order_by(Job.created, Job.id)
        if account.role == "owner":
            query = query.where(Job.account_id == account.id)
        with self._db.transaction() as session:
            return list(session.scalars(query).all())

    def create(self, account: Account, *, recipe_name: str, dataset_pk: str) -> Job:
        if account.role != "owner":
            raise AccessDenied("only data owners create training jobs")
        with self._db.transaction() as session:
            recipe = session.get(Recipe, recipe_name)
            dataset = session.get(Dataset, dataset_pk)
        if recipe is None:
            raise NotFound(f"no recipe named {recipe_name!r}")
        if dataset is None or dataset.account_id != account.id:
            raise NotFound(f"no dataset {dataset_pk}")
        _check_schema(recipe, dataset)
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
            enclave = ManagedEnclave(
                "train",
                self._enclave_dir,
                platform=self._platform,
                log_path=self._logs / f"job-{job.id}.log",
            )
        except ChironError as exc:
            self._finish_failed(job.id, "enclave_error", str(exc))
            raise
        with self._guard:
            self._enclaves[job.id] = enclave
        return job

    def evidence(self, job_id: str, nonce: bytes) -> bytes:
        with self._guard:
            enclave = self._enclaves.get(job_id)
        if enclave is None or enclave.busy:
            raise Conflict(f"job {job_id} has no enclave waiting to be attested")
        return enclave.evidence(nonce)

    def start(self, account: Account, job_id: str, request: StartRequest) -> Job:
        request.check()
        job = self.get(account, job_id)
        if job.account_id != account.id:
            raise AccessDenied("only the job's owner starts it")
        with self._guard:
            enclave = self._enclaves.get(job_id)
        with self._db.transaction() as session:
            current = session.get_one(Job, job_id)
            if current.state != "created" or enclave is None:
                raise Conflict(f"job {job_id} is {status_text(current)}, not waiting to start")
            current.state, current.updated = "queued", now()
            recipe = session.get_one(Recipe, current.recipe_name)
            dataset = session.get_one(Dataset, current.dataset_pk)
        args = {
            "job_id": job_id,
            "recipe_name": f"{recipe.name}.py",
            "sealed_data_key": request.sealed_data_key,
            "owner_public": request.owner_public,
            "provider_public": request.provider_public or bytes.fromhex(recipe.provider_public),
            "epochs": request.epochs,
            "seed": request.seed,
        }
        self._pool.submit(self._run, job_id, enclave, recipe.source_sha256, dataset.sha256, args)
        return current

    def result(self, account: Account, job_id: str, name: str) -> str:
        """The SHA-256 of one of a finished job's results (owner only)."""
        if name not in RESULT_NAMES:
            raise NotFound(f"a job has no result {name!r} (use one of {', '.join(RESULT_NAMES)})")
        job = self.get(account, job_id)
        if job.account_id != account.id:
            raise AccessDenied("only the job's owner downloads its results")
        if job.state != "done":
            raise Conflict(f"job {job_id} is {status_text(job)}; results exist once it is done")
        if name == "model":
            with self._db.transaction() as session:
                return session.get_one(Model, job.model_pk).sha256
        digest = job.receipt_sha256 if name == "receipt" else job.owner_report_sha256
        assert digest is not None
        return digest

    # --- running -------------------------------------------------------------

    def _run(
        self,
        job_id: str,
        enclave: ManagedEnclave,
        recipe_sha256: str,
        dataset_sha256: str,
        args: dict[str, Any],
    ) -> None:
        try:
            self._set(job_id, state="running")
            checkpoint_dir = self._checkpoints / job_id
            checkpoint_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            args = {
                **args,
                "recipe_source": self._store.read_bytes(recipe_sha256),
                "dataset_path": str(self._store.local_path(dataset_sha256)),
                "checkpoint_dir": str(checkpoint_dir),
            }
            result = enclave.call(
                "train",
                args,
                on_event=lambda e: self._on_event(job_id, e),
                timeout=TRAIN_SILENCE_SECONDS,
            )
            self._finish_done(job_id, result)
        except JobFailed as exc:
            self._finish_failed(job_id, exc.reason_class, str(exc))
        except ChironError as exc:
            if self._stopping:
                self._finish_failed(job_id, HOST_RESTART, "the service stopped during the job")
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
            shutil.rmtree(self._checkpoints / job_id, ignore_errors=True)

    def _on_event(self, job_id: str, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        step, total = event.get("step"), event.get("total")
        if isinstance(step, int) and isinstance(total, int) and 0 <= step <= total < 2**31:
            self._set(job_id, step=step, total=total)

    def _set(self, job_id: str, **values: Any) -> None:
        with self._db.transaction() as session:
            session.execute(update(Job).where(Job.id == job_id).values(updated=now(), **values))

    def _finish_done(self, job_id: str, result: dict[str, Any]) -> None:
        blobs = {name: result.get(name) for name in RESULT_NAMES}
        if not all(isinstance(blob, bytes) and blob for blob in blobs.values()):
            raise JobFailed("bad_result", "the enclave's result is incomplete")
        try:
            info = headers.model_info_from_bytes(blobs["model"])
        except InputError:
            raise JobFailed("bad_result", "the enclave's model file is malformed") from None
        digests = {name: self._store.put_bytes(blob) for name, blob in blobs.items()}
        with self._db.transaction() as session:
            job = session.get_one(Job, job_id)
            model = Model(
                id=uuid.uuid4().hex,
                account_id=job.account_id,
                model_id=info.model_id,
                job_id=job_id,
                schema=json.dumps(info.schema),
                query_policy=json.dumps(info.query_policy),
                size=len(blobs["model"]),
                sha256=digests["model"],
                created=now(),
            )
            session.add(model)
            job.state, job.updated = "done", now()
            job.step = job.total
            job.model_pk = model.id
            job.receipt_sha256 = digests["receipt"]
            job.owner_report_sha256 = digests["owner_report"]

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

    def close(self) -> None:
        """Stop every enclave; jobs in flight end as failed (host_restart), as after a crash."""
        self._stopping = True
        with self._guard:
            enclaves = list(self._enclaves.values())
            self._enclaves.clear()
        for enclave in enclaves:
            enclave.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.recover()


def _check_schema(recipe: Recipe, dataset: Dataset) -> None:
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
