"""The enclave-side API: limits, confinement on return, failure semantics, closing."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.sandbox.conftest import SCHEMA, recipe, running

from chiron.core.errors import EnclaveError, JobFailed
from chiron.core.recipe_protocol import FromChild, ReasonClass, ToChild, encode_json
from chiron.enclave.sandbox import Sandbox, SandboxFailure, SandboxLimits
from chiron.enclave.sandbox.failures import reason_for_exit


@pytest.mark.parametrize(
    "bad",
    [
        {"memory_bytes": 0},
        {"cpu_seconds": -1},
        {"open_files": 0},
        {"threads": 0},
        {"wall_timeout_seconds": 0},
        {"startup_timeout_seconds": -1.0},
    ],
)
def test_limits_must_be_positive(bad):
    with pytest.raises(ValueError):
        SandboxLimits(**bad)


@pytest.mark.parametrize(
    ("returncode", "reason"),
    [
        (0, ReasonClass.RECIPE_ERROR),
        (3, ReasonClass.RECIPE_ERROR),
        (-signal.SIGSYS, ReasonClass.POLICY_VIOLATION),
        (-signal.SIGXFSZ, ReasonClass.POLICY_VIOLATION),
        (-signal.SIGKILL, ReasonClass.RESOURCE_LIMIT),
        (-signal.SIGXCPU, ReasonClass.RESOURCE_LIMIT),
        (-signal.SIGSEGV, ReasonClass.RECIPE_ERROR),
        (-signal.SIGABRT, ReasonClass.RECIPE_ERROR),
    ],
)
def test_how_a_child_ended_becomes_a_reason_class(returncode, reason):
    assert reason_for_exit(returncode) is reason


@pytest.mark.parametrize("reason", list(ReasonClass))
def test_failures_carry_a_fixed_message_per_class(reason):
    failure = SandboxFailure(reason)
    assert isinstance(failure, JobFailed)
    assert failure.reason_class == reason.value
    assert str(failure).startswith(f"job failed: {reason.value} (")
    assert "\n" not in str(failure)


def test_an_entry_module_that_is_not_installed():
    with pytest.raises(EnclaveError, match="not installed"):
        Sandbox.spawn(limits=SandboxLimits(), entry="chiron.no_such_module")


def test_an_entry_module_that_fails_inside_the_sandbox():
    with pytest.raises(EnclaveError, match=r"could not be set up \(warm-up: RuntimeError\)"):
        Sandbox.spawn(limits=SandboxLimits(threads=1), entry="tests.sandbox.failing_entry")


def _worker_pid_of(bootstrap: int) -> int:
    children = Path(f"/proc/{bootstrap}/task/{bootstrap}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


def test_spawn_returns_a_confined_child():
    limits = SandboxLimits(memory_bytes=6 << 30, open_files=32, threads=2)
    with Sandbox.spawn(limits=limits) as sandbox:
        worker = _worker_pid_of(sandbox.pid)
        status = dict(
            line.split(":\t", 1) for line in Path(f"/proc/{worker}/status").read_text().splitlines()
        )
        assert status["Seccomp"].strip() == "2"  # filter mode
        assert status["NoNewPrivs"].strip() == "1"
        assert status["CapEff"].strip() == status["CapBnd"].strip() == "0000000000000000"
        assert status["Threads"].strip() != "1"  # torch's pool exists, filtered by TSYNC
        assert status["Seccomp_filters"].strip() == "1"
        for namespace in ("user", "mnt", "net", "pid_for_children", "ipc", "uts", "cgroup"):
            ours = os.readlink(f"/proc/self/ns/{namespace}")
            assert os.readlink(f"/proc/{worker}/ns/{namespace}") != ours, namespace
        assert os.readlink(f"/proc/{worker}/ns/pid") != os.readlink("/proc/self/ns/pid")
        limit_lines = Path(f"/proc/{worker}/limits").read_text().splitlines()
        limits_seen = {line[:26].strip(): line[26:].split()[:2] for line in limit_lines[1:]}
        assert limits_seen["Max address space"] == [str(6 << 30)] * 2
        assert limits_seen["Max file size"] == ["0", "0"]
        assert limits_seen["Max open files"] == ["32", "32"]
        assert limits_seen["Max core file size"] == ["0", "0"]
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{worker}/fd"))
        # stdio, the two pipes and the read-only shared data file
        assert fds == [0, 1, 2, *fds[3:]] and len(fds) == 6
    assert sandbox._process.poll() is not None


def test_a_failed_sandbox_is_closed_for_good():
    sandbox = Sandbox.spawn(limits=SandboxLimits(threads=1))
    try:
        with pytest.raises(ValueError):
            sandbox.expect(FromChild.DECLARE, size=1, max_size=1)
        # A SETUP the runtime cannot parse makes it quit: the child exits, unasked.
        sandbox.send(ToChild.SETUP, b"not json")
        with pytest.raises(SandboxFailure) as failure:
            sandbox.expect(FromChild.DECLARE, max_size=1024)
        assert failure.value.reason_class == "recipe_error"
        with pytest.raises(EnclaveError, match="closed"):
            sandbox.send(ToChild.SOURCE, b"")
        with pytest.raises(EnclaveError, match="closed"):
            sandbox.expect(FromChild.DECLARE, max_size=1024)
    finally:
        sandbox.close()
        sandbox.close()  # idempotent


def _declare_an_empty_recipe(sandbox: Sandbox) -> bytes:
    setup = {"mode": "train", "schema": SCHEMA.to_dict(), "recipe_filename": "r.py"}
    sandbox.send(ToChild.SETUP, encode_json({**setup, "overrides": {}}))
    sandbox.send(ToChild.SOURCE, recipe(""))
    return sandbox.expect(FromChild.DECLARE, max_size=64 * 1024)


def test_end_accepts_a_child_that_exits_cleanly():
    with Sandbox.spawn(limits=SandboxLimits(threads=1)) as sandbox:
        _declare_an_empty_recipe(sandbox)
        sandbox.end()
        assert sandbox._process.returncode == 0


def test_the_harness_finds_what_a_recipe_keeps(run_attack, marker):
    # The control for every "no marker" assertion of the attack suite: a marker the
    # recipe may legitimately put in its model is found in the MODEL frame.
    outcome = run_attack(recipe(f"keep(b'{marker}')"))
    assert outcome.reason is None
    assert outcome.loot().startswith(marker.encode())
    assert marker.encode() in outcome.all_bytes()


def test_the_sandbox_ends_when_the_enclave_dies():
    # An enclave process killed outright (no close(), no SIGTERM): the bootstrap sees
    # its pipe hang up and kills the worker, even one busy in an endless loop.
    script = textwrap.dedent(
        f"""
        import time
        from chiron.core.recipe_protocol import ToChild, encode_json
        from chiron.enclave.sandbox import Sandbox, SandboxLimits
        sandbox = Sandbox.spawn(limits=SandboxLimits(threads=1))
        setup = {{"mode": "train", "schema": {SCHEMA.to_dict()!r}, "recipe_filename": "r.py"}}
        sandbox.send(ToChild.SETUP, encode_json(setup))
        sandbox.send(ToChild.SOURCE, b"while True: pass")
        print(sandbox.pid, flush=True)
        time.sleep(600)
        """
    )
    enclave = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        bootstrap = int(enclave.stdout.readline())
        worker = _worker_pid_of(bootstrap)
        assert running(worker)
    finally:
        enclave.kill()
        enclave.wait()
    for _ in range(600):
        if not running(worker) and not running(bootstrap):
            break
        time.sleep(0.1)
    assert not running(worker)
    assert not running(bootstrap)


def test_a_sandbox_started_ahead_takes_no_word_until_it_is_confined():
    sandbox = Sandbox.start(limits=SandboxLimits(threads=1))
    try:
        for word in (
            lambda: sandbox.send(ToChild.SETUP, b"{}"),
            lambda: sandbox.expect(FromChild.DECLARE, max_size=1024),
            lambda: sandbox.share([b"records"]),
        ):
            with pytest.raises(EnclaveError, match="not confined yet"):
                word()
        assert sandbox.confined() is sandbox
        assert sandbox.confined() is sandbox  # once confined, at once
        assert _declare_an_empty_recipe(sandbox)
    finally:
        sandbox.close()
    assert sandbox._process.poll() is not None


def test_a_confinement_report_there_when_asked_is_accepted_past_the_deadline():
    # A training enclave starts its sandbox when it is attested; its job may take it
    # long after the start-up timeout, from a child that reported itself confined.
    limits = SandboxLimits(threads=1, startup_timeout_seconds=0.5)
    sandbox = Sandbox.start(limits=limits)
    try:
        readable, _, _ = select.select([sandbox._ready], [], [], 120)
        assert readable
        while time.monotonic() < sandbox._started + limits.startup_timeout_seconds:
            time.sleep(0.05)
        assert sandbox.confined() is sandbox
        worker = _worker_pid_of(sandbox.pid)
        assert Path(f"/proc/{worker}/status").read_text().count("Seccomp:\t2") == 1
    finally:
        sandbox.close()


def test_a_child_not_confined_by_the_deadline_is_refused_and_killed():
    sandbox = Sandbox.start(limits=SandboxLimits(threads=1, startup_timeout_seconds=0.05))
    with pytest.raises(EnclaveError, match="did not start in time"):
        sandbox.confined()
    assert sandbox._process.poll() is not None
    with pytest.raises(EnclaveError, match="closed"):
        sandbox.send(ToChild.SETUP, b"{}")


def test_a_sandbox_closed_before_it_was_confined_leaves_nothingrunning():
    sandbox = Sandbox.start(limits=SandboxLimits(threads=1))
    bootstrap = sandbox.pid
    time.sleep(0.3)  # mid-way through its set-up
    sandbox.close()
    assert sandbox._process.poll() is not None
    assert not running(bootstrap)
    assert sandbox._ready is None
