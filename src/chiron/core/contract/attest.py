"""The `attest` call's documents, which every role answers: a nonce in, evidence out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chiron.core.attestation.evidence import check_nonce
from chiron.core.contract.fields import read_bytes, read_document
from chiron.core.limits import MAX_EVIDENCE_BYTES


@dataclass(frozen=True)
class AttestRequest:
    nonce: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> AttestRequest:
        args = read_document(args, "AttestRequest")
        return cls(check_nonce(args.get("nonce") if isinstance(args, Mapping) else None))


@dataclass(frozen=True)
class AttestResult:
    evidence: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"evidence": self.evidence}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> AttestResult:
        args = read_document(args, "AttestResult")
        return cls(read_bytes(args, "evidence", "attest result", MAX_EVIDENCE_BYTES))
