"""Query sessions: a query enclave per session, relaying the owner's and provider's calls.

The service adds only what it holds (the model file for `load_model`, a dataset's path
for `evaluate`) and decides who may make which call (`host.authorization`); inputs, key
shares, answers and reports cross sealed to the enclave or to the owner, so relaying
them reveals nothing.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.errors import InputError, NotFound
from chiron.host import authorization
from chiron.host.authorization import Action, Kind
from chiron.host.db import Account, Database, Model
from chiron.host.enclaves import ManagedEnclave
from chiron.host.store import ArtifactStore

RELAYED_CALLS = ("load_model", "provision_share", "query", "evaluate")


@dataclass
class QuerySession:
    id: str
    account_id: str
    model_pk: str
    enclave: ManagedEnclave = field(repr=False)


class QuerySessions:
    """Live sessions (held in memory: an enclave does not outlive the service)."""

    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        *,
        enclave_dir: Path,
        logs_dir: Path,
        platform: str,
    ) -> None:
        self._db = db
        self._store = store
        self._enclave_dir = enclave_dir
        self._logs = logs_dir
        self._platform = platform
        self._sessions: dict[str, QuerySession] = {}
        self._guard = threading.Lock()

    def create(self, account: Account, model_pk: str) -> tuple[QuerySession, Model]:
        authorization.require(Action.OPEN_QUERY_SESSION, account)
        model = self._model(account, model_pk)
        session_id = uuid.uuid4().hex
        enclave = ManagedEnclave(
            "query",
            self._enclave_dir,
            platform=self._platform,
            log_path=self._logs / f"query-{session_id}.log",
        )
        session = QuerySession(session_id, account.id, model.id, enclave)
        with self._guard:
            self._sessions[session_id] = session
        return session, model

    def _model(self, account: Account, model_pk: str) -> Model:
        with self._db.transaction() as db_session:
            return authorization.find(db_session, Kind.MODEL, account, model_pk)

    def get(self, account: Account, session_id: str) -> QuerySession:
        """A live session `account` may see: its owner's, or its model's provider's."""
        with self._guard:
            session = self._sessions.get(session_id)
        if session is not None:
            with self._db.transaction() as db_session:
                if authorization.query_session_visible(db_session, account, session.model_pk):
                    return session
        raise authorization.not_found(Kind.QUERY_SESSION, session_id)

    def evidence(self, account: Account, session_id: str, nonce: bytes) -> bytes:
        return self.get(account, session_id).enclave.evidence(nonce)

    def call(
        self, account: Account, session_id: str, name: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        """Relay one call, after deciding whether this caller may make it."""
        if name not in RELAYED_CALLS:
            raise NotFound(f"no call {name!r} (use one of {', '.join(RELAYED_CALLS)})")
        session = self.get(account, session_id)
        # The session's owner makes every call (the enclave checks each share and
        # signature itself); the model's provider only relays the provider's share.
        releases_provider_share = name == "provision_share" and args.get("party") == "provider"
        authorization.require(
            Action.RELEASE_PROVIDER_SHARE if releases_provider_share else Action.CALL_QUERY_SESSION,
            account,
            session,
        )
        args = dict(args)
        if name == "load_model":
            args = {"model": self._store.read_bytes(self._model(account, session.model_pk).sha256)}
        elif name == "evaluate":
            args["dataset_path"] = self._dataset_path(account, args.pop("dataset", None))
        return session.enclave.call(name, args)

    def _dataset_path(self, account: Account, dataset_pk: object) -> str:
        if not isinstance(dataset_pk, str):
            raise InputError("evaluate needs 'dataset': the id of one of your datasets")
        with self._db.transaction() as db_session:
            dataset = authorization.find(db_session, Kind.DATASET, account, dataset_pk)
        return str(self._store.local_path(dataset.sha256))

    def close(self, account: Account, session_id: str) -> None:
        session = self.get(account, session_id)
        authorization.require(Action.CLOSE_QUERY_SESSION, account, session)
        self._remove(session)

    def _remove(self, session: QuerySession) -> None:
        with self._guard:
            self._sessions.pop(session.id, None)
        session.enclave.close()

    def reap_idle(self, idle_seconds: float, now_monotonic: float) -> None:
        with self._guard:
            stale = [
                s
                for s in self._sessions.values()
                if not s.enclave.busy and now_monotonic - s.enclave.last_used > idle_seconds
            ]
        for session in stale:
            self._remove(session)

    def close_all(self) -> None:
        with self._guard:
            sessions = list(self._sessions.values())
        for session in sessions:
            self._remove(session)
