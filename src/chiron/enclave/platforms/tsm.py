"""Evidence from a TDX or SEV-SNP confidential VM, through Linux configfs-tsm.

The kernel's report interface (`/sys/kernel/config/tsm/report`, Linux 6.7+) works on
directories: creating one makes a fresh report request; writing `inblob` (our 64 bytes
of report data) and reading `outblob` returns a report signed by the CPU (a TDX quote
from the `tdx_guest` provider, an SEV-SNP attestation report from `sev_guest`).
`generation` counts writes to the request: if it is not exactly one after our single
write, another process touched the request and the report is discarded. On SEV-SNP,
`auxblob` holds the certificate table the host loaded for the guest (VCEK or VLEK,
possibly ASK and ARK); it is read when present and travels with the evidence, so a
verifier can check the report offline. A TDX quote carries its PCK chain itself.

The runtime measurement and the enclave's keys reach the hardware report only through
the report data hash, so a verifier that checks the report's vendor signature and
launch measurement learns that this runtime, in that VM, holds those keys.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chiron.core.attestation.evidence import (
    Evidence,
    TsmSignatureChain,
    check_nonce,
    report_data_for,
)
from chiron.core.attestation.hardware import parse_hardware_report
from chiron.core.errors import AttestationError
from chiron.core.keys import PublicIdentity

DEFAULT_TSM_ROOT = Path("/sys/kernel/config/tsm")
_MAX_OUTBLOB_BYTES = 1024 * 1024
_MAX_AUXBLOB_BYTES = 1024 * 1024
_MAX_ATTRIBUTE_BYTES = 4096


@dataclass(frozen=True)
class TsmReport:
    provider: str
    generation: int
    outblob: bytes
    auxblob: bytes = b""  # empty when the kernel has none (TDX; SNP without host certs)


class ConfigfsTsm:
    """The configfs-tsm report interface mounted at `root`."""

    def __init__(self, root: Path = DEFAULT_TSM_ROOT) -> None:
        self.root = Path(root)

    def report(self, inblob: bytes) -> TsmReport:
        """One report over `inblob`, in a request directory of our own."""
        reports = self.root / "report"
        if not reports.is_dir():
            raise AttestationError(
                f"configfs-tsm is not available at {reports}: run the enclave in a TDX or "
                "SEV-SNP guest (Linux 6.7+) with configfs mounted"
            )
        entry = self._create_entry(reports / f"chiron-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            try:
                (entry / "inblob").write_bytes(inblob)
                outblob = _read(entry / "outblob", _MAX_OUTBLOB_BYTES)
                # Read after outblob: the kernel returns the certificates it fetched
                # with that very report (same generation, checked below).
                auxblob = _read_optional(entry / "auxblob", _MAX_AUXBLOB_BYTES)
                provider = _read(entry / "provider", _MAX_ATTRIBUTE_BYTES).decode().strip()
                generation = int(_read(entry / "generation", _MAX_ATTRIBUTE_BYTES).decode())
            except OSError as exc:
                raise AttestationError(
                    f"the platform could not produce a report: {exc.strerror or exc}"
                ) from None
            except (UnicodeDecodeError, ValueError):
                raise AttestationError(
                    "the platform returned a malformed outblob, provider or generation"
                ) from None
        finally:
            self._remove_entry(entry)
        if generation != 1:
            raise AttestationError(
                "the report request was changed by another process while it was made; try again"
            )
        return TsmReport(provider, generation, outblob, auxblob)

    def _create_entry(self, path: Path) -> Path:
        """Create a report request (the kernel fills in its attributes)."""
        try:
            path.mkdir(mode=0o700)
        except OSError as exc:
            raise AttestationError(f"cannot create a configfs-tsm report: {exc.strerror}") from None
        return path

    def _remove_entry(self, path: Path) -> None:
        """Release a report request (the kernel removes its attributes with it)."""
        try:
            path.rmdir()
        except OSError:
            # A leftover request holds no secret (the report data is a hash of public
            # values); failing to remove it must not hide the real outcome.
            pass


def _read(path: Path, limit: int) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data


def _read_optional(path: Path, limit: int) -> bytes:
    """An attribute some kernels or providers lack: empty if it does not exist."""
    try:
        return _read(path, limit)
    except FileNotFoundError:
        return b""


class TsmPlatform:
    """Evidence whose signature chain is a CPU-signed configfs-tsm report.

    `clock` gives the evidence's timestamp (seconds since the epoch); tests replaying
    recorded hardware reports set it to the time those reports are verified at.
    """

    def __init__(
        self, interface: ConfigfsTsm | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._interface = interface or ConfigfsTsm()
        self._clock = clock

    def evidence(
        self, *, measurement: str, identity: PublicIdentity, nonce: bytes, role: str, binding: str
    ) -> bytes:
        check_nonce(nonce)
        timestamp = int(self._clock())
        report_data = report_data_for(
            nonce=nonce,
            enclave_identity=identity.to_bytes(),
            measurement=measurement,
            timestamp=timestamp,
            role=role,
            binding=binding,
        )
        report = self._interface.report(report_data)
        hardware = parse_hardware_report(report.provider, report.outblob)
        # The evidence carries the report data the hardware signed, whatever it is: a
        # report that does not carry ours (a host replaying a recorded one) is refused
        # by the verifier's `report data` check, which names it for what it is.
        return Evidence(
            platform=hardware.platform,
            measurement=measurement,
            debug=hardware.debug,
            tcb_level=hardware.tcb_level,
            timestamp=timestamp,
            report_data=hardware.report_data,
            enclave_identity=identity.to_bytes(),
            signature_chain=TsmSignatureChain(
                report.provider, report.generation, report.outblob, report.auxblob
            ),
            role=role,
            binding=binding,
        ).to_bytes()
