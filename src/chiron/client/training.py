"""The owner's side of a training job: attest, sign the manifest, release the key, check.

The owner's client attests the training enclave (it must attest the `train` role and
serve nothing yet), then signs a job manifest naming that very enclave, the recipe by
its provider's signed statement, the dataset by the digest of its exact header, and
the plan. The data key leaves the owner's machine only HPKE-sealed to the attested
enclave key under the manifest's digest. What comes back is believed only after every
check below: the receipt signed by that enclave and naming exactly what the manifest
says, the owner's report signed by it, and a model file escrowed to the manifest's
owner and provider.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.client import signed_jobs
from chiron.client.attestation import SimRootSource, verify_enclave
from chiron.client.sessions import EnclaveSession
from chiron.core import modelfile, purposes, replies
from chiron.core.attestation import Policy
from chiron.core.contract import TrainAuthorization, TrainResult
from chiron.core.crypto import open_sealed, seal, verify_signature
from chiron.core.encoding import b64decode, canonical_json, sha256_hex
from chiron.core.errors import InputError, IntegrityError
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.manifest import (
    DatasetRef,
    Plan,
    SignedManifest,
    new_manifest,
    training_data_key_context,
)
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.roles import Role


@dataclass(frozen=True)
class TrainOutcome:
    model: bytes
    receipt: bytes
    report: dict[str, Any]
    manifest: SignedManifest


def local_job_id(*, statement: SignedRecipeStatement, dataset: DatasetRef, owner: PublicIdentity,
                 plan: Plan) -> str:  # fmt: skip
    """A job id from the job's inputs alone, for a flow that drives an enclave with no host.

    A host (a service, or `LocalHost` for `--local`) picks its jobs' ids itself.
    """
    return sha256_hex(
        canonical_json(
            {
                "recipe_statement": statement.sha256,
                "dataset": dataset.to_wire(),
                "owner": owner.fingerprint,
                "plan": plan.to_wire(),
            }
        )
    )[:32]


def check_provider(statement: SignedRecipeStatement, expected: PublicIdentity | None) -> None:
    """With `expected` (the owner's --provider), the recipe must be signed by that provider."""
    if expected is not None and statement.provider != expected:
        raise IntegrityError(
            f"the recipe is signed by provider {statement.provider.fingerprint[:16]}, "
            f"not by the expected {expected.fingerprint[:16]}"
        )


def authorize(
    *,
    job_id: str,
    owner: Identity,
    statement: SignedRecipeStatement,
    dataset: DatasetRef,
    plan: Plan,
    enclaves: tuple[PublicIdentity, ...],
) -> SignedManifest:
    """Sign the manifest of one job for enclaves this client has just attested."""
    if statement.provider == owner.public:
        raise InputError("the owner cannot also be the recipe's provider")
    return new_manifest(
        job_id=job_id,
        owner=owner,
        provider=statement.provider,
        recipe_sha256=statement.statement.recipe_sha256,
        recipe_statement_sha256=statement.sha256,
        dataset=dataset,
        plan=plan,
        enclaves=enclaves,
    )


def run_training(
    session: EnclaveSession,
    *,
    job_id: str,
    data_key: DataKey,
    dataset: DatasetRef,
    owner: Identity,
    statement: SignedRecipeStatement,
    plan: Plan,
    policy: Policy,
    state_dir: Path,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    sim_roots: SimRootSource | None = None,
) -> TrainOutcome:
    attested = verify_enclave(
        session.evidence, policy, state_dir=state_dir, sim_roots=sim_roots, role=Role.TRAIN
    )
    manifest = authorize(
        job_id=job_id,
        owner=owner,
        statement=statement,
        dataset=dataset,
        plan=plan,
        enclaves=(attested.identity,),
    )
    # The host chose the job id: it must not be one this owner signed other terms for.
    signed_jobs.check_terms(state_dir, manifest.manifest)
    signed_jobs.remember_terms(state_dir, manifest.manifest)
    authorization = TrainAuthorization(
        manifest,
        seal_data_key(attested.identity, data_key, manifest),
        sealed_job_secret=seal_job_secret(attested.identity, owner, manifest),
    )
    reply = session.call("train", authorization.to_wire(), on_event)
    try:
        result = TrainResult.from_wire(reply)
    except (AttributeError, TypeError, ValueError):
        # The host relays the reply and may send anything: a named refusal, not a crash.
        raise IntegrityError("the training enclave's result is malformed") from None
    return check_training_result(result, manifest, attested.identity, owner)


def seal_data_key(enclave: PublicIdentity, data_key: DataKey, manifest: SignedManifest) -> bytes:
    """The data key for one manifest, sealed to an enclave key the caller has just attested."""
    if data_key.dataset_id != manifest.manifest.dataset.dataset_id:
        raise InputError("the data key is not the key of the manifest's dataset")
    return seal(
        enclave.hpke_key,
        data_key.key,
        purpose=purposes.TRAINING_DATA_KEY,
        context=training_data_key_context(manifest.digest, data_key.dataset_id),
    )


def seal_job_secret(enclave: PublicIdentity, owner: Identity, manifest: SignedManifest) -> bytes:
    """The job's checkpoint secret, sealed like the data key to the attested enclave.

    Derived from the owner's key and the job (not the enclave instance), so a resumed
    job gets the same secret and its new enclave opens the old checkpoints.
    """
    secret = owner.derive_secret("job-secret", canonical_json(manifest.manifest.job_binding()))
    return seal(
        enclave.hpke_key,
        secret,
        purpose=purposes.JOB_SECRET,
        context=training_data_key_context(manifest.digest, manifest.manifest.dataset.dataset_id),
    )


def check_training_result(
    result: TrainResult, manifest: SignedManifest, enclave: PublicIdentity, owner: Identity
) -> TrainOutcome:
    """Believe a training enclave's result only if it is exactly what `manifest` asked for."""
    if not result.complete:
        raise IntegrityError("the training enclave's result is incomplete")
    assert result.model and result.receipt and result.owner_report
    assert result.owner_report_signature
    document = check_receipt_signature(result.receipt, result.model, enclave)
    check_receipt_against_manifest(document["statement"], manifest)
    header = modelfile.read_model_header(result.model)
    if (header.owner, header.provider) != (manifest.manifest.owner, manifest.manifest.provider):
        raise IntegrityError("the model's key shares are not escrowed to the manifest's parties")
    if header.model_id != document["statement"].get("model_id"):
        raise IntegrityError("the receipt names another model than the model file")
    replies.verify_owner_report(
        enclave, result.owner_report_signature, manifest.digest, result.owner_report
    )
    report = open_owner_report(owner, result.owner_report, manifest)
    if (report.get("manifest_sha256"), report.get("model_id")) != (
        manifest.digest,
        header.model_id,
    ):
        raise IntegrityError("the owner's report is not the report of this job and model")
    return TrainOutcome(result.model, result.receipt, report, manifest)


def check_receipt_against_manifest(statement: dict[str, Any], manifest: SignedManifest) -> None:
    """Every field of the receipt must say what the owner's manifest says."""
    signed = manifest.manifest
    plan = statement.get("plan") if isinstance(statement.get("plan"), dict) else {}
    expected = {
        "job_id": signed.job_id,
        "manifest_sha256": manifest.digest,
        "recipe_sha256": signed.recipe_sha256,
        "recipe_statement_sha256": signed.recipe_statement_sha256,
        "dataset_ids": [signed.dataset.dataset_id],
        "dataset_header_sha256s": [signed.dataset.header_sha256],
        "owner_fingerprint": signed.owner.fingerprint,
        "provider_fingerprint": signed.provider.fingerprint,
    }
    wrong = [name for name, value in expected.items() if statement.get(name) != value]
    fixed = {"seed": signed.plan.seed, "workers": signed.plan.workers}
    for name in ("epochs", "batch_size"):
        if getattr(signed.plan, name) is not None:
            fixed[name] = getattr(signed.plan, name)
    fixed["fixed_rate"] = signed.plan.fixed_rate
    wrong += [f"plan.{name}" for name, value in fixed.items() if plan.get(name) != value]
    # The clock the job ran on: present exactly when the owner asked for one, and with
    # the owner's period when the owner fixed it (else the enclave calibrated one).
    rate = statement.get("fixed_rate")
    if signed.plan.fixed_rate != isinstance(rate, dict):
        wrong.append("fixed_rate")
    elif signed.plan.period_ms is not None and rate.get("period_ms") != signed.plan.period_ms:
        wrong.append("fixed_rate.period_ms")
    if wrong:
        raise IntegrityError(f"the receipt does not match the job manifest: {', '.join(wrong)}")


def open_owner_report(
    owner: Identity, sealed_report: bytes, manifest: SignedManifest
) -> dict[str, Any]:
    """The owner's metrics of a job, which the training enclave sealed to the owner."""
    report = json.loads(
        open_sealed(
            owner.hpke_key,
            sealed_report,
            purpose=purposes.OWNER_REPORT,
            context={"manifest": manifest.digest},
            what="owner report",
        )
    )
    if not isinstance(report, dict):
        raise IntegrityError("the owner's report is malformed")
    return report


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
