"""What bad input to `chiron train` gets: one clear line, non-zero exit, no model file."""

from __future__ import annotations

import pytest

from .conftest import train_args

pytestmark = pytest.mark.slow


def _assert_refused(result, out, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


def test_key_of_another_dataset_is_refused(world, run_chiron):
    out = world.root / "model.chm"
    result = run_chiron(*train_args(world, data_key=world.test_key))
    _assert_refused(result, out, "key")


def test_tampered_dataset_is_refused(world, run_chiron):
    data = bytearray(world.dataset.read_bytes())
    data[-40] ^= 1
    tampered = world.root / "tampered.chd"
    tampered.write_bytes(bytes(data))
    out = world.root / "model.chm"
    _assert_refused(run_chiron(*train_args(world, dataset=tampered)), out)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("HYPERPARAMETERS = {'epochs': 1}\n", "recipe_error"),
        ("def build_model(schema):\n    return 42\n", "recipe_error"),
        (
            "import torch.nn as nn\n"
            "def build_model(schema):\n"
            "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))\n",
            "bad_output",
        ),
        (
            "import torch.nn as nn\n"
            "def build_model(schema):\n"
            "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
            "def train_step(model, optimizer, x, y, hp):\n"
            "    raise RuntimeError('secret record: ' + str(x[0].tolist()))\n",
            "recipe_error",
        ),
        (
            "import torch.nn as nn\n"
            "def build_model(schema):\n"
            "    return nn.Sequential(nn.Flatten(), nn.Linear(999, 3))\n",
            "recipe_error",
        ),
    ],
    ids=["no-build-model", "not-a-module", "wrong-output-size", "raises-with-data", "bad-schema"],
)
def test_broken_recipes_fail_with_a_reason_class_only(world, run_chiron, source, reason):
    recipe = world.write_recipe("broken.py", source)
    out = world.root / "model.chm"
    result = run_chiron(*train_args(world, recipe=recipe))
    _assert_refused(result, out, reason)
    assert "secret record" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_missing_recipe_file(world, run_chiron):
    out = world.root / "model.chm"
    _assert_refused(run_chiron(*train_args(world, recipe=world.root / "nope.py")), out, "nope.py")


def test_simulated_evidence_is_refused_without_the_flag(world, run_chiron):
    args = [a for a in train_args(world) if a != "--allow-simulation"]
    out = world.root / "model.chm"
    _assert_refused(run_chiron(*args), out, "simulat")
