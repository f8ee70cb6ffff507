"""Offline verification of a training receipt.

A receipt carries the training enclave's statement, its signature, and evidence whose
nonce is the hash of that statement. Verifying the evidence against a policy proves a
genuine runtime with an accepted measurement holds the signing key; the signature then
proves that runtime issued this statement, which names the model file's hash.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from chiron.client.attestation import accept, appraise_evidence, known_sim_roots
from chiron.client.training import check_receipt_signature
from chiron.core.attestation import Policy
from chiron.core.encoding import b64decode, canonical_json
from chiron.core.errors import IntegrityError
from chiron.core.keys import PublicIdentity
from chiron.core.modelfile import receipt_nonce


def verify_receipt_offline(
    receipt: bytes, model: bytes, *, policy: Policy, state_dir: Path
) -> dict[str, Any]:
    """Return the receipt's statement if it verifies for `model`, else raise."""
    document = check_receipt_signature(receipt, model)
    statement = document["statement"]
    try:
        evidence = b64decode(document["evidence"])
        signer = PublicIdentity.from_bytes(b64decode(statement["enclave_identity"]))
    except (KeyError, TypeError, ValueError):
        raise IntegrityError("the receipt is malformed") from None
    # The evidence's freshness comes from its nonce (the statement's hash), not the
    # clock: a receipt stays verifiable long after the job ended.
    timeless = dataclasses.replace(policy, max_age_seconds=None)
    report = appraise_evidence(
        evidence,
        receipt_nonce(canonical_json(statement)),
        timeless,
        state_dir=state_dir,
        sim_roots=lambda: known_sim_roots(state_dir),
    )
    attested = accept(report)
    if attested.identity != signer:
        raise IntegrityError("the receipt's evidence attests another enclave than its signer")
    # The platform itself says which job this enclave served: the receipt's manifest.
    if report.claims.role != "train" or report.claims.binding != statement.get("manifest_sha256"):
        raise IntegrityError("the receipt's evidence is not of the training enclave of its job")
    return statement
