"""Verification policies: small composable checks, and the settings a policy file holds.

Each check looks at the appraised claims and explains itself with a `CheckResult`.
`AllOf` reports every one of its checks (it never stops at the first failure); `AnyOf`
passes when one alternative does. Checks that make a verifier accept something
insecure are named `UNSAFE_...` and say so in their result, so an unsafe choice is
visible both in code and in every report it produced.

`Policy` holds what a user decides (accepted measurements, platforms, minimum TCB,
maximum age, and the unsafe allowances) and builds the check tree from it; a TOML policy
file is parsed by `Policy.from_toml`.
"""

from __future__ import annotations

import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chiron.core.attestation.evidence import PLATFORMS, is_measurement
from chiron.core.attestation.report import CheckResult, Claims
from chiron.core.errors import PolicyError

DEFAULT_MIN_TCB = 1
DEFAULT_MAX_AGE_SECONDS = 300
# Evidence stamped further in the future than this is refused: clocks differ a little,
# not by minutes.
MAX_CLOCK_SKEW_SECONDS = 60


def _short(measurement: str) -> str:
    return measurement[:16] + "…"


class Check(ABC):
    """One composable part of a policy."""

    @abstractmethod
    def evaluate(self, claims: Claims) -> list[CheckResult]:
        """Every result this check produces for `claims` (leaves produce one)."""


class AllOf(Check):
    """Every check must pass; all of their results are reported."""

    def __init__(self, *checks: Check) -> None:
        self.checks = checks

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        return [result for check in self.checks for result in check.evaluate(claims)]


class AnyOf(Check):
    """One alternative must pass; reported as a single result named `name`."""

    def __init__(self, name: str, *checks: Check) -> None:
        if not checks:
            raise ValueError("AnyOf needs at least one alternative")
        self.name = name
        self.checks = checks

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        results = [result for check in self.checks for result in check.evaluate(claims)]
        for result in results:
            if result.passed:
                return [CheckResult(self.name, True, result.reason)]
        if len(results) == 1:
            return [CheckResult(self.name, False, results[0].reason)]
        return [
            CheckResult(
                self.name,
                False,
                f"none of {len(results)} alternatives holds: "
                + "; ".join(result.reason for result in results),
            )
        ]


@dataclass(frozen=True)
class PlatformIs(Check):
    platform: str

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.platform == self.platform:
            return [CheckResult("platform", True, f"platform is {self.platform}")]
        return [
            CheckResult("platform", False, f"platform {claims.platform} is not {self.platform}")
        ]


@dataclass(frozen=True)
class MeasurementIs(Check):
    measurement: str

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.measurement == self.measurement:
            return [CheckResult("measurement", True, f"runtime is {_short(self.measurement)}")]
        return [
            CheckResult(
                "measurement",
                False,
                f"runtime {_short(claims.measurement)} is not the expected "
                f"{_short(self.measurement)}",
            )
        ]


class NotSimulated(Check):
    """Refuse simulated evidence: its root key is on the host, so it protects nothing."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.simulated:
            return [
                CheckResult(
                    "simulation",
                    False,
                    "the evidence is simulated (no TEE) and protects nothing against the host",
                )
            ]
        return [CheckResult("simulation", True, f"hardware platform {claims.platform}")]


class UNSAFE_SimulationAllowed(Check):
    """Accept simulated evidence, for development on machines without a TEE."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.simulated:
            return [
                CheckResult(
                    "simulation",
                    True,
                    "SIMULATED: accepted by an unsafe policy; protects nothing against the host",
                )
            ]
        return [CheckResult("simulation", True, f"hardware platform {claims.platform}")]


class VendorSignatureVerified(Check):
    """Hardware evidence must carry a vendor signature that was checked."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.vendor_signature_verified is None:
            return []
        if claims.vendor_signature_verified:
            return [CheckResult("vendor signature", True, "verified against the vendor's keys")]
        return [
            CheckResult(
                "vendor signature",
                False,
                f"unverified vendor signature: checking {claims.platform} reports against "
                "vendor certificates is not implemented",
            )
        ]


class UNSAFE_UnverifiedVendorSignatureAllowed(Check):
    """Accept hardware reports whose vendor signature was not checked."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.vendor_signature_verified is None:
            return []
        if claims.vendor_signature_verified:
            return [CheckResult("vendor signature", True, "verified against the vendor's keys")]
        return [
            CheckResult(
                "vendor signature",
                True,
                "UNVERIFIED vendor signature accepted by an unsafe policy: anyone could "
                "have made this report",
            )
        ]


class DebugDisabled(Check):
    """A debug enclave's memory is readable by the host: refuse it."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.debug:
            return [CheckResult("debug", False, "debug enclave: the host can read its memory")]
        return [CheckResult("debug", True, "not a debug enclave")]


class UNSAFE_DebugAllowed(Check):
    """Accept debug enclaves, for diagnosing a platform; never with real data."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.debug:
            return [
                CheckResult(
                    "debug",
                    True,
                    "DEBUG enclave accepted by an unsafe policy: the host can read it",
                )
            ]
        return [CheckResult("debug", True, "not a debug enclave")]


@dataclass(frozen=True)
class MinimumTcb(Check):
    level: int

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.tcb_level >= self.level:
            return [
                CheckResult("tcb", True, f"TCB level {claims.tcb_level} >= minimum {self.level}")
            ]
        return [
            CheckResult(
                "tcb",
                False,
                f"out-of-date TCB: level {claims.tcb_level} is below the minimum {self.level}",
            )
        ]


@dataclass(frozen=True)
class MaxAge(Check):
    seconds: int

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        age = claims.age_seconds
        if age < -MAX_CLOCK_SKEW_SECONDS:
            return [CheckResult("freshness", False, f"timestamp is {-age} s in the future")]
        if age > self.seconds:
            return [
                CheckResult(
                    "freshness",
                    False,
                    f"stale evidence: {age} s old, the limit is {self.seconds} s",
                )
            ]
        return [CheckResult("freshness", True, f"{max(age, 0)} s old (limit {self.seconds} s)")]


_TOML_KEYS = {
    "measurements",
    "platforms",
    "min_tcb",
    "max_age_seconds",
    "allow_debug",
    "allow_simulation",
    "unsafe_allow_unverified_vendor_signature",
}


@dataclass(frozen=True)
class Policy:
    """What a verifier accepts. The defaults are the safe choices."""

    measurements: tuple[str, ...]
    platforms: tuple[str, ...] = PLATFORMS
    min_tcb: int = DEFAULT_MIN_TCB
    # None turns the age check off: for evidence kept inside a receipt, whose
    # freshness comes from the receipt's own nonce, not from the clock.
    max_age_seconds: int | None = DEFAULT_MAX_AGE_SECONDS
    UNSAFE_allow_debug: bool = False
    UNSAFE_allow_simulation: bool = False
    UNSAFE_allow_unverified_vendor_signature: bool = False

    def __post_init__(self) -> None:
        if not self.measurements:
            raise PolicyError("a policy must accept at least one measurement")
        for value in self.measurements:
            if not is_measurement(value):
                raise PolicyError(f"measurement {value!r} is not 64 lowercase hex digits")
        if not self.platforms or not set(self.platforms) <= set(PLATFORMS):
            raise PolicyError(f"platforms must be a non-empty subset of {', '.join(PLATFORMS)}")
        if self.min_tcb < 0:
            raise PolicyError("min_tcb must be 0 or more")
        if self.max_age_seconds is not None and self.max_age_seconds <= 0:
            raise PolicyError("max_age_seconds must be positive")

    def rules(self) -> Check:
        """The check tree this policy stands for."""
        checks: list[Check] = [
            AnyOf("platform", *(PlatformIs(name) for name in self.platforms)),
            UNSAFE_SimulationAllowed() if self.UNSAFE_allow_simulation else NotSimulated(),
            UNSAFE_UnverifiedVendorSignatureAllowed()
            if self.UNSAFE_allow_unverified_vendor_signature
            else VendorSignatureVerified(),
            AnyOf("measurement", *(MeasurementIs(value) for value in self.measurements)),
            UNSAFE_DebugAllowed() if self.UNSAFE_allow_debug else DebugDisabled(),
            MinimumTcb(self.min_tcb),
        ]
        if self.max_age_seconds is not None:
            checks.append(MaxAge(self.max_age_seconds))
        return AllOf(*checks)

    @classmethod
    def from_toml(cls, text: str, *, default_measurement: str, source: str) -> Policy:
        """Parse a TOML policy file; without `measurements`, accept `default_measurement`.

        Unknown keys are errors, not ignored: a misspelt `alow_debug = false` must not
        silently leave a policy other than the one its author meant.
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
        measurements = _string_list(document, "measurements", source, [default_measurement])
        for index, value in enumerate(measurements):
            if not is_measurement(value.lower()):
                raise PolicyError(f"{source}: measurements[{index}] is not 64 hex digits")
        platforms = _string_list(document, "platforms", source, list(PLATFORMS))
        for value in platforms:
            if value not in PLATFORMS:
                raise PolicyError(
                    f"{source}: unknown platform {value!r} (known: {', '.join(PLATFORMS)})"
                )
        try:
            return cls(
                measurements=tuple(value.lower() for value in measurements),
                platforms=tuple(platforms),
                min_tcb=_integer(document, "min_tcb", source, DEFAULT_MIN_TCB),
                max_age_seconds=_integer(
                    document, "max_age_seconds", source, DEFAULT_MAX_AGE_SECONDS
                ),
                UNSAFE_allow_debug=_boolean(document, "allow_debug", source),
                UNSAFE_allow_simulation=_boolean(document, "allow_simulation", source),
                UNSAFE_allow_unverified_vendor_signature=_boolean(
                    document, "unsafe_allow_unverified_vendor_signature", source
                ),
            )
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None


def _string_list(
    document: dict[str, Any], key: str, source: str, default: Iterable[str]
) -> list[str]:
    if key not in document:
        return list(default)
    value = document[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{source}: {key} must be a list of strings")
    if not value:
        raise PolicyError(f"{source}: {key} must not be empty")
    return value


def _integer(document: dict[str, Any], key: str, source: str, default: int) -> int:
    value = document.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PolicyError(f"{source}: {key} must be an integer")
    return value


def _boolean(document: dict[str, Any], key: str, source: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{source}: {key} must be true or false")
    return value
