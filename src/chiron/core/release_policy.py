"""The provider's release policy: when its key-release agent hands out a model share.

Built like the attestation policy (`core.attestation.policy`): small composable checks
that each explain themselves with a `CheckResult`, combined with `AllOf` (which reports
every failure, never only the first) and `AnyOf`; what weakens the policy is named
`UNSAFE_...` and says so in every result it produces. A `ReleasePolicy` holds what the
provider decides and builds two things from it: the attestation `Policy` its agent
verifies evidence with (measurements, platforms, TCB, freshness, simulation) and the
release rules below, which look at `ReleaseFacts` (the verified claims plus what the
agent knows about the model, the owner and its own state).

A release needs all of: the agent's own fresh challenge, the owner's signature, a
`query` enclave bound to this very model, a model escrowed to this provider, not
revoked, and, when the policy says so, an allowed query policy, a time before
`not_after` and fewer releases to this owner than `max_releases_per_owner`.

`ReleasePolicy.from_toml` parses `release.toml` (docs/key-release.md); unknown keys and
wrong types are one-line errors naming the file.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from chiron.core.attestation.checks import AllOf, AnyOf, Check
from chiron.core.attestation.evidence import PLATFORMS, is_measurement
from chiron.core.attestation.policy import DEFAULT_MAX_AGE_SECONDS, DEFAULT_MIN_TCB, Policy
from chiron.core.attestation.report import CheckResult, Claims
from chiron.core.errors import PolicyError
from chiron.core.roles import Role

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ReleaseFacts:
    """What the release rules appraise for one request.

    `claims` come from evidence the verifier has checked against the agent's challenge;
    the rest is the agent's own knowledge (its state, its key, its clock).
    """

    claims: Claims
    model_id: str
    # The header names this provider and its escrowed share opened with the provider's
    # key under this model id; `escrow_problem` says what failed otherwise.
    escrow_problem: str | None
    revoked: bool
    query_policy_sha256: str
    owner_fingerprint: str
    owner_signed: bool
    # Releases this agent already made to this owner; and whether the model was first
    # released to another owner than the one this request names.
    releases_to_owner: int
    owner_conflict: bool
    # None when the challenge is one this agent issued and has not seen back yet.
    challenge_problem: str | None
    now: int


class ReleaseCheck(Check[ReleaseFacts]):
    """One rule of a release policy; composes with `AllOf` and `AnyOf` like any check."""

    def evaluate(self, claims: ReleaseFacts) -> list[CheckResult]:
        return self.appraise(claims)

    @abstractmethod
    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        """Every result this rule produces for `facts`."""


class ChallengeFresh(ReleaseCheck):
    """The evidence answers a challenge this agent issued, unexpired and never used."""

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        if facts.challenge_problem is not None:
            return [CheckResult("challenge", False, facts.challenge_problem)]
        return [CheckResult("challenge", True, "this agent's challenge, used once, in time")]


class OwnerSigned(ReleaseCheck):
    """The request is signed by the owner the model header names."""

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        if facts.owner_signed:
            return [CheckResult("owner signature", True, "signed by the model's owner")]
        return [
            CheckResult(
                "owner signature",
                False,
                "the request is not signed by the owner the model names",
            )
        ]


class RoleIsQuery(ReleaseCheck):
    """Only a query enclave may receive a model share (never a training enclave)."""

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        role = facts.claims.role
        if role == Role.QUERY:
            return [CheckResult("role", True, "a query enclave")]
        return [CheckResult("role", False, f"a {role or 'unknown'} enclave, not a query enclave")]


class BoundToModel(ReleaseCheck):
    """The enclave attests that it serves this very model (its binding is the model id)."""

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        binding = facts.claims.binding
        if binding == facts.model_id:
            return [CheckResult("model binding", True, f"serves model {facts.model_id}")]
        said = f"serves {binding}" if binding else "has loaded no model yet"
        return [
            CheckResult("model binding", False, f"the enclave {said}, not model {facts.model_id}")
        ]


class EscrowedToThisProvider(ReleaseCheck):
    """The model's provider share was escrowed to this agent's key."""

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        if facts.escrow_problem is None:
            return [CheckResult("escrow", True, "the provider share is escrowed to this key")]
        return [CheckResult("escrow", False, facts.escrow_problem)]


class NotRevoked(ReleaseCheck):
    """A model the provider revoked opens in no new enclave."""

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        if facts.revoked:
            return [
                CheckResult(
                    "revocation", False, f"model {facts.model_id} is revoked by its provider"
                )
            ]
        return [CheckResult("revocation", True, "not revoked")]


@dataclass(frozen=True)
class QueryPolicyIs(ReleaseCheck):
    """The model's query policy (as its header states) has this digest."""

    sha256: str

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        if facts.query_policy_sha256 == self.sha256:
            return [CheckResult("query policy", True, f"query policy {self.sha256[:16]}…")]
        return [
            CheckResult(
                "query policy",
                False,
                f"query policy {facts.query_policy_sha256[:16]}… is not one this policy allows",
            )
        ]


@dataclass(frozen=True)
class NotAfter(ReleaseCheck):
    """No release after this time (unix seconds)."""

    timestamp: int

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        when = dt.datetime.fromtimestamp(self.timestamp, dt.UTC).isoformat()
        if facts.now <= self.timestamp:
            return [CheckResult("expiry", True, f"before {when}")]
        return [CheckResult("expiry", False, f"the release policy expired at {when}")]


@dataclass(frozen=True)
class ReleasesPerOwnerBelow(ReleaseCheck):
    """At most `limit` releases to one owner (counted in the agent's state)."""

    limit: int

    def appraise(self, facts: ReleaseFacts) -> list[CheckResult]:
        if facts.owner_conflict:
            return [
                CheckResult(
                    "release limit",
                    False,
                    "this model was released before to another owner than the one named now",
                )
            ]
        if facts.releases_to_owner < self.limit:
            return [
                CheckResult(
                    "release limit",
                    True,
                    f"{facts.releases_to_owner} of {self.limit} releases to this owner used",
                )
            ]
        return [
            CheckResult(
                "release limit",
                False,
                f"this owner has had all {self.limit} releases the policy allows",
            )
        ]


_TOML_KEYS = {
    "measurements",
    "platforms",
    "min_tcb",
    "max_age_seconds",
    "allow_simulation",
    "query_policy_digests",
    "not_after",
    "max_releases_per_owner",
}


@dataclass(frozen=True)
class ReleasePolicy:
    """What a provider's agent releases for. The defaults are the safe choices."""

    measurements: tuple[str, ...]
    platforms: tuple[str, ...] = PLATFORMS
    min_tcb: int = DEFAULT_MIN_TCB
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS
    # Empty: any query policy (the provider signed it into its recipe statement anyway).
    query_policy_digests: tuple[str, ...] = ()
    not_after: int | None = None
    max_releases_per_owner: int | None = None
    # Simulated evidence is signed by a software root on some host: whoever holds that
    # root can make evidence for an "enclave" whose key it holds and so obtain the
    # share. Only for trying Chiron out.
    UNSAFE_allow_simulation: bool = False

    def __post_init__(self) -> None:
        for value in self.query_policy_digests:
            if not _HEX64.fullmatch(value):
                raise PolicyError(f"query policy digest {value!r} is not 64 lowercase hex digits")
        if self.max_releases_per_owner is not None and self.max_releases_per_owner < 1:
            raise PolicyError("max_releases_per_owner must be 1 or more")
        if self.max_age_seconds <= 0:
            raise PolicyError("max_age_seconds must be positive")
        # The attestation policy validates measurements, platforms and the TCB.
        self.attestation_policy()

    def attestation_policy(self) -> Policy:
        """The policy the agent verifies evidence with (freshness from its challenge)."""
        return Policy(
            measurements=self.measurements,
            platforms=self.platforms,
            min_tcb=self.min_tcb,
            max_age_seconds=self.max_age_seconds,
            UNSAFE_allow_simulation=self.UNSAFE_allow_simulation,
        )

    def rules(self) -> AllOf[ReleaseFacts]:
        """The release rules this policy stands for (beyond the attestation policy)."""
        checks: list[Check[ReleaseFacts]] = [
            ChallengeFresh(),
            OwnerSigned(),
            RoleIsQuery(),
            BoundToModel(),
            EscrowedToThisProvider(),
            NotRevoked(),
        ]
        if self.query_policy_digests:
            checks.append(
                AnyOf("query policy", *(QueryPolicyIs(d) for d in self.query_policy_digests))
            )
        if self.not_after is not None:
            checks.append(NotAfter(self.not_after))
        if self.max_releases_per_owner is not None:
            checks.append(ReleasesPerOwnerBelow(self.max_releases_per_owner))
        return AllOf(*checks)

    def describe(self) -> list[str]:
        """One line per setting, for the agent's start-up banner."""
        lines = [
            f"measurements: {', '.join(m[:16] + '…' for m in self.measurements)}",
            f"platforms: {', '.join(self.platforms)}",
        ]
        if self.query_policy_digests:
            lines.append(f"query policies: {len(self.query_policy_digests)} allowed")
        if self.not_after is not None:
            lines.append(f"not after: {dt.datetime.fromtimestamp(self.not_after, dt.UTC)}")
        if self.max_releases_per_owner is not None:
            lines.append(f"releases per owner: at most {self.max_releases_per_owner}")
        if self.UNSAFE_allow_simulation:
            lines.append(
                "UNSAFE: simulated evidence accepted; it protects nothing: whoever holds "
                "a trusted simulation root can obtain the share"
            )
        return lines

    @classmethod
    def from_toml(cls, text: str, *, default_measurement: str, source: str) -> ReleasePolicy:
        """Parse `release.toml`; without `measurements`, accept `default_measurement`.

        Unknown keys are errors: a misspelt `max_release_per_owner = 3` must not leave
        the agent releasing without limit.
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}") from None
        unknown = sorted(set(document) - _TOML_KEYS)
        if unknown:
            raise PolicyError(
                f"{source}: unknown key {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(_TOML_KEYS))})"
            )
        measurements = _strings(document, "measurements", source, (default_measurement,))
        for index, value in enumerate(measurements):
            if not is_measurement(value.lower()):
                raise PolicyError(f"{source}: measurements[{index}] is not 64 hex digits")
        platforms = _strings(document, "platforms", source, PLATFORMS)
        for value in platforms:
            if value not in PLATFORMS:
                raise PolicyError(
                    f"{source}: unknown platform {value!r} (known: {', '.join(PLATFORMS)})"
                )
        digests = _strings(document, "query_policy_digests", source, ())
        for index, value in enumerate(digests):
            if not _HEX64.fullmatch(value.lower()):
                raise PolicyError(f"{source}: query_policy_digests[{index}] is not 64 hex digits")
        limit = _optional_integer(document, "max_releases_per_owner", source)
        not_after = _timestamp(document, "not_after", source)
        try:
            return cls(
                measurements=tuple(value.lower() for value in measurements),
                platforms=tuple(platforms),
                min_tcb=_integer(document, "min_tcb", source, DEFAULT_MIN_TCB),
                max_age_seconds=_integer(
                    document, "max_age_seconds", source, DEFAULT_MAX_AGE_SECONDS
                ),
                query_policy_digests=tuple(value.lower() for value in digests),
                not_after=not_after,
                max_releases_per_owner=limit,
                UNSAFE_allow_simulation=_boolean(document, "allow_simulation", source),
            )
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None


def _strings(
    document: dict[str, Any], key: str, source: str, default: tuple[str, ...]
) -> tuple[str, ...]:
    if key not in document:
        return default
    value = document[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{source}: {key} must be a list of strings")
    if not value and key != "query_policy_digests":
        raise PolicyError(f"{source}: {key} must not be empty")
    return tuple(value)


def _integer(document: dict[str, Any], key: str, source: str, default: int) -> int:
    value = document.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PolicyError(f"{source}: {key} must be an integer")
    return value


def _optional_integer(document: dict[str, Any], key: str, source: str) -> int | None:
    if key not in document:
        return None
    return _integer(document, key, source, 0)


def _boolean(document: dict[str, Any], key: str, source: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{source}: {key} must be true or false")
    return value


def _timestamp(document: dict[str, Any], key: str, source: str) -> int | None:
    """A TOML date-time with a time zone (2027-01-01T00:00:00Z), or unix seconds."""
    if key not in document:
        return None
    value = document[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return int(value.timestamp())
    if isinstance(value, dt.datetime):
        raise PolicyError(f"{source}: {key} needs a time zone, e.g. 2027-01-01T00:00:00Z")
    raise PolicyError(f"{source}: {key} must be a date-time (2027-01-01T00:00:00Z) or unix seconds")
