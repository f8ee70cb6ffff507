"""Process attacks: no new process, no program run, no signal or trace outside the sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from tests.sandbox.conftest import nothing_arrived, recipe


@pytest.fixture
def victim():
    """A process of the host that an attack would like to kill or trace."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def _marker_file(host_dir: Path) -> Path:
    return host_dir / f"ran-{uuid.uuid4().hex}"


def test_fork(run_attack, host_dir):
    target = _marker_file(host_dir)
    outcome = run_attack(
        recipe(
            f"""
            if os.fork() == 0:
                open("{target}", "w").close()
                os._exit(0)
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not target.exists()


def test_subprocess(run_attack, host_dir):
    target = _marker_file(host_dir)
    outcome = run_attack(
        recipe(
            f"""
            import subprocess
            subprocess.run(["touch", "{target}"])
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not target.exists()


def test_os_system(run_attack, host_dir):
    target = _marker_file(host_dir)
    outcome = run_attack(recipe(f'os.system("touch {target}")'))
    assert outcome.reason == "policy_violation"
    assert not target.exists()


def test_execve(run_attack, host_dir):
    target = _marker_file(host_dir)
    outcome = run_attack(recipe(f'os.execv("/bin/sh", ["sh", "-c", "touch {target}"])'))
    assert outcome.reason == "policy_violation"
    assert not target.exists()


def test_clone_a_process_through_ctypes(run_attack):
    # clone(SIGCHLD) by number: a new process, not a thread.
    outcome = run_attack(recipe("keep(b'%d' % libc.syscall(56, 17, 0, 0, 0, 0))"))
    assert outcome.reason == "policy_violation"


def test_a_thread_is_confined_like_the_main_thread(run_attack, tcp_listener, host_dir):
    port = tcp_listener.getsockname()[1]
    target = _marker_file(host_dir)

    outcome = run_attack(
        recipe(
            f"""
            def leak():
                try:
                    open("{target}", "w").close()
                finally:
                    socket.create_connection(("127.0.0.1", {port}))

            worker = threading.Thread(target=leak)
            worker.start()
            worker.join()
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not target.exists()
    assert nothing_arrived(tcp_listener)


def test_threads_that_only_compute_are_allowed(run_attack):
    outcome = run_attack(
        recipe(
            """
            results = []
            workers = [threading.Thread(target=lambda: results.append(sum(range(10**5))))
                       for _ in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            keep(b"%d threads" % len(results))
            """
        )
    )
    assert outcome.reason is None
    assert outcome.loot().rstrip(b"\0") == b"4 threads"


def test_kill_a_host_process(run_attack, victim):
    outcome = run_attack(recipe(f"os.kill({victim.pid}, signal.SIGKILL)"))
    assert outcome.reason == "policy_violation"
    assert victim.poll() is None


def test_kill_every_process(run_attack, victim):
    outcome = run_attack(recipe("os.kill(-1, signal.SIGKILL)"))
    assert outcome.reason == "policy_violation"
    assert victim.poll() is None


def test_tgkill_another_process(run_attack, victim):
    # tgkill is allowed only towards the sandbox itself.
    outcome = run_attack(recipe(f"libc.syscall(234, {victim.pid}, {victim.pid}, signal.SIGKILL)"))
    assert outcome.reason == "policy_violation"
    time.sleep(0.2)
    assert victim.poll() is None


def test_signal_the_enclave_process(run_attack):
    # The enclave side is this test process: it must still be here afterwards, and
    # the attack must not have reached it (SIGUSR1 would kill pytest outright).
    outcome = run_attack(recipe(f"os.kill({os.getpid()}, signal.SIGUSR1)"))
    assert outcome.reason == "policy_violation"


def test_ptrace_attach(run_attack, victim):
    outcome = run_attack(recipe(f"libc.ptrace(16, {victim.pid}, 0, 0)"))  # PTRACE_ATTACH
    assert outcome.reason == "policy_violation"
    status = Path(f"/proc/{victim.pid}/status").read_text()
    assert "TracerPid:\t0" in status


def test_raise_rlimits(run_attack):
    outcome = run_attack(
        recipe(
            """
            import resource
            infinity = resource.RLIM_INFINITY
            resource.setrlimit(resource.RLIMIT_CPU, (infinity, infinity))
            resource.setrlimit(resource.RLIMIT_AS, (infinity, infinity))
            """
        )
    )
    assert outcome.reason == "policy_violation"


def test_unshare_and_setns(run_attack):
    outcome = run_attack(recipe("libc.unshare(0x10000000 | 0x40000000)"))  # USER | NET
    assert outcome.reason == "policy_violation"


def test_i386_system_call_entry(run_attack):
    # Machine code that makes an i386 system call (int 0x80: exit(42)), bypassing the
    # x86_64 system call table the filter was written for.
    outcome = run_attack(
        recipe(
            """
            code = bytes.fromhex("b801000000bb2a000000cd80c3")
            page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            page.write(code)
            address = ctypes.addressof(ctypes.c_char.from_buffer(page))
            ctypes.CFUNCTYPE(None)(address)()
            """
        )
    )
    assert outcome.reason == "policy_violation"


def test_x32_system_call_numbers(run_attack):
    # x32 numbers (bit 30 set) reach the same kernel functions: socket(2) as x32.
    outcome = run_attack(recipe("keep(b'%d' % libc.syscall(0x40000000 | 41, 2, 2, 0))"))
    assert outcome.reason == "policy_violation"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_load_a_native_extension_from_the_host(run_attack, host_dir):
    # The host compiled a library whose constructor would create a file; the recipe
    # loads it (and also tries to build one itself, which needs a compiler process).
    target = _marker_file(host_dir)
    source = host_dir / "evil.c"
    library = host_dir / "evil.so"
    source.write_text(
        "#include <stdio.h>\n"
        f'__attribute__((constructor)) static void run(void) {{ fclose(fopen("{target}", "w")); }}\n'
    )
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    outcome = run_attack(
        recipe(
            f"""
            try:
                ctypes.CDLL("{library}")
            except OSError as error:
                keep(b"load failed")
            """
        )
    )
    assert outcome.reason is None
    assert outcome.loot().rstrip(b"\0") == b"load failed"
    assert not target.exists()


def test_compile_a_native_extension(run_attack, host_dir):
    target = _marker_file(host_dir)
    outcome = run_attack(
        recipe(
            f"""
            import subprocess
            open("/tmp/evil.c", "w").write('int x;')
            subprocess.run(["gcc", "-shared", "-o", "{target}", "/tmp/evil.c"])
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not target.exists()


def test_load_code_from_an_anonymous_file(run_attack):
    # memfd_create + dlopen("/proc/self/fd/N"): a library that never touches a disk.
    outcome = run_attack(
        recipe(
            """
            fd = os.memfd_create("evil")
            os.write(fd, b"\\x7fELF")
            ctypes.CDLL(f"/proc/self/fd/{fd}")
            """
        )
    )
    assert outcome.reason == "policy_violation"
