"""The SEV-SNP certificate table: the VCEK or VLEK (and ASK, ARK) a host hands its guest.

An SNP guest that asks its firmware for an extended report also receives the
certificates the host loaded for it (GHCB specification, "MSG_REPORT_REQ", certificate
table); Linux's configfs-tsm returns them as `auxblob`. The table is a list of 24-byte
entries, each a GUID (16 bytes, in the order the GUID is written), an offset and a
length (little-endian 32-bit, relative to the start of the table), ended by an entry of
zeros. Each entry's bytes are one certificate, DER (or, from some hosts, PEM).

The host chooses what is in the table, so nothing in it is trusted for what it says:
the VCEK or VLEK counts only if it chains to an AMD root pinned in the package and its
key verifies the report, and an ARK in the table is never used as a root.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from chiron.core.attestation.vendor_crypto import (
    MAX_CERTIFICATE_FILE_BYTES,
    Certificate,
    load_certificates,
)
from chiron.core.errors import InputError

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
# What each known entry holds; entries with other GUIDs (a CRL, a vendor's own data)
# are skipped.
KINDS = {VCEK_GUID: "VCEK", VLEK_GUID: "VLEK", ASK_GUID: "ASK", ARK_GUID: "ARK"}

_ENTRY = struct.Struct("<16sII")  # GUID, offset, length
# A table holds a handful of certificates; anything far larger is not one.
_MAX_ENTRIES = 64
_MAX_TABLE_BYTES = 4 * MAX_CERTIFICATE_FILE_BYTES


@dataclass(frozen=True)
class CertificateTable:
    """The certificates of an SNP certificate table, by kind, in table order."""

    entries: tuple[tuple[str, Certificate], ...]

    def certificates(self, kind: str) -> list[Certificate]:
        return [cert for name, cert in self.entries if name == kind]

    @property
    def chain(self) -> list[Certificate]:
        """Endorsement key first (VCEK, then VLEK), then ASK and ARK: a chain to verify."""
        order = ("VCEK", "VLEK", "ASK", "ARK")
        return [cert for kind in order for cert in self.certificates(kind)]


def parse_certificate_table(
    data: bytes, *, source: str = "the certificate table"
) -> CertificateTable:
    """Parse an SNP certificate table; anything malformed is a one-line InputError."""
    if len(data) > _MAX_TABLE_BYTES:
        raise InputError(f"{source} is larger than a certificate table can be")
    entries: list[tuple[str, Certificate]] = []
    offset = 0
    while True:
        if offset >= _ENTRY.size * (_MAX_ENTRIES + 1):
            raise InputError(f"{source} has more than {_MAX_ENTRIES} entries")
        if offset + _ENTRY.size > len(data):
            raise InputError(f"{source} is truncated: no terminating entry")
        raw_guid, start, length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        if raw_guid == bytes(16) and start == 0 and length == 0:
            break
        kind = KINDS.get(uuid.UUID(bytes=raw_guid))
        if kind is None:
            continue
        if length == 0 or start + length > len(data):
            raise InputError(f"{source}: the {kind} entry lies outside the table")
        certs = load_certificates(data[start : start + length], source=f"{source} ({kind})")
        if len(certs) != 1:
            raise InputError(f"{source}: the {kind} entry holds {len(certs)} certificates")
        entries.append((kind, certs[0]))
    return CertificateTable(tuple(entries))


def certificate_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """Encode a certificate table: the entries, their terminator, then their bytes.

    The inverse of `parse_certificate_table`, for hosts and tests that build one.
    """
    start = _ENTRY.size * (len(entries) + 1)
    header = b""
    body = b""
    for guid, payload in entries:
        header += _ENTRY.pack(guid.bytes, start + len(body), len(payload))
        body += payload
    return header + _ENTRY.pack(bytes(16), 0, 0) + body
