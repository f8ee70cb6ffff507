"""The provider's key-release agent for the benchmarks: in this process, on loopback.

The benchmarks play both parties on one machine; the owner's side still gets the
provider's share only from the agent, as `chiron query --provider URL` does. The agent
trusts the simulation root of the enclaves run under `enclave_home` (which must have
started one already).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chiron.client.key_release_agent import AgentState, KeyReleaseAgent, running_agent
from chiron.core.attestation import load_sim_root
from chiron.core.keys import load_identity
from chiron.core.measurement import measure_runtime
from chiron.core.release_policy import ReleasePolicy


@contextmanager
def provider_agent(provider_key: Path, enclave_home: Path, state: Path) -> Iterator[str]:
    """A running agent for the provider of `provider_key`; yields its URL."""
    root = load_sim_root(enclave_home)
    if root is None:
        raise SystemExit(f"no simulation root under {enclave_home}: start an enclave first")
    agent_state = AgentState(state)
    agent_state.trust_sim_root(root)
    policy = ReleasePolicy(measurements=(measure_runtime().hex,), UNSAFE_allow_simulation=True)
    agent = KeyReleaseAgent(load_identity(provider_key), policy, agent_state, log=lambda _: None)
    with running_agent(agent) as url:
        yield url
