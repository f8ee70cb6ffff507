"""The hardware rules: one check per thing a verified TDX quote or SEV-SNP report says.

`hardware_policy.HardwarePolicy` builds its tree from these; each reads
`HardwareClaims` and explains itself like any other check (`checks`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from chiron.core.attestation.checks import Check
from chiron.core.attestation.evidence import PLATFORM_SEV_SNP, PLATFORM_TDX
from chiron.core.attestation.report import CheckResult, HardwareClaims


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
