"""AMD SEV-SNP attestation reports: parse them and check them against AMD's pinned roots.

A report (ABI versions 2, 3 and 5: Milan, Genoa and Turin layouts) is signed with ECDSA
P-384 by a VCEK (a key unique to one chip and one TCB) or a VLEK (a key AMD gives a
cloud provider); AMD's ASK (or ASVK) certifies that key and AMD's ARK certifies the
ASK, both with RSA-PSS. Only the ARKs pinned in `roots/` are trusted, so a chain the
host supplies can add nothing but the leaf and its intermediate.

Azure's confidential VMs wrap the report in an HCL report: a 32-byte header, the SNP
report, then runtime data whose JSON (holding the vTPM's attestation key) is bound into
the first 32 bytes of the report data by SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import datetime

from chiron.core.attestation import der
from chiron.core.attestation.evidence import PLATFORM_SEV_SNP
from chiron.core.attestation.report import CheckResult, HardwareClaims
from chiron.core.attestation.vendor_crypto import Certificate, amd_certificates
from chiron.core.attestation.vendor_crypto import verify_snp_signature as _verify_signature
from chiron.core.errors import InputError

REPORT_BYTES = 0x4A0
SIGNED_BYTES = 0x2A0  # the signature covers [0, 0x2A0)
SUPPORTED_VERSIONS = (2, 3, 5)
_SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
_SIGNATURE_R = slice(0x2A0, 0x2A0 + 72)  # little-endian, zero-padded
_SIGNATURE_S = slice(0x2E8, 0x2E8 + 72)

_VERSION = struct.Struct("<I")
_POLICY = slice(0x08, 0x10)
_VMPL = slice(0x30, 0x34)
_SIGNATURE_ALGO = slice(0x34, 0x38)
_KEY_INFO = slice(0x48, 0x4C)
_REPORT_DATA = slice(0x50, 0x90)
_MEASUREMENT = slice(0x90, 0xC0)
_REPORTED_TCB = slice(0x180, 0x188)
_CPUID = slice(0x188, 0x18B)  # family, model, stepping (version 3 and later)
_CHIP_ID = slice(0x1A0, 0x1E0)

# Guest policy bits (SEV-SNP ABI, "GUEST_POLICY").
_POLICY_SMT = 1 << 16
_POLICY_MIGRATE_MA = 1 << 18
_POLICY_DEBUG = 1 << 19

# KEY_INFO: bit 1 MASK_CHIP_ID, bits 2..4 SIGNING_KEY.
_MASK_CHIP_ID = 1 << 1
SIGNING_KEYS = {0: "VCEK", 1: "VLEK"}

# HCL report (Azure): header, SNP report, runtime data header, runtime JSON.
_HCL_MAGIC = b"HCLA"
_HCL_HEADER_BYTES = 32
_HCL_RUNTIME_HEADER = struct.Struct("<IIIII")  # size, version, report type, hash type, json size
_HCL_HASH_SHA256 = 1

# Where each product keeps its TCB components in the 8-byte TCB_VERSION.
_TCB_LAYOUTS = {
    "Milan": (("bootloader", 0), ("tee", 1), ("snp", 6), ("microcode", 7)),
    "Genoa": (("bootloader", 0), ("tee", 1), ("snp", 6), ("microcode", 7)),
    "Turin": (("fmc", 0), ("bootloader", 1), ("tee", 2), ("snp", 3), ("microcode", 7)),
}
# The VCEK/VLEK extension holding each component (AMD's "VCEK specification").
_TCB_EXTENSIONS = {
    "bootloader": "1.3.6.1.4.1.3704.1.3.1",
    "tee": "1.3.6.1.4.1.3704.1.3.2",
    "snp": "1.3.6.1.4.1.3704.1.3.3",
    "microcode": "1.3.6.1.4.1.3704.1.3.8",
    "fmc": "1.3.6.1.4.1.3704.1.3.9",
}
_HWID_EXTENSION = "1.3.6.1.4.1.3704.1.4"
# CPUID family and model of each product line (reported from version 3 on).
_PRODUCTS_BY_CPUID = {
    (0x19, 0x00): "Milan",
    (0x19, 0x01): "Milan",
    (0x19, 0x10): "Genoa",
    (0x19, 0x11): "Genoa",
    (0x19, 0xA0): "Genoa",
    (0x1A, 0x02): "Turin",
    (0x1A, 0x11): "Turin",
}
_TURIN_CHIP_ID_BYTES = 8


@dataclass(frozen=True)
class SnpReport:
    """The fields of an SEV-SNP attestation report that verification relies on."""

    raw: bytes  # the 1184-byte report
    version: int
    policy: int
    vmpl: int
    signing_key: int  # 0 VCEK, 1 VLEK
    mask_chip_id: bool
    report_data: bytes
    measurement: bytes
    reported_tcb: bytes
    chip_id: bytes
    cpuid: tuple[int, int] | None  # (family, model), version 3 and later
    runtime_data: bytes | None = None  # HCL runtime JSON, when wrapped

    @property
    def debug(self) -> bool:
        return bool(self.policy & _POLICY_DEBUG)

    @property
    def migration_agent(self) -> bool:
        return bool(self.policy & _POLICY_MIGRATE_MA)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & _POLICY_SMT)

    @property
    def signature(self) -> tuple[int, int]:
        return (
            int.from_bytes(self.raw[_SIGNATURE_R], "little"),
            int.from_bytes(self.raw[_SIGNATURE_S], "little"),
        )


def parse_report(data: bytes) -> SnpReport:
    """Parse a raw SNP report, or an Azure HCL report that wraps one."""
    runtime_data = None
    if data[:4] == _HCL_MAGIC:
        data, runtime_data = _unwrap_hcl(data)
    if len(data) != REPORT_BYTES:
        raise InputError(f"not an SEV-SNP report: {len(data)} bytes, expected {REPORT_BYTES}")
    (version,) = _VERSION.unpack_from(data)
    if version not in SUPPORTED_VERSIONS:
        raise InputError(f"unsupported SEV-SNP report version {version}")
    if int.from_bytes(data[_SIGNATURE_ALGO], "little") != _SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise InputError("unsupported SEV-SNP signature algorithm (only ECDSA P-384)")
    key_info = int.from_bytes(data[_KEY_INFO], "little")
    signing_key = (key_info >> 2) & 0b111
    if signing_key not in SIGNING_KEYS:
        raise InputError("the SEV-SNP report is not signed by a VCEK or VLEK")
    return SnpReport(
        raw=data,
        version=version,
        policy=int.from_bytes(data[_POLICY], "little"),
        vmpl=int.from_bytes(data[_VMPL], "little"),
        signing_key=signing_key,
        mask_chip_id=bool(key_info & _MASK_CHIP_ID),
        report_data=data[_REPORT_DATA],
        measurement=data[_MEASUREMENT],
        reported_tcb=data[_REPORTED_TCB],
        chip_id=data[_CHIP_ID],
        cpuid=(data[_CPUID][0], data[_CPUID][1]) if version >= 3 else None,
        runtime_data=runtime_data,
    )


def _unwrap_hcl(data: bytes) -> tuple[bytes, bytes]:
    end = _HCL_HEADER_BYTES + REPORT_BYTES
    if len(data) < end + _HCL_RUNTIME_HEADER.size:
        raise InputError("truncated HCL report")
    _size, _version, _kind, hash_type, json_size = _HCL_RUNTIME_HEADER.unpack_from(data, end)
    start = end + _HCL_RUNTIME_HEADER.size
    if hash_type != _HCL_HASH_SHA256 or start + json_size > len(data):
        raise InputError("malformed HCL report runtime data")
    return data[_HCL_HEADER_BYTES:end], data[start : start + json_size]


def verify_report(
    report: SnpReport, chain: list[Certificate], *, at: datetime
) -> tuple[list[CheckResult], HardwareClaims]:
    """Every vendor check of `report` with the supplied `chain`, at time `at`."""
    expected_kind = SIGNING_KEYS[report.signing_key]
    leaves = [cert for cert in chain if cert.common_name in ("SEV-VCEK", "SEV-VLEK")]
    if not leaves:
        raise InputError("the certificates given hold no VCEK or VLEK certificate")
    leaf = leaves[0]
    checks: list[CheckResult] = []

    kind = leaf.common_name.removeprefix("SEV-")
    checks.append(
        CheckResult(
            "signing key",
            kind == expected_kind,
            f"the report is signed by a {expected_kind}"
            + ("" if kind == expected_kind else f", but the certificate is a {kind}"),
        )
    )
    path = _chain_to_pinned_ark(leaf, chain)
    product = None
    if path is None:
        checks.append(
            CheckResult(
                "certificate chain",
                False,
                f"the {kind} does not chain to a pinned AMD root (ARK)",
            )
        )
    else:
        intermediate, ark = path
        product = ark.common_name.removeprefix("ARK-")
        checks.append(
            CheckResult(
                "certificate chain",
                True,
                f"{kind} <- {intermediate.common_name} <- pinned {ark.common_name}",
            )
        )
        expired = [c for c in (leaf, intermediate, ark) if not c.valid_at(at)]
        checks.append(
            CheckResult(
                "certificate validity",
                not expired,
                "every certificate is valid at " + at.isoformat()
                if not expired
                else "; ".join(
                    f"{c.common_name} is valid only from {c.not_before.isoformat()} "
                    f"to {c.not_after.isoformat()}"
                    for c in expired
                ),
            )
        )
    if report.cpuid is not None:
        cpuid_product = _PRODUCTS_BY_CPUID.get(report.cpuid)
        if product is None:
            product = cpuid_product
        elif cpuid_product is not None and cpuid_product != product:
            checks.append(
                CheckResult(
                    "product",
                    False,
                    f"a {cpuid_product} CPU made the report, but ARK-{product} certifies it",
                )
            )

    r, s = report.signature
    signed = _verify_signature(leaf, r, s, report.raw[:SIGNED_BYTES])
    checks.append(
        CheckResult(
            "signature",
            signed,
            f"report signed by the {kind}"
            if signed
            else f"bad signature: the report was altered or not signed by this {kind}",
        )
    )

    components = _tcb_components(report.reported_tcb, product or "Milan")
    checks.append(_tcb_matches(leaf, kind, components))
    chip_id = _chip_id(report, product)
    if kind == "VCEK":
        checks.append(_chip_id_matches(leaf, report, chip_id))
    if report.runtime_data is not None:
        digest = hashlib.sha256(report.runtime_data).digest()
        bound = hmac.compare_digest(digest, report.report_data[:32])
        checks.append(
            CheckResult(
                "runtime data",
                bound,
                "report data binds the HCL runtime data (SHA-256)"
                if bound
                else "the HCL runtime data is not the one the report binds",
            )
        )

    claims = HardwareClaims(
        platform=PLATFORM_SEV_SNP,
        measurement=report.measurement.hex(),
        report_data=report.report_data.hex(),
        debug=report.debug,
        tcb_components=components,
        chip_id=chip_id.hex() if chip_id is not None else None,
        signing_key=kind,
        product=product,
        vmpl=report.vmpl,
        migration_agent=report.migration_agent,
        smt_allowed=report.smt_allowed,
    )
    return checks, claims


def _chain_to_pinned_ark(
    leaf: Certificate, supplied: list[Certificate]
) -> tuple[Certificate, Certificate] | None:
    """(intermediate, ARK) linking `leaf` to a pinned ARK, or None.

    Intermediates may come from the supplied file or the pinned set, but the ARK only
    from the pinned set: a self-signed certificate in the supplied file is ignored.
    """
    pinned = amd_certificates()
    arks = [cert for cert in pinned if cert.self_signed]
    intermediates = [cert for cert in (*supplied, *pinned) if cert != leaf and cert not in arks]
    for intermediate in intermediates:
        if not leaf.signed_by(intermediate):
            continue
        for ark in arks:
            if intermediate.signed_by(ark):
                return intermediate, ark
    return None


PRODUCTS = tuple(_TCB_LAYOUTS)
# AMD KDS query parameter of each TCB component (`/vcek/v1/{product}/{hwid}?...`).
_KDS_PARAMETERS = {
    "fmc": "fmcSPL",
    "bootloader": "blSPL",
    "tee": "teeSPL",
    "snp": "snpSPL",
    "microcode": "ucodeSPL",
}


def product_of(report: SnpReport) -> str | None:
    """The product line a report states (version 3 and later), or None."""
    return None if report.cpuid is None else _PRODUCTS_BY_CPUID.get(report.cpuid)


def tcb_query(report: SnpReport, product: str) -> tuple[tuple[str, int], ...]:
    """The reported TCB as AMD's key distribution service names its components."""
    return tuple(
        (_KDS_PARAMETERS[name], value)
        for name, value in _tcb_components(report.reported_tcb, product)
    )


def _tcb_components(tcb: bytes, product: str) -> tuple[tuple[str, int], ...]:
    return tuple((name, tcb[index]) for name, index in _TCB_LAYOUTS[product])


def _tcb_matches(
    leaf: Certificate, kind: str, components: tuple[tuple[str, int], ...]
) -> CheckResult:
    """A VCEK or VLEK is issued for one TCB: it must be the TCB the report states."""
    mismatched = []
    for name, value in components:
        raw = leaf.extension(_TCB_EXTENSIONS[name])
        try:
            certified = der.integer(raw) if raw is not None else None
        except ValueError:
            certified = None
        if certified != value:
            mismatched.append(f"{name} {value} (certificate: {certified})")
    tcb = ", ".join(f"{name} {value}" for name, value in components)
    if mismatched:
        return CheckResult(
            "reported tcb",
            False,
            f"the {kind} was issued for another TCB: " + "; ".join(mismatched),
        )
    return CheckResult("reported tcb", True, f"{tcb}, as the {kind} certifies")


def _chip_id(report: SnpReport, product: str | None) -> bytes | None:
    if report.mask_chip_id or not any(report.chip_id):
        return None
    if product == "Turin":
        # Turin reports an 8-byte chip id; the rest of the field is zero.
        return report.chip_id[:_TURIN_CHIP_ID_BYTES]
    return report.chip_id


def _chip_id_matches(leaf: Certificate, report: SnpReport, chip_id: bytes | None) -> CheckResult:
    """A VCEK names its chip: a report from another chip must not verify with it."""
    if chip_id is None:
        return CheckResult("chip id", True, "chip id masked by the guest; the VCEK key decides")
    raw = leaf.extension(_HWID_EXTENSION) or b""
    try:
        certified = der.single(raw, der.TAG_OCTET_STRING)
    except ValueError:
        certified = raw
    if hmac.compare_digest(certified, chip_id):
        return CheckResult("chip id", True, f"chip {chip_id.hex()[:16]}… as the VCEK certifies")
    return CheckResult("chip id", False, "the VCEK was issued for another chip")
