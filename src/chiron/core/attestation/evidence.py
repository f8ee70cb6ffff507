"""Attestation evidence: what an enclave says about itself, and what vouches for it.

Evidence carries the claims a verifier appraises (platform, runtime measurement, debug
flag, TCB level, timestamp), the enclave's public identity, 64 bytes of report data and
a signature chain. The report data is a hash binding the verifier's nonce, the
enclave's public keys, its measurement and the timestamp, so evidence that verifies
authenticates exactly those keys, for exactly this request: a replayed report (made
for another nonce) or one whose keys were swapped no longer matches.

The signature chain depends on the platform: on `sim`, a software root key certifies a
platform key that signs the claims; on TDX and SEV-SNP, the CPU-signed report returned
by the kernel's configfs-tsm interface, whose report data field carries the binding,
with (on SEV-SNP) the certificate table the host supplied beside it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from chiron.core.encoding import b64decode, b64encode, canonical_json
from chiron.core.errors import AttestationError, KeyFileError
from chiron.core.keys import PublicIdentity
from chiron.core.limits import MAX_EVIDENCE_BYTES
from chiron.core.roles import ROLES

PLATFORM_SIM = "sim"
PLATFORM_TDX = "tdx"
PLATFORM_SEV_SNP = "sev-snp"
PLATFORMS = (PLATFORM_SIM, PLATFORM_TDX, PLATFORM_SEV_SNP)

EVIDENCE_TYPE = "chiron.attestation.evidence"
EVIDENCE_VERSION = 1
REPORT_DATA_BYTES = 64
NONCE_MIN_BYTES = 16
NONCE_MAX_BYTES = 64

_REPORT_DATA_DOMAIN = b"chiron/attestation/report-data/v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# What an enclave serves, once it has accepted it: nothing yet (""), a job manifest's
# digest (64 hex digits) or a model id (32 hex digits).
_BINDING = re.compile(r"(|[0-9a-f]{32}|[0-9a-f]{64})")
UNBOUND = ""


def is_measurement(value: object) -> bool:
    """True for a well-formed measurement: 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def check_nonce(nonce: object) -> bytes:
    """Return `nonce` if it is bytes of an acceptable length, else raise AttestationError."""
    if not isinstance(nonce, bytes) or not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
        raise AttestationError(
            f"the attestation nonce must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes"
        )
    return nonce


def is_binding(value: object) -> bool:
    """True for what an enclave may say it serves: "", a manifest digest or a model id."""
    return isinstance(value, str) and _BINDING.fullmatch(value) is not None


def report_data_for(
    *,
    nonce: bytes,
    enclave_identity: bytes,
    measurement: str,
    timestamp: int,
    role: str,
    binding: str,
) -> bytes:
    """The 64 bytes of report data binding a request's nonce to an enclave's keys and claims.

    SHA-512 over a domain-separated canonical encoding: the same inputs give the same
    bytes on both sides, and no two different inputs share an encoding. The role and
    what the enclave serves (its job manifest's digest or its model id, once accepted)
    are bound too, so evidence of a training enclave cannot pass for a query enclave's,
    and a receipt's evidence names the very job it was issued for.
    """
    encoded = canonical_json(
        {
            "nonce": nonce.hex(),
            "enclave_identity": enclave_identity.hex(),
            "measurement": measurement,
            "timestamp": timestamp,
            "role": role,
            "binding": binding,
        }
    )
    return hashlib.sha512(_REPORT_DATA_DOMAIN + encoded).digest()


@dataclass(frozen=True)
class SimSignatureChain:
    """Simulated platform: root key → platform certificate → signature over the claims."""

    certificate: bytes
    certificate_signature: bytes
    evidence_signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "certificate": b64encode(self.certificate),
            "certificate_signature": b64encode(self.certificate_signature),
            "evidence_signature": b64encode(self.evidence_signature),
        }


@dataclass(frozen=True)
class TsmSignatureChain:
    """Confidential VM: the vendor-signed report the kernel returned through configfs-tsm.

    `auxblob` is what the kernel returned beside it: on SEV-SNP the certificate table
    the host loaded (VCEK or VLEK, possibly ASK and ARK; `snp_certificates`), empty
    when the host loaded none and on TDX, whose quote carries its PCK chain itself.
    It is unauthenticated: the verifier trusts a certificate from it only if it chains
    to a pinned vendor root.
    """

    provider: str
    generation: int
    outblob: bytes
    auxblob: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "provider": self.provider,
            "generation": self.generation,
            "outblob": b64encode(self.outblob),
        }
        if self.auxblob:
            document["auxblob"] = b64encode(self.auxblob)
        return document


SignatureChain = SimSignatureChain | TsmSignatureChain


@dataclass(frozen=True)
class Evidence:
    """One piece of attestation evidence, as the enclave produced it (not yet verified)."""

    platform: str
    measurement: str
    debug: bool
    tcb_level: int
    timestamp: int
    report_data: bytes
    enclave_identity: bytes
    signature_chain: SignatureChain
    # The enclave's role and what it serves (see report_data_for); bound by report data.
    role: str
    binding: str

    @property
    def identity(self) -> PublicIdentity:
        return PublicIdentity.from_bytes(self.enclave_identity)

    def claims(self) -> dict[str, Any]:
        """Everything but the signature chain: what the platform key signs on `sim`."""
        return {
            "type": EVIDENCE_TYPE,
            "version": EVIDENCE_VERSION,
            "platform": self.platform,
            "measurement": self.measurement,
            "debug": self.debug,
            "tcb_level": self.tcb_level,
            "timestamp": self.timestamp,
            "report_data": b64encode(self.report_data),
            "enclave_identity": b64encode(self.enclave_identity),
            "role": self.role,
            "binding": self.binding,
        }

    def signed_bytes(self) -> bytes:
        return canonical_json(self.claims())

    def to_bytes(self) -> bytes:
        return canonical_json({**self.claims(), "signature_chain": self.signature_chain.to_dict()})

    @classmethod
    def from_bytes(cls, data: bytes) -> Evidence:
        """Parse serialized evidence; anything malformed is a one-line AttestationError."""
        if not isinstance(data, bytes) or len(data) > MAX_EVIDENCE_BYTES:
            raise AttestationError("malformed evidence: missing or larger than allowed")
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AttestationError("malformed evidence: not an evidence document") from None
        if not isinstance(document, dict) or document.get("type") != EVIDENCE_TYPE:
            raise AttestationError("malformed evidence: not an evidence document")
        if document.get("version") != EVIDENCE_VERSION:
            raise AttestationError(
                f"malformed evidence: unsupported version {document.get('version')!r}"
            )
        platform = document.get("platform")
        if platform not in PLATFORMS:
            raise AttestationError(f"evidence from unknown platform {platform!r}")
        try:
            evidence = cls(
                platform=platform,
                measurement=_field(document, "measurement", str),
                debug=_field(document, "debug", bool),
                tcb_level=_field(document, "tcb_level", int),
                timestamp=_field(document, "timestamp", int),
                report_data=b64decode(_field(document, "report_data", str)),
                enclave_identity=b64decode(_field(document, "enclave_identity", str)),
                signature_chain=_chain(platform, _field(document, "signature_chain", dict)),
                role=_field(document, "role", str),
                binding=_field(document, "binding", str),
            )
        except (ValueError, TypeError) as exc:
            raise AttestationError(f"malformed evidence: {exc}") from None
        if not is_measurement(evidence.measurement):
            raise AttestationError("malformed evidence: measurement is not 64 hex digits")
        if evidence.role not in ROLES or not is_binding(evidence.binding):
            raise AttestationError("malformed evidence: unknown role or binding")
        if len(evidence.report_data) != REPORT_DATA_BYTES or evidence.tcb_level < 0:
            raise AttestationError("malformed evidence: bad report data or TCB level")
        try:
            evidence.identity  # noqa: B018 - parse now, so a bad key fails here
        except (KeyFileError, ValueError):
            raise AttestationError("malformed evidence: bad enclave identity") from None
        return evidence


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    if name not in document:
        raise ValueError(f"missing {name}")
    value = document[name]
    # bool is an int in Python; a field typed int must not accept true/false.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} has the wrong type")
    return value


def _chain(platform: str, chain: dict[str, Any]) -> SignatureChain:
    if platform == PLATFORM_SIM:
        return SimSignatureChain(
            certificate=b64decode(_field(chain, "certificate", str)),
            certificate_signature=b64decode(_field(chain, "certificate_signature", str)),
            evidence_signature=b64decode(_field(chain, "evidence_signature", str)),
        )
    return TsmSignatureChain(
        provider=_field(chain, "provider", str),
        generation=_field(chain, "generation", int),
        outblob=b64decode(_field(chain, "outblob", str)),
        auxblob=b64decode(_field(chain, "auxblob", str)) if "auxblob" in chain else b"",
    )
