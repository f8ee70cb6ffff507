"""Peak memory of a process tree, polled while it runs (shared by benchmarks).

Two sums over the tree: resident set size (RSS), which counts a shared page once per
process that maps it (the same torch libraries in the client, the enclave and its
sandboxed child count three times), and proportional set size (PSS), which splits each
shared page between the processes that map it, so the tree's sum is the memory the
machine really gives it.
"""

from __future__ import annotations

import threading
import time

import psutil


def _pss_bytes(pid: int) -> int:
    """A process's PSS from /proc/<pid>/smaps_rollup (0 if it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PeakRss:
    """Polls the resident memory (RSS and PSS) of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
                self.peak_pss = max(self.peak_pss, sum(_pss_bytes(p.pid) for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
