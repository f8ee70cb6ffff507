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
    # None when the platform has no vendor signature (sim); False until vendor
    # certificates are checked for TDX and SEV-SNP.
    vendor_signature_verified: bool | None
    # The enclave's attested role, and what it serves ("" until it accepted a job or model).
    role: str = ""
    binding: str = ""


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
        }
