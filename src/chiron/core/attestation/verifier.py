"""The verifier: appraise evidence against a policy and report every check.

The verifier's own checks establish that the evidence is authentic and answers this
request: its signature chain leads to a trusted root (`root of trust`, `signature`;
on TDX and SEV-SNP the vendor signature, which the policy appraises), and its report
data binds this request's nonce to the enclave keys and claims it carries (`report
data`). The policy then appraises the claims. Nothing stops at the first failure, so a
report always shows everything that is wrong with a piece of evidence.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chiron.core import purposes
from chiron.core.attestation.evidence import (
    PLATFORM_SIM,
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
from chiron.core.attestation.policy import Policy
from chiron.core.attestation.report import CheckResult, Claims, VerificationReport
from chiron.core.attestation.sim import SimRoot, parse_platform_certificate, platform_certificate
from chiron.core.crypto import verify_signature
from chiron.core.errors import AttestationError, IntegrityError

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
    """
    check_nonce(nonce)
    parsed = Evidence.from_bytes(evidence)
    checked_at = time.time() if now is None else now
    if isinstance(parsed.signature_chain, SimSignatureChain):
        chain_checks = _sim_chain(parsed, parsed.signature_chain, sim_roots)
        report_data = parsed.report_data
        launch_measurement = tcb_detail = None
        vendor_signature_verified = None
    else:
        hardware = _hardware_report(parsed, parsed.signature_chain)
        chain_checks = []
        report_data = hardware.report_data
        launch_measurement, tcb_detail = hardware.launch_measurement, hardware.tcb_detail
        # Checking TDX quotes and SNP reports against Intel's and AMD's certificate
        # chains is not implemented yet: until it is, the policy must refuse them or
        # unsafely accept them, and says which in the report.
        vendor_signature_verified = False
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
    )
    checks = (*chain_checks, binding, *policy.rules().evaluate(claims))
    authentic = all(check.passed for check in checks if check.name in _AUTHENTICITY_CHECKS)
    return VerificationReport(
        claims=claims,
        checks=checks,
        identity=parsed.identity if authentic else None,
        launch_measurement=launch_measurement,
        tcb_detail=tcb_detail,
    )


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
