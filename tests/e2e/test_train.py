"""`chiron train`, `evaluate` and `query` end to end through real enclave processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from chiron.core.recipe_protocol import TrainingPlan, holdout_split

from .conftest import TINY_RECIPE, make_images, train_args
from .model_access import open_model

pytestmark = pytest.mark.slow


def test_train_then_evaluate_then_query(world, run_chiron, provider_agent):
    result = run_chiron(*train_args(world), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    model = world.root / "model.chm"
    assert model.exists()
    for name in ("receipt.json", "report.json", "curve.png", "confusion.png"):
        assert (world.root / f"model.{name}").exists()
    assert summary["resumed_from_step"] == 0
    report = json.loads((world.root / "model.report.json").read_text())
    assert len(report["epoch_accuracy"]) == 2
    assert summary["holdout_accuracy"] > 0.8
    assert (world.root / "model.curve.png").read_bytes().startswith(b"\x89PNG")

    verified = run_chiron("receipt", "verify", model, "--allow-simulation")
    assert verified.returncode == 0, verified.stderr

    # The owner's commands name the provider's agent, never the provider's key.
    agent = provider_agent(world.provider)

    evaluated = run_chiron(
        "evaluate",
        "--local",
        "--allow-simulation",
        "--model",
        model,
        "--owner",
        world.owner,
        "--provider",
        agent,
        "--dataset",
        world.test_dataset,
        "--data-key",
        world.test_key,
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["records"] == 120
    assert metrics["accuracy"] > 0.8
    assert sum(map(sum, metrics["confusion_matrix"])) == 120

    x, y = make_images(12, seed=3)
    np.save(world.root / "inputs.npy", x)
    answered = run_chiron(
        "query",
        "--local",
        "--allow-simulation",
        "--model",
        model,
        "--owner",
        world.owner,
        "--provider",
        agent,
        "--inputs",
        world.root / "inputs.npy",
        "--json",
    )
    assert answered.returncode == 0, answered.stderr
    predictions = json.loads(answered.stdout)["predictions"]
    assert len(predictions) == 12
    assert np.mean([p["label"] for p in predictions] == y) > 0.7
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-3 for p in predictions)


def test_model_file_holds_no_plaintext_weights(world, run_chiron):
    assert run_chiron(*train_args(world)).returncode == 0
    model = world.root / "model.chm"
    payload = open_model(model, world.owner, world.provider)
    blob = model.read_bytes()
    # Any 32-byte window of the real weights or of the recipe would show up verbatim.
    weights = payload.weights
    for start in range(0, len(weights) - 32, len(weights) // 20):
        assert weights[start : start + 32] not in blob
    assert b"build_model" not in blob
    assert b"HYPERPARAMETERS" not in blob


def test_weights_are_bit_identical_to_a_plain_pytorch_run(world, run_chiron):
    from chiron.core.dataset import load_dataset
    from chiron.core.keys import load_data_key
    from chiron.recipes.sdk import train_plain

    assert run_chiron(*train_args(world)).returncode == 0
    enclave_weights = open_model(world.root / "model.chm", world.owner, world.provider).weights

    header, x, y = load_dataset(world.dataset, load_data_key(world.data_key).key)
    train_index, _ = holdout_split(len(y), 7)
    plan = TrainingPlan.fixed(
        num_train=len(train_index), batch_size=16, epochs=2, seed=7, checkpoint_every=200
    )
    plain = train_plain(TINY_RECIPE, header.schema, x[train_index], y[train_index], plan)
    assert plain == enclave_weights


# 30 ms a step: after the first checkpoint (the end of epoch 1) the job still has about
# 6 s to run, so a test can look at it and kill it before it ends, even on a crowded
# machine where each `chiron` command takes seconds to start.
SLOW_STEPS = (
    "\nimport time\n_sleep = time.sleep\n"
    "def train_step(model, optimizer, x, y, hp):\n"
    "    import torch.nn.functional as F\n"
    "    _sleep(0.03)\n"
    "    optimizer.zero_grad()\n"
    "    loss = F.cross_entropy(model(x), y)\n"
    "    loss.backward()\n"
    "    optimizer.step()\n"
    "    return loss\n"
)


def _killed_mid_job(run_chiron, chiron_home, args, *, whole_machine: bool) -> None:
    """Run `chiron train ARGS` and SIGKILL it once the job has sealed a checkpoint.

    Meanwhile another command may look at the job it runs. `whole_machine`: every
    process of the job dies at once (a power cut); otherwise only the client's own
    process, its enclave left to notice it is gone.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(chiron_home)
    process = subprocess.Popen(
        [sys.executable, "-m", "chiron", *map(str, args)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    checkpoints = chiron_home / "jobs"
    while time.monotonic() < deadline and not list(checkpoints.glob("*/checkpoint.sealed")):
        time.sleep(0.1)
    listed = run_chiron("service", "jobs", "list", "--local", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "running" in [job["state"] for job in json.loads(listed.stdout)]
    time.sleep(0.5)
    if whole_machine:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list(checkpoints.glob("*/checkpoint.sealed"))


@pytest.mark.parametrize("how", ["train-again", "jobs-resume"])
def test_a_local_job_killed_mid_run_resumes_to_the_same_weights(
    world, run_chiron, chiron_home, how
):
    """`--local` runs its job on this machine's host: a killed run resumes like a service's.

    Re-running the same `chiron train` continues the job; so does `chiron service jobs
    resume JOB --local`, with the job id `chiron service jobs list --local` shows.
    """
    slow_recipe = world.write_recipe(
        "slow.py",
        TINY_RECIPE.replace('"epochs": 2, "batch_size": 16', '"epochs": 4, "batch_size": 4')
        + SLOW_STEPS,
    )
    reference = run_chiron(*train_args(world, recipe=slow_recipe, out=world.root / "ref.chm"))
    assert reference.returncode == 0, reference.stderr
    resumed_out = world.root / "resumed.chm"
    args = train_args(world, recipe=slow_recipe, out=resumed_out)
    _killed_mid_job(run_chiron, chiron_home, args, whole_machine=how == "train-again")
    assert not resumed_out.exists()

    listed = run_chiron("service", "jobs", "list", "--local", "--json")
    assert listed.returncode == 0, listed.stderr
    states = sorted((job["state"], job["status"]) for job in json.loads(listed.stdout))
    assert states == [("done", "done"), ("interrupted", "interrupted (host_restart)")]
    job = next(j["id"] for j in json.loads(listed.stdout) if j["state"] == "interrupted")
    shown = run_chiron("service", "jobs", "show", job, "--local")
    assert f"chiron service jobs resume {job} --local" in shown.stdout

    if how == "train-again":
        resumed = run_chiron(*args, "--json")
    else:
        resumed = run_chiron(
            "service", "jobs", "resume", job, "--local", "--owner", world.owner,
            "--dataset", world.dataset, "--data-key", world.data_key, "--out", resumed_out,
            "--allow-simulation", "--json",
        )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    after = run_chiron("service", "jobs", "list", "--local", "--json").stdout
    assert json.loads(resumed.stdout)["job"] == job, after
    assert json.loads(resumed.stdout)["resumed_from_step"] > 0
    first = open_model(world.root / "ref.chm", world.owner, world.provider).weights
    second = open_model(resumed_out, world.owner, world.provider).weights
    assert first == second
    # Ended: its checkpoints are gone, and it is not resumed again.
    assert not list((chiron_home / "jobs").glob("*/checkpoint.sealed"))
    again = run_chiron("service", "jobs", "show", job, "--local", "--json")
    assert json.loads(again.stdout)["state"] == "done"


# `chiron` as a terminal starts it: Ctrl-C raises KeyboardInterrupt. A test run started
# in the background of a non-interactive shell inherits SIGINT ignored, and Python keeps
# an ignored SIGINT ignored, so the command sets the default handler back first.
AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'chiron'; runpy.run_module('chiron', run_name='__main__', alter_sys=True)"
)


def test_ctrl_c_leaves_a_local_job_interrupted_to_resume(world, run_chiron, chiron_home):
    """SIGINT stops the client's enclave and marks its job interrupted, checkpoints kept."""
    slow_recipe = world.write_recipe(
        "slow.py",
        TINY_RECIPE.replace('"epochs": 2, "batch_size": 16', '"epochs": 4, "batch_size": 4')
        + SLOW_STEPS,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(chiron_home)
    args = train_args(world, recipe=slow_recipe, out=world.root / "model.chm")
    process = subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = chiron_home / "jobs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(checkpoints.glob("*/checkpoint.sealed")):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    listed = run_chiron("service", "jobs", "list", "--local", "--json")
    jobs = json.loads(listed.stdout)
    assert [(job["state"], job["reason"]) for job in jobs] == [("interrupted", "host_restart")]
    assert list(checkpoints.glob(f"{jobs[0]['id']}/checkpoint.sealed"))
    assert not (world.root / "model.chm").exists()
