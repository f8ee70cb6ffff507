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
    # A training enclave's sandbox, started when it is first attested or with the
    # process (`start_sandbox_ahead`), so the child confines itself and imports torch
    # while the client checks the evidence and the enclave opens the data; the job
    # takes it once (`recipe_sandbox`).
    _sandbox_ahead: Sandbox | None = field(default=None, repr=False)
    _sandbox_started: bool = field(default=False, repr=False)

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

    def start_sandbox_ahead(self) -> None:
        """A training enclave starts its job's sandbox now, once per process.

        Called when the enclave is first attested (every job starts with its owner
        attesting the enclave, so the child is started for a job about to arrive, not
        for every enclave a host keeps waiting: a created job's enclave holds no torch
        child until then), or as the process starts when its starter asks
        (`create(sandbox_at_start=True)`). A child that cannot be started now is started
        again by the job, which reports why it failed.
        """
        if self.role != Role.TRAIN or self._sandbox_started or self.binding:
            return  # not a training enclave, started already, or serving its job
        self._sandbox_started = True
        with contextlib.suppress(EnclaveError, OSError):
            self._sandbox_ahead = Sandbox.start(limits=SandboxLimits())

    def recipe_sandbox(self) -> Sandbox:
        """A confined child for the recipe: the one started ahead if it is well, else a new one.

        The early child was started before anything of a job reached this process and has
        been given nothing: it is as fresh as one started now. One that died while it
        waited, or did not come up, is replaced rather than blamed on the recipe. Raises
        EnclaveError as `spawn` does.
        """
        self._sandbox_started = True  # a later `start_sandbox_ahead` starts nothing
        ahead, self._sandbox_ahead = self._sandbox_ahead, None
        if ahead is not None:
            try:
                sandbox = ahead.confined()
                if sandbox.alive():
                    return sandbox
            except EnclaveError:
                pass
            ahead.close()
        # Imported here: it brings numpy, which only roles running a recipe load.
        from chiron.enclave.recipe_session import spawn_recipe

        return spawn_recipe()

    def close(self) -> None:
        """Stop a sandbox started ahead that no job took."""
        ahead, self._sandbox_ahead = self._sandbox_ahead, None
        if ahead is not None:
            ahead.close()

    @classmethod
    def create(
        cls, *, role: str, state_dir: str, platform_name: str, sandbox_at_start: bool = False
    ) -> EnclaveContext:
        """This process's context; with `sandbox_at_start`, a training enclave starts its
        sandbox now, before it measures itself (which the child's start then overlaps),
        rather than when first attested: for a starter whose job is about to arrive."""
        context = cls(
            role=role,
            state_dir=Path(state_dir),
            platform_name=platform_name,
            identity=Identity.generate(),
            measurement="",
        )
        if sandbox_at_start:
            context.start_sandbox_ahead()
        try:
            context.measurement = measure_runtime().hex
        except BaseException:
            context.close()
            raise
        return context
