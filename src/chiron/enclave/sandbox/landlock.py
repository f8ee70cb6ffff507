"""Landlock: the kernel's own allowlist of what this process may do with files and TCP.

Applied with raw syscalls (no binding is needed for three calls). Landlock domains
attach to the calling thread and its future threads only; there is no way to apply one
to threads that already exist on this kernel (ABI < 8), so the bootstrap calls
`restrict` while the interpreter still has exactly one thread.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from chiron.enclave.sandbox import _linux

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1

# Filesystem rights, by the ABI version that introduced them.
_FS_RIGHTS_BY_ABI = (
    (1, (1 << 13) - 1),  # execute, write, read, read_dir, remove, make_* (13 rights)
    (2, 1 << 13),  # refer (link or rename across directories)
    (3, 1 << 14),  # truncate
    (5, 1 << 15),  # ioctl on devices
)
READ_FILE = 1 << 2
READ_DIR = 1 << 3

_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def abi_version() -> int:
    """The Landlock ABI the running kernel offers (0 when Landlock is unavailable)."""
    try:
        return _linux.syscall(
            _linux.SYS_LANDLOCK_CREATE_RULESET,
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_CREATE_RULESET_VERSION),
        )
    except OSError:
        return 0


def restrict(read_only_paths: Iterable[str]) -> int:
    """Allow reading exactly `read_only_paths` (and what lies beneath); deny all else.

    Everything the kernel's Landlock ABI can handle is handled: no file or directory
    may be written, created, removed, renamed, linked, truncated or executed; no TCP
    bind or connect (ABI >= 4); no abstract unix socket or signal outside this
    sandbox (ABI >= 6). Returns the ABI version used. Raises OSError if Landlock is
    missing: the sandbox refuses to run without it.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError(38, "Landlock is not available on this kernel")
    handled_fs = 0
    for version, rights in _FS_RIGHTS_BY_ABI:
        if abi >= version:
            handled_fs |= rights
    attr = _RulesetAttr(handled_fs, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP  # no port rules: none
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    ruleset = _linux.syscall(
        _linux.SYS_LANDLOCK_CREATE_RULESET,
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    try:
        for path in sorted(set(read_only_paths)):
            _allow_read(ruleset, path)
        _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
        _linux.syscall(_linux.SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi


def _allow_read(ruleset: int, path: str) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        # Directory rights on a file are refused by the kernel (EINVAL).
        rights = READ_FILE | (READ_DIR if os.path.isdir(path) else 0)
        rule = _PathBeneathAttr(rights, fd)
        _linux.syscall(
            _linux.SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)
