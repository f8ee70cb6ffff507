"""`chiron evidence collateral`: the bundle it assembles from vendor responses verifies.

The network is not reachable here, so the vendors' answers are replayed from the real
collateral in the vectors; what is tested is the assembly (the URLs asked, the exact
signed bytes kept, the issuer chains) and that the result verifies offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pytest

import chiron.core.attestation as attestation
from chiron.client.collateral import Fetched, http_fetch, snp_chain, tdx_collateral
from chiron.core.attestation.evidence import PLATFORM_SEV_SNP, PLATFORM_TDX
from chiron.core.attestation.hardware_verifier import HardwareInputs, verify_hardware_evidence
from chiron.core.errors import InputError, ServiceError

VECTORS = Path(__file__).parent / "vectors"
ROOTS = Path(attestation.__file__).parent / "roots"


def _pcs(collateral: dict[str, str], asked: list[str]):
    """Intel's PCS as it answers, rebuilt from a recorded QuoteCollateralV3 bundle."""

    def fetch(url: str) -> Fetched:
        asked.append(url)
        if "/tdx/certification/v4/tcb?" in url:
            body = f'{{"tcbInfo":{collateral["tcb_info"]},"signature":"{collateral["tcb_info_signature"]}"}}'
            chain = collateral["tcb_info_issuer_chain"]
            return Fetched(body.encode(), {"tcb-info-issuer-chain": urllib.parse.quote(chain)})
        if url.endswith("/tdx/certification/v4/qe/identity"):
            body = (
                f'{{"enclaveIdentity":{collateral["qe_identity"]},'
                f'"signature":"{collateral["qe_identity_signature"]}"}}'
            )
            chain = collateral["qe_identity_issuer_chain"]
            return Fetched(
                body.encode(), {"sgx-enclave-identity-issuer-chain": urllib.parse.quote(chain)}
            )
        if "/pckcrl?" in url:
            chain = collateral["pck_crl_issuer_chain"]
            return Fetched(
                bytes.fromhex(collateral["pck_crl"]),
                {"sgx-pck-crl-issuer-chain": urllib.parse.quote(chain)},
            )
        if url.endswith("IntelSGXRootCA.der"):
            return Fetched(bytes.fromhex(collateral["root_ca_crl"]), {})
        raise AssertionError(f"unexpected request {url}")

    return fetch


def test_a_tdx_bundle_built_from_the_pcs_answers_verifies_up_to_date():
    quote = (VECTORS / "tdx/dcapqvl/tdx_quote").read_bytes()
    recorded = json.loads((VECTORS / "tdx/dcapqvl/tdx_quote_collateral.json").read_text())
    asked: list[str] = []
    bundle = tdx_collateral(quote, fetch=_pcs(recorded, asked))
    assert any("fmspc=b0c06f000000" in url for url in asked)
    assert any("pckcrl?ca=" in url and "encoding=der" in url for url in asked)
    written = json.loads(bundle)
    # Intel's signed objects are kept byte for byte.
    assert written["tcb_info"] == recorded["tcb_info"]
    assert written["qe_identity"] == recorded["qe_identity"]
    result = verify_hardware_evidence(
        HardwareInputs(platform=PLATFORM_TDX, evidence=quote, collateral=bundle),
        at=datetime(2025, 6, 20, tzinfo=UTC),
    )
    assert result.ok, [c for c in result.checks if not c.passed]
    assert result.to_dict()["tcb_status"] == "UpToDate"


def test_a_pcs_answer_whose_signed_object_was_respaced_is_refused_when_verified():
    quote = (VECTORS / "tdx/dcapqvl/tdx_quote").read_bytes()
    recorded = json.loads((VECTORS / "tdx/dcapqvl/tdx_quote_collateral.json").read_text())
    recorded["tcb_info"] = json.dumps(json.loads(recorded["tcb_info"]), indent=1)
    bundle = tdx_collateral(quote, fetch=_pcs(recorded, []))
    result = verify_hardware_evidence(
        HardwareInputs(platform=PLATFORM_TDX, evidence=quote, collateral=bundle),
        at=datetime(2025, 6, 20, tzinfo=UTC),
    )
    assert not result.ok


def test_an_snp_chain_built_from_the_kds_answers_verifies():
    report = (VECTORS / "snp/virtee_milan_v2/report.bin").read_bytes()
    vcek = (VECTORS / "snp/virtee_milan_v2/vcek.der").read_bytes()
    asked: list[str] = []

    def kds(url: str) -> Fetched:
        asked.append(url)
        if url.endswith("/cert_chain"):
            return Fetched((ROOTS / "amd_milan.pem").read_bytes(), {})
        return Fetched(vcek, {})

    chain = snp_chain(report, product="Milan", fetch=kds)
    vcek_url = asked[0]
    assert "/vcek/v1/Milan/" in vcek_url
    assert all(f"{name}=" in vcek_url for name in ("blSPL", "teeSPL", "snpSPL", "ucodeSPL"))
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----")
    result = verify_hardware_evidence(
        HardwareInputs(platform=PLATFORM_SEV_SNP, evidence=report, chain=chain),
        at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    assert result.ok, [c for c in result.checks if not c.passed]


def test_an_snp_report_that_does_not_name_its_product_needs_one():
    report = (VECTORS / "snp/virtee_milan_v2/report.bin").read_bytes()
    with pytest.raises(InputError, match="--product"):
        snp_chain(report, fetch=lambda url: Fetched(b"", {}))
    with pytest.raises(InputError, match="unknown product line"):
        snp_chain(report, product="Zen9", fetch=lambda url: Fetched(b"", {}))


def test_no_network_is_one_line():
    with pytest.raises(ServiceError, match=r"^cannot fetch http://127\.0\.0\.1:9/x: \w+$"):
        http_fetch("http://127.0.0.1:9/x")


def test_the_command_writes_nothing_when_the_vendor_cannot_be_reached(tmp_path):
    out = tmp_path / "collateral.json"
    # Every request goes to a proxy that refuses at once: no network is needed or used.
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "chiron", "evidence", "collateral",
         str(VECTORS / "snp/virtee_milan_v2/report.bin"),
         "--platform", "snp", "--product", "Milan", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot fetch https://kdsintf.amd.com/vcek/v1/Milan/" in result.stderr
    assert not out.exists()
