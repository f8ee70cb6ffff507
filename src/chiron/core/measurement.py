"""The measured set: what "Chiron's enclave runtime" means, declared in one place.
Long on purpose: what is measured, and how it is hashed and cached, must not drift apart.

A verifier accepts an enclave only if its measurement is one the verifier expects, so the
measurement must change whenever the code that can run inside the enclave changes. It
covers:

- every file of the trusted runtime (`chiron/__init__.py`, `chiron.core`,
  `chiron.enclave`, `chiron.recipes`), under the package root being measured;
- the interpreter: its version, its executable and its shared `libpython`;
- the enclave interpreter's whole module search path, exactly as `python -I` builds it
  (the standard library, `lib-dynload`, the site directories and every directory a
  `.pth` file adds): every `.pth` file, and the content of every file below each path
  entry (sources, native extensions and the shared libraries they load, package data,
  distribution metadata such as `entry_points.txt`), `__pycache__` excepted;
- the versions of the libraries the enclave and its sandbox run (for the listing).

The value is a SHA-256 over relative names, file digests and version strings only,
never timestamps or absolute paths, so the same installation gives the same value on
any machine. Measuring never imports torch.

Hashing the full search path (about a gigabyte with torch) takes seconds, so file
digests are cached per file, keyed by (device, inode, size, mtime, ctime), in a file only
the measuring user can write; see `docs/attestation.md`, "What the measurement covers",
for what that cache is trusted for.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import pwd
import site
import stat
import struct
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError

# The trusted runtime, relative to the directory that holds the `chiron` package. The
# top-level package file is included because importing any chiron module runs it.
MEASURED_FILES = ("chiron/__init__.py",)
MEASURED_PACKAGES = ("chiron/core", "chiron/enclave", "chiron/recipes")
# Distributions whose code runs inside the enclave or its sandbox (versions listed; their
# files are covered with the rest of the search path).
MEASURED_DISTRIBUTIONS = ("torch", "numpy", "cryptography", "safetensors", "pyseccomp")

_SKIPPED_DIRECTORIES = frozenset({"__pycache__"})
# Site directories of other installations nested in a path entry (the base interpreter's
# site-packages inside its standard library): not importable names, not on the path.
_FOREIGN_SITE_DIRECTORIES = frozenset({"site-packages", "dist-packages"})
_DOMAIN = b"chiron/measurement/v2\x00"
NOT_INSTALLED = "not installed"
MISSING = "missing"  # a dangling symbolic link on the path: nothing to import

# The digest cache: see _DigestCache.
_CACHE_NAME = "measurement-digests-v1.bin"
_CACHE_MAGIC = b"chiron/measurement/digest-cache/v1\n"
_CACHE_KEY = struct.Struct("<5q")  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
_CACHE_RECORD = _CACHE_KEY.size + 32
# A file changed within this long before it was hashed is not cached: a write in the same
# timestamp tick as the hashing could leave (size, mtime, ctime) unchanged.
CACHE_SETTLE_NS = 2_000_000_000
_HASH_THREADS = 4
_SCAN_THREADS = 4


@dataclass(frozen=True)
class MeasuredEntry:
    """One item of the measured set: a file or tree and its SHA-256, or a version."""

    kind: str  # "python", "interpreter", "distribution", "search-path", "startup", "tree", "file"
    name: str
    value: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "value": self.value}


@dataclass(frozen=True)
class Measurement:
    """A runtime measurement: 64 hex digits, and the entries it covers."""

    hex: str
    entries: tuple[MeasuredEntry, ...]


@dataclass(frozen=True)
class PathEntry:
    """One entry of the module search path: a reproducible label and the directory."""

    label: str
    directory: Path


@dataclass(frozen=True)
class StartupFile:
    """A `.pth` file: its label and its content with each added path replaced by a label."""

    label: str
    normalized: bytes


@dataclass(frozen=True)
class SearchPath:
    """The enclave interpreter's module search path, and the interpreter's own files."""

    entries: tuple[PathEntry, ...]
    startup: tuple[StartupFile, ...]
    interpreter: tuple[tuple[str, Path], ...]
    archives: tuple[tuple[str, Path], ...] = ()  # zip files on the path


def installed_package_root() -> Path:
    """The directory holding the `chiron` package this code was imported from."""
    return Path(__file__).resolve().parents[2]


def interpreter_files() -> tuple[tuple[str, Path], ...]:
    """The interpreter executable and its shared libpython, named relative to its prefix."""
    executable = Path(getattr(sys, "_base_executable", sys.executable) or sys.executable)
    files = [(f"bin/{executable.name}", executable.resolve())]
    library = sysconfig.get_config_var("LDLIBRARY")
    library_dir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and library and library_dir:
        path = Path(library_dir) / library
        if path.exists():
            files.append((f"lib/{path.resolve().name}", path.resolve()))
    return tuple(files)


def enclave_search_path(
    *,
    stdlib: Sequence[tuple[str, Path]] | None = None,
    site_directories: Sequence[Path] | None = None,
    interpreter: Sequence[tuple[str, Path]] | None = None,
) -> SearchPath:
    """The search path of `python -I` with this interpreter, built as `site` builds it.

    `stdlib` (label, directory) and `site_directories` default to this interpreter's;
    tests pass stand-ins. Directories that do not exist are not on the path.
    """
    if stdlib is None:
        version = f"{sys.version_info[0]}{sys.version_info[1]}"
        dotted = f"{sys.version_info[0]}.{sys.version_info[1]}"
        base = Path(sys.base_exec_prefix) / sys.platlibdir
        stdlib = (
            ("stdlib-zip", Path(sys.base_prefix) / "lib" / f"python{version}.zip"),
            ("stdlib", Path(sysconfig.get_paths()["stdlib"])),
            ("lib-dynload", base / f"python{dotted}" / "lib-dynload"),
        )
    if site_directories is None:
        site_directories = [Path(p) for p in site.getsitepackages([sys.prefix])]
    entries: list[PathEntry] = []
    seen: set[str] = set()

    archives: list[tuple[str, Path]] = []

    def add(label: str, directory: Path) -> bool:
        real = os.path.realpath(directory)
        if real in seen or not os.path.exists(real):
            return False
        seen.add(real)
        if os.path.isdir(real):
            entries.append(PathEntry(label, Path(real)))
        else:  # a zip archive (python3XY.zip, an egg): zipimport reads it; hashed whole
            archives.append((label, Path(real)))
        return True

    for label, directory in stdlib:
        add(label, directory)
    startup: list[StartupFile] = []
    for number, site_dir in enumerate(site_directories):
        site_label = "site-packages" if number == 0 else f"site-packages-{number + 1}"
        if not add(site_label, site_dir):
            continue
        real_site = os.path.realpath(site_dir)
        try:
            names = sorted(name for name in os.listdir(real_site) if name.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            startup.append(_read_pth(site_label, real_site, name, add))
    return SearchPath(
        tuple(entries),
        tuple(startup),
        tuple(interpreter) if interpreter is not None else interpreter_files(),
        tuple(archives),
    )


def _read_pth(
    site_label: str, site_dir: str, name: str, add: Callable[[str, Path], bool]
) -> StartupFile:
    """Read a .pth file as `site.addpackage` does; path lines are replaced by labels."""
    label = f"{site_label}/{name}"
    try:
        with open(os.path.join(site_dir, name), "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise InputError(f"cannot measure the runtime: {name}: {exc.strerror}") from None
    normalized: list[bytes] = []
    for number, line in enumerate(raw.splitlines(keepends=True)):
        if line.startswith(b"#") or not line.strip():
            normalized.append(line)
        elif line.startswith((b"import ", b"import\t")):
            normalized.append(line)  # code site runs: measured as written
        else:
            text = line.rstrip().decode(errors="surrogateescape")
            directory = Path(os.path.abspath(os.path.join(site_dir, text)))
            entry_label = f"{label}:{number + 1}"
            added = add(entry_label, directory)
            normalized.append(f"<path {entry_label if added else 'not added'}>\n".encode())
    return StartupFile(label, b"".join(normalized))


class _DigestCache:
    """SHA-256 of files, remembered per (device, inode, size, mtime_ns, ctime_ns).

    ctime cannot be set by any system call; every write or metadata change through the
    kernel updates it, and a new file on a reused inode gets a new one. The cache is a
    file in `~/.cache/chiron/` of the measuring user and is read only if that user owns
    it and its directory and nobody else can write either. It only saves time: it never
    enters the measurement's value.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[bytes, bytes] = {}
        self.used: dict[bytes, bytes] = {}
        if path is not None:
            self.known = _read_cache(path)

    def remember(self, key: bytes, digest: bytes, settled_before_ns: int) -> None:
        _dev, _ino, _size, mtime_ns, ctime_ns = _CACHE_KEY.unpack(key)
        if max(mtime_ns, ctime_ns) < settled_before_ns:
            self.used[key] = digest

    def save(self) -> None:
        if self.path is None or self.used == self.known:
            return
        body = _CACHE_MAGIC + b"".join(key + digest for key, digest in sorted(self.used.items()))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not _owned_and_private(os.stat(self.path.parent)):
                return
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".digests-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(body)
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError:
            return  # an unwritable cache only costs time


def default_cache_file() -> Path | None:
    """`~/.cache/chiron/<name>` of the effective user (from the password database)."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return None
    return Path(home) / ".cache" / "chiron" / _CACHE_NAME


def _owned_and_private(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_cache(path: Path) -> dict[bytes, bytes]:
    try:
        if not _owned_and_private(os.stat(path.parent)):
            return {}
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or not _owned_and_private(info):
            return {}
        data = handle.read()
    if not data.startswith(_CACHE_MAGIC) or (len(data) - len(_CACHE_MAGIC)) % _CACHE_RECORD:
        return {}
    view = memoryview(data)[len(_CACHE_MAGIC) :]
    key_size = _CACHE_KEY.size
    return {
        bytes(view[i : i + key_size]): bytes(view[i + key_size : i + _CACHE_RECORD])
        for i in range(0, len(view), _CACHE_RECORD)
    }


def _sha256_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


class _Hasher:
    """Digests of many files: from the cache where it is valid, in parallel otherwise."""

    def __init__(self, cache: _DigestCache) -> None:
        self.cache = cache
        self.settled_before_ns = time.time_ns() - CACHE_SETTLE_NS

    def digests(self, files: Sequence[tuple[str, os.stat_result]]) -> list[str]:
        results: list[bytes | None] = []
        missing: list[int] = []
        keys: list[bytes] = []
        pack = _CACHE_KEY.pack
        known = self.cache.known
        used = self.cache.used
        for index, (_path, info) in enumerate(files):
            key = pack(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            keys.append(key)
            found = known.get(key)
            results.append(found)
            if found is None:
                missing.append(index)
            else:
                used[key] = found
        paths = [files[index][0] for index in missing]
        try:
            if len(paths) > 64:
                with ThreadPoolExecutor(min(_HASH_THREADS, os.cpu_count() or 1)) as pool:
                    computed = list(pool.map(_sha256_file, paths, chunksize=32))
            else:
                computed = [_sha256_file(path) for path in paths]
        except OSError as exc:
            raise InputError(
                f"cannot measure the runtime: {exc.filename}: {exc.strerror}"
            ) from None
        for index, digest in zip(missing, computed, strict=True):
            results[index] = digest
            self.cache.remember(keys[index], digest, self.settled_before_ns)
        return [digest.hex() for digest in results if digest is not None]


def _scan(
    entry: PathEntry, skip: frozenset[str], other_entries: frozenset[str], pool: ThreadPoolExecutor
) -> list[tuple[str, str, str, os.stat_result | None]]:
    """Every file below a path entry: (top-level item, relative path, path, stat or None).

    Each top-level directory is walked by its own task: the stat calls, which dominate,
    release the interpreter lock and overlap.
    """
    found: list[tuple[str, str, str, os.stat_result | None]] = []
    subtrees: list[tuple[str, str]] = []
    _scan_directory(str(entry.directory), "", skip, other_entries, found, subtrees)
    for result in pool.map(lambda tree: _walk(tree[0], tree[1], skip, other_entries), subtrees):
        found.extend(result)
    return found


def _walk(
    directory: str, relative: str, skip: frozenset[str], other_entries: frozenset[str]
) -> list[tuple[str, str, str, os.stat_result | None]]:
    found: list[tuple[str, str, str, os.stat_result | None]] = []
    stack = [(directory, relative)]
    visited: set[tuple[int, int]] = set()
    while stack:
        subdirectories: list[tuple[str, str]] = []
        path, rel = stack.pop()
        _scan_directory(path, rel, skip, other_entries, found, subdirectories)
        for subdirectory in subdirectories:
            info = os.stat(subdirectory[0])
            if (info.st_dev, info.st_ino) not in visited:  # a linked loop
                visited.add((info.st_dev, info.st_ino))
                stack.append(subdirectory)
    return found


def _scan_directory(
    directory: str,
    relative: str,
    skip: frozenset[str],
    other_entries: frozenset[str],
    found: list[tuple[str, str, str, os.stat_result | None]],
    subdirectories: list[tuple[str, str]],
) -> None:
    top = relative.split("/", 1)[0]
    try:
        scanner = os.scandir(directory)
    except OSError as exc:
        raise InputError(f"cannot measure the runtime: {directory}: {exc.strerror}") from None
    with scanner:
        for item in scanner:
            name = item.name
            path = item.path
            if path in skip:
                continue
            rel = f"{relative}/{name}" if relative else name
            if item.is_dir():
                if not (
                    name in _SKIPPED_DIRECTORIES
                    or path in other_entries
                    or (not relative and name in _FOREIGN_SITE_DIRECTORIES)
                ):
                    subdirectories.append((path, rel))
                continue
            if not relative and name.endswith(".pth"):
                continue  # measured as a startup file, normalized
            try:
                info: os.stat_result | None = item.stat()
            except FileNotFoundError:
                info = None  # a dangling link: nothing there to import
            found.append((top or name, rel, path, info))


def _tree_entries(search_path: SearchPath, cache: _DigestCache) -> list[MeasuredEntry]:
    installed = installed_package_root()
    skip = frozenset(str(installed / name) for name in (*MEASURED_FILES, *MEASURED_PACKAGES))
    directories = frozenset(str(entry.directory) for entry in search_path.entries)
    hasher = _Hasher(cache)
    entries: list[MeasuredEntry] = []
    with ThreadPoolExecutor(_SCAN_THREADS) as pool:
        scans = [
            _scan(entry, skip, directories - {str(entry.directory)}, pool)
            for entry in search_path.entries
        ]
    for position, (entry, found) in enumerate(zip(search_path.entries, scans, strict=True)):
        entries.append(MeasuredEntry("search-path", entry.label, str(position)))
        regular = [
            (path, info)
            for _top, _rel, path, info in found
            if info is not None and stat.S_ISREG(info.st_mode)
        ]
        digests = iter(hasher.digests(regular))
        trees: dict[str, list[str]] = {}
        for top, rel, _path, info in found:
            if info is None:
                digest = MISSING
            elif stat.S_ISREG(info.st_mode):
                digest = next(digests)
            else:  # a FIFO, socket or device: never read (it could block), named by type
                digest = f"special {stat.filemode(info.st_mode)[0]}"
            trees.setdefault(top, []).append(f"{rel}\0{digest}\n")
        for top in sorted(trees):
            listing = "".join(sorted(trees[top])).encode(errors="surrogateescape")
            entries.append(
                MeasuredEntry("tree", f"{entry.label}/{top}", hashlib.sha256(listing).hexdigest())
            )
    for startup in search_path.startup:
        digest = hashlib.sha256(startup.normalized).hexdigest()
        entries.append(MeasuredEntry("startup", startup.label, digest))
    for kind, files in (
        ("interpreter", search_path.interpreter),
        ("archive", search_path.archives),
    ):
        try:
            infos = [(str(path), os.stat(path)) for _name, path in files]
        except OSError as exc:
            raise InputError(
                f"cannot measure the runtime: {exc.filename}: {exc.strerror}"
            ) from None
        for (name, _file), digest in zip(files, hasher.digests(infos), strict=True):
            entries.append(MeasuredEntry(kind, name, digest))
    return entries


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


def measure_runtime(
    package_root: Path | None = None,
    *,
    search_path: SearchPath | None = None,
    cache_file: Path | None = None,
    use_cache: bool = True,
) -> Measurement:
    """Measure the enclave runtime installed under `package_root` (default: this one).

    `search_path` defaults to `enclave_search_path()`, the path the enclave interpreter
    imports from. The installed copies of the runtime's own files are left out of it:
    they are measured from `package_root`. `cache_file` (default `default_cache_file()`)
    holds file digests between runs; `use_cache=False` hashes every file.
    """
    root = package_root if package_root is not None else installed_package_root()
    path = search_path if search_path is not None else enclave_search_path()
    cache = _DigestCache((cache_file or default_cache_file()) if use_cache else None)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    entries = [
        MeasuredEntry("python", "python", python),
        *(
            MeasuredEntry("distribution", name, _distribution_version(name))
            for name in MEASURED_DISTRIBUTIONS
        ),
        *_tree_entries(path, cache),
        *_file_entries(root),
    ]
    cache.save()
    return Measurement(_digest(entries), tuple(entries))


def _digest(entries: Iterable[MeasuredEntry]) -> str:
    encoded = canonical_json([[entry.kind, entry.name, entry.value] for entry in entries])
    return hashlib.sha256(_DOMAIN + encoded).hexdigest()
