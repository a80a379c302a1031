"""SliceIndex: the searchable bank. Fitted on bank slices, searched with query slices.

Stage 1 matches whitened encoder features over the query's views (flips; neighbours.py).
Stage 2 (verification.py) aligns the best stage-1 candidates, and the nearest slices under
two pixel descriptors (fourier.py), onto the query in image space. The cross-fitted null
fits a SliceIndex on the kept training volumes and searches the held-out ones; scoring
searches the bank's SliceIndex with synthetic slices: one piece of code for both.

In the style of faiss and scikit-learn: parameters go to the constructor and are checked
there (the message names the parameter), `fit` learns the state (names ending in `_`) and
returns the index, `search` answers queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from ..encoding.features import FeatureSet
from ..errors import SettingsError
from ..job import Step
from .compressed import is_compressed, layer_indexes
from .fourier import PixelIndex
from .neighbours import (
    Matches,
    best_distinct,
    best_over_views,
    concat_matches,
    exact_index,
    index_vectors,
    nearest_by_features,
    small_batch_blas,
)
from .vector_store import INDEX_KINDS
from .verification import Alignments, Verifier
from .whitening import Whitener


@dataclass
class QuerySlices:
    """Slices to search for, as the index takes them.

    views: one (rows, features) pair per query view (flip): rows [m] index the queries,
    features is one raw (unwhitened) float32 [m, D] array per encoder layer. The first view
    is the identity and covers every row. thumbnails: [n, S, S] uint8, the pixels stage 2
    compares.
    """

    views: list[tuple[np.ndarray, list[np.ndarray]]]
    thumbnails: np.ndarray

    def __len__(self) -> int:
        return len(self.views[0][0])

    @classmethod
    def of(
        cls, features: FeatureSet, flips: tuple[str, ...], rows: np.ndarray | None = None
    ) -> QuerySlices:
        """The slices of a FeatureSet (all of them, or the given rows) under each flip.

        With rows, every flip's view must hold those rows (the calibration null uses the
        slices that were also encoded flipped).
        """
        if rows is None:
            return cls([features.view(flip) for flip in flips], features.thumbnails)
        views = []
        for flip in flips:
            view_rows, feats = features.view(flip)
            at = np.searchsorted(view_rows, rows) if flip != "none" else rows
            views.append((np.arange(len(rows)), [f[at] for f in feats]))
        return cls(views, features.thumbnails[rows])


@dataclass
class StageResult:
    """What SliceIndex.search finds for n queries (arrays [n, ...])."""

    stage1: Matches  # best view's feature matches
    view: np.ndarray  # index of the view (flip) that matched best in stage 1
    alignment: Alignments | None  # stage 2, when verification is on
    volume_ncc: np.ndarray | None = None  # stage 3 (volume_stage.py), set by its caller
    checked: Alignments | None = None  # stage 2's check alignment of every query, if kept

    @property
    def stage_score(self) -> np.ndarray:
        """[n] the score of the match shown: stage 2's NCC when there is one, else stage 1's."""
        return self.alignment.ncc if self.alignment is not None else self.stage1.similarity

    @property
    def match_rows(self) -> np.ndarray:
        """[n] bank row shown as each query's match: the verified candidate when there is one."""
        return self.alignment.candidate if self.alignment is not None else self.stage1.best_row

    def flips(self, views: tuple[str, ...]) -> np.ndarray:
        """[n] the in-plane flip of each query's match shown ("none", "hflip", ...): stage
        2's when there is one, else the stage-1 view's (`views`: BankSettings.flips)."""
        if self.alignment is not None:
            return np.asarray(self.alignment.flip, dtype=object)
        return np.asarray([views[int(v)] for v in self.view], dtype=object)


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


def stacked_stage1(stage1, views: list[tuple[np.ndarray, list[np.ndarray]]]):
    """[(rows, Matches)] of every view from one stage-1 call on all views' queries."""
    offsets = np.cumsum([0] + [len(rows) for rows, _ in views])
    stacked = [np.concatenate(layer) for layer in zip(*(f for _, f in views), strict=True)]
    matches = stage1(stacked)
    return [
        (rows, Matches(**{k: v[a:b] for k, v in vars(matches).items()}))
        for (rows, _), a, b in zip(views, offsets[:-1], offsets[1:], strict=True)
    ]


class SliceIndex:
    """Bank slices made searchable: per-layer whiteners and exact indexes, pixel
    descriptors, and the verifier.

    top_k: stage-1 candidates per layer. verify_k: stage-1 candidates aligned in stage 2
    (0 turns stage 2 off). pixel_k: extra stage-2 candidates per pixel descriptor.
    chunk: queries per stage-1 batch. index: stage-1 index kind, exact, compressed or auto
    (vector_store.choose_index_kind); index_options: CompressedVectorIndex parameters.
    """

    def __init__(
        self,
        top_k: int = 10,
        verify_k: int = 0,
        pixel_k: int = 0,
        verifier: Verifier | None = None,
        chunk: int = 1024,
        index: str = "exact",
        index_options: dict | None = None,
    ):
        for name, value, low in (
            ("top_k", top_k, 1),
            ("verify_k", verify_k, 0),
            ("pixel_k", pixel_k, 0),
            ("chunk", chunk, 1),
        ):
            if int(value) < low:
                raise SettingsError(f"SliceIndex {name} must be at least {low} (got {value}).")
        self.top_k = int(top_k)
        self.verify_k = int(verify_k)
        self.pixel_k = int(pixel_k)
        self.verifier = verifier or Verifier()
        self.chunk = int(chunk)
        if index not in INDEX_KINDS:
            raise SettingsError(f"SliceIndex index must be one of {INDEX_KINDS} (got {index!r}).")
        self.index = index
        self.index_options = dict(index_options or {})
        self._pixel_index = None

    def unfitted(self) -> SliceIndex:
        """A new index with these parameters (and verifier), exact, fitted on nothing yet."""
        return SliceIndex(
            self.top_k, self.verify_k, self.pixel_k, self.verifier, self.chunk, "exact"
        )

    def fit(
        self, features: list[np.ndarray], volume_ids: np.ndarray, thumbnails: np.ndarray
    ) -> SliceIndex:
        """Learn per-layer whitening on the bank slices' raw features ([N, D] per layer)
        and add them; volume_ids [N] (margins need them), thumbnails [N, S, S] uint8."""
        whiteners = [Whitener.fit(f) for f in features]
        vectors = [w.transform(f) for w, f in zip(whiteners, features, strict=True)]
        vectors = layer_indexes(vectors, self.index, self.index_options) or vectors
        return self.set_fitted(whiteners, vectors, volume_ids, thumbnails)

    def set_fitted(
        self,
        whiteners: list[Whitener],
        vectors: list[np.ndarray | faiss.IndexFlat],
        volume_ids: np.ndarray,
        thumbnails: np.ndarray,
    ) -> SliceIndex:
        """Take state fitted before (a saved bank): whiteners and whitened unit vectors
        [N, D] per layer, or exact faiss indexes already holding them, or compressed
        layers (compressed.LayerSearch, whose vectors stay on disk)."""
        self.whiteners_ = list(whiteners)
        # faiss keeps its own copy of the vectors; use it as ours so they sit in memory once.
        self.indexes_ = [
            v if isinstance(v, faiss.Index) or is_compressed(v) else exact_index(v) for v in vectors
        ]
        self.vectors_ = [
            index.vectors() if is_compressed(index) else index_vectors(index)
            for index in self.indexes_
        ]
        self.volume_ids_ = np.asarray(volume_ids)
        self.thumbnails_ = thumbnails
        self._pixel_index = None
        return self

    def __len__(self) -> int:
        return len(self.volume_ids_)

    @property
    def kind_(self) -> str:
        """The stage-1 index kind in use: "exact" or "compressed"."""
        return "compressed" if is_compressed(self.indexes_[0]) else "exact"

    @property
    def pixel_index_(self) -> PixelIndex:
        """The thumbnails' Fourier-descriptor index, built on first use."""
        if self._pixel_index is None:
            self._pixel_index = PixelIndex(self.thumbnails_)
        return self._pixel_index

    def whiten(self, features: list[np.ndarray]) -> list[np.ndarray]:
        return [w.transform(f) for w, f in zip(self.whiteners_, features, strict=True)]

    def _stage1(self, features: list[np.ndarray], query_groups: np.ndarray | None = None):
        whitened = self.whiten(features)
        parts = [
            nearest_by_features(
                [f[s : s + self.chunk] for f in whitened],
                self.vectors_,
                self.indexes_,
                self.volume_ids_,
                self.top_k,
                None
                if query_groups is None
                else (query_groups[s : s + self.chunk], self.volume_ids_),
            )
            for s in range(0, len(whitened[0]), self.chunk)
        ]
        return concat_matches(parts)

    def search(
        self,
        queries: QuerySlices,
        progress: Step | None = None,
        settle_below: float | None = None,
        keep_checked: bool = False,
        query_volumes: np.ndarray | None = None,
    ) -> StageResult:
        """Both stages for every query. progress.update(done, n) follows stage 2 query by
        query (and may raise CancelledError there). settle_below and keep_checked: see
        Verifier.align (the bank's gate; calibration keeps the check alignments).
        query_volumes [n]: each query's own volume id in this index; a query then never
        finds a slice of its own volume (internal duplicates of a synthetic set)."""
        n = len(queries)
        own = query_volumes
        with small_batch_blas():
            views = [(rows, feats) for rows, feats in queries.views if len(rows) > 0]
            if own is not None and self.kind_ == "compressed":
                raise SettingsError("Searches that leave out a volume need an exact index.")
            if self.kind_ == "compressed":  # views stacked: one search per layer
                views = stacked_stage1(self._stage1, views)
            else:
                views = [
                    (rows, self._stage1(feats, None if own is None else own[rows]))
                    for rows, feats in views
                ]
            stage1, view = best_over_views(views, n)
            alignment = checked = None
            if self.verify_k > 0:
                candidates = pooled_candidates(views, n, self.verify_k)
                if self.pixel_k > 0:
                    groups = None if own is None else (own, self.volume_ids_)
                    near = self.pixel_index_.search(queries.thumbnails, self.pixel_k, groups)
                    candidates = merge_candidates(candidates, near)
                alignment = self.verifier.align(
                    queries.thumbnails,
                    self.thumbnails_,
                    candidates,
                    progress,
                    settle_below=settle_below,
                    keep_checked=keep_checked,
                )
                if keep_checked:
                    alignment, checked = alignment
        return StageResult(stage1, view, alignment, checked=checked)
