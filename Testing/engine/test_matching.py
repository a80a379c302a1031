"""Candidate matching: exact copies found on every layer, evidence fields consistent."""

import numpy as np
from MemorizationIndexLib.search.neighbours import best_over_views, exact_index, nearest_by_features
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
