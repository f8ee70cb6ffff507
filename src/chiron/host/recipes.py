"""The recipe registry: providers publish a description; the source stays on the host.

Owners list recipes by name, task, input schema and the provider's public identity
(so their clients can check who will hold the model's second key share). The source
is stored in the artifact store and read only to hand it to a training enclave.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError

from chiron.core.errors import AccessDenied, Conflict, InputError, KeyFileError, NotFound
from chiron.core.keys import PublicIdentity
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.schema import DatasetSchema
from chiron.host.db import Account, Database, Recipe, now
from chiron.host.store import ArtifactStore

MAX_DESCRIPTION_CHARS = 4000
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TASK = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class RecipeSubmission:
    name: str
    description: str
    task: str
    input_schema: dict[str, Any] | None
    provider_public: bytes
    source: bytes


class Recipes:
    def __init__(self, db: Database, store: ArtifactStore) -> None:
        self._db = db
        self._store = store

    def register(self, account: Account, submission: RecipeSubmission) -> Recipe:
        """Publish a recipe; registering the very same recipe again is a no-op."""
        if account.role != "provider":
            raise AccessDenied("only providers register recipes")
        _check(submission)
        schema = (
            None
            if submission.input_schema is None
            else json.dumps(DatasetSchema.from_dict(submission.input_schema).to_dict())
        )
        source_sha256 = self._store.put_bytes(submission.source)
        recipe = Recipe(
            name=submission.name,
            account_id=account.id,
            description=submission.description,
            task=submission.task,
            input_schema=schema,
            provider_public=submission.provider_public.hex(),
            source_sha256=source_sha256,
            created=now(),
        )
        try:
            with self._db.transaction() as session:
                existing = session.get(Recipe, submission.name)
                if existing is not None:
                    if _same(existing, recipe):
                        return existing
                    raise Conflict(f"a different recipe named {submission.name!r} exists")
                session.add(recipe)
        except DatabaseIntegrityError:
            raise Conflict(f"a recipe named {submission.name!r} was registered meanwhile") from None
        return recipe

    def list(self) -> list[Recipe]:
        with self._db.transaction() as session:
            return list(session.scalars(select(Recipe).order_by(Recipe.name)).all())

    def get(self, name: str) -> Recipe:
        with self._db.transaction() as session:
            recipe = session.get(Recipe, name)
        if recipe is None:
            raise NotFound(f"no recipe named {name!r}")
        return recipe


def _check(submission: RecipeSubmission) -> None:
    if not _NAME.match(submission.name):
        raise InputError("recipe names are 1-64 lowercase letters, digits, '_' or '-'")
    if not _TASK.match(submission.task):
        raise InputError("a task is 1-64 lowercase letters, digits, '_' or '-'")
    if len(submission.description) > MAX_DESCRIPTION_CHARS:
        raise InputError(f"the description is longer than {MAX_DESCRIPTION_CHARS} characters")
    if not 0 < len(submission.source) <= MAX_RECIPE_BYTES:
        raise InputError(f"recipe source must be between 1 and {MAX_RECIPE_BYTES} bytes")
    try:
        PublicIdentity.from_bytes(submission.provider_public)
    except (KeyFileError, ValueError):
        raise InputError("provider_public is not a 64-byte public identity") from None


def _same(a: Recipe, b: Recipe) -> bool:
    fields = ("account_id", "description", "task", "input_schema", "provider_public")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (
        a.source_sha256 == b.source_sha256
    )
