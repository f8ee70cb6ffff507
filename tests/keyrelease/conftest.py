"""A provider's key-release agent in this process, a real query enclave, a cheap model.

The model is escrowed here exactly as the training enclave escrows one (training is
covered by tests/e2e); the query enclave is a real enclave process; the agent is the
real `KeyReleaseAgent` behind its real HTTP server on a free loopback port.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.security.escrowed import escrow, probe_weights

from chiron.client.attestation import load_policy
from chiron.client.key_release_agent import AgentState, KeyReleaseAgent, running_agent
from chiron.client.sessions import LocalEnclaveSession
from chiron.core.attestation import Policy, load_sim_root
from chiron.core.keys import Identity
from chiron.core.measurement import measure_runtime
from chiron.core.release_policy import ReleasePolicy


@pytest.fixture(scope="session")
def weights() -> bytes:
    """Safetensors weights of the tiny recipe, as the sandbox's query mode expects them."""
    return probe_weights()


@dataclass
class Scene:
    """Owner and provider with their own folders, one enclave state, one model."""

    root: Path
    enclave_state: Path
    owner_dir: Path
    provider_dir: Path
    policy: Policy
    owner: Identity
    provider: Identity
    model: bytes
    model_id: str
    sessions: list[LocalEnclaveSession] = field(default_factory=list)

    def enclave(self) -> LocalEnclaveSession:
        """A fresh query enclave on this machine (closed at the end of the test)."""
        session = LocalEnclaveSession("query", self.enclave_state)
        self.sessions.append(session)
        return session

    def release_policy(self, **settings: object) -> ReleasePolicy:
        return ReleasePolicy(
            measurements=(measure_runtime().hex,),
            UNSAFE_allow_simulation=True,
            **settings,  # type: ignore[arg-type]
        )

    def agent(
        self, policy: ReleasePolicy | None = None, *, provider: Identity | None = None, **kw
    ) -> KeyReleaseAgent:
        """The provider's agent, trusting the simulation root of this machine's enclaves."""
        state = AgentState(self.provider_dir / "agent")
        root = load_sim_root(self.enclave_state)
        if root is None:
            # The first enclave process on this state creates the simulation root.
            self.enclave().evidence(os.urandom(32))
            root = load_sim_root(self.enclave_state)
        assert root is not None
        state.trust_sim_root(root)
        kw.setdefault("log", lambda line: None)
        return KeyReleaseAgent(
            provider or self.provider, policy or self.release_policy(), state, **kw
        )


@pytest.fixture
def scene(tmp_path: Path, weights: bytes) -> Iterator[Scene]:
    owner, provider = Identity.generate(), Identity.generate()
    model_id = os.urandom(16).hex()
    owner_dir, provider_dir = tmp_path / "owner", tmp_path / "provider"
    owner_dir.mkdir()
    provider_dir.mkdir()
    owner.save(owner_dir / "owner.key")
    provider.save(provider_dir / "provider.key")
    model = escrow(owner, provider, weights, model_id)
    (owner_dir / "model.chm").write_bytes(model)
    scene = Scene(
        root=tmp_path,
        enclave_state=tmp_path / "enclave-state",
        owner_dir=owner_dir,
        provider_dir=provider_dir,
        policy=load_policy(None, allow_simulation=True),
        owner=owner,
        provider=provider,
        model=model,
        model_id=model_id,
    )
    try:
        yield scene
    finally:
        for session in scene.sessions:
            session.close()


@pytest.fixture
def serve() -> Callable[[KeyReleaseAgent], str]:
    """Serve an agent on a free loopback port for the rest of the test; returns its URL."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda agent: stack.enter_context(running_agent(agent))
