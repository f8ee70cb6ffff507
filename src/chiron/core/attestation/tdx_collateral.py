"""Intel's offline collateral for a TDX quote: TCB information, QE identity and CRLs.

The collateral (the QuoteCollateralV3 JSON a PCCS serves: TCB info, QE identity, their
signatures and issuer chains, the root CA's CRL and the PCK CA's CRL) is judged at an
explicit time, never fetched. Everything in it must chain to the pinned Intel SGX Root
CA; a collateral file is otherwise just a claim by whoever handed it over.

The TCB evaluation follows Intel's: the first TCB level (Intel lists them newest first)
whose SGX components and PCE SVN the PCK certificate meets and whose TDX components the
quote's TEE_TCB_SVN meets gives the platform's status; the QE's SVN is judged against
the QE identity, and a TDX 1.5 module (TEE_TCB_SVN[1] > 0) against its module
identity. The reported status is the worst of these.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chiron.core.attestation.report import CheckResult
from chiron.core.attestation.tdx import PckChain, PckTcb, TdxQuote
from chiron.core.attestation.vendor_crypto import (
    Certificate,
    Crl,
    intel_root,
    load_certificates,
    load_crl,
    verify_p256_signature,
)
from chiron.core.errors import InputError

MAX_COLLATERAL_BYTES = 1024 * 1024
# Intel's statuses from best to worst; a combined status is the worst of its parts.
STATUS_ORDER = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
_TCB_INFO_ID = "TDX"
_QE_IDENTITY_ID = "TD_QE"
_TCB_SIGNING_CN = "Intel SGX TCB Signing"


@dataclass(frozen=True)
class SignedDocument:
    """A JSON document Intel signed: its exact bytes, signature and signer's chain."""

    name: str
    raw: bytes
    body: dict[str, Any]
    signature: bytes
    issuer_chain: tuple[Certificate, ...]

    @property
    def issue_date(self) -> datetime:
        return _time(self.body, "issueDate", self.name)

    @property
    def next_update(self) -> datetime:
        return _time(self.body, "nextUpdate", self.name)


@dataclass(frozen=True)
class Collateral:
    """QuoteCollateralV3, parsed; nothing in it is trusted before `verify_collateral`."""

    tcb_info: SignedDocument
    qe_identity: SignedDocument
    root_crl: Crl
    pck_crl: Crl
    pck_crl_issuer_chain: tuple[Certificate, ...]


def parse_collateral(data: bytes, *, source: str) -> Collateral:
    """Parse a QuoteCollateralV3 JSON file (field names as dcap-qvl and PCCS write them)."""
    if len(data) > MAX_COLLATERAL_BYTES:
        raise InputError(f"{source}: larger than TDX collateral can be")
    try:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise TypeError("not an object")
        return Collateral(
            tcb_info=_signed(document, "tcb_info", "tcbInfo", source),
            qe_identity=_signed(document, "qe_identity", "enclaveIdentity", source),
            root_crl=load_crl(bytes.fromhex(document["root_ca_crl"]), source=source),
            pck_crl=load_crl(bytes.fromhex(document["pck_crl"]), source=source),
            pck_crl_issuer_chain=tuple(
                load_certificates(document["pck_crl_issuer_chain"].encode(), source=source)
            ),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{source}: not QuoteCollateralV3 JSON") from None


def _signed(document: dict[str, Any], key: str, label: str, source: str) -> SignedDocument:
    raw = document[key]
    if not isinstance(raw, str):
        raise TypeError(key)
    # Intel signs these exact bytes; they are parsed only to read them, never re-encoded.
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise TypeError(key)
    return SignedDocument(
        name=label,
        raw=raw.encode(),
        body=body,
        signature=bytes.fromhex(document[f"{key}_signature"]),
        issuer_chain=tuple(
            load_certificates(document[f"{key}_issuer_chain"].encode(), source=source)
        ),
    )


def _time(body: dict[str, Any], key: str, name: str) -> datetime:
    value = body.get(key)
    if not isinstance(value, str):
        raise InputError(f"{name} has no {key}")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class CollateralVerdict:
    """What the collateral says about this quote, once its own checks are done."""

    checks: tuple[CheckResult, ...]
    tcb_status: str | None  # None when no TCB level matched
    age_seconds: int


def verify_collateral(
    collateral: Collateral,
    quote: TdxQuote,
    chain: PckChain,
    pck: PckTcb,
    *,
    at: datetime,
) -> CollateralVerdict:
    """Check the collateral's signatures, dates and CRLs, then judge the quote's TCB."""
    root = intel_root()
    checks = [
        _signed_by_intel(collateral.tcb_info, root, at),
        _signed_by_intel(collateral.qe_identity, root, at),
        _current(collateral, at),
        _revocation(collateral, chain, root, at),
    ]
    tcb_check, platform_status = _platform_tcb(collateral.tcb_info.body, quote, pck)
    qe_check, qe_status = _qe_identity(collateral.qe_identity.body, quote)
    module_check, module_status = _tdx_module(collateral.tcb_info.body, quote)
    checks += [tcb_check, qe_check, module_check]
    statuses = [s for s in (platform_status, qe_status, module_status) if s is not None]
    status = None
    if platform_status is not None and qe_status is not None and module_status is not None:
        status = max(statuses, key=STATUS_ORDER.index)
    oldest = min(collateral.tcb_info.issue_date, collateral.qe_identity.issue_date)
    return CollateralVerdict(
        checks=tuple(checks),
        tcb_status=status,
        age_seconds=int((at - oldest).total_seconds()),
    )


def _signed_by_intel(document: SignedDocument, root: Certificate, at: datetime) -> CheckResult:
    name = f"{document.name} signature"
    signer = next((c for c in document.issuer_chain if c.common_name == _TCB_SIGNING_CN), None)
    if signer is None or not signer.signed_by(root):
        return CheckResult(name, False, "not signed by a certificate of the pinned Intel root")
    if not (signer.valid_at(at) and root.valid_at(at)):
        return CheckResult(name, False, f"{_TCB_SIGNING_CN} is not valid at {at.isoformat()}")
    if not verify_p256_signature(signer, document.signature, document.raw):
        return CheckResult(name, False, f"bad signature: {document.name} was altered")
    return CheckResult(name, True, f"signed by {_TCB_SIGNING_CN} under the pinned Intel root")


def _current(collateral: Collateral, at: datetime) -> CheckResult:
    stale = [
        f"{d.name} is valid from {d.issue_date.isoformat()} to {d.next_update.isoformat()}"
        for d in (collateral.tcb_info, collateral.qe_identity)
        if not d.issue_date <= at <= d.next_update
    ]
    if stale:
        return CheckResult("collateral validity", False, "; ".join(stale))
    return CheckResult("collateral validity", True, f"TCB info and QE identity current at {at}")


def _revocation(
    collateral: Collateral, chain: PckChain, root: Certificate, at: datetime
) -> CheckResult:
    """Neither the PCK, its CA nor Intel's TCB signer may be revoked, by current CRLs."""
    problems = []
    if not collateral.root_crl.issued_by(root):
        problems.append("the root CA CRL is not signed by the pinned Intel root")
    if not collateral.pck_crl.issued_by(chain.intermediate):
        problems.append(f"the PCK CRL is not signed by {chain.intermediate.common_name}")
    for crl, label in ((collateral.root_crl, "root CA CRL"), (collateral.pck_crl, "PCK CRL")):
        if not crl.current_at(at):
            problems.append(f"the {label} is not current at {at.isoformat()}")
    signers = {c for d in (collateral.tcb_info, collateral.qe_identity) for c in d.issuer_chain} - {
        root
    }
    for cert in (chain.intermediate, *signers):
        if collateral.root_crl.revokes(cert):
            problems.append(f"{cert.common_name} is revoked")
    if collateral.pck_crl.revokes(chain.pck):
        problems.append("the PCK certificate is revoked")
    if problems:
        return CheckResult("revocation", False, "; ".join(problems))
    return CheckResult("revocation", True, "PCK, its CA and the TCB signer are not revoked")


def _platform_tcb(
    tcb_info: dict[str, Any], quote: TdxQuote, pck: PckTcb
) -> tuple[CheckResult, str | None]:
    name = "tcb level"
    if tcb_info.get("id") != _TCB_INFO_ID or tcb_info.get("version") != 3:
        return CheckResult(name, False, "the TCB info is not TDX TCB info version 3"), None
    if str(tcb_info.get("fmspc", "")).lower() != pck.fmspc.hex():
        return (
            CheckResult(
                name,
                False,
                f"the TCB info is for FMSPC {tcb_info.get('fmspc')}, the PCK for {pck.fmspc.hex()}",
            ),
            None,
        )
    if str(tcb_info.get("pceId", "")).lower() != pck.pceid.hex():
        return CheckResult(name, False, "the TCB info is for another PCE"), None
    tee_tcb_svn = quote.tee_tcb_svn
    for level in tcb_info.get("tcbLevels", []):
        tcb = level["tcb"]
        sgx = [c["svn"] for c in tcb["sgxtcbcomponents"]]
        tdx = [c["svn"] for c in tcb["tdxtcbcomponents"]]
        if (
            len(sgx) == len(pck.cpu_svns) == 16
            and all(have >= need for have, need in zip(pck.cpu_svns, sgx, strict=True))
            and pck.pcesvn >= tcb["pcesvn"]
            and len(tdx) == 16
            and all(have >= need for have, need in zip(tee_tcb_svn, tdx, strict=True))
        ):
            status = str(level["tcbStatus"])
            advisories = ", ".join(level.get("advisoryIDs", []))
            detail = f"{status} (TCB date {level.get('tcbDate')})" + (
                f", advisories {advisories}" if advisories else ""
            )
            return CheckResult(name, status != "Revoked", detail), status
    return (
        CheckResult(
            name,
            False,
            "no matching TCB level: Intel's TCB info knows no level this platform meets",
        ),
        None,
    )


def _qe_identity(identity: dict[str, Any], quote: TdxQuote) -> tuple[CheckResult, str | None]:
    name = "qe identity"
    qe = quote.qe_report
    if identity.get("id") != _QE_IDENTITY_ID:
        return CheckResult(name, False, "the QE identity is not for the TDX quoting enclave"), None
    expected_signer = bytes.fromhex(identity["mrsigner"])
    if not hmac.compare_digest(qe.mrsigner, expected_signer):
        return CheckResult(name, False, "the quoting enclave is not signed by Intel"), None
    if qe.isvprodid != identity["isvprodid"]:
        return CheckResult(name, False, "the quoting enclave's product id is wrong"), None
    if not _masked_equal(qe.miscselect, identity["miscselect"], identity["miscselectMask"]):
        return CheckResult(name, False, "the quoting enclave's MISCSELECT is wrong"), None
    if not _masked_equal(qe.attributes, identity["attributes"], identity["attributesMask"]):
        return CheckResult(name, False, "the quoting enclave's attributes are wrong"), None
    for level in identity.get("tcbLevels", []):
        if qe.isvsvn >= level["tcb"]["isvsvn"]:
            status = str(level["tcbStatus"])
            return (
                CheckResult(name, status != "Revoked", f"Intel's TD quoting enclave, {status}"),
                status,
            )
    return CheckResult(name, False, f"no TCB level for QE SVN {qe.isvsvn}"), None


def _tdx_module(tcb_info: dict[str, Any], quote: TdxQuote) -> tuple[CheckResult, str | None]:
    """TDX 1.5 modules (TEE_TCB_SVN[1] > 0) are judged by their own identity."""
    name = "tdx module"
    svn, version = quote.tee_tcb_svn[0], quote.tee_tcb_svn[1]
    if version == 0:
        return CheckResult(name, True, f"TDX 1.0 module, SVN {svn}"), "UpToDate"
    wanted = f"TDX_{version:02X}"
    for identity in tcb_info.get("tdxModuleIdentities", []):
        if identity.get("id") != wanted:
            continue
        if not hmac.compare_digest(quote.mrsignerseam, bytes.fromhex(identity["mrsigner"])):
            return CheckResult(name, False, "the TDX module is not signed by Intel"), None
        if not _masked_equal(
            quote.seam_attributes, identity["attributes"], identity["attributesMask"]
        ):
            return CheckResult(name, False, "the TDX module's attributes are wrong"), None
        for level in identity.get("tcbLevels", []):
            if svn >= level["tcb"]["isvsvn"]:
                status = str(level["tcbStatus"])
                return CheckResult(
                    name, status != "Revoked", f"{wanted}, SVN {svn}, {status}"
                ), status
        return CheckResult(name, False, f"no TCB level for {wanted} SVN {svn}"), None
    return CheckResult(name, False, f"the TCB info does not know module {wanted}"), None


def _masked_equal(actual: bytes, expected_hex: str, mask_hex: str) -> bool:
    expected, mask = bytes.fromhex(expected_hex), bytes.fromhex(mask_hex)
    if not len(actual) == len(expected) == len(mask):
        return False
    return all(a & m == e & m for a, e, m in zip(actual, expected, mask, strict=True))
