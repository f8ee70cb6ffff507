"""The confidential-VM evidence provider against a fake configfs-tsm tree."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chiron.core.attestation import Policy, verify_evidence
from chiron.core.attestation.hardware import parse_snp_report, parse_tdx_quote
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import AttestationError
from chiron.core.keys import Identity
from chiron.enclave.platforms.tsm import ConfigfsTsm, TsmPlatform

from .conftest import MEASUREMENT
from .fake_tsm import FakeConfigfsTsm, snp_report, tdx_quote

POLICY = Policy(measurements=(MEASUREMENT,))
UNSAFE = dataclasses.replace(POLICY, UNSAFE_allow_unverified_vendor_signature=True)


def make_evidence(interface, identity, nonce) -> bytes:
    return TsmPlatform(interface).evidence(
        measurement=MEASUREMENT, identity=identity.public, nonce=nonce, role="train", binding=""
    )


@pytest.mark.parametrize(
    ("provider", "platform", "tcb"), [("tdx_guest", "tdx", 3), ("sev_guest", "sev-snp", 22)]
)
def test_evidence_through_configfs_tsm(tmp_path, nonce, provider, platform, tcb):
    interface = FakeConfigfsTsm(tmp_path / "tsm", provider)
    identity = Identity.generate()
    evidence = make_evidence(interface, identity, nonce)
    assert list((tmp_path / "tsm" / "report").iterdir()) == []  # request released

    report = verify_evidence(evidence, POLICY, nonce=nonce)
    failures = {c.name: c.reason for c in report.failures}
    assert list(failures) == ["vendor signature"]
    assert failures["vendor signature"].startswith("unverified vendor signature")
    assert report.identity is None
    assert report.platform == platform and not report.simulated
    assert report.tcb_level == tcb and report.debug is False
    assert report.launch_measurement

    unsafe = verify_evidence(evidence, UNSAFE, nonce=nonce)
    assert unsafe.ok and unsafe.identity == identity.public
    assert "UNVERIFIED" in {c.name: c.reason for c in unsafe.checks}["vendor signature"]


@pytest.mark.parametrize("provider", ["tdx_guest", "sev_guest"])
def test_the_debug_bit_comes_from_the_hardware_report(tmp_path, nonce, provider):
    interface = FakeConfigfsTsm(tmp_path / "tsm", provider, debug=True)
    report = verify_evidence(
        make_evidence(interface, Identity.generate(), nonce), UNSAFE, nonce=nonce
    )
    assert report.debug
    assert [c.name for c in report.failures] == ["debug"]


def test_tsm_evidence_replayed_for_another_nonce_is_refused(tmp_path, nonce):
    interface = FakeConfigfsTsm(tmp_path / "tsm")
    evidence = make_evidence(interface, Identity.generate(), nonce)
    report = verify_evidence(evidence, UNSAFE, nonce=bytes(32))
    assert [c.name for c in report.failures] == ["report data"]
    assert report.identity is None


def test_claims_that_disagree_with_the_hardware_report_are_refused(tmp_path, nonce):
    evidence = make_evidence(FakeConfigfsTsm(tmp_path / "tsm"), Identity.generate(), nonce)
    document = json.loads(evidence)
    document["debug"] = True
    with pytest.raises(AttestationError, match="disagree with the hardware report"):
        verify_evidence(json.dumps(document).encode(), UNSAFE, nonce=nonce)
    document = json.loads(evidence)
    document["signature_chain"]["provider"] = "sev_guest"
    with pytest.raises(AttestationError, match="does not produce tdx reports"):
        verify_evidence(json.dumps(document).encode(), UNSAFE, nonce=nonce)
    document = json.loads(evidence)
    quote = b64decode(document["signature_chain"]["outblob"])
    document["signature_chain"]["outblob"] = b64encode(quote[:100])
    with pytest.raises(AttestationError, match="truncated"):
        verify_evidence(json.dumps(document).encode(), UNSAFE, nonce=nonce)


def test_a_concurrent_writer_is_detected(tmp_path, nonce):
    interface = FakeConfigfsTsm(tmp_path / "tsm")
    interface.extra_writes = 1
    with pytest.raises(AttestationError, match="changed by another process"):
        make_evidence(interface, Identity.generate(), nonce)


def test_an_unknown_provider_is_refused(tmp_path, nonce):
    interface = FakeConfigfsTsm(tmp_path / "tsm", "arm_cca_guest")
    with pytest.raises(AttestationError, match="unknown configfs-tsm provider 'arm_cca_guest'"):
        make_evidence(interface, Identity.generate(), nonce)


def test_a_machine_without_configfs_tsm_says_so(tmp_path, nonce):
    with pytest.raises(AttestationError, match="configfs-tsm is not available"):
        make_evidence(ConfigfsTsm(tmp_path / "absent"), Identity.generate(), nonce)


def test_a_report_directory_without_a_kernel_behind_it_fails_cleanly(tmp_path, nonce):
    (tmp_path / "tsm" / "report").mkdir(parents=True)
    with pytest.raises(AttestationError, match="could not produce a report"):
        make_evidence(ConfigfsTsm(tmp_path / "tsm"), Identity.generate(), nonce)


def test_quote_parsers_read_the_fields_and_refuse_junk():
    data = bytes(range(64))
    tdx = parse_tdx_quote(tdx_quote(data, debug=True, tcb=7))
    assert (tdx.report_data, tdx.debug, tdx.tcb_level) == (data, True, 7)
    assert tdx.launch_measurement == bytes(range(48)).hex()
    snp = parse_snp_report(snp_report(data, tcb=21))
    assert (snp.report_data, snp.debug, snp.tcb_level) == (data, False, 21)
    with pytest.raises(AttestationError, match="not a TDX quote"):
        parse_tdx_quote(snp_report(data) + bytes(200))
    with pytest.raises(AttestationError, match="truncated"):
        parse_snp_report(bytes(100))
