"""Each confinement layer on its own, in a plain process: what it stops without the others.

The attack suite shows the layers together; here each one is tested alone, so that a
single layer failing (or being weakened) is caught even though another would still
stop the attack. These processes do not import torch and start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chiron.enclave.sandbox import landlock

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def _results(completed: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


# Runs `attempts` (name -> zero-argument callable) and prints how each one ended.
_PROBE = """
import json
def probe(attempts):
    results = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            results[name] = "ok"
        except OSError as error:
            results[name] = type(error).__name__
    print(json.dumps(results))
"""


def test_landlock_alone(tmp_path, tcp_listener):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "public").write_text("public")
    secret = tmp_path / "secret"
    secret.write_text("secret")
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0chiron-layer-test-{os.getpid()}")
    port = tcp_listener.getsockname()[1]
    completed = _python(
        _PROBE
        + textwrap.dedent(
            """
        import os, socket, sys
        from chiron.enclave.sandbox import landlock
        allowed, secret, port, abstract, parent = sys.argv[1:]
        tcp = socket.socket()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        abi = landlock.restrict([allowed])
        probe({
            "read allowed": lambda: open(os.path.join(allowed, "public")).read(),
            "read outside": lambda: open(secret).read(),
            "list outside": lambda: os.listdir(os.path.dirname(secret)),
            "write allowed": lambda: open(os.path.join(allowed, "new"), "w"),
            "remove allowed": lambda: os.unlink(os.path.join(allowed, "public")),
            "tcp connect": lambda: tcp.connect(("127.0.0.1", int(port))),
            "abstract unix": lambda: unix.sendto(b"x", "\\0" + abstract),
            "signal parent": lambda: os.kill(int(parent), 0),
        })
        """
        ),
        str(allowed),
        str(secret),
        str(port),
        abstract.getsockname()[1:].decode(),
        str(os.getpid()),
    )
    abstract.close()
    assert landlock.abi_version() >= 6, "these checks assume Landlock ABI 6 or later"
    assert _results(completed) == {
        "read allowed": "ok",
        "read outside": "PermissionError",
        "list outside": "PermissionError",
        "write allowed": "PermissionError",
        "remove allowed": "PermissionError",
        "tcp connect": "PermissionError",
        "abstract unix": "PermissionError",
        "signal parent": "PermissionError",
    }
    assert (allowed / "public").exists() and not (allowed / "new").exists()


def test_namespaces_alone(host_dir, tcp_listener):
    port = tcp_listener.getsockname()[1]
    victim = subprocess.Popen(["sleep", "60"])
    try:
        completed = _python(
            _PROBE
            + textwrap.dedent(
                """
            import os, socket, sys
            from chiron.enclave.sandbox import namespaces
            host_dir, port, victim = sys.argv[1:]
            # An installation under /tmp (a checkout there) stays importable: only the
            # first path component of each import path shows in the hidden /tmp.
            kept = sorted({p.split("/")[2] for p in namespaces._import_paths_under("/tmp")})
            namespaces.enter_namespaces()
            child = os.fork()
            if child:
                _, status = os.waitpid(child, 0)
                sys.exit(os.waitstatus_to_exitcode(status))
            namespaces.mount_private_proc()
            facts = {
                "pid": os.getpid(),
                "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
                "hostname": socket.gethostname(),
                "tmp": sorted(set(os.listdir("/tmp")) - set(kept)),
                "dev/shm": os.listdir("/dev/shm"),
            }
            print(json.dumps(facts))
            probe({
                "tcp connect": lambda: socket.create_connection(("127.0.0.1", int(port)), 2),
                "write host dir": lambda: open(os.path.join(host_dir, "new"), "w"),
                "write tmp": lambda: open("/tmp/new", "w"),
                "kill host process": lambda: os.kill(int(victim), 9),
            })
            """
            ),
            str(host_dir),
            str(port),
            str(victim.pid),
        )
        assert completed.returncode == 0, completed.stderr
        facts, results = (json.loads(line) for line in completed.stdout.splitlines())
        assert facts == {
            "pid": 1,
            "processes": ["1"],
            "hostname": "chiron-sandbox",
            "tmp": [],
            "dev/shm": [],
        }
        assert results == {
            "tcp connect": "OSError",  # ENETUNREACH: the loopback is down
            "write host dir": "OSError",  # EROFS: every mount is read-only
            "write tmp": "OSError",  # EROFS: an empty, read-only tmpfs
            "kill host process": "ProcessLookupError",  # not in this PID namespace
        }
        assert victim.poll() is None
        assert list(host_dir.iterdir()) == []
    finally:
        victim.kill()
        victim.wait()


_SECCOMP = (
    """
import ctypes, errno, os, socket, sys, threading
from chiron.enclave.sandbox import seccomp_policy
libc = ctypes.CDLL(None, use_errno=True)
ready, go = threading.Event(), threading.Event()
def early_thread():
    # Started before the filter: TSYNC must cover it too.
    ready.set()
    go.wait()
    if sys.argv[1] == "socket in an earlier thread":
        socket.socket()
    os._exit(0)
thread = threading.Thread(target=early_thread)
thread.start()
ready.wait()
seccomp_policy.install()
attempt = sys.argv[1]
if attempt == "socket in an earlier thread":
    go.set()
    thread.join()
"""
    + "\n".join(
        f"if attempt == {name!r}:\n    {code}"
        for name, code in {
            "socket": "socket.socket()",
            "open for writing": "open('/dev/null', 'w')",
            "fork": "os.fork()",
            "execve": "os.execv('/bin/true', ['true'])",
            "setrlimit": "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8))",
            "ptrace": "libc.ptrace(0, 0, 0, 0)",
            "tiocsti": "import fcntl, termios; fcntl.ioctl(0, termios.TIOCSTI, b'x')",
            "prctl dumpable": "libc.prctl(4, 1, 0, 0, 0)",
            "memfd": "os.memfd_create('x')",
            "tgkill another process": "libc.syscall(234, os.getppid(), os.getppid(), 0)",
            "fcntl F_SETOWN": "import fcntl; fcntl.fcntl(0, fcntl.F_SETOWN, os.getppid())",
            "io_uring": "libc.syscall(425, 8, ctypes.create_string_buffer(120))",
            "bpf": "libc.syscall(321, 0, None, 0)",
            "perf_event_open": "libc.syscall(298, None, 0, -1, -1, 0)",
            "mount": "libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)",
            "setsid": "os.setsid()",
        }.items()
    )
    + """
if attempt == "allowed":
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join()
    clone3 = libc.syscall(435, None, 0)
    print(ctypes.get_errno() == errno.ENOSYS and clone3 == -1, flush=True)
    open('/dev/null').read()
    os.write(1, b"still here")
go.set()
thread.join()
"""
)


@pytest.mark.parametrize(
    "attempt",
    [
        "socket",
        "socket in an earlier thread",
        "open for writing",
        "fork",
        "execve",
        "setrlimit",
        "ptrace",
        "tiocsti",
        "prctl dumpable",
        "memfd",
        "tgkill another process",
        "fcntl F_SETOWN",
        "io_uring",
        "bpf",
        "perf_event_open",
        "mount",
        "setsid",
    ],
)
def test_seccomp_alone_kills(attempt):
    completed = _python(_SECCOMP, attempt)
    assert completed.returncode == -signal.SIGSYS, completed.stderr


def test_seccomp_alone_allows_threads_reads_and_writes():
    completed = _python(_SECCOMP, "allowed")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "True\nstill here"
