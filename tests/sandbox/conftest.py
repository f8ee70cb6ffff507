"""The red team's harness: run a recipe in the real sandbox, record what the enclave saw.

Each attack runs in a fresh sandboxed child driven through the whole training
conversation on small synthetic data (`run_synthetic`, the same driver as `chiron recipe
dry-run`, here in confidential mode: no output is let through). The harness records
every payload the enclave side received, and after the run checks that no process of
the sandbox is left.
"""

from __future__ import annotations

import os
import socket
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from chiron.core.recipe_protocol import FromChild, ReasonClass
from chiron.core.schema import DatasetSchema
from chiron.enclave.sandbox import Sandbox, SandboxFailure, SandboxLimits
from chiron.enclave.sandbox.dryrun import SyntheticRunReport, run_synthetic

SCHEMA = DatasetSchema((1, 8, 8), "uint8", 4)
RECORDS = 40
LOOT_BYTES = 256

# Every attack recipe starts from this one: a small model with a `loot` buffer that ends
# up in the weights, so whatever an attack manages to obtain would leave the sandbox in
# the MODEL frame (and the test would find it there).
RECIPE_PRELUDE = textwrap.dedent(
    """
    import ctypes, mmap, os, signal, socket, stat, struct, sys, threading, time
    import torch
    from torch import nn

    HYPERPARAMETERS = {"epochs": 1, "batch_size": 16, "lr": 0.01}
    LOOT = bytearray(256)

    def keep(data):
        data = bytes(data)[:256]
        LOOT[: len(data)] = data

    def out_fd():
        # The write end of the channel to the enclave: the one writable pipe.
        for fd in range(3, 64):
            try:
                mode = os.fstat(fd).st_mode
                flags = __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFL)
            except OSError:
                continue
            if stat.S_ISFIFO(mode) and flags & os.O_ACCMODE == os.O_WRONLY:
                return fd
        raise RuntimeError("no channel found")

    def frame(kind, payload=b""):
        return struct.pack(">BI", kind, len(payload)) + payload

    libc = ctypes.CDLL(None, use_errno=True)

    class Model(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.linear = nn.Linear(64, classes)
            self.register_buffer("loot", torch.zeros(256, dtype=torch.uint8))

        def forward(self, x):
            with torch.no_grad():
                self.loot.copy_(torch.tensor(list(LOOT), dtype=torch.uint8))
            return self.linear(x.flatten(1))

    def build_model(schema):
        return Model(schema.num_classes)
    """
)


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def recipe(*attack: str) -> bytes:
    """A full recipe: the prelude, then the attack (top-level code and/or hooks)."""
    return "\n".join([RECIPE_PRELUDE, *map(textwrap.dedent, attack)]).encode()


@dataclass
class Outcome:
    """How an attack ended, and everything the enclave side received from the child."""

    reason: str | None
    message: str
    received: list[tuple[int, bytes]] = field(default_factory=list)
    report: SyntheticRunReport | None = None
    host_output: str = ""  # what reached the enclave side's own stdout and stderr

    def all_bytes(self) -> bytes:
        return b"".join(payload for _, payload in self.received)

    def loot(self) -> bytes:
        """The loot buffer of the final model (the run must have succeeded)."""
        models = [payload for kind, payload in self.received if kind == FromChild.MODEL]
        assert len(models) == 1, "no model was received"
        return bytes(safetensors.numpy.load(models[0])["loot"].astype(np.uint8))


@pytest.fixture
def marker() -> str:
    return f"CHIRON-RED-TEAM-{uuid.uuid4().hex}"


@pytest.fixture
def run_attack(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]):
    """Run an attack recipe; return its Outcome after checking the sandbox is gone."""
    received: list[tuple[int, bytes]] = []
    spawned: list[Sandbox] = []
    original_expect = Sandbox.expect
    original_spawn = Sandbox.spawn.__func__

    def recording_expect(self: Sandbox, kind: FromChild, **kwargs: object) -> bytes:
        payload = original_expect(self, kind, **kwargs)
        received.append((int(kind), payload))
        return payload

    def recording_spawn(cls: type[Sandbox], **kwargs: object) -> Sandbox:
        sandbox = original_spawn(cls, **kwargs)
        spawned.append(sandbox)
        return sandbox

    monkeypatch.setattr(Sandbox, "expect", recording_expect)
    monkeypatch.setattr(Sandbox, "spawn", classmethod(recording_spawn))

    def run(
        source: bytes,
        *,
        limits: SandboxLimits | None = None,
        schema: DatasetSchema = SCHEMA,
        records: int = RECORDS,
    ) -> Outcome:
        received.clear()
        try:
            report = run_synthetic(
                source,
                filename="attack.py",
                schema=schema,
                records=records,
                limits=limits or SandboxLimits(threads=1, wall_timeout_seconds=60),
                dry_run=False,
            )
            outcome = Outcome(None, "", list(received), report)
        except SandboxFailure as failure:
            outcome = Outcome(failure.reason_class, str(failure), list(received))
            # The message is the fixed text of its class: nothing of the child's.
            assert outcome.message == str(SandboxFailure(ReasonClass(failure.reason_class)))
        for sandbox in spawned:
            _assert_gone(sandbox)
        captured = capfd.readouterr()
        outcome.host_output = captured.out + captured.err
        return outcome

    return run


def _assert_gone(sandbox: Sandbox) -> None:
    assert sandbox._process.poll() is not None, "the sandbox bootstrap is still running"
    with pytest.raises(ProcessLookupError):
        os.killpg(sandbox.pid, 0)  # nothing left in the sandbox's process group


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    """A loopback TCP server on a free port; tests assert it never got a connection."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def nothing_arrived(server: socket.socket) -> bool:
    try:
        if server.type == socket.SOCK_STREAM:
            server.accept()
        else:
            server.recvfrom(65536)
    except BlockingIOError:
        return True
    return False


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory outside /tmp (so the sandbox's empty /tmp does not hide it): only
    Landlock stands between it and the recipe."""
    base = Path.home() / f".chiron-red-team-{uuid.uuid4().hex}"
    base.mkdir(mode=0o700)
    yield base
    for path in sorted(base.rglob("*"), reverse=True):
        path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
    base.rmdir()
