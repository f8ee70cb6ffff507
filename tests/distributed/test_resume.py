"""A group job killed mid-run continues when its command runs again, to the same weights.

The group's workers seal checkpoints just before the exchanges the schedule names and
keep their last two; the same `chiron train --local --workers 2` finds the job by its
terms, attests a fresh group, and resumes from the latest step both workers hold. What
the host can do to the checkpoints costs only time: a worker's state handed to another
worker opens for neither, and the group starts over to the same model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from e2e.model_access import open_model

from .conftest import World, make_world

# One worker runs them in turn: they share the uninterrupted reference run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("group-resume")]

CHECKPOINT = "checkpoint.sealed"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    world = make_world(tmp_path_factory.mktemp("world"), {"a": 3000})
    reference = world.chiron(
        *world.train_args("a", world.root / "ref.chm", recipe=world.slow_recipe), "--local"
    )
    assert reference.returncode == 0, reference.stderr
    return world


def group_jobs(world: World) -> list[Path]:
    """The kept jobs' folders (each job's lock lies beside its folder)."""
    folder = world.home / "group-jobs"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def start_killable(world: World, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(world.home)
    args = world.train_args("a", out, recipe=world.slow_recipe)
    return subprocess.Popen(
        [sys.executable, "-m", "chiron", *map(str, args), "--local"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoints(world: World, process: subprocess.Popen[str], count: int = 1) -> Path:
    """The job's folder, once both workers hold `count` checkpoints (the previous kept)."""
    names = [CHECKPOINT, "checkpoint.previous.sealed"][:count]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for job in group_jobs(world):
            if all((job / f"worker-{r}" / n).exists() for r in (1, 2) for n in names):
                return job
        time.sleep(0.1)
    raise AssertionError(f"no checkpoints before the job ended: {process.communicate()}")


def weights(world: World, model: Path) -> dict:
    return open_model(model, world.owner, world.provider).weights


def resume(world: World, out: Path, job: Path) -> int:
    """Run the same command again: it continues `job` to the reference's weights, and
    ends it (its folder and checkpoints gone: the next run is a new job). Returns the
    step it resumed from."""
    args = world.train_args("a", out, recipe=world.slow_recipe)
    result = world.chiron(*args, "--local", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["job"] == job.name
    assert weights(world, out) == weights(world, world.root / "ref.chm")
    assert list((world.home / "group-jobs").iterdir()) == []  # folder and lock gone
    return int(summary["resumed_from_step"])


def test_a_group_killed_with_its_machine_resumes_to_the_same_weights(world):
    out = world.root / "killed.chm"
    process = start_killable(world, out)
    job = wait_for_checkpoints(world, process, count=2)
    os.killpg(process.pid, signal.SIGKILL)  # a power cut: every process of the job at once
    process.wait()
    assert not out.exists()
    assert group_jobs(world) == [job]

    assert resume(world, out, job) > 0


def test_a_lost_worker_fails_the_run_and_the_same_command_continues_it(world):
    out = world.root / "lost.chm"
    process = start_killable(world, out)
    job = wait_for_checkpoints(world, process)
    client = psutil.Process(process.pid)
    worker = next(
        p for p in client.children() if "--role" in p.cmdline() and "train" in p.cmdline()
    )
    worker.kill()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "the same command continues the job" in lines[0], stderr
    assert not out.exists()
    assert group_jobs(world) == [job]

    assert resume(world, out, job) > 0


def test_checkpoints_swapped_between_workers_open_for_neither(world):
    """The host hands worker 1's states to worker 2 and back: the group starts over."""
    out = world.root / "swapped.chm"
    process = start_killable(world, out)
    job = wait_for_checkpoints(world, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    one, two, spare = (job / "worker-1", job / "worker-2", job / "spare")
    shutil.move(one, spare)
    shutil.move(two, one)
    shutil.move(spare, two)

    assert resume(world, out, job) == 0
