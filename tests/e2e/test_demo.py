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
    result = run_chiron("demo", "--out", out, "--epochs", "1", "--queries", "4", "--json")
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
    ):
        assert f"$ chiron {step}" in result.stderr.replace("\n", " ")
    # The owner's files are there; the provider's recipe is not.
    assert (out / "model.chm").exists() and (out / "fm-train.chd").exists()
    assert not list(out.glob("*.py"))
