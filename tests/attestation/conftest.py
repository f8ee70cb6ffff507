"""Fixtures for the attestation tests: a simulated platform, an enclave identity, a policy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from chiron.core.attestation import Policy, SimRoot, load_sim_root
from chiron.core.keys import Identity
from chiron.enclave.platforms.sim import SimFault, SimPlatform

# A stand-in runtime measurement: the verifier treats it like any other.
MEASUREMENT = hashlib.sha256(b"a runtime").hexdigest()


class SimWorld:
    """A simulated platform in a fresh state directory, and an enclave identity."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.platform = SimPlatform(state_dir)
        self.identity = Identity.generate()

    @property
    def root(self) -> SimRoot:
        root = load_sim_root(self.state_dir)
        assert root is not None
        return root

    def evidence(self, nonce: bytes, fault: SimFault | None = None) -> bytes:
        return self.platform.evidence(
            measurement=MEASUREMENT,
            identity=self.identity.public,
            nonce=nonce,
            role="train",
            binding="",
            fault=fault,
        )


@pytest.fixture
def sim(tmp_path: Path) -> SimWorld:
    return SimWorld(tmp_path / "state")


@pytest.fixture
def nonce() -> bytes:
    return os.urandom(32)


@pytest.fixture
def sim_policy() -> Policy:
    """The default policy, except that it accepts simulation (there is no TEE here)."""
    return Policy(measurements=(MEASUREMENT,), UNSAFE_allow_simulation=True)
