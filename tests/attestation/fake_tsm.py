"""A fake configfs-tsm tree in a temporary directory, with a fake kernel behind it.

Real configfs fills a new report directory with its attributes and produces `outblob`
when it is read. Here the fake kernel does the same with ordinary files: on `mkdir` it
creates `provider`, `generation` and a FIFO `outblob`; a thread waits for the reader,
reads `inblob`, bumps `generation` and writes a TDX quote or SEV-SNP report carrying
`inblob` as its report data. Everything else is the provider's real file I/O.

Given `recorded=` bytes, the fake kernel answers every request with that report instead
(a real, vendor-signed one from the test vectors, whatever `inblob` says: a host
replaying a recorded report), and given `auxblob=`, it writes that beside it, as the
SEV-SNP guest driver does with the host's certificate table.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from pathlib import Path

from chiron.enclave.platforms.tsm import ConfigfsTsm


def tdx_quote(report_data: bytes, *, debug: bool = False, tcb: int = 3) -> bytes:
    header = struct.pack("<HHI", 4, 2, 0x81) + bytes(40)
    body = bytearray(584)
    body[0] = tcb
    body[1] = 1
    body[120:128] = (1 if debug else 0).to_bytes(8, "little")
    body[136:184] = bytes(range(48))  # MRTD
    body[520:584] = report_data
    return header + bytes(body) + struct.pack("<I", 8) + bytes(8)  # + signature data


def snp_report(report_data: bytes, *, debug: bool = False, tcb: int = 22) -> bytes:
    report = bytearray(0x4A0)
    report[0:4] = (2).to_bytes(4, "little")
    report[0x08:0x10] = ((1 << 17) | ((1 << 19) if debug else 0)).to_bytes(8, "little")
    report[0x50:0x90] = report_data
    report[0x90:0xC0] = bytes(range(100, 148))
    report[0x180:0x188] = bytes([3, 0, 0, 0, 0, 0, tcb, 209])
    return bytes(report)


class FakeConfigfsTsm(ConfigfsTsm):
    """configfs-tsm under `root`, answered by a fake kernel for `provider`."""

    def __init__(
        self,
        root: Path,
        provider: str = "tdx_guest",
        *,
        recorded: bytes | None = None,
        auxblob: bytes | None = None,
        **report_options,
    ) -> None:
        (root / "report").mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.provider = provider
        self.recorded = recorded
        self.auxblob = auxblob
        self.report_options = report_options
        self.extra_writes = 0  # set to simulate another process writing inblob
        self._kernel: threading.Thread | None = None

    def _create_entry(self, path: Path) -> Path:
        entry = super()._create_entry(path)
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        os.mkfifo(entry / "outblob")
        self._kernel = threading.Thread(target=self._answer, args=(entry,), daemon=True)
        self._kernel.start()
        return entry

    def _answer(self, entry: Path) -> None:
        with open(entry / "outblob", "wb") as outblob:  # blocks until the reader opens it
            inblob = (entry / "inblob").read_bytes() if (entry / "inblob").exists() else b""
            (entry / "generation").write_text(f"{1 + self.extra_writes}\n")
            if self.auxblob is not None:
                (entry / "auxblob").write_bytes(self.auxblob)
            if self.recorded is not None:
                outblob.write(self.recorded)
                return
            make = tdx_quote if self.provider == "tdx_guest" else snp_report
            outblob.write(make(inblob.ljust(64, b"\0"), **self.report_options))

    def _remove_entry(self, path: Path) -> None:
        if self._kernel is not None and self._kernel.is_alive():
            # Nobody read outblob: open it once so the fake kernel's writer returns.
            fd = os.open(path / "outblob", os.O_RDONLY | os.O_NONBLOCK)
            self._kernel.join()
            os.close(fd)
        shutil.rmtree(path)
