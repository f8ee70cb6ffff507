"""Resumable, checksummed uploads of encrypted datasets and escrowed models.

The client declares the file's size and SHA-256, then appends chunks (each with its own
SHA-256) at the offset the service reports. The bytes so far live in a staging file
whose length *is* the upload's progress, so after a crash (even SIGKILL mid-chunk) the
client asks for the offset and carries on. Completion checks the size and the whole
file's digest, reads the public header, stores the ciphertext, and registers the
dataset or model in one transaction; a file that fails any check is discarded whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select

from chiron.core.errors import Conflict, InputError, IntegrityError
from chiron.host import authorization, headers
from chiron.host.authorization import Action, Kind
from chiron.host.db import UPLOAD_KINDS, Account, Database, Dataset, Model, Upload, now
from chiron.host.store import ArtifactStore, file_sha256

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Uploads:
    """Upload staging and completion; one lock per upload orders its chunk writes."""

    def __init__(
        self, db: Database, store: ArtifactStore, staging_dir: Path, *, max_bytes: int
    ) -> None:
        self._db = db
        self._store = store
        self._staging = staging_dir
        self._staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _staged(self, upload_id: str) -> Path:
        return self._staging / f"{upload_id}.part"

    @contextlib.contextmanager
    def _locked(self, upload_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(upload_id, threading.Lock())
        with lock:
            yield

    def recover(self) -> None:
        """Remove staging files of uploads that no longer exist or were registered."""
        with self._db.transaction() as session:
            open_ids = set(
                session.scalars(select(Upload.id).where(Upload.result_id.is_(None))).all()
            )
        for path in self._staging.glob("*.part"):
            if path.stem not in open_ids:
                path.unlink(missing_ok=True)

    def create(self, account: Account, *, kind: str, size: int, sha256: str) -> Upload:
        authorization.require(Action.UPLOAD, account)
        if kind not in UPLOAD_KINDS:
            raise InputError(f"kind must be one of {', '.join(UPLOAD_KINDS)}")
        if not 0 < size <= self._max_bytes:
            raise InputError(f"size must be between 1 and {self._max_bytes} bytes")
        if not _SHA256.match(sha256):
            raise InputError("sha256 must be 64 lowercase hex digits")
        upload = Upload(
            id=uuid.uuid4().hex,
            account_id=account.id,
            kind=kind,
            size=size,
            sha256=sha256,
            result_id=None,
            created=now(),
        )
        with self._db.transaction() as session:
            session.add(upload)
        self._staged(upload.id).touch(mode=0o600)
        return upload

    def get(self, account: Account, upload_id: str) -> tuple[Upload, int]:
        """The upload and how many bytes the service holds (where to resume)."""
        with self._db.transaction() as session:
            upload = authorization.find(session, Kind.UPLOAD, account, upload_id)
        if upload.result_id is not None:
            return upload, upload.size
        try:
            return upload, self._staged(upload_id).stat().st_size
        except FileNotFoundError:
            return upload, 0

    def open_uploads(self, account: Account) -> list[Upload]:
        """The caller's unfinished uploads, so a client can resume after a crash."""
        with self._db.transaction() as session:
            return authorization.listing(session, Kind.UPLOAD, account, Upload.result_id.is_(None))

    def write_chunk(
        self, account: Account, upload_id: str, *, offset: int, data: bytes, sha256: str
    ) -> int:
        """Append one chunk at `offset`; return the new offset."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError("the chunk's SHA-256 does not match its bytes; send it again")
        with self._locked(upload_id):
            upload, held = self.get(account, upload_id)
            if upload.result_id is not None:
                raise Conflict(f"upload {upload_id} is already complete")
            if offset != held:
                raise Conflict(f"upload {upload_id} continues at byte {held}, not {offset}")
            if not data:
                raise InputError("empty chunk")
            if held + len(data) > upload.size:
                raise InputError(f"the chunk goes past the declared size of {upload.size} bytes")
            fd = os.open(self._staged(upload_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            return held + len(data)

    def complete(self, account: Account, upload_id: str) -> tuple[str, str]:
        """Check and register the upload; return ("dataset" | "model", its id)."""
        with self._locked(upload_id):
            upload, held = self.get(account, upload_id)
            if upload.result_id is not None:
                return upload.kind, upload.result_id
            if held != upload.size:
                raise Conflict(f"upload {upload_id} has {held} of {upload.size} bytes")
            staged = self._staged(upload_id)
            if file_sha256(staged) != upload.sha256:
                self._discard(upload_id)
                raise IntegrityError(
                    "the uploaded file's SHA-256 does not match the declared one; "
                    "the upload was discarded"
                )
            try:
                result_id = self._register(account, upload, staged)
            except (InputError, Conflict):
                # Complete but unusable: nothing a client could add would fix it.
                self._discard(upload_id)
                raise
            staged.unlink(missing_ok=True)
            return upload.kind, result_id

    def _register(self, account: Account, upload: Upload, staged: Path) -> str:
        if upload.kind == "dataset":
            info = headers.dataset_info(staged)
            self._store.put_file(staged, upload.sha256)
            with self._db.transaction() as session:
                existing = session.scalar(
                    select(Dataset).where(
                        Dataset.account_id == account.id, Dataset.dataset_id == info.dataset_id
                    )
                )
                if existing is not None and existing.sha256 != upload.sha256:
                    raise Conflict(f"you already have a different dataset {info.dataset_id}")
                if existing is None:
                    existing = Dataset(
                        id=uuid.uuid4().hex,
                        account_id=account.id,
                        dataset_id=info.dataset_id,
                        schema=json.dumps(info.schema),
                        record_count=info.record_count,
                        size=upload.size,
                        sha256=upload.sha256,
                        header_sha256=info.header_sha256,
                        created=now(),
                    )
                    session.add(existing)
                session.get_one(Upload, upload.id).result_id = existing.id
                return existing.id
        model = headers.model_info(staged)
        self._store.put_file(staged, upload.sha256)
        with self._db.transaction() as session:
            existing_model = session.scalar(
                select(Model).where(Model.account_id == account.id, Model.sha256 == upload.sha256)
            )
            if existing_model is not None:
                session.get_one(Upload, upload.id).result_id = existing_model.id
                return existing_model.id
            record = Model(
                id=uuid.uuid4().hex,
                account_id=account.id,
                model_id=model.model_id,
                job_id=None,
                schema=json.dumps(model.schema),
                query_policy=json.dumps(model.query_policy),
                size=upload.size,
                sha256=upload.sha256,
                created=now(),
            )
            session.add(record)
            session.get_one(Upload, upload.id).result_id = record.id
            return record.id

    def discard(self, account: Account, upload_id: str) -> None:
        with self._locked(upload_id):
            upload, _ = self.get(account, upload_id)
            if upload.result_id is not None:
                raise Conflict(f"upload {upload_id} is complete; nothing to discard")
            self._discard(upload_id)

    def _discard(self, upload_id: str) -> None:
        with self._db.transaction() as session:
            upload = session.get(Upload, upload_id)
            if upload is not None:
                session.delete(upload)
        self._staged(upload_id).unlink(missing_ok=True)
