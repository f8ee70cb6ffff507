"""Verify a raw TDX quote or SEV-SNP report offline: vendor checks, then hardware rules.

This is what `chiron evidence verify` runs. The vendor checks establish that the CPU
made the report (signature, chain to the pinned vendor root, certificate and collateral
validity at the verification time, CRLs where the vendor publishes them offline, the
event log's replay); the hardware policy then appraises what the report says. Every
check is reported, and nothing stops at the first failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chiron.core.attestation.event_log import parse_event_log
from chiron.core.attestation.evidence import PLATFORM_SEV_SNP, PLATFORM_TDX
from chiron.core.attestation.hardware_policy import HardwarePolicy
from chiron.core.attestation.report import CheckResult, HardwareClaims, HardwareVerification
from chiron.core.attestation.snp import parse_report, verify_report
from chiron.core.attestation.snp_certificates import parse_certificate_table
from chiron.core.attestation.tdx import parse_quote, verify_quote
from chiron.core.attestation.tdx_collateral import parse_collateral, verify_collateral
from chiron.core.attestation.vendor_crypto import load_certificates
from chiron.core.errors import UsageError

HARDWARE_PLATFORMS = (PLATFORM_SEV_SNP, PLATFORM_TDX)
# A TDX quote is about 5 KiB, an SNP report 1184 bytes, an Azure HCL report under 3 KiB.
MAX_HARDWARE_EVIDENCE_BYTES = 64 * 1024
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def decode_evidence(data: bytes) -> bytes:
    """The evidence bytes of a file holding them raw or as hex text (optionally 0x...).

    Quotes are often passed around as hex; a raw report is never all hex digits.
    """
    text = data.strip()
    text = text[2:] if text[:2] in (b"0x", b"0X") else text
    if text and len(text) % 2 == 0 and set(text) <= _HEX_DIGITS:
        return bytes.fromhex(text.decode())
    return data


@dataclass(frozen=True)
class HardwareInputs:
    """The evidence and everything needed to verify it offline, as bytes."""

    platform: str
    evidence: bytes
    chain: bytes | None = None  # SNP: VCEK or VLEK, optionally with ASK and ARK
    collateral: bytes | None = None  # TDX: QuoteCollateralV3 JSON
    event_log: bytes | None = None  # TDX: CCEL event log
    # SNP: the certificate table that came with the report (configfs-tsm `auxblob`);
    # its certificates are tried before those of `chain`.
    certificate_table: bytes | None = None


def verify_hardware_evidence(
    inputs: HardwareInputs, *, at: datetime, policy: HardwarePolicy | None = None
) -> HardwareVerification:
    """Verify `inputs` at time `at` (timezone-aware) and appraise them with `policy`.

    Input that cannot be parsed at all raises InputError or UsageError; everything
    else is a check in the result.
    """
    checks, claims = vendor_checks(inputs, at=at)
    rules = (policy or HardwarePolicy()).rules()
    return HardwareVerification(claims=claims, checks=(*checks, *rules.evaluate(claims)))


def vendor_checks(
    inputs: HardwareInputs, *, at: datetime
) -> tuple[list[CheckResult], HardwareClaims]:
    """The vendor checks of `inputs` at time `at`, and the claims they are about.

    The claims are authentic only if every returned check passed. `chiron attest`
    runs this on configfs-tsm evidence, `chiron evidence verify` on files.
    """
    if at.tzinfo is None:
        raise UsageError("the verification time needs a timezone")
    if inputs.platform == PLATFORM_SEV_SNP:
        return _snp(inputs, at)
    if inputs.platform == PLATFORM_TDX:
        return _tdx(inputs, at)
    raise UsageError(f"unknown hardware platform {inputs.platform!r}")


def _snp(inputs: HardwareInputs, at: datetime) -> tuple[list[CheckResult], HardwareClaims]:
    if inputs.chain is None and not inputs.certificate_table:
        raise UsageError("SEV-SNP evidence needs its VCEK or VLEK certificate (--chain)")
    if inputs.collateral is not None or inputs.event_log is not None:
        raise UsageError("--collateral and --event-log are for TDX quotes")
    report = parse_report(inputs.evidence)
    certificates = []
    if inputs.certificate_table:
        certificates.extend(parse_certificate_table(inputs.certificate_table).chain)
    if inputs.chain is not None:
        certificates.extend(load_certificates(inputs.chain, source="--chain"))
    return verify_report(report, certificates, at=at)


def _tdx(inputs: HardwareInputs, at: datetime) -> tuple[list[CheckResult], HardwareClaims]:
    if inputs.chain is not None or inputs.certificate_table:
        raise UsageError("a TDX quote carries its own PCK chain; --chain is for SEV-SNP")
    quote = parse_quote(inputs.evidence)
    collateral = (
        parse_collateral(inputs.collateral, source="--collateral")
        if inputs.collateral is not None
        else None
    )
    log = parse_event_log(inputs.event_log) if inputs.event_log is not None else None
    checks, chain, pck = verify_quote(quote, at=at)
    tcb_status = fmspc = age = None
    if pck is not None:
        fmspc = pck.fmspc.hex()
    if collateral is not None:
        if chain is None or pck is None:
            checks.append(
                CheckResult("tcb level", False, "not judged: the PCK certificate is not trusted")
            )
        else:
            verdict = verify_collateral(collateral, quote, chain, pck, at=at)
            checks.extend(verdict.checks)
            age = verdict.age_seconds
            # The status counts only if the collateral itself is authentic and current.
            if all(check.passed for check in verdict.checks if check.name != "tcb level"):
                tcb_status = verdict.tcb_status
    if log is not None:
        replayed = log.replay()
        differ = [
            f"RTMR{i}" for i, (a, b) in enumerate(zip(replayed, quote.rtmrs, strict=True)) if a != b
        ]
        checks.append(
            CheckResult(
                "event log",
                not differ,
                f"{len(log.events)} events reproduce RTMR0..3"
                if not differ
                else f"the event log does not reproduce {', '.join(differ)}",
            )
        )
    claims = HardwareClaims(
        platform=PLATFORM_TDX,
        measurement=quote.mrtd.hex(),
        report_data=quote.report_data.hex(),
        debug=quote.debug,
        rtmrs=tuple(value.hex() for value in quote.rtmrs),
        tcb_status=tcb_status,
        fmspc=fmspc,
        collateral_age_seconds=age,
        signing_key="PCK",
    )
    return checks, claims
