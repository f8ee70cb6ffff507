"""`chiron keys` and `--provider URL` on the command line: one line for every mistake."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.conftest import CHIRON


def one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def provider_key(tmp_path: Path, run_chiron) -> Path:
    run_chiron("keygen", "--out", tmp_path / "provider.key", check=True)
    return tmp_path / "provider.key"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_release_per_owner = 3\n", "unknown key 'max_release_per_owner'"),
        ("max_releases_per_owner = '3'\n", "max_releases_per_owner must be an integer"),
        ("max_releases_per_owner = 0\n", "max_releases_per_owner must be 1 or more"),
        ("allow_simulation = 'yes'\n", "allow_simulation must be true or false"),
        ("measurements = 'abc'\n", "measurements must be a list of strings"),
        ("measurements = ['abc']\n", "measurements[0] is not 64 hex digits"),
        ("platforms = ['sgx']\n", "unknown platform 'sgx'"),
        ("query_policy_digests = ['xyz']\n", "query_policy_digests[0] is not 64 hex digits"),
        ("not_after = 2027-01-01T00:00:00\n", "not_after needs a time zone"),
        ("not_after = 'tomorrow'\n", "not_after must be a date-time"),
        ("[hardware\n", "not valid TOML"),
    ],
)
def test_release_policy_errors_are_one_line_naming_the_file(
    tmp_path, run_chiron, provider_key, text, needle
):
    policy = tmp_path / "release.toml"
    policy.write_text(text)
    result = run_chiron("keys", "serve", "--key", provider_key, "--policy", policy, "--port", "0")
    one_line_error(result, str(policy), needle)


def test_query_without_the_providers_agent_says_it_is_needed(tmp_path, run_chiron):
    result = run_chiron(
        "query", "--local", "--model", tmp_path / "m.chm", "--owner", tmp_path / "o.key",
        "--inputs", tmp_path / "x.npy",
    )  # fmt: skip
    one_line_error(result, "key-release agent", "--provider URL", "chiron keys serve")
    result = run_chiron(
        "evaluate", "--local", "--model", tmp_path / "m.chm", "--owner", tmp_path / "o.key",
        "--dataset", tmp_path / "t.chd", "--data-key", tmp_path / "t.key",
    )  # fmt: skip
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1


def test_a_private_key_file_is_not_a_provider(tmp_path, run_chiron, provider_key):
    result = run_chiron(
        "query", "--local", "--model", tmp_path / "m.chm", "--owner", tmp_path / "o.key",
        "--provider", provider_key, "--inputs", tmp_path / "x.npy",
    )  # fmt: skip
    one_line_error(result, "--provider takes the URL of the provider's key-release agent")


def test_revoke_names_a_model_id(run_chiron, tmp_path):
    one_line_error(run_chiron("keys", "revoke", "../x", "--state", tmp_path / "s"), "model id")
    ok = run_chiron("keys", "revoke", "ab" * 16, "--state", tmp_path / "s")
    assert ok.returncode == 0 and "revoked model" in ok.stdout
    again = run_chiron("keys", "revoke", "ab" * 16, "--state", tmp_path / "s")
    assert again.returncode == 0 and "already revoked" in again.stdout


def test_trust_sim_root_refuses_what_is_not_a_root(run_chiron, tmp_path):
    bogus = tmp_path / "root.pub"
    bogus.write_text("{}")
    one_line_error(
        run_chiron("keys", "trust-sim-root", bogus, "--state", tmp_path / "s"),
        "not a valid simulation root",
    )
    one_line_error(run_chiron("keys", "trust-sim-root", "--state", tmp_path / "s"), "exactly one")


def test_keys_serve_listens_on_loopback_and_answers(tmp_path, provider_key, chiron_home):
    policy = tmp_path / "release.toml"
    policy.write_text("max_releases_per_owner = 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(chiron_home)
    process = subprocess.Popen(
        [*CHIRON, "keys", "serve", "--key", str(provider_key), "--policy", str(policy),
         "--port", "0", "--state", str(tmp_path / "agent")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        info = httpx.get(f"{url}/v1/info").json()
        assert info["version"] == 1 and "provider" in info
        challenge = httpx.post(f"{url}/v1/challenge", json={}).json()
        assert len(challenge["challenge"]) == 44
        assert httpx.post(f"{url}/v1/release", json={}).status_code == 400
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "releases per owner: at most 5" in stderr
