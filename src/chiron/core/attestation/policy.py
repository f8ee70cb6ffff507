"""Verification policies: small composable checks, and the settings a policy file holds.

Each check looks at the appraised claims and explains itself with a `CheckResult`.
`AllOf` reports every one of its checks (it never stops at the first failure); `AnyOf`
passes when one alternative does. Checks that make a verifier accept something
insecure are named `UNSAFE_...` and say so in their result, so an unsafe choice is
visible both in code and in every report it produced.

`Policy` holds what a user decides (accepted measurements, platforms, minimum TCB,
maximum age, and the unsafe allowances) and builds the check tree from it; a TOML policy
file is parsed by `Policy.from_toml`. Its `[hardware]` table is a `HardwarePolicy`:
rules on what a TDX quote or SEV-SNP report says once its vendor signature verified
(launch measurement, RTMRs, TCB, debug, chip or platform family, collateral age).
"""

from __future__ import annotations

import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from chiron.core.attestation.evidence import (
    PLATFORM_SEV_SNP,
    PLATFORM_TDX,
    PLATFORMS,
    is_measurement,
)
from chiron.core.attestation.report import CheckResult, Claims, HardwareClaims
from chiron.core.attestation.tdx_collateral import MAX_COLLATERAL_BYTES, parse_collateral
from chiron.core.attestation.vendor_crypto import MAX_CERTIFICATE_FILE_BYTES, load_certificates
from chiron.core.errors import InputError, PolicyError
from chiron.core.fileio import read_input_file

DEFAULT_MIN_TCB = 1
DEFAULT_MAX_AGE_SECONDS = 300
# Evidence stamped further in the future than this is refused: clocks differ a little,
# not by minutes.
MAX_CLOCK_SKEW_SECONDS = 60


def _short(measurement: str) -> str:
    return measurement[:16] + "…"


# What a check reads: the appraised `Claims`, or a hardware report's `HardwareClaims`. A
# check of either (`Check[Claims | HardwareClaims]`) composes into a tree of each.
ClaimsT = TypeVar("ClaimsT", contravariant=True)


class Check(ABC, Generic[ClaimsT]):
    """One composable part of a policy."""

    @abstractmethod
    def evaluate(self, claims: ClaimsT) -> list[CheckResult]:
        """Every result this check produces for `claims` (leaves produce one)."""


class AllOf(Check[ClaimsT]):
    """Every check must pass; all of their results are reported."""

    def __init__(self, *checks: Check[ClaimsT]) -> None:
        self.checks = checks

    def evaluate(self, claims: ClaimsT) -> list[CheckResult]:
        return [result for check in self.checks for result in check.evaluate(claims)]


class AnyOf(Check[ClaimsT]):
    """One alternative must pass; reported as a single result named `name`."""

    def __init__(self, name: str, *checks: Check[ClaimsT]) -> None:
        if not checks:
            raise ValueError("AnyOf needs at least one alternative")
        self.name = name
        self.checks = checks

    def evaluate(self, claims: ClaimsT) -> list[CheckResult]:
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


class DebugDisabled(Check[Claims | HardwareClaims]):
    """A debug enclave's memory is readable by the host: refuse it."""

    def evaluate(self, claims: Claims | HardwareClaims) -> list[CheckResult]:
        if claims.debug:
            return [CheckResult("debug", False, "debug enclave: the host can read its memory")]
        return [CheckResult("debug", True, "not a debug enclave")]


class UNSAFE_DebugAllowed(Check[Claims | HardwareClaims]):
    """Accept debug enclaves, for diagnosing a platform; never with real data."""

    def evaluate(self, claims: Claims | HardwareClaims) -> list[CheckResult]:
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
        # Its errors already name the file and the table.
        hardware = HardwarePolicy.from_table(
            document.get("hardware", {}), source, base_dir=base_dir
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
                hardware=hardware,
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


# --- Hardware rules: what a verified TDX quote or SEV-SNP report may say -------------

# Intel's TCB statuses. "Revoked" is never acceptable; the rest describe a platform
# whose TCB Intel knows, from current to one with published, unmitigated weaknesses.
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
DEFAULT_TCB_STATUSES = ("UpToDate",)
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
RTMR_COUNT = 4


def _short_hex(value: str) -> str:
    return value[:16] + "…" if len(value) > 16 else value


class HardwareCheck(Check[HardwareClaims]):
    """One composable rule on the claims of a vendor-verified hardware report.

    It composes with `AllOf` and `AnyOf` like any check, but reads `HardwareClaims`.
    """

    @abstractmethod
    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        """Every result this rule produces for `claims`."""


@dataclass(frozen=True)
class LaunchMeasurementIs(HardwareCheck):
    """The VM image the hardware measured at launch (SNP MEASUREMENT, TDX MRTD)."""

    measurement: str

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.measurement == self.measurement:
            return [CheckResult("launch measurement", True, f"{_short_hex(self.measurement)}")]
        return [
            CheckResult(
                "launch measurement",
                False,
                f"{_short_hex(claims.measurement)} is not {_short_hex(self.measurement)}",
            )
        ]


@dataclass(frozen=True)
class RtmrIs(HardwareCheck):
    """One TDX runtime measurement register holds an accepted value."""

    index: int
    value: str

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        name = f"rtmr{self.index}"
        if len(claims.rtmrs) <= self.index:
            return [CheckResult(name, False, "the report has no runtime measurement registers")]
        actual = claims.rtmrs[self.index]
        if actual == self.value:
            return [CheckResult(name, True, _short_hex(self.value))]
        return [CheckResult(name, False, f"{_short_hex(actual)} is not {_short_hex(self.value)}")]


@dataclass(frozen=True)
class MinimumSnpTcb(HardwareCheck):
    """Each named SEV-SNP TCB component is at least the given security version."""

    minimum: tuple[tuple[str, int], ...]

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.platform != PLATFORM_SEV_SNP:
            return []
        actual = dict(claims.tcb_components)
        low = [
            f"{name} {actual.get(name)} < {value}"
            for name, value in self.minimum
            if actual.get(name, -1) < value
        ]
        if low:
            return [CheckResult("minimum tcb", False, "out-of-date TCB: " + ", ".join(low))]
        return [
            CheckResult(
                "minimum tcb",
                True,
                ", ".join(f"{name} {actual[name]} >= {value}" for name, value in self.minimum),
            )
        ]


@dataclass(frozen=True)
class TcbStatusIn(HardwareCheck):
    """Intel's verdict on a TDX platform's TCB is one the policy accepts.

    Without collateral there is no verdict: refused when `required`, else not checked
    (the report says so in its `tcb_status: null`).
    """

    statuses: tuple[str, ...]
    required: bool

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.platform != PLATFORM_TDX:
            return []
        if claims.tcb_status is None:
            if self.required:
                return [
                    CheckResult("tcb status", False, "no collateral: the TCB status is unknown")
                ]
            return []
        if claims.tcb_status in self.statuses:
            return [CheckResult("tcb status", True, f"{claims.tcb_status} is accepted")]
        return [
            CheckResult(
                "tcb status",
                False,
                f"{claims.tcb_status} is not accepted (accepted: {', '.join(self.statuses)})",
            )
        ]


@dataclass(frozen=True)
class ChipIdIs(HardwareCheck):
    """The SEV-SNP report comes from this chip."""

    chip_id: str

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.chip_id == self.chip_id:
            return [CheckResult("chip id allowed", True, f"chip {_short_hex(self.chip_id)}")]
        shown = _short_hex(claims.chip_id) if claims.chip_id else "none (masked)"
        return [CheckResult("chip id allowed", False, f"chip {shown} is not listed")]


@dataclass(frozen=True)
class FmspcIs(HardwareCheck):
    """The TDX platform belongs to this family (FMSPC, from its PCK certificate)."""

    fmspc: str

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.fmspc == self.fmspc:
            return [CheckResult("fmspc allowed", True, f"FMSPC {self.fmspc}")]
        return [CheckResult("fmspc allowed", False, f"FMSPC {claims.fmspc} is not listed")]


@dataclass(frozen=True)
class MaxCollateralAge(HardwareCheck):
    """Intel's TCB collateral was issued at most `seconds` before the verification time."""

    seconds: int

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.platform != PLATFORM_TDX:
            return []
        age = claims.collateral_age_seconds
        if age is None:
            return [CheckResult("collateral age", False, "no collateral to judge the TCB by")]
        if age > self.seconds:
            return [
                CheckResult(
                    "collateral age",
                    False,
                    f"stale collateral: {age} s old, limit {self.seconds} s",
                )
            ]
        return [CheckResult("collateral age", True, f"{age} s old (limit {self.seconds} s)")]


class MigrationAgentRefused(HardwareCheck):
    """An SEV-SNP guest bound to a migration agent can have its memory exported by it."""

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.migration_agent is None:
            return []
        if claims.migration_agent:
            return [
                CheckResult("migration agent", False, "the guest policy allows a migration agent")
            ]
        return [CheckResult("migration agent", True, "no migration agent")]


class UNSAFE_MigrationAgentAllowed(HardwareCheck):
    """Accept SEV-SNP guests whose policy allows a migration agent."""

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.migration_agent is None:
            return []
        if claims.migration_agent:
            return [
                CheckResult(
                    "migration agent",
                    True,
                    "MIGRATION AGENT accepted by an unsafe policy: it can export guest memory",
                )
            ]
        return [CheckResult("migration agent", True, "no migration agent")]


@dataclass(frozen=True)
class VmplIn(HardwareCheck):
    """The SEV-SNP report was requested from one of these privilege levels."""

    vmpls: tuple[int, ...]

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.vmpl is None:
            return []
        passed = claims.vmpl in self.vmpls
        return [
            CheckResult(
                "vmpl",
                passed,
                f"VMPL {claims.vmpl}"
                + ("" if passed else f" is not one of {', '.join(map(str, self.vmpls))}"),
            )
        ]


class SmtDisabled(HardwareCheck):
    """The SEV-SNP guest policy forbids simultaneous multithreading."""

    def evaluate(self, claims: HardwareClaims) -> list[CheckResult]:
        if claims.smt_allowed is None:
            return []
        if claims.smt_allowed:
            return [CheckResult("smt", False, "the guest policy allows SMT")]
        return [CheckResult("smt", True, "the guest policy forbids SMT")]


_HARDWARE_KEYS = {
    "launch_measurements",
    *(f"rtmr{index}" for index in range(RTMR_COUNT)),
    "min_snp_tcb",
    "tcb_statuses",
    "require_tcb_status",
    "chip_ids",
    "fmspcs",
    "max_collateral_age_seconds",
    "vmpls",
    "forbid_smt",
    "allow_debug",
    "allow_migration_agent",
    "chain",
    "collateral",
}


@dataclass(frozen=True)
class HardwarePolicy:
    """Rules on a TDX quote or SEV-SNP report once its vendor signature verified.

    Empty tuples mean "any". The defaults refuse debug guests, SNP guests with a
    migration agent, and TDX platforms whose TCB status is not UpToDate.
    """

    launch_measurements: tuple[str, ...] = ()
    rtmrs: tuple[tuple[str, ...], ...] = ((), (), (), ())  # accepted values per RTMR
    min_snp_tcb: tuple[tuple[str, int], ...] = ()
    tcb_statuses: tuple[str, ...] = DEFAULT_TCB_STATUSES
    require_tcb_status: bool = False
    chip_ids: tuple[str, ...] = ()
    fmspcs: tuple[str, ...] = ()
    max_collateral_age_seconds: int | None = None
    vmpls: tuple[int, ...] = ()
    forbid_smt: bool = False
    UNSAFE_allow_debug: bool = False
    UNSAFE_allow_migration_agent: bool = False
    # Vendor material for `chiron attest` (read from the files the table names): SNP
    # certificates used when the evidence brings no VCEK/VLEK of its own, and the TDX
    # collateral (QuoteCollateralV3 JSON) quotes are judged by.
    chain: bytes | None = field(default=None, repr=False)
    collateral: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for value in self.launch_measurements:
            _check_hex(value, 48, "launch_measurements")
        if len(self.rtmrs) != RTMR_COUNT:
            raise PolicyError(f"rtmrs must list {RTMR_COUNT} registers")
        for index, values in enumerate(self.rtmrs):
            for value in values:
                _check_hex(value, 48, f"rtmr{index}")
        for name, level in self.min_snp_tcb:
            if name not in SNP_TCB_COMPONENTS or not 0 <= level <= 255:
                raise PolicyError(
                    f"min_snp_tcb: {name} must be one of {', '.join(SNP_TCB_COMPONENTS)}, 0 to 255"
                )
        if not self.tcb_statuses or not set(self.tcb_statuses) <= set(TCB_STATUSES):
            raise PolicyError(
                f"tcb_statuses must be a non-empty subset of {', '.join(TCB_STATUSES)}"
            )
        for value in self.chip_ids:
            _check_hex(value, None, "chip_ids")
        for value in self.fmspcs:
            _check_hex(value, 6, "fmspcs")
        if self.max_collateral_age_seconds is not None and self.max_collateral_age_seconds <= 0:
            raise PolicyError("max_collateral_age_seconds must be positive")
        if not set(self.vmpls) <= {0, 1, 2, 3}:
            raise PolicyError("vmpls must be among 0, 1, 2, 3")

    def rules(self, *, debug: bool = True) -> AllOf:
        """The rule tree this policy stands for.

        `debug=False` leaves out the debug rule, for a caller whose own policy already
        judges the same bit (`chiron attest`: the top-level `allow_debug`).
        """
        checks: list[Check] = []
        if debug:
            checks.append(UNSAFE_DebugAllowed() if self.UNSAFE_allow_debug else DebugDisabled())
        checks += [
            UNSAFE_MigrationAgentAllowed()
            if self.UNSAFE_allow_migration_agent
            else MigrationAgentRefused(),
            TcbStatusIn(self.tcb_statuses, self.require_tcb_status),
        ]
        if self.launch_measurements:
            checks.append(
                AnyOf(
                    "launch measurement",
                    *(LaunchMeasurementIs(value) for value in self.launch_measurements),
                )
            )
        for index, values in enumerate(self.rtmrs):
            if values:
                checks.append(AnyOf(f"rtmr{index}", *(RtmrIs(index, value) for value in values)))
        if self.min_snp_tcb:
            checks.append(MinimumSnpTcb(self.min_snp_tcb))
        if self.chip_ids:
            checks.append(AnyOf("chip id allowed", *(ChipIdIs(value) for value in self.chip_ids)))
        if self.fmspcs:
            checks.append(AnyOf("fmspc allowed", *(FmspcIs(value) for value in self.fmspcs)))
        if self.max_collateral_age_seconds is not None:
            checks.append(MaxCollateralAge(self.max_collateral_age_seconds))
        if self.vmpls:
            checks.append(VmplIn(self.vmpls))
        if self.forbid_smt:
            checks.append(SmtDisabled())
        return AllOf(*checks)

    def pins_anything(self) -> bool:
        """True if the policy restricts more than the defaults (debug, migration, status)."""
        return bool(
            self.launch_measurements
            or any(self.rtmrs)
            or self.min_snp_tcb
            or self.require_tcb_status
            or self.chip_ids
            or self.fmspcs
            or self.max_collateral_age_seconds is not None
            or self.vmpls
            or self.forbid_smt
        )

    @classmethod
    def from_table(
        cls, table: object, source: str, *, base_dir: Path | None = None
    ) -> HardwarePolicy:
        """Parse the `[hardware]` table of a policy file; unknown keys are errors.

        `chain` and `collateral` name files, relative to `base_dir`; they are read and
        checked for form here, so a wrong path or a foreign file fails at load.
        """
        if not isinstance(table, dict):
            raise PolicyError(f"{source}: hardware must be a table")
        unknown = sorted(set(table) - _HARDWARE_KEYS)
        if unknown:
            raise PolicyError(
                f"{source}: unknown key {', '.join('hardware.' + key for key in unknown)} "
                f"(known: {', '.join(sorted(_HARDWARE_KEYS))})"
            )
        where = f"{source}: hardware"
        min_tcb = table.get("min_snp_tcb", {})
        if not isinstance(min_tcb, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in min_tcb.values()
        ):
            raise PolicyError(f"{where}.min_snp_tcb must be a table of integers")
        vmpls = table.get("vmpls", [])
        if not isinstance(vmpls, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in vmpls
        ):
            raise PolicyError(f"{where}.vmpls must be a list of integers")
        max_age = table.get("max_collateral_age_seconds")
        if max_age is not None and (not isinstance(max_age, int) or isinstance(max_age, bool)):
            raise PolicyError(f"{where}.max_collateral_age_seconds must be an integer")
        chain = _vendor_file(table, "chain", where, base_dir)
        collateral = _vendor_file(table, "collateral", where, base_dir)
        try:
            return cls(
                launch_measurements=_hex_list(table, "launch_measurements", where),
                rtmrs=tuple(_hex_list(table, f"rtmr{i}", where) for i in range(RTMR_COUNT)),
                min_snp_tcb=tuple(sorted(min_tcb.items())),
                tcb_statuses=tuple(
                    _string_list(table, "tcb_statuses", where, DEFAULT_TCB_STATUSES)
                ),
                require_tcb_status=_boolean(table, "require_tcb_status", where),
                chip_ids=_hex_list(table, "chip_ids", where),
                fmspcs=_hex_list(table, "fmspcs", where),
                max_collateral_age_seconds=max_age,
                vmpls=tuple(vmpls),
                forbid_smt=_boolean(table, "forbid_smt", where),
                UNSAFE_allow_debug=_boolean(table, "allow_debug", where),
                UNSAFE_allow_migration_agent=_boolean(table, "allow_migration_agent", where),
                chain=chain,
                collateral=collateral,
            )
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None


def _vendor_file(
    table: dict[str, Any], key: str, where: str, base_dir: Path | None
) -> bytes | None:
    """The bytes of the vendor file `key` names, checked for form (certificates, collateral)."""
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{where}.{key} must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    limit = MAX_CERTIFICATE_FILE_BYTES if key == "chain" else MAX_COLLATERAL_BYTES
    try:
        data = read_input_file(path, what=f"{key} file", limit=limit)
        if key == "chain":
            load_certificates(data, source=str(path))
        else:
            parse_collateral(data, source=str(path))
    except InputError as exc:
        raise PolicyError(f"{where}.{key}: {exc}") from None
    return data


def _hex_list(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    if key not in table:
        return ()
    return tuple(value.lower() for value in _string_list(table, key, where, ()))


def _check_hex(value: str, size: int | None, key: str) -> None:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PolicyError(f"{key}: {value!r} is not hex") from None
    if value != value.lower() or not raw or (size is not None and len(raw) != size):
        expected = f"{size * 2} lowercase hex digits" if size else "lowercase hex"
        raise PolicyError(f"{key}: {value!r} is not {expected}")
