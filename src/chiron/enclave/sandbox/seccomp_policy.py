"""The seccomp allowlist: the only system calls the recipe's process may make.

Anything not listed kills the whole process (SECCOMP_RET_KILL_PROCESS), which the
enclave reports as `policy_violation`. The filter is synchronized onto every thread that
already exists (TSYNC: torch's thread pool does), and new threads inherit it. What
remains allowed is computation on memory the process already has plus reads from the
files Landlock lets through and writes to descriptors that are already open (the two
protocol pipes and /dev/null).
"""

from __future__ import annotations

import errno
import os

import pyseccomp as seccomp

from chiron.enclave.sandbox._linux import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    CLONE_THREAD,
)

ALLOWED = (
    # Memory. Mapping files is harmless: only read-only descriptors can be opened.
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
    # I/O on descriptors that are already open, and reading what Landlock allows.
    "read", "readv", "pread64", "write", "writev", "lseek", "close",
    "fstat", "newfstatat", "stat", "lstat", "statx", "getdents64",
    "readlink", "readlinkat", "access", "faccessat", "faccessat2", "getcwd",
    # Threads and their synchronization (thread creation: see `clone` below).
    "futex", "set_robust_list", "rseq", "set_tid_address", "sched_yield",
    "sched_getaffinity", "exit", "exit_group",
    # Time, signals delivered to this process, identity queries.
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
    "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid",
    "getrandom", "uname", "sysinfo", "getrusage", "getrlimit",
)  # fmt: skip

# Flags of open(2) that would write, create or truncate anything.
_OPEN_WRITE_FLAGS = (
    os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | 0o20000000  # __O_TMPFILE
)
_NEW_NAMESPACE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
    | CLONE_NEWPID | CLONE_NEWNET
)  # fmt: skip
# ioctl requests that change nothing outside this process. Terminal requests that inject
# input or reconfigure a device (TIOCSTI, ...) are not among them.
_IOCTL_ALLOWED = (
    0x5401,  # TCGETS: isatty(), which open() asks of every new file
    0x5413,  # TIOCGWINSZ: terminal size queries of progress bars
    0x5421,  # FIONBIO: os.set_blocking
    0x5450,  # FIONCLEX
    0x5451,  # FIOCLEX: os.set_inheritable(fd, False)
)
_PRCTL_ALLOWED = (15, 16)  # PR_SET_NAME, PR_GET_NAME: naming threads
# fcntl on this process's own descriptors; not F_SETOWN/F_SETSIG (signals to others on
# I/O), leases, or locks.
_FCNTL_ALLOWED = (
    0,  # F_DUPFD
    1,  # F_GETFD
    2,  # F_SETFD
    3,  # F_GETFL
    4,  # F_SETFL
    1030,  # F_DUPFD_CLOEXEC
)


def build_filter() -> seccomp.SyscallFilter:
    """The filter, not yet loaded (exported for inspection by tests and docs)."""
    policy = seccomp.SyscallFilter(seccomp.KILL_PROCESS)
    policy.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)  # i386/x32 entry points
    policy.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    for name in ALLOWED:
        policy.add_rule(seccomp.ALLOW, name)
    # Open read-only only. openat2 takes its flags in a struct seccomp cannot read:
    # refuse it with ENOSYS so callers fall back to openat.
    for name, flags_arg in (("openat", 2), ("open", 1)):
        policy.add_rule(
            seccomp.ALLOW, name, seccomp.Arg(flags_arg, seccomp.MASKED_EQ, _OPEN_WRITE_FLAGS, 0)
        )
    policy.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")
    # Threads yes, processes and namespaces no. glibc tries clone3 first, whose flags
    # live in memory seccomp cannot inspect; ENOSYS makes it fall back to clone.
    policy.add_rule(
        seccomp.ALLOW,
        "clone",
        seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD | _NEW_NAMESPACE_FLAGS, CLONE_THREAD),
    )
    policy.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # Signals only to this very process (raise(), abort()).
    policy.add_rule(seccomp.ALLOW, "tgkill", seccomp.Arg(0, seccomp.EQ, os.getpid()))
    # Reading limits is fine; changing them is not.
    policy.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(2, seccomp.EQ, 0))
    for request in _IOCTL_ALLOWED:
        policy.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.EQ, request))
    for option in _PRCTL_ALLOWED:
        policy.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, option))
    for command in _FCNTL_ALLOWED:
        policy.add_rule(seccomp.ALLOW, "fcntl", seccomp.Arg(1, seccomp.EQ, command))
    return policy


def install() -> None:
    """Load the filter into every thread of this process. There is no way back."""
    build_filter().load()
