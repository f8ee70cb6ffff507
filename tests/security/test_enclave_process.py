"""What other processes on the host can reach of a running enclave process.

The enclave holds decrypted records, and the recipe reads them from a memory file of
the enclave's (`enclave/sandbox/shared_file.py`). The enclave makes itself non-dumpable
before it does anything else, so the kernel opens its /proc/<pid>/fd, mem and environ
only to a process with CAP_SYS_PTRACE: a same-user process cannot follow
/proc/<pid>/fd/N to that file.
"""

from __future__ import annotations

import subprocess
import sys

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
