"""Per-process enclave state: role, ephemeral identity, platform, measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.keys import Identity


@dataclass
class EnclaveContext:
    role: str
    state_dir: Path
    platform_name: str
    # Fresh per process and never written anywhere: evidence binds its public half.
    identity: Identity
    # Role-specific state (for example the query enclave's loaded model and shares).
    session: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, *, role: str, state_dir: str, platform_name: str) -> EnclaveContext:
        return cls(
            role=role,
            state_dir=Path(state_dir),
            platform_name=platform_name,
            identity=Identity.generate(),
        )
