"""Shrinkage ZCA: identity covariance when data suffice, bounded gains when they don't."""

import numpy as np
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
