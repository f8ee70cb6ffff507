"""The enclave call contract: every call's arguments and results, as types.

The host reaches an enclave only through `enclave.boundary`, which carries one request
and one result per call as a JSON document (bytes as {"$bytes": base64}). This module
is that document's schema: a frozen dataclass per request and per result, each with
`to_wire()` and `from_wire()`; `from_wire` holds all the validation, so an enclave
never looks at a raw argument, and a reader can check the whole binding here.

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

    call              role          request → result
    attest            every role    AttestRequest → AttestResult
    train             train         TrainRequest → TrainResult
    exchange          paramserver   ExchangeRequest → ExchangeResult
    load_model        query         LoadModelRequest → LoadModelResult
    provision_share   query         ProvisionShareRequest → ProvisionShareResult
    query             query         QueryRequest → QueryResult
    evaluate          query         EvaluateRequest → EvaluateResult
    shutdown          every role    (nothing) → (nothing)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chiron.core.attestation.evidence import check_nonce
from chiron.core.errors import InputError, KeyFileError
from chiron.core.identifiers import check_job_id, check_model_id, check_request_id
from chiron.core.keys import PublicIdentity
from chiron.core.limits import (
    MAX_EVIDENCE_BYTES,
    MAX_RECIPE_BYTES,
    MAX_SEALED_KEY_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_WORKERS,
)
from chiron.core.manifest import SignedManifest
from chiron.core.query_channel import MAX_SEQUENCE
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.roles import Role

MAX_PATH_CHARS = 4096
MAX_MODEL_FILE_BYTES = 512 * 1024 * 1024
MAX_SEALED_INPUT_BYTES = 256 * 1024 * 1024
MAX_TIMEOUT_SECONDS = 24 * 3600.0
DEFAULT_HANDSHAKE_TIMEOUT = 600.0
DEFAULT_EXCHANGE_TIMEOUT = 600.0
REPLY_KEY_BYTES = 32
PARTIES = ("owner", "provider")


class Call(StrEnum):
    ATTEST = "attest"
    TRAIN = "train"
    EXCHANGE = "exchange"
    LOAD_MODEL = "load_model"
    PROVISION_SHARE = "provision_share"
    QUERY = "query"
    EVALUATE = "evaluate"
    SHUTDOWN = "shutdown"


# The complete list of calls into an enclave, by role; the enclave refuses the rest.
CALLS_BY_ROLE: Mapping[Role, tuple[Call, ...]] = {
    Role.TRAIN: (Call.ATTEST, Call.TRAIN, Call.SHUTDOWN),
    Role.QUERY: (
        Call.ATTEST,
        Call.LOAD_MODEL,
        Call.PROVISION_SHARE,
        Call.QUERY,
        Call.EVALUATE,
        Call.SHUTDOWN,
    ),
    Role.PARAMSERVER: (Call.ATTEST, Call.EXCHANGE, Call.SHUTDOWN),
}


# -- field readers: each raises InputError naming the request ------------------------


def _mapping(args: object, what: str) -> Mapping[str, Any]:
    """A wire document's fields, or a refusal: it may not even be a mapping."""
    if not isinstance(args, Mapping):
        raise InputError(f"malformed {what}: not a document")
    return args


def _get(args: Mapping[str, Any], name: str, what: str) -> Any:
    # `args` comes off the wire: it may not even be a mapping.
    if not isinstance(args, Mapping) or name not in args:
        raise InputError(f"malformed {what} request: missing {name}")
    return args[name]


def _bytes(args: Mapping[str, Any], name: str, what: str, limit: int) -> bytes:
    value = _get(args, name, what)
    if not isinstance(value, bytes) or not 0 < len(value) <= limit:
        raise InputError(f"malformed {what} request: {name} must be 1 to {limit} bytes")
    return value


def _text(args: Mapping[str, Any], name: str, what: str, limit: int = MAX_PATH_CHARS) -> str:
    value = _get(args, name, what)
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        raise InputError(f"malformed {what} request: {name} must be text")
    return value


def _optional_text(args: Mapping[str, Any], name: str, what: str) -> str | None:
    return None if args.get(name) is None else _text(args, name, what)


def _int(args: Mapping[str, Any], name: str, what: str, low: int, high: int) -> int:
    value = _get(args, name, what)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"malformed {what} request: {name} must be {low} to {high}")
    return value


def _seconds(args: Mapping[str, Any], name: str, what: str, default: float) -> float:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"malformed {what} request: {name} must be a number")
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise InputError(f"malformed {what} request: {name} must be positive and at most a day")
    return float(value)


def _identity(value: Any, what: str) -> PublicIdentity:
    try:
        return PublicIdentity.from_bytes(value)
    except (KeyFileError, ValueError, TypeError):
        raise InputError(f"malformed {what} request: not a 64-byte public identity") from None


# -- attest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttestRequest:
    nonce: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> AttestRequest:
        args = _mapping(args, "AttestRequest")
        return cls(check_nonce(args.get("nonce") if isinstance(args, Mapping) else None))


@dataclass(frozen=True)
class AttestResult:
    evidence: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"evidence": self.evidence}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> AttestResult:
        args = _mapping(args, "AttestResult")
        return cls(_bytes(args, "evidence", "attest result", MAX_EVIDENCE_BYTES))


# -- distributed jobs -----------------------------------------------------------------


@dataclass(frozen=True)
class Rendezvous:
    """Where a distributed job's members meet (host-supplied; only availability rests on it).

    The TCPStore at host:port, which the parameter server creates itself when
    `host_store` is true (port 0: any free one, announced in an event), and the local
    address this member's gloo transport binds to (None: gloo's default).
    """

    host: str
    port: int
    address: str | None = None
    host_store: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "host_store": self.host_store,
        }

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> Rendezvous:
        args = _mapping(args, "Rendezvous")
        what = "rendezvous"
        host_store = args.get("host_store", False) if isinstance(args, Mapping) else None
        if not isinstance(host_store, bool):
            raise InputError("malformed rendezvous: host_store must be true or false")
        rendezvous = cls(
            host=_text(args, "host", what, 255),
            port=_int(args, "port", what, 0, 65535),
            address=None if args.get("address") is None else _text(args, "address", what, 255),
            host_store=host_store,
        )
        if rendezvous.port == 0 and not rendezvous.host_store:
            raise InputError("malformed rendezvous: the port is missing")
        return rendezvous


@dataclass(frozen=True)
class GroupMembership:
    """Which member of a distributed job this enclave is, and who the others are.

    From the owner's client: the identities it attested, by rank (0 is the parameter
    server). Each enclave checks them against the manifest's fingerprints.
    """

    rank: int
    members: tuple[PublicIdentity, ...]
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    exchange_timeout: float = DEFAULT_EXCHANGE_TIMEOUT

    def to_wire(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "members": [member.to_bytes() for member in self.members],
            "handshake_timeout": self.handshake_timeout,
            "exchange_timeout": self.exchange_timeout,
        }

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> GroupMembership:
        args = _mapping(args, "GroupMembership")
        what = "group"
        raw = _get(args, "members", what)
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_WORKERS + 1:
            raise InputError(f"malformed group: a distributed job has 1 to {MAX_WORKERS} workers")
        members = tuple(_identity(member, what) for member in raw)
        if len(set(members)) != len(members):
            raise InputError("malformed group: one enclave is listed twice")
        return cls(
            rank=_int(args, "rank", what, 0, len(members) - 1),
            members=members,
            handshake_timeout=_seconds(args, "handshake_timeout", what, DEFAULT_HANDSHAKE_TIMEOUT),
            exchange_timeout=_seconds(args, "exchange_timeout", what, DEFAULT_EXCHANGE_TIMEOUT),
        )


# -- train ----------------------------------------------------------------------------


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
        args = _mapping(args, "TrainAuthorization")
        what = "train"
        return cls(
            manifest=SignedManifest.from_wire(_get(args, "manifest", what)),
            sealed_data_key=_bytes(args, "sealed_data_key", what, MAX_SEALED_KEY_BYTES),
            group=None if args.get("group") is None else GroupMembership.from_wire(args["group"]),
            sealed_job_secret=(
                None
                if args.get("sealed_job_secret") is None
                else _bytes(args, "sealed_job_secret", what, MAX_SEALED_KEY_BYTES)
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
        args = _mapping(args, "TrainMaterials")
        what = "train"
        return cls(
            recipe_name=_text(args, "recipe_name", what, 255),
            recipe_source=_bytes(args, "recipe_source", what, MAX_RECIPE_BYTES),
            recipe_statement=SignedRecipeStatement.from_bytes(_get(args, "recipe_statement", what)),
            dataset_path=_text(args, "dataset_path", what),
            checkpoint_dir=_optional_text(args, "checkpoint_dir", what),
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
        args = _mapping(args, "TrainRequest")
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
        args = _mapping(args, "TrainResult")
        what = "train result"
        values = {}
        for name in ("model", "receipt", "owner_report", "owner_report_signature"):
            values[name] = (
                None if args.get(name) is None else _bytes(args, name, what, MAX_MODEL_FILE_BYTES)
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


# -- exchange (the parameter server) --------------------------------------------------


@dataclass(frozen=True)
class ExchangeRequest:
    manifest: SignedManifest
    group: GroupMembership
    rendezvous: Rendezvous | None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "manifest": self.manifest.to_wire(),
            "group": self.group.to_wire(),
        }
        if self.rendezvous is not None:
            wire["rendezvous"] = self.rendezvous.to_wire()
        return wire

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> ExchangeRequest:
        args = _mapping(args, "ExchangeRequest")
        what = "exchange"
        return cls(
            manifest=SignedManifest.from_wire(_get(args, "manifest", what)),
            group=GroupMembership.from_wire(_get(args, "group", what)),
            rendezvous=(
                None if args.get("rendezvous") is None else Rendezvous.from_wire(args["rendezvous"])
            ),
        )


@dataclass(frozen=True)
class ExchangeResult:
    rounds: int
    wire_trace: list[dict[str, Any]]

    def to_wire(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "wire_trace": self.wire_trace}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> ExchangeResult:
        args = _mapping(args, "ExchangeResult")
        trace = args.get("wire_trace", [])
        if not isinstance(trace, list):
            raise InputError("malformed exchange result")
        return cls(_int(args, "rounds", "exchange result", 0, 2**62), trace)


# -- the query enclave ----------------------------------------------------------------


@dataclass(frozen=True)
class LoadModelRequest:
    model: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"model": self.model}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> LoadModelRequest:
        args = _mapping(args, "LoadModelRequest")
        return cls(_bytes(args, "model", "load_model", MAX_MODEL_FILE_BYTES))


@dataclass(frozen=True)
class LoadModelResult:
    model_id: str
    query_policy: dict[str, Any]
    schema: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "query_policy": self.query_policy, "schema": self.schema}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> LoadModelResult:
        args = _mapping(args, "LoadModelResult")
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
        args = _mapping(args, "ProvisionShareRequest")
        party = _get(args, "party", "provision_share")
        if party not in PARTIES:
            raise InputError("malformed provision_share request: party is owner or provider")
        return cls(party, _bytes(args, "sealed_share", "provision_share", MAX_SEALED_KEY_BYTES))


@dataclass(frozen=True)
class ProvisionShareResult:
    unlocked: bool

    def to_wire(self) -> dict[str, Any]:
        return {"unlocked": self.unlocked}

    @classmethod
    def from_wire(cls, args: Mapping[str, Any]) -> ProvisionShareResult:
        args = _mapping(args, "ProvisionShareResult")
        return cls(args.get("unlocked") is True)


def _reply_key(args: Mapping[str, Any], what: str) -> bytes:
    value = _get(args, "reply_key", what)
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
        args = _mapping(args, "query channel opening")
        what = "query"
        return cls(
            sealed_secret=_bytes(args, "sealed_secret", what, MAX_SEALED_KEY_BYTES),
            signature=_bytes(args, "signature", what, MAX_SIGNATURE_BYTES),
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
        args = _mapping(args, "QueryRequest")
        what = "query"
        opening = args.get("opening")
        return cls(
            channel_id=check_request_id(_get(args, "channel_id", what)),
            sequence=_int(args, "sequence", what, 0, MAX_SEQUENCE),
            sealed_inputs=_bytes(args, "sealed_inputs", what, MAX_SEALED_INPUT_BYTES),
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
        args = _mapping(args, "QueryResult")
        what = "query result"
        budget = args.get("budget_left")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
            raise InputError("malformed query result")
        return cls(
            sealed_answers=_bytes(args, "sealed_answers", what, MAX_SEALED_INPUT_BYTES),
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
        args = _mapping(args, "EvaluateRequest")
        what = "evaluate"
        return cls(
            request_id=check_request_id(_get(args, "request_id", what)),
            dataset_path=_text(args, "dataset_path", what),
            sealed_data_key=_bytes(args, "sealed_data_key", what, MAX_SEALED_KEY_BYTES),
            reply_key=_reply_key(args, what),
            signature=_bytes(args, "signature", what, MAX_SIGNATURE_BYTES),
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
        args = _mapping(args, "EvaluateResult")
        what = "evaluate result"
        return cls(
            sealed_report=_bytes(args, "sealed_report", what, MAX_SEALED_INPUT_BYTES),
            signature=_bytes(args, "signature", what, MAX_SIGNATURE_BYTES),
        )


def job_id_of(request: TrainRequest | ExchangeRequest) -> str:
    """The job a request is for: the manifest's, never a separate host-supplied id."""
    return check_job_id(request.manifest.manifest.job_id)
