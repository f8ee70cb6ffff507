"""The runtime measurement: what it covers, and that it is reproducible."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from chiron.core.measurement import (
    MEASURED_DISTRIBUTIONS,
    installed_package_root,
    measure_runtime,
)


def copy_runtime(destination: Path) -> Path:
    """A copy of the measured part of this installation, as another machine would have it."""
    source = installed_package_root() / "chiron"
    target = destination / "chiron"
    target.mkdir(parents=True)
    shutil.copy2(source / "__init__.py", target / "__init__.py")
    for package in ("core", "enclave", "recipes"):
        shutil.copytree(
            source / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return destination


def test_the_same_files_give_the_same_measurement_anywhere(tmp_path):
    first = copy_runtime(tmp_path / "one" / "site-packages")
    second = copy_runtime(tmp_path / "elsewhere")
    # Different absolute paths, modification times and byte-code caches change nothing.
    (second / "chiron" / "core" / "__pycache__").mkdir(exist_ok=True)
    (second / "chiron" / "core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    assert measure_runtime(first).hex == measure_runtime(second).hex == measure_runtime().hex


def test_a_changed_added_or_renamed_file_changes_the_measurement(tmp_path):
    root = copy_runtime(tmp_path / "copy")
    original = measure_runtime(root).hex
    handler = root / "chiron" / "enclave" / "attestation.py"
    handler.write_bytes(handler.read_bytes() + b"\n# changed\n")
    changed = measure_runtime(root).hex
    assert changed != original
    (root / "chiron" / "recipes" / "extra.py").write_text("")
    added = measure_runtime(root).hex
    assert added not in (original, changed)
    (root / "chiron" / "recipes" / "extra.py").rename(root / "chiron" / "recipes" / "other.py")
    assert measure_runtime(root).hex not in (original, changed, added)


def test_the_measured_set_covers_the_runtime_and_pinned_versions():
    measurement = measure_runtime()
    assert len(measurement.hex) == 64 and int(measurement.hex, 16) >= 0
    kinds = {(entry.kind, entry.name) for entry in measurement.entries}
    assert ("python", "python") in kinds
    assert {("distribution", name) for name in MEASURED_DISTRIBUTIONS} <= kinds
    files = [entry.name for entry in measurement.entries if entry.kind == "file"]
    assert "chiron/__init__.py" in files
    assert "chiron/enclave/main.py" in files and "chiron/core/crypto.py" in files
    assert any(name.startswith("chiron/recipes/") for name in files)
    assert not any("__pycache__" in name or name.startswith("/") for name in files)
    assert not any(name.startswith(("chiron/client/", "chiron/host/")) for name in files)


def test_measuring_does_not_import_torch():
    code = (
        "import sys\n"
        "from chiron.core.measurement import measure_runtime\n"
        "measure_runtime()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
