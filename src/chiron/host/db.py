"""The service's metadata: accounts, recipes, uploads, datasets, jobs and models.

Only public facts live here (names, sizes, checksums, public headers, job states);
ciphertext lives in the artifact store and recipe source in the store too. Every change
that registers something is one transaction, so a crash leaves either the old state
or the new one, never half of a dataset, job or model. The schema is created and
upgraded by the Alembic migrations shipped in `chiron.host.migrations`, never by
`create_all`, so SQLite and PostgreSQL deployments follow the same history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from chiron.core.errors import ServiceError, UsageError

ROLES = ("owner", "provider")
UPLOAD_KINDS = ("dataset", "model")
JOB_STATES = ("created", "queued", "running", "interrupted", "done", "failed")
ACTIVE_JOB_STATES = ("created", "queued", "running")


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A party with a token: the operator/provider, or a data owner."""

    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # HMAC-SHA256 of the token under the service's pepper: a copy of the database
    # alone does not let anyone act as an account.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A provider account's identity (hex), pinned by its first signed recipe statement:
    # every later recipe of the account must be signed under the same identity.
    provider_public: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)


class Recipe(Base):
    """A provider's recipe: public description here, source and signed statement in the store.

    `provider_public` is the identity the provider's statement names (hex), never a value
    a caller supplied; `statement_sha256` names the stored statement file (NULL only for
    recipes registered before statements existed, which no job can use).
    """

    __tablename__ = "recipes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    description: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(64))
    input_schema: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider_public: Mapped[str] = mapped_column(String(128))
    source_sha256: Mapped[str] = mapped_column(String(64))
    statement_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)


class Upload(Base):
    """A resumable upload: the bytes so far live in a staging file named by `id`."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Set, in the same transaction that registers it, to the dataset or model made.
    result_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)


class Dataset(Base):
    """An owner's encrypted dataset: its public header and where the ciphertext is."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("account_id", "dataset_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    dataset_id: Mapped[str] = mapped_column(String(128))
    schema: Mapped[str] = mapped_column(Text)
    record_count: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # SHA-256 of the exact header bytes (what a job manifest names); NULL for datasets
    # uploaded before it was recorded, computed from the file when needed.
    header_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)


class Job(Base):
    """A training job: what the provider sees of it is `state`, `step`/`total` and `reason`."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    recipe_name: Mapped[str] = mapped_column(ForeignKey("recipes.name"))
    dataset_pk: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    # The service instance whose enclave runs the job (several may share a database).
    runner: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The enclave's one-line message on failure: shown to the job's owner only.
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_pk: Mapped[str | None] = mapped_column(String(32), nullable=True)
    receipt_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner_report_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner_report_signature_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # SHA-256 of the first started manifest's job binding (`JobManifest.job_binding`):
    # a resumed job must be started under a manifest with the same binding.
    binding_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The latest signed manifest (in the store): the owner's client resumes from it.
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)
    updated: Mapped[int] = mapped_column(BigInteger)


class Model(Base):
    """An escrowed model file (from a job or uploaded by its owner) and its public header."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    model_id: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    schema: Mapped[str] = mapped_column(Text)
    query_policy: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[int] = mapped_column(BigInteger)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite is set up for many threads and crash safety."""
    if url.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver Chiron installs; SQLAlchemy's bare default is psycopg2.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif not url.startswith(("sqlite:", "postgresql+psycopg:")):
        raise UsageError("--db must be a sqlite:/// or postgresql:// URL")
    try:
        if url.startswith("sqlite:"):
            engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
            )
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError):
        raise UsageError("--db is not a valid database URL") from None
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL with full sync: a committed registration survives SIGKILL and power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest migration (a no-op when it is current)."""
    config = Config()
    config.set_main_option("script_location", "chiron.host:migrations")
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise ServiceError(f"cannot open the database: {_first_line(exc)}") from None


def _first_line(exc: OperationalError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else "unknown error"


class Database:
    """The engine plus a transaction helper: `with db.transaction() as s: ...` commits or not."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
