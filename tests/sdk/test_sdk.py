"""The Python SDK (`chiron.connect`): the README's example, typed results and errors."""

from __future__ import annotations

import base64
import json
import os
import pydoc
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import chiron
from chiron.client.key_release_agent import AgentState, KeyReleaseAgent, running_agent
from chiron.core import errors
from chiron.core.attestation import load_sim_root
from chiron.core.keys import load_data_key, load_identity
from chiron.core.measurement import measure_runtime
from chiron.core.modelfile import read_model_header
from chiron.core.release_policy import ReleasePolicy
from e2e.conftest import TINY_RECIPE, make_images, sign_recipe

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_AGENT = "http://127.0.0.1:8471"
# With a query budget, so answers say what is left of it.
RECIPE = TINY_RECIPE + 'QUERY_POLICY = {"output": "probabilities", "budget": 1000}\n'


def _python_block(text: str, after: str) -> str:
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


def _readme_example() -> str:
    return _python_block(README.read_text(), "## From Python")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(home)
    return env


def _chiron(home: Path, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chiron", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(home),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


@dataclass
class Files:
    """The README's file names, in one folder, on tiny data (three easy classes)."""

    root: Path
    home: Path
    progress: list[tuple[int, int]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Path:
        names = {
            "owner": "owner.key",
            "provider": "provider.key",
            "recipe": "examples/recipes/cnn.py",
            "statement": "cnn.statement.json",
            "train": "fm-train.chd",
            "train_key": "fm-train.key",
            "test": "fm-test.chd",
            "test_key": "fm-test.key",
            "images": "images.npy",
        }
        if name not in names:
            raise AttributeError(name)
        return self.root / names[name]


def make_files(root: Path) -> Files:
    files = Files(root, root / "chiron-home")
    files.home.mkdir()
    for key in (files.owner, files.provider):
        assert _chiron(files.home, "keygen", "--out", key).returncode == 0
    for name, count, seed in (("train", 320, 1), ("test", 120, 2)):
        x, y = make_images(count, seed)
        np.savez(root / f"{name}.npz", x=x, y=y)
        encrypted = _chiron(
            files.home,
            "dataset",
            "encrypt",
            root / f"{name}.npz",
            "--out",
            getattr(files, name),
            "--key",
            getattr(files, f"{name}_key"),
        )
        assert encrypted.returncode == 0, encrypted.stderr
    files.recipe.parent.mkdir(parents=True)
    files.recipe.write_text(RECIPE)
    sign_recipe(files.recipe, files.provider).rename(files.statement)
    np.save(files.images, make_images(12, seed=3)[0])
    # This machine's simulation root, which the provider's agent below is told to trust.
    attested = _chiron(files.home, "attest", "--local", "--allow-simulation")
    assert attested.returncode == 0, attested.stderr
    return files


def provider_agent(files: Files) -> KeyReleaseAgent:
    """The provider's key-release agent, releasing to this installation's enclaves."""
    state = AgentState(files.root / "provider-agent")
    root = load_sim_root(files.home)
    assert root is not None
    state.trust_sim_root(root)
    policy = ReleasePolicy(measurements=(measure_runtime().hex,), UNSAFE_allow_simulation=True)
    return KeyReleaseAgent(load_identity(files.provider), policy, state, log=lambda line: None)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return make_files(tmp_path_factory.mktemp("sdk"))


@pytest.fixture(scope="module")
def agent(files: Files) -> Iterator[str]:
    with running_agent(provider_agent(files)) as url:
        yield url


@pytest.fixture(scope="module")
def trained(files: Files) -> chiron.TrainingRun:
    with chiron.connect(local=True, allow_simulation=True, state_dir=files.home) as c:
        return c.train(
            files.recipe,
            statement=files.statement,
            dataset=files.train,
            data_key=files.train_key,
            owner=files.owner,
            provider=f"{files.provider}.pub",
            seed=7,
            on_progress=lambda step, total: files.progress.append((step, total)),
        )


def test_the_readme_example_is_the_docstring_example():
    assert _readme_example() == _python_block(chiron.__doc__, "From Python")


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path):
    files = make_files(tmp_path)
    example = tmp_path / "example.py"
    source = _readme_example()
    assert source.count(f'"{README_AGENT}"') == 1
    with running_agent(provider_agent(files)) as url:
        example.write_text(source.replace(README_AGENT, url))
        ran = subprocess.run(
            [sys.executable, example],
            capture_output=True,
            text=True,
            env=_env(files.home),
            cwd=tmp_path,
            timeout=900,
        )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    lines = ran.stdout.replace("\r", "\n").splitlines()
    assert re.fullmatch(r"step \d+/\d+", lines[0])
    accuracy = next(line for line in lines if line.startswith("held-out accuracy"))
    assert float(accuracy.split()[-1]) > 0.8
    assert float(lines[-1]) > 0.8  # evaluation accuracy on fm-test.chd
    for name in ("model.chm", "model.receipt.json", "model.report.json"):
        assert (tmp_path / name).is_file()
    verified = _chiron(
        files.home, "receipt", "verify", "model.chm", "--allow-simulation", cwd=tmp_path
    )
    assert verified.returncode == 0, verified.stderr


def test_help_shows_connect_and_the_example():
    text = pydoc.render_doc(chiron, renderer=pydoc.plaintext)
    assert "connect(*, local: 'bool' = False, url:" in text
    assert "with chiron.connect(local=True" in text
    for name in ("TrainingRun", "Model", "Predictions", "Evaluation", "ChironError"):
        assert name in text


def test_the_type_stub_declares_exactly_the_public_names():
    import ast

    stub = ast.parse((REPO / "src" / "chiron" / "__init__.pyi").read_text())
    declared = {
        alias.asname
        for node in stub.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    declared |= {node.target.id for node in stub.body if isinstance(node, ast.AnnAssign)}
    assert declared - {"__all__"} == set(chiron.__all__)
    assert (REPO / "src" / "chiron" / "py.typed").exists()


def test_the_public_surface_is_small_and_importing_it_loads_no_torch():
    assert all(hasattr(chiron, name) for name in chiron.__all__)
    assert chiron.ChironError is errors.ChironError
    assert chiron.InputError is errors.InputError
    code = (
        "import sys, chiron\n"
        "assert 'chiron.client' not in sys.modules\n"
        "chiron.connect, chiron.TrainingRun\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_train_returns_a_verified_run_and_reports_progress(files, trained):
    assert trained.holdout_accuracy > 0.8
    assert len(trained.epoch_accuracy) == 2
    assert read_model_header(trained.model).model_id == trained.model_id
    assert b'"statement"' in trained.receipt
    assert trained.report["model_id"] == trained.model_id
    assert sum(map(sum, trained.confusion_matrix)) == trained.report["holdout_records"]
    with pytest.raises(AttributeError):
        trained.model_id = "x"  # frozen
    steps = [step for step, _ in files.progress]
    assert len(steps) > 2
    assert steps == sorted(set(steps))
    total = files.progress[-1][1]
    assert steps[-1] == total
    assert {t for _, t in files.progress} == {total}


@pytest.mark.slow
def test_train_runs_on_this_machines_own_host_which_holds_nothing_in_clear(files, trained):
    """`connect(local=True)` trains on the same LocalHost as `chiron train --local`.

    The job is on record there (`chiron service jobs list --local`), and the host's
    database and store hold ciphertext only: not the data key, not the owner's key.
    """
    listed = _chiron(files.home, "service", "jobs", "list", "--local", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "done" in [job["state"] for job in json.loads(listed.stdout)]
    owner = load_identity(files.owner).to_document()
    secrets = [load_data_key(files.train_key).key]
    secrets += [base64.b64decode(owner[name]) for name in ("signing_key", "hpke_key")]
    secrets += [base64.b64encode(secret) for secret in secrets]
    stored = [path for path in (files.home / "host").rglob("*") if path.is_file()]
    assert stored
    for path in stored:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path


@pytest.mark.slow
def test_save_writes_model_receipt_report_and_refuses_to_overwrite(files, trained, tmp_path):
    out = tmp_path / "model.chm"
    assert trained.save(out) == out
    assert out.read_bytes() == trained.model
    assert (tmp_path / "model.receipt.json").read_bytes() == trained.receipt
    assert (tmp_path / "model.report.json").is_file()
    with pytest.raises(chiron.InputError, match="refusing to overwrite existing file"):
        trained.save(out)
    (tmp_path / "other.receipt.json").write_text("keep me")
    with pytest.raises(chiron.InputError, match=r"other\.receipt\.json"):
        trained.save(tmp_path / "other.chm")
    assert not (tmp_path / "other.chm").exists()
    assert (tmp_path / "other.receipt.json").read_text() == "keep me"
    trained.save(out, overwrite=True)
    with pytest.raises(chiron.InputError, match="does not exist"):
        trained.save(tmp_path / "missing" / "model.chm")
    verified = _chiron(files.home, "receipt", "verify", out, "--allow-simulation")
    assert verified.returncode == 0, verified.stderr


@pytest.mark.slow
def test_predict_and_evaluate_give_typed_answers(files, trained, agent, tmp_path):
    model_path = trained.save(tmp_path / "model.chm")
    x, y = make_images(12, seed=3)
    with (
        chiron.connect(local=True, allow_simulation=True, state_dir=files.home) as c,
        c.open_model(model_path, owner=files.owner, provider=agent) as model,
    ):
        assert model.model_id == trained.model_id
        assert model.input_shape == (1, 8, 8)
        answers = model.predict(x)
        assert isinstance(answers, chiron.Predictions)
        assert len(answers) == 12
        assert np.mean(np.array(answers.labels) == y) > 0.7
        first = answers[0]
        assert isinstance(first, chiron.Prediction)
        assert first.probabilities is not None and len(first.probabilities) == 3
        assert abs(sum(first.probabilities) - 1) < 1e-3
        # The arrays and the items are one answer: a row per input, in input order.
        assert answers.probabilities is not None and answers.probabilities.shape == (12, 3)
        assert [item.label for item in answers] == answers.labels
        assert [item.probabilities for item in answers] == [
            tuple(row) for row in answers.probabilities.tolist()
        ]
        assert not answers.probabilities.flags.writeable
        assert isinstance(answers.budget_left, int)
        from_file = model.predict(files.images)
        assert from_file.labels == answers.labels
        assert from_file.budget_left < answers.budget_left

        evaluation = model.evaluate(files.test, data_key=files.test_key)
        assert isinstance(evaluation, chiron.Evaluation)
        assert evaluation.records == 120
        assert evaluation.accuracy > 0.8
        assert len(evaluation.per_class) == 3
        assert sum(row.support for row in evaluation.per_class) == 120
        assert sum(map(sum, evaluation.confusion_matrix)) == 120
        assert evaluation.budget_left < from_file.budget_left

        with pytest.raises(chiron.InputError, match="is the key of dataset") as wrong:
            model.evaluate(files.test, data_key=files.train_key)
        assert "\n" not in str(wrong.value)


def _sdk_error(files: Files, **changes) -> chiron.ChironError:
    arguments = {
        "dataset": files.train,
        "data_key": files.train_key,
        "owner": files.owner,
        "statement": files.statement,
        **changes,
    }
    with (
        chiron.connect(local=True, allow_simulation=True, state_dir=files.home) as c,
        pytest.raises(chiron.ChironError) as caught,
    ):
        c.train(files.recipe, **arguments)
    return caught.value


def _cli_error(files: Files, **changes) -> str:
    arguments = {
        "dataset": files.train,
        "data_key": files.train_key,
        "owner": files.owner,
        "statement": files.statement,
        **changes,
    }
    flags = [
        item for name, value in arguments.items() for item in (f"--{name.replace('_', '-')}", value)
    ]
    result = _chiron(
        files.home,
        "train",
        "--local",
        "--allow-simulation",
        "--recipe",
        files.recipe,
        *flags,
        "--out",
        files.root / "never.chm",
    )
    assert result.returncode != 0
    return result.stderr


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"dataset": "missing.chd"}, chiron.InputError, "not found"),
        ({"data_key": "fm-test.key"}, chiron.InputError, "is the key of dataset"),
        ({"owner": "nobody.key"}, chiron.InputError, "key file not found"),
        ({"statement": "cnn.py"}, chiron.InputError, "statement"),
    ],
    ids=["missing-dataset", "wrong-data-key", "missing-owner-key", "not-a-statement"],
)
def test_errors_are_the_clis_typed_one_line_errors(files, changes, error, words):
    changes = {name: files.root / value for name, value in changes.items()}
    if "statement" in changes:
        changes["statement"] = files.recipe
    raised = _sdk_error(files, **changes)
    assert type(raised) is error
    message = str(raised)
    assert words in message
    assert "\n" not in message
    assert _cli_error(files, **changes) == f"chiron: error: {message}\n"


def test_usage_errors_name_the_keyword(files):
    with pytest.raises(chiron.UsageError, match="exactly one of local=True or url"):
        chiron.connect()
    with pytest.raises(chiron.UsageError, match="exactly one of local=True or url"):
        chiron.connect(local=True, url="http://127.0.0.1:1")
    with (
        chiron.connect(local=True, allow_simulation=True, state_dir=files.home) as c,
        pytest.raises(chiron.UsageError, match="workers"),
    ):
        c.train(
            files.recipe,
            dataset=files.train,
            data_key=files.train_key,
            owner=files.owner,
            workers=0,
        )


def test_open_model_takes_the_providers_agent_never_its_key(files):
    with (
        chiron.connect(local=True, allow_simulation=True, state_dir=files.home) as c,
        pytest.raises(chiron.UsageError, match="URL of the provider's key-release agent"),
    ):
        c.open_model(files.root / "model.chm", owner=files.owner, provider=files.provider)


def test_a_pinned_provider_other_than_the_signer_is_refused(files, tmp_path):
    other = tmp_path / "other.key"
    assert _chiron(files.home, "keygen", "--out", other).returncode == 0
    raised = _sdk_error(files, provider=f"{other}.pub")
    assert isinstance(raised, chiron.IntegrityError)
    assert "not by the expected" in str(raised)


@pytest.mark.slow
def test_open_model_refuses_keys_not_named_in_the_model(files, trained, agent, tmp_path):
    model_path = trained.save(tmp_path / "model.chm")
    with (
        chiron.connect(local=True, allow_simulation=True, state_dir=files.home) as c,
        pytest.raises(chiron.InputError, match="the owner key given is not the owner"),
    ):
        c.open_model(model_path, owner=files.provider, provider=agent)
