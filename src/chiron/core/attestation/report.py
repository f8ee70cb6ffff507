"""What a verification found: every check with its reason, and the facts it looked at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chiron.core.keys import PublicIdentity


@dataclass(frozen=True)
class CheckResult:
    """One line of a verification report: a named check, its outcome and why."""

    name: str
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Claims:
    """The facts a policy appraises, taken from evidence whose format has been checked.

    Whether the facts are *authentic* is decided by the verifier's own checks (root of
    trust, signature, report data); a policy looks only at what they say.
    """

    platform: str
    measurement: str
    debug: bool
    tcb_level: int
    timestamp: int
    age_seconds: int
    simulated: bool
    # None when the platform has no vendor signature (sim); on TDX and SEV-SNP, True
    # when every vendor check passed (signature, chain to the pinned root, validity, ...).
    vendor_signature_verified: bool | None
    # The enclave's attested role, and what it serves ("" until it accepted a job or model).
    role: str = ""
    binding: str = ""
    # What the vendor checks found, in a few words: the chain that verified, or why the
    # signature is unverified (which checks failed, or why none could run).
    vendor_detail: str = ""


@dataclass(frozen=True)
class VerificationReport:
    """The outcome of verifying one piece of evidence against one policy.

    `identity` is set only when the evidence's signatures verify (or a policy unsafely
    waived the vendor signature) and its report data matches this request's nonce: it
    is then the public identity of the enclave that produced the evidence.
    """

    claims: Claims
    checks: tuple[CheckResult, ...]
    identity: PublicIdentity | None
    launch_measurement: str | None = None
    tcb_detail: str | None = None
    # TDX and SEV-SNP: what the vendor-verified report says (chip, TCB, RTMRs, status),
    # when the vendor checks could run.
    hardware: HardwareClaims | None = None

    @property
    def ok(self) -> bool:
        return self.identity is not None and all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)

    @property
    def platform(self) -> str:
        return self.claims.platform

    @property
    def measurement(self) -> str:
        return self.claims.measurement

    @property
    def debug(self) -> bool:
        return self.claims.debug

    @property
    def tcb_level(self) -> int:
        return self.claims.tcb_level

    @property
    def age_seconds(self) -> int:
        return self.claims.age_seconds

    @property
    def simulated(self) -> bool:
        return self.claims.simulated

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "platform": self.platform,
            "simulated": self.simulated,
            "measurement": self.measurement,
            "debug": self.debug,
            "tcb_level": self.tcb_level,
            "tcb_detail": self.tcb_detail,
            "launch_measurement": self.launch_measurement,
            "timestamp": self.claims.timestamp,
            "age_seconds": self.age_seconds,
            "enclave_fingerprint": self.identity.fingerprint if self.identity else None,
            "checks": [check.to_dict() for check in self.checks],
            **({"hardware": _hardware_dict(self.hardware)} if self.hardware else {}),
        }


@dataclass(frozen=True)
class HardwareClaims:
    """The facts a hardware policy appraises, read from a TDX quote or an SEV-SNP report.

    They are authentic only if the vendor checks of the same `HardwareVerification`
    passed; a policy looks only at what they say.
    """

    platform: str  # PLATFORM_TDX or PLATFORM_SEV_SNP
    measurement: str  # SNP MEASUREMENT or TDX MRTD, hex
    report_data: str  # hex, 64 bytes
    debug: bool
    rtmrs: tuple[str, ...] = ()  # TDX RTMR0..3, hex
    # SNP: named SVNs of REPORTED_TCB (bootloader, tee, snp, microcode; fmc on Turin).
    tcb_components: tuple[tuple[str, int], ...] = ()
    tcb_status: str | None = None  # TDX: Intel's status for this TCB, when collateral is given
    chip_id: str | None = None  # SNP CHIP_ID, hex (None when masked or zero)
    fmspc: str | None = None  # TDX: the platform's family, from the PCK certificate
    collateral_age_seconds: int | None = None  # TDX: age of the oldest TCB collateral
    signing_key: str | None = None  # VCEK, VLEK or PCK
    product: str | None = None  # SNP: Milan, Genoa or Turin
    vmpl: int | None = None  # SNP
    migration_agent: bool | None = None  # SNP guest policy MIGRATE_MA
    smt_allowed: bool | None = None  # SNP guest policy SMT


@dataclass(frozen=True)
class HardwareVerification:
    """The outcome of verifying one TDX quote or SEV-SNP report against its vendor's roots."""

    claims: HardwareClaims
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def check(self, name: str) -> CheckResult | None:
        """The result named `name`, if the verification produced one."""
        return next((check for check in self.checks if check.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        claims = self.claims
        document: dict[str, Any] = {
            "verified": self.ok,
            "platform": claims.platform,
            "checks": [
                {"name": check.name, "ok": check.passed, "detail": check.reason}
                for check in self.checks
            ],
            "measurement": claims.measurement,
            "report_data": claims.report_data,
            "debug": claims.debug,
            "signing_key": claims.signing_key,
        }
        if claims.platform == "tdx":
            document["rtmrs"] = list(claims.rtmrs)
            document["tcb_status"] = claims.tcb_status
            document["fmspc"] = claims.fmspc
            document["collateral_age_seconds"] = claims.collateral_age_seconds
        else:
            document["chip_id"] = claims.chip_id
            document["product"] = claims.product
            document["tcb"] = dict(claims.tcb_components)
            document["vmpl"] = claims.vmpl
            document["migration_agent"] = claims.migration_agent
            document["smt_allowed"] = claims.smt_allowed
        return document


def _hardware_dict(claims: HardwareClaims) -> dict[str, Any]:
    document: dict[str, Any] = {
        "signing_key": claims.signing_key,
        "report_data": claims.report_data,
    }
    if claims.platform == "tdx":
        document.update(
            rtmrs=list(claims.rtmrs),
            tcb_status=claims.tcb_status,
            fmspc=claims.fmspc,
            collateral_age_seconds=claims.collateral_age_seconds,
        )
    else:
        document.update(
            chip_id=claims.chip_id,
            product=claims.product,
            tcb=dict(claims.tcb_components),
            vmpl=claims.vmpl,
        )
    return document
