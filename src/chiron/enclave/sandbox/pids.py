"""A cgroup of its own per sandbox, whose pids controller caps its tasks (threads too).

Every thread is a task: a recipe that starts threads without end would fill the host's
process table. The worker's RLIMIT_NPROC caps them too, counted within the sandbox's
own user namespace, but the kernel exempts tasks of the host's root user from that
limit; the pids controller has no such exemption. It is used where the enclave may
create a cgroup (the cgroup v1 pids hierarchy, or its own cgroup v2 with the pids
controller delegated); the supervisor creates the group before the child starts, the
bootstrap moves itself into it before anything else, and the supervisor removes it
once the child is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_REMOVE_GRACE_SECONDS = 10.0
_PREFIX = "chiron-sandbox-"
# Longer than any sandbox's start-up: an empty group this old has no child to come.
_STALE_SECONDS = 3600.0


def create(max_tasks: int) -> Path | None:
    """A new pids cgroup allowing `max_tasks` tasks, or None where none can be made."""
    for parent in _candidates():
        _remove_stale(parent)
        group = parent / f"{_PREFIX}{uuid.uuid4().hex}"
        try:
            group.mkdir(mode=0o755)
        except OSError:
            continue
        try:
            (group / "pids.max").write_text(str(max_tasks))
        except OSError:
            remove(group)
            continue
        return group
    return None


def join(group: str) -> None:
    """Move the calling process (single-threaded: the bootstrap) into `group`."""
    with open(os.path.join(group, "cgroup.procs"), "w") as procs:
        procs.write("0")


def remove(group: Path, grace_seconds: float = _REMOVE_GRACE_SECONDS) -> None:
    """Kill whatever is left in `group` and remove it; never raises.

    A worker whose bootstrap was killed dies of its parent-death signal a moment later,
    and a process with thousands of threads takes a while to end: until the group is
    empty it cannot be removed. A group still busy after `grace_seconds` stays.
    """
    deadline = time.monotonic() + grace_seconds
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
        with contextlib.suppress(OSError, ValueError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)  # only the sandbox's tasks are here
        time.sleep(0.02)


def _remove_stale(parent: Path) -> None:
    """Remove the empty groups of enclaves that died before removing their own.

    Only old ones: a new, empty group may belong to a child that is about to join it.
    """
    now = time.time()
    for group in parent.glob(f"{_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - group.stat().st_mtime > _STALE_SECONDS:
                group.rmdir()  # refused while any task is in it


def _candidates() -> list[Path]:
    """Where this process may create a pids cgroup: v1 hierarchy first, then v2."""
    found: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if "pids" in controllers.split(","):
            found.append(_CGROUP_ROOT / "pids" / relative)
        elif controllers == "":
            unified = _CGROUP_ROOT / relative
            with contextlib.suppress(OSError):
                if "pids" in (unified / "cgroup.subtree_control").read_text().split():
                    found.append(unified)
    return [path for path in found if os.access(path, os.W_OK)]
