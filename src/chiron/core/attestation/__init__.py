"""Attestation: the evidence model, verification policies, the verifier and its report.

Shared by every party that must decide whether to trust an enclave: the owner's and
provider's clients, and enclaves attesting each other. See docs/attestation.md.
"""

from chiron.core.attestation.checks import (
    AllOf,
    AnyOf,
    Check,
    DebugDisabled,
    UNSAFE_DebugAllowed,
)
from chiron.core.attestation.evidence import (
    NONCE_MAX_BYTES,
    NONCE_MIN_BYTES,
    PLATFORM_SEV_SNP,
    PLATFORM_SIM,
    PLATFORM_TDX,
    PLATFORMS,
    Evidence,
    SimSignatureChain,
    TsmSignatureChain,
    report_data_for,
)
from chiron.core.attestation.policy import (
    MaxAge,
    MeasurementIs,
    MinimumTcb,
    NotSimulated,
    PlatformIs,
    Policy,
    UNSAFE_SimulationAllowed,
    UNSAFE_UnverifiedVendorSignatureAllowed,
    VendorSignatureVerified,
)
from chiron.core.attestation.report import CheckResult, Claims, VerificationReport
from chiron.core.attestation.sim import SimRoot, load_sim_root
from chiron.core.attestation.verifier import verify_evidence

__all__ = [
    "NONCE_MAX_BYTES",
    "NONCE_MIN_BYTES",
    "PLATFORMS",
    "PLATFORM_SEV_SNP",
    "PLATFORM_SIM",
    "PLATFORM_TDX",
    "AllOf",
    "AnyOf",
    "Check",
    "CheckResult",
    "Claims",
    "DebugDisabled",
    "Evidence",
    "MaxAge",
    "MeasurementIs",
    "MinimumTcb",
    "NotSimulated",
    "PlatformIs",
    "Policy",
    "SimRoot",
    "SimSignatureChain",
    "TsmSignatureChain",
    "UNSAFE_DebugAllowed",
    "UNSAFE_SimulationAllowed",
    "UNSAFE_UnverifiedVendorSignatureAllowed",
    "VendorSignatureVerified",
    "VerificationReport",
    "load_sim_root",
    "report_data_for",
    "verify_evidence",
]
