"""`chiron attest`'s hardware path on real, vendor-signed SEV-SNP reports and TDX quotes.

A fake configfs-tsm kernel answers the enclave's request with a recorded report from the
test vectors (and, on SEV-SNP, the VCEK as a certificate table in `auxblob`), exactly as
a host replaying a genuine report would. The evidence then goes through the client's
appraisal with a policy that has no unsafe flag, at the time each vector is verified at:
every vendor check passes and the `[hardware]` rules are applied, and the evidence is
still refused, by the `report data` check alone, because a recorded report cannot bind
this request's nonce and the enclave's keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from chiron.client.attestation import appraise_evidence, load_policy
from chiron.core.attestation import Evidence, Policy, VerificationReport, verify_evidence
from chiron.core.attestation.hardware_policy import HardwarePolicy
from chiron.core.attestation.snp_certificates import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    certificate_table,
    parse_certificate_table,
)
from chiron.core.attestation.vendor_crypto import pinned_roots
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import InputError, PolicyError
from chiron.core.keys import Identity
from chiron.enclave.platforms.tsm import TsmPlatform

from .conftest import MEASUREMENT
from .fake_tsm import FakeConfigfsTsm
from .vendor_vectors import SNP, TDX, at, flip, read

SNP_REPORT = SNP / "virtee_milan_v2" / "report.bin"
SNP_VCEK = SNP / "virtee_milan_v2" / "vcek.der"
SNP_AT = at("2024-01-01").timestamp()
SNP_MEASUREMENT = (
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
    "3e1a0dc39b2c60bd95b9c480cd81841f"
)
SNP_CHIP_ID = (
    "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
    "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6"
)
SNP_VENDOR_CHECKS = {
    "signing key",
    "certificate chain",
    "certificate validity",
    "signature",
    "reported tcb",
    "chip id",
}

TDX_QUOTE = TDX / "dcapqvl" / "tdx_quote"  # version 4
TDX_COLLATERAL = TDX / "dcapqvl" / "tdx_quote_collateral.json"
TDX_AT = at("2025-06-20").timestamp()
TDX_MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7"
)
TDX_RTMR0 = (
    "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c"
    "48aca29b220b80b6a540cf994b9bc9c0"
)
TDX_VENDOR_CHECKS = {
    "quoting enclave vendor",
    "quote signature",
    "attestation key",
    "certificate chain",
    "certificate validity",
    "qe report signature",
    "tcbInfo signature",
    "enclaveIdentity signature",
    "collateral validity",
    "revocation",
    "tcb level",
    "qe identity",
    "tdx module",
}

SNP_POLICY = f"""
measurements = ["{MEASUREMENT}"]
platforms = ["sev-snp"]
[hardware]
launch_measurements = ["{SNP_MEASUREMENT}"]
min_snp_tcb = {{ bootloader = 3, snp = 8, microcode = 115 }}
chip_ids = ["{SNP_CHIP_ID}"]
vmpls = [0]
"""
SNP_RULES = {"migration agent", "launch measurement", "minimum tcb", "chip id allowed", "vmpl"}

TDX_POLICY = f"""
measurements = ["{MEASUREMENT}"]
platforms = ["tdx"]
[hardware]
collateral = "intel/collateral.json"
require_tcb_status = true
launch_measurements = ["{TDX_MRTD}"]
rtmr0 = ["{TDX_RTMR0}"]
fmspcs = ["b0c06f000000"]
max_collateral_age_seconds = 2592000
"""
TDX_RULES = {"tcb status", "launch measurement", "rtmr0", "fmspc allowed", "collateral age"}


def attest(
    tmp_path: Path,
    provider: str,
    recorded: bytes,
    policy: Policy,
    when: float,
    *,
    auxblob: bytes | None = None,
) -> tuple[bytes, VerificationReport]:
    """The full `chiron attest` path: the enclave's provider, then the client's appraisal."""
    interface = FakeConfigfsTsm(
        tmp_path / f"tsm-{os.urandom(4).hex()}", provider, recorded=recorded, auxblob=auxblob
    )
    nonce = os.urandom(32)
    evidence = TsmPlatform(interface, clock=lambda: when).evidence(
        measurement=MEASUREMENT,
        identity=Identity.generate().public,
        nonce=nonce,
        role="train",
        binding="",
    )
    report = appraise_evidence(evidence, nonce, policy, state_dir=tmp_path / "state", now=when)
    return evidence, report


def policy_file(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return load_policy(path, allow_simulation=False)


def vcek_table(vcek: Path = SNP_VCEK) -> bytes:
    return certificate_table([(VCEK_GUID, read(vcek))])


def by_name(report: VerificationReport) -> dict[str, tuple[bool, str]]:
    return {check.name: (check.passed, check.reason) for check in report.checks}


def failures(report: VerificationReport) -> list[str]:
    return [check.name for check in report.failures]


# --- SEV-SNP ----------------------------------------------------------------------------


def test_a_recorded_snp_report_passes_every_vendor_check_and_is_refused_as_a_replay(tmp_path):
    policy = policy_file(tmp_path, SNP_POLICY)
    assert not policy.UNSAFE_allow_unverified_vendor_signature
    evidence, report = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=vcek_table()
    )
    assert Evidence.from_bytes(evidence).signature_chain.auxblob == vcek_table()

    checks = by_name(report)
    for name in SNP_VENDOR_CHECKS:
        assert checks[name][0], (name, checks[name][1])
    assert checks["certificate chain"][1] == "VCEK <- SEV-Milan <- pinned ARK-Milan"
    assert report.claims.vendor_signature_verified is True
    assert checks["vendor signature"] == (
        True,
        "verified against the vendor's pinned root: VCEK <- SEV-Milan <- pinned ARK-Milan",
    )
    for name in SNP_RULES:  # the [hardware] rules, each evaluated and passed
        assert checks[name][0], (name, checks[name][1])
    assert report.hardware is not None and report.hardware.chip_id == SNP_CHIP_ID
    assert report.launch_measurement == SNP_MEASUREMENT
    assert report.to_dict()["hardware"]["tcb"] == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }

    # Every check but one passes: the report is genuine, yet it binds another request.
    assert failures(report) == ["report data"]
    assert "replayed evidence" in checks["report data"][1]
    assert report.identity is None and not report.ok


def test_a_policy_pinning_another_runtime_also_fails_the_measurement(tmp_path):
    other = "ab" * 32
    policy = policy_file(tmp_path, SNP_POLICY.replace(MEASUREMENT, other))
    _, report = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=vcek_table()
    )
    assert failures(report) == ["report data", "measurement"]


def test_a_flipped_bit_in_the_snp_report_fails_the_vendor_signature(tmp_path):
    policy = Policy(measurements=(MEASUREMENT,))
    tampered = flip(read(SNP_REPORT), 0x90)  # first byte of MEASUREMENT
    _, report = attest(tmp_path, "sev_guest", tampered, policy, SNP_AT, auxblob=vcek_table())
    checks = by_name(report)
    assert checks["signature"] == (
        False,
        "bad signature: the report was altered or not signed by this VCEK",
    )
    assert checks["vendor signature"] == (False, "unverified vendor signature: failed signature")
    assert failures(report) == ["signature", "report data", "vendor signature"]
    assert report.claims.vendor_signature_verified is False


def test_a_vcek_of_another_chip_is_refused(tmp_path):
    other_chip = SNP / "trustee_milan_v2" / "test-vcek.der"
    policy = Policy(measurements=(MEASUREMENT,))
    _, report = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=vcek_table(other_chip)
    )
    checks = by_name(report)
    # The other VCEK is genuine (it chains to AMD's root) but is not this chip's.
    assert checks["certificate chain"][0] and checks["certificate validity"][0]
    assert checks["chip id"] == (False, "the VCEK was issued for another chip")
    assert not checks["signature"][0]
    assert set(failures(report)) == {"signature", "chip id", "report data", "vendor signature"}
    assert report.identity is None


def test_the_unsafe_escape_still_names_every_unverified_check(tmp_path):
    other_chip = SNP / "trustee_milan_v2" / "test-vcek.der"
    policy = Policy(measurements=(MEASUREMENT,), UNSAFE_allow_unverified_vendor_signature=True)
    _, report = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=vcek_table(other_chip)
    )
    checks = by_name(report)
    assert checks["chip id"][1].startswith("UNVERIFIED, accepted by an unsafe policy")
    assert checks["vendor signature"][0]
    assert "UNVERIFIED vendor signature" in checks["vendor signature"][1]
    assert failures(report) == ["report data"]


def test_the_certificates_may_come_from_the_policy_when_the_host_gives_none(tmp_path):
    shutil.copy(SNP_VCEK, tmp_path / "vcek.der")
    policy = policy_file(tmp_path, SNP_POLICY + 'chain = "vcek.der"\n')
    evidence, report = attest(tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT)
    assert Evidence.from_bytes(evidence).signature_chain.auxblob == b""
    assert "auxblob" not in json.loads(evidence)["signature_chain"]
    assert report.claims.vendor_signature_verified is True
    assert failures(report) == ["report data"]

    # Without either, nothing can be verified, and the report says why.
    _, report = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), Policy(measurements=(MEASUREMENT,)), SNP_AT
    )
    reason = by_name(report)["vendor signature"]
    assert reason == (
        False,
        "unverified vendor signature: no VCEK or VLEK: the host supplied no certificate "
        "table (auxblob) and the policy names no [hardware] chain",
    )
    assert failures(report) == ["report data", "vendor signature"]


def test_a_full_certificate_table_verifies_against_the_pinned_ark(tmp_path):
    """VCEK, ASK, ARK and an entry of another kind, as hosts load them; the ARK is pinned."""
    ask, ark = sorted(pinned_roots("amd_milan.pem"), key=lambda c: c.self_signed)
    table = certificate_table(
        [
            (ARK_GUID, ark.der),
            (uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"), b"a CRL, skipped"),
            (ASK_GUID, ask.der),
            (VCEK_GUID, read(SNP_VCEK)),
        ]
    )
    policy = Policy(measurements=(MEASUREMENT,))
    _, report = attest(tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=table)
    assert failures(report) == ["report data"]
    assert by_name(report)["certificate chain"][1].endswith("pinned ARK-Milan")


def test_a_malformed_certificate_table_leaves_the_signature_unverified(tmp_path):
    policy = Policy(measurements=(MEASUREMENT,), hardware=HardwarePolicy(chip_ids=(SNP_CHIP_ID,)))
    _, report = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=vcek_table()[:30]
    )
    passed, reason = by_name(report)["vendor signature"]
    assert not passed
    assert reason.startswith("unverified vendor signature: the vendor checks could not run")
    assert reason.endswith("the VCEK entry lies outside the table")
    # Pinned hardware rules cannot be judged on a report nobody verified.
    assert by_name(report)["hardware policy"][0] is False


def test_evidence_whose_auxblob_was_swapped_in_transit_is_refused(tmp_path):
    policy = Policy(measurements=(MEASUREMENT,))
    evidence, _ = attest(
        tmp_path, "sev_guest", read(SNP_REPORT), policy, SNP_AT, auxblob=vcek_table()
    )
    document = json.loads(evidence)
    other = vcek_table(SNP / "trustee_milan_v2" / "test-vcek.der")
    document["signature_chain"]["auxblob"] = b64encode(other)
    report = verify_evidence(
        json.dumps(document).encode(), policy, nonce=os.urandom(32), now=SNP_AT
    )
    assert "chip id" in failures(report) and report.identity is None


# --- the certificate table format -------------------------------------------------------


def test_certificate_table_round_trip_and_guid_byte_order():
    vcek = read(SNP_VCEK)
    table = certificate_table([(VCEK_GUID, vcek)])
    # GUIDs are stored in the order they are written (as go-sev-guest and AMD's tools do).
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert table[24:48] == bytes(24)  # the terminator
    parsed = parse_certificate_table(table)
    assert [kind for kind, _ in parsed.entries] == ["VCEK"]
    assert parsed.chain[0].der == vcek
    # Hosts pad the table; PEM entries are accepted too.
    pem = (
        b"-----BEGIN CERTIFICATE-----\n"
        + b64encode(vcek).encode()
        + b"\n-----END CERTIFICATE-----\n"
    )
    padded = certificate_table([(VLEK_GUID, pem)]) + bytes(4096)
    assert [kind for kind, _ in parse_certificate_table(padded).entries] == ["VLEK"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (bytes(23), "truncated"),
        (certificate_table([(VCEK_GUID, b"x" * 10)])[:-5], "outside the table"),
        (certificate_table([(VCEK_GUID, b"not a certificate")]), "not a DER or PEM"),
        (certificate_table([(uuid.uuid4(), b"?")] * 70), "more than 64 entries"),
    ],
)
def test_malformed_certificate_tables_are_one_line_errors(data, message):
    with pytest.raises(InputError, match=message):
        parse_certificate_table(data)


# --- TDX --------------------------------------------------------------------------------


def tdx_policy(tmp_path: Path, collateral: Path = TDX_COLLATERAL, text: str = TDX_POLICY) -> Policy:
    (tmp_path / "intel").mkdir(exist_ok=True)
    shutil.copy(collateral, tmp_path / "intel" / "collateral.json")
    return policy_file(tmp_path, text)


def test_a_recorded_tdx_quote_passes_every_vendor_check_and_is_refused_as_a_replay(tmp_path):
    policy = tdx_policy(tmp_path)
    assert policy.hardware.collateral == TDX_COLLATERAL.read_bytes()
    evidence, report = attest(tmp_path, "tdx_guest", read(TDX_QUOTE), policy, TDX_AT)
    assert "auxblob" not in json.loads(evidence)["signature_chain"]

    checks = by_name(report)
    for name in TDX_VENDOR_CHECKS:
        assert checks[name][0], (name, checks[name][1])
    assert checks["vendor signature"] == (
        True,
        "verified against the vendor's pinned root: "
        "PCK <- Intel SGX PCK Platform CA <- pinned Intel SGX Root CA",
    )
    for name in TDX_RULES:
        assert checks[name][0], (name, checks[name][1])
    assert checks["tcb status"] == (True, "UpToDate is accepted")
    assert report.hardware is not None and report.hardware.fmspc == "b0c06f000000"
    assert report.launch_measurement == TDX_MRTD
    assert failures(report) == ["report data"]
    assert report.identity is None


def test_a_flipped_bit_in_the_tdx_quote_fails_the_vendor_signature(tmp_path):
    policy = tdx_policy(tmp_path)
    tampered = flip(read(TDX_QUOTE), 48 + 136)  # first byte of MRTD
    _, report = attest(tmp_path, "tdx_guest", tampered, policy, TDX_AT)
    checks = by_name(report)
    assert checks["quote signature"][0] is False
    assert checks["vendor signature"] == (
        False,
        "unverified vendor signature: failed quote signature",
    )
    assert checks["launch measurement"][0] is False  # the rule still reads the claim
    assert set(failures(report)) == {
        "quote signature",
        "report data",
        "vendor signature",
        "launch measurement",
    }


def test_collateral_of_another_platform_is_refused(tmp_path):
    policy = tdx_policy(tmp_path, TDX / "dcapqvl" / "tdx_quote_outdated_collateral.json")
    _, report = attest(tmp_path, "tdx_guest", read(TDX_QUOTE), policy, TDX_AT)
    checks = by_name(report)
    assert checks["tcb level"] == (
        False,
        "the TCB info is for FMSPC 90C06F000000, the PCK for b0c06f000000",
    )
    # The quote's own signatures verify; the collateral does not fit it.
    assert checks["quote signature"][0] and checks["certificate chain"][0]
    assert {"tcb level", "vendor signature", "tcb status", "report data"} <= set(failures(report))
    assert checks["tcb status"] == (False, "no collateral: the TCB status is unknown")


def test_collateral_past_its_next_update_is_refused(tmp_path):
    policy = tdx_policy(tmp_path)
    later = at("2025-08-20").timestamp()
    _, report = attest(tmp_path, "tdx_guest", read(TDX_QUOTE), policy, later)
    assert {"collateral validity", "revocation", "vendor signature"} <= set(failures(report))


def test_without_collateral_a_policy_requiring_a_tcb_status_refuses(tmp_path):
    policy = dataclasses.replace(
        Policy(measurements=(MEASUREMENT,)), hardware=HardwarePolicy(require_tcb_status=True)
    )
    _, report = attest(tmp_path, "tdx_guest", read(TDX_QUOTE), policy, TDX_AT)
    assert by_name(report)["vendor signature"][0]  # the quote and PCK chain verify
    assert failures(report) == ["report data", "tcb status"]


def test_the_policy_names_vendor_files_it_can_read(tmp_path):
    with pytest.raises(PolicyError, match=r"hardware\.collateral: .*missing\.json"):
        policy_file(tmp_path, TDX_POLICY.replace("intel/collateral.json", "missing.json"))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(PolicyError, match=r"hardware\.collateral"):
        policy_file(tmp_path, TDX_POLICY.replace("intel/collateral.json", "junk.json"))
    with pytest.raises(PolicyError, match=r"hardware\.chain"):
        policy_file(tmp_path, SNP_POLICY + 'chain = "junk.json"\n')
    with pytest.raises(PolicyError, match=r"hardware\.chain must be a file path"):
        policy_file(tmp_path, SNP_POLICY + "chain = 3\n")


def test_a_tdx_quote_from_the_evidence_is_the_one_verified(tmp_path):
    """The quote in the outblob is what is verified, its PCK chain included."""
    policy = tdx_policy(tmp_path)
    evidence, _ = attest(tmp_path, "tdx_guest", read(TDX_QUOTE), policy, TDX_AT)
    document = json.loads(evidence)
    quote = b64decode(document["signature_chain"]["outblob"])
    document["signature_chain"]["outblob"] = b64encode(flip(quote, len(quote) - 100))
    report = verify_evidence(
        json.dumps(document).encode(), policy, nonce=os.urandom(32), now=TDX_AT
    )
    assert not report.claims.vendor_signature_verified
    assert report.identity is None
