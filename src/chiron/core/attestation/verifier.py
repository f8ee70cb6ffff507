"""The verifier: appraise evidence against a policy and report every check.

The verifier's own checks establish that the evidence is authentic and answers this
request: its signature chain leads to a trusted root (`root of trust`, `signature` on
`sim`; on TDX and SEV-SNP every vendor check of `chiron evidence verify`, summed up by
the policy's `vendor signature`), and its report data binds this request's nonce to the
enclave keys and claims it carries (`report data`). The policy then appraises the
claims, and on TDX and SEV-SNP its `[hardware]` rules appraise the vendor-verified
report. Nothing stops at the first failure, so a report always shows everything that
is wrong with a piece of evidence.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chiron.core import purposes
from chiron.core.attestation.evidence import (
    PLATFORM_SEV_SNP,
    PLATFORM_SIM,
    PLATFORM_TDX,
    Evidence,
    SimSignatureChain,
    TsmSignatureChain,
    check_nonce,
    report_data_for,
)
from chiron.core.attestation.hardware import (
    PROVIDER_PLATFORMS,
    HardwareReport,
    parse_hardware_report,
)
from chiron.core.attestation.hardware_verifier import HardwareInputs, vendor_checks
from chiron.core.attestation.policy import Policy
from chiron.core.attestation.report import (
    CheckResult,
    Claims,
    HardwareClaims,
    VerificationReport,
)
from chiron.core.attestation.sim import SimRoot, parse_platform_certificate, platform_certificate
from chiron.core.crypto import verify_signature
from chiron.core.errors import AttestationError, InputError, IntegrityError, UsageError

# Checks that decide whether the evidence authenticates the enclave's keys.
_AUTHENTICITY_CHECKS = frozenset({"root of trust", "signature", "vendor signature", "report data"})


def verify_evidence(
    evidence: bytes,
    policy: Policy,
    *,
    nonce: bytes,
    sim_roots: Sequence[SimRoot] = (),
    now: float | None = None,
) -> VerificationReport:
    """Verify `evidence` requested with `nonce`; malformed evidence raises AttestationError.

    `sim_roots` are the simulation roots this verifier trusts; they matter only for
    simulated evidence (which the policy refuses unless it unsafely allows simulation).
    `now` (seconds since the epoch; default the clock) is the verification time: the
    evidence's age is measured from it, and on TDX and SEV-SNP certificates and
    collateral are judged at it.
    """
    check_nonce(nonce)
    parsed = Evidence.from_bytes(evidence)
    checked_at = time.time() if now is None else now
    hardware_claims: HardwareClaims | None = None
    hardware_rules: list[CheckResult] = []
    vendor_detail = ""
    if isinstance(parsed.signature_chain, SimSignatureChain):
        chain_checks = _sim_chain(parsed, parsed.signature_chain, sim_roots)
        report_data = parsed.report_data
        launch_measurement = tcb_detail = None
        vendor_signature_verified = None
    else:
        hardware = _hardware_report(parsed, parsed.signature_chain)
        report_data = hardware.report_data
        launch_measurement, tcb_detail = hardware.launch_measurement, hardware.tcb_detail
        vendor = _vendor(
            parsed, parsed.signature_chain, policy, at=datetime.fromtimestamp(checked_at, UTC)
        )
        chain_checks = vendor.checks
        vendor_signature_verified, vendor_detail = vendor.verified, vendor.detail
        hardware_claims = vendor.claims
        hardware_rules = _hardware_rules(policy, vendor)
    expected = report_data_for(
        nonce=nonce,
        enclave_identity=parsed.enclave_identity,
        measurement=parsed.measurement,
        timestamp=parsed.timestamp,
        role=parsed.role,
        binding=parsed.binding,
    )
    if hmac.compare_digest(report_data, expected):
        binding = CheckResult(
            "report data", True, "binds this request's nonce and the enclave keys"
        )
    else:
        binding = CheckResult(
            "report data",
            False,
            "does not match this request's nonce: replayed evidence, or made for another request",
        )
    claims = Claims(
        platform=parsed.platform,
        measurement=parsed.measurement,
        debug=parsed.debug,
        tcb_level=parsed.tcb_level,
        timestamp=parsed.timestamp,
        age_seconds=int(checked_at) - parsed.timestamp,
        simulated=parsed.platform == PLATFORM_SIM,
        vendor_signature_verified=vendor_signature_verified,
        role=parsed.role,
        binding=parsed.binding,
        vendor_detail=vendor_detail,
    )
    checks = (*chain_checks, binding, *policy.rules().evaluate(claims), *hardware_rules)
    authentic = all(check.passed for check in checks if check.name in _AUTHENTICITY_CHECKS)
    return VerificationReport(
        claims=claims,
        checks=checks,
        identity=parsed.identity if authentic else None,
        launch_measurement=launch_measurement,
        tcb_detail=tcb_detail,
        hardware=hardware_claims,
    )


@dataclass(frozen=True)
class _VendorResult:
    checks: list[CheckResult]
    verified: bool
    detail: str
    claims: HardwareClaims | None


def _vendor(
    evidence: Evidence, chain: TsmSignatureChain, policy: Policy, *, at: datetime
) -> _VendorResult:
    """Every vendor check of a configfs-tsm report, as `chiron evidence verify` runs them.

    SEV-SNP certificates come from the evidence's certificate table (`auxblob`), else
    from the policy's `[hardware] chain`; TDX collateral from the policy's `[hardware]
    collateral`. Vendor checks that fail under a policy that unsafely accepts an
    unverified vendor signature are shown as accepted, and say so.
    """
    snp = evidence.platform == PLATFORM_SEV_SNP
    if snp and not chain.auxblob and policy.hardware.chain is None:
        return _VendorResult(
            [],
            False,
            "no VCEK or VLEK: the host supplied no certificate table (auxblob) and the "
            "policy names no [hardware] chain",
            None,
        )
    inputs = HardwareInputs(
        platform=evidence.platform,
        evidence=chain.outblob,
        chain=policy.hardware.chain if snp else None,
        collateral=policy.hardware.collateral if evidence.platform == PLATFORM_TDX else None,
        certificate_table=(chain.auxblob or None) if snp else None,
    )
    try:
        checks, claims = vendor_checks(inputs, at=at)
    except (InputError, UsageError) as exc:
        return _VendorResult([], False, f"the vendor checks could not run: {exc}", None)
    failed = [check.name for check in checks if not check.passed]
    if not failed:
        path = next((c.reason for c in checks if c.name == "certificate chain"), "")
        return _VendorResult(checks, True, path, claims)
    detail = "failed " + ", ".join(failed)
    if policy.UNSAFE_allow_unverified_vendor_signature:
        checks = [
            check
            if check.passed
            else CheckResult(
                check.name, True, f"UNVERIFIED, accepted by an unsafe policy: {check.reason}"
            )
            for check in checks
        ]
    return _VendorResult(checks, False, detail, claims)


def _hardware_rules(policy: Policy, vendor: _VendorResult) -> list[CheckResult]:
    """The policy's `[hardware]` rules on the report (its debug bit is the `debug` check)."""
    if vendor.claims is not None:
        return policy.hardware.rules(debug=False).evaluate(vendor.claims)
    if policy.hardware.pins_anything():
        return [
            CheckResult(
                "hardware policy",
                False,
                "not evaluated: the report could not be read by the vendor checks",
            )
        ]
    return []


def _sim_chain(
    evidence: Evidence, chain: SimSignatureChain, sim_roots: Sequence[SimRoot]
) -> list[CheckResult]:
    certificate = parse_platform_certificate(chain.certificate)
    roots = {root.fingerprint: root for root in sim_roots}
    root = roots.get(certificate.root_fingerprint)
    if root is None:
        trusted = ", ".join(f[:16] for f in roots) or "none"
        root_check = CheckResult(
            "root of trust",
            False,
            f"unknown root: the platform certificate names simulation root "
            f"{certificate.root_fingerprint[:16]}, trusted roots: {trusted}",
        )
    elif chain.certificate != platform_certificate(certificate.platform_key, root):
        # Only the canonical encoding is accepted, so one certificate has one byte form.
        root_check = CheckResult("root of trust", False, "the platform certificate is malformed")
    else:
        root_check = _signature_check(
            "root of trust",
            root.key,
            chain.certificate_signature,
            chain.certificate,
            purpose=purposes.SIM_PLATFORM_CERTIFICATE,
            passed=f"platform certified by trusted simulation root {root.fingerprint[:16]}",
            failed="bad signature on the platform certificate",
        )
    signature_check = _signature_check(
        "signature",
        certificate.platform_key,
        chain.evidence_signature,
        evidence.signed_bytes(),
        purpose=purposes.SIM_EVIDENCE,
        passed="evidence signed by the certified platform key",
        failed="bad signature: the evidence was altered or signed by another key",
    )
    return [root_check, signature_check]


def _signature_check(
    name: str,
    signer: Ed25519PublicKey,
    signature: bytes,
    message: bytes,
    *,
    purpose: str,
    passed: str,
    failed: str,
) -> CheckResult:
    try:
        verify_signature(signer, signature, message, purpose=purpose)
    except IntegrityError:
        return CheckResult(name, False, failed)
    return CheckResult(name, True, passed)


def _hardware_report(evidence: Evidence, chain: TsmSignatureChain) -> HardwareReport:
    if PROVIDER_PLATFORMS.get(chain.provider) != evidence.platform:
        raise AttestationError(
            f"malformed evidence: provider {chain.provider!r} does not produce "
            f"{evidence.platform} reports"
        )
    hardware = parse_hardware_report(chain.provider, chain.outblob)
    # The claims outside the report are unauthenticated copies; they must agree with
    # the hardware's own fields, which are the ones appraised.
    if (
        hardware.debug != evidence.debug
        or hardware.tcb_level != evidence.tcb_level
        or hardware.report_data != evidence.report_data
    ):
        raise AttestationError("malformed evidence: its claims disagree with the hardware report")
    return hardware
