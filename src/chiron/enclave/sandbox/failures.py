"""How a sandboxed recipe's failure is told: one reason class, and fixed text for it.

Nothing the child wrote, no exit status and no signal number crosses into a failure:
the enclave's host and the owner learn the class and its fixed message only.
"""

from __future__ import annotations

import signal

from chiron.core.errors import JobFailed
from chiron.core.recipe_protocol import ReasonClass

_MESSAGES = {
    ReasonClass.RECIPE_ERROR: "the recipe raised an error or stopped",
    ReasonClass.POLICY_VIOLATION: "the recipe attempted an operation the sandbox forbids",
    ReasonClass.RESOURCE_LIMIT: "the recipe exceeded its memory, CPU or task limit",
    ReasonClass.TIMEOUT: "the recipe did not answer in time",
    ReasonClass.BAD_OUTPUT: "the recipe sent output the protocol does not allow",
}


class SandboxFailure(JobFailed):
    """The sandboxed recipe failed; `reason_class` is all anyone learns about why."""

    def __init__(self, reason_class: ReasonClass) -> None:
        self.reason = ReasonClass(reason_class)
        super().__init__(
            self.reason.value, f"job failed: {self.reason.value} ({_MESSAGES[self.reason]})"
        )


def reason_for_exit(returncode: int) -> ReasonClass:
    """The reason class of a child that ended on its own (a Popen returncode).

    The bootstrap ends the way its worker did, so this sees the worker's signal.
    """
    if returncode >= 0:
        return ReasonClass.RECIPE_ERROR  # exited, at a moment the protocol did not allow
    number = -returncode
    if number in (signal.SIGSYS, signal.SIGXFSZ):
        return ReasonClass.POLICY_VIOLATION  # the seccomp filter; growing a file
    if number in (signal.SIGKILL, signal.SIGXCPU):
        return ReasonClass.RESOURCE_LIMIT  # the CPU limit, or the out-of-memory killer
    return ReasonClass.RECIPE_ERROR  # crashed: segfault, abort...
