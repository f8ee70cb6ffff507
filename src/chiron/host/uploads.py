"""Resumable, checksummed uploads of encrypted datasets and escrowed models.

The client declares the file's size and SHA-256, then appends chunks (each with its own
SHA-256) at the offset the service reports. The bytes so far live in a staging file
whose length *is* the upload's progress, so after a crash (even SIGKILL mid-chunk) the
client asks for the offset and carries on. Completion checks the size and the whole
file's digest, reads the public header, stores the ciphertext, and registers the
dataset or model in one transaction; a file that fails any check is discarded whole.

Speed without weaker guarantees:

- A chunk is appended only after its own SHA-256 matched, so any prefix of it that a
  crash leaves in the staging file is correct data, and the resumed offset is right.
- There is no fsync per chunk. A helper thread syncs the staging file in the background
  and records in `<id>.synced` how many bytes are durable, with the boot it was made
  in. A service killed and restarted on the same boot finds every appended byte in the
  page cache; after a reboot, `recover` cuts the file back to the recorded durable
  length, so an upload never resumes past bytes the disk may not hold.
- The whole file's SHA-256 is computed as chunks are appended, on a helper thread, so
  the next chunk can arrive meanwhile. Completion uses it when this process appended
  every byte (the staging folder is the service's own, mode 0700, and a chunk's bytes
  are hashed from the very buffer that was written), and reads the file again
  otherwise (after a restart). Either way the file gets one fsync and the digest check
  before it is registered, and an unregistered staging file is never visible as a
  dataset or model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from chiron.core.errors import Conflict, InputError, IntegrityError
from chiron.host import authorization, headers
from chiron.host.authorization import Action, Kind
from chiron.host.db import UPLOAD_KINDS, Account, Database, Dataset, Model, Upload, now
from chiron.host.job_records import model_record
from chiron.host.staging import (
    Buffer,
    RunningDigest,
    append,
    boot_id,
    durable_length,
    recorded_boot,
    update,
)
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
        # Per open upload, the SHA-256 of what this process appended, from byte 0 on.
        self._digests: dict[str, RunningDigest] = {}
        # Helper threads hash appended chunks and sync staging files while the next
        # chunks arrive: hashlib and fdatasync release the GIL.
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chiron-upload-hash")
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chiron-upload-sync")
        self._syncs: dict[str, Future[None]] = {}
        # Uploads whose background sync the disk refused: the kernel reports a write-back
        # error once, to the first sync that asks, so a later fsync may pass while the
        # disk does not hold the bytes that were hashed. Such an upload never registers.
        self._sync_failed: set[str] = set()
        self._boot = boot_id()

    def _staged(self, upload_id: str) -> Path:
        return self._staging / f"{upload_id}.part"

    def _sync_record(self, upload_id: str) -> Path:
        return self._staging / f"{upload_id}.synced"

    def _sync_in_background(self, upload_id: str) -> None:
        """Make the staging file durable as it is now, then record its durable length."""
        try:
            fd = os.open(self._staged(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            return  # completed or discarded meanwhile
        try:
            size = os.fstat(fd).st_size
            os.fdatasync(fd)
        except OSError:
            self._sync_failed.add(upload_id)
            raise
        finally:
            os.close(fd)
        # Written after the data is durable, so it never vouches for more than the disk
        # holds; a record lost in a crash only makes recovery cut back further.
        self._record_durable(upload_id, size)

    def _record_durable(self, upload_id: str, size: int) -> None:
        record = self._sync_record(upload_id)
        temporary = record.with_suffix(".synced-new")
        temporary.write_text(f"{size} {self._boot}\n")
        temporary.replace(record)

    def close(self) -> None:
        """Stop the helper threads, once a background sync already running has finished.

        That sync ends by recording what it made durable, so its record tells the truth;
        a sync still queued is dropped, which only leaves a record vouching for less (a
        reboot cuts the upload back further, and its client resends the rest). Queued
        hashing is dropped too: a running digest dies with this object, and completion
        after a restart reads the file again.
        """
        self._syncer.shutdown(wait=True, cancel_futures=True)
        self._hasher.shutdown(wait=True, cancel_futures=True)

    def _wait_for_sync(self, upload_id: str) -> None:
        pending = self._syncs.pop(upload_id, None)
        if pending is not None:
            with contextlib.suppress(OSError):
                pending.result()

    @contextlib.contextmanager
    def _locked(self, upload_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(upload_id, threading.Lock())
        with lock:
            yield

    def recover(self) -> None:
        """Remove staging files of uploads that no longer exist or were registered.

        After a reboot, cut each open upload's staging file back to the length its
        record says is durable: what lies beyond may never have reached the disk.
        """
        with self._db.transaction() as session:
            open_ids = set(
                session.scalars(select(Upload.id).where(Upload.result_id.is_(None))).all()
            )
        for path in self._staging.iterdir():
            upload_id = path.name.split(".", 1)[0]
            if upload_id not in open_ids or path.suffix == ".synced-new":
                path.unlink(missing_ok=True)
        for upload_id in open_ids:
            staged, record = self._staged(upload_id), self._sync_record(upload_id)
            if not staged.exists():
                continue
            # A missing or unreadable record vouches for nothing: the upload starts over.
            if recorded_boot(record) == self._boot != "unknown":
                continue  # the same boot: the page cache still holds every byte
            durable = durable_length(record)
            if staged.stat().st_size > durable:
                with open(staged, "r+b") as handle:
                    handle.truncate(durable)
                    os.fsync(handle.fileno())

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
        self._record_durable(upload.id, 0)
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
        self,
        account: Account,
        upload_id: str,
        *,
        offset: int,
        data: Buffer | Sequence[Buffer],
        sha256: str,
        data_sha256: str | None = None,
    ) -> int:
        """Append one chunk at `offset`; return the new offset.

        `data` is the chunk's bytes, or the blocks it arrived in. `data_sha256` is its
        SHA-256 when the caller computed it already (the API route hashes the body while
        it arrives); it is compared like any other.
        """
        blocks: Sequence[Buffer] = (
            (data,) if isinstance(data, bytes | bytearray | memoryview) else tuple(data)
        )
        size = sum(len(block) for block in blocks)
        if data_sha256 is None:
            digest = hashlib.sha256()
            update(digest, blocks)
            data_sha256 = digest.hexdigest()
        if data_sha256 != sha256:
            raise IntegrityError("the chunk's SHA-256 does not match its bytes; send it again")
        with self._locked(upload_id):
            upload, held = self.get(account, upload_id)
            if upload.result_id is not None:
                raise Conflict(f"upload {upload_id} is already complete")
            if offset != held:
                raise Conflict(f"upload {upload_id} continues at byte {held}, not {offset}")
            if not size:
                raise InputError("empty chunk")
            if held + size > upload.size:
                raise InputError(f"the chunk goes past the declared size of {upload.size} bytes")
            # The running digest goes on only from where it left off; anything else (a
            # restart, a failed write) leaves completion to read the file again.
            running = self._digests.pop(upload_id, None) or RunningDigest()
            fd = os.open(self._staged(upload_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                append(fd, blocks)
            finally:
                os.close(fd)
            if running.covered == held:
                running.add(self._hasher, blocks, size)
                self._digests[upload_id] = running
            self._syncs[upload_id] = self._syncer.submit(self._sync_in_background, upload_id)
            return held + size

    def complete(self, account: Account, upload_id: str) -> tuple[str, str]:
        """Check and register the upload; return ("dataset" | "model", its id)."""
        with self._locked(upload_id):
            upload, held = self.get(account, upload_id)
            if upload.result_id is not None:
                return upload.kind, upload.result_id
            if held != upload.size:
                raise Conflict(f"upload {upload_id} has {held} of {upload.size} bytes")
            staged = self._staged(upload_id)
            self._wait_for_sync(upload_id)
            if upload_id in self._sync_failed:
                self._discard(upload_id)
                raise IntegrityError(
                    "the service's disk failed while storing the upload; it was discarded"
                )
            # One fsync for the whole file, before anything can be registered.
            with open(staged, "rb") as handle:
                os.fsync(handle.fileno())
            running = self._digests.pop(upload_id, None)
            if running is not None and running.covered == held:
                digest = running.hexdigest()
            else:
                digest = file_sha256(staged)
            if digest != upload.sha256:
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
            self._sync_record(upload_id).unlink(missing_ok=True)
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
            record = model_record(
                model, account_id=account.id, job_id=None, size=upload.size, sha256=upload.sha256
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
        self._wait_for_sync(upload_id)
        self._sync_failed.discard(upload_id)
        self._digests.pop(upload_id, None)
        with self._db.transaction() as session:
            upload = session.get(Upload, upload_id)
            if upload is not None:
                session.delete(upload)
        self._staged(upload_id).unlink(missing_ok=True)
        self._sync_record(upload_id).unlink(missing_ok=True)
