"""The job manifest: the owner's signed authorization of exactly one training job.

It is the only authorization a training or parameter-server enclave acts on. The owner's
client builds it after attesting the job's enclaves and signs it; the data key is sealed
with the manifest's digest in its HPKE context, so the key opens for this manifest and
no other. An enclave that receives a manifest checks the owner's signature, recomputes
everything it can (the recipe's hash, the provider's statement, the dataset header's
digest, its own identity's place in the job) and refuses any argument that differs.

Who receives what is fixed by the manifest's two identities: the model key's shares go
to `owner` and `provider` (the provider named by its own signed recipe statement), and
the owner's report and the receipt to `owner`. There is no other recipient.

Wire form (JSON, within a boundary message or a REST body):

    {"type": "chiron.job-manifest", "version": 1,
     "manifest": {"job_id": str, "owner": b64, "provider": b64,
                  "recipe_sha256": hex, "recipe_statement_sha256": hex,
                  "datasets": [{"dataset_id": hex32, "header_sha256": hex}],
                  "plan": {"epochs": int|null, "batch_size": int|null, "seed": int,
                           "workers": int, "exchange_every": int, "mode": "sync"|"async",
                           "staleness": int, "fixed_rate": bool, "period_ms": int|null},
                  "enclaves": [fingerprint, ...], "issued_at": int},
     "signature": b64 Ed25519 by the owner}

`enclaves` lists, by rank, the fingerprints of the attested enclaves that serve the job:
one training enclave, or the parameter server then the workers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from chiron.core import purposes
from chiron.core.crypto import sign, verify_signature
from chiron.core.encoding import b64decode, b64encode, canonical_json, sha256_hex
from chiron.core.errors import InputError, KeyFileError
from chiron.core.identifiers import check_dataset_id, check_job_id
from chiron.core.keys import Identity, PublicIdentity
from chiron.core.limits import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_EXCHANGE_EVERY,
    MAX_PERIOD_MS,
    MAX_SEED,
    MAX_STALENESS,
    MAX_WORKERS,
)
from chiron.core.signed_document import DocumentKind

MAX_MANIFEST_BYTES = 64 * 1024
MANIFEST = DocumentKind(
    type="chiron.job-manifest",
    version=1,
    body_field="manifest",
    max_bytes=MAX_MANIFEST_BYTES,
    what="job manifest",
)
EXCHANGE_MODES = ("sync", "async")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _hex64(value: object, what: str) -> str:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise InputError(f"malformed job manifest: {what} is not a SHA-256 digest")
    return value


def _integer(value: object, what: str, low: int, high: int, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"malformed job manifest: {what} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of the job, pinned by id and by the digest of its exact header."""

    dataset_id: str
    header_sha256: str

    def to_wire(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, "header_sha256": self.header_sha256}

    @classmethod
    def from_wire(cls, value: object) -> DatasetRef:
        if not isinstance(value, dict) or set(value) != {"dataset_id", "header_sha256"}:
            raise InputError("malformed job manifest: bad dataset entry")
        return cls(
            check_dataset_id(value["dataset_id"]),
            _hex64(value["header_sha256"], "a dataset header digest"),
        )


@dataclass(frozen=True)
class Plan:
    """What the owner fixes about training. None keeps the recipe's own value.

    `fixed_rate` puts everything the host can observe of the job on a clock of one
    period fixed before the data is seen (docs/training.md, "Fixed rate"); `period_ms`
    is that period, or None for the enclave to calibrate it on synthetic records.
    """

    seed: int
    epochs: int | None = None
    batch_size: int | None = None
    workers: int = 1
    exchange_every: int = 0
    mode: str = "sync"
    staleness: int = 0
    fixed_rate: bool = False
    period_ms: int | None = None

    def __post_init__(self) -> None:
        _integer(self.seed, "seed", 0, MAX_SEED)
        _integer(self.epochs, "epochs", 1, MAX_EPOCHS, optional=True)
        _integer(self.batch_size, "batch_size", 1, MAX_BATCH_SIZE, optional=True)
        _integer(self.workers, "workers", 1, MAX_WORKERS)
        _integer(self.staleness, "staleness", 0, MAX_STALENESS)
        if self.mode not in EXCHANGE_MODES:
            raise InputError("malformed job manifest: unknown exchange mode")
        if self.workers == 1:
            if (self.exchange_every, self.mode, self.staleness) != (0, "sync", 0):
                raise InputError("malformed job manifest: one worker exchanges nothing")
        else:
            _integer(self.exchange_every, "exchange_every", 1, MAX_EXCHANGE_EVERY)
        if not isinstance(self.fixed_rate, bool):
            raise InputError("malformed job manifest: fixed_rate must be true or false")
        _integer(self.period_ms, "period_ms", 1, MAX_PERIOD_MS, optional=True)
        if self.period_ms is not None and not self.fixed_rate:
            raise InputError("malformed job manifest: a period needs fixed_rate")

    @property
    def distributed(self) -> bool:
        return self.workers > 1

    def overrides(self) -> dict[str, int | None]:
        """What the recipe's own hyperparameters give way to."""
        return {"epochs": self.epochs, "batch_size": self.batch_size}

    def to_wire(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "exchange_every": self.exchange_every,
            "mode": self.mode,
            "staleness": self.staleness,
            "fixed_rate": self.fixed_rate,
            "period_ms": self.period_ms,
        }

    @classmethod
    def from_wire(cls, value: object) -> Plan:
        if not isinstance(value, dict) or set(value) != set(cls(seed=0).to_wire()):
            raise InputError("malformed job manifest: bad plan")
        return cls(**value)


@dataclass(frozen=True)
class JobManifest:
    """The owner's authorization of one job; see the module docstring."""

    job_id: str
    owner: PublicIdentity
    provider: PublicIdentity
    recipe_sha256: str
    recipe_statement_sha256: str
    datasets: tuple[DatasetRef, ...]
    plan: Plan
    enclaves: tuple[str, ...]
    issued_at: int

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        _hex64(self.recipe_sha256, "the recipe digest")
        _hex64(self.recipe_statement_sha256, "the recipe statement digest")
        if len(self.datasets) != 1:
            raise InputError("malformed job manifest: a job trains on exactly one dataset")
        expected = 1 if not self.plan.distributed else self.plan.workers + 1
        if len(self.enclaves) != expected:
            raise InputError(
                f"malformed job manifest: {self.plan.workers} worker(s) need {expected} enclaves"
            )
        for fingerprint in self.enclaves:
            _hex64(fingerprint, "an enclave fingerprint")
        if len(set(self.enclaves)) != len(self.enclaves):
            raise InputError("malformed job manifest: an enclave is listed twice")
        if self.owner == self.provider:
            raise InputError("malformed job manifest: the owner cannot also be the provider")

    @property
    def dataset(self) -> DatasetRef:
        return self.datasets[0]

    def body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "owner": b64encode(self.owner.to_bytes()),
            "provider": b64encode(self.provider.to_bytes()),
            "recipe_sha256": self.recipe_sha256,
            "recipe_statement_sha256": self.recipe_statement_sha256,
            "datasets": [ref.to_wire() for ref in self.datasets],
            "plan": self.plan.to_wire(),
            "enclaves": list(self.enclaves),
            "issued_at": self.issued_at,
        }

    def signed_bytes(self) -> bytes:
        return canonical_json(self.body())

    def job_binding(self) -> dict[str, Any]:
        """Everything but which enclave instances serve it and when it was signed.

        Sealed checkpoints are bound to this, so a job resumed under a new manifest
        (new enclaves after a crash, same job) finds them, and no other job can.
        """
        body = self.body()
        del body["enclaves"], body["issued_at"]
        return body

    def sign(self, owner: Identity) -> SignedManifest:
        if owner.public != self.owner:
            raise InputError("a job manifest is signed by the owner it names")
        return SignedManifest(
            self, sign(owner.signing_key, self.signed_bytes(), purpose=purposes.JOB_MANIFEST)
        )

    @classmethod
    def from_body(cls, body: object) -> JobManifest:
        fields = set(cls.__dataclass_fields__)
        if not isinstance(body, dict) or set(body) != fields:
            raise InputError("malformed job manifest: unexpected or missing fields")
        try:
            owner = PublicIdentity.from_bytes(b64decode(body["owner"]))
            provider = PublicIdentity.from_bytes(b64decode(body["provider"]))
            datasets = tuple(DatasetRef.from_wire(ref) for ref in body["datasets"])
            enclaves = tuple(body["enclaves"])
        except (TypeError, ValueError, KeyFileError):
            raise InputError("malformed job manifest: bad identity or list") from None
        return cls(
            job_id=check_job_id(body["job_id"]),
            owner=owner,
            provider=provider,
            recipe_sha256=body["recipe_sha256"],
            recipe_statement_sha256=body["recipe_statement_sha256"],
            datasets=datasets,
            plan=Plan.from_wire(body["plan"]),
            enclaves=enclaves,
            issued_at=_integer(body["issued_at"], "issued_at", 0, 2**63 - 1),
        )


@dataclass(frozen=True)
class SignedManifest:
    """A manifest and the owner's signature; `from_wire` verifies it."""

    manifest: JobManifest
    signature: bytes

    @property
    def digest(self) -> str:
        """What the data key's sealing context and the enclave's evidence name."""
        return sha256_hex(self.manifest.signed_bytes())

    def to_wire(self) -> bytes:
        return MANIFEST.encode(self.manifest.body(), self.signature)

    @classmethod
    def from_wire(cls, data: object) -> SignedManifest:
        body, signature = MANIFEST.decode(data)
        manifest = JobManifest.from_body(body)
        verify_signature(
            manifest.owner.signing_key,
            signature,
            manifest.signed_bytes(),
            purpose=purposes.JOB_MANIFEST,
            what="the owner's signature on the job manifest",
        )
        return cls(manifest, signature)


def training_data_key_context(manifest_digest: str, dataset_id: str) -> dict[str, str]:
    """The HPKE context a training data key is sealed under: this manifest, this role.

    With the purpose `purposes.TRAINING_DATA_KEY` it makes the key open only in a
    training enclave acting on exactly this manifest (which names that enclave).
    """
    return {"manifest": manifest_digest, "dataset_id": dataset_id, "role": "train"}


def new_manifest(
    *,
    job_id: str,
    owner: Identity,
    provider: PublicIdentity,
    recipe_sha256: str,
    recipe_statement_sha256: str,
    dataset: DatasetRef,
    plan: Plan,
    enclaves: tuple[PublicIdentity, ...],
) -> SignedManifest:
    """Build and sign a manifest for enclaves the caller has just attested."""
    return JobManifest(
        job_id=job_id,
        owner=owner.public,
        provider=provider,
        recipe_sha256=recipe_sha256,
        recipe_statement_sha256=recipe_statement_sha256,
        datasets=(dataset,),
        plan=plan,
        enclaves=tuple(enclave.fingerprint for enclave in enclaves),
        issued_at=int(time.time()),
    ).sign(owner)
