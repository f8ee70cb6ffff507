"""Intel TDX quotes: parse them and check their signatures up to Intel's pinned root.

A quote (version 4, or version 5 with a 6-byte body descriptor) is a header and a TD
report body signed with ECDSA P-256 by an attestation key. Intel's Quoting Enclave (QE)
vouches for that key: the QE's own SGX report carries SHA-256(attestation key ‖ QE
authentication data) and is signed by the platform's PCK, whose certificate chains
through Intel's PCK Platform (or Processor) CA to the Intel SGX Root CA pinned in
`roots/`. The PCK certificate also names the platform's family (FMSPC) and TCB, which
`tdx_collateral` judges against Intel's TCB information.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import datetime

from chiron.core.attestation import der
from chiron.core.attestation.report import CheckResult
from chiron.core.attestation.vendor_crypto import (
    Certificate,
    intel_root,
    load_certificates,
    verify_p256_signature,
)
from chiron.core.errors import InputError

HEADER_BYTES = 48
BODY_V4_BYTES = 584  # TDX 1.0 TD report body
BODY_V5_TDX15_BYTES = 648  # TDX 1.5 adds TEE_TCB_SVN2 and MRSERVICETD
_HEADER = struct.Struct("<HHI")  # version, attestation key type, TEE type
_BODY_DESCRIPTOR = struct.Struct("<HI")  # version 5: body type, body size
_LENGTH = struct.Struct("<I")
_CERT_DATA = struct.Struct("<HI")  # certification data type, size
_TEE_TYPE_TDX = 0x81
_KEY_TYPE_ECDSA_P256 = 2
_BODY_TYPES = {2: BODY_V4_BYTES, 3: BODY_V5_TDX15_BYTES}
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_QE_VENDOR_ID = slice(12, 28)
_CERT_TYPE_QE_REPORT = 6
_CERT_TYPE_PCK_CHAIN = 5
_SIGNATURE_BYTES = 64
_KEY_BYTES = 64
QE_REPORT_BYTES = 384

# TD report body fields.
_TEE_TCB_SVN = slice(0, 16)
_MRSIGNERSEAM = slice(64, 112)
_SEAM_ATTRIBUTES = slice(112, 120)
_TD_ATTRIBUTES = slice(120, 128)
_MRTD = slice(136, 184)
_RTMR_START = 328
_MEASUREMENT_BYTES = 48
_REPORT_DATA = slice(520, 584)
_TD_ATTRIBUTE_DEBUG = 1 << 0

# SGX report body fields (the QE's report).
_QE_MISCSELECT = slice(16, 20)
_QE_ATTRIBUTES = slice(48, 64)
_QE_MRSIGNER = slice(128, 160)
_QE_ISVPRODID = slice(256, 258)
_QE_ISVSVN = slice(258, 260)
_QE_REPORT_DATA = slice(320, 384)

# Intel's SGX extension of PCK certificates ("PCK Certificate and CRL Profile").
_SGX_EXTENSION = "1.2.840.113741.1.13.1"
_SGX_TCB = _SGX_EXTENSION + ".2"
_SGX_PCESVN = _SGX_TCB + ".17"
_SGX_PCEID = _SGX_EXTENSION + ".3"
_SGX_FMSPC = _SGX_EXTENSION + ".4"
_PCK_LEAF_CN = "Intel SGX PCK Certificate"


@dataclass(frozen=True)
class QeReport:
    """The Quoting Enclave's SGX report and what the QE identity collateral judges."""

    raw: bytes
    miscselect: bytes
    attributes: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes


@dataclass(frozen=True)
class PckTcb:
    """What Intel's PCK certificate says about the platform: its family and TCB."""

    fmspc: bytes
    pceid: bytes
    cpu_svns: tuple[int, ...]  # SGX TCB components 1..16
    pcesvn: int


@dataclass(frozen=True)
class TdxQuote:
    """A parsed TDX quote: the signed part, the TD's fields and the QE's certification."""

    version: int
    signed: bytes  # header and body (with its descriptor on version 5)
    body: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain: bytes  # PEM, as the quote carries it
    qe_vendor_id: bytes

    @property
    def tee_tcb_svn(self) -> bytes:
        return self.body[_TEE_TCB_SVN]

    @property
    def mrsignerseam(self) -> bytes:
        return self.body[_MRSIGNERSEAM]

    @property
    def seam_attributes(self) -> bytes:
        return self.body[_SEAM_ATTRIBUTES]

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.body[_TD_ATTRIBUTES], "little") & _TD_ATTRIBUTE_DEBUG)

    @property
    def mrtd(self) -> bytes:
        return self.body[_MRTD]

    @property
    def rtmrs(self) -> tuple[bytes, ...]:
        return tuple(
            self.body[_RTMR_START + i * _MEASUREMENT_BYTES :][:_MEASUREMENT_BYTES] for i in range(4)
        )

    @property
    def report_data(self) -> bytes:
        return self.body[_REPORT_DATA]


class _Reader:
    """Reads a quote front to back; running off its end is a one-line InputError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise InputError("truncated TDX quote")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size))


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote, version 4 or 5, with QE report certification data (type 6)."""
    reader = _Reader(data)
    header = reader.take(HEADER_BYTES)
    version, key_type, tee_type = _HEADER.unpack_from(header)
    if tee_type != _TEE_TYPE_TDX:
        raise InputError("not a TDX quote (TEE type is not TDX)")
    if key_type != _KEY_TYPE_ECDSA_P256:
        raise InputError("unsupported TDX attestation key type (only ECDSA P-256)")
    if version == 4:
        body = reader.take(BODY_V4_BYTES)
        signed = header + body
    elif version == 5:
        descriptor = reader.take(_BODY_DESCRIPTOR.size)
        body_type, body_size = _BODY_DESCRIPTOR.unpack(descriptor)
        if _BODY_TYPES.get(body_type) != body_size:
            raise InputError(f"unsupported TDX quote body type {body_type}")
        body = reader.take(body_size)
        signed = header + descriptor + body
    else:
        raise InputError(f"unsupported TDX quote version {version}")
    (signature_length,) = reader.unpack(_LENGTH)
    signature_data = _Reader(reader.take(signature_length))
    signature = signature_data.take(_SIGNATURE_BYTES)
    attestation_key = signature_data.take(_KEY_BYTES)
    cert_type, cert_size = signature_data.unpack(_CERT_DATA)
    if cert_type != _CERT_TYPE_QE_REPORT:
        raise InputError(f"unsupported TDX certification data type {cert_type}")
    qe = _Reader(signature_data.take(cert_size))
    qe_report_raw = qe.take(QE_REPORT_BYTES)
    qe_report_signature = qe.take(_SIGNATURE_BYTES)
    (auth_size,) = qe.unpack(struct.Struct("<H"))
    qe_auth_data = qe.take(auth_size)
    inner_type, inner_size = qe.unpack(_CERT_DATA)
    if inner_type != _CERT_TYPE_PCK_CHAIN:
        raise InputError("the TDX quote does not carry its PCK certificate chain")
    pck_chain = qe.take(inner_size).rstrip(b"\x00")
    return TdxQuote(
        version=version,
        signed=signed,
        body=body,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=QeReport(
            raw=qe_report_raw,
            miscselect=qe_report_raw[_QE_MISCSELECT],
            attributes=qe_report_raw[_QE_ATTRIBUTES],
            mrsigner=qe_report_raw[_QE_MRSIGNER],
            isvprodid=int.from_bytes(qe_report_raw[_QE_ISVPRODID], "little"),
            isvsvn=int.from_bytes(qe_report_raw[_QE_ISVSVN], "little"),
            report_data=qe_report_raw[_QE_REPORT_DATA],
        ),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain=pck_chain,
        qe_vendor_id=header[_QE_VENDOR_ID],
    )


@dataclass(frozen=True)
class PckChain:
    """The PCK certificate and its issuing CA, once linked to the pinned Intel root."""

    pck: Certificate
    intermediate: Certificate
    root: Certificate


def verify_quote(
    quote: TdxQuote, *, at: datetime
) -> tuple[list[CheckResult], PckChain | None, PckTcb | None]:
    """The signature and chain checks of `quote`, with the chain and PCK TCB when they hold.

    Returns (checks, chain, pck_tcb); chain is None when it does not reach the pinned
    root, and then nothing the PCK certificate says may be relied on.
    """
    checks: list[CheckResult] = []
    vendor_ok = quote.qe_vendor_id == INTEL_QE_VENDOR_ID
    checks.append(
        CheckResult(
            "quoting enclave vendor",
            vendor_ok,
            "Intel's quoting enclave" if vendor_ok else "the quote names another QE vendor",
        )
    )
    signed = verify_p256_signature(quote.attestation_key, quote.signature, quote.signed)
    checks.append(
        CheckResult(
            "quote signature",
            signed,
            "header and TD report signed by the attestation key"
            if signed
            else "bad signature: the quote was altered or not signed by its attestation key",
        )
    )
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    bound = hmac.compare_digest(quote.qe_report.report_data, expected + bytes(32))
    checks.append(
        CheckResult(
            "attestation key",
            bound,
            "the quoting enclave's report vouches for the attestation key"
            if bound
            else "the quoting enclave's report does not vouch for this attestation key",
        )
    )
    certs = load_certificates(quote.pck_chain, source="the quote's PCK chain")
    chain = _pck_chain(certs)
    if chain is None:
        checks.append(
            CheckResult(
                "certificate chain",
                False,
                "the PCK certificate does not chain to the pinned Intel SGX Root CA",
            )
        )
        checks.append(
            CheckResult("qe report signature", False, "no trusted PCK key to check it with")
        )
        return checks, None, None
    checks.append(
        CheckResult(
            "certificate chain",
            True,
            f"PCK <- {chain.intermediate.common_name} <- pinned {chain.root.common_name}",
        )
    )
    expired = [c for c in (chain.pck, chain.intermediate, chain.root) if not c.valid_at(at)]
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
    qe_signed = verify_p256_signature(chain.pck, quote.qe_report_signature, quote.qe_report.raw)
    checks.append(
        CheckResult(
            "qe report signature",
            qe_signed,
            "the quoting enclave's report is signed by the PCK key"
            if qe_signed
            else "bad signature on the quoting enclave's report",
        )
    )
    try:
        tcb = pck_tcb(chain.pck)
    except ValueError:
        checks.append(CheckResult("pck extension", False, "malformed SGX extension"))
        tcb = None
    return checks, chain, tcb


def _pck_chain(certs: list[Certificate]) -> PckChain | None:
    """Link the quote's PCK leaf through its CA to the pinned root (never a supplied root)."""
    root = intel_root()
    leaves = [cert for cert in certs if cert.common_name == _PCK_LEAF_CN]
    for leaf in leaves:
        for intermediate in certs:
            if intermediate in (leaf, root) or intermediate.self_signed:
                continue
            if leaf.signed_by(intermediate) and intermediate.signed_by(root):
                return PckChain(pck=leaf, intermediate=intermediate, root=root)
    return None


def quote_pck_leaf(quote: TdxQuote) -> Certificate:
    """The PCK certificate a quote carries (not yet verified: see `verify_quote`)."""
    certs = load_certificates(quote.pck_chain, source="the quote's PCK chain")
    for cert in certs:
        if cert.common_name == _PCK_LEAF_CN:
            return cert
    raise InputError("the quote carries no PCK certificate")


def pck_ca_type(pck: Certificate) -> str:
    """Which of Intel's PCK CAs issued `pck`: "processor" or "platform" (the PCS's name)."""
    issuer = pck.issuer
    for kind in ("Processor", "Platform"):
        if f"PCK {kind} CA" in issuer:
            return kind.lower()
    raise InputError("the PCK certificate's issuer is neither Intel PCK CA")


def pck_tcb(pck: Certificate) -> PckTcb:
    """The FMSPC, PCE id and TCB the PCK certificate was issued for."""
    raw = pck.extension(_SGX_EXTENSION)
    if raw is None:
        raise ValueError("no SGX extension")
    fields = der.oid_map(der.single(raw, der.TAG_SEQUENCE))
    tcb_tag, tcb_contents = fields[_SGX_TCB]
    if tcb_tag != der.TAG_SEQUENCE:
        raise ValueError("bad TCB field")
    tcb = der.oid_map(tcb_contents)
    svns = []
    for index in range(1, 17):
        svns.append(der.integer_value(*tcb[f"{_SGX_TCB}.{index}"]))
    pcesvn = der.integer_value(*tcb[_SGX_PCESVN])
    return PckTcb(
        fmspc=fields[_SGX_FMSPC][1],
        pceid=fields[_SGX_PCEID][1],
        cpu_svns=tuple(svns),
        pcesvn=pcesvn,
    )
