"""The owner's side of a training job: attest, release the data key, collect the results.

The data key leaves the owner's machine only HPKE-sealed to the enclave key that this
very flow has just attested, bound to the job id and dataset id. The model that comes
back is accepted only with a receipt signed by that same attested enclave key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import EnclaveSession
from chiron.core import purposes
from chiron.core.attestation import Policy
from chiron.core.crypto import open_sealed, seal, verify_signature
from chiron.core.encoding import b64decode, canonical_json, sha256_hex
from chiron.core.errors import IntegrityError
from chiron.core.keys import DataKey, Identity, PublicIdentity


@dataclass(frozen=True)
class TrainOutcome:
    model: bytes
    receipt: bytes
    report: dict[str, Any]


def local_job_id(
    *,
    recipe_source: bytes,
    dataset_id: str,
    owner: PublicIdentity,
    provider: PublicIdentity,
    epochs: int | None,
    seed: int,
) -> str:
    """The same inputs give the same job id, so re-running a command resumes its job."""
    return sha256_hex(
        canonical_json(
            {
                "recipe_sha256": hashlib.sha256(recipe_source).hexdigest(),
                "dataset_id": dataset_id,
                "owner": owner.fingerprint,
                "provider": provider.fingerprint,
                "epochs": epochs,
                "seed": seed,
            }
        )
    )[:32]


def run_training(
    session: EnclaveSession,
    *,
    job_id: str,
    data_key: DataKey,
    owner: Identity,
    provider: PublicIdentity,
    epochs: int | None,
    seed: int,
    policy: Policy,
    state_dir: Path,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    sim_roots: SimRootSource | None = None,
) -> TrainOutcome:
    attested = verify_enclave(session.evidence, policy, state_dir=state_dir, sim_roots=sim_roots)
    result = session.call(
        "train",
        {
            "job_id": job_id,
            "sealed_data_key": seal_data_key(attested.identity, data_key, job_id),
            "owner_public": owner.public.to_bytes(),
            "provider_public": provider.to_bytes(),
            "epochs": epochs,
            "seed": seed,
        },
        on_event,
    )
    check_receipt_signature(result["receipt"], result["model"], attested.identity)
    report = open_owner_report(owner, result["owner_report"], job_id)
    return TrainOutcome(result["model"], result["receipt"], report)


def seal_data_key(enclave: PublicIdentity, data_key: DataKey, job_id: str) -> bytes:
    """The data key for one job, sealed to an enclave key the caller has just attested."""
    return seal(
        enclave.hpke_key,
        data_key.key,
        purpose=purposes.DATASET_KEY,
        context={"job_id": job_id, "dataset_id": data_key.dataset_id},
    )


def open_owner_report(owner: Identity, sealed_report: bytes, job_id: str) -> dict[str, Any]:
    """The owner's metrics of a job, which the training enclave sealed to the owner."""
    return json.loads(
        open_sealed(
            owner.hpke_key,
            sealed_report,
            purpose=purposes.OWNER_REPORT,
            context={"job_id": job_id},
            what="owner report",
        )
    )


def check_receipt_signature(
    receipt: bytes, model: bytes, enclave: PublicIdentity | None = None
) -> dict[str, Any]:
    """Check a receipt's signature and that it names exactly this model file.

    With `enclave` given (the key the client attested moments ago), the receipt must be
    signed by it. Offline verification (`chiron receipt verify`) instead checks the
    evidence inside the receipt; see client.receipts.
    """
    try:
        document = json.loads(receipt)
        statement = document["statement"]
        signature = b64decode(document["signature"])
        signer = PublicIdentity.from_bytes(b64decode(statement["enclave_identity"]))
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("the receipt is malformed") from None
    if enclave is not None and signer != enclave:
        raise IntegrityError("the receipt was not signed by the attested enclave")
    verify_signature(
        signer.signing_key,
        signature,
        canonical_json(statement),
        purpose=purposes.TRAINING_RECEIPT,
        what="the receipt's signature",
    )
    if statement.get("model_sha256") != hashlib.sha256(model).hexdigest():
        raise IntegrityError("the receipt does not describe this model file")
    return document
