"""The real verifier, driven through every kind of bad evidence the sim platform can make."""

from __future__ import annotations

import json
import os

import pytest

from chiron.core.attestation import Policy, SimRoot, verify_evidence
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import AttestationError
from chiron.enclave.platforms.sim import SimFault

from .conftest import MEASUREMENT

ALL_CHECKS = [
    "root of trust",
    "signature",
    "report data",
    "platform",
    "simulation",
    "measurement",
    "debug",
    "tcb",
    "freshness",
]


def failed(report) -> dict[str, str]:
    return {check.name: check.reason for check in report.failures}


def test_good_evidence_passes_every_check_and_authenticates_the_enclave(sim, nonce, sim_policy):
    report = verify_evidence(sim.evidence(nonce), sim_policy, nonce=nonce, sim_roots=[sim.root])
    assert report.ok
    assert [check.name for check in report.checks] == ALL_CHECKS
    assert report.identity == sim.identity.public
    assert report.simulated and report.platform == "sim"
    assert report.measurement == MEASUREMENT
    assert report.debug is False and report.tcb_level == 1
    assert 0 <= report.age_seconds <= 5


@pytest.mark.parametrize(
    ("fault", "check", "words"),
    [
        (SimFault.DEBUG, "debug", "debug enclave"),
        (SimFault.OLD_TCB, "tcb", "out-of-date"),
        (SimFault.WRONG_MEASUREMENT, "measurement", "is not the expected"),
        (SimFault.STALE_TIMESTAMP, "freshness", "stale"),
        (SimFault.BAD_SIGNATURE, "signature", "bad signature"),
        (SimFault.UNKNOWN_ROOT, "root of trust", "unknown root"),
        (SimFault.WRONG_NONCE, "report data", "nonce"),
    ],
)
def test_each_defect_fails_exactly_its_check(sim, nonce, sim_policy, fault, check, words):
    report = verify_evidence(
        sim.evidence(nonce, fault), sim_policy, nonce=nonce, sim_roots=[sim.root]
    )
    assert not report.ok
    assert list(failed(report)) == [check]
    assert words in failed(report)[check]
    # Every check still ran: the verifier never stops at the first failure.
    assert [c.name for c in report.checks] == ALL_CHECKS


@pytest.mark.parametrize(
    "fault", [SimFault.BAD_SIGNATURE, SimFault.UNKNOWN_ROOT, SimFault.WRONG_NONCE]
)
def test_unauthentic_evidence_authenticates_no_key(sim, nonce, sim_policy, fault):
    report = verify_evidence(
        sim.evidence(nonce, fault), sim_policy, nonce=nonce, sim_roots=[sim.root]
    )
    assert report.identity is None


def test_policy_failures_still_authenticate_the_key_but_are_not_ok(sim, nonce, sim_policy):
    report = verify_evidence(
        sim.evidence(nonce, SimFault.DEBUG), sim_policy, nonce=nonce, sim_roots=[sim.root]
    )
    assert report.identity == sim.identity.public
    assert not report.ok


def test_simulated_evidence_is_refused_by_the_default_policy(sim, nonce):
    policy = Policy(measurements=(MEASUREMENT,))
    report = verify_evidence(sim.evidence(nonce), policy, nonce=nonce, sim_roots=[sim.root])
    assert failed(report) == {
        "simulation": "the evidence is simulated (no TEE) and protects nothing against the host"
    }


def test_simulated_evidence_needs_a_trusted_root(sim, nonce, sim_policy):
    report = verify_evidence(sim.evidence(nonce), sim_policy, nonce=nonce, sim_roots=[])
    assert "trusted roots: none" in failed(report)["root of trust"]
    assert report.identity is None


def test_a_replayed_report_is_refused(sim, sim_policy):
    first, second = os.urandom(32), os.urandom(32)
    old = sim.evidence(first)
    assert verify_evidence(old, sim_policy, nonce=first, sim_roots=[sim.root]).ok
    replayed = verify_evidence(old, sim_policy, nonce=second, sim_roots=[sim.root])
    assert list(failed(replayed)) == ["report data"]
    assert "replayed" in failed(replayed)["report data"]


def _edit(evidence: bytes, **changes) -> bytes:
    document = json.loads(evidence)
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "changes",
    [
        {"measurement": "f" * 64},
        {"debug": True},
        {"tcb_level": 9},
        {"timestamp": 1},
    ],
)
def test_edited_claims_break_the_signature(sim, nonce, sim_policy, changes):
    edited = _edit(sim.evidence(nonce), **changes)
    report = verify_evidence(edited, sim_policy, nonce=nonce, sim_roots=[sim.root])
    assert "signature" in failed(report)
    assert report.identity is None


def test_swapped_enclave_keys_are_not_authenticated(sim, nonce, sim_policy):
    from chiron.core.keys import Identity

    other = Identity.generate().public.to_bytes()
    edited = _edit(sim.evidence(nonce), enclave_identity=b64encode(other))
    report = verify_evidence(edited, sim_policy, nonce=nonce, sim_roots=[sim.root])
    assert {"signature", "report data"} <= set(failed(report))
    assert report.identity is None


def test_a_certificate_from_another_root_is_refused_even_if_that_root_is_named(
    sim, nonce, sim_policy, tmp_path
):
    from chiron.enclave.platforms.sim import SimPlatform

    stranger = SimPlatform(tmp_path / "other-state")
    evidence = stranger.evidence(
        measurement=MEASUREMENT, identity=sim.identity.public, nonce=nonce, role="train", binding=""
    )
    report = verify_evidence(evidence, sim_policy, nonce=nonce, sim_roots=[sim.root])
    assert "unknown root" in failed(report)["root of trust"]


def test_a_forged_certificate_signature_is_refused(sim, nonce, sim_policy):
    document = json.loads(sim.evidence(nonce))
    signature = b64decode(document["signature_chain"]["certificate_signature"])
    document["signature_chain"]["certificate_signature"] = b64encode(bytes(64 - 1) + signature[-1:])
    report = verify_evidence(
        json.dumps(document).encode(), sim_policy, nonce=nonce, sim_roots=[sim.root]
    )
    assert failed(report)["root of trust"] == "bad signature on the platform certificate"


@pytest.mark.parametrize(
    ("evidence", "message"),
    [
        (b"", "malformed evidence"),
        (b"\xff\xfe", "malformed evidence"),
        (b"[1, 2]", "malformed evidence"),
        (b'{"type": "chiron.attestation.evidence", "version": 7}', "unsupported version"),
        (
            b'{"type": "chiron.attestation.evidence", "version": 1, "platform": "sgx9"}',
            "unknown platform 'sgx9'",
        ),
        (b"x" * (300 * 1024), "malformed evidence"),
    ],
)
def test_malformed_evidence_is_a_one_line_error(evidence, message, nonce, sim_policy):
    with pytest.raises(AttestationError, match=message) as caught:
        verify_evidence(evidence, sim_policy, nonce=nonce)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"measurement": "not hex"},
        {"tcb_level": True},
        {"report_data": b64encode(b"short")},
        {"enclave_identity": "%%%"},
        {"signature_chain": {"certificate": "AA=="}},
        {"timestamp": "yesterday"},
    ],
)
def test_malformed_fields_are_refused(sim, nonce, sim_policy, changes):
    with pytest.raises(AttestationError, match="malformed evidence"):
        verify_evidence(_edit(sim.evidence(nonce), **changes), sim_policy, nonce=nonce)


def test_the_verifier_refuses_a_nonce_of_the_wrong_size(sim, nonce, sim_policy):
    with pytest.raises(AttestationError, match="16 to 64 bytes"):
        verify_evidence(sim.evidence(nonce), sim_policy, nonce=b"short")


def test_sim_root_round_trips_and_rejects_a_wrong_fingerprint(sim):
    document = sim.root.to_document()
    assert SimRoot.from_document(document, source="test") == sim.root
    with pytest.raises(AttestationError, match="not a valid simulation root"):
        SimRoot.from_document({**document, "fingerprint": "0" * 64}, source="test")
