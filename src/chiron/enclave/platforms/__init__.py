"""Evidence providers: how an enclave process gets its evidence signed.

`sim` stands in for a TEE on ordinary machines (a software root key in the state
directory; protects nothing against the host). `tsm` asks the kernel of a TDX or
SEV-SNP confidential VM for a CPU-signed report through configfs-tsm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from chiron.core.errors import EnclaveError
from chiron.core.keys import PublicIdentity
from chiron.enclave.platforms.sim import SimPlatform
from chiron.enclave.platforms.tsm import TsmPlatform

PLATFORM_NAMES = ("sim", "tsm")


class Platform(Protocol):
    """Produces serialized evidence binding a nonce to this enclave's keys and measurement."""

    def evidence(
        self, *, measurement: str, identity: PublicIdentity, nonce: bytes, role: str, binding: str
    ) -> bytes: ...


def load_platform(name: str, state_dir: Path) -> Platform:
    """The evidence provider called `name` (the enclave's --platform option)."""
    if name == "sim":
        return SimPlatform(state_dir)
    if name == "tsm":
        return TsmPlatform()
    raise EnclaveError(f"unknown enclave platform {name!r} (known: {', '.join(PLATFORM_NAMES)})")
