"""The query enclave's documents: `load_model`, `provision_share`, `query`, `evaluate`.

A model is loaded locked and unlocked by both parties' sealed key shares; it is then
queried on channels the owner opens, answers sealed under the channel's answer key, or
evaluated on the owner's labelled data, the report sealed to the owner's reply key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chiron.core.contract.fields import (
    MAX_MODEL_FILE_BYTES,
    read_bytes,
    read_document,
    read_field,
    read_int,
    read_text,
)
from chiron.core.crypto import REPLY_KEY_BYTES
from chiron.core.errors import InputError
from chiron.core.identifiers import check_model_id, check_request_id
from chiron.core.limits import MAX_SEALED_KEY_BYTES, MAX_SIGNATURE_BYTES
from chiron.core.modelfile import PARTIES
from chiron.core.query_channel import MAX_SEQUENCE

MAX_SEALED_INPUT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class LoadModelRequest:
    model: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"model": self.model}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> LoadModelRequest:
        args = read_document(args, "LoadModelRequest")
        return cls(read_bytes(args, "model", "load_model", MAX_MODEL_FILE_BYTES))


@dataclass(frozen=True)
class LoadModelResult:
    model_id: str
    query_policy: dict[str, Any]
    schema: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "query_policy": self.query_policy, "schema": self.schema}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> LoadModelResult:
        args = read_document(args, "LoadModelResult")
        policy, schema = args.get("query_policy"), args.get("schema")
        if not isinstance(policy, dict) or not isinstance(schema, dict):
            raise InputError("malformed load_model result")
        return cls(check_model_id(args.get("model_id")), policy, schema)


@dataclass(frozen=True)
class ProvisionShareRequest:
    party: str
    sealed_share: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"party": self.party, "sealed_share": self.sealed_share}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> ProvisionShareRequest:
        args = read_document(args, "ProvisionShareRequest")
        party = read_field(args, "party", "provision_share")
        if party not in PARTIES:
            raise InputError("malformed provision_share request: party is owner or provider")
        return cls(party, read_bytes(args, "sealed_share", "provision_share", MAX_SEALED_KEY_BYTES))


@dataclass(frozen=True)
class ProvisionShareResult:
    unlocked: bool

    def to_wire(self) -> dict[str, Any]:
        return {"unlocked": self.unlocked}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> ProvisionShareResult:
        args = read_document(args, "ProvisionShareResult")
        return cls(args.get("unlocked") is True)


def _reply_key(args: Mapping[str, Any], what: str) -> bytes:
    value = read_field(args, "reply_key", what)
    if not isinstance(value, bytes) or len(value) != REPLY_KEY_BYTES:
        raise InputError(f"malformed {what} request: reply_key must be {REPLY_KEY_BYTES} bytes")
    return value


@dataclass(frozen=True)
class ChannelOpening:
    """The owner opening a query channel (core.query_protocol): its secret, sealed to the
    attested enclave, and the owner's signature over the sealed secret and channel id."""

    sealed_secret: bytes
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"sealed_secret": self.sealed_secret, "signature": self.signature}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> ChannelOpening:
        args = read_document(args, "query channel opening")
        what = "query"
        return cls(
            sealed_secret=read_bytes(args, "sealed_secret", what, MAX_SEALED_KEY_BYTES),
            signature=read_bytes(args, "signature", what, MAX_SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class QueryRequest:
    """One query on a channel; the channel's first query carries its opening."""

    channel_id: str
    sequence: int
    sealed_inputs: bytes
    opening: ChannelOpening | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "sequence": self.sequence,
            "sealed_inputs": self.sealed_inputs,
            "opening": None if self.opening is None else self.opening.to_wire(),
        }

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> QueryRequest:
        args = read_document(args, "QueryRequest")
        what = "query"
        opening = args.get("opening")
        return cls(
            channel_id=check_request_id(read_field(args, "channel_id", what)),
            sequence=read_int(args, "sequence", what, 0, MAX_SEQUENCE),
            sealed_inputs=read_bytes(args, "sealed_inputs", what, MAX_SEALED_INPUT_BYTES),
            opening=None if opening is None else ChannelOpening.from_wire(opening),
        )


@dataclass(frozen=True)
class QueryResult:
    """Answers sealed under the query channel's answer key, with the budget left."""

    sealed_answers: bytes
    budget_left: int | None

    def to_wire(self) -> dict[str, Any]:
        return {"sealed_answers": self.sealed_answers, "budget_left": self.budget_left}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> QueryResult:
        args = read_document(args, "QueryResult")
        what = "query result"
        budget = args.get("budget_left")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
            raise InputError("malformed query result")
        return cls(
            sealed_answers=read_bytes(args, "sealed_answers", what, MAX_SEALED_INPUT_BYTES),
            budget_left=budget,
        )


@dataclass(frozen=True)
class EvaluateRequest:
    request_id: str
    dataset_path: str
    sealed_data_key: bytes
    reply_key: bytes
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "dataset_path": self.dataset_path,
            "sealed_data_key": self.sealed_data_key,
            "reply_key": self.reply_key,
            "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> EvaluateRequest:
        args = read_document(args, "EvaluateRequest")
        what = "evaluate"
        return cls(
            request_id=check_request_id(read_field(args, "request_id", what)),
            dataset_path=read_text(args, "dataset_path", what),
            sealed_data_key=read_bytes(args, "sealed_data_key", what, MAX_SEALED_KEY_BYTES),
            reply_key=_reply_key(args, what),
            signature=read_bytes(args, "signature", what, MAX_SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class EvaluateResult:
    """An evaluation report sealed to the owner's reply key, signed by the query enclave."""

    sealed_report: bytes
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"sealed_report": self.sealed_report, "signature": self.signature}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> EvaluateResult:
        args = read_document(args, "EvaluateResult")
        what = "evaluate result"
        return cls(
            sealed_report=read_bytes(args, "sealed_report", what, MAX_SEALED_INPUT_BYTES),
            signature=read_bytes(args, "signature", what, MAX_SIGNATURE_BYTES),
        )
