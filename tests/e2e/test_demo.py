"""`chiron demo`: the whole story through a real service, every step the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chiron.client.demo import FASHION_MNIST

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist",
)
def test_the_demo_tells_the_whole_story(run_chiron, tmp_path):
    out = tmp_path / "demo"
    result = run_chiron(
        "demo", "--out", out, "--epochs", "1", "--queries", "4", "--json", timeout=1500
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["test_accuracy"] > 0.8
    for plot in summary["plots"]:
        assert Path(plot).read_bytes().startswith(b"\x89PNG")
    for step in (
        "keygen",
        "service recipes register",
        "dataset encrypt",
        "attest",
        "train --url",
        "receipt verify",
        "evaluate --url",
        "query --url",
        "keys trust-sim-root",
        "keys serve",
        "keys revoke",
    ):
        assert f"$ chiron {step}" in result.stderr.replace("\n", " ")
    # After the provider revoked the model, the owner's query was refused, in one line.
    assert "revocation" in summary["revoked_query"] and "revoked" in summary["revoked_query"]
    assert summary["model_id"] in summary["revoked_query"]
    # The owner's files are in the owner's folder, the provider's key only in the
    # provider's; nobody has the provider's recipe.
    owner, provider = out / "owner", out / "provider"
    assert (owner / "model.chm").exists() and (owner / "fm-train.chd").exists()
    assert (owner / "owner.key").exists() and (owner / "provider.key.pub").exists()
    assert not (owner / "provider.key").exists()
    assert (provider / "provider.key").exists() and not (provider / "owner.key").exists()
    assert b"identity.private" not in (owner / "provider.key.pub").read_bytes()
    assert not list(out.rglob("*.py"))
