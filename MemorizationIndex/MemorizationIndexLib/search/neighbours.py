"""Stage 1: nearest training slices by encoder features (per-layer exact search, then one
consistent match per query), and the exact faiss indexes it runs on.

SliceIndex (index.py) calls it the same way for calibration (held-out training volumes
against the rest) and for scoring (synthetic slices against the whole bank).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

# Cosines are clipped here before the geometric mean, as in the paper.
COSINE_FLOOR = 1e-6

# faiss's flat search uses BLAS only for query batches above this size (default 20): below
# it, one volume's slices against a large bank run an order of magnitude slower.
BLAS_THRESHOLD = 16


@contextmanager
def small_batch_blas() -> Iterator[None]:
    """faiss's BLAS threshold set to BLAS_THRESHOLD inside the block only.

    The setting is process-wide in faiss; inside Slicer other modules use faiss too, so it
    is changed for the engine's own searches and then put back.
    """
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def exact_index(vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over unit vectors (inner product = cosine)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def index_vectors(index: faiss.IndexFlat) -> np.ndarray:
    """The vectors an exact index holds, as a numpy view of faiss's own storage (no copy)."""
    n, d = index.ntotal, index.d
    return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)


@dataclass
class Matches:
    """Best training slice for each query and the evidence around it (all arrays [n, ...])."""

    similarity: np.ndarray  # geometric mean over layers of the best candidate's cosines
    best_row: np.ndarray  # bank row of the best candidate
    layer_cosine: np.ndarray  # [n, L] cosines of the best candidate per layer
    layer_top1: np.ndarray  # [n, L] per-layer top-1 cosine (any training slice)
    margin: np.ndarray  # similarity - best similarity from another training volume
    agreement: np.ndarray  # share of layers whose own top-1 is the chosen match
    topk: np.ndarray  # [n, k] bank rows of the best candidates, best first
    topk_similarity: np.ndarray  # [n, k]


def geometric_mean(cosines: np.ndarray) -> np.ndarray:
    return np.exp(np.log(np.clip(cosines, COSINE_FLOOR, 1.0)).mean(axis=-1))


def nearest_by_features(
    queries: list[np.ndarray],
    bank: list[np.ndarray],
    indexes: list[faiss.Index],
    bank_volume_ids: np.ndarray,
    k: int = 10,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> Matches:
    """Candidates = union of each layer's top-k; each is scored on every layer; best wins.

    A copy matches one training slice in every layer; a novel slice's per-layer nearest
    neighbours scatter, so scoring one candidate across all layers separates them better
    than the paper's independent per-layer top-1. groups: (query groups [n], row groups
    [N]); a query then never finds a row of its own group (search_excluding).
    """
    n = len(queries[0])
    n_layers = len(queries)
    k = max(1, min(k, len(bank[0])))
    per_layer_ids = []
    top1 = np.zeros((n, n_layers), np.float32)
    for layer, (q, index) in enumerate(zip(queries, indexes, strict=True)):
        if groups is None:
            sims, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        else:
            sims, ids = search_excluding(index, q, k, *groups)
        per_layer_ids.append(ids)
        top1[:, layer] = sims[:, 0]
    candidates = np.concatenate(per_layer_ids, axis=1)  # [n, L*k]
    cos = np.stack(
        [np.einsum("nd,ncd->nc", q, b[candidates]) for q, b in zip(queries, bank, strict=True)],
        axis=-1,
    )  # [n, L*k, L]
    scores = geometric_mean(cos)
    # Duplicate candidates (found by several layers) score the same; keep the first.
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    ranked_scores = np.take_along_axis(scores, order, axis=1)
    best = ranked[:, 0]
    best_pos = order[:, 0]
    layer_cos = cos[np.arange(n), best_pos]

    topk, topk_sim, margin = _distinct_topk(ranked, ranked_scores, bank_volume_ids, k)
    agreement = np.stack([ids[:, 0] == best for ids in per_layer_ids], axis=1).mean(axis=1)
    return Matches(
        similarity=ranked_scores[:, 0].astype(np.float64),
        best_row=best,
        layer_cosine=layer_cos.astype(np.float32),
        layer_top1=top1,
        margin=margin,
        agreement=agreement.astype(np.float32),
        topk=topk,
        topk_similarity=topk_sim,
    )


def _distinct_topk(ranked: np.ndarray, ranked_scores: np.ndarray, bank_volume_ids, k: int):
    """Per query, the k best distinct candidates (padded with the last) and their scores,
    and the margin of the best over the best candidate from another training volume."""
    n = len(ranked)
    topk = np.zeros((n, k), np.int64)
    topk_sim = np.zeros((n, k), np.float32)
    margin = np.zeros(n, np.float32)
    for i in range(n):
        _, first = np.unique(ranked[i], return_index=True)
        first.sort()
        rows = ranked[i][first][:k]
        topk[i, : len(rows)] = rows
        topk_sim[i, : len(rows)] = ranked_scores[i][first][:k]
        if len(rows) < k:
            topk[i, len(rows) :] = rows[-1]
            topk_sim[i, len(rows) :] = topk_sim[i, len(rows) - 1]
        other = bank_volume_ids[ranked[i]] != bank_volume_ids[ranked[i, 0]]
        runner_up = ranked_scores[i][other][0] if other.any() else 0.0
        margin[i] = ranked_scores[i, 0] - runner_up
    return topk, topk_sim, margin


def best_over_views(views: list[tuple[np.ndarray, Matches]], n: int) -> tuple[Matches, np.ndarray]:
    """Per query, the view (flip) with the highest similarity; returns merged matches + view id.

    `views` holds (rows, matches) for each view; the identity view must cover every row.
    """
    base_rows, base = views[0]
    assert len(base_rows) == n
    chosen = np.zeros(n, np.int64)
    merged = Matches(**{name: np.array(value) for name, value in vars(base).items()})
    for view_id, (rows, m) in enumerate(views[1:], start=1):
        better = m.similarity > merged.similarity[rows]
        target = rows[better]
        chosen[target] = view_id
        for name, value in vars(m).items():
            getattr(merged, name)[target] = value[better]
    return merged, chosen


def concat_matches(parts: list[Matches]) -> Matches:
    return Matches(
        **{name: np.concatenate([getattr(p, name) for p in parts]) for name in vars(parts[0])}
    )


def best_distinct(similarities: list[np.ndarray], rows: list[np.ndarray], k: int) -> np.ndarray:
    """Per query (one 1-D array of each), the k distinct rows of highest similarity, best
    first (ties in the order given); padded with the last one when fewer are distinct."""
    out = np.zeros((len(rows), k), np.int64)
    for i, (sims, found) in enumerate(zip(similarities, rows, strict=True)):
        order = np.argsort(-np.asarray(sims), kind="stable")
        distinct = list(dict.fromkeys(np.asarray(found)[order].tolist()))[:k]
        out[i, : len(distinct)] = distinct
        out[i, len(distinct) :] = distinct[-1]
    return out


def search_excluding(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    query_groups: np.ndarray,
    row_groups: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """index.search where no query finds a row of its own group (a synthetic slice never
    finds slices of its own volume, its near-duplicates by anatomy). One faiss call per
    group, with a selector; rows short of k are padded with the group's best (or -1)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    sims = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for group in np.unique(query_groups):
        at = np.flatnonzero(query_groups == group)
        own = np.flatnonzero(row_groups == group).astype(np.int64)
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(own))
        found_sims, found = index.search(
            queries[at], k, params=faiss.SearchParameters(sel=selector)
        )
        missing = found < 0
        found_sims[missing] = -np.inf
        found = np.where(missing, found[:, :1], found)
        sims[at], ids[at] = found_sims, found
    return sims, ids
