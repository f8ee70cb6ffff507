"""`chiron evidence collateral`: fetch the vendors' material for offline verification, once.

Verification never goes to the network: it reads a bundle. This module writes that
bundle on a machine that can reach the vendors, from the evidence itself:

- TDX: Intel's PCS for the quote's platform family (FMSPC, from its PCK certificate):
  TCB info, QE identity, the PCK CA's CRL and the root CA's CRL, with their issuer
  chains, written as the QuoteCollateralV3 JSON `chiron evidence verify --collateral`
  reads. Intel signs the exact bytes of the `tcbInfo` and `enclaveIdentity` objects, so
  they are copied from the responses byte for byte, never re-encoded.
- SEV-SNP: AMD's KDS for the report's chip and reported TCB: the VCEK, then the ASK and
  ARK, as one PEM file `--chain` reads.

Nothing fetched is trusted here: the verifier checks every signature against the roots
pinned in the package, at the time it verifies. The fetcher is injectable (`Fetch`) so
the assembly is tested on recorded responses; the network itself is not reachable here.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from chiron.core.attestation.snp import PRODUCTS, parse_report, product_of, tcb_query
from chiron.core.attestation.tdx import parse_quote, pck_ca_type, pck_tcb, quote_pck_leaf
from chiron.core.errors import InputError, ServiceError

INTEL_PCS = "https://api.trustedservices.intel.com"
INTEL_ROOT_CRL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
AMD_KDS = "https://kdsintf.amd.com"
FETCH_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Fetched:
    """One vendor response: its exact body and the headers that carry issuer chains."""

    body: bytes
    headers: dict[str, str]


Fetch = Callable[[str], Fetched]


def http_fetch(url: str) -> Fetched:
    """GET `url`; a one-line ServiceError on any failure (no network, 4xx/5xx)."""
    try:
        response = httpx.get(url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise ServiceError(f"cannot fetch {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ServiceError(f"cannot fetch {url}: HTTP {response.status_code}")
    return Fetched(response.content, {k.lower(): v for k, v in response.headers.items()})


def _issuer_chain(fetched: Fetched, header: str, url: str) -> str:
    value = fetched.headers.get(header.lower())
    if not value:
        raise ServiceError(f"{url} sent no {header} header")
    return urllib.parse.unquote(value)


def _signed_object(fetched: Fetched, name: str, url: str) -> tuple[str, str]:
    """The exact text of `name`'s object in a PCS response, and its signature (hex).

    Intel signs the object's bytes as they stand in the body, so they are cut out of
    it rather than parsed and written again (which could reorder or respace them).
    """
    text = fetched.body.decode("utf-8", errors="strict")
    try:
        document = json.loads(text)
        signature = str(document["signature"])
    except (ValueError, KeyError, TypeError):
        raise ServiceError(f"{url} did not send a signed {name}") from None
    start = text.find(f'"{name}":')
    end = text.rfind(',"signature"')
    if start < 0 or end < 0:
        raise ServiceError(f"{url} did not send a signed {name}")
    raw = text[start + len(name) + 3 : end].strip()
    if json.loads(raw) != document[name]:
        raise ServiceError(f"{url}: could not cut {name} out of the response")
    return raw, signature


def tdx_collateral(quote_bytes: bytes, *, fetch: Fetch = http_fetch, pcs: str = INTEL_PCS) -> bytes:
    """The QuoteCollateralV3 JSON for a TDX quote's platform, from Intel's PCS."""
    quote = parse_quote(quote_bytes)
    leaf = quote_pck_leaf(quote)
    fmspc = pck_tcb(leaf).fmspc.hex()
    ca = pck_ca_type(leaf)
    tcb_url = f"{pcs}/tdx/certification/v4/tcb?fmspc={fmspc}"
    tcb = fetch(tcb_url)
    tcb_info, tcb_signature = _signed_object(tcb, "tcbInfo", tcb_url)
    qe_url = f"{pcs}/tdx/certification/v4/qe/identity"
    qe = fetch(qe_url)
    qe_identity, qe_signature = _signed_object(qe, "enclaveIdentity", qe_url)
    crl_url = f"{pcs}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"
    pck_crl = fetch(crl_url)
    root_crl = fetch(INTEL_ROOT_CRL)
    bundle = {
        "tcb_info": tcb_info,
        "tcb_info_signature": tcb_signature,
        "tcb_info_issuer_chain": _issuer_chain(tcb, "TCB-Info-Issuer-Chain", tcb_url),
        "qe_identity": qe_identity,
        "qe_identity_signature": qe_signature,
        "qe_identity_issuer_chain": _issuer_chain(qe, "SGX-Enclave-Identity-Issuer-Chain", qe_url),
        "pck_crl": pck_crl.body.hex(),
        "pck_crl_issuer_chain": _issuer_chain(pck_crl, "SGX-PCK-CRL-Issuer-Chain", crl_url),
        "root_ca_crl": root_crl.body.hex(),
    }
    return (json.dumps(bundle, indent=1) + "\n").encode("utf-8")


def snp_chain(
    report_bytes: bytes,
    *,
    product: str | None = None,
    fetch: Fetch = http_fetch,
    kds: str = AMD_KDS,
) -> bytes:
    """VCEK + ASK + ARK (PEM) for an SNP report's chip and reported TCB, from AMD's KDS."""
    report = parse_report(report_bytes)
    if report.signing_key != 0:
        raise InputError("this report is signed by a VLEK: its provider hands out the chain")
    if report.mask_chip_id or not any(report.chip_id):
        raise InputError("this report masks its chip id: the KDS cannot name its VCEK")
    line = product or product_of(report)
    if line is None:
        raise InputError(
            f"the report does not say its product line: pass --product ({', '.join(PRODUCTS)})"
        )
    if line not in PRODUCTS:
        raise InputError(f"unknown product line {line!r} (known: {', '.join(PRODUCTS)})")
    hwid = report.chip_id[:8].hex() if line == "Turin" else report.chip_id.hex()
    query = "&".join(f"{name}={value}" for name, value in tcb_query(report, line))
    vcek = fetch(f"{kds}/vcek/v1/{line}/{hwid}?{query}")
    chain = fetch(f"{kds}/vcek/v1/{line}/cert_chain")
    return _der_to_pem(vcek.body) + chain.body


def _der_to_pem(der: bytes) -> bytes:
    import base64

    if der.lstrip().startswith(b"-----BEGIN"):
        return der
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"
