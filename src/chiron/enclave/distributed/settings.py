"""A distributed job's arguments, as every member enclave checks them.

The host passes them and is untrusted: a wrong value may make the job fail, never
weaken it. The members list (each enclave's public identity, by rank, as the owner's
client attested it) pins who may join; the exchange settings are checked again for
agreement between all members before training starts.

Boundary arguments (of `train` on a training enclave, of `exchange` on the parameter
server):

    distributed  {"rank": int, "members": [64-byte identity, ...],
                  "exchange_every": int, "mode": "sync"|"async", "staleness": int,
                  "handshake_timeout": float, "exchange_timeout": float}
    rendezvous   {"host": str, "port": int, "address": str|null, "host_store": bool}
                 where to meet: the TCPStore at host:port (which the parameter server
                 creates itself when host_store is true), and the local address this
                 member's gloo transport binds to (null: gloo's default for the machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chiron.core.encoding import canonical_json, sha256_hex
from chiron.core.errors import InputError, KeyFileError
from chiron.core.keys import PublicIdentity
from chiron.core.limits import MAX_EXCHANGE_EVERY, MAX_STALENESS, MAX_WORKERS
from chiron.enclave.distributed.schedule import MODES

MAX_TIMEOUT_SECONDS = 24 * 3600.0
DEFAULT_HANDSHAKE_TIMEOUT = 600.0
DEFAULT_EXCHANGE_TIMEOUT = 600.0


@dataclass(frozen=True)
class Rendezvous:
    host: str
    port: int
    address: str | None
    host_store: bool

    @classmethod
    def parse(cls, value: Any) -> Rendezvous:
        try:
            host, port = str(value["host"]), int(value["port"])
            address = value.get("address")
            rendezvous = cls(
                host, port, None if address is None else str(address), bool(value.get("host_store"))
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError("malformed rendezvous") from None
        if not host or len(host) > 255 or not 0 <= port < 65536:
            raise InputError("the rendezvous needs a host name and a port")
        if port == 0 and not rendezvous.host_store:
            raise InputError("the rendezvous port is missing")
        return rendezvous


@dataclass(frozen=True)
class GroupSettings:
    """Who is in the job, which of them this enclave is, and how they exchange."""

    job_id: str
    rank: int
    members: tuple[PublicIdentity, ...]
    exchange_every: int
    mode: str
    staleness: int
    handshake_timeout: float
    exchange_timeout: float
    rendezvous: Rendezvous

    @property
    def workers(self) -> int:
        return len(self.members) - 1

    @classmethod
    def parse(cls, job_id: str, args: dict[str, Any], *, own: PublicIdentity) -> GroupSettings:
        try:
            distributed = args["distributed"]
            members = tuple(PublicIdentity.from_bytes(m) for m in distributed["members"])
            settings = cls(
                job_id=job_id,
                rank=_integer(distributed["rank"]),
                members=members,
                exchange_every=_integer(distributed["exchange_every"]),
                mode=str(distributed.get("mode", "sync")),
                staleness=_integer(distributed.get("staleness", 0)),
                handshake_timeout=float(
                    distributed.get("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT)
                ),
                exchange_timeout=float(
                    distributed.get("exchange_timeout", DEFAULT_EXCHANGE_TIMEOUT)
                ),
                rendezvous=Rendezvous.parse(args["rendezvous"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, KeyFileError):
            raise InputError("malformed distributed job settings") from None
        if not 2 <= len(members) <= MAX_WORKERS + 1:
            raise InputError(f"a distributed job has 1 to {MAX_WORKERS} workers")
        if len(set(members)) != len(members):
            raise InputError("a distributed job lists one enclave twice")
        if not 0 <= settings.rank < len(members) or members[settings.rank] != own:
            raise InputError(f"this enclave is not member {settings.rank} of the job")
        if settings.mode not in MODES:
            raise InputError(f"the exchange mode must be one of {', '.join(MODES)}")
        if not 1 <= settings.exchange_every <= MAX_EXCHANGE_EVERY:
            raise InputError(f"the exchange interval must be 1 to {MAX_EXCHANGE_EVERY} steps")
        if not 0 <= settings.staleness <= MAX_STALENESS:
            raise InputError(f"the staleness bound must be 0 to {MAX_STALENESS} rounds")
        for timeout in (settings.handshake_timeout, settings.exchange_timeout):
            if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
                raise InputError("distributed timeouts must be positive and at most a day")
        return settings

    def describe(self) -> dict[str, Any]:
        """What the receipt and the owner's report say about the group."""
        return {
            "workers": self.workers,
            "exchange_every": self.exchange_every,
            "mode": self.mode,
            "staleness": self.staleness,
            "members": [member.fingerprint for member in self.members],
        }

    def agreement(self) -> dict[str, Any]:
        """What every member must hold identically (checked in HELLO; of one size)."""
        return {
            "job_id": self.job_id,
            "members": sha256_hex(canonical_json([m.fingerprint for m in self.members])),
            "exchange_every": self.exchange_every,
            "mode": self.mode,
            "staleness": self.staleness,
        }


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value
