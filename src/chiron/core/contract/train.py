"""The `train` call's documents: the owner's half, the host's half, and the result.

Who supplies what matters, because the host is an adversary. A training request is
two halves (`TrainRequest`):

    TrainAuthorization   from the owner's client: the signed job manifest, the data key
                         sealed to the attested enclave under the manifest's digest, and
                         (distributed) the attested members' identities.
    TrainMaterials       from the host: the recipe file and its provider's signed
                         statement, where the dataset ciphertext and the checkpoints lie,
                         and (distributed) where the members meet.

Everything in the host's half is checked against the owner's: the recipe's hash and
the statement's digest against the manifest, the dataset header's digest against the
manifest, the members against the manifest's enclave fingerprints. Nothing else the
host sends is believed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chiron.core.contract.distributed import GroupMembership, Rendezvous
from chiron.core.contract.fields import (
    MAX_MODEL_FILE_BYTES,
    read_bytes,
    read_document,
    read_field,
    read_optional_text,
    read_text,
)
from chiron.core.errors import InputError
from chiron.core.limits import MAX_RECIPE_BYTES, MAX_SEALED_KEY_BYTES
from chiron.core.manifest import SignedManifest
from chiron.core.recipe_statement import SignedRecipeStatement


@dataclass(frozen=True)
class TrainAuthorization:
    """The owner's half of a `train` call (see the module docstring)."""

    manifest: SignedManifest
    sealed_data_key: bytes
    group: GroupMembership | None = None
    # The job's secret, sealed like the data key: checkpoints are sealed under it.
    sealed_job_secret: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "manifest": self.manifest.to_wire(),
            "sealed_data_key": self.sealed_data_key,
        }
        if self.group is not None:
            wire["group"] = self.group.to_wire()
        if self.sealed_job_secret is not None:
            wire["sealed_job_secret"] = self.sealed_job_secret
        return wire

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> TrainAuthorization:
        args = read_document(args, "TrainAuthorization")
        what = "train"
        return cls(
            manifest=SignedManifest.from_wire(read_field(args, "manifest", what)),
            sealed_data_key=read_bytes(args, "sealed_data_key", what, MAX_SEALED_KEY_BYTES),
            group=None if args.get("group") is None else GroupMembership.from_wire(args["group"]),
            sealed_job_secret=(
                None
                if args.get("sealed_job_secret") is None
                else read_bytes(args, "sealed_job_secret", what, MAX_SEALED_KEY_BYTES)
            ),
        )


@dataclass(frozen=True)
class TrainMaterials:
    """The host's half of a `train` call (see the module docstring)."""

    recipe_name: str
    recipe_source: bytes
    recipe_statement: SignedRecipeStatement
    dataset_path: str
    checkpoint_dir: str | None = None
    rendezvous: Rendezvous | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "recipe_name": self.recipe_name,
            "recipe_source": self.recipe_source,
            "recipe_statement": self.recipe_statement.to_bytes(),
            "dataset_path": self.dataset_path,
            "checkpoint_dir": self.checkpoint_dir,
        }
        if self.rendezvous is not None:
            wire["rendezvous"] = self.rendezvous.to_wire()
        return wire

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> TrainMaterials:
        args = read_document(args, "TrainMaterials")
        what = "train"
        return cls(
            recipe_name=read_text(args, "recipe_name", what, 255),
            recipe_source=read_bytes(args, "recipe_source", what, MAX_RECIPE_BYTES),
            recipe_statement=SignedRecipeStatement.from_bytes(
                read_field(args, "recipe_statement", what)
            ),
            dataset_path=read_text(args, "dataset_path", what),
            checkpoint_dir=read_optional_text(args, "checkpoint_dir", what),
            rendezvous=(
                None if args.get("rendezvous") is None else Rendezvous.from_wire(args["rendezvous"])
            ),
        )


@dataclass(frozen=True)
class TrainRequest:
    authorization: TrainAuthorization
    materials: TrainMaterials

    @property
    def manifest(self) -> SignedManifest:
        return self.authorization.manifest

    def to_wire(self) -> dict[str, Any]:
        return {**self.materials.to_wire(), **self.authorization.to_wire()}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> TrainRequest:
        args = read_document(args, "TrainRequest")
        return cls(TrainAuthorization.from_wire(args), TrainMaterials.from_wire(args))


@dataclass(frozen=True)
class TrainResult:
    """What a training enclave returns; the model, receipt and report only from the lead.

    `owner_report` is sealed to the owner and `owner_report_signature` is the enclave's
    signature over it; a client believes the report only once both check out.
    """

    model: bytes | None = None
    receipt: bytes | None = None
    owner_report: bytes | None = None
    owner_report_signature: bytes | None = None
    wire_trace: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "receipt": self.receipt,
            "owner_report": self.owner_report,
            "owner_report_signature": self.owner_report_signature,
            "wire_trace": self.wire_trace,
            "timings": self.timings,
        }

    @property
    def complete(self) -> bool:
        return all(
            isinstance(value, bytes) and value
            for value in (self.model, self.receipt, self.owner_report, self.owner_report_signature)
        )

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> TrainResult:
        args = read_document(args, "TrainResult")
        what = "train result"
        values = {}
        for name in ("model", "receipt", "owner_report", "owner_report_signature"):
            values[name] = (
                None
                if args.get(name) is None
                else read_bytes(args, name, what, MAX_MODEL_FILE_BYTES)
            )
        trace = args.get("wire_trace", [])
        timings = args.get("timings", {})
        if not isinstance(trace, list) or not isinstance(timings, dict):
            raise InputError("malformed train result")
        try:
            seconds = {str(k): float(v) for k, v in timings.items()}
        except (TypeError, ValueError):
            raise InputError("malformed train result: timings are not numbers") from None
        return cls(**values, wire_trace=trace, timings=seconds)
