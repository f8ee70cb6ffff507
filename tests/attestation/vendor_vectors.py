"""Where the real-hardware vectors live, and helpers to load and mutate them.

The vectors are byte-for-byte copies of public test data (see vectors/README.md); each
has the verification time at which its expected outcome holds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"
SNP = VECTORS / "snp"
TDX = VECTORS / "tdx"


def at(day: str) -> datetime:
    """A verification time, UTC, from an ISO 8601 date or date-time."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def read(path: Path) -> bytes:
    """A vector's bytes; hex files (optionally 0x-prefixed) are decoded."""
    data = path.read_bytes()
    if path.suffix == ".hex":
        return bytes.fromhex(data.decode().strip().removeprefix("0x"))
    return data


def genoa_hcl_report() -> bytes:
    """The Genoa HCL report stored as a list of byte values inside evidence-genoa.json."""
    document = json.loads((SNP / "trustee_azure_hcl" / "evidence-genoa.json").read_text())
    return bytes(document["report"])


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    """`data` with one bit flipped."""
    mutated = bytearray(data)
    mutated[offset] ^= 1 << bit
    return bytes(mutated)
