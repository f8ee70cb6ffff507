"""The measurement describes what runs: the enclave imports nothing from outside it.

The host may set environment variables for the processes it starts and place files
anywhere that is not measured. The enclave interpreter runs isolated, so such files are
never imported; every file it can import (its whole module search path) is measured, so
changing any of them changes the measurement.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chiron.core import measurement as measured
from chiron.core.attestation.evidence import Evidence
from chiron.core.measurement import (
    SearchPath,
    enclave_search_path,
    installed_package_root,
    measure_runtime,
)
from chiron.enclave.boundary import EnclaveProcess

SHADOW_MODULE = """\
import pathlib
pathlib.Path({marker!r}).write_text("imported")
"""


def write_shadow_tree(root: Path, marker: Path) -> None:
    """Modules a host would like the enclave to import, each leaving a marker if it runs."""
    code = SHADOW_MODULE.format(marker=str(marker))
    for name in (
        "sitecustomize.py",
        "usercustomize.py",
        "chiron/__init__.py",
        "chiron/enclave/__init__.py",
        "chiron/enclave/main.py",
        "chiron/core/__init__.py",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(code)
    (root / "shadow.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")


def test_shadow_modules_in_the_hosts_environment_do_not_run_in_the_enclave(tmp_path, monkeypatch):
    shadow = tmp_path / "shadow"
    marker = tmp_path / "marker"
    write_shadow_tree(shadow, marker)
    user_base = tmp_path / "userbase"
    user_site = user_base / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    write_shadow_tree(user_site / "site-packages", marker)
    hostile = {
        "PYTHONPATH": str(shadow),
        "PYTHONUSERBASE": str(user_base),
        "PYTHONSTARTUP": str(shadow / "sitecustomize.py"),
        "PYTHONINSPECT": "1",
    }
    # The shadow tree works on an interpreter that honours the environment.
    subprocess.run(
        [sys.executable, "-c", "pass"], env={**os.environ, **hostile}, check=True, timeout=60
    )
    assert marker.exists()
    marker.unlink()

    for name, value in hostile.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(shadow)  # nor the working directory
    nonce = os.urandom(32)
    with EnclaveProcess.start(role="train", state_dir=tmp_path / "state") as enclave:
        evidence = Evidence.from_bytes(enclave.call("attest", {"nonce": nonce})["evidence"])
    assert not marker.exists()
    # The editable install's .pth still works (the enclave found chiron), and the enclave
    # measured the same runtime this process measures.
    assert evidence.measurement == measure_runtime().hex


def test_the_measured_search_path_is_the_isolated_interpreters():
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
        env={},
        timeout=60,
    ).stdout.split("\n")
    actual = [os.path.realpath(p) for p in out if p and os.path.isdir(p)]
    assert [str(entry.directory) for entry in enclave_search_path().entries] == actual
    # The chiron package root is on it (the editable install's .pth or site-packages).
    assert str(installed_package_root()) in actual


# --- a stand-in installation: stdlib, a site directory, an interpreter -------------


def copy_runtime(destination: Path) -> Path:
    source = installed_package_root() / "chiron"
    target = destination / "chiron"
    target.mkdir(parents=True)
    shutil.copy2(source / "__init__.py", target / "__init__.py")
    for package in ("core", "enclave", "recipes"):
        shutil.copytree(
            source / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return destination


def fake_installation(base: Path) -> SearchPath:
    """A small interpreter installation: what `enclave_search_path` would find."""
    stdlib = base / "lib" / "python3"
    (stdlib / "json").mkdir(parents=True)
    (stdlib / "os.py").write_text("# os\n")
    (stdlib / "json" / "__init__.py").write_text("# json\n")
    (stdlib / "site-packages" / "other").mkdir(parents=True)  # the base's own, not on the path
    (stdlib / "site-packages" / "other" / "x.py").write_text("")
    dynload = stdlib / "lib-dynload"
    dynload.mkdir()
    (dynload / "_ssl.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF ssl")
    site = base / "venv" / "site-packages"
    package = site / "torch"
    (package / "lib").mkdir(parents=True)
    (package / "__init__.py").write_text("import torch._C\n")
    (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF torch C")
    (package / "lib" / "libtorch_cpu.so").write_bytes(b"\x7fELF" + bytes(4096))
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"cache")
    info = site / "torch-2.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("torch/__init__.py,sha256=x,17\n")
    (info / "entry_points.txt").write_text("")
    (site / "numpy.libs").mkdir()
    (site / "numpy.libs" / "libopenblas.so.0").write_bytes(b"\x7fELF openblas")
    # An editable install: a .pth naming a directory by absolute path.
    source = base / "checkout" / "src"
    (source / "mypkg").mkdir(parents=True)
    (source / "mypkg" / "__init__.py").write_text("")
    (site / "__editable__.mypkg.pth").write_text(f"{source}\n")
    interpreter = base / "bin" / "python3"
    interpreter.parent.mkdir()
    interpreter.write_bytes(b"\x7fELF python")
    return fake_search_path(base)


def fake_search_path(base: Path) -> SearchPath:
    stdlib = base / "lib" / "python3"
    return enclave_search_path(
        stdlib=(
            ("stdlib-zip", base / "lib" / "python3.zip"),
            ("stdlib", stdlib),
            ("lib-dynload", stdlib / "lib-dynload"),
        ),
        site_directories=[base / "venv" / "site-packages"],
        interpreter=[("bin/python3", base / "bin" / "python3")],
    )


@pytest.fixture
def installation(tmp_path):
    root = copy_runtime(tmp_path / "runtime")
    fake_installation(tmp_path / "python")

    def measure() -> str:
        search_path = fake_search_path(tmp_path / "python")
        return measure_runtime(root, search_path=search_path, use_cache=False).hex

    return root, tmp_path / "python", measure


def same_size_change(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_changing_a_measured_runtime_file_changes_the_measurement(installation):
    root, _base, measure = installation
    before = measure()
    same_size_change(root / "chiron" / "enclave" / "main.py")
    assert measure() != before


@pytest.mark.parametrize(
    "change",
    [
        "stdlib source",
        "native extension",
        "shared library beside a package",
        "library outside any package",
        "distribution source",
        "distribution metadata",
        "new module in a distribution",
        "new top-level module",
        "sitecustomize",
        "new .pth",
        "changed .pth",
        "module in a directory a .pth adds",
        "interpreter",
        "standard library zip archive",
        "zip archive a .pth adds",
        "named pipe (never opened)",
    ],
)
def test_changing_anything_importable_changes_the_measurement(installation, change):
    _root, base, measure = installation
    site = base / "venv" / "site-packages"
    before = measure()
    if change == "stdlib source":
        same_size_change(base / "lib" / "python3" / "json" / "__init__.py")
    elif change == "native extension":
        same_size_change(site / "torch" / "_C.cpython-311-x86_64-linux-gnu.so")
    elif change == "shared library beside a package":
        same_size_change(site / "torch" / "lib" / "libtorch_cpu.so")
    elif change == "library outside any package":
        same_size_change(site / "numpy.libs" / "libopenblas.so.0")
    elif change == "distribution source":
        same_size_change(site / "torch" / "__init__.py")
    elif change == "distribution metadata":
        (site / "torch-2.0.dist-info" / "entry_points.txt").write_text(
            "[torch.backends]\nevil = evil:load\n"
        )
    elif change == "new module in a distribution":
        (site / "torch" / "lib" / "_shadow.py").write_text("")
    elif change == "new top-level module":
        (site / "evil.py").write_text("")
    elif change == "sitecustomize":
        (base / "lib" / "python3" / "sitecustomize.py").write_text("")
    elif change == "new .pth":
        (site / "zz-shadow.pth").write_text("import os\n")
    elif change == "changed .pth":
        (site / "__editable__.mypkg.pth").write_text(f"{base / 'checkout'}\n")
    elif change == "module in a directory a .pth adds":
        (base / "checkout" / "src" / "sitecustomize.py").write_text("")
    elif change == "interpreter":
        same_size_change(base / "bin" / "python3")
    elif change == "standard library zip archive":
        (base / "lib" / "python3.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    elif change == "zip archive a .pth adds":
        (site / "shadow.egg").write_bytes(b"PK\x05\x06" + bytes(18))
        (site / "shadow.pth").write_text("shadow.egg\n")
    elif change == "named pipe (never opened)":
        os.mkfifo(site / "torch" / "blocking.py")
    assert measure() != before


def test_byte_code_caches_and_foreign_site_directories_are_not_measured(installation):
    _root, base, measure = installation
    before = measure()
    pyc = base / "venv" / "site-packages" / "torch" / "__pycache__" / "__init__.cpython-311.pyc"
    pyc.write_bytes(b"other cache")
    (base / "lib" / "python3" / "site-packages" / "other" / "y.py").write_text("")
    assert measure() == before


def test_the_measurement_is_stable_and_independent_of_absolute_paths(tmp_path):
    one = copy_runtime(tmp_path / "one" / "runtime")
    two = copy_runtime(tmp_path / "elsewhere" / "deeper" / "runtime")
    first = fake_installation(tmp_path / "one" / "python")
    second = fake_installation(tmp_path / "elsewhere" / "deeper" / "python")
    value = measure_runtime(one, search_path=first, use_cache=False).hex
    assert measure_runtime(one, search_path=first, use_cache=False).hex == value
    assert measure_runtime(two, search_path=second, use_cache=False).hex == value
    names = [
        entry.name for entry in measure_runtime(one, search_path=first, use_cache=False).entries
    ]
    assert not any(str(tmp_path) in name or name.startswith("/") for name in names)
    assert "site-packages/torch" in names and "site-packages/__editable__.mypkg.pth" in names
    # With or without the digest cache, the same value.
    assert measure_runtime(two, search_path=second, cache_file=tmp_path / "c.bin").hex == value
    assert measure_runtime(two, search_path=second, cache_file=tmp_path / "c.bin").hex == value


def test_the_digest_cache_notices_changes_and_is_ignored_unless_private(
    installation, tmp_path, monkeypatch
):
    root, base, _measure = installation
    monkeypatch.setattr(measured, "CACHE_SETTLE_NS", 0)
    cache = tmp_path / "cache" / "digests.bin"

    def measure(**options) -> str:
        return measure_runtime(root, search_path=fake_search_path(base), **options).hex

    uncached = measure(use_cache=False)
    assert measure(cache_file=cache) == uncached
    assert cache.stat().st_size > 0
    assert measure(cache_file=cache) == uncached  # served from the cache
    time.sleep(0.05)
    library = base / "venv" / "site-packages" / "torch" / "lib" / "libtorch_cpu.so"
    same_size_change(library)
    changed = measure(use_cache=False)
    assert changed != uncached
    assert measure(cache_file=cache) == changed

    # A cache others can write is not read: forge one claiming the original digests.
    forged = tmp_path / "shared" / "digests.bin"
    forged.parent.mkdir()
    shutil.copy(cache, forged)
    forged.parent.chmod(0o777)
    same_size_change(library)
    restored = measure(use_cache=False)
    assert measure(cache_file=forged) == restored
    assert measured._read_cache(forged) == {}
