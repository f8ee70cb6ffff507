"""A distributed job's settings, as every member enclave derives them.

Everything that decides what the members do comes from the owner's signed manifest:
the job, the exchange interval, mode and staleness bound, the fixed rate, and the
fingerprints of the enclaves, by rank, that the owner's client attested. The host
contributes only the members' full public keys (checked against those fingerprints),
where to meet (`contract.Rendezvous`) and timeouts, none of which can weaken the job: a wrong value
makes it fail. Every member also checks, in HELLO, that all hold the same manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chiron.core.contract import GroupMembership, Rendezvous
from chiron.core.encoding import canonical_json, sha256_hex
from chiron.core.errors import InputError, IntegrityError
from chiron.core.keys import PublicIdentity
from chiron.core.manifest import SignedManifest


@dataclass(frozen=True)
class GroupSettings:
    """Who is in the job, which of them this enclave is, and how they exchange."""

    job_id: str
    manifest_digest: str
    rank: int
    members: tuple[PublicIdentity, ...]
    exchange_every: int
    mode: str
    staleness: int
    fixed_rate: bool
    period_ms: int | None
    handshake_timeout: float
    exchange_timeout: float
    rendezvous: Rendezvous

    @property
    def workers(self) -> int:
        return len(self.members) - 1

    @classmethod
    def from_request(
        cls,
        manifest: SignedManifest,
        group: GroupMembership | None,
        rendezvous: Rendezvous | None,
        *,
        own: PublicIdentity,
    ) -> GroupSettings:
        """The settings of `manifest`'s job for this enclave (`own`), or a refusal."""
        plan = manifest.manifest.plan
        if group is None or rendezvous is None or not plan.distributed:
            raise InputError(
                "a distributed job needs its group, its rendezvous and a plan of workers"
            )
        fingerprints = tuple(member.fingerprint for member in group.members)
        # The host hands over the members' keys; the owner signed their fingerprints.
        if fingerprints != manifest.manifest.enclaves:
            raise IntegrityError(
                "the job's members are not the enclaves the owner's manifest names"
            )
        if group.members[group.rank] != own:
            raise IntegrityError(f"this enclave is not member {group.rank} of the job")
        return cls(
            job_id=manifest.manifest.job_id,
            manifest_digest=manifest.digest,
            rank=group.rank,
            members=group.members,
            exchange_every=plan.exchange_every,
            mode=plan.mode,
            staleness=plan.staleness,
            fixed_rate=plan.fixed_rate,
            period_ms=plan.period_ms,
            handshake_timeout=group.handshake_timeout,
            exchange_timeout=group.exchange_timeout,
            rendezvous=rendezvous,
        )

    def describe(self) -> dict[str, Any]:
        """What the receipt and the owner's report say about the group."""
        return {
            "workers": self.workers,
            "exchange_every": self.exchange_every,
            "mode": self.mode,
            "staleness": self.staleness,
            "fixed_rate": self.fixed_rate,
            "period_ms": self.period_ms,
            "members": [member.fingerprint for member in self.members],
        }

    def agreement(self) -> dict[str, Any]:
        """What every member must hold identically (checked in HELLO; of one size)."""
        return {
            "job_id": self.job_id,
            "manifest": self.manifest_digest,
            "members": sha256_hex(canonical_json([m.fingerprint for m in self.members])),
            "exchange_every": self.exchange_every,
            "mode": self.mode,
            "staleness": self.staleness,
            "fixed_rate": self.fixed_rate,
            "period_ms": self.period_ms,
        }
