"""Channels through kernel state that processes outside the sandbox can read.

Each attack tries to signal a receiver on the host (a FIFO's writer, a reader of the
host's /proc, a shared-futex waiter) and the test, playing that receiver, checks it got
nothing, while the recipe reports that it did make each attempt.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from tests.sandbox.conftest import recipe
from tests.sandbox.observer import watch_sandbox

import chiron
import chiron.recipes.runtime as runtime
from chiron.enclave.sandbox import Sandbox

_SRC = str(Path(chiron.__file__).resolve().parents[1])
_KERNEL_FILE_SYSTEMS = ("/proc/", "/sys/", "/dev/")
_libc = ctypes.CDLL(None, use_errno=True)


def _readable_folders() -> list[str]:
    """The folders the recipe may read, computed the way the sandbox's worker does."""
    code = (
        "import json, pyseccomp\n"
        "from chiron.enclave.sandbox import child, landlock, seccomp_policy, warmup\n"
        "print(json.dumps(sorted(child._read_paths())))"
    )
    completed = subprocess.run(
        [sys.executable, "-s", "-P", "-B", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": _SRC, "PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    paths = json.loads(completed.stdout)
    return [p for p in paths if os.path.isdir(p) and not p.startswith(_KERNEL_FILE_SYSTEMS)]


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ENOENT):  # no reader; not created yet
            return False
        raise
    return True


# The FIFOs stand in the installed runtime's folders while this runs, so the runtime's
# measurement differs meanwhile: it runs alone (`make test` runs these after the rest).
@pytest.mark.alone
def test_a_fifo_in_every_readable_folder_sees_no_reader(run_attack, monkeypatch):
    # The host leaves a FIFO in every folder the recipe can read, plus one it creates
    # once the sandbox is confined (when the enclave first speaks to it, before the
    # recipe arrives); it watches for a reader the whole time.
    name = f"chiron-red-team-{uuid.uuid4().hex}.fifo"
    folders = _readable_folders()
    assert any("site-packages" in folder for folder in folders)
    fifos = [Path(folder, name) for folder in folders]
    late = Path(folders[0], "late-" + name)
    readers: list[Path] = []
    rounds: list[int] = []
    done = threading.Event()
    original_send = Sandbox.send

    def send(self: Sandbox, kind: object, payload: bytes | memoryview = b"") -> None:
        if not late.exists():
            os.mkfifo(late)
        original_send(self, kind, payload)

    def watch() -> None:
        while not done.wait(0.01):
            readers.extend(fifo for fifo in [*fifos, late] if _has_reader(fifo))
            rounds.append(1)

    monkeypatch.setattr(Sandbox, "send", send)
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        for fifo in fifos:
            os.mkfifo(fifo)
        watcher.start()
        outcome = run_attack(
            recipe(
                f"""
                opened = []
                for path in {[str(f) for f in fifos]!r}:
                    opened.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                opened.append(os.open({str(late)!r}, os.O_RDONLY | os.O_NONBLOCK))
                # A blocking open waits for a writer: the host tries to be one.
                time.sleep(1.0)
                keep(b"opened %d" % len(opened))
                """
            )
        )
    finally:
        done.set()
        watcher.join()
        for fifo in [*fifos, late]:
            fifo.unlink(missing_ok=True)
    assert outcome.reason is None
    assert outcome.loot().rstrip(b"\0") == b"opened %d" % (len(fifos) + 1)
    assert readers == []
    assert len(rounds) > 10  # the host watched throughout


def test_thread_names_and_signal_masks_stay_fixed(run_attack, monkeypatch, marker):
    name = marker[-15:]  # a thread name holds 15 bytes
    with watch_sandbox(monkeypatch) as view:
        outcome = run_attack(
            recipe(
                f"""
                results = []
                def attempt(call):
                    try:
                        call()
                        results.append("ok")
                    except OSError as error:
                        results.append(error.errno)

                def set_name():
                    if libc.prctl(15, {name.encode()!r}, 0, 0, 0) != 0:
                        raise OSError(ctypes.get_errno(), "prctl")

                def signals_of_a_thread():
                    attempt(set_name)
                    attempt(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}}))

                attempt(set_name)
                attempt(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1, signal.SIGWINCH}}))
                attempt(lambda: signal.signal(signal.SIGUSR2, lambda *_: None))
                attempt(lambda: signal.signal(signal.SIGWINCH, signal.SIG_IGN))
                worker = threading.Thread(target=signals_of_a_thread)
                worker.start()
                worker.join()
                time.sleep(0.5)  # the host looks meanwhile
                keep(repr(results).encode())
                """
            )
        )
    assert outcome.reason is None
    eperm = errno.EPERM
    assert outcome.loot().rstrip(b"\0") == repr([eperm] * 6).encode()
    assert view.samples > 10 and view.first_names
    assert view.names == view.first_names  # no name the recipe chose
    assert name not in view.names
    assert view.masks <= view.first_masks  # every thread shows a mask fixed before
    usr1, usr2, winch = 1 << 9, 1 << 11, 1 << 27  # bit n-1 for signal n
    for blocked, ignored, caught in view.masks:
        assert not int(blocked, 16) & (usr1 | winch)
        assert not int(ignored, 16) & winch and not int(caught, 16) & usr2


def _futex_wait(address: int, value: int, seconds: float) -> int:
    """Wait on a shared futex (no FUTEX_PRIVATE_FLAG); 0 if woken, else the errno."""
    timeout = (ctypes.c_long * 2)(int(seconds), int(seconds % 1 * 1e9))
    result = _libc.syscall(202, ctypes.c_void_p(address), 0, value, timeout, None, 0)
    return 0 if result == 0 else ctypes.get_errno()


def test_a_shared_futex_waiter_is_never_woken(run_attack):
    # The host waits on a shared futex at the start of a file the recipe can read (the
    # recipe runtime); a futex on a page of a mapped file is keyed by the file, so any
    # process mapping it could wake the host.
    path = Path(runtime.__file__)
    fd = os.open(path, os.O_RDONLY)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    address = _libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    value = ctypes.c_int.from_address(address).value
    outcomes: list[int] = []
    done = threading.Event()

    def wait() -> None:
        while not done.is_set():
            outcomes.append(_futex_wait(address, value, 0.2))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        outcome = run_attack(
            recipe(
                f"""
                libc.mmap.restype = ctypes.c_void_p
                libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_long)
                fd = os.open({str(path)!r}, os.O_RDONLY)
                results = []
                def wake(address, op):
                    woken = libc.syscall(202, ctypes.c_void_p(address), op, 2**31 - 1, None, None, 0)
                    results.append(woken if woken >= 0 else -ctypes.get_errno())

                shared = libc.mmap(None, 4096, 1, 1, fd, 0)  # MAP_SHARED: refused
                results.append(-ctypes.get_errno() if shared in (None, 2**64 - 1) else "mapped")
                private = libc.mmap(None, 4096, 1, 2, fd, 0)  # MAP_PRIVATE
                for _ in range(50):
                    wake(private, 1)  # FUTEX_WAKE, shared: what would reach the host
                    wake(private, 1 | 128)  # FUTEX_WAKE_PRIVATE: this process only
                    time.sleep(0.02)
                # A thread that names a futex for the kernel to wake at its exit.
                def name_a_futex():
                    refused = libc.syscall(218, ctypes.c_void_p(private)) == -1
                    results.append(-ctypes.get_errno() if refused else "named")
                thread = threading.Thread(target=name_a_futex)
                thread.start()
                thread.join()
                keep(repr(sorted(set(map(str, results)))).encode())
                """
            )
        )
    finally:
        done.set()
        waiter.join()
        os.close(fd)
    assert outcome.reason is None
    # MAP_SHARED and set_tid_address refused (EPERM), shared wakes refused (EAGAIN),
    # private wakes allowed (nobody waits on them: 0).
    expected = sorted({str(-errno.EPERM), str(-errno.EAGAIN), "0"})
    assert outcome.loot().rstrip(b"\0") == repr(expected).encode()
    assert len(outcomes) > 5
    assert 0 not in outcomes, "the host's waiter was woken"


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("mincore", "libc.syscall(27, ctypes.c_void_p(page), 4096, residency)"),
        ("cachestat", "libc.syscall(451, fd, ctypes.byref(span), ctypes.byref(stat), 0)"),
    ],
)
def test_page_residency_cannot_be_read(run_attack, name, call):
    outcome = run_attack(
        recipe(
            f"""
            libc.mmap.restype = ctypes.c_void_p
            fd = os.open(torch.__file__, os.O_RDONLY)
            page = libc.mmap(None, 4096, 1, 2, fd, 0)
            residency = ctypes.create_string_buffer(1)
            span = (ctypes.c_uint64 * 2)(0, 4096)
            stat = (ctypes.c_uint64 * 5)()
            keep(b"%d" % {call})
            """
        )
    )
    assert outcome.reason == "policy_violation", name


def test_page_residency_cannot_be_changed(run_attack):
    # MADV_PAGEOUT (21), MADV_COLD (20), MADV_WILLNEED (3) and MADV_MERGEABLE (12) on a
    # mapping of a shared library: evicting or loading its pages is visible to the host.
    outcome = run_attack(
        recipe(
            """
            libc.mmap.restype = ctypes.c_void_p
            fd = os.open(torch.__file__, os.O_RDONLY)
            page = libc.mmap(None, 4096, 1, 2, fd, 0)
            refused = []
            for advice in (21, 20, 3, 12, 4):  # the last, MADV_DONTNEED, is allowed
                result = libc.madvise(ctypes.c_void_p(page), 4096, advice)
                refused.append(ctypes.get_errno() if result else 0)
            keep(repr(refused).encode())
            """
        )
    )
    assert outcome.reason is None
    assert outcome.loot().rstrip(b"\0") == repr([errno.EPERM] * 4 + [0]).encode()
