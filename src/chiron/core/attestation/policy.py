"""The owner's verification policy: the checks on appraised claims, and its policy file.

Each check looks at the appraised claims and explains itself with a `CheckResult`;
they compose with `AllOf` and `AnyOf` (`checks`). Checks that make a verifier accept
something insecure are named `UNSAFE_...` and say so in their result, so an unsafe
choice is visible both in code and in every report it produced.

`Policy` holds what a user decides (accepted measurements, platforms, minimum TCB,
maximum age, and the unsafe allowances) and builds the check tree from it; a TOML policy
file is parsed by `Policy.from_toml`. Its `[hardware]` table is a `HardwarePolicy`
(`hardware_policy`): rules on what a TDX quote or SEV-SNP report says once its vendor
signature verified.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from chiron.core.attestation.checks import (
    AllOf,
    AnyOf,
    Check,
    DebugDisabled,
    UNSAFE_DebugAllowed,
)
from chiron.core.attestation.evidence import PLATFORMS, is_measurement
from chiron.core.attestation.hardware_policy import HardwarePolicy
from chiron.core.attestation.policy_fields import boolean, integer, string_list
from chiron.core.attestation.report import CheckResult, Claims
from chiron.core.errors import PolicyError

DEFAULT_MIN_TCB = 1
DEFAULT_MAX_AGE_SECONDS = 300
# Evidence stamped further in the future than this is refused: clocks differ a little,
# not by minutes.
MAX_CLOCK_SKEW_SECONDS = 60


def _short(measurement: str) -> str:
    return measurement[:16] + "…"


@dataclass(frozen=True)
class PlatformIs(Check[Claims]):
    platform: str

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.platform == self.platform:
            return [CheckResult("platform", True, f"platform is {self.platform}")]
        return [
            CheckResult("platform", False, f"platform {claims.platform} is not {self.platform}")
        ]


@dataclass(frozen=True)
class MeasurementIs(Check[Claims]):
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


class NotSimulated(Check[Claims]):
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


class UNSAFE_SimulationAllowed(Check[Claims]):
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


class VendorSignatureVerified(Check[Claims]):
    """Hardware evidence must carry a vendor signature that was checked."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.vendor_signature_verified is None:
            return []
        if claims.vendor_signature_verified:
            return [CheckResult("vendor signature", True, _vendor_verified(claims))]
        return [
            CheckResult(
                "vendor signature",
                False,
                f"unverified vendor signature: {claims.vendor_detail or 'not checked'}",
            )
        ]


def _vendor_verified(claims: Claims) -> str:
    reason = "verified against the vendor's pinned root"
    return f"{reason}: {claims.vendor_detail}" if claims.vendor_detail else reason


class UNSAFE_UnverifiedVendorSignatureAllowed(Check[Claims]):
    """Accept hardware reports whose vendor signature was not checked."""

    def evaluate(self, claims: Claims) -> list[CheckResult]:
        if claims.vendor_signature_verified is None:
            return []
        if claims.vendor_signature_verified:
            return [CheckResult("vendor signature", True, _vendor_verified(claims))]
        return [
            CheckResult(
                "vendor signature",
                True,
                "UNVERIFIED vendor signature accepted by an unsafe policy: anyone could "
                f"have made this report ({claims.vendor_detail or 'not checked'})",
            )
        ]


@dataclass(frozen=True)
class MinimumTcb(Check[Claims]):
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
class MaxAge(Check[Claims]):
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
    "hardware",
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
    # Rules on vendor-verified TDX quotes and SEV-SNP reports (`[hardware]`).
    hardware: HardwarePolicy = field(default_factory=lambda: HardwarePolicy())

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
    def from_toml(
        cls,
        text: str,
        *,
        default_measurement: str,
        source: str,
        base_dir: Path | None = None,
    ) -> Policy:
        """Parse a TOML policy file; without `measurements`, accept `default_measurement`.

        Unknown keys are errors, not ignored: a misspelt `alow_debug = false` must not
        silently leave a policy other than the one its author meant. Files the
        `[hardware]` table names (`chain`, `collateral`) are read now, relative to
        `base_dir` (the policy file's directory; the working directory if None).
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
        measurements = string_list(document, "measurements", source, [default_measurement])
        for index, value in enumerate(measurements):
            if not is_measurement(value.lower()):
                raise PolicyError(f"{source}: measurements[{index}] is not 64 hex digits")
        platforms = string_list(document, "platforms", source, list(PLATFORMS))
        for value in platforms:
            if value not in PLATFORMS:
                raise PolicyError(
                    f"{source}: unknown platform {value!r} (known: {', '.join(PLATFORMS)})"
                )
        # Its errors already name the file and the table.
        hardware = HardwarePolicy.from_table(
            document.get("hardware", {}), source, base_dir=base_dir
        )
        try:
            return cls(
                measurements=tuple(value.lower() for value in measurements),
                platforms=tuple(platforms),
                min_tcb=integer(document, "min_tcb", source, DEFAULT_MIN_TCB),
                max_age_seconds=integer(
                    document, "max_age_seconds", source, DEFAULT_MAX_AGE_SECONDS
                ),
                UNSAFE_allow_debug=boolean(document, "allow_debug", source),
                UNSAFE_allow_simulation=boolean(document, "allow_simulation", source),
                UNSAFE_allow_unverified_vendor_signature=boolean(
                    document, "unsafe_allow_unverified_vendor_signature", source
                ),
                hardware=hardware,
            )
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None
