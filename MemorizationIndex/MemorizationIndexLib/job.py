"""One object for the progress and cancellation of a long task (build a bank, score scans).

The CLI shows tqdm bars and Slicer its own bar; both hand the engine a `Job` made from a
progress callback (stage, done, total) and a cancel callback (True when the user asked to
stop). Long work splits itself into steps (`Job.step`) and a step into parts
(`Step.part`), so the encoder's batches and the verifier's slices report as fractions of
the volume or stage they belong to, and every report is also a place where Cancel is
honoured.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import CancelledError

# (stage, done, total): total is 0 while unknown, done may be fractional (a volume part-way
# through the encoder).
ProgressCallback = Callable[[str, float, int], None]
CancelCallback = Callable[[], bool]

# The one stage counted in slices rather than volumes (stage 2 runs per query slice).
VERIFY_STAGE = "Verifying matches (slices)"
# The same verification of the synthetic slices among themselves (internal duplicates).
INTERNAL_STAGE = "Duplicates within the set (slices)"
SLICE_STAGES = (VERIFY_STAGE, INTERNAL_STAGE)


class Job:
    """Progress reports and Cancel for one task; `Job()` reports nothing and never stops."""

    def __init__(
        self, progress: ProgressCallback | None = None, cancel: CancelCallback | None = None
    ):
        self.progress = progress
        self.cancel = cancel

    def check(self) -> None:
        """Raise CancelledError when the user asked to stop."""
        if self.cancel is not None and self.cancel():
            raise CancelledError("Stopped at the user's request; nothing was written.")

    def report(self, stage: str, done: float, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def step(self, stage: str | None, total: int, announce: bool = True) -> Step:
        """A stage of `total` units (volumes, slices), reported at 0 now when `announce`.
        A stage of None reports nothing: its updates only honour Cancel."""
        step = Step(self, stage, total)
        if stage is not None and announce:
            self.report(stage, 0, total)
        return step


class Step:
    """A stage of a job, or a part of one: the units [start, start + width) of a stage of
    `total` units. Every update first honours Cancel."""

    def __init__(
        self,
        job: Job,
        stage: str | None,
        total: int,
        start: float = 0.0,
        width: float | None = None,
    ):
        self.job = job
        self.stage = stage
        self.total = total
        self.start = start
        self.width = total if width is None else width

    def update(self, done: float, of: int | None = None) -> None:
        """`done` units of this part are finished; with `of`, `done` of `of` sub-units
        (encoder batches, verified slices) span this part's width."""
        self.job.check()
        if self.stage is None:
            return
        within = done if of is None else self.width * done / max(of, 1)
        self.job.report(self.stage, self.start + within, self.total)

    def part(self, start: float, width: float) -> Step:
        """Units [start, start + width) of this part, as a step of their own."""
        return Step(self.job, self.stage, self.total, self.start + start, width)
