"""X.509 and signature checks on AMD's and Intel's attestation material.

This is the one module of `core.attestation` that calls `cryptography` for vendor
formats: parsing certificates and CRLs, checking the RSA-PSS (AMD) and ECDSA (AMD,
Intel) signatures the vendors made, and loading the roots pinned in `roots/`. Chiron's
own keys and envelopes stay in `core.crypto`; everything here only verifies what a
vendor signed, it never signs. Callers see `Certificate` and `Crl` values and booleans,
never a `cryptography` object.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from chiron.core.errors import InputError

# The roots every vendor chain must end in. They ship inside the package and are never
# fetched: a root that arrived over the network with the evidence would prove nothing.
_ROOTS_PACKAGE = "chiron.core.attestation.roots"
AMD_ROOT_FILES = (
    "amd_milan.pem",
    "amd_milan_vlek.pem",
    "amd_genoa.pem",
    "amd_genoa_vlek.pem",
    "amd_turin_vcek.pem",
    "amd_turin_vlek.pem",
)
INTEL_ROOT_FILE = "intel_sgx_root_ca.pem"
MAX_CERTIFICATE_FILE_BYTES = 64 * 1024
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_CRL = b"-----BEGIN X509 CRL-----"
_DER = Encoding.DER


@dataclass(frozen=True)
class Certificate:
    """A parsed X.509 certificate; compared by its DER bytes."""

    der: bytes
    _cert: x509.Certificate = field(repr=False, compare=False)

    @property
    def subject(self) -> str:
        return self._cert.subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        return self._cert.issuer.rfc4514_string()

    @property
    def common_name(self) -> str:
        names = self._cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(names[0].value) if names else self.subject

    @property
    def serial_number(self) -> int:
        return self._cert.serial_number

    @property
    def not_before(self) -> datetime:
        return self._cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self._cert.not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def self_signed(self) -> bool:
        return self._cert.subject == self._cert.issuer and self.signed_by(self)

    def valid_at(self, when: datetime) -> bool:
        return self.not_before <= when <= self.not_after

    def names_issuer(self, parent: Certificate) -> bool:
        """True when this certificate's issuer name is `parent`'s subject name."""
        return self._cert.issuer == parent._cert.subject

    def signed_by(self, parent: Certificate) -> bool:
        """True when `parent` issued this certificate (issuer name and signature).

        RSA-PSS (AMD's ARK, ASK, VCEK, VLEK) and ECDSA (Intel's chain) are both
        checked with the parameters written in the certificate, which for AMD must be
        SHA-384 with a 48-byte salt: anything else is refused below.
        """
        try:
            self._cert.verify_directly_issued_by(parent._cert)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            return False
        return True

    def extension(self, oid: str) -> bytes | None:
        """The raw value of a vendor extension (AMD's TCB and chip id, Intel's SGX data)."""
        for ext in self._cert.extensions:
            if ext.oid.dotted_string == oid and isinstance(ext.value, x509.UnrecognizedExtension):
                return ext.value.value
        return None


def _certificate(der: bytes) -> Certificate:
    # AMD issues VCEKs and VLEKs with serial number 0, which RFC 5280 disallows and
    # cryptography warns about; the serial plays no part in what is checked here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(der)
    return Certificate(der=cert.public_bytes(_DER), _cert=cert)


def load_certificates(data: bytes, *, source: str) -> list[Certificate]:
    """Every certificate in `data`: one DER certificate, or one or more PEM blocks."""
    if len(data) > MAX_CERTIFICATE_FILE_BYTES:
        raise InputError(f"{source}: larger than a certificate chain can be")
    try:
        if _PEM_CERTIFICATE in data:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs = x509.load_pem_x509_certificates(data)
            return [Certificate(der=c.public_bytes(_DER), _cert=c) for c in certs]
        return [_certificate(data)]
    except ValueError:
        raise InputError(f"{source}: not a DER or PEM certificate") from None


def pinned_roots(name: str) -> list[Certificate]:
    """The certificates of one pinned root file shipped in `roots/`."""
    data = resources.files(_ROOTS_PACKAGE).joinpath(name).read_bytes()
    return load_certificates(data, source=name)


def amd_certificates() -> list[Certificate]:
    """AMD's ARKs and ASK/ASVKs for every product line, as pinned."""
    return [cert for name in AMD_ROOT_FILES for cert in pinned_roots(name)]


def intel_root() -> Certificate:
    (root,) = pinned_roots(INTEL_ROOT_FILE)
    return root


def verify_snp_signature(signer: Certificate, r: int, s: int, message: bytes) -> bool:
    """ECDSA P-384 with SHA-384 by a VCEK or VLEK, as in an SEV-SNP report."""
    key = signer._cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def verify_p256_signature(
    public_key: bytes | Certificate, signature: bytes, message: bytes
) -> bool:
    """ECDSA P-256 with SHA-256, signature as r ‖ s (32 bytes each, big-endian).

    `public_key` is either a raw uncompressed point without its 0x04 prefix (x ‖ y, the
    attestation key inside a TDX quote) or the certificate holding the key.
    """
    if len(signature) != 64:
        return False
    if isinstance(public_key, Certificate):
        key = public_key._cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            return False
    else:
        if len(public_key) != 64:
            return False
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + public_key)
        except ValueError:
            return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Crl:
    """A parsed certificate revocation list."""

    der: bytes
    _crl: x509.CertificateRevocationList = field(repr=False, compare=False)

    @property
    def issuer(self) -> str:
        return self._crl.issuer.rfc4514_string()

    @property
    def this_update(self) -> datetime:
        return self._crl.last_update_utc

    @property
    def next_update(self) -> datetime | None:
        return self._crl.next_update_utc

    def current_at(self, when: datetime) -> bool:
        return self.this_update <= when and (self.next_update is None or when <= self.next_update)

    def issued_by(self, issuer: Certificate) -> bool:
        """True when `issuer` signed this CRL and is the issuer it names."""
        if self._crl.issuer != issuer._cert.subject:
            return False
        try:
            return self._crl.is_signature_valid(issuer._cert.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError, UnsupportedAlgorithm):
            return False

    def revokes(self, cert: Certificate) -> bool:
        """True when the list names `cert` (same issuer, same serial) as revoked."""
        if self._crl.issuer != cert._cert.issuer:
            return False
        return self._crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def load_crl(data: bytes, *, source: str) -> Crl:
    """A CRL in DER or PEM."""
    try:
        if _PEM_CRL in data:
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError:
        raise InputError(f"{source}: not a DER or PEM certificate revocation list") from None
    return Crl(der=crl.public_bytes(_DER), _crl=crl)
