"""Starting a sandbox's child: its pipes, its command line and environment, its limits.

The enclave process is torch-free and single-purpose, so it may start the child with
subprocess; the child confines itself (`chiron.enclave.sandbox.child`) before any
provider code runs and only then reports on a separate "ready" pipe. `Sandbox.spawn`
(`supervisor`) starts a child here and speaks to it once it is confined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import chiron
from chiron.core.errors import EnclaveError
from chiron.core.framing import widen_pipe
from chiron.enclave.sandbox import pids
from chiron.enclave.sandbox.shared_file import SharedFile

# What the child writes on its ready pipe once confined (anything else: why it failed).
READY = b"confined"
# glibc's allocator for the recipe: tensors up to 32 MiB come from the heap rather than
# their own mmap, and up to 128 MiB freed at the heap's top stays there. With glibc's
# defaults every training step gives its activations back to the kernel and faults them
# in again: millions of page faults an epoch, a quarter of the CNN's wall time on the
# reference machine (docs/benchmarks.md, "End to end"), for about 10 % more peak memory.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728"


@dataclass(frozen=True)
class SandboxLimits:
    """Resources of one sandboxed child.

    `memory_bytes` bounds the address space (torch reserves far more than it touches,
    hence the generous default); `cpu_seconds` is CPU time across all threads after
    the warm-up; `tasks` caps the sandbox's processes and threads together (torch's
    pools need a few; a recipe's own threads count too); `threads` is the size of
    torch's thread pool; `wall_timeout_seconds` bounds each send() and expect(), and
    `job_timeout_seconds` the whole life of the sandbox from spawn().
    """

    memory_bytes: int = 8 * 2**30
    cpu_seconds: int = 24 * 3600
    open_files: int = 64
    tasks: int = 256
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    wall_timeout_seconds: float = 600.0
    job_timeout_seconds: float = 7 * 24 * 3600.0
    startup_timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpu_seconds", "open_files", "tasks", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"sandbox limit {name} must be a positive integer")
        timeouts = (
            self.wall_timeout_seconds,
            self.job_timeout_seconds,
            self.startup_timeout_seconds,
        )
        if min(timeouts) <= 0:
            raise ValueError("sandbox timeouts must be positive")


@dataclass(frozen=True)
class StartedChild:
    """A child just started: its process, and the enclave's ends of its pipes."""

    process: subprocess.Popen[bytes]
    to_child: int
    from_child: int
    ready: int
    output_relay: threading.Thread | None
    pids_group: Path | None
    started: float
    shared: SharedFile


def start_child(
    *,
    limits: SandboxLimits,
    entry: str,
    dry_run: bool,
    output: Callable[[bytes], None] | None,
) -> StartedChild:
    """Start a child; it is not confined yet (see `await_confinement`).

    `dry_run` connects the child's stdout and stderr to `output` (default: this
    process's stderr) for a provider debugging on synthetic data; otherwise they
    are /dev/null. Raises EnclaveError if the child could not be started.
    """
    started = time.monotonic()
    to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
    from_child_r, from_child_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    shared = SharedFile("chiron-data")
    log_r = log_w = None
    if dry_run:
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
    for fd in (to_child_w, from_child_w):
        widen_pipe(fd)
    command = [
        sys.executable, "-s", "-P", "-B", "-m", "chiron.enclave.sandbox.child",
        "--in-fd", str(to_child_r), "--out-fd", str(from_child_w),
        "--ready-fd", str(ready_w), "--data-fd", str(shared.reader_fd),
        "--limits", json.dumps(dataclasses.asdict(limits)),
        "--entry", entry,
    ]  # fmt: skip
    if dry_run:
        command.append("--dry-run")
    pids_group = pids.create(limits.tasks)
    if pids_group is not None:
        command += ["--pids-cgroup", str(pids_group)]
    child_side = (to_child_r, from_child_w, ready_w, *((log_w,) if log_w is not None else ()))
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_w if dry_run else subprocess.DEVNULL,
            stderr=log_w if dry_run else subprocess.DEVNULL,
            pass_fds=(to_child_r, from_child_w, ready_w, shared.reader_fd),
            env=_child_environment(entry, limits, dry_run=dry_run),
            cwd="/",
            # Its own process group: close() can kill the bootstrap and the worker
            # together, and terminal signals (sent to the foreground group) miss
            # it. Not a session of its own: that would also be a scheduling
            # autogroup of its own, measurably slower for torch's thread pool.
            process_group=0,
        )
    except OSError as exc:
        for fd in (to_child_w, from_child_r, ready_r, *((log_r,) if log_r is not None else ())):
            os.close(fd)
        if pids_group is not None:
            pids.remove(pids_group)
        shared.close()
        raise EnclaveError(f"could not start the sandbox: {exc.strerror}") from None
    finally:
        for fd in child_side:
            os.close(fd)
        shared.release_reader()
    relay = None
    if log_r is not None:
        relay = threading.Thread(
            target=_relay_output, args=(log_r, output or _write_stderr), daemon=True
        )
        relay.start()
    return StartedChild(
        process, to_child_w, from_child_r, ready_r, relay, pids_group, started, shared
    )


def await_confinement(ready_fd: int, deadline: float) -> None:
    """Wait for the child's report on its ready pipe: READY once confined, else why not.

    Up to the deadline the report ends when the child closes the pipe. Past it, a report
    already there is taken as it is: a child started ahead of its job (`Sandbox.start`)
    may have confined itself long before anyone asks, and READY is one write (under
    PIPE_BUF) that only the close follows. Nothing at all by then: EnclaveError.
    """
    report = b""
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([ready_fd], [], [], remaining)
        if not readable:
            if remaining > 0:
                continue
            if report:
                break  # READY, or why not: judged below
            raise EnclaveError("the sandbox did not start in time")
        chunk = os.read(ready_fd, 256)
        if not chunk:
            break
        report += chunk
        if report == READY and remaining <= 0:
            break
    if report != READY:
        # Written by the bootstrap before any provider code ran: our own text.
        detail = report.decode("ascii", "replace").strip() or "no report"
        detail = "".join(c if c.isprintable() else "?" for c in detail)[:200]
        raise EnclaveError(f"the sandbox could not be set up ({detail})")


def _child_environment(entry: str, limits: SandboxLimits, *, dry_run: bool) -> dict[str, str]:
    """Nothing of the enclave's environment: just where to find Chiron and the runtime."""
    roots = [str(Path(chiron.__file__).resolve().parent.parent)]
    entry_root = _module_root(entry)
    if entry_root not in roots:
        roots.append(entry_root)
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(roots),
        "OMP_NUM_THREADS": str(limits.threads),
        # torch._dynamo (imported by every optimizer) creates a cache directory at
        # import unless this names one that exists: the empty, read-only /tmp.
        "TORCHINDUCTOR_CACHE_DIR": "/tmp",  # noqa: S108  (hidden by an empty tmpfs)
        "GLIBC_TUNABLES": MALLOC_TUNABLES,
        # A dry run's output must reach the provider even when the child is killed
        # right after a failure: no buffering.
        **({"PYTHONUNBUFFERED": "1"} if dry_run else {}),
    }


def _module_root(name: str) -> str:
    """The sys.path entry from which `name` is imported (found without running it)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise EnclaveError(f"the sandbox entry module {name} is not installed")
    origin = Path(spec.origin).resolve()
    depth = name.count(".") + (2 if origin.name == "__init__.py" else 1)
    return str(origin.parents[depth - 1])


def _relay_output(fd: int, sink: Callable[[bytes], None]) -> None:
    try:
        while chunk := os.read(fd, 65536):
            sink(chunk)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_stderr(chunk: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(2, chunk)
