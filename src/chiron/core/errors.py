"""Typed errors whose messages are safe to show a user on one line.

Every message is written for the person at the terminal. None may carry a secret
(keys, plaintext data) or text that the provider's recipe controls.
"""

from __future__ import annotations


class ChironError(Exception):
    """Base of every error Chiron reports to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints str(error) as the whole report.
        super().__init__(" ".join(str(message).split()))


class UsageError(ChironError):
    """The command was called with arguments that cannot work."""

    exit_code = 2


class InputError(ChironError):
    """An input file or value is malformed, unreadable or out of range."""


class KeyFileError(InputError):
    """A key file is missing, unreadable, of the wrong type or corrupt."""


class IntegrityError(ChironError):
    """Authenticated data failed to verify: wrong key, tampering, truncation, splicing."""


class AttestationError(ChironError):
    """Evidence could not be obtained, parsed, or did not satisfy the policy."""


class PolicyError(InputError):
    """A verification policy file is malformed."""


class EnclaveError(ChironError):
    """The enclave process failed, refused a call, or did not answer."""


class PeerFailure(EnclaveError):
    """A distributed job stopped because another of its enclaves failed or refused.

    The other enclave's own error is the cause; this one only says that it ended the job.
    """


class JobFailed(ChironError):
    """A training or query job ended without a result.

    `reason_class` is one of a fixed set of words; it is all the provider learns.
    """

    def __init__(self, reason_class: str, message: str | None = None) -> None:
        self.reason_class = reason_class
        super().__init__(message or f"job failed: {reason_class}")


class RecipeError(ChironError):
    """A provider's recipe does not meet the recipe contract (missing hook, wrong type...).

    Raised inside the sandbox; its message reaches only the provider's own dry run,
    never the enclave's boundary.
    """


class AccessDenied(ChironError):
    """The request carries no valid token, or its token may not do this."""


class NotFound(InputError):
    """The named dataset, job, model, recipe, upload or session does not exist (for this caller)."""


class Conflict(ChironError):
    """The request contradicts the current state (already exists, not ready, wrong order)."""


class ServiceError(ChironError):
    """A Chiron service could not be reached or failed to answer a request."""


class KeyReleaseRefused(ChironError):
    """A provider's key-release agent did not release its share (refused, or unreachable)."""
