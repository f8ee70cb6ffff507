"""`chiron recipe dry-run`: the provider's debugging run in the real sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
SHAPE = ["--shape", "1,8,8", "--classes", "3", "--records", "64"]


@pytest.mark.slow
def test_a_working_recipe_passes_with_a_summary(run_chiron):
    result = run_chiron("recipe", "dry-run", EXAMPLES / "mlp.py", *SHAPE, "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "dry run passed: mlp.py" in result.stdout
    assert "model " in result.stdout and "bytes, as declared" in result.stdout
    assert "steps (2 epoch(s), batch size 128)" in result.stdout
    assert "Warning" not in result.stderr  # a quiet recipe: nothing but the progress bar


@pytest.mark.slow
def test_a_failing_recipe_shows_its_output_and_traceback(run_chiron, tmp_path):
    source = tmp_path / "broken.py"
    source.write_text(
        "from torch import nn\n"
        "print('hello from the provider')\n"
        "def build_model(schema):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, schema.num_classes))\n"
        "def train_step(model, optimizer, x, y, hp):\n"
        "    raise ValueError('the loss went sideways')\n"
    )
    result = run_chiron("recipe", "dry-run", source, *SHAPE)
    assert result.returncode == 1
    assert "hello from the provider" in result.stderr
    assert "ValueError: the loss went sideways" in result.stderr
    assert 'File "broken.py", line 6, in train_step' in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("chiron: error: job failed: recipe_error (")
    )


@pytest.mark.slow
def test_a_forbidden_operation_is_reported_as_a_policy_violation(run_chiron, tmp_path):
    source = tmp_path / "phones_home.py"
    source.write_text("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    result = run_chiron("recipe", "dry-run", source, *SHAPE)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("chiron: error: job failed: policy_violation (")
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "1,x", "--classes", "3"], "--shape must be comma-separated integers"),
        (["--shape", "1,0", "--classes", "3"], "invalid input shape"),
        (["--shape", "4", "--classes", "1"], "number of classes must be between"),
        (["--shape", "4", "--classes", "3", "--dtype", "int16"], "unsupported dtype"),
    ],
)
def test_bad_arguments_get_one_clear_line(run_chiron, args, message):
    result = run_chiron("recipe", "dry-run", EXAMPLES / "mlp.py", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_recipe_file(run_chiron, tmp_path):
    result = run_chiron("recipe", "dry-run", tmp_path / "nope.py", *SHAPE)
    assert result.returncode == 1
    assert result.stderr.strip() == f"chiron: error: recipe not found: {tmp_path / 'nope.py'}"
