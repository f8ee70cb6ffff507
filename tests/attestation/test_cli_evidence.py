"""`chiron evidence verify` as a user runs it, on real SNP reports and TDX quotes."""

from __future__ import annotations

import json

import pytest
from tests.attestation.vendor_vectors import SNP, TDX, flip

MILAN = [
    "--platform",
    "snp",
    "--chain",
    SNP / "virtee_milan_v2/vcek.der",
    "--at",
    "2024-01-01T00:00:00Z",
]
UP_TO_DATE = [
    TDX / "dcapqvl/tdx_quote",
    "--platform",
    "tdx",
    "--collateral",
    TDX / "dcapqvl/tdx_quote_collateral.json",
    "--at",
    "2025-06-20T00:00:00Z",
]


def one_line_error(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chiron: error: ")
    return lines[0]


def test_snp_report_verifies_and_prints_every_check(run_chiron):
    result = run_chiron("evidence", "verify", SNP / "virtee_milan_v2/report.bin", *MILAN)
    assert result.returncode == 0, result.stderr
    for name in ("certificate chain", "signature", "reported tcb", "chip id", "debug"):
        assert any(
            line.split()[:1] == ["PASS"] and name in line for line in result.stdout.splitlines()
        )
    assert "verified: the evidence satisfies the policy" in result.stdout


def test_snp_json(run_chiron):
    result = run_chiron("evidence", "verify", SNP / "virtee_milan_v2/report.bin", *MILAN, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    report = (SNP / "virtee_milan_v2/report.bin").read_bytes()
    assert document["verified"] is True
    assert document["platform"] == "sev-snp"
    assert document["measurement"] == report[0x90:0xC0].hex()
    assert document["report_data"] == report[0x50:0x90].hex()
    assert document["chip_id"] == report[0x1A0:0x1E0].hex()
    assert document["debug"] is False
    assert all(set(check) == {"name", "ok", "detail"} for check in document["checks"])


def test_snp_pem_bundle_with_ask_and_ark(run_chiron):
    result = run_chiron(
        "evidence",
        "verify",
        SNP / "trustee_azure_hcl/hcl-report.bin",
        "--platform",
        "snp",
        "--chain",
        SNP / "trustee_azure_hcl/vcek.pem",
        "--at",
        "2024-01-01T00:00:00Z",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert any(c["name"] == "runtime data" and c["ok"] for c in json.loads(result.stdout)["checks"])


def test_debug_report_is_refused_with_json_and_one_line(run_chiron):
    result = run_chiron(
        "evidence",
        "verify",
        SNP / "gosevguest_milan_v2_debugpolicy/report.bin",
        "--platform",
        "snp",
        "--chain",
        SNP / "gosevguest_milan_v2_debugpolicy/vcek.der",
        "--at",
        "2024-01-01T00:00:00Z",
        "--json",
    )
    document = json.loads(result.stdout)
    assert document["verified"] is False and document["debug"] is True
    assert [c["name"] for c in document["checks"] if not c["ok"]] == ["debug"]
    assert "debug" in one_line_error(result)


def test_flipped_measurement_is_refused_by_the_signature_check(run_chiron, tmp_path):
    report = tmp_path / "report.bin"
    report.write_bytes(flip((SNP / "virtee_milan_v2/report.bin").read_bytes(), 0x90))
    result = run_chiron("evidence", "verify", report, *MILAN)
    assert "signature: bad signature" in one_line_error(result)
    assert any(line.split()[:2] == ["FAIL", "signature"] for line in result.stdout.splitlines())


def test_tdx_up_to_date_json(run_chiron):
    result = run_chiron("evidence", "verify", *UP_TO_DATE, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    quote = (TDX / "dcapqvl/tdx_quote").read_bytes()
    assert document["verified"] is True
    assert document["tcb_status"] == "UpToDate"
    assert document["fmspc"] == "b0c06f000000"
    assert document["measurement"] == quote[48 + 136 : 48 + 184].hex()
    assert document["rtmrs"] == [
        quote[48 + 328 + 48 * i : 48 + 376 + 48 * i].hex() for i in range(4)
    ]


def test_tdx_no_matching_tcb_level(run_chiron):
    result = run_chiron(
        "evidence",
        "verify",
        TDX / "dcapqvl/tdx_quote_outdated",
        "--platform",
        "tdx",
        "--collateral",
        TDX / "dcapqvl/tdx_quote_outdated_collateral.json",
        "--at",
        "2026-02-19T00:00:00Z",
    )
    assert "no matching TCB level" in one_line_error(result)


def test_tdx_event_log_replay(run_chiron):
    ccel = TDX / "gotdxguest/ccel"
    result = run_chiron(
        "evidence",
        "verify",
        ccel / "cos-113-tdx-quote.dat",
        "--platform",
        "tdx",
        "--event-log",
        ccel / "ccel_data.dat",
        "--at",
        "2026-01-01T00:00:00Z",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert any(c["name"] == "event log" and c["ok"] for c in document["checks"])
    assert document["tcb_status"] is None


def test_hex_quote_file_is_accepted(run_chiron):
    result = run_chiron(
        "evidence",
        "verify",
        TDX / "dcapqvl/tdx-quote.hex",
        "--platform",
        "tdx",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    assert result.returncode == 0, result.stderr


def test_policy_file_pins_the_launch_measurement(run_chiron, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[hardware]\nlaunch_measurements = ["' + "ab" * 48 + '"]\n')
    result = run_chiron("evidence", "verify", *UP_TO_DATE, "--policy", policy)
    assert "launch measurement" in one_line_error(result)
    policy.write_text("[hardware]\nlaunch_mesurements = []\n")
    error = one_line_error(run_chiron("evidence", "verify", *UP_TO_DATE, "--policy", policy))
    assert "unknown key hardware.launch_mesurements" in error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["missing.bin", "--platform", "snp", "--chain", SNP / "virtee_milan_v2/vcek.der"],
            "missing.bin",
        ),
        ([SNP / "virtee_milan_v2/vcek.der", *MILAN[:4]], "not an SEV-SNP report"),
        ([TDX / "dcapqvl/tdx_quote", *MILAN], "not an SEV-SNP report"),
        ([SNP / "virtee_milan_v2/report.bin", "--platform", "tdx"], "TDX quote"),
        ([SNP / "virtee_milan_v2/report.bin", "--platform", "sgx"], "unknown platform"),
        ([SNP / "virtee_milan_v2/report.bin", "--platform", "snp"], "--chain"),
        ([SNP / "virtee_milan_v2/report.bin", *MILAN[:4], "--at", "yesterday"], "ISO 8601"),
        (
            [
                SNP / "virtee_milan_v2/report.bin",
                "--platform",
                "snp",
                "--chain",
                SNP / "virtee_milan_v2/report.bin",
            ],
            "certificate",
        ),
        (
            [
                TDX / "dcapqvl/tdx_quote",
                "--platform",
                "tdx",
                "--collateral",
                SNP / "virtee_milan_v2/vcek.der",
            ],
            "QuoteCollateralV3",
        ),
        (
            [
                TDX / "dcapqvl/tdx_quote",
                "--platform",
                "tdx",
                "--event-log",
                TDX / "dcapqvl/tdx_quote",
            ],
            "event log",
        ),
    ],
)
def test_bad_input_gives_one_line_and_non_zero_exit(run_chiron, args, message):
    error = one_line_error(run_chiron("evidence", "verify", *args))
    assert message in error
