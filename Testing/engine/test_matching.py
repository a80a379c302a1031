"""Candidate matching: exact copies found on every layer, evidence fields consistent."""

import faiss
import numpy as np
import pytest
from MemorizationIndexLib.search.neighbours import (
    Matches,
    _distinct_topk,
    best_distinct,
    best_over_views,
    concat_matches,
    exact_index,
    geometric_mean,
    index_vectors,
    nearest_by_features,
    small_batch_blas,
)
from MemorizationIndexLib.search.whitening import l2_normalise


def unit(n, d, seed):
    return l2_normalise(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def make_bank(n=60, d=24, layers=3):
    vectors = [unit(n, d, seed) for seed in range(layers)]
    return vectors, [exact_index(v) for v in vectors], np.repeat(np.arange(6), n // 6)


def test_copies_match_their_source_on_every_layer():
    vectors, indexes, vids = make_bank()
    rows = np.array([3, 17, 42])
    m = nearest_by_features([v[rows] for v in vectors], vectors, indexes, vids, k=5)
    assert np.array_equal(m.best_row, rows)
    assert np.allclose(m.similarity, 1.0, atol=1e-5)
    assert np.allclose(m.agreement, 1.0)
    assert np.all(m.margin > 0.3)  # the best other volume is far below an exact copy
    assert np.array_equal(m.topk[:, 0], rows)


def test_novel_queries_score_lower_and_are_geometric_means():
    vectors, indexes, vids = make_bank()
    queries = [unit(20, 24, 100 + s) for s in range(3)]
    m = nearest_by_features(queries, vectors, indexes, vids, k=5)
    assert np.all(m.similarity < 0.9)
    expected = np.exp(np.log(np.clip(m.layer_cosine, 1e-6, 1)).mean(axis=1))
    assert np.allclose(m.similarity, expected, atol=1e-6)
    # The chosen candidate can't beat each layer's own top-1.
    assert np.all(m.layer_cosine <= m.layer_top1 + 1e-6)


def test_best_over_views_takes_the_highest_view_per_query():
    vectors, indexes, vids = make_bank()
    base = nearest_by_features([unit(4, 24, 7 + s) for s in range(3)], vectors, indexes, vids)
    flipped_rows = np.array([1, 3])
    copy = nearest_by_features([v[[5, 9]] for v in vectors], vectors, indexes, vids)
    merged, chosen = best_over_views([(np.arange(4), base), (flipped_rows, copy)], 4)
    assert np.array_equal(chosen, [0, 1, 0, 1])
    assert np.array_equal(merged.best_row[[1, 3]], [5, 9])
    assert merged.similarity[0] == base.similarity[0]


# ---- hand-derived cases: unit vectors given by angles, so every cosine is cos(difference) ----


def at(*angles):
    """Rows of 2-D unit vectors at these angles (radians)."""
    a = np.asarray(angles, dtype=np.float64)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


# Four training slices (volumes 0, 0, 1, 1) seen by two layers. Against a query at angle 0 on
# both layers: layer 1's nearest is row 0, layer 2's is row 3, and the best on both is row 1.
LAYER1 = at(0.1, 0.5, 0.6, 1.2)
LAYER2 = at(1.0, 0.3, 0.2, 0.1)
VOLUMES = np.array([0, 0, 1, 1])
BOTH = np.sqrt(np.cos([0.1, 0.5, 0.6, 1.2]) * np.cos([1.0, 0.3, 0.2, 0.1]))  # 0.733 .. 0.600


def search(queries, k=None, volumes=VOLUMES):
    bank = [LAYER1, LAYER2]
    indexes = [exact_index(v) for v in bank]
    if k is None:
        return nearest_by_features(queries, bank, indexes, volumes)
    return nearest_by_features(queries, bank, indexes, volumes, k=k)


def test_the_best_candidate_on_all_layers_wins_over_each_layers_top1():
    m = search([at(0.0), at(0.0)])  # default k (10, at most the bank's 4)
    assert m.best_row.tolist() == [1]
    assert m.similarity == pytest.approx([BOTH[1]], abs=1e-6)
    assert m.similarity.dtype == np.float64
    assert m.layer_cosine == pytest.approx(np.array([[np.cos(0.5), np.cos(0.3)]]), abs=1e-6)
    assert m.layer_top1 == pytest.approx(np.array([[np.cos(0.1), np.cos(0.1)]]), abs=1e-6)
    assert m.agreement.tolist() == [0.0]  # neither layer's own nearest is row 1
    # the best other volume is row 2 (volume 1)
    assert m.margin == pytest.approx([BOTH[1] - BOTH[2]], abs=1e-6)
    assert m.topk.tolist() == [[1, 2, 0, 3]]
    assert m.topk_similarity == pytest.approx(np.array([BOTH[[1, 2, 0, 3]]]), abs=1e-6)


def test_candidates_come_from_each_layers_top_k_only():
    m = search([at(0.0), at(0.0)], k=1)  # candidates: row 0 (layer 1) and row 3 (layer 2)
    assert m.best_row.tolist() == [0]
    assert m.similarity == pytest.approx([BOTH[0]], abs=1e-6)
    assert m.topk.tolist() == [[0]] and m.agreement.tolist() == [0.5]
    assert m.margin == pytest.approx([BOTH[0] - BOTH[3]], abs=1e-6)
    two = search([at(0.0), at(0.0)], k=2)  # rows 0, 1 and 3, 2
    assert two.topk.tolist() == [[1, 2]]
    assert two.topk_similarity == pytest.approx(np.array([BOTH[[1, 2]]]), abs=1e-6)
    assert search([at(0.0), at(0.0)], k=0).best_row.tolist() == [0]  # k is at least 1


def test_each_query_gets_its_own_match():
    # query 2 lies on row 3 in both layers: an exact copy, found by both layers
    m = search([at(0.0, 1.2), at(0.0, 0.1)], k=2)
    assert m.best_row.tolist() == [1, 3]
    assert m.similarity == pytest.approx([BOTH[1], 1.0], abs=1e-6)
    assert m.agreement.tolist() == [0.0, 1.0]
    assert m.layer_cosine[1] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert m.topk[1].tolist() == [3, 2]  # row 2 is layer 1's and layer 2's second


def test_one_layer_is_its_own_cosine():
    m = nearest_by_features([at(0.0)], [LAYER1], [exact_index(LAYER1)], VOLUMES)
    assert m.best_row.tolist() == [0] and m.agreement.tolist() == [1.0]
    assert m.similarity == pytest.approx([np.cos(0.1)], abs=1e-6)
    assert m.topk.tolist() == [[0, 1, 2, 3]]  # by angle: 0.1, 0.5, 0.6, 1.2
    assert m.margin == pytest.approx([np.cos(0.1) - np.cos(0.6)], abs=1e-6)


def test_margin_without_another_volume_is_the_similarity_itself():
    m = search([at(0.0), at(0.0)], volumes=np.zeros(4, int))
    assert m.margin == pytest.approx(m.similarity, abs=1e-6)


def test_geometric_mean_clips_cosines_to_the_floor_and_one():
    assert geometric_mean(np.array([[1.0, 0.25]])) == pytest.approx([0.5])
    assert geometric_mean(np.array([[-0.5, 1.0], [0.0, 1.0]])) == pytest.approx([1e-3, 1e-3])
    assert geometric_mean(np.array([[4.0, 1.0]])) == pytest.approx([1.0])
    assert geometric_mean(np.array([[0.5, 0.5, 0.125]])) == pytest.approx([np.cbrt(1 / 32)])


def test_exact_index_stores_the_vectors_and_searches_by_inner_product():
    vectors = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    index = exact_index(vectors)
    assert index_vectors(index).tolist() == vectors.astype(np.float32).tolist()
    sims, ids = index.search(np.array([[0.8, 0.6]], np.float32), 3)
    assert ids.tolist() == [[1, 0, 2]]
    assert sims == pytest.approx(np.array([[0.96, 0.8, 0.6]]), abs=1e-6)


def test_blas_threshold_is_set_inside_the_block_only():
    before = faiss.cvar.distance_compute_blas_threshold
    with small_batch_blas():
        assert faiss.cvar.distance_compute_blas_threshold == 16
    assert faiss.cvar.distance_compute_blas_threshold == before
    with pytest.raises(KeyError), small_batch_blas():
        raise KeyError("inside")
    assert faiss.cvar.distance_compute_blas_threshold == before


def test_distinct_topk_pads_with_the_last_distinct_row():
    ranked = np.array([[4, 4, 2, 4, 7], [5, 1, 1, 6, 6]])
    scores = np.array([[0.9, 0.9, 0.7, 0.9, 0.5], [0.8, 0.6, 0.6, 0.1, 0.1]])
    volumes = np.array([0, 0, 1, 0, 0, 1, 2, 3])
    topk, sims, margin = _distinct_topk(ranked, scores, volumes, 4)
    assert topk.tolist() == [[4, 2, 7, 7], [5, 1, 6, 6]]
    assert sims == pytest.approx(np.array([[0.9, 0.7, 0.5, 0.5], [0.8, 0.6, 0.1, 0.1]]))
    # margin: row 4 (volume 0) over row 2 (volume 1); row 5 (volume 1) over row 1 (volume 0)
    assert margin == pytest.approx([0.2, 0.2])
    topk, _, _ = _distinct_topk(ranked, scores, volumes, 2)
    assert topk.tolist() == [[4, 2], [5, 1]]


def test_ten_candidates_by_default_and_layers_must_agree():
    vectors, indexes, vids = make_bank()  # 60 training slices
    m = nearest_by_features([v[:2] for v in vectors], vectors, indexes, vids)
    assert m.topk.shape == (2, 10) and m.topk_similarity.shape == (2, 10)
    with pytest.raises(ValueError):  # an index more than there are query layers
        nearest_by_features([v[:2] for v in vectors[:2]], vectors[:2], indexes, vids)
    with pytest.raises(ValueError):  # a bank layer more than there are query layers
        nearest_by_features([v[:2] for v in vectors[:2]], vectors, indexes[:2], vids)


def test_best_over_views_keeps_the_first_view_on_ties_and_numbers_views():
    def matches(similarity, best_row):
        n = len(similarity)
        return Matches(
            similarity=np.array(similarity),
            best_row=np.array(best_row),
            layer_cosine=np.zeros((n, 2)),
            layer_top1=np.zeros((n, 2)),
            margin=np.zeros(n),
            agreement=np.zeros(n),
            topk=np.array(best_row)[:, None],
            topk_similarity=np.array(similarity)[:, None],
        )

    base = matches([0.5, 0.6, 0.7], [10, 11, 12])
    views = [
        (np.arange(3), base),
        (np.array([0, 1]), matches([0.5, 0.9], [20, 21])),  # a tie on query 0
        (np.array([1, 2]), matches([0.95, 0.1], [30, 31])),
    ]
    merged, chosen = best_over_views(views, 3)
    assert chosen.tolist() == [0, 2, 0]
    assert merged.best_row.tolist() == [10, 30, 12]
    assert merged.similarity.tolist() == [0.5, 0.95, 0.7]
    assert merged.topk.tolist() == [[10], [30], [12]]
    assert base.best_row.tolist() == [10, 11, 12]  # the first view is not changed in place
    both = concat_matches([base, matches([0.1], [40])])
    assert both.best_row.tolist() == [10, 11, 12, 40] and both.topk.shape == (4, 1)
    assert concat_matches([base]).best_row.tolist() == [10, 11, 12]
    # the first view must cover exactly the n queries
    with pytest.raises(AssertionError):
        best_over_views([(np.arange(3), base)], 4)
    with pytest.raises(AssertionError):
        best_over_views([(np.arange(3), base)], 2)


def test_best_distinct_orders_by_similarity_and_pads():
    sims = [np.array([0.1, 0.9, 0.5, 0.9]), np.array([0.3])]
    rows = [np.array([7, 3, 7, 5]), np.array([8])]
    assert best_distinct(sims, rows, 3).tolist() == [[3, 5, 7], [8, 8, 8]]
    assert best_distinct(sims, rows, 4).tolist() == [[3, 5, 7, 7], [8, 8, 8, 8]]
    assert best_distinct(sims, rows, 1).tolist() == [[3], [8]]
    with pytest.raises(ValueError):  # one similarity array per query
        best_distinct(sims[:1], rows, 2)
