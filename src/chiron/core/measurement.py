"""The measured set: what "Chiron's enclave runtime" means, declared in one place.

A verifier accepts an enclave only if its measurement is one the verifier expects. The
measurement covers every file of the code that runs inside the enclave (the runtime
itself, `chiron.core`, and the recipe SDK the sandbox loads) and the exact versions of
the libraries the enclave and its sandbox run. It is a hash of relative paths, file
contents and version strings only, never of timestamps or absolute paths, so the same
source and pinned dependencies give the same value on any machine.

Versions are read from installed package metadata (`importlib.metadata`), so measuring
never imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError

# The trusted runtime, relative to the directory that holds the `chiron` package. The
# top-level package file is included because importing any chiron module runs it.
MEASURED_FILES = ("chiron/__init__.py",)
MEASURED_PACKAGES = ("chiron/core", "chiron/enclave", "chiron/recipes")
# Distributions whose code runs inside the enclave or its sandbox.
MEASURED_DISTRIBUTIONS = ("torch", "numpy", "cryptography", "safetensors", "pyseccomp")

_SKIPPED_DIRECTORIES = frozenset({"__pycache__"})
_DOMAIN = b"chiron/measurement/v1\x00"
NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class MeasuredEntry:
    """One item of the measured set: a file and its SHA-256, or a component and its version."""

    kind: str  # "python", "distribution" or "file"
    name: str
    value: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "value": self.value}


@dataclass(frozen=True)
class Measurement:
    """A runtime measurement: 64 hex digits, and the entries it covers."""

    hex: str
    entries: tuple[MeasuredEntry, ...]


def installed_package_root() -> Path:
    """The directory holding the `chiron` package this code was imported from."""
    return Path(__file__).resolve().parents[2]


def _file_entries(package_root: Path) -> list[MeasuredEntry]:
    paths: list[Path] = [package_root / name for name in MEASURED_FILES]
    for package in MEASURED_PACKAGES:
        directory = package_root / package
        if not directory.is_dir():
            raise InputError(f"cannot measure the runtime: {directory} is not a directory")
        paths.extend(
            path
            for path in directory.rglob("*")
            if path.is_file()
            and not _SKIPPED_DIRECTORIES.intersection(path.relative_to(package_root).parts)
        )
    entries = []
    for path in paths:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise InputError(f"cannot measure the runtime: {path}: {exc.strerror}") from None
        entries.append(MeasuredEntry("file", path.relative_to(package_root).as_posix(), digest))
    return sorted(entries, key=lambda entry: entry.name)


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def measure_runtime(package_root: Path | None = None) -> Measurement:
    """Measure the enclave runtime installed under `package_root` (default: this one)."""
    root = package_root if package_root is not None else installed_package_root()
    entries = [
        MeasuredEntry("python", "python", f"{sys.version_info.major}.{sys.version_info.minor}"),
        *(
            MeasuredEntry("distribution", name, _distribution_version(name))
            for name in MEASURED_DISTRIBUTIONS
        ),
        *_file_entries(root),
    ]
    encoded = canonical_json([[entry.kind, entry.name, entry.value] for entry in entries])
    return Measurement(hashlib.sha256(_DOMAIN + encoded).hexdigest(), tuple(entries))
