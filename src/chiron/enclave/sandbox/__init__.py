"""The sandbox that confines a provider's recipe (Ryoan's role in Chiron).

Enclave-side API: `Sandbox`, `SandboxLimits`, `SandboxFailure`. The child side is the
bootstrap `python -m chiron.enclave.sandbox.child`; docs/sandbox.md explains each layer.
"""

from chiron.enclave.sandbox.failures import SandboxFailure
from chiron.enclave.sandbox.startup import SandboxLimits
from chiron.enclave.sandbox.supervisor import Sandbox

__all__ = ["Sandbox", "SandboxFailure", "SandboxLimits"]
