"""The `attest` call: evidence binding the caller's nonce to this enclave's keys.

The caller (a client, or through the host anyone) chooses the nonce; the evidence
binds it, this process's public identity and its runtime measurement, so a verifier
that accepts the answer can seal secrets to this very process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chiron.core.contract import AttestRequest, AttestResult
from chiron.enclave.context import EnclaveContext


def handle_attest(
    context: EnclaveContext, request: AttestRequest, emit: Callable[[dict[str, Any]], None]
) -> AttestResult:
    """Evidence over the caller's nonce (16 to 64 bytes, checked by AttestRequest)."""
    context.start_sandbox_ahead()  # a job is about to arrive: warm its sandbox
    return AttestResult(context.evidence(request.nonce))
