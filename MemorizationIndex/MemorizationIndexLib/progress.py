"""Progress and cancellation hooks shared by the CLI (tqdm bars) and Slicer (its own bar).

A progress callback receives (stage, done, total); total is 0 while unknown, and done may be
fractional (a volume part-way through the encoder). A cancel
callback returns True when the user asked to stop; long loops call `check_cancel` often.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import CancelledError

ProgressCallback = Callable[[str, float, int], None]
# The one stage counted in slices rather than volumes (stage 2 runs per query slice).
VERIFY_STAGE = "Verifying matches (slices)"
CancelCallback = Callable[[], bool]


def report(progress: ProgressCallback | None, stage: str, done: float, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def check_cancel(cancel: CancelCallback | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("Stopped at the user's request; nothing was written.")
