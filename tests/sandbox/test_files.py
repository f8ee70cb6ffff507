"""File attacks: nothing is created, changed or removed anywhere, and no host file is read."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from tests.sandbox.conftest import recipe


def _targets(host_dir: Path) -> dict[str, tuple[str, Path]]:
    """(path the recipe writes to, where the host would find it)."""
    name = f"chiron-red-team-{uuid.uuid4().hex}"
    return {
        "relative": (name, Path("/") / name),  # the child's working directory is /
        "parent": (f"../../{name}", Path("/") / name),
        "home": (str(Path.home() / name), Path.home() / name),
        "tmp": (f"/tmp/{name}", Path("/tmp") / name),
        "dev-shm": (f"/dev/shm/{name}", Path("/dev/shm") / name),
        "host-dir": (str(host_dir / name), host_dir / name),
    }


@pytest.mark.parametrize("where", ["relative", "parent", "home", "tmp", "dev-shm", "host-dir"])
def test_create_a_file(run_attack, host_dir, marker, where):
    written, seen = _targets(host_dir)[where]
    outcome = run_attack(
        recipe(
            f"""
            with open({written!r}, "w") as handle:
                handle.write("{marker}")
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert not seen.exists()


def test_create_directories_links_and_fifos(run_attack, host_dir):
    existing = host_dir / "existing"
    existing.write_text("keep me")
    outcome = run_attack(
        recipe(
            f"""
            for attempt in (
                lambda: os.mkdir("{host_dir}/made"),
                lambda: os.symlink("/etc/passwd", "{host_dir}/link"),
                lambda: os.link("{existing}", "{host_dir}/hard"),
                lambda: os.mkfifo("{host_dir}/fifo"),
            ):
                try:
                    attempt()
                except OSError:
                    pass
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert sorted(p.name for p in host_dir.iterdir()) == ["existing"]


def test_remove_rename_and_chmod_a_host_file(run_attack, host_dir):
    victim = host_dir / "victim"
    victim.write_text("keep me")
    victim.chmod(0o600)
    outcome = run_attack(
        recipe(
            f"""
            for attempt in (
                lambda: os.chmod("{victim}", 0o777),
                lambda: os.rename("{victim}", "{host_dir}/renamed"),
                lambda: os.truncate("{victim}", 0),
                lambda: os.unlink("{victim}"),
            ):
                try:
                    attempt()
                except OSError:
                    pass
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert victim.read_text() == "keep me"
    assert victim.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in host_dir.iterdir()) == ["victim"]


def test_open_a_readable_file_for_writing(run_attack):
    # A file the sandbox may read (the recipe runtime itself) must not be writable.
    import chiron.recipes.runtime as runtime

    path = Path(runtime.__file__)
    before = path.read_bytes()
    outcome = run_attack(
        recipe(
            f"""
            os.open("{path}", os.O_RDWR)
            """
        )
    )
    assert outcome.reason == "policy_violation"
    assert path.read_bytes() == before


def _read_attack(*paths: str) -> bytes:
    """Read whatever of `paths` can be read, keep it in the model, and train on."""
    return recipe(
        f"""
        stolen = b""
        for path in {list(paths)!r}:
            try:
                with open(path, "rb") as handle:
                    stolen += handle.read(100)
            except OSError as error:
                stolen += type(error).__name__.encode()
        keep(stolen)
        """
    )


def test_read_a_key_file_outside_tmp(run_attack, host_dir, marker):
    key = host_dir / "owner.key"
    key.write_text(marker)
    key.chmod(0o600)
    outcome = run_attack(_read_attack(str(key)))
    assert outcome.reason is None  # the attempt failed; the recipe trained on
    assert b"PermissionError" in outcome.loot()  # Landlock refused, not "not found"
    assert marker.encode() not in outcome.all_bytes()


def test_read_a_key_file_in_tmp(run_attack, tmp_path, marker):
    key = tmp_path / "owner.key"
    key.write_text(marker)
    outcome = run_attack(_read_attack(str(key)))
    assert outcome.reason is None
    assert marker.encode() not in outcome.all_bytes()


def test_read_the_state_directory(run_attack, host_dir, marker, monkeypatch):
    state = host_dir / "state"
    state.mkdir()
    (state / "sim-root.key").write_text(marker)
    (state / "jobs.db").write_text(marker)
    monkeypatch.setenv("CHIRON_HOME", str(state))
    outcome = run_attack(
        recipe(
            f"""
            stolen = b""
            for base in ("{state}", os.environ.get("CHIRON_HOME", "")):
                try:
                    for name in os.listdir(base):
                        stolen += open(os.path.join(base, name), "rb").read(64)
                except OSError as error:
                    stolen += type(error).__name__.encode()
            keep(stolen)
            """
        )
    )
    assert outcome.reason is None
    assert marker.encode() not in outcome.all_bytes()


def test_read_the_enclave_processes_environment_and_memory(run_attack, marker, monkeypatch):
    # The enclave side (this test process) holds a secret in its environment; /proc
    # would show it to anyone who can see this process.
    monkeypatch.setenv("CHIRON_RED_TEAM_SECRET", marker)
    pid = os.getpid()
    outcome = run_attack(
        _read_attack(
            f"/proc/{pid}/environ",
            f"/proc/{pid}/cmdline",
            f"/proc/{pid}/mem",
            "/proc/1/environ",
            "/proc/self/environ",
            "/proc/1/root/etc/shadow",
        )
    )
    assert outcome.reason is None
    assert marker.encode() not in outcome.all_bytes()


def test_the_childs_environment_is_clean(run_attack, marker, monkeypatch):
    monkeypatch.setenv("CHIRON_RED_TEAM_SECRET", marker)
    monkeypatch.setenv("HTTPS_PROXY", f"http://{marker}@proxy.invalid")
    outcome = run_attack(recipe("keep(repr(sorted(os.environ)).encode())"))
    assert outcome.reason is None
    assert marker.encode() not in outcome.all_bytes()
    names = outcome.loot().rstrip(b"\0").decode()
    assert names == repr(
        sorted(
            [
                "GLIBC_TUNABLES",
                "LANG",
                "OMP_NUM_THREADS",
                "PATH",
                "PYTHONPATH",
                "TORCHINDUCTOR_CACHE_DIR",
            ]
        )
    )


def test_a_training_step_does_not_fault_its_memory_in_again(run_attack):
    """The child's allocator keeps what a step frees for the next (`MALLOC_TUNABLES`):
    with glibc's defaults each step of this small CNN gives its activations back to the
    kernel and takes thousands of page faults getting them again (4,700 to 16,000 a
    step, measured here); with them, about none.
    The fewest of five runs of steps is what counts: reclaim by the kernel on a busy
    machine adds faults now and then (a few thousand in one run under the whole suite),
    the allocator in every step."""
    outcome = run_attack(
        recipe(
            """
            import resource
            _net = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 14 * 14, 10),
            )
            _optimizer = torch.optim.Adam(_net.parameters())
            _x, _y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

            def _step():
                _optimizer.zero_grad()
                nn.functional.cross_entropy(_net(_x), _y).backward()
                _optimizer.step()

            for _ in range(3):
                _step()
            _fewest = None
            for _ in range(5):
                _before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(4):
                    _step()
                _faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - _before
                _fewest = _faults if _fewest is None else min(_fewest, _faults)
            keep(str(_fewest).encode())
            """
        )
    )
    assert outcome.reason is None
    faults_per_step = int(outcome.loot().rstrip(b"\0")) / 4
    assert faults_per_step < 1000, faults_per_step


def test_read_system_secrets(run_attack):
    outcome = run_attack(_read_attack("/etc/shadow", "/root/.bashrc", "/etc/hostname"))
    assert outcome.reason is None
    assert outcome.loot().rstrip(b"\0") == b"PermissionError" * 3


def test_mmap_a_host_file(run_attack, host_dir, marker):
    key = host_dir / "mapped.key"
    key.write_text(marker)
    outcome = run_attack(
        recipe(
            f"""
            try:
                fd = os.open("{key}", os.O_RDONLY)
                keep(mmap.mmap(fd, 0, prot=mmap.PROT_READ)[:100])
            except OSError as error:
                keep(type(error).__name__.encode())
            """
        )
    )
    assert outcome.reason is None
    assert marker.encode() not in outcome.all_bytes()


def test_mmap_a_library_shared_and_writable(run_attack):
    # MAP_SHARED with PROT_WRITE needs a descriptor open for writing: refused.
    import chiron.recipes.runtime as runtime

    path = Path(runtime.__file__)
    before = path.read_bytes()
    outcome = run_attack(
        recipe(
            f"""
            fd = os.open("{path}", os.O_RDONLY)
            try:
                view = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
                view[:4] = b"PWND"
            except OSError as error:
                keep(type(error).__name__.encode())
            """
        )
    )
    assert outcome.reason is None
    assert outcome.loot().rstrip(b"\0") == b"PermissionError"
    assert path.read_bytes() == before
