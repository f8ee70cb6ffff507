"""One running Chiron service: database, artifact store, uploads, jobs, query sessions.

`Service.open` is what `chiron serve` and the tests start from. It runs the database
migrations, creates the operator account on first start, and recovers from however
the service last stopped (SIGKILL included): stray staging files are removed, and jobs
that were in flight are marked `interrupted (host_restart)`, for their owners to resume
(one never started fails). `host.local.LocalHost` runs the same jobs, recipe registry
and stores in the owner's own process, for `--local`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
import uuid
from pathlib import Path

from chiron.core.attestation import SimRoot, load_sim_root
from chiron.core.errors import NotFound, ServiceError
from chiron.core.fileio import atomic_write, read_input_file, try_lock_file
from chiron.host import authorization
from chiron.host.accounts import authenticate, ensure_operator, load_pepper
from chiron.host.authorization import Action, Kind
from chiron.host.config import ServiceConfig
from chiron.host.db import Account, Database, Dataset, Model
from chiron.host.enclaves import ServiceEnclave
from chiron.host.jobs import Jobs
from chiron.host.queries import QuerySessions
from chiron.host.recipes import Recipes
from chiron.host.store import ArtifactStore, open_store
from chiron.host.uploads import Uploads

log = logging.getLogger("chiron.host")
REAP_EVERY_SECONDS = 30.0
INSTANCE_FILE = "instance-id"
LOCK_FILE = "serve.lock"


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = lock_state_dir(state)
        self.instance_id = instance_id(state)
        config.logs_dir.mkdir(exist_ok=True, mode=0o700)
        self.pepper = load_pepper(state)
        self.db = Database(config.database_url)
        self.store: ArtifactStore = open_store(config.store_url, state, endpoint=config.s3_endpoint)
        self.operator_token_path = ensure_operator(self.db, self.pepper, state)
        self.uploads = Uploads(
            self.db, self.store, state / "uploads", max_bytes=config.max_upload_bytes
        )
        self.recipes = Recipes(self.db, self.store)
        self.jobs = Jobs(
            self.db,
            self.store,
            self.recipes,
            enclave_dir=config.enclave_state_dir,
            checkpoints_dir=state / "checkpoints",
            logs_dir=config.logs_dir,
            instance_id=self.instance_id,
            platform=config.platform,
            concurrency=config.concurrency,
        )
        self.queries = QuerySessions(
            self.db,
            self.store,
            enclave_dir=config.enclave_state_dir,
            logs_dir=config.logs_dir,
            platform=config.platform,
        )
        self.attestation = ServiceEnclave(
            config.enclave_state_dir,
            platform=config.platform,
            log_path=config.logs_dir / "service-enclave.log",
        )
        self.uploads.recover()
        stopped = self.jobs.recover()
        if stopped:
            log.warning(
                "%d job(s) in flight when the service last stopped: interrupted or failed",
                stopped,
            )
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="chiron-reaper", daemon=True)
        self._reaper.start()

    @classmethod
    def open(cls, config: ServiceConfig) -> Service:
        return cls(config)

    def authenticate(self, token: str | None) -> Account:
        return authenticate(self.db, self.pepper, token)

    # --- datasets and models -----------------------------------------------

    def datasets(self, account: Account) -> list[Dataset]:
        with self.db.transaction() as session:
            return authorization.listing(session, Kind.DATASET, account)

    def dataset(self, account: Account, dataset_pk: str) -> Dataset:
        with self.db.transaction() as session:
            return authorization.find(session, Kind.DATASET, account, dataset_pk)

    def models(self, account: Account) -> list[Model]:
        with self.db.transaction() as session:
            return authorization.listing(session, Kind.MODEL, account)

    def model(self, account: Account, model_pk: str) -> Model:
        """A model's record, for its owner and its provider (who holds a key share)."""
        with self.db.transaction() as session:
            return authorization.find(session, Kind.MODEL, account, model_pk)

    def model_file(self, account: Account, model_pk: str) -> Model:
        """A model whose escrowed file `account` may download: its owner only."""
        model = self.model(account, model_pk)
        authorization.require(Action.DOWNLOAD_MODEL_FILE, account, model)
        return model

    def sim_root(self) -> SimRoot:
        """The simulated platform's root public key, which signs its enclaves' evidence.

        Meaningful only in simulation, where clients trust it on first use; the root is
        made by the first enclave that gives evidence, so one is asked if none has yet.
        """
        if self.config.platform != "sim":
            raise NotFound("this service's enclaves are not simulated: there is no sim root")
        root = load_sim_root(self.config.enclave_state_dir)
        if root is None:
            self.attestation.evidence(secrets.token_bytes(32))
            root = load_sim_root(self.config.enclave_state_dir)
        if root is None:
            raise ServiceError("the simulated platform did not create its root key")
        return root

    # --- lifetime --------------------------------------------------------------

    def _reap(self) -> None:
        idle = self.config.query_session_idle_seconds
        while not self._stop.wait(REAP_EVERY_SECONDS):
            moment = time.monotonic()
            try:
                self.queries.reap_idle(idle, moment)
                self.jobs.reap_idle(idle, moment)
            except Exception:
                log.exception("reaping idle enclaves failed")

    def close(self) -> None:
        self._stop.set()
        self.uploads.close()
        self.queries.close_all()
        self.attestation.close()
        self.jobs.close()
        self.db.close()
        os.close(self._lock_fd)


def instance_id(state_dir: Path) -> str:
    """This service's name among several sharing one database (which jobs are its own)."""
    path = state_dir / INSTANCE_FILE
    if not path.exists():
        atomic_write(path, uuid.uuid4().hex.encode("ascii"), mode=0o600)
    text = read_input_file(path, what="instance id", limit=64).decode("ascii", "replace")
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise ServiceError(f"{path} is corrupt; delete it to make a new one")
    return text


def lock_state_dir(state_dir: Path, *, holder: str = "chiron serve") -> int:
    """Hold an exclusive lock on the state directory for as long as the service runs.

    The lock dies with its process, however it ends: whoever takes it next knows that
    no job of the directory's instance is still running anywhere.
    """
    fd = try_lock_file(state_dir / LOCK_FILE)
    if fd is None:
        raise ServiceError(f"another {holder} is using the state directory {state_dir}")
    return fd
