"""The provider-facing recipe SDK; runs inside the sandbox and is untrusted by the enclave."""
