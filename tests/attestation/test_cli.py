"""`chiron measure` and `chiron attest` as a user runs them, with a real enclave process."""

from __future__ import annotations

import json
import socket

import pytest

from chiron.core.measurement import measure_runtime


@pytest.fixture(scope="module")
def measurement() -> str:
    return measure_runtime().hex


def test_measure_prints_the_measurement(run_chiron, measurement):
    result = run_chiron("measure", check=True)
    assert result.stdout.strip() == measurement


def test_measure_list_shows_every_file_and_version(run_chiron, measurement):
    lines = run_chiron("measure", "--list", check=True).stdout.splitlines()
    assert lines[-1] == measurement
    assert any(line.split()[:2] == ["distribution", "torch"] for line in lines)
    assert any(line.split()[:2] == ["python", "python"] for line in lines)
    assert any(line.split()[:2] == ["file", "chiron/enclave/main.py"] for line in lines)
    assert f"{len(measure_runtime().entries)} entries" in lines[-2]


def test_measure_json(run_chiron, measurement):
    document = json.loads(run_chiron("measure", "--json", check=True).stdout)
    assert document["measurement"] == measurement
    assert document["entries"] == [entry.to_dict() for entry in measure_runtime().entries]


def test_attest_local_with_simulation_allowed(run_chiron, measurement):
    result = run_chiron("attest", "--local", "--allow-simulation", check=True)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("SIMULATED")
    assert f"measurement  {measurement}" in lines
    assert "platform     sim (SIMULATED)" in lines
    checks = [line.split()[0] for line in lines if line.startswith("  ")]
    assert checks and set(checks) == {"PASS"}
    assert lines[-1] == "verified: the enclave satisfies the policy"


def test_attest_local_refuses_simulation_by_default(run_chiron):
    result = run_chiron("attest", "--local")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "simulated" in result.stderr and "protects nothing against the host" in result.stderr
    assert "--allow-simulation" in result.stderr
    assert "  FAIL simulation" in result.stdout


def test_attest_json(run_chiron, measurement):
    result = run_chiron("attest", "--local", "--allow-simulation", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["measurement"] == measurement
    assert report["ok"] is True and report["simulated"] is True
    assert report["platform"] == "sim" and report["debug"] is False
    assert {check["name"] for check in report["checks"]} >= {"root of trust", "report data"}


def test_attest_json_refusal_still_prints_the_report(run_chiron):
    result = run_chiron("attest", "--local", "--json")
    assert result.returncode != 0
    assert json.loads(result.stdout)["ok"] is False
    assert result.stderr.startswith("chiron: error: enclave refused")


def test_attest_with_a_policy_for_another_runtime(run_chiron, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(f'measurements = ["{"ab" * 32}"]\nallow_simulation = true\n')
    result = run_chiron("attest", "--local", "--policy", policy)
    assert result.returncode != 0
    assert "measurement: runtime" in result.stderr and "simulated" not in result.stderr


def test_attest_with_a_bad_policy_file(run_chiron, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('measurements = ["xyz"]\n')
    result = run_chiron("attest", "--local", "--policy", policy)
    assert result.returncode == 1
    assert result.stderr == f"chiron: error: {policy}: measurements[0] is not 64 hex digits\n"


def test_attest_needs_exactly_one_target(run_chiron):
    result = run_chiron("attest")
    assert result.returncode == 2
    assert "--local or --url" in result.stderr


def test_attest_an_unreachable_service(run_chiron):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_chiron("attest", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode != 0
    assert result.stderr.startswith("chiron: error: cannot reach")
    assert f"127.0.0.1:{port}" in result.stderr
    assert result.stderr.count("\n") == 1
