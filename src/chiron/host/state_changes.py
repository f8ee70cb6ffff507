"""Word that a job ended in this process, for whoever waits on it here.

`LocalHost.wait_job` runs in the process whose thread runs the job: instead of reading
the job's record every few milliseconds (each read a database query, taking CPU from
the training it waits for), it sleeps until the runner says a job ended, and reads the
record then.
"""

from __future__ import annotations

import threading


class StateChanges:
    """A counter of ended jobs; waiting returns once it moved past what one saw."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    def seen(self) -> int:
        """The count now: read it before reading the records, then wait with it."""
        with self._changed:
            return self._count

    def note(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Return once a change came after `seen` was read, or after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._count != seen, timeout)
