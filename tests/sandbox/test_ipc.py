"""IPC attacks: no System V or POSIX IPC object appears where the host could open it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.sandbox.conftest import recipe


def _keys(kind: str) -> set[int]:
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines}


@pytest.mark.parametrize(
    ("kind", "call"),
    [
        ("shm", "libc.shmget({key}, 4096, 0o1666)"),
        ("msg", "libc.msgget({key}, 0o1666)"),
        ("sem", "libc.semget({key}, 1, 0o1666)"),
    ],
)
def test_system_v_ipc(run_attack, kind, call):
    key = random.randrange(1 << 20, 1 << 30)
    outcome = run_attack(recipe(f"keep(b'%d' % {call.format(key=key)})"))
    assert outcome.reason == "policy_violation"
    assert key not in _keys(kind)


def test_posix_message_queue(run_attack):
    name = f"/chiron-red-team-{random.randrange(1 << 30)}"
    outcome = run_attack(
        recipe(
            f"""
            librt = ctypes.CDLL("librt.so.1", use_errno=True)
            librt.mq_open(b"{name}", os.O_CREAT | os.O_WRONLY, 0o666, None)
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not Path("/dev/mqueue" + name).exists()


def test_posix_shared_memory(run_attack, marker):
    name = f"chiron-red-team-{random.randrange(1 << 30)}"
    outcome = run_attack(
        recipe(
            f"""
            from multiprocessing import shared_memory
            segment = shared_memory.SharedMemory(name="{name}", create=True, size=4096)
            segment.buf[:10] = b"{marker[:10]}"
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not Path("/dev/shm", name).exists()
