"""A training enclave starts its sandbox when attested, and gives it to its one job.

The child confines itself and warms torch up while the client checks the evidence
(`EnclaveContext.start_sandbox_ahead`). It has been given nothing when the job takes it; one that
died meanwhile is replaced; an enclave that never trains leaves no child behind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from tests.sandbox.conftest import running

from chiron.client.sessions import LocalEnclaveSession
from chiron.core.roles import Role
from chiron.enclave.context import EnclaveContext


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    for _ in range(600):
        if not running(pid):
            return True
        time.sleep(0.1)
    return False


def _train_context(tmp_path: Path) -> EnclaveContext:
    return EnclaveContext.create(role=Role.TRAIN, state_dir=str(tmp_path), platform_name="sim")


def test_the_job_takes_the_sandbox_started_when_attested_once(tmp_path):
    context = _train_context(tmp_path)
    try:
        assert context._sandbox_ahead is None  # an enclave nobody attested holds none
        context.start_sandbox_ahead()
        early = context._sandbox_ahead
        assert early is not None
        context.start_sandbox_ahead()  # once per process
        assert context._sandbox_ahead is early
        first = context.recipe_sandbox()
        assert first is early
        assert first._ready is None  # confined: it takes words now
        with context.recipe_sandbox() as second:  # a later one is a new child
            assert second is not early
            assert second.pid != early.pid
        context.start_sandbox_ahead()  # after the job took its sandbox: nothing more
        assert context._sandbox_ahead is None
        first.close()
    finally:
        context.close()


def test_an_early_child_that_died_while_it_waited_is_replaced(tmp_path):
    context = _train_context(tmp_path)
    try:
        context.start_sandbox_ahead()
        early = context._sandbox_ahead
        assert early is not None
        readable = early.confined()  # let it come up, then kill it as it waits
        (worker,) = _children(readable.pid)
        os.kill(worker, signal.SIGKILL)
        assert _gone(readable.pid)
        with context.recipe_sandbox() as sandbox:
            assert sandbox is not early and sandbox.alive()
        assert early._process.poll() is not None
    finally:
        context.close()


@pytest.mark.parametrize("role", [Role.QUERY, Role.PARAMSERVER])
def test_other_roles_start_no_sandbox(tmp_path, role):
    context = EnclaveContext.create(role=role, state_dir=str(tmp_path), platform_name="sim")
    context.start_sandbox_ahead()
    assert context._sandbox_ahead is None


def test_closing_the_context_stops_a_sandbox_no_job_took(tmp_path):
    context = _train_context(tmp_path)
    context.start_sandbox_ahead()
    early = context._sandbox_ahead
    assert early is not None
    group = early._pids_group  # its pids cgroup, where this machine gives one
    context.close()
    assert early._process.poll() is not None
    assert context._sandbox_ahead is None
    assert group is None or not group.exists()


@pytest.mark.parametrize("ending", ["close", "kill"])
def test_a_training_enclave_that_never_trains_leaves_no_child(tmp_path, ending):
    session = LocalEnclaveSession(Role.TRAIN, tmp_path)
    enclave = session._process._process.pid
    try:
        session.evidence(b"n" * 32)  # serving: its context, and the child, exist
        (bootstrap,) = _children(enclave)
    finally:
        getattr(session, ending)()
    # Shut down, the enclave stops its child; killed outright, the child's bootstrap
    # sees the enclave's pipe hang up once it is set up, and ends with its worker.
    assert _gone(bootstrap)


@pytest.mark.parametrize(("role", "started"), [(Role.TRAIN, True), (Role.QUERY, False)])
def test_a_starter_may_ask_for_the_sandbox_with_the_process(tmp_path, role, started):
    # `chiron train --local` starts its enclave as the command begins, for its job.
    context = EnclaveContext.create(
        role=role, state_dir=str(tmp_path), platform_name="sim", sandbox_at_start=True
    )
    try:
        assert (context._sandbox_ahead is not None) is started
        assert context.measurement  # measured as ever, with the child starting meanwhile
    finally:
        context.close()
