"""How the stages' scores become the one statistic that MI calibrates.

The null and the scores both come from the same searches (search/index.py for stages 1-2,
search/volume_stage.py for stage 3); this module only combines their stage scores, each
standardised by its own null.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..search.index import StageResult
from .null import NullModel

MIN_P = 1e-300  # p-values below this are "beyond anything the null produced"
STAGE_NAMES = ("stage-1 feature similarity", "stage-2 aligned NCC", "stage-3 volume NCC")


@dataclass
class Combination:
    """How the stage scores become the one statistic that MI calibrates.

    Stage 1 alone: the feature similarity itself. More stages: each stage score becomes
    its tail probability under its own null (held-out training volumes), and the statistic
    is -log10 of the smallest. Each stage's null keeps its own tail shape (the feature
    similarity of edge-of-head slices has a heavy upper tail, the aligned NCC does not), so
    a copy caught by any stage stands out; the final null then recalibrates the minimum.
    """

    verify: bool
    nulls: list[NullModel] = field(default_factory=list)  # one per stage when verify
    # Stage 2's gate: a slice whose check value is below it is settled (verification.py).
    gate: float | None = None

    @property
    def n_stages(self) -> int:
        return len(self.nulls) if self.verify else 1

    @classmethod
    def fit(cls, *scores: np.ndarray | None, gate: float | None = None) -> Combination:
        """From the null's stage scores (stage 1 first; stage 2 already gated at `gate`);
        None marks a stage that is off."""
        present = [s for s in scores if s is not None]
        if len(present) < 2:
            return cls(verify=False)
        return cls(verify=True, nulls=[NullModel.fit(s) for s in present], gate=gate)

    def statistic(self, result: StageResult) -> np.ndarray:
        s2 = result.alignment.score if result.alignment is not None else None
        return self.statistic_of(result.stage1.similarity, s2, result.volume_ncc)

    def statistic_of(self, *scores: np.ndarray | None) -> np.ndarray:
        present = [s for s in scores if s is not None]
        if not self.verify:
            return np.asarray(present[0], dtype=np.float64)
        if len(present) != len(self.nulls):
            raise ValueError(
                f"this bank combines {len(self.nulls)} stage scores; {len(present)} were given"
            )
        p = np.minimum.reduce(
            [null.p_value(s) for null, s in zip(self.nulls, present, strict=True)]
        )
        return -np.log10(np.maximum(p, MIN_P))

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, null in enumerate(self.nulls if self.verify else [], start=1):
            out.update({f"stage{i}_{k}": v for k, v in null.to_arrays().items()})
        if self.verify:
            out["stage2_gate"] = np.array(np.nan if self.gate is None else self.gate)
        return out

    @classmethod
    def from_arrays(cls, verify: bool, arrays: dict[str, np.ndarray], n_stages: int = 2):
        if not verify:
            return cls(verify=False)
        nulls = [
            NullModel.from_arrays(
                {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            )
            for prefix in (f"stage{i}_" for i in range(1, n_stages + 1))
        ]
        gate = float(arrays["stage2_gate"])
        return cls(verify=True, nulls=nulls, gate=None if np.isnan(gate) else gate)

    def summary(self) -> dict:
        if not self.verify:
            return {"verify": False, "statistic": STAGE_NAMES[0]}
        names = ", ".join(f"p_stage{i}" for i in range(1, len(self.nulls) + 1))
        out = {"verify": True, "statistic": f"-log10 min({names})", "stage2_gate": self.gate}
        for i, null in enumerate(self.nulls, start=1):
            out[f"stage{i}"] = {"score": STAGE_NAMES[i - 1], **null.summary()}
        return out
