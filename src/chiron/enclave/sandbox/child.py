"""Bootstrap of the sandboxed child: confine first, then hand the pipes to the recipe runtime.

Run by `Sandbox.spawn` as a fresh interpreter:

    python -s -P -B -m chiron.enclave.sandbox.child --in-fd N --out-fd N --ready-fd N
           --data-fd N --limits JSON --entry MODULE [--dry-run]

Order, before any provider code runs:

  bootstrap process (single-threaded, only the standard library imported):
    0. become non-dumpable (the worker inherits it); join the sandbox's pids cgroup,
       where the enclave could create one;
    1. close every descriptor but stdio (/dev/null, or the dry-run log pipe), the pipes
       and the read-only shared data file (`shared_file`; only the worker keeps it);
    2. enter new user, mount (read-only, empty /tmp, /dev/shm, /run), network, IPC, UTS,
       cgroup namespaces, then fork the worker into a new PID namespace and only wait
       for it, mirroring how it ended (SIGTERM, or the enclave's end of the pipe
       closing: kill the worker, reap it, end);
  worker (PID 1 of its namespace):
    3. mount a /proc that shows only itself; import pyseccomp; cover each readable
       directory tree with a read-only overlay of itself (a FIFO there opens a pipe of
       the overlay, not the host's);
    4. drop every capability, set no_new_privs, apply Landlock (while still one thread:
       Landlock binds only the calling thread and the threads it starts later, and
       importing torch starts threads);
    5. import torch and the entry module, warm torch up (lazy imports, thread pool);
    6. rlimits (address space, CPU time, file size 0, descriptors, tasks, no core
       dumps, no locked memory or message queues) and not dumpable;
    7. close any descriptor the imports left open; load the seccomp filter on all threads;
    8. report "confined" on the ready pipe, close it, and call `entry.serve(in, out,
       data_fd=...)`.

A failure before step 8 is reported on the ready pipe as the name of the step and the
error's type: nothing of the recipe has run yet, so that text is the enclave's own.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import math
import os
import resource
import select
import signal
import sys
import traceback
from typing import NoReturn

from chiron.enclave.sandbox import _linux, namespaces, pids
from chiron.enclave.sandbox.startup import READY

SETUP_FAILED_EXIT = 70

# What torch and the dynamic loader read besides sys.path and the libraries already
# loaded: the loader's cache, CPU feature detection (without it torch falls back to
# its slowest kernels), and the harmless devices.
_EXTRA_READ_PATHS = (
    "/etc/ld.so.cache",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
)


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="chiron-sandbox-child")
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--data-fd", type=int, required=True)
    parser.add_argument("--limits", required=True)
    parser.add_argument("--entry", required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--pids-cgroup")
    options = parser.parse_args(argv)
    # Not dumpable, before anything else: /proc/<pid>/fd of this process (and so the
    # pipes that carry the recipe, held-out records and checkpoints to the worker, and
    # the shared data file) then opens only to a process with CAP_SYS_PTRACE. The
    # worker inherits it across fork.
    _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
    limits = json.loads(options.limits)
    pipes = (options.in_fd, options.out_fd, options.ready_fd, options.data_fd)

    # SIGTERM is how the enclave stops a sandbox: this process kills the worker and
    # collects it (so no orphan is left for someone else to reap), then ends.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(SETUP_FAILED_EXIT))
    stage = "pids"
    try:
        if options.pids_cgroup:
            # First: every task this process starts is counted from here on.
            pids.join(options.pids_cgroup)
        stage = "descriptors"
        _close_descriptors_except({0, 1, 2, *pipes})
        stage = "namespaces"
        namespaces.enter_namespaces()
        worker = os.fork()
    except BaseException as exc:
        _setup_failed(options.ready_fd, stage, exc, options.dry_run)
    if worker:
        signal.signal(signal.SIGTERM, lambda *_: os.kill(worker, signal.SIGKILL))
        os.close(options.data_fd)
        _wait_and_mirror(worker, options.in_fd, (options.out_fd, options.ready_fd))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _run_worker(options, limits)


def _run_worker(options: argparse.Namespace, limits: dict[str, int]) -> NoReturn:
    keep = {0, 1, 2, options.in_fd, options.out_fd, options.ready_fd, options.data_fd}
    stage = "proc"
    try:
        # If the bootstrap process dies, so does the worker.
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        namespaces.mount_private_proc()
        stage = "imports"
        # pyseccomp locates libseccomp by running ldconfig: before Landlock forbids it.
        from chiron.enclave.sandbox import landlock, seccomp_policy, warmup

        stage = "landlock"
        _require_single_thread()
        read_paths = _read_paths()
        stage = "overlay"
        namespaces.shield_readable_trees(read_paths)
        stage = "landlock"
        _linux.drop_all_capabilities()
        landlock.restrict(read_paths)
        stage = "warm-up"
        # Importing torch starts threads, and the entry module may warm itself up at
        # import (the recipe runtime does): both under Landlock already.
        import torch

        torch.set_num_threads(int(limits["threads"]))
        entry = importlib.import_module(options.entry)
        warmup.warm_up()
        stage = "rlimits"
        _apply_rlimits(limits)
        _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
        stage = "descriptors"
        _close_descriptors_except(keep)
        stage = "seccomp"
        seccomp_policy.install()
        os.write(options.ready_fd, READY)
        os.close(options.ready_fd)
    except BaseException as exc:
        _setup_failed(options.ready_fd, stage, exc, options.dry_run)

    # From here on, provider code runs. Nothing it says reaches the enclave except
    # frames on the out pipe; its exit status is reduced to a reason class.
    status = 0
    try:
        entry.serve(options.in_fd, options.out_fd, data_fd=options.data_fd, dry_run=options.dry_run)
    except BaseException:
        if options.dry_run:
            traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110  (a closed or broken stdio changes nothing here)
            pass
    os._exit(status)


def _wait_and_mirror(worker: int, in_fd: int, other_fds: tuple[int, ...]) -> NoReturn:
    """Wait for the worker and end the same way, so the enclave sees how it ended.

    The worker is also killed if the enclave goes away: this process keeps the read
    end of the enclave's pipe (never reading it) and watches for its hang-up.
    """
    for fd in other_fds:
        os.close(fd)  # otherwise the enclave would not see EOF when the worker dies
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    exited = os.pidfd_open(worker)
    watch = select.poll()
    watch.register(exited, select.POLLIN)
    watch.register(in_fd, 0)  # only POLLHUP: every writer (the enclave) is gone
    while not any(fd == exited for fd, _ in watch.poll()):
        os.kill(worker, signal.SIGKILL)  # not reaped yet: the PID is still the worker's
        watch.unregister(in_fd)
    # Block SIGTERM before reaping: the handler's kill can only ever reach the worker,
    # never a process that reused its PID.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _, status = os.waitpid(worker, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number != signal.SIGKILL:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else SETUP_FAILED_EXIT)


def _close_descriptors_except(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:  # closerange(n, n) would close everything from n up
            os.closerange(low, fd)  # close_range(2): no need to list /proc/self/fd
        low = fd + 1
    os.closerange(low, 2**31 - 1)


def _require_single_thread() -> None:
    # Landlock applies to the calling thread and threads it creates later: a thread
    # that already existed would keep full file system access.
    if len(os.listdir("/proc/self/task")) != 1:
        raise RuntimeError("more than one thread exists before Landlock")


def _read_paths() -> set[str]:
    """What the confined process may read: Python's path, the directories of the
    libraries loaded so far (libc, libpython: the system library directory), a few
    files and devices. Nothing else of the host is readable."""
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and ".so" in os.path.basename(fields[5].strip()):
                paths.add(os.path.dirname(os.path.realpath(fields[5].strip())))
    paths.update(_EXTRA_READ_PATHS)
    return paths


def _apply_rlimits(limits: dict[str, int]) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # The CPU budget is the recipe's: start counting after the warm-up. At the hard
    # limit the kernel sends SIGKILL (SIGXCPU would be ignored by a PID-namespace init).
    cpu = math.ceil(usage.ru_utime + usage.ru_stime) + int(limits["cpu_seconds"])
    for limit, value in (
        (resource.RLIMIT_AS, int(limits["memory_bytes"])),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_MEMLOCK, 0),
        (resource.RLIMIT_MSGQUEUE, 0),
        # Tasks of this user namespace: this process's threads and the bootstrap.
        # (Not enforced for the host's root user: the pids cgroup covers that case.)
        (resource.RLIMIT_NPROC, int(limits["tasks"])),
    ):
        resource.setrlimit(limit, (value, value))


def _setup_failed(ready_fd: int, stage: str, exc: BaseException, dry_run: bool) -> NoReturn:
    if dry_run:
        traceback.print_exc()
    detail = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        detail += " " + errno.errorcode[exc.errno]
    try:
        os.write(ready_fd, f"{stage}: {detail}".encode("ascii", "replace")[:200])
    except OSError:
        pass
    os._exit(SETUP_FAILED_EXIT)


if __name__ == "__main__":
    main()
