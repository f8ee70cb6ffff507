"""How a distributed job fails: a dead worker, an enclave that fails attestation, bad usage.

Always with one clear line and no model file, and never by hanging.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chiron.client.attestation import local_sim_roots
from chiron.client.distributed import ExchangeOptions, run_distributed_training
from chiron.client.sessions import LocalEnclaveSession
from chiron.core.attestation import Policy
from chiron.core.errors import AttestationError
from chiron.core.keys import load_data_key, load_identity, load_public_identity
from chiron.core.measurement import measure_runtime

from .conftest import World, make_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("world"), {"a": 3000})


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_a_dead_worker_fails_the_job_cleanly(world):
    out = world.root / "dead.chm"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(world.home)
    args = world.train_args("a", out, recipe=world.slow_recipe)
    process = subprocess.Popen(
        [sys.executable, "-m", "chiron", *map(str, args), "--local"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = psutil.Process(process.pid)
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    # Training runs once both workers have their sandboxed child.
    while time.monotonic() < deadline and process.poll() is None:
        workers = [
            p for p in client.children() if "--role" in p.cmdline() and "train" in p.cmdline()
        ]
        if len(workers) == 2 and all(p.children() for p in workers):
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    time.sleep(3)
    workers[1].kill()
    # Never hangs: the job ends on its own, well within the test's patience.
    _, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(args, process.returncode, "", stderr)
    # The dead worker is named (which rank it had is the client's business).
    assert_one_line_failure(result, ": the enclave process stopped unexpectedly")
    assert re.search(r"error: worker [12]: ", result.stderr)
    assert not out.exists()
    assert not list(world.root.glob(".dead.chm*"))
    assert psutil.wait_procs([p for p in workers if p.is_running()], timeout=30)[1] == []


def test_an_enclave_that_fails_attestation_is_refused_by_its_peers(world, tmp_path):
    """Worker 2 runs on a simulated platform the other enclaves do not trust.

    The owner's client here trusts both platforms, so it is the parameter server that
    refuses worker 2, and the job fails with that reason before any data is touched.
    """
    other_platform = tmp_path / "elsewhere"
    chd, key = world.dataset("a")
    host_args = {
        "train": {
            "recipe_source": world.recipe.read_bytes(),
            "recipe_name": "r.py",
            "dataset_path": str(chd),
        }
    }
    server = LocalEnclaveSession("paramserver", world.home)
    workers = [
        LocalEnclaveSession("train", world.home, extra_args=host_args),
        LocalEnclaveSession("train", other_platform, extra_args=host_args),
    ]
    try:
        with pytest.raises(AttestationError) as refused:
            run_distributed_training(
                server,
                workers,
                job_id="refused",
                data_key=load_data_key(key),
                owner=load_identity(world.owner),
                provider=load_public_identity(Path(f"{world.provider}.pub")),
                epochs=None,
                seed=0,
                options=ExchangeOptions(workers=2),
                policy=Policy(measurements=(measure_runtime().hex,), UNSAFE_allow_simulation=True),
                state_dir=world.home,
                store_host="127.0.0.1",
                sim_roots=lambda: local_sim_roots(world.home) + local_sim_roots(other_platform),
            )
    finally:
        for session in (server, *workers):
            session.close()
    # Each side refuses the other; the job reports one of them, naming where it happened.
    message = str(refused.value)
    assert message.startswith(
        (
            "parameter server: worker 2 failed attestation: ",
            "worker 2: the parameter server failed attestation: ",
        )
    )
    assert "root of trust: unknown root" in message
    assert "\n" not in message


def test_the_owner_refuses_simulated_enclaves_unless_allowed(world):
    out = world.root / "refused.chm"
    args = [a for a in world.train_args("a", out) if a != "--allow-simulation"]
    result = world.chiron(*args, "--local")
    assert_one_line_failure(result, "enclave refused", "simulated")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--local", "--rendezvous", "127.0.0.1:1"], ["exactly one of"]),
        (["--local", "--workers", "1", "--wire-trace", "t.json"], ["--wire-trace"]),
        (["--local", "--workers", "1", "--async-staleness", "2"], ["--async-staleness"]),
        (["--url", "http://127.0.0.1:9", "--workers", "2"], ["--local or --rendezvous"]),
        (["--rendezvous", "nowhere"], ["HOST:PORT"]),
    ],
)
def test_bad_distributed_usage_is_one_line(world, extra, words):
    out = world.root / "usage.chm"
    args = [a for a in world.train_args("a", out) if a not in ("--workers", 2)]
    result = world.chiron(*args, *extra)
    assert_one_line_failure(result, *words)
    assert not out.exists()
