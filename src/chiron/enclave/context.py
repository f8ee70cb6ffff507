"""Per-process enclave state: role, ephemeral identity, platform, measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.errors import EnclaveError
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
    # What this enclave serves, once it accepted it: a job manifest's digest or a model
    # id; "" before. Set once (`bind`), and stated in every later evidence.
    binding: str = ""
    _platform: Platform | None = field(default=None, repr=False)

    @property
    def platform(self) -> Platform:
        """The evidence provider, created on first use (the sim root is made then)."""
        if self._platform is None:
            self._platform = load_platform(self.platform_name, self.state_dir)
        return self._platform

    def bind(self, binding: str) -> None:
        """Commit this process to one job or one model for the rest of its life.

        An enclave serves exactly one: a second `train`, a `load_model` of another model,
        or a manifest for another job is refused, so a host cannot run a job twice (once
        with its own keys) on the data key the owner released for one.
        """
        if self.binding:
            raise EnclaveError(
                f"this {self.role} enclave already serves another "
                f"{'model' if self.role == 'query' else 'job'}; start a new enclave"
            )
        self.binding = binding

    def evidence(self, nonce: bytes) -> bytes:
        """Evidence over `nonce` binding this process's keys, measurement, role and binding."""
        return self.platform.evidence(
            measurement=self.measurement,
            identity=self.identity.public,
            nonce=nonce,
            role=self.role,
            binding=self.binding,
        )

    @classmethod
    def create(cls, *, role: str, state_dir: str, platform_name: str) -> EnclaveContext:
        return cls(
            role=role,
            state_dir=Path(state_dir),
            platform_name=platform_name,
            identity=Identity.generate(),
            measurement=measure_runtime().hex,
        )
