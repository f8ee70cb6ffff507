"""Accounts and bearer tokens.

A token is shown once, when its account is made, and stored only as an HMAC-SHA256
under a per-service pepper kept in the state directory (0600): a copy of the database
alone is not enough to act as anyone. The operator's own token is written to
`<state>/operator.token` (0600) on first start, like a database's initial superuser.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError

from chiron.core.errors import AccessDenied, Conflict, InputError
from chiron.core.fileio import atomic_write, read_input_file
from chiron.host.db import ROLES, Account, Database, now

OPERATOR_NAME = "operator"
OPERATOR_TOKEN_FILE = "operator.token"  # noqa: S105 (a file name)
PEPPER_FILE = "token-pepper"
TOKEN_PREFIX = "chiron_"  # noqa: S105 (marks a string as a token)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class Unauthenticated(AccessDenied):
    """No token, or one that matches no account (HTTP 401, unlike a refused right)."""


def load_pepper(state_dir: Path) -> bytes:
    """The service's token pepper, created on first use."""
    path = state_dir / PEPPER_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            atomic_write(path, secrets.token_bytes(32), mode=0o600, overwrite=False)
        except InputError:
            pass  # another process made it first; use theirs
    pepper = read_input_file(path, what="token pepper", limit=64)
    if len(pepper) != 32:
        raise InputError(f"{path} is corrupt (expected 32 bytes)")
    return pepper


def token_hash(pepper: bytes, token: str) -> str:
    return hmac.new(pepper, token.encode("utf-8"), hashlib.sha256).hexdigest()


def create_account(db: Database, pepper: bytes, *, name: str, role: str) -> str:
    """Make an account and return its token (the only time the token exists in clear)."""
    token = new_token()
    add_account(db, pepper, name=name, role=role, token=token)
    return token


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def add_account(db: Database, pepper: bytes, *, name: str, role: str, token: str) -> None:
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise InputError("account names are 1-64 letters, digits, '_', '.', '@' or '-'")
    try:
        with db.transaction() as session:
            session.add(
                Account(
                    id=uuid.uuid4().hex,
                    name=name,
                    role=role,
                    token_hash=token_hash(pepper, token),
                    created=now(),
                )
            )
    except DatabaseIntegrityError:
        raise Conflict(f"an account named {name!r} already exists") from None


def ensure_operator(db: Database, pepper: bytes, state_dir: Path) -> Path:
    """Create the operator (provider) account and its token file on first start."""
    path = state_dir / OPERATOR_TOKEN_FILE
    with db.transaction() as session:
        exists = session.scalar(select(Account.id).where(Account.name == OPERATOR_NAME))
    if exists is None:
        # File first, then the account: a crash in between leaves no account, and the
        # next start writes a fresh token; the reverse order could lock the operator out.
        token = new_token()
        atomic_write(path, (token + "\n").encode("ascii"), mode=0o600)
        add_account(db, pepper, name=OPERATOR_NAME, role="provider", token=token)
    return path


def authenticate(db: Database, pepper: bytes, token: str | None) -> Account:
    if not token:
        raise Unauthenticated("this request needs a token (--token or CHIRON_TOKEN)")
    with db.transaction() as session:
        account = session.scalar(
            select(Account).where(Account.token_hash == token_hash(pepper, token))
        )
    if account is None:
        raise Unauthenticated("the token is not valid for this service")
    return account
