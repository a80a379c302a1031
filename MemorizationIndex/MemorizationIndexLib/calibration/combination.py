"""How the two stages' scores become the one statistic that MI calibrates.

The null and the scores both come from SliceIndex.search (search/index.py); this module
only combines its stage scores, each standardised by its own null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..search.index import StageResult
from .null import NullModel

MIN_P = 1e-300  # p-values below this are "beyond anything the null produced"


@dataclass
class Combination:
    """How the stage scores become the one statistic that MI calibrates.

    Stage 1 alone: the feature similarity itself. Both stages: each stage score becomes
    its tail probability under its own null (held-out training volumes), and the statistic
    is -log10 of the smaller one. Each stage's null keeps its own tail shape (the feature
    similarity of edge-of-head slices has a heavy upper tail, the aligned NCC does not), so
    a copy caught by either stage stands out; the final null then recalibrates the minimum.
    """

    verify: bool
    null1: NullModel | None = None
    null2: NullModel | None = None

    @classmethod
    def fit(cls, s1: np.ndarray, s2: np.ndarray | None) -> Combination:
        if s2 is None:
            return cls(verify=False)
        return cls(verify=True, null1=NullModel.fit(s1), null2=NullModel.fit(s2))

    def statistic(self, result: StageResult) -> np.ndarray:
        s2 = result.alignment.ncc if result.alignment is not None else None
        return self.statistic_of(result.stage1.similarity, s2)

    def statistic_of(self, s1: np.ndarray, s2: np.ndarray | None) -> np.ndarray:
        if not self.verify:
            return np.asarray(s1, dtype=np.float64)
        p = np.minimum(self.null1.p_value(s1), self.null2.p_value(s2))
        return -np.log10(np.maximum(p, MIN_P))

    def to_arrays(self) -> dict[str, np.ndarray]:
        if not self.verify:
            return {}
        out = {f"stage1_{k}": v for k, v in self.null1.to_arrays().items()}
        out.update({f"stage2_{k}": v for k, v in self.null2.to_arrays().items()})
        return out

    @classmethod
    def from_arrays(cls, verify: bool, arrays: dict[str, np.ndarray]) -> Combination:
        if not verify:
            return cls(verify=False)
        parts = [
            NullModel.from_arrays(
                {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            )
            for prefix in ("stage1_", "stage2_")
        ]
        return cls(verify=True, null1=parts[0], null2=parts[1])

    def summary(self) -> dict:
        if not self.verify:
            return {"verify": False, "statistic": "stage-1 feature similarity"}
        return {
            "verify": True,
            "statistic": "-log10 min(p_stage1, p_stage2)",
            "stage1": self.null1.summary(),
            "stage2": self.null2.summary(),
        }
