"""The provider's signed recipe statement: the only way an enclave learns who a provider is.

A provider signs, under its identity, the SHA-256 of one recipe file, its name and
version, and the digest of the query policy the recipe declares. A training enclave
accepts a provider identity only from such a statement, checks that the recipe it was
handed hashes to the signed value and that the recipe declares the signed query
policy, and escrows the model's second key share to exactly that identity. So nobody
but the holder of the provider's private key can name a provider for a recipe: not the
host, and not an owner who would like to receive both shares.

On disk (`chiron recipe sign`) and on the wire the statement is one JSON document:

    {"type": "chiron.recipe-statement", "version": 1,
     "statement": {"name": str, "version": str, "recipe_sha256": hex,
                   "provider": base64 64-byte identity, "query_policy_sha256": hex},
     "signature": base64 Ed25519}
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from chiron.core import purposes
from chiron.core.crypto import sign, verify_signature
from chiron.core.encoding import b64decode, b64encode, canonical_json, sha256_hex
from chiron.core.errors import InputError, IntegrityError, KeyFileError
from chiron.core.keys import Identity, PublicIdentity
from chiron.core.query_protocol import normalize_query_policy, query_policy_sha256
from chiron.core.signed_document import DocumentKind

MAX_STATEMENT_BYTES = 16 * 1024
STATEMENT = DocumentKind(
    type="chiron.recipe-statement",
    version=1,
    body_field="statement",
    max_bytes=MAX_STATEMENT_BYTES,
    what="recipe statement",
)
STATEMENT_SUFFIX = ".statement.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_recipe_name(name: object) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InputError("recipe names are 1-64 lowercase letters, digits, '_' or '-'")
    return name


def recipe_name_for_file(filename: str) -> str:
    """The recipe name a file stands for: its stem, lower-cased, '.' and ' ' as '-'."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".py")
    return check_recipe_name(re.sub(r"[^a-z0-9_-]", "-", stem.lower()).lstrip("-_")[:64])


@dataclass(frozen=True)
class RecipeStatement:
    """What the provider vouches for; see the module docstring."""

    name: str
    version: str
    recipe_sha256: str
    provider: PublicIdentity
    query_policy_sha256: str

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "recipe_sha256": self.recipe_sha256,
            "provider": b64encode(self.provider.to_bytes()),
            "query_policy_sha256": self.query_policy_sha256,
        }

    def signed_bytes(self) -> bytes:
        return canonical_json(self.body())

    def sign(self, provider: Identity) -> SignedRecipeStatement:
        if provider.public != self.provider:
            raise InputError("a recipe statement is signed by the provider it names")
        return SignedRecipeStatement(
            self, sign(provider.signing_key, self.signed_bytes(), purpose=purposes.RECIPE_STATEMENT)
        )

    @classmethod
    def from_body(cls, body: object) -> RecipeStatement:
        try:
            if not isinstance(body, dict) or set(body) != {
                "name",
                "version",
                "recipe_sha256",
                "provider",
                "query_policy_sha256",
            }:
                raise ValueError("fields")
            statement = cls(
                name=check_recipe_name(body["name"]),
                version=str(body["version"]),
                recipe_sha256=str(body["recipe_sha256"]),
                provider=PublicIdentity.from_bytes(b64decode(body["provider"])),
                query_policy_sha256=str(body["query_policy_sha256"]),
            )
        except (KeyError, TypeError, ValueError, KeyFileError, InputError):
            raise InputError("malformed recipe statement") from None
        if _VERSION.fullmatch(statement.version) is None:
            raise InputError("malformed recipe statement: bad version")
        for digest in (statement.recipe_sha256, statement.query_policy_sha256):
            if _HEX64.fullmatch(digest) is None:
                raise InputError("malformed recipe statement: bad digest")
        return statement


@dataclass(frozen=True)
class SignedRecipeStatement:
    """A statement and the provider's signature; `from_bytes` verifies it."""

    statement: RecipeStatement
    signature: bytes

    @property
    def sha256(self) -> str:
        """What a job manifest names: the digest of the signed statement body."""
        return sha256_hex(self.statement.signed_bytes())

    @property
    def provider(self) -> PublicIdentity:
        return self.statement.provider

    def to_bytes(self) -> bytes:
        return STATEMENT.encode(self.statement.body(), self.signature, pretty=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRecipeStatement:
        """Parse and verify: the signature must be the named provider's."""
        body, signature = STATEMENT.decode(data)
        statement = RecipeStatement.from_body(body)
        verify_signature(
            statement.provider.signing_key,
            signature,
            statement.signed_bytes(),
            purpose=purposes.RECIPE_STATEMENT,
            what="the provider's signature on the recipe statement",
        )
        return cls(statement, signature)

    def check_recipe(self, source: bytes) -> None:
        """Refuse a recipe file other than the one the provider signed."""
        if hashlib.sha256(source).hexdigest() != self.statement.recipe_sha256:
            raise IntegrityError("the recipe is not the one its provider's statement signs")


def declared_query_policy(source: bytes) -> dict[str, Any]:
    """The normalised QUERY_POLICY a recipe file declares, read without running it.

    The provider signs its digest; the enclave later compares it with what the recipe
    declares from inside the sandbox. Only a literal dict (or no QUERY_POLICY at all)
    can be read this way, and that is what `chiron recipe sign` requires.
    """
    try:
        tree = ast.parse(source, filename="recipe.py")
    except (SyntaxError, ValueError):
        raise InputError("the recipe is not valid Python") from None
    raw: object = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "QUERY_POLICY" for t in targets):
            try:
                raw = ast.literal_eval(value)
            except ValueError:
                raise InputError("QUERY_POLICY must be a literal dict to be signed") from None
    try:
        return normalize_query_policy(raw)
    except ValueError:
        raise InputError(
            "QUERY_POLICY must be a dict of output, rounding (0-8) and budget (positive)"
        ) from None


def make_statement(
    source: bytes, *, name: str, version: str, provider: Identity
) -> SignedRecipeStatement:
    """The provider's signed statement for one recipe file."""
    statement = RecipeStatement(
        name=check_recipe_name(name),
        version=version,
        recipe_sha256=hashlib.sha256(source).hexdigest(),
        provider=provider.public,
        query_policy_sha256=query_policy_sha256(declared_query_policy(source)),
    )
    if _VERSION.fullmatch(version) is None:
        raise InputError("a recipe version is 1-64 letters, digits, '.', '_', '+' or '-'")
    return statement.sign(provider)
