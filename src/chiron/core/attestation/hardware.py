"""Reading the fields Chiron relies on out of TDX quotes and SEV-SNP attestation reports.

These are the raw reports a confidential VM's kernel returns through configfs-tsm. Only
the fields an appraisal needs are read: the 64 bytes of report data (where Chiron binds
the nonce and the enclave's keys), the debug bit, the TCB security version and the
launch measurement. Their vendor signatures are not checked here (see the verifier's
"vendor signature" check): a parsed report is a claim, not yet evidence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from chiron.core.attestation.evidence import PLATFORM_SEV_SNP, PLATFORM_TDX
from chiron.core.errors import AttestationError

PROVIDER_TDX = "tdx_guest"
PROVIDER_SEV_SNP = "sev_guest"

# Intel TDX DCAP quote: 48-byte header, then (v4) the TD report body, or (v5) a 6-byte
# body descriptor and the body. Offsets below are relative to the body.
_TDX_HEADER = struct.Struct("<HHI")  # version, attestation key type, TEE type
_TDX_TEE_TYPE = 0x81
_TDX_HEADER_BYTES = 48
_TDX_BODY_BYTES = 584
_TDX_TEE_TCB_SVN = slice(0, 16)
_TDX_TD_ATTRIBUTES = slice(120, 128)
_TDX_MRTD = slice(136, 184)
_TDX_REPORT_DATA = slice(520, 584)
_TDX_ATTRIBUTE_DEBUG = 1 << 0

# AMD SEV-SNP ATTESTATION_REPORT (ABI spec, table "ATTESTATION_REPORT structure").
_SNP_REPORT_BYTES = 0x4A0
_SNP_POLICY = slice(0x08, 0x10)
_SNP_REPORT_DATA = slice(0x50, 0x90)
_SNP_MEASUREMENT = slice(0x90, 0xC0)
_SNP_REPORTED_TCB = slice(0x180, 0x188)
_SNP_TCB_SNP_COMPONENT = 6  # TCB_VERSION: boot loader, TEE, 4 reserved, SNP, microcode
_SNP_POLICY_DEBUG = 1 << 19


@dataclass(frozen=True)
class HardwareReport:
    """What Chiron reads from a TDX quote or an SEV-SNP report."""

    platform: str  # PLATFORM_TDX or PLATFORM_SEV_SNP
    report_data: bytes
    debug: bool
    # One number compared against a policy's min_tcb: the TDX module's SVN
    # (TEE_TCB_SVN[0]) or the SEV-SNP firmware's SVN (REPORTED_TCB.SNP).
    tcb_level: int
    tcb_detail: str  # the full TCB vector, hex, for the report
    launch_measurement: str  # MRTD or the SNP launch digest, hex


def parse_tdx_quote(quote: bytes) -> HardwareReport:
    """Read a TDX quote (version 4 or 5) as produced by the tdx_guest provider."""
    if len(quote) < _TDX_HEADER_BYTES + _TDX_BODY_BYTES:
        raise AttestationError("malformed evidence: the TDX quote is truncated")
    version, _key_type, tee_type = _TDX_HEADER.unpack_from(quote)
    if tee_type != _TDX_TEE_TYPE:
        raise AttestationError("malformed evidence: the quote is not a TDX quote")
    if version == 4:
        start = _TDX_HEADER_BYTES
    elif version == 5:
        # Body descriptor: type (2 bytes), size (4 bytes); TDX 1.0 and 1.5 bodies
        # share the first 584 bytes.
        start = _TDX_HEADER_BYTES + 6
        if len(quote) < start + _TDX_BODY_BYTES:
            raise AttestationError("malformed evidence: the TDX quote is truncated")
    else:
        raise AttestationError(f"malformed evidence: unsupported TDX quote version {version}")
    body = quote[start : start + _TDX_BODY_BYTES]
    tee_tcb_svn = body[_TDX_TEE_TCB_SVN]
    attributes = int.from_bytes(body[_TDX_TD_ATTRIBUTES], "little")
    return HardwareReport(
        platform=PLATFORM_TDX,
        report_data=body[_TDX_REPORT_DATA],
        debug=bool(attributes & _TDX_ATTRIBUTE_DEBUG),
        tcb_level=tee_tcb_svn[0],
        tcb_detail=tee_tcb_svn.hex(),
        launch_measurement=body[_TDX_MRTD].hex(),
    )


def parse_snp_report(report: bytes) -> HardwareReport:
    """Read an SEV-SNP attestation report as produced by the sev_guest provider."""
    if len(report) < _SNP_REPORT_BYTES:
        raise AttestationError("malformed evidence: the SEV-SNP report is truncated")
    policy = int.from_bytes(report[_SNP_POLICY], "little")
    reported_tcb = report[_SNP_REPORTED_TCB]
    return HardwareReport(
        platform=PLATFORM_SEV_SNP,
        report_data=report[_SNP_REPORT_DATA],
        debug=bool(policy & _SNP_POLICY_DEBUG),
        tcb_level=reported_tcb[_SNP_TCB_SNP_COMPONENT],
        tcb_detail=reported_tcb.hex(),
        launch_measurement=report[_SNP_MEASUREMENT].hex(),
    )


PARSERS = {PROVIDER_TDX: parse_tdx_quote, PROVIDER_SEV_SNP: parse_snp_report}
PROVIDER_PLATFORMS = {PROVIDER_TDX: PLATFORM_TDX, PROVIDER_SEV_SNP: PLATFORM_SEV_SNP}


def parse_hardware_report(provider: str, outblob: bytes) -> HardwareReport:
    """Parse a configfs-tsm `outblob` for its `provider`."""
    parser = PARSERS.get(provider)
    if parser is None:
        raise AttestationError(f"unknown configfs-tsm provider {provider!r}")
    return parser(outblob)
