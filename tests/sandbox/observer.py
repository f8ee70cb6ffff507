"""The host's view of a running sandbox: what any process may read in the host's /proc.

`watch_sandbox` samples the worker's thread names, signal masks and thread count from
the moment the enclave first speaks to the confined child (SETUP: the recipe has not
run yet, so the first sample is the sandbox's own state) until the run ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chiron.enclave.sandbox import Sandbox

_STATUS_FIELDS = ("SigBlk", "SigIgn", "SigCgt")


@dataclass
class HostView:
    """Samples of the worker's per-thread state as the host's /proc shows it."""

    names: set[str] = field(default_factory=set)
    masks: set[tuple[str, str, str]] = field(default_factory=set)
    first_names: set[str] = field(default_factory=set)
    first_masks: set[tuple[str, str, str]] = field(default_factory=set)
    thread_counts: list[int] = field(default_factory=list)
    samples: int = 0


def worker_pid(sandbox: Sandbox) -> int | None:
    """Host PID of the worker (the bootstrap's only child), if it runs."""
    try:
        children = Path(f"/proc/{sandbox.pid}/task/{sandbox.pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _sample(pid: int) -> tuple[set[str], set[tuple[str, str, str]], int] | None:
    names: set[str] = set()
    masks: set[tuple[str, str, str]] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        threads = int(_status(Path(f"/proc/{pid}/status"))["Threads"])
    except (OSError, KeyError):
        return None
    for task in tasks:
        try:
            names.add((task / "comm").read_text().rstrip("\n"))
            status = _status(task / "status")
            masks.add(tuple(status[name] for name in _STATUS_FIELDS))  # type: ignore[arg-type]
        except (OSError, KeyError):
            continue  # the thread ended meanwhile
    return names, masks, threads


def _status(path: Path) -> dict[str, str]:
    fields = (line.split(":\t", 1) for line in path.read_text().splitlines())
    return {pair[0]: pair[1].strip() for pair in fields if len(pair) == 2}


@contextmanager
def watch_sandbox(
    monkeypatch: pytest.MonkeyPatch,
    period: float = 0.01,
    which: Callable[[Sandbox], bool] = lambda _: True,
) -> Iterator[HostView]:
    """Sample the worker's state in the host's /proc from SETUP until the block ends.

    With several sandboxes running, `which` picks the one to watch (the first to speak).
    """
    view = HostView()
    started = threading.Event()
    done = threading.Event()
    target: list[Sandbox] = []
    original_send: Callable[..., None] = Sandbox.send

    def send(self: Sandbox, kind: object, payload: bytes | memoryview = b"") -> None:
        if not target and which(self):
            target.append(self)
            pid = worker_pid(self)
            first = _sample(pid) if pid else None
            if first is not None:
                view.first_names, view.first_masks = first[0], first[1]
            started.set()
        original_send(self, kind, payload)

    def observe() -> None:
        started.wait()
        pid = worker_pid(target[0])
        while pid is not None and not done.is_set():
            sample = _sample(pid)
            if sample is None:
                break
            view.names |= sample[0]
            view.masks |= sample[1]
            view.thread_counts.append(sample[2])
            view.samples += 1
            done.wait(period)

    monkeypatch.setattr(Sandbox, "send", send)
    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    try:
        yield view
    finally:
        done.set()
        started.set()
        observer.join()
