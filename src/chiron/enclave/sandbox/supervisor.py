"""Enclave side of the sandbox: speak the recipe protocol to a confined child, judge it.

The child is started and confined by `startup`; `Sandbox.spawn` returns it once it
reported itself confined.

Every frame from the child is checked against what the enclave expects next: its kind,
its exact size (or a maximum), and a deadline. Anything else kills the child. Failures
become `SandboxFailure(reason_class)` whose message is fixed text per class: nothing the
child wrote, no exit status, no signal number crosses into it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NoReturn

from chiron.core.errors import EnclaveError
from chiron.core.framing import HEADER_BYTES
from chiron.core.recipe_protocol import FromChild, ReasonClass, ToChild
from chiron.enclave.sandbox import pids
from chiron.enclave.sandbox.failures import SandboxFailure, reason_for_exit
from chiron.enclave.sandbox.shared_file import RingWriter, SharedFile
from chiron.enclave.sandbox.startup import SandboxLimits, await_confinement, start_child

_HEADER = struct.Struct(">BI")
_CHUNK = 1 << 20
# How long a child that closed its pipe or was told to shut down may take to exit.
_EXIT_GRACE_SECONDS = 3.0


class Sandbox:
    """One confined recipe process and the enclave's end of its two pipes."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        to_child: int,
        from_child: int,
        limits: SandboxLimits,
        output_relay: threading.Thread | None,
        pids_group: Path | None = None,
        started: float | None = None,
        shared: SharedFile | None = None,
    ) -> None:
        self._process = process
        self._shared = shared
        self._pids_group = pids_group
        self._started = time.monotonic() if started is None else started
        # Every deadline of a send or expect also ends here: the job's own.
        self._job_deadline = self._started + limits.job_timeout_seconds
        # A fixed-rate job's current slot end (`until`): no send or expect outlasts it.
        self._slot_deadline: float | None = None
        self._to_child = to_child
        self._from_child = from_child
        self._limits = limits
        self._output_relay = output_relay
        self._killed = False
        self._closed = False
        # The child's ready pipe until it reported itself confined (`start`, `confined`).
        self._ready: int | None = None
        self.startup_seconds = 0.0

    @classmethod
    def spawn(
        cls,
        *,
        limits: SandboxLimits,
        entry: str = "chiron.recipes.runtime",
        dry_run: bool = False,
        output: Callable[[bytes], None] | None = None,
    ) -> Sandbox:
        """Start a child and return once it is confined and ready for SETUP.

        `dry_run` connects the child's stdout and stderr to `output` (default: this
        process's stderr) for a provider debugging on synthetic data; otherwise they
        are /dev/null. Raises EnclaveError if confinement could not be set up.
        """
        return cls.start(limits=limits, entry=entry, dry_run=dry_run, output=output).confined()

    @classmethod
    def start(
        cls,
        *,
        limits: SandboxLimits,
        entry: str = "chiron.recipes.runtime",
        dry_run: bool = False,
        output: Callable[[bytes], None] | None = None,
    ) -> Sandbox:
        """Start a child and return at once; `confined()` waits until it is ready.

        The child confines itself and warms torch up while the enclave does other work.
        Nothing reaches it before `confined()` returned: `send`, `expect`, `share` refuse.
        """
        child = start_child(limits=limits, entry=entry, dry_run=dry_run, output=output)
        sandbox = cls(
            child.process,
            child.to_child,
            child.from_child,
            limits,
            child.output_relay,
            child.pids_group,
            child.started,
            child.shared,
        )
        sandbox._ready = child.ready
        return sandbox

    def confined(self) -> Sandbox:
        """Itself, once the child reported itself confined; else EnclaveError, and closed."""
        if self._ready is None:
            return self
        try:
            await_confinement(self._ready, self._started + self._limits.startup_timeout_seconds)
            os.set_blocking(self._to_child, False)
        except BaseException:
            self.close()
            raise
        finally:
            self._close_ready()
        self.startup_seconds = time.monotonic() - self._started
        return self

    def _close_ready(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            os.close(ready)

    def alive(self) -> bool:
        """Whether the child still runs (one started ahead may have died while it waited)."""
        return not self._closed and self._process.poll() is None

    @property
    def pid(self) -> int:
        """Host PID of the child's bootstrap process (the worker is its only child)."""
        return self._process.pid

    def share(self, parts: Iterable[bytes | memoryview]) -> int:
        """Write the child's shared data file once (see `shared_file`); return its size."""
        self._require_open()
        if self._shared is None:
            raise EnclaveError("this sandbox has no shared data file")
        return self._shared.write_once(parts)

    def share_ring(self, size: int) -> RingWriter:
        """Fix the child's shared data file as a ring of `size` bytes (see `shared_file`).

        The returned writer takes `write_at` from any thread; its caller closes it.
        """
        self._require_open()
        if self._shared is None:
            raise EnclaveError("this sandbox has no shared data file")
        return self._shared.make_ring(size)

    def time_left(self) -> float:
        """Seconds to the earliest deadline in force: the job's, or a fixed-rate slot's."""
        return max(0.0, self._deadline(self._limits.job_timeout_seconds) - time.monotonic())

    def notify(self, kind: ToChild, payload: bytes = b"") -> None:
        """Send one small frame now, even while the child speaks (its words stay queued).

        For word the child reads only when it needs it, in the middle of a run of steps
        (a window of the ring is ready). The frame goes in one write of at most
        PIPE_BUF bytes, so it is never split; the child's pipe holds far more than the
        few such frames ever pending, and a full one means the child stopped reading.
        """
        self._require_open()
        frame = _HEADER.pack(int(kind), len(payload)) + payload
        if len(frame) > select.PIPE_BUF:
            raise ValueError("a notice must fit one atomic pipe write")
        try:
            written = os.write(self._to_child, frame)
        except BlockingIOError:
            self._fail(ReasonClass.TIMEOUT)
        except BrokenPipeError:
            self._fail(self._death_reason())
        if written != len(frame):
            self._fail(ReasonClass.TIMEOUT)

    def send(self, kind: ToChild, payload: bytes | bytearray | memoryview = b"") -> None:
        """Send one frame; the child must read it within the wall timeout.

        The child may not speak while the enclave sends: if it does, or dies, the
        child is killed and SandboxFailure says why.
        """
        self._require_open()
        body = memoryview(payload).cast("B")
        header = memoryview(_HEADER.pack(int(kind), len(body)))
        deadline = self._deadline(self._limits.wall_timeout_seconds)
        for part in (header, body):
            while part:
                ready = self._poll(
                    {self._to_child: select.POLLOUT, self._from_child: select.POLLIN}, deadline
                )
                if ready.get(self._from_child):
                    self._fail(self._out_of_turn_reason())
                if ready.get(self._to_child, 0) & (select.POLLERR | select.POLLHUP):
                    self._fail(self._death_reason())
                try:
                    written = os.write(self._to_child, part[:_CHUNK])
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    self._fail(self._death_reason())
                part = part[written:]

    def expect(
        self,
        kind: FromChild,
        *,
        size: int | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Read the next frame, which must be of `kind` and of the allowed size.

        `size` demands an exact payload length, `max_size` an upper bound; with
        neither the payload must be empty. RECIPE_ERROR and RESOURCE_EXHAUSTED
        frames (empty) end the job as `recipe_error` and `resource_limit`.
        """
        self._require_open()
        if size is not None and max_size is not None:
            raise ValueError("give size or max_size, not both")
        wait = self._limits.wall_timeout_seconds if timeout is None else timeout
        deadline = self._deadline(wait)
        kind_byte, length = _HEADER.unpack(self._read_exact(HEADER_BYTES, deadline))
        if kind_byte != kind:
            if kind_byte == FromChild.RECIPE_ERROR and length == 0:
                self._fail(ReasonClass.RECIPE_ERROR)
            if kind_byte == FromChild.RESOURCE_EXHAUSTED and length == 0:
                self._fail(ReasonClass.RESOURCE_LIMIT)
            self._fail(ReasonClass.BAD_OUTPUT)
        allowed = length == size if size is not None else length <= (max_size or 0)
        if not allowed:
            self._fail(ReasonClass.BAD_OUTPUT)
        return self._read_exact(length, deadline) if length else b""

    def end(self, timeout: float | None = None) -> None:
        """Send SHUTDOWN and require the child to exit cleanly without another byte.

        Call after the last expected frame: bytes after the end, or a child that
        then dies of anything but a clean exit, fail the job like any other deviation.
        """
        self.send(ToChild.SHUTDOWN)
        wait = self._limits.wall_timeout_seconds if timeout is None else timeout
        deadline = self._deadline(wait)
        self._poll({self._from_child: select.POLLIN}, deadline)  # or fails with timeout
        if os.read(self._from_child, 1):
            self._fail(ReasonClass.BAD_OUTPUT)
        status = self._exit_status()
        if status != 0:
            self._fail(ReasonClass.BAD_OUTPUT if status is None else reason_for_exit(status))
        self.close()

    def close(self) -> None:
        """Ask the child to shut down, kill it if it does not; idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        # A child not yet confined reads no SHUTDOWN: it is killed without the grace.
        if self._ready is None and self._process.poll() is None and not self._killed:
            with contextlib.suppress(OSError):
                os.set_blocking(self._to_child, False)
                os.write(self._to_child, _HEADER.pack(int(ToChild.SHUTDOWN), 0))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=_EXIT_GRACE_SECONDS)
        self._kill()
        self._close_ready()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._output_relay is not None:
            self._output_relay.join(timeout=_EXIT_GRACE_SECONDS)
        if self._pids_group is not None:
            pids.remove(self._pids_group)  # empty now: the whole child was reaped
        if self._shared is not None:
            self._shared.close()

    @contextlib.contextmanager
    def until(self, deadline: float | None) -> Iterator[None]:
        """Within the block, every send and expect also ends at `deadline` (monotonic).

        A fixed-rate job gives each slot's work an absolute end: a child that has not
        answered by then fails the job as `timeout` at that instant.
        """
        previous, self._slot_deadline = self._slot_deadline, deadline
        try:
            yield
        finally:
            self._slot_deadline = previous

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------

    def _deadline(self, seconds: float) -> float:
        """`seconds` from now, but no later than the end of the job's time."""
        deadline = min(time.monotonic() + seconds, self._job_deadline)
        return deadline if self._slot_deadline is None else min(deadline, self._slot_deadline)

    def _require_open(self) -> None:
        if self._closed:
            raise EnclaveError("the sandbox is closed")
        if self._ready is not None:
            raise EnclaveError("the sandbox is not confined yet")

    def _poll(self, events: dict[int, int], deadline: float) -> dict[int, int]:
        poller = select.poll()
        for fd, mask in events.items():
            poller.register(fd, mask)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._fail(ReasonClass.TIMEOUT)
        ready = dict(poller.poll(remaining * 1000))
        if not ready:
            self._fail(ReasonClass.TIMEOUT)
        return ready

    def _read_exact(self, count: int, deadline: float) -> bytes:
        buffer = bytearray(count)
        view = memoryview(buffer)
        got = 0
        while got < count:
            self._poll({self._from_child: select.POLLIN}, deadline)
            n = os.readv(self._from_child, [view[got:]])
            if n == 0:
                self._fail(self._death_reason())
            got += n
        return bytes(buffer)

    def _out_of_turn_reason(self) -> ReasonClass:
        """The child spoke while the enclave was sending: why, in one reason class."""
        header = b""
        deadline = time.monotonic() + _EXIT_GRACE_SECONDS
        while len(header) < HEADER_BYTES and time.monotonic() < deadline:
            ready = select.select([self._from_child], [], [], deadline - time.monotonic())[0]
            if not ready:
                break
            chunk = os.read(self._from_child, HEADER_BYTES - len(header))
            if not chunk:
                return self._death_reason() if not header else ReasonClass.BAD_OUTPUT
            header += chunk
        if len(header) == HEADER_BYTES:
            kind_byte, length = _HEADER.unpack(header)
            if length == 0 and kind_byte == FromChild.RECIPE_ERROR:
                return ReasonClass.RECIPE_ERROR
            if length == 0 and kind_byte == FromChild.RESOURCE_EXHAUSTED:
                return ReasonClass.RESOURCE_LIMIT
        return ReasonClass.BAD_OUTPUT

    def _exit_status(self) -> int | None:
        """How the child's process ended, once it closed its pipe (None: it did not end)."""
        try:
            return self._process.wait(timeout=_EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            return None

    def _death_reason(self) -> ReasonClass:
        """Why the child closed its pipe, from how its process ended.

        A child that closed the pipe but does not exit is killed (bad_output).
        """
        status = self._exit_status()
        return ReasonClass.BAD_OUTPUT if status is None else reason_for_exit(status)

    def _fail(self, reason: ReasonClass) -> NoReturn:
        self._kill()
        self.close()
        raise SandboxFailure(reason)

    def _kill(self) -> None:
        if self._process.poll() is None:
            self._killed = True
            # The bootstrap kills and reaps the worker on SIGTERM, then ends itself;
            # if it does not, SIGKILL the whole process group (the worker dies of its
            # parent-death signal).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=_EXIT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
