"""A distributed job's documents: where its members meet, who they are, and `exchange`.

`Rendezvous` and `GroupMembership` ride on a training enclave's `train` call too (see
`contract.train`); `exchange` is the parameter server's only job call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chiron.core.contract.fields import (
    read_document,
    read_field,
    read_identity,
    read_int,
    read_seconds,
    read_text,
)
from chiron.core.errors import InputError
from chiron.core.keys import PublicIdentity
from chiron.core.limits import MAX_WORKERS
from chiron.core.manifest import SignedManifest

DEFAULT_HANDSHAKE_TIMEOUT = 600.0
DEFAULT_EXCHANGE_TIMEOUT = 600.0


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
        args = read_document(args, "Rendezvous")
        what = "rendezvous"
        host_store = args.get("host_store", False) if isinstance(args, Mapping) else None
        if not isinstance(host_store, bool):
            raise InputError("malformed rendezvous: host_store must be true or false")
        rendezvous = cls(
            host=read_text(args, "host", what, 255),
            port=read_int(args, "port", what, 0, 65535),
            address=None if args.get("address") is None else read_text(args, "address", what, 255),
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
        args = read_document(args, "GroupMembership")
        what = "group"
        raw = read_field(args, "members", what)
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_WORKERS + 1:
            raise InputError(f"malformed group: a distributed job has 1 to {MAX_WORKERS} workers")
        members = tuple(read_identity(member, what) for member in raw)
        if len(set(members)) != len(members):
            raise InputError("malformed group: one enclave is listed twice")
        return cls(
            rank=read_int(args, "rank", what, 0, len(members) - 1),
            members=members,
            handshake_timeout=read_seconds(
                args, "handshake_timeout", what, DEFAULT_HANDSHAKE_TIMEOUT
            ),
            exchange_timeout=read_seconds(args, "exchange_timeout", what, DEFAULT_EXCHANGE_TIMEOUT),
        )


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
        args = read_document(args, "ExchangeRequest")
        what = "exchange"
        return cls(
            manifest=SignedManifest.from_wire(read_field(args, "manifest", what)),
            group=GroupMembership.from_wire(read_field(args, "group", what)),
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
        args = read_document(args, "ExchangeResult")
        trace = args.get("wire_trace", [])
        if not isinstance(trace, list):
            raise InputError("malformed exchange result")
        return cls(read_int(args, "rounds", "exchange result", 0, 2**62), trace)
