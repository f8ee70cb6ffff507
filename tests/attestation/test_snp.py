"""SEV-SNP reports from real machines, verified against AMD's pinned roots."""

from __future__ import annotations

import pytest
from tests.attestation.vendor_vectors import SNP, at, flip, genoa_hcl_report

from chiron.core.attestation.snp import parse_report, verify_report
from chiron.core.attestation.vendor_crypto import amd_certificates, load_certificates
from chiron.core.errors import InputError

# (report, certificate file, verify at, product, signing key)
VALID = [
    (
        "gosevguest_milan_v2_debugpolicy/report.bin",
        "gosevguest_milan_v2_debugpolicy/vcek.der",
        "2024-01-01",
        "Milan",
        "VCEK",
    ),
    ("virtee_milan_v2/report.bin", "virtee_milan_v2/vcek.der", "2024-01-01", "Milan", "VCEK"),
    (
        "trustee_milan_v2/test-report.bin",
        "trustee_milan_v2/test-vcek.der",
        "2024-01-01",
        "Milan",
        "VCEK",
    ),
    (
        "trustee_milan_vlek_v3/test-vlek-report.bin",
        "trustee_milan_vlek_v3/test-vlek.der",
        "2025-06-01",
        "Milan",
        "VLEK",
    ),
    (
        "trustee_azure_hcl/hcl-report.bin",
        "trustee_azure_hcl/vcek.pem",
        "2024-01-01",
        "Milan",
        "VCEK",
    ),
]


def verify(report: bytes, chain_file: str, when: str):
    chain = load_certificates((SNP / chain_file).read_bytes(), source=chain_file)
    return verify_report(parse_report(report), chain, at=at(when))


@pytest.mark.parametrize(("report", "chain", "when", "product", "key"), VALID)
def test_real_reports_verify(report, chain, when, product, key):
    checks, claims = verify((SNP / report).read_bytes(), chain, when)
    assert [c.name for c in checks if not c.passed] == []
    names = {c.name for c in checks}
    assert {"certificate chain", "certificate validity", "signature", "reported tcb"} <= names
    assert claims.product == product
    assert claims.signing_key == key


def test_genoa_v3_report_inside_an_hcl_report_verifies():
    checks, claims = verify(genoa_hcl_report(), "trustee_azure_hcl/vcek-genoa.pem", "2026-01-01")
    assert [c.name for c in checks if not c.passed] == []
    assert claims.product == "Genoa"
    assert any(c.name == "runtime data" and c.passed for c in checks)


def test_debug_policy_bit_is_read():
    report = parse_report((SNP / "gosevguest_milan_v2_debugpolicy/report.bin").read_bytes())
    assert report.debug
    assert not parse_report((SNP / "virtee_milan_v2/report.bin").read_bytes()).debug


def test_vlek_report_fields():
    report = parse_report((SNP / "trustee_milan_vlek_v3/test-vlek-report.bin").read_bytes())
    assert (report.version, report.signing_key, report.vmpl) == (3, 1, 1)
    _, claims = verify(report.raw, "trustee_milan_vlek_v3/test-vlek.der", "2025-06-01")
    assert claims.chip_id is None  # CHIP_ID is zero in this report


def test_vlek_expired_after_its_date():
    checks, _ = verify(
        (SNP / "trustee_milan_vlek_v3/test-vlek-report.bin").read_bytes(),
        "trustee_milan_vlek_v3/test-vlek.der",
        "2025-12-11",
    )
    failed = {c.name: c.reason for c in checks if not c.passed}
    assert list(failed) == ["certificate validity"]
    assert "SEV-VLEK" in failed["certificate validity"]


@pytest.mark.parametrize("wrong", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_wrong_vcek_is_refused(wrong):
    checks, _ = verify(
        (SNP / "trustee_milan_v2/test-report.bin").read_bytes(),
        f"trustee_milan_v2/{wrong}",
        "2024-01-01",
    )
    assert {c.name for c in checks if not c.passed} >= {"signature", "certificate chain"}


@pytest.mark.parametrize(
    ("what", "offset"),
    [("signature", 0x2A0), ("measurement", 0x90), ("report data", 0x50), ("policy", 0x08)],
)
def test_one_flipped_bit_breaks_the_signature(what, offset):
    report = flip((SNP / "virtee_milan_v2/report.bin").read_bytes(), offset)
    checks, _ = verify(report, "virtee_milan_v2/vcek.der", "2024-01-01")
    assert [c.name for c in checks if not c.passed] == ["signature"], what


def test_flipped_bit_in_the_vcek_breaks_the_chain():
    vcek = bytearray((SNP / "virtee_milan_v2/vcek.der").read_bytes())
    vcek[-20] ^= 1  # inside the ASK's RSA-PSS signature
    report = parse_report((SNP / "virtee_milan_v2/report.bin").read_bytes())
    chain = load_certificates(bytes(vcek), source="vcek")
    checks, _ = verify_report(report, chain, at=at("2024-01-01"))
    assert [c.name for c in checks if not c.passed] == ["certificate chain"]


def test_hcl_runtime_data_must_match_the_report_data():
    data = bytearray((SNP / "trustee_azure_hcl/hcl-report.bin").read_bytes())
    data[32 + 0x4A0 + 20 + 10] ^= 1  # inside the runtime JSON, outside the signed report
    checks, _ = verify(bytes(data), "trustee_azure_hcl/vcek.pem", "2024-01-01")
    assert [c.name for c in checks if not c.passed] == ["runtime data"]


def test_vcek_for_another_chip_or_tcb_is_refused():
    # The debug-policy report and the virtee report come from different Milan chips.
    checks, _ = verify(
        (SNP / "gosevguest_milan_v2_debugpolicy/report.bin").read_bytes(),
        "virtee_milan_v2/vcek.der",
        "2024-01-01",
    )
    failed = {c.name for c in checks if not c.passed}
    assert {"signature", "chip id", "reported tcb"} <= failed


def test_turin_vcek_chains_to_the_pinned_turin_ark():
    (vcek,) = load_certificates((SNP / "virtee_turin_vcek_only/vcek.der").read_bytes(), source="v")
    arks = {c.common_name: c for c in amd_certificates() if c.self_signed}
    ask = next(c for c in amd_certificates() if c.common_name == "SEV-Turin")
    assert vcek.signed_by(ask) and ask.signed_by(arks["ARK-Turin"])
    assert not vcek.signed_by(next(c for c in amd_certificates() if c.common_name == "SEV-Milan"))
    assert vcek.valid_at(at("2026-01-01"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an SEV-SNP report"),
        (b"\x00" * 100, "not an SEV-SNP report"),
        (b"\x07" + bytes(0x4A0 - 1), "unsupported SEV-SNP report version 7"),
        (b"HCLA" + bytes(40), "truncated HCL report"),
    ],
)
def test_malformed_reports_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        parse_report(data)
