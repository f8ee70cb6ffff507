"""The seccomp allowlist: the only system calls the recipe's process may make.

Anything not listed kills the whole process (SECCOMP_RET_KILL_PROCESS), which the
enclave reports as `policy_violation`. The filter is synchronized onto every thread that
already exists (TSYNC: torch's thread pool does), and new threads inherit it. What
remains allowed is computation on memory the process already has plus reads from the
files Landlock lets through and writes to descriptors that are already open (the two
protocol pipes and /dev/null).

Some calls are allowed only in a form whose effect stays inside this process, because
their other forms change kernel state that processes outside the sandbox can read:
futexes must be private (a shared futex on a page of a file the host also maps wakes
the host's waiters); files may be mapped only privately; page-residency advice is
limited to what the allocators use; thread names and signal dispositions and masks,
which the host reads in its /proc, cannot be changed once the filter is in place.
Where honest libraries call such a form and cope with an error, the call fails with an
errno instead of killing the process.
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
    # Memory (mmap and madvise: see their argument rules below).
    "brk", "munmap", "mremap", "mprotect",
    # I/O on descriptors that are already open, and reading what Landlock allows.
    "read", "readv", "pread64", "write", "writev", "lseek", "close",
    "fstat", "newfstatat", "stat", "lstat", "statx", "getdents64",
    "readlink", "readlinkat", "access", "faccessat", "faccessat2", "getcwd",
    # Threads and their synchronization (thread creation: see `clone` below).
    # futex: private only, below. set_tid_address is refused: a thread's exit would
    # clear and wake (as a shared futex) any address it names, a page of a file too.
    "set_robust_list", "rseq", "sched_yield",
    "sched_getaffinity", "exit", "exit_group",
    # Time, signals delivered to this process, identity queries.
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
    # Signal masks and actions only read (below). No rt_sigreturn: it restores a signal
    # mask from memory the caller wrote, and with no new handler allowed no honest
    # code returns from a signal handler.
    "sigaltstack", "restart_syscall",
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
_PR_SET_NAME = 15  # a thread's name shows in the host's /proc/<pid>/task/<tid>/comm
_PR_GET_NAME = 16
_FUTEX_PRIVATE_FLAG = 128
_MAP_TYPE = 0x0F  # MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE
_MAP_PRIVATE = 0x02
_MAP_ANONYMOUS = 0x20
# madvise advice that only concerns this process's own memory: glibc's and torch's
# allocators release and shape pages with it. Not WILLNEED, COLD, PAGEOUT, REMOVE,
# POPULATE_* (they load, age or evict pages of shared files: page-cache residency the
# host can measure), nor MERGEABLE (KSM shares equal pages across processes).
_MADVISE_ALLOWED = (
    0,  # MADV_NORMAL
    4,  # MADV_DONTNEED
    8,  # MADV_FREE
    14,  # MADV_HUGEPAGE
    15,  # MADV_NOHUGEPAGE
    16,  # MADV_DONTDUMP
    17,  # MADV_DODUMP
)
_MADVISE_KNOWN = 26  # advice 0..25 exist (6.18); the rest are refused with EPERM, others kill
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
    policy.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, _PR_GET_NAME))
    _refuse_outside_effects(policy)
    for command in _FCNTL_ALLOWED:
        policy.add_rule(seccomp.ALLOW, "fcntl", seccomp.Arg(1, seccomp.EQ, command))
    return policy


def _refuse_outside_effects(policy: seccomp.SyscallFilter) -> None:
    """Rules for calls whose other forms reach kernel state other processes can read."""
    refuse = seccomp.ERRNO(errno.EPERM)
    # A fixed thread name: torch names the threads it starts (and ignores a failure).
    policy.add_rule(refuse, "prctl", seccomp.Arg(0, seccomp.EQ, _PR_SET_NAME))
    policy.add_rule(refuse, "set_tid_address")
    # Private futexes are keyed by this process's memory; a shared one on a page of a
    # mapped file is keyed by the file and reaches every process that maps it. glibc
    # waits on a thread's exit with a shared futex (pthread_join): refused with EAGAIN
    # ("the value changed"), it checks again, which ends once the thread has.
    policy.add_rule(
        seccomp.ALLOW,
        "futex",
        seccomp.Arg(1, seccomp.MASKED_EQ, _FUTEX_PRIVATE_FLAG, _FUTEX_PRIVATE_FLAG),
    )
    policy.add_rule(
        seccomp.ERRNO(errno.EAGAIN),
        "futex",
        seccomp.Arg(1, seccomp.MASKED_EQ, _FUTEX_PRIVATE_FLAG, 0),
    )
    # Files are mapped privately (libraries, torch.load); anonymous memory may be shared
    # (with no other process: there is none). MAP_SHARED of a file would share its
    # pages, and futexes on them, with the host.
    policy.add_rule(
        seccomp.ALLOW, "mmap", seccomp.Arg(3, seccomp.MASKED_EQ, _MAP_TYPE, _MAP_PRIVATE)
    )
    policy.add_rule(
        seccomp.ALLOW, "mmap", seccomp.Arg(3, seccomp.MASKED_EQ, _MAP_ANONYMOUS, _MAP_ANONYMOUS)
    )
    policy.add_rule(
        refuse, "mmap", seccomp.Arg(3, seccomp.MASKED_EQ, _MAP_ANONYMOUS | _MAP_TYPE, 0x01)
    )
    policy.add_rule(
        refuse, "mmap", seccomp.Arg(3, seccomp.MASKED_EQ, _MAP_ANONYMOUS | _MAP_TYPE, 0x03)
    )
    for advice in range(_MADVISE_KNOWN):
        action = seccomp.ALLOW if advice in _MADVISE_ALLOWED else refuse
        policy.add_rule(action, "madvise", seccomp.Arg(2, seccomp.EQ, advice))
    # Signal masks and actions show in the host's /proc/<pid>/task/<tid>/status: they
    # may be read (a null new set or action), not changed. glibc blocks and restores
    # all signals around thread creation and ignores the error; threads inherit the
    # mask fixed before the filter.
    policy.add_rule(seccomp.ALLOW, "rt_sigprocmask", seccomp.Arg(1, seccomp.EQ, 0))
    policy.add_rule(refuse, "rt_sigprocmask", seccomp.Arg(1, seccomp.NE, 0))
    policy.add_rule(seccomp.ALLOW, "rt_sigaction", seccomp.Arg(1, seccomp.EQ, 0))
    policy.add_rule(refuse, "rt_sigaction", seccomp.Arg(1, seccomp.NE, 0))


def install() -> None:
    """Load the filter into every thread of this process. There is no way back."""
    build_filter().load()
