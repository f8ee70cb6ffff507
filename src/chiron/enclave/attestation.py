"""The `attest` call: evidence binding the caller's nonce to this enclave's keys.

The caller (a client, or through the host anyone) chooses the nonce; the evidence
binds it, this process's public identity and its runtime measurement, so a verifier
that accepts the answer can seal secrets to this very process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chiron.core.attestation.evidence import check_nonce
from chiron.enclave.context import EnclaveContext


def handle_attest(
    context: EnclaveContext, args: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """args: {"nonce": bytes, 16 to 64 of them} -> {"evidence": bytes}."""
    nonce = check_nonce(args.get("nonce"))
    evidence = context.evidence(nonce)
    return {"evidence": evidence}
