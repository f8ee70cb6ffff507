"""Per-process enclave state: role, ephemeral identity, platform, measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.keys import Identity
from chiron.core.measurement import measure_runtime
from chiron.enclave.platforms import Platform, load_platform


@dataclass
class EnclaveContext:
    role: str
    state_dir: Path
    platform_name: str
    # Fresh per process and never written anywhere: evidence binds its public half.
    identity: Identity
    # The runtime as measured when this process started; evidence carries it. On `sim`
    # the "CPU" that measures the enclave is this code itself.
    measurement: str
    # Role-specific state (for example the query enclave's loaded model and shares).
    session: dict[str, Any] = field(default_factory=dict)
    _platform: Platform | None = field(default=None, repr=False)

    @property
    def platform(self) -> Platform:
        """The evidence provider, created on first use (the sim root is made then)."""
        if self._platform is None:
            self._platform = load_platform(self.platform_name, self.state_dir)
        return self._platform

    @classmethod
    def create(cls, *, role: str, state_dir: str, platform_name: str) -> EnclaveContext:
        return cls(
            role=role,
            state_dir=Path(state_dir),
            platform_name=platform_name,
            identity=Identity.generate(),
            measurement=measure_runtime().hex,
        )
