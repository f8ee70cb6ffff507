"""Per-process enclave state: role, ephemeral identity, platform, measurement."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.errors import EnclaveError
from chiron.core.keys import Identity
from chiron.core.measurement import measure_runtime
from chiron.core.roles import Role
from chiron.enclave.platforms import Platform, load_platform
from chiron.enclave.sandbox import Sandbox, SandboxLimits


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
    # A training enclave's sandbox, started with the process (`create`) so the child
    # confines itself and imports torch while the enclave measures itself and is
    # attested; the job takes it once (`recipe_sandbox`).
    _sandbox_ahead: Sandbox | None = field(default=None, repr=False)

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

    def recipe_sandbox(self) -> Sandbox:
        """A confined child for the recipe: the one started with this process, else a new one.

        The early child was started before anything of a job existed and has been given
        nothing: it is as fresh as one started now. Raises EnclaveError as `spawn` does.
        """
        ahead, self._sandbox_ahead = self._sandbox_ahead, None
        if ahead is None:
            # Imported here: it brings numpy, which only roles running a recipe load.
            from chiron.enclave.recipe_session import spawn_recipe

            return spawn_recipe()
        return ahead.confined()

    def close(self) -> None:
        """Stop a sandbox started ahead that no job took."""
        ahead, self._sandbox_ahead = self._sandbox_ahead, None
        if ahead is not None:
            ahead.close()

    @classmethod
    def create(cls, *, role: str, state_dir: str, platform_name: str) -> EnclaveContext:
        ahead = None
        if role == Role.TRAIN:
            # Started before the measurement, which it overlaps; a child that cannot be
            # started now is started again by the job, which reports why it failed.
            with contextlib.suppress(EnclaveError):
                ahead = Sandbox.start(limits=SandboxLimits())
        try:
            measurement = measure_runtime().hex
        except BaseException:
            if ahead is not None:
                ahead.close()
            raise
        return cls(
            role=role,
            state_dir=Path(state_dir),
            platform_name=platform_name,
            identity=Identity.generate(),
            measurement=measurement,
            _sandbox_ahead=ahead,
        )
