"""Policy files, policy objects, and the composable checks they build."""

from __future__ import annotations

import dataclasses
import time

import pytest

from chiron.client.attestation import load_policy
from chiron.core.attestation import (
    AllOf,
    AnyOf,
    Claims,
    MaxAge,
    MeasurementIs,
    MinimumTcb,
    Policy,
    verify_evidence,
)
from chiron.core.errors import InputError, PolicyError
from chiron.core.measurement import measure_runtime

from .conftest import MEASUREMENT

OTHER = "ab" * 32

CLAIMS = Claims(
    platform="tdx",
    measurement=MEASUREMENT,
    debug=False,
    tcb_level=3,
    timestamp=1000,
    age_seconds=10,
    simulated=False,
    vendor_signature_verified=False,
)


def parse(text: str) -> Policy:
    return Policy.from_toml(text, default_measurement=MEASUREMENT, source="policy.toml")


def test_a_full_policy_file(tmp_path):
    policy = parse(
        f"""
        measurements = ["{MEASUREMENT.upper()}", "{OTHER}"]
        platforms = ["tdx", "sev-snp"]
        min_tcb = 4
        max_age_seconds = 60
        allow_debug = false
        allow_simulation = false
        unsafe_allow_unverified_vendor_signature = true
        """
    )
    assert policy == Policy(
        measurements=(MEASUREMENT, OTHER),
        platforms=("tdx", "sev-snp"),
        min_tcb=4,
        max_age_seconds=60,
        UNSAFE_allow_unverified_vendor_signature=True,
    )


def test_an_empty_policy_file_means_the_safe_defaults():
    policy = parse("")
    assert policy == Policy(measurements=(MEASUREMENT,))
    assert not policy.UNSAFE_allow_debug and not policy.UNSAFE_allow_simulation
    assert policy.platforms == ("sim", "tdx", "sev-snp")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alow_debug = true", "unknown key 'alow_debug'"),
        ('measurements = ["abc"]', r"measurements\[0\] is not 64 hex digits"),
        (f'measurements = ["{"g" * 64}"]', r"measurements\[0\] is not 64 hex digits"),
        ("measurements = []", "measurements must not be empty"),
        (f'measurements = "{MEASUREMENT}"', "measurements must be a list of strings"),
        ('platforms = ["sgx"]', "unknown platform 'sgx'"),
        ("platforms = []", "platforms must not be empty"),
        ("allow_debug = 1", "allow_debug must be true or false"),
        ('allow_simulation = "yes"', "allow_simulation must be true or false"),
        ("min_tcb = true", "min_tcb must be an integer"),
        ("min_tcb = -1", "min_tcb must be 0 or more"),
        ("max_age_seconds = 0", "max_age_seconds must be positive"),
        ("max_age_seconds = 1.5", "max_age_seconds must be an integer"),
        ("measurements = [", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_one_line_errors(text, message):
    with pytest.raises(PolicyError, match=message) as caught:
        parse(text)
    assert str(caught.value).startswith("policy.toml: ")
    assert "\n" not in str(caught.value)


def test_load_policy_without_a_file_expects_this_installation(tmp_path):
    policy = load_policy(None, allow_simulation=False)
    assert policy.measurements == (measure_runtime().hex,)
    assert not policy.UNSAFE_allow_simulation
    assert load_policy(None, allow_simulation=True).UNSAFE_allow_simulation


def test_load_policy_reads_a_file_and_the_flag_can_only_loosen_simulation(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(f'measurements = ["{OTHER}"]\nmin_tcb = 2\n')
    policy = load_policy(path, allow_simulation=True)
    assert policy.measurements == (OTHER,) and policy.min_tcb == 2
    assert policy.UNSAFE_allow_simulation
    path.write_text("allow_simulation = true\n")
    assert load_policy(path, allow_simulation=False).UNSAFE_allow_simulation


def test_load_policy_errors(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy(path, allow_simulation=False)
    with pytest.raises(InputError, match="policy file not found"):
        load_policy(tmp_path / "missing.toml", allow_simulation=False)


def test_policy_objects_validate_their_settings():
    with pytest.raises(PolicyError):
        Policy(measurements=())
    with pytest.raises(PolicyError):
        Policy(measurements=(MEASUREMENT.upper(),))
    with pytest.raises(PolicyError):
        Policy(measurements=(MEASUREMENT,), platforms=("sgx",))


def test_all_of_reports_every_result_and_any_of_needs_one():
    results = AllOf(MinimumTcb(5), MeasurementIs(OTHER), MaxAge(60)).evaluate(CLAIMS)
    assert [(r.name, r.passed) for r in results] == [
        ("tcb", False),
        ("measurement", False),
        ("freshness", True),
    ]
    (either,) = AnyOf("measurement", MeasurementIs(OTHER), MeasurementIs(MEASUREMENT)).evaluate(
        CLAIMS
    )
    assert either.passed and either.name == "measurement"
    (neither,) = AnyOf("measurement", MeasurementIs(OTHER), MeasurementIs("cd" * 32)).evaluate(
        CLAIMS
    )
    assert not neither.passed and "none of 2 alternatives" in neither.reason


def test_policy_rules_name_the_unsafe_choices():
    safe = Policy(measurements=(MEASUREMENT,)).rules().evaluate(CLAIMS)
    assert {r.name: r.passed for r in safe}["vendor signature"] is False
    unsafe_policy = Policy(
        measurements=(MEASUREMENT,),
        UNSAFE_allow_debug=True,
        UNSAFE_allow_unverified_vendor_signature=True,
    )
    debug_claims = dataclasses.replace(CLAIMS, debug=True)
    reasons = {r.name: r.reason for r in unsafe_policy.rules().evaluate(debug_claims)}
    assert "unsafe" in reasons["vendor signature"] and "UNVERIFIED" in reasons["vendor signature"]
    assert "unsafe" in reasons["debug"] and "DEBUG" in reasons["debug"]


def test_freshness_refuses_evidence_from_the_future(sim, nonce, sim_policy):
    evidence = sim.evidence(nonce)
    report = verify_evidence(
        evidence, sim_policy, nonce=nonce, sim_roots=[sim.root], now=time.time() - 3600
    )
    assert {c.name: c.reason for c in report.failures} == {
        "freshness": f"timestamp is {-report.age_seconds} s in the future"
    }


def test_no_age_limit_accepts_old_evidence(sim, nonce, sim_policy):
    evidence = sim.evidence(nonce)
    later = time.time() + 30 * 86400
    without_limit = dataclasses.replace(sim_policy, max_age_seconds=None)
    assert verify_evidence(evidence, without_limit, nonce=nonce, sim_roots=[sim.root], now=later).ok
    assert not verify_evidence(
        evidence, sim_policy, nonce=nonce, sim_roots=[sim.root], now=later
    ).ok
