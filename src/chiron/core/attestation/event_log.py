"""Replaying a TDX guest's CCEL event log against the RTMRs of its quote.

The firmware and boot chain of a TD record what they load in the CC event log (ACPI
CCEL table, TCG crypto-agile format) and extend the same digests into the runtime
measurement registers: RTMR[i] = SHA-384(RTMR[i] ‖ digest), from 48 zero bytes. The
log's own "MR index" counts MRTD as 0, so events 1..4 go to RTMR0..3. A log whose
replay reproduces the quoted RTMRs exactly is what the TD actually measured; the log
itself is not signed, so nothing in it counts unless the replay matches.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from chiron.core.errors import InputError

RTMR_COUNT = 4
MAX_EVENT_LOG_BYTES = 16 * 1024 * 1024
_SHA384_ALG_ID = 0x000C
_DIGEST_BYTES = 48
_EV_NO_ACTION = 0x00000003
_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_ALGORITHM = struct.Struct("<HH")  # algorithm id, digest size
_END_OF_LOG = 0xFFFFFFFF  # unused log space is filled with 0xFF


@dataclass(frozen=True)
class Event:
    """One measured event: which register, its type and its SHA-384 digest."""

    mr_index: int
    event_type: int
    digest: bytes


@dataclass(frozen=True)
class EventLog:
    events: tuple[Event, ...]

    def replay(self) -> tuple[bytes, ...]:
        """RTMR0..3 as the events extend them."""
        registers = [bytes(_DIGEST_BYTES)] * RTMR_COUNT
        for event in self.events:
            if event.event_type == _EV_NO_ACTION or not 1 <= event.mr_index <= RTMR_COUNT:
                continue
            index = event.mr_index - 1
            registers[index] = hashlib.sha384(registers[index] + event.digest).digest()
        return tuple(registers)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise InputError("truncated CCEL event log")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def number(self, layout: struct.Struct) -> int:
        return layout.unpack(self.take(layout.size))[0]


def parse_event_log(data: bytes) -> EventLog:
    """Parse a CCEL event log (the ACPI CCEL area, as /sys/firmware/acpi/tables/data/CCEL)."""
    if len(data) > MAX_EVENT_LOG_BYTES:
        raise InputError("the event log is larger than allowed")
    reader = _Reader(data)
    # The first event is in the old SHA-1 format and declares the digest sizes.
    reader.take(8 + 20)  # MR index, event type, SHA-1 digest
    header = _Reader(reader.take(reader.number(_U32)))
    if header.take(len(_SPEC_ID_SIGNATURE)) != _SPEC_ID_SIGNATURE:
        raise InputError("not a TCG crypto-agile event log (no Spec ID Event03)")
    header.take(8)  # platform class, spec version, errata, uintn size
    sizes = {}
    for _ in range(header.number(_U32)):
        algorithm, size = _ALGORITHM.unpack(header.take(_ALGORITHM.size))
        sizes[algorithm] = size
    if sizes.get(_SHA384_ALG_ID) != _DIGEST_BYTES:
        raise InputError("the event log has no SHA-384 digests")
    events = []
    while reader.remaining() >= 8:
        mr_index = reader.number(_U32)
        event_type = reader.number(_U32)
        if mr_index == _END_OF_LOG or (mr_index == 0 and event_type == 0):
            break
        digest = None
        for _ in range(reader.number(_U32)):
            algorithm = reader.number(_U16)
            if algorithm not in sizes:
                raise InputError(f"event log digest of unknown algorithm {algorithm:#x}")
            value = reader.take(sizes[algorithm])
            if algorithm == _SHA384_ALG_ID:
                digest = value
        reader.take(reader.number(_U32))  # the event data itself
        if digest is None:
            raise InputError("an event log entry has no SHA-384 digest")
        events.append(Event(mr_index=mr_index, event_type=event_type, digest=digest))
    return EventLog(events=tuple(events))
