"""Who may see and do what on the host: every authorization rule of the service, here.

Like `core.attestation.policy`, the rules are small named parts composed with `AnyOf`,
and there are two kinds:

*Visibility* says which records an account may know exist. A rule is a SQL condition,
so listing records and fetching one by id use the very same rule: a list never shows
what a lookup would refuse, nor the reverse. A record one may not see is refused with
`NotFound`, worded exactly as for an id that exists nowhere, so another party's ids are
no oracle (404, never 403).

*Permission* says what an account may do to a record it can see, or which role may make
a record at all. It is refused with `AccessDenied` (403): the caller already knows the
record exists, so saying no reveals nothing more.

The parties (docs/api.md, "Who sees what"):

- an owner sees its own datasets, uploads, jobs, models and query sessions, and the
  public recipe catalogue;
- a provider sees the recipes its account registered, the jobs that use them and the
  models those jobs made, as state and public metadata only: never an owner's datasets,
  uploads, reports, results (the model file included) or job messages;
- the operator account is a provider like any other. The API gives nobody a view across
  accounts: the operator runs the machine (accounts, logs, the database) from its state
  directory, and a leaked operator token must not open every provider's records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from chiron.core.errors import AccessDenied, NotFound
from chiron.host.db import Account, Base, Dataset, Job, Model, Recipe, Upload

OWNER = "owner"
PROVIDER = "provider"


class Kind(StrEnum):
    """The kinds of record the service keeps for its accounts."""

    RECIPE = "recipe"
    DATASET = "dataset"
    UPLOAD = "upload"
    JOB = "job"
    MODEL = "model"
    QUERY_SESSION = "query session"


def not_found(kind: Kind, key: str) -> NotFound:
    """The one refusal for a record that does not exist or that the caller may not see."""
    if kind is Kind.RECIPE:
        return NotFound(f"no recipe named {key!r}")
    return NotFound(f"no {kind} {key}")


# --- visibility: which records an account may know exist -----------------------------


class Visibility(ABC):
    """One part of a visibility rule: a SQL condition on a record's table."""

    @abstractmethod
    def condition(self, account: Account) -> ColumnElement[bool]:
        """True for the rows `account` may see through this part."""


class AnyOf(Visibility):
    """A record is visible when any part makes it so."""

    def __init__(self, *parts: Visibility) -> None:
        if not parts:
            raise ValueError("AnyOf needs at least one part")
        self.parts = parts

    def condition(self, account: Account) -> ColumnElement[bool]:
        return or_(*(part.condition(account) for part in self.parts))


@dataclass(frozen=True)
class MadeBy(Visibility):
    """Records the caller's own account made (its uploads, datasets, jobs; its recipes)."""

    column: InstrumentedAttribute[str]

    def condition(self, account: Account) -> ColumnElement[bool]:
        return self.column == account.id


@dataclass(frozen=True)
class Catalogue(Visibility):
    """Every row, for `role`: owners choose among all recipes (name, schema, statement).

    A recipe's source never leaves the host; what the catalogue shows is what its
    provider published to be chosen by owners.
    """

    role: str

    def condition(self, account: Account) -> ColumnElement[bool]:
        return true() if account.role == self.role else false()


class UsesProvidersRecipe(Visibility):
    """Jobs on a recipe the caller's provider account registered.

    The provider runs its code in them, so it may follow their state; which owner or
    dataset a job serves is hidden by `sees_private_fields`, not by this rule.
    """

    def condition(self, account: Account) -> ColumnElement[bool]:
        if account.role != PROVIDER:
            return false()
        return Job.recipe_name.in_(_recipes_of(account))


class MadeWithProvidersRecipe(Visibility):
    """Models a job on one of the caller's recipes made: the provider holds a key share."""

    def condition(self, account: Account) -> ColumnElement[bool]:
        if account.role != PROVIDER:
            return false()
        jobs = select(Job.id).where(Job.recipe_name.in_(_recipes_of(account)))
        return Model.job_id.in_(jobs)


def _recipes_of(account: Account) -> Any:
    return select(Recipe.name).where(Recipe.account_id == account.id)


@dataclass(frozen=True)
class Table:
    """Where a kind of record lives, its key column, and who may see its rows."""

    model: type[Base]
    key: InstrumentedAttribute[str]
    order: tuple[InstrumentedAttribute[Any], ...]
    visible: Visibility


TABLES: dict[Kind, Table] = {
    # Owners browse the catalogue; a provider sees only what its account registered.
    Kind.RECIPE: Table(
        Recipe,
        Recipe.name,
        (Recipe.name,),
        AnyOf(Catalogue(OWNER), MadeBy(Recipe.account_id)),
    ),
    # Datasets and uploads are the owner's alone: no provider sees them, not even the
    # provider whose recipe trains on them.
    Kind.DATASET: Table(
        Dataset, Dataset.id, (Dataset.created, Dataset.id), MadeBy(Dataset.account_id)
    ),
    Kind.UPLOAD: Table(Upload, Upload.id, (Upload.created, Upload.id), MadeBy(Upload.account_id)),
    Kind.JOB: Table(
        Job, Job.id, (Job.created, Job.id), AnyOf(MadeBy(Job.account_id), UsesProvidersRecipe())
    ),
    Kind.MODEL: Table(
        Model,
        Model.id,
        (Model.created, Model.id),
        AnyOf(MadeBy(Model.account_id), MadeWithProvidersRecipe()),
    ),
}


def visible(kind: Kind, account: Account) -> ColumnElement[bool]:
    """The SQL condition selecting the rows of `kind` that `account` may see."""
    return TABLES[kind].visible.condition(account)


def listing(
    session: Session, kind: Kind, account: Account, *where: ColumnElement[bool]
) -> list[Any]:
    """Every record of `kind` that `account` may see (and that meets `where`), in order."""
    table = TABLES[kind]
    query = select(table.model).where(visible(kind, account), *where).order_by(*table.order)
    return list(session.scalars(query).all())


def find(session: Session, kind: Kind, account: Account, key: str) -> Any:
    """The record of `kind` named `key`, if `account` may see it; NotFound otherwise."""
    table = TABLES[kind]
    record = session.scalar(select(table.model).where(table.key == key, visible(kind, account)))
    if record is None:
        raise not_found(kind, key)
    return record


def can_see(session: Session, kind: Kind, account: Account, key: str) -> bool:
    """Whether `account` may see the record of `kind` named `key` (False if there is none)."""
    table = TABLES[kind]
    found = session.scalar(select(table.key).where(table.key == key, visible(kind, account)))
    return found is not None


def query_session_visible(session: Session, account: Account, model_pk: str) -> bool:
    """Whether `account` may see a (live, in-memory) query session on model `model_pk`.

    A session is seen by whoever sees its model: its owner, who alone opens sessions on
    it, and the model's provider, who may attest the session's enclave and relay its own
    share to it. Another owner or provider gets NotFound.
    """
    return can_see(session, Kind.MODEL, account, model_pk)


def sees_private_fields(account: Account, job: Job) -> bool:
    """Whether `account` sees a job's owner-only fields (its dataset and failure message).

    A provider sees state, step counts and the reason class of its recipe's jobs; the
    enclave's message and which dataset of which owner the job trains on are the owner's.
    """
    return job.account_id == account.id


# --- permission: what an account may do -----------------------------------------------


class Owned(Protocol):
    """A record that belongs to one account (datasets, uploads, jobs, models, sessions)."""

    account_id: str


class Permission(ABC):
    """One part of a permission: may `account` do this (to `record`, if there is one)?"""

    @abstractmethod
    def allows(self, account: Account, record: Owned | None) -> bool: ...


@dataclass(frozen=True)
class RoleIs(Permission):
    role: str

    def allows(self, account: Account, record: Owned | None) -> bool:
        return account.role == self.role


class OwnsRecord(Permission):
    """The record belongs to the caller's account."""

    def allows(self, account: Account, record: Owned | None) -> bool:
        return record is not None and record.account_id == account.id


class SeesRecord(Permission):
    """Whoever may see the record (`find` checked that before any action is asked)."""

    def allows(self, account: Account, record: Owned | None) -> bool:
        return record is not None


class Action(StrEnum):
    REGISTER_RECIPE = "register a recipe"
    UPLOAD = "upload"
    CREATE_JOB = "create a job"
    START_JOB = "start a job"
    ATTEST_JOB = "attest a job's enclave"
    RESUME_JOB = "resume a job"
    READ_JOB_MANIFEST = "read a job's manifest"
    DOWNLOAD_RESULTS = "download a job's results"
    DOWNLOAD_MODEL_FILE = "download a model's file"
    OPEN_QUERY_SESSION = "open a query session"
    CALL_QUERY_SESSION = "make a query session call"
    RELEASE_PROVIDER_SHARE = "release the provider's key share"
    CLOSE_QUERY_SESSION = "close a query session"


@dataclass(frozen=True)
class Rule:
    """A permission and the one-line refusal a caller gets without it."""

    permission: Permission
    refusal: str


RULES: dict[Action, Rule] = {
    # Only a provider's signed statement names a provider; only its accounts publish.
    Action.REGISTER_RECIPE: Rule(RoleIs(PROVIDER), "only providers register recipes"),
    # Only owners hold data: a provider account never stores a dataset or model here.
    Action.UPLOAD: Rule(RoleIs(OWNER), "only data owners upload datasets and models"),
    Action.CREATE_JOB: Rule(RoleIs(OWNER), "only data owners create training jobs"),
    # A provider sees its recipe's jobs but only their owner drives them: the owner
    # attests the enclave it seals its data key to, starts it, and alone gets the
    # receipt, the report on its data and the model's file as a result.
    Action.START_JOB: Rule(OwnsRecord(), "only the job's owner starts it"),
    Action.ATTEST_JOB: Rule(OwnsRecord(), "only the job's owner attests its enclave"),
    # Resuming starts a fresh enclave that only the owner can unlock (it seals the
    # data key and the job secret to it), so only the owner asks for one.
    Action.RESUME_JOB: Rule(OwnsRecord(), "only the job's owner resumes it"),
    Action.READ_JOB_MANIFEST: Rule(OwnsRecord(), "only the job's owner reads its manifest"),
    Action.DOWNLOAD_RESULTS: Rule(OwnsRecord(), "only the job's owner downloads its results"),
    # The escrowed file is a job's result like the others. Its provider does not need it:
    # the owner's client sends the model's public header to the provider's key-release
    # agent and relays the share it gets back (`core.key_release`).
    Action.DOWNLOAD_MODEL_FILE: Rule(OwnsRecord(), "only the model's owner downloads its file"),
    Action.OPEN_QUERY_SESSION: Rule(RoleIs(OWNER), "only data owners open query sessions"),
    # Inputs, answers and reports are the session owner's: only it makes these calls.
    Action.CALL_QUERY_SESSION: Rule(
        OwnsRecord(), "this token may not make that call: only the session's owner may"
    ),
    # Whoever sees a session may relay the provider's share: its owner, or the model's
    # provider (the only provider who can see it). The share is sealed to the attested
    # enclave, which checks it; relaying it reveals nothing.
    Action.RELEASE_PROVIDER_SHARE: Rule(
        SeesRecord(), "this token may not release the provider's share"
    ),
    Action.CLOSE_QUERY_SESSION: Rule(OwnsRecord(), "only the session's owner closes it"),
}


def require(action: Action, account: Account, record: Owned | None = None) -> None:
    """Refuse with AccessDenied unless `account` may do `action` (to a record it sees)."""
    rule = RULES[action]
    if not rule.permission.allows(account, record):
        raise AccessDenied(rule.refusal)
