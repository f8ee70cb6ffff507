"""Content-addressed artifact stores: a folder on this machine, or an S3 bucket.

Every artifact (dataset and model ciphertext, receipts, sealed owner reports, recipe
source) is stored under its SHA-256, so a name can never point at other bytes, writing
the same artifact twice is harmless, and an artifact appears whole or not at all: the
local store renames a finished file into place, S3 makes an object visible only when
its upload completed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from chiron.core.errors import IntegrityError, NotFound, ServiceError, UsageError
from chiron.core.fileio import atomic_output, atomic_write

READ_BYTES = 1024 * 1024
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError("artifact names are SHA-256 hex digests")
    return digest


class ArtifactStore(Protocol):
    """Where ciphertext lives. Enclaves read artifacts through `local_path`."""

    def put_file(self, path: Path, sha256: str) -> None:
        """Store the file at `path`, whose SHA-256 the caller has just checked."""

    def put_bytes(self, data: bytes) -> str:
        """Store `data`; return its SHA-256."""

    def exists(self, sha256: str) -> bool: ...

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        """Stream an artifact in blocks (for downloads)."""

    def read_bytes(self, sha256: str) -> bytes: ...

    def local_path(self, sha256: str) -> Path:
        """A file on this machine holding the artifact (what an enclave is handed)."""


class LocalStore:
    """`<root>/sha256/ab/abcdef...`, files read-only once stored."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._root = root / "sha256"
        self._root.mkdir(exist_ok=True, mode=0o700)

    def _path(self, sha256: str) -> Path:
        return self._root / _check_digest(sha256)[:2] / sha256

    def put_file(self, path: Path, sha256: str) -> None:
        target = self._path(sha256)
        if target.exists():
            return
        target.parent.mkdir(exist_ok=True, mode=0o700)
        temporary = target.with_name(f".{sha256}.{os.getpid()}.linking")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        try:
            # A hard link costs nothing on one file system; the staging file it shares
            # an inode with is never written again, only deleted.
            os.link(path, temporary)
            os.chmod(temporary, 0o444)
            os.replace(temporary, target)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            with open(path, "rb") as source, atomic_output(target, mode=0o444) as out:
                shutil.copyfileobj(source, out, READ_BYTES)

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self._path(sha256)
        if not target.exists():
            target.parent.mkdir(exist_ok=True, mode=0o700)
            atomic_write(target, data, mode=0o444)
        return sha256

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        path = self.local_path(sha256)
        with open(path, "rb") as handle:
            while block := handle.read(READ_BYTES):
                yield block

    def read_bytes(self, sha256: str) -> bytes:
        return self.local_path(sha256).read_bytes()

    def local_path(self, sha256: str) -> Path:
        path = self._path(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256[:16]} is missing from the store")
        return path


class S3Store:
    """Objects `<prefix>/sha256/<hex>` in an S3-compatible bucket.

    Enclaves read files, so `local_path` downloads an artifact once into a cache folder
    and checks its digest there: the bucket is no more trusted than the host.
    """

    def __init__(self, url: str, cache_dir: Path, *, endpoint: str | None = None) -> None:
        import boto3  # only deployments that use S3 pay for importing it

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UsageError("--store must look like s3://bucket/prefix")
        self._bucket = parsed.netloc
        self._prefix = parsed.path.strip("/")
        self._client = boto3.client("s3", endpoint_url=endpoint)
        self._cache = cache_dir
        self._cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._errors = self._client.exceptions.ClientError

    def _key(self, sha256: str) -> str:
        name = f"sha256/{_check_digest(sha256)}"
        return f"{self._prefix}/{name}" if self._prefix else name

    def check(self) -> None:
        """Fail at start, with one line, if the bucket cannot be reached."""
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except Exception as exc:  # botocore raises many unrelated types
            raise ServiceError(f"cannot reach S3 bucket {self._bucket}: {exc}") from None

    def put_file(self, path: Path, sha256: str) -> None:
        if not self.exists(sha256):
            self._client.upload_file(str(path), self._bucket, self._key(sha256))

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.exists(sha256):
            self._client.put_object(Bucket=self._bucket, Key=self._key(sha256), Body=data)
        return sha256

    def exists(self, sha256: str) -> bool:
        try:
            self._client.head_object(Bucket=self._bucket, Key=self._key(sha256))
        except self._errors:
            return False
        return True

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self._bucket, Key=self._key(sha256))["Body"]
        except self._errors:
            raise NotFound(f"artifact {sha256[:16]} is missing from the store") from None
        try:
            yield from body.iter_chunks(READ_BYTES)
        finally:
            body.close()

    def read_bytes(self, sha256: str) -> bytes:
        return b"".join(self.iter_bytes(sha256))

    def local_path(self, sha256: str) -> Path:
        target = self._cache / _check_digest(sha256)
        if target.is_file():
            return target
        digest = hashlib.sha256()
        with atomic_output(target, mode=0o444) as out:
            for block in self.iter_bytes(sha256):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != sha256:
                raise IntegrityError(f"artifact {sha256[:16]} in the bucket has other content")
        return target


def open_store(store_url: str | None, state_dir: Path, *, endpoint: str | None) -> ArtifactStore:
    """The store `--store` names: None for the folder under the state directory."""
    if store_url is None:
        return LocalStore(state_dir / "artifacts")
    store = S3Store(store_url, state_dir / "cache", endpoint=endpoint)
    store.check()
    return store
