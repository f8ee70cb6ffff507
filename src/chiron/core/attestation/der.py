"""Just enough DER to read the vendor extensions of AMD and Intel certificates.

`cryptography` hands unknown extensions over as raw bytes; AMD's TCB fields are DER
INTEGERs and Intel's SGX extension is a SEQUENCE of (OID, value) pairs. Anything that
is not well-formed DER raises ValueError, which callers turn into a failed check.
"""

from __future__ import annotations

from collections.abc import Iterator

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_IA5_STRING = 0x16
TAG_SEQUENCE = 0x30


def read(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """(tag, contents, offset after the element) of the element at `offset`."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    length = data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    end = offset + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, data[offset:end], end


def single(data: bytes, tag: int) -> bytes:
    """The contents of `data`, which must be exactly one element with `tag`."""
    actual, contents, end = read(data)
    if actual != tag or end != len(data):
        raise ValueError("unexpected DER element")
    return contents


def integer(data: bytes) -> int:
    """A non-negative DER INTEGER."""
    return integer_value(TAG_INTEGER, single(data, TAG_INTEGER))


def integer_value(tag: int, contents: bytes) -> int:
    """A non-negative INTEGER from its tag and contents (as `elements` yields them)."""
    if tag != TAG_INTEGER or not contents or contents[0] & 0x80:
        raise ValueError("not a non-negative INTEGER")
    return int.from_bytes(contents, "big")


def elements(contents: bytes) -> Iterator[tuple[int, bytes]]:
    """The (tag, contents) of each element inside a constructed value."""
    offset = 0
    while offset < len(contents):
        tag, value, offset = read(contents, offset)
        yield tag, value


def oid(contents: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's contents."""
    if not contents:
        raise ValueError("empty OID")
    first = contents[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in contents[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(part) for part in parts)


def oid_map(contents: bytes) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE {OID, value} as {oid: (value tag, value contents)}."""
    result: dict[str, tuple[int, bytes]] = {}
    for tag, pair in elements(contents):
        if tag != TAG_SEQUENCE:
            raise ValueError("expected a SEQUENCE")
        items = list(elements(pair))
        if len(items) != 2 or items[0][0] != TAG_OID:
            raise ValueError("expected {OID, value}")
        result[oid(items[0][1])] = items[1]
    return result
