"""The recipe registry: providers publish a description and their signed statement.

A recipe is registered with the provider's signed statement (`core.recipe_statement`)
over its source. The service verifies the statement, that it signs this very source
under this recipe's name, and that a provider account always registers under one
provider identity (its first registration pins it). Owners list recipes by name, task,
input schema and the statement, so their clients can check for themselves who will hold
the model's second key share (a provider lists only its own: `host.authorization`);
nothing the service says about a provider is believed by an enclave, which checks the
statement again. The source and the statement are stored
in the artifact store; the source is read only to hand it to a training enclave.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError

from chiron.core.errors import AccessDenied, Conflict, InputError
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.recipe_statement import SignedRecipeStatement, check_recipe_name
from chiron.core.schema import DatasetSchema
from chiron.host import authorization
from chiron.host.authorization import Action, Kind
from chiron.host.db import Account, Database, Recipe, now
from chiron.host.store import ArtifactStore

MAX_DESCRIPTION_CHARS = 4000
_TASK = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class RecipeSubmission:
    """A registration request: the recipe file and the provider's signed statement over it."""

    name: str
    description: str
    task: str
    input_schema: dict[str, Any] | None
    source: bytes
    statement: bytes


@dataclass(frozen=True)
class RegisteredRecipe:
    """A recipe record with its stored statement, parsed (what the API shows)."""

    record: Recipe
    statement: SignedRecipeStatement | None
    statement_bytes: bytes | None


class Recipes:
    def __init__(self, db: Database, store: ArtifactStore) -> None:
        self._db = db
        self._store = store

    def register(
        self, account: Account, submission: RecipeSubmission, *, replace: bool = False
    ) -> RegisteredRecipe:
        """Publish a recipe; registering the very same recipe again is a no-op.

        A different recipe under a taken name is a Conflict, unless `replace`: a host
        whose recipes are its one user's own files (`host.local.LocalHost`) follows the
        file as it changes.
        """
        authorization.require(Action.REGISTER_RECIPE, account)
        statement = _check(submission)
        provider_public = statement.provider.to_bytes().hex()
        schema = (
            None
            if submission.input_schema is None
            else json.dumps(DatasetSchema.from_dict(submission.input_schema).to_dict())
        )
        source_sha256 = self._store.put_bytes(submission.source)
        statement_sha256 = self._store.put_bytes(submission.statement)
        recipe = Recipe(
            name=submission.name,
            account_id=account.id,
            description=submission.description,
            task=submission.task,
            input_schema=schema,
            provider_public=provider_public,
            source_sha256=source_sha256,
            statement_sha256=statement_sha256,
            created=now(),
        )
        try:
            with self._db.transaction() as session:
                _pin_provider(session, account, provider_public)
                existing = session.get(Recipe, submission.name)
                if existing is None:
                    session.add(recipe)
                elif _same(existing, recipe):
                    recipe = existing
                elif replace or (
                    existing.statement_sha256 is None and existing.account_id == account.id
                ):
                    # Registered before statements existed: its provider signs it now.
                    for field in (*_FIELDS, "source_sha256", "statement_sha256"):
                        setattr(existing, field, getattr(recipe, field))
                    recipe = existing
                else:
                    raise Conflict(f"a different recipe named {submission.name!r} exists")
        except DatabaseIntegrityError:
            raise Conflict(f"a recipe named {submission.name!r} was registered meanwhile") from None
        return RegisteredRecipe(recipe, statement, submission.statement)

    def list(self, account: Account) -> list[RegisteredRecipe]:
        """The recipes `account` may see: the catalogue for owners, its own for providers."""
        with self._db.transaction() as session:
            records = authorization.listing(session, Kind.RECIPE, account)
        return [self._with_statement(record) for record in records]

    def get(self, account: Account, name: str) -> RegisteredRecipe:
        with self._db.transaction() as session:
            record = authorization.find(session, Kind.RECIPE, account, name)
        return self._with_statement(record)

    def statement(self, recipe: Recipe) -> SignedRecipeStatement:
        """The provider's statement a job on this recipe is started with."""
        registered = self._with_statement(recipe)
        if registered.statement is None:
            raise Conflict(
                f"recipe {recipe.name!r} has no provider statement; its provider must register "
                "it again"
            )
        return registered.statement

    def _with_statement(self, recipe: Recipe) -> RegisteredRecipe:
        if recipe.statement_sha256 is None:
            return RegisteredRecipe(recipe, None, None)
        data = self._store.read_bytes(recipe.statement_sha256)
        return RegisteredRecipe(recipe, SignedRecipeStatement.from_bytes(data), data)


def _check(submission: RecipeSubmission) -> SignedRecipeStatement:
    """Validate a submission; return its statement, verified against the source and name."""
    check_recipe_name(submission.name)
    if not _TASK.fullmatch(submission.task):
        raise InputError("a task is 1-64 lowercase letters, digits, '_' or '-'")
    if len(submission.description) > MAX_DESCRIPTION_CHARS:
        raise InputError(f"the description is longer than {MAX_DESCRIPTION_CHARS} characters")
    if not 0 < len(submission.source) <= MAX_RECIPE_BYTES:
        raise InputError(f"recipe source must be between 1 and {MAX_RECIPE_BYTES} bytes")
    statement = SignedRecipeStatement.from_bytes(submission.statement)
    statement.check_recipe(submission.source)
    if statement.statement.name != submission.name:
        raise InputError(
            f"the provider's statement names recipe {statement.statement.name!r}, "
            f"not {submission.name!r}"
        )
    return statement


def _pin_provider(session: Any, account: Account, provider_public: str) -> None:
    """Pin the account to the statement's provider identity, or refuse another identity.

    One UPDATE sets it only while unset, so two first registrations racing under
    different identities cannot both win.
    """
    session.execute(
        update(Account)
        .where(Account.id == account.id, Account.provider_public.is_(None))
        .values(provider_public=provider_public)
    )
    pinned = session.scalar(select(Account.provider_public).where(Account.id == account.id))
    if pinned != provider_public:
        raise AccessDenied(
            "this account registers recipes under another provider identity; "
            "use that key or another account"
        )


_FIELDS = ("account_id", "description", "task", "input_schema", "provider_public")


def _same(a: Recipe, b: Recipe) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _FIELDS) and (
        (a.source_sha256, a.statement_sha256) == (b.source_sha256, b.statement_sha256)
    )
