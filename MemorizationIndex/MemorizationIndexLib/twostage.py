"""Candidates, then verification, then one statistic: shared by calibration and scoring.

Stage 1 matches encoder features over the query-time views (matching.py). Stage 2
(verification.py) aligns the best stage-1 candidates onto the query in image space. The
statistic that MI calibrates is, with verification on, the larger of the two stage scores
each standardised by its own null: a copy is caught by whichever stage sees it, and the
null is built through this very function, so MI keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import NullModel
from .fourier import PixelIndex
from .matching import Matches, best_distinct, best_over_views, concat_matches, match_queries
from .verification import Alignments, Verifier

MIN_P = 1e-300  # p-values below this are "beyond anything the null produced"


@dataclass
class StageResult:
    stage1: Matches  # best view's feature matches
    view: np.ndarray  # index of the view (flip) that matched best in stage 1
    alignment: Alignments | None  # stage 2, when verification is on

    @property
    def match(self) -> np.ndarray:
        """The bank row shown as the match: the verified candidate when there is one."""
        return self.alignment.candidate if self.alignment is not None else self.stage1.match


def pooled_candidates(views: list[tuple[np.ndarray, Matches]], n: int, m: int) -> np.ndarray:
    """Per query, the m distinct bank rows with the best stage-1 similarity over all views."""
    sims_by_query = [[] for _ in range(n)]
    rows_by_query = [[] for _ in range(n)]
    for rows, matches in views:
        for r, ids, sims in zip(rows, matches.topk, matches.topk_similarity, strict=True):
            sims_by_query[r].extend(sims.tolist())
            rows_by_query[r].extend(ids.tolist())
    return best_distinct(sims_by_query, rows_by_query, m)


def merge_candidates(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per row, the distinct rows of `first` then those of `second` not already there."""
    out = np.zeros((len(first), first.shape[1] + second.shape[1]), np.int64)
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        rows = list(dict.fromkeys([*a.tolist(), *b.tolist()]))
        out[i, : len(rows)] = rows
        out[i, len(rows) :] = rows[-1]
    return out


def run_stages(
    view_queries: list[tuple[np.ndarray, list[np.ndarray]]],
    n: int,
    bank_vectors: list[np.ndarray],
    bank_indexes,
    bank_volume_ids: np.ndarray,
    top_k: int,
    verify_k: int = 0,
    query_thumbnails: np.ndarray | None = None,
    bank_thumbnails: np.ndarray | None = None,
    verifier: Verifier | None = None,
    chunk: int = 1024,
    pixel_index: PixelIndex | None = None,
    pixel_k: int = 0,
    tick=None,
) -> StageResult:
    """Both stages for n queries. view_queries: (rows, whitened per-layer features) per view;
    the first view is the identity and covers every row. verify_k = 0 skips stage 2.

    pixel_index (fourier.PixelIndex over the bank thumbnails) adds each query's pixel_k
    nearest slices under each of its two pixel descriptors to the candidates. tick(done, n)
    follows stage 2 query by query (Verifier.align).
    """
    views = []
    for rows, feats in view_queries:
        if len(rows) == 0:
            continue
        parts = [
            match_queries(
                [f[s : s + chunk] for f in feats],
                bank_vectors,
                bank_indexes,
                bank_volume_ids,
                top_k,
            )
            for s in range(0, len(rows), chunk)
        ]
        views.append((rows, concat_matches(parts)))
    stage1, view = best_over_views(views, n)
    alignment = None
    if verify_k > 0:
        candidates = pooled_candidates(views, n, verify_k)
        if pixel_index is not None and pixel_k > 0:
            near = pixel_index.search(query_thumbnails, pixel_k)
            candidates = merge_candidates(candidates, near)
        alignment = (verifier or Verifier()).align(
            query_thumbnails, bank_thumbnails, candidates, tick=tick
        )
    return StageResult(stage1, view, alignment)


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
        s2 = result.alignment.score if result.alignment is not None else None
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
