"""Shrinkage ZCA: identity covariance when data suffice, bounded gains when they don't."""

import numpy as np
import pytest
from MemorizationIndexLib.search.whitening import Whitener, l2_normalise, ledoit_wolf_shrinkage


def correlated(n, d, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mix = rotation * np.linspace(3.0, spread, d)  # known spectrum: 3 down to `spread`
    return (rng.standard_normal((n, d)) @ mix.T + 5.0).astype(np.float32)


def test_whitened_covariance_is_identity_with_many_samples():
    x = correlated(20000, 16, spread=0.5)
    w = Whitener.fit(x)
    assert w.shrinkage < 0.01
    z = (x - w.mean) @ w.matrix
    cov = np.cov(z, rowvar=False)
    assert np.allclose(cov, np.eye(16), atol=0.03)
    assert np.allclose(w.matrix, w.matrix.T, atol=1e-5)  # ZCA is symmetric


def test_fewer_samples_than_dimensions_stays_bounded():
    x = correlated(40, 128)
    w = Whitener.fit(x)
    assert 0.05 < w.shrinkage <= 1.0
    gains = np.linalg.eigvalsh(w.matrix.astype(np.float64))
    # Bare inverse square root would give near-infinite gain in the 88 null directions.
    assert gains.max() / gains.min() < 1e3
    z = w.transform(x)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


def test_shrinkage_of_isotropic_data_is_large():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 50))
    assert ledoit_wolf_shrinkage(x - x.mean(0)) > 0.5


def test_l2_normalise_handles_zero_rows():
    z = l2_normalise(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert np.allclose(z[1], [0.6, 0.8]) and np.all(np.isfinite(z))


# ---- against independent references (scikit-learn, numpy's covariance) ----------------


def test_shrinkage_equals_scikit_learns_ledoit_wolf():
    from sklearn.covariance import ledoit_wolf_shrinkage as reference

    cases = ((2, 6, 0, 1.0), (30, 8, 1, 1.0), (500, 10, 2, 1.0), (40, 128, 3, 1.0), (30, 8, 1, 0.1))
    for n, d, seed, scale in cases:  # scale 0.1: delta (the spread of the spectrum) below 1
        x = correlated(n, d, seed=seed).astype(np.float64) * scale
        centred = x - x.mean(0)
        want = reference(centred, assume_centered=True)
        assert ledoit_wolf_shrinkage(centred) == pytest.approx(want, rel=1e-6, abs=1e-9), (n, d)


def test_shrinkage_limits():
    one = np.array([[1.0, 2.0, 3.0]])
    assert ledoit_wolf_shrinkage(one) == 1.0  # a single sample says nothing
    # Sample covariance exactly a multiple of the identity: nothing to shrink, delta 0.
    spherical = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert ledoit_wolf_shrinkage(spherical) == 1.0
    # Strongly structured, plenty of samples: tiny but positive, below the fit's floor.
    many = correlated(20000, 4, spread=0.01).astype(np.float64)
    tiny = ledoit_wolf_shrinkage(many - many.mean(0))
    assert 0.0 < tiny < 1e-3
    assert Whitener.fit(many).shrinkage == pytest.approx(1e-3)


@pytest.mark.parametrize("n, d, scale", [(300, 12, 1.0), (20, 40, 1.0), (50, 6, 0.01), (2, 5, 1.0)])
def test_matrix_is_the_inverse_square_root_of_the_shrunk_covariance(n, d, scale):
    x = correlated(n, d, seed=4) * np.float32(scale)  # scale 0.01: mean variance below 1
    w = Whitener.fit(x)
    cov = np.cov(x.astype(np.float64), rowvar=False)  # ddof 1, by numpy
    s = w.shrinkage
    shrunk = (1 - s) * cov + s * np.trace(cov) / d * np.eye(d)
    m = w.matrix.astype(np.float64)
    assert np.allclose(m @ shrunk @ m, np.eye(d), atol=2e-3)
    assert np.allclose(w.mean, x.mean(0), atol=1e-5)
    want = (x - x.mean(0)) @ m
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(w.transform(x), want, atol=1e-5)


@pytest.mark.parametrize("n", [1, 10])
def test_constant_features_whiten_to_the_identity(n):
    """No spread (one sample, or all alike): shrink to the identity, nothing divides by 0."""
    x = np.full((n, 5), 3.0, dtype=np.float32)
    w = Whitener.fit(x)
    assert w.shrinkage == 1.0
    assert np.allclose(w.matrix, np.eye(5)) and np.all(np.isfinite(w.transform(x + 1.0)))


def test_l2_normalise_scales_short_rows_up():
    z = l2_normalise(np.array([[3e-4, 4e-4], [0.0, 2e-9]]))
    assert np.allclose(z, [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)
