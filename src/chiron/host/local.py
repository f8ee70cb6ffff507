"""`LocalHost`: the service's own job runner, recipe registry and stores, in this process.

`chiron train --local` and `chiron.connect(local=True)` run their jobs here: the same
`Jobs`, `Recipes`, SQLite database and content-addressed folder store as `chiron serve`,
opened in the owner's own process over a state directory on this machine, without
HTTP. Its methods answer like the REST API's (`client.remote.ServiceClient`), so the
owner's client drives a local job and a service's job with one flow, and a local job
resumes like a service's: after its process was killed, the next `LocalHost` finds the
job `interrupted (host_restart)` with its sealed checkpoints kept.

The host is the adversary here too. It holds only what a service holds (dataset and
model ciphertext, the recipe, the owner's signed manifest, sealed checkpoints and
results); the owner's client attests every enclave, signs the manifest and seals the
keys itself, exactly as with `--url`.

One process at a time runs a local host's jobs (a lock on its directory that ends with
its process, however it ends), so whoever takes the lock knows that every job it finds
active lost its enclave. Meanwhile others may only look (`view_only`): they see the
jobs as the running process records them.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chiron.core.contract import TrainAuthorization
from chiron.core.errors import Conflict, ServiceError
from chiron.core.job_outcome import job_outcome
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.host import headers
from chiron.host.accounts import add_account, load_pepper, new_token
from chiron.host.db import Account, Database, Dataset, now
from chiron.host.job_records import job_view
from chiron.host.jobs import EnclaveStarter, Jobs
from chiron.host.recipes import Recipes, RecipeSubmission
from chiron.host.service import instance_id, lock_state_dir
from chiron.host.store import LocalStore, file_sha256

OWNER_ACCOUNT = "owner"
RUNNER = "chiron command running local jobs"
# The longest `wait_job` goes without looking at a job's state; it looks at once when a
# job of this process ends. Progress arrives as the enclave sends it.
POLL_SECONDS = 1.0
UpdateHandler = Callable[[dict[str, Any]], None]


class LocalHost:
    """A Chiron host in this process, for the owner who runs it; close it when done.

    `state_dir` holds its database and artifact store; `enclave_dir` is the enclaves'
    own state (the simulated platform's root, which the owner's client trusts locally);
    sealed checkpoints go to `checkpoints_dir/<job id>`. `start_enclave` makes a job's
    training enclave when the caller starts its enclaves its own way. With `view_only`,
    a host that another process is running opens for `job` and `jobs` only.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        enclave_dir: Path,
        checkpoints_dir: Path,
        start_enclave: EnclaveStarter | None = None,
        view_only: bool = False,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir = state_dir
        self._lock_fd: int | None = None
        try:
            self._lock_fd = lock_state_dir(state_dir, holder=RUNNER)
        except ServiceError:
            if not view_only:
                raise
        self._listeners: dict[str, UpdateHandler] = {}
        self._last: dict[str, tuple[int, int]] = {}
        self._guard = threading.Lock()
        try:
            self._db = Database(f"sqlite:///{state_dir / 'chiron.db'}")
            self._store = LocalStore(state_dir / "artifacts")
            self._pepper = load_pepper(state_dir)
            self._recipes = Recipes(self._db, self._store)
            self._jobs = Jobs(
                self._db,
                self._store,
                self._recipes,
                enclave_dir=enclave_dir,
                checkpoints_dir=checkpoints_dir,
                logs_dir=state_dir,
                instance_id=instance_id(state_dir),
                platform="sim",
                concurrency=1,
                start_enclave=start_enclave,
                on_progress=self._progress,
            )
            if self._lock_fd is not None:
                self._jobs.recover()
            self._owner = self._account(OWNER_ACCOUNT, "owner")
        except BaseException:
            self._unlock()
            raise

    # --- what the owner's client registers ------------------------------------------

    def add_recipe(self, source: bytes, statement: SignedRecipeStatement) -> str:
        """Register a recipe file under its statement's name; return that name.

        The recipe's provider gets an account of its own (one per provider identity,
        as on a service); a changed file under the same name replaces the old one.
        """
        self._require_runner()
        provider = self._account(f"provider-{statement.provider.fingerprint[:32]}", "provider")
        name = statement.statement.name
        submission = RecipeSubmission(
            name=name,
            description="",
            task="classification",
            input_schema=None,
            source=source,
            statement=statement.to_bytes(),
        )
        return self._recipes.register(provider, submission, replace=True).record.name

    def upload_dataset(
        self, path: str | os.PathLike[str], *, progress: bool = False
    ) -> dict[str, Any]:
        """Keep a copy of an encrypted dataset (.chd) in the store; return its record.

        A copy, not a link: the store's files are read-only and the owner's file stays
        the owner's. `progress` is accepted for the service client's signature.
        """
        self._require_runner()
        source = Path(path)
        sha256 = file_sha256(source)
        info = headers.dataset_info(source)
        if not self._store.exists(sha256):
            staging = self._dir / f".staging-{uuid.uuid4().hex}"
            try:
                shutil.copyfile(source, staging)
                self._store.put_file(staging, sha256)
            finally:
                staging.unlink(missing_ok=True)
        with self._db.transaction() as session:
            record = session.scalar(
                select(Dataset).where(
                    Dataset.account_id == self._owner.id, Dataset.dataset_id == info.dataset_id
                )
            )
            if record is None:
                record = Dataset(id=uuid.uuid4().hex, account_id=self._owner.id, created=now())
                session.add(record)
            # The owner's file is the dataset: a re-encrypted one takes the old one's place
            # (a job on the old file then refuses to resume: the manifest names its header).
            record.dataset_id = info.dataset_id
            record.schema = json.dumps(info.schema)
            record.record_count = info.record_count
            record.size = source.stat().st_size
            record.sha256 = sha256
            record.header_sha256 = info.header_sha256
            return {"id": record.id, "dataset_id": info.dataset_id, "sha256": sha256}

    # --- jobs, as the REST API answers ------------------------------------------------

    def recipe_statement(self, name: str) -> bytes:
        statement = self._recipes.get(self._owner, name).statement_bytes
        if statement is None:
            raise Conflict(f"recipe {name!r} has no provider statement")
        return statement

    def create_job(self, *, recipe: str, dataset: str) -> dict[str, Any]:
        self._require_runner()
        job = self._jobs.create(self._owner, recipe_name=recipe, dataset_pk=dataset)
        return job_view(job, self._owner)

    def jobs(self) -> list[dict[str, Any]]:
        return [job_view(job, self._owner) for job in self._jobs.list(self._owner)]

    def job(self, job_id: str) -> dict[str, Any]:
        return job_view(self._jobs.get(self._owner, job_id), self._owner)

    def job_evidence(self, job_id: str, nonce: bytes) -> bytes:
        return self._jobs.evidence(self._owner, job_id, nonce)

    def start_job(self, job_id: str, authorization: TrainAuthorization) -> dict[str, Any]:
        return job_view(self._jobs.start(self._owner, job_id, authorization), self._owner)

    def resume_job(self, job_id: str) -> dict[str, Any]:
        self._require_runner()
        return job_view(self._jobs.resume(self._owner, job_id), self._owner)

    def job_manifest(self, job_id: str) -> bytes:
        return self._store.read_bytes(self._jobs.manifest(self._owner, job_id))

    def job_result(self, job_id: str, name: str) -> bytes:
        return self._store.read_bytes(self._jobs.result(self._owner, job_id, name))

    def wait_job(
        self,
        job_id: str,
        *,
        on_update: UpdateHandler | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> dict[str, Any]:
        """Wait until the job is done (returned) or failed (JobFailed raised).

        `on_update` gets each progress event as the enclave sends it (the job's id,
        state, step and total). An interrupted job raises Conflict naming how to resume.
        """
        if on_update is not None:
            with self._guard:
                self._listeners[job_id] = on_update
                last = self._last.get(job_id)
            if last is not None:
                on_update(_progress_update(job_id, *last))
        try:
            while True:
                seen = self._jobs.state_changes.seen()
                done = job_outcome(self.job(job_id), f"chiron service jobs resume {job_id} --local")
                if done is not None:
                    return done
                # This process runs the job: it says when a job ended, and the record
                # is read again then (or after `poll_seconds`, at the most).
                self._jobs.state_changes.wait(seen, min(poll_seconds, POLL_SECONDS))
        finally:
            with self._guard:
                self._listeners.pop(job_id, None)

    def _progress(self, job_id: str, step: int, total: int) -> None:
        with self._guard:
            self._last[job_id] = (step, total)
            listener = self._listeners.get(job_id)
        if listener is not None:
            listener(_progress_update(job_id, step, total))

    # --- lifetime -------------------------------------------------------------------

    def _account(self, name: str, role: str) -> Account:
        """The local account `name`, made on first use (its token is never kept)."""
        for attempt in (0, 1):
            with self._db.transaction() as session:
                account = session.scalar(select(Account).where(Account.name == name))
            if account is not None or attempt:
                break
            add_account(self._db, self._pepper, name=name, role=role, token=new_token())
        assert account is not None
        return account

    def _require_runner(self) -> None:
        if self._lock_fd is None:
            raise ServiceError(f"another {RUNNER} is using the state directory {self._dir}")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        """Stop every enclave; a job still running is interrupted, to resume later."""
        try:
            if self._lock_fd is not None:
                self._jobs.close()
            self._db.close()
        finally:
            self._unlock()

    def __enter__(self) -> LocalHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _progress_update(job_id: str, step: int, total: int) -> dict[str, Any]:
    return {"id": job_id, "state": "running", "step": step, "total": total}
