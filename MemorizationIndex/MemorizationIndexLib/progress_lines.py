"""Progress for a log file or CI: whole lines, a bounded number of them per stage.

A progress bar redraws itself with carriage returns; written to a file that is one line
holding hundreds of updates (a `make demo` log carried several hundred of the verifier's).
When stderr is not a terminal the CLI writes this instead: one line when a stage starts,
one each time it passes another tenth of its work, and one when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

STEPS = 10  # lines per stage between its start and end: one per tenth of the work


def _count(done: float) -> str:
    """Whole counts as such; a stage that counts parts of volumes with one decimal
    ("3.7/9 vol", not "3.66667/9 vol")."""
    return f"{done:.0f}" if float(done).is_integer() else f"{done:.1f}"


class LineProgress:
    """A ProgressCallback (job.py) that writes plain lines to a stream."""

    def __init__(self, stream: TextIO | None = None, unit_of=lambda stage: "vol"):
        self.stream = stream if stream is not None else sys.stderr
        self.unit_of = unit_of
        self.stage: str | None = None
        self.total = 0
        self.done = 0.0
        self.tenth = -1
        self.started = 0.0

    def _write(self, done: float, total: int) -> None:
        seconds = time.monotonic() - self.started
        amount = f"{_count(done)}/{total}" if total else _count(done)
        share = f" ({100 * done / total:.0f} %)" if total else ""
        self.stream.write(
            f"{self.stage}: {amount} {self.unit_of(self.stage)}{share}, {seconds:.0f} s\n"
        )
        self.stream.flush()

    def __call__(self, stage: str, done: float, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.started, self.tenth = stage, time.monotonic(), -1
        self.total, self.done = total, done
        tenth = int(STEPS * done / total) if total else 0
        if tenth > self.tenth:  # a new tenth (or the start): one line
            self.tenth = tenth
            self._write(done, total)

    def close(self) -> None:
        """End the stage: its last line, unless the last one already said it all."""
        if self.stage is not None and self.tenth < STEPS:
            self._write(self.done, self.total)
        self.stage = None
