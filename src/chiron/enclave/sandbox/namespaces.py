"""Namespaces: the child's private view of users, network, mounts, processes, IPC, host name.

`enter_namespaces` runs in the single-threaded bootstrap before anything else is imported
and before the fork that makes the worker PID 1 of its own PID namespace (a PID namespace
only applies to children of the process that creates it, and forking is safe only while
the interpreter has one thread). `mount_private_proc` runs in the worker after that fork.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from chiron.enclave.sandbox import _linux

NAMESPACES = (
    _linux.CLONE_NEWUSER
    | _linux.CLONE_NEWNS
    | _linux.CLONE_NEWNET
    | _linux.CLONE_NEWPID
    | _linux.CLONE_NEWIPC
    | _linux.CLONE_NEWUTS
    | _linux.CLONE_NEWCGROUP
)

# Host directories replaced by an empty, read-only tmpfs: shared scratch space where
# other processes leave sockets, shared memory and secrets (/tmp, /dev/shm, /run).
HIDDEN_DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/dev/mqueue")  # noqa: S108

HOSTNAME = "chiron-sandbox"


def enter_namespaces() -> None:
    """Move this process into new user, mount, network, IPC, UTS and cgroup namespaces.

    Its future children land in a new PID namespace. The only user mapped is this
    process's own (as 0 inside), so nothing can gain an identity it did not have. The
    new network namespace holds only a loopback interface that stays down.
    """
    uid, gid = os.geteuid(), os.getegid()
    _linux.unshare(NAMESPACES)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _linux.sethostname(HOSTNAME)
    # Nothing mounted here may propagate back to the host's mount namespace.
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE, None)
    for directory in HIDDEN_DIRECTORIES:
        if os.path.isdir(directory) and not os.path.islink(directory):
            _hide(directory)
    # Every mount, including those just made, becomes read-only. (Not nodev: torch
    # needs /dev/urandom; Landlock lets through only a few harmless devices.)
    _linux.mount_setattr_recursive("/", _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID)


def _hide(directory: str) -> None:
    """Cover `directory` with an empty tmpfs, keeping only Python's own paths under it.

    An installation may live under a hidden directory (a checkout in /tmp, say). Its
    import paths are bound back into the empty tmpfs, read-only like every mount here;
    nothing else of the directory stays visible, and Landlock still limits reads to the
    import paths.
    """
    kept = _import_paths_under(directory)
    # Handles opened before the tmpfs covers them: afterwards no path reaches them.
    handles = [os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in kept]
    flags = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
    _linux.mount("tmpfs", directory, "tmpfs", flags, "size=4k,mode=0555")
    for path, handle in zip(kept, handles, strict=True):
        os.makedirs(path, mode=0o555, exist_ok=True)
        _linux.mount(f"/proc/self/fd/{handle}", path, None, _linux.MS_BIND | _linux.MS_REC, None)
        os.close(handle)


def _import_paths_under(directory: str) -> list[str]:
    """Python's import paths and prefixes inside `directory`, outermost only."""
    root = os.path.realpath(directory).rstrip("/") + "/"
    candidates = sorted(
        {
            os.path.realpath(path)
            for path in (*sys.path, sys.prefix, sys.exec_prefix)
            if path and os.path.isdir(path)
        }
    )
    kept: list[str] = []
    for path in candidates:
        if path.startswith(root) and not any(path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept


# Kernel file systems: nobody can create a FIFO, socket or device node in them.
_KERNEL_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


def shield_readable_trees(paths: Iterable[str]) -> list[str]:
    """Cover each readable directory tree with a read-only overlay of itself.

    The recipe may open any file beneath these directories read-only (Landlock), and
    on the host's own mount a FIFO there is the host's: the host's end sees every open
    (a writer's open succeeds once a reader exists), and so does a FIFO or device node
    created there while the job runs. Landlock and seccomp cannot tell a FIFO from a
    file when it is opened. Through an overlay, every file is an inode of the overlay:
    regular files read the same pages, but a FIFO is a pipe of the overlay's inode,
    which no process outside this mount namespace can open, and device nodes fall
    under the mount's nodev. Returns the directories covered (outermost only).
    """
    directories = sorted(
        {
            os.path.realpath(path)
            for path in paths
            if os.path.isdir(path)
            and not _beneath_any(os.path.realpath(path), _KERNEL_FILE_SYSTEMS)
        }
    )
    outermost: list[str] = []
    for directory in directories:
        if not _beneath_any(directory, outermost):
            outermost.append(directory)
    # Overlay needs two layers when it has no upper one: the second is an empty tmpfs.
    # Layers are named by descriptor, so no path needs escaping in the options.
    empty = _linux.detached_mount("tmpfs", _linux.MOUNT_ATTR_RDONLY)
    try:
        for directory in outermost:
            layer = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _linux.mount(
                    "overlay",
                    directory,
                    "overlay",
                    _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NODEV,
                    f"lowerdir=/proc/self/fd/{layer}:/proc/self/fd/{empty}",
                )
            finally:
                os.close(layer)
    finally:
        os.close(empty)
    return outermost


def _beneath_any(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def mount_private_proc() -> None:
    """Replace the host's /proc by one that shows only this PID namespace (the worker).

    The host's /proc would show the enclave's environment and command lines.
    """
    _linux.mount(
        "proc",
        "/proc",
        "proc",
        _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC,
        None,
    )


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
