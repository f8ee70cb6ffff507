"""How a distributed job fails: a dead worker, an enclave that fails attestation, bad usage.

Always with one clear line and no model file, and never by hanging.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from chiron.client.attestation import local_sim_roots
from chiron.client.distributed import ExchangeTimeouts, run_distributed_training
from chiron.client.sessions import LocalEnclaveSession
from chiron.client.statements import load_statement
from chiron.core.attestation import Policy
from chiron.core.contract import TrainMaterials
from chiron.core.dataset import read_dataset_header_and_digest
from chiron.core.errors import AttestationError, IntegrityError
from chiron.core.keys import Identity, load_data_key, load_identity
from chiron.core.manifest import DatasetRef, Plan
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


def _records_shared(enclave: psutil.Process) -> bool:
    """Whether the enclave wrote its sandbox's shared data file (`--data-fd` of the child)."""
    for bootstrap in enclave.children():
        command = bootstrap.cmdline()
        if "--data-fd" in command:
            data_fd = command[command.index("--data-fd") + 1]
            # The bootstrap closed it; its one child, the worker, keeps it.
            for worker in bootstrap.children():
                try:
                    return os.stat(f"/proc/{worker.pid}/fd/{data_fd}").st_size > 0
                except OSError:
                    return False
    return False


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
    # Training runs once both workers gave their sandboxed child the records. (The child
    # itself exists from the enclave's start: it is started ahead of the job.)
    while time.monotonic() < deadline and process.poll() is None:
        workers = [
            p for p in client.children() if "--role" in p.cmdline() and "train" in p.cmdline()
        ]
        if len(workers) == 2 and all(_records_shared(p) for p in workers):
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


class HostRewrites:
    """A member as a hostile host runs it: `rewrite` changes the client's arguments to one call."""

    def __init__(self, session: LocalEnclaveSession, call: str, rewrite) -> None:
        self._session = session
        self._call = call
        self._rewrite = rewrite

    def evidence(self, nonce: bytes) -> bytes:
        return self._session.evidence(nonce)

    def call(self, name: str, args: dict[str, Any], on_event=None) -> dict[str, Any]:
        if name == self._call:
            args = self._rewrite(args)
        return self._session.call(name, args, on_event)

    def kill(self) -> None:
        self._session.kill()

    def close(self) -> None:
        self._session.close()


def host_args(world: World) -> dict[str, Any]:
    """What the host adds to a training enclave's `train` call: recipe, statement, dataset."""
    chd, _ = world.dataset("a")
    materials = TrainMaterials(
        recipe_name=world.recipe.name,
        recipe_source=world.recipe.read_bytes(),
        recipe_statement=load_statement(world.statement(world.recipe)),
        dataset_path=str(chd),
    )
    return {"train": materials.to_wire()}


def run_job(world: World, server, workers, **options: Any):
    """The owner's distributed flow against these members (a two-worker plan)."""
    chd, key = world.dataset("a")
    header, digest = read_dataset_header_and_digest(chd)
    settings: dict[str, Any] = {
        "job_id": "refused",
        "data_key": load_data_key(key),
        "dataset": DatasetRef(header.dataset_id, digest),
        "owner": load_identity(world.owner),
        "statement": load_statement(world.statement(world.recipe)),
        "plan": Plan(seed=0, workers=2, exchange_every=10),
        "policy": Policy(measurements=(measure_runtime().hex,), UNSAFE_allow_simulation=True),
        "state_dir": world.home,
        "store_host": "127.0.0.1",
        **options,
    }
    try:
        return run_distributed_training(server, workers, **settings)
    finally:
        for session in (server, *workers):
            session.close()


def test_an_enclave_that_fails_attestation_is_refused_by_its_peers(world, tmp_path):
    """Worker 2 runs on a simulated platform the other enclaves do not trust.

    The owner's client here trusts both platforms, so it is the parameter server that
    refuses worker 2, and the job fails with that reason before any data is touched.
    """
    other_platform = tmp_path / "elsewhere"
    server = LocalEnclaveSession("paramserver", world.home)
    workers = [
        LocalEnclaveSession("train", world.home, extra_args=host_args(world)),
        LocalEnclaveSession("train", other_platform, extra_args=host_args(world)),
    ]
    with pytest.raises(AttestationError) as refused:
        run_job(
            world,
            server,
            workers,
            sim_roots=lambda: local_sim_roots(world.home) + local_sim_roots(other_platform),
        )
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


def impostor_in_place_of_worker_2(args: dict[str, Any]) -> dict[str, Any]:
    """The host names an enclave of its own as worker 2 (keys it would read along with)."""
    group = dict(args["group"])
    group["members"] = [*group["members"][:2], Identity.generate().public.to_bytes()]
    return {**args, "group": group}


def test_a_host_that_names_other_members_is_refused_by_every_enclave(world):
    """The host rewrites the members in every member's call: none of them starts."""
    server = HostRewrites(
        LocalEnclaveSession("paramserver", world.home), "exchange", impostor_in_place_of_worker_2
    )
    workers = [
        HostRewrites(
            LocalEnclaveSession("train", world.home, extra_args=host_args(world)),
            "train",
            impostor_in_place_of_worker_2,
        )
        for _ in range(2)
    ]
    with pytest.raises(IntegrityError) as refused:
        run_job(world, server, workers)
    message = str(refused.value)
    assert message.startswith(("parameter server: ", "worker 1: "))
    assert message.endswith("the job's members are not the enclaves the owner's manifest names")


def test_a_host_that_names_other_members_to_one_worker_fails_the_job(world):
    """Only worker 2's call names the impostor: worker 2 refuses, the others give up."""
    server = LocalEnclaveSession("paramserver", world.home)
    workers = [
        LocalEnclaveSession("train", world.home, extra_args=host_args(world)),
        HostRewrites(
            LocalEnclaveSession("train", world.home, extra_args=host_args(world)),
            "train",
            impostor_in_place_of_worker_2,
        ),
    ]
    started = time.monotonic()
    with pytest.raises(IntegrityError) as refused:
        run_job(world, server, workers, timeouts=ExchangeTimeouts(handshake=10.0))
    assert str(refused.value) == (
        "worker 2: the job's members are not the enclaves the owner's manifest names"
    )
    assert time.monotonic() - started < 120


def test_the_owner_refuses_simulated_enclaves_unless_allowed(world):
    out = world.root / "refused.chm"
    args = [a for a in world.train_args("a", out) if a != "--allow-simulation"]
    result = world.chiron(*args, "--local")
    assert_one_line_failure(result, "enclave refused", "simulated")
    assert not out.exists()


def test_a_recipe_its_provider_did_not_sign_as_is_refused(world, tmp_path):
    """Before any enclave starts: no statement, a recipe changed after it was signed, or
    a statement by another provider than the one the owner pinned."""
    out = world.root / "unsigned.chm"
    unsigned = tmp_path / "unsigned.py"
    unsigned.write_text(world.recipe.read_text())
    result = world.chiron(*world.train_args("a", out, recipe=unsigned), "--local")
    assert_one_line_failure(result, "has no signed statement", "chiron recipe sign")

    changed = tmp_path / "changed.py"
    changed.write_text(world.recipe.read_text().replace("32", "64"))
    world.statement(changed).write_bytes(world.statement(world.recipe).read_bytes())
    result = world.chiron(*world.train_args("a", out, recipe=changed), "--local")
    assert_one_line_failure(result, "not the one its provider's statement signs")

    other = tmp_path / "other.key"
    assert world.chiron("keygen", "--out", other).returncode == 0
    args = world.train_args("a", out, pin_provider=False)
    result = world.chiron(*args, "--provider", f"{other}.pub", "--local")
    assert_one_line_failure(result, "the recipe is signed by provider", "not by the expected")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--local", "--rendezvous", "127.0.0.1:1"], ["exactly one of"]),
        (["--local", "--workers", "1", "--wire-trace", "t.json"], ["--wire-trace"]),
        (["--local", "--workers", "1", "--async-staleness", "2"], ["--async-staleness"]),
        (["--url", "http://127.0.0.1:9", "--workers", "2"], ["--local or --rendezvous"]),
        # The client signs a manifest naming the recipe's statement: it needs it.
        (["--rendezvous", "127.0.0.1:1", "--workers", "2"], ["--statement"]),
        (
            ["--rendezvous", "nowhere", "--workers", "2", "--statement", "{statement}"],
            ["HOST:PORT"],
        ),
    ],
)
def test_bad_distributed_usage_is_one_line(world, extra, words):
    out = world.root / "usage.chm"
    args = [a for a in world.train_args("a", out) if a not in ("--workers", 2)]
    extra = [a.format(statement=world.statement(world.recipe)) for a in extra]
    result = world.chiron(*args, *extra)
    assert_one_line_failure(result, *words)
    assert not out.exists()
