"""What other processes on the host can reach of a running enclave process.

The enclave holds decrypted records, and the recipe reads them from a memory file of
the enclave's (`enclave/sandbox/shared_file.py`). The enclave makes itself non-dumpable
before it does anything else, so the kernel opens its /proc/<pid>/fd, mem and environ
only to a process with CAP_SYS_PTRACE: a same-user process cannot follow
/proc/<pid>/fd/N to that file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Runs the enclave's entry point with `serve` replaced by a probe that reports the
# process's dumpable flag (PR_GET_DUMPABLE) as it would start serving.
PROBE = """
import ctypes, sys
import chiron.enclave.main as main
def report(context, in_fd, out_fd):
    print("dumpable", ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0), file=sys.stderr)
main.serve = report
main.main(["--role", "train", "--state-dir", sys.argv[1]])
"""


def test_the_enclave_process_is_not_dumpable_when_it_serves(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "dumpable 0" in result.stderr


def test_an_ordinary_process_is_dumpable():
    """Control: the same probe reads 1 where nothing cleared the flag."""
    result = subprocess.run(
        [sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "1"


# A process of the same user with no capabilities (so no CAP_SYS_PTRACE): what of a
# confined sandbox can it open through /proc? Prints one line per descriptor tried.
PROBER = """
import os, sys
from chiron.enclave.sandbox import _linux
_linux.drop_all_capabilities()
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        print("opened", path)
    except OSError as exc:
        print("refused", path, exc.strerror)
"""


def test_a_same_user_process_opens_no_descriptor_of_the_sandbox():
    """The bootstrap holds the pipe that carries the recipe, held-out records and
    checkpoints to the worker for the whole job; the worker holds the shared data file.
    Both are non-dumpable from their start, so /proc/<pid>/fd opens to neither."""
    from chiron.enclave.sandbox import Sandbox, SandboxLimits

    with Sandbox.spawn(limits=SandboxLimits(threads=1)) as sandbox:
        bootstrap = sandbox.pid
        (worker,) = Path(f"/proc/{bootstrap}/task/{bootstrap}/children").read_text().split()
        paths = [
            f"/proc/{pid}/fd/{fd}"
            for pid in (bootstrap, int(worker))
            for fd in sorted(map(int, os.listdir(f"/proc/{pid}/fd")))
            if fd > 2
        ]
        result = subprocess.run(
            [sys.executable, "-c", PROBER, *paths], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths) >= 4  # the pipes and the data file at least
    assert all(line.startswith("refused") for line in lines), lines


def test_the_prober_opens_what_is_not_protected():
    """Control: the same prober opens a pipe of an ordinary process of its user and caps."""
    holder_code = (
        "import os, time; from chiron.enclave.sandbox import _linux; "
        "_linux.drop_all_capabilities(); r, w = os.pipe(); print(r, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True
    )
    try:
        fd = int(holder.stdout.readline())
        path = f"/proc/{holder.pid}/fd/{fd}"
        result = subprocess.run(
            [sys.executable, "-c", PROBER, path], capture_output=True, text=True, timeout=60
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.stdout.splitlines() == [f"opened {path}"], result.stderr
