"""The null model: calibrated p-values, a resolved upper tail, MI in [0, 1], ONI as the paper."""

import numpy as np
import pytest
from MemorizationIndexLib.calibration.null import NullModel, volume_folds
from MemorizationIndexLib.errors import SettingsError


def null_samples(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return 0.6 + 0.05 * rng.standard_normal(n)


def test_p_values_are_calibrated_on_fresh_null_draws():
    model = NullModel.fit(null_samples())
    fresh = null_samples(20000, seed=1)
    p = model.p_value(fresh)
    for alpha in (0.01, 0.05, 0.2):
        rate = np.mean(p <= alpha)
        assert abs(rate - alpha) < 0.25 * alpha + 0.002, (alpha, rate)


def test_tail_resolves_beyond_one_over_n():
    model = NullModel.fit(null_samples(500))
    s = np.array([0.75, 0.78, 0.8])
    p = model.p_value(s)
    assert np.all(p < 1.0 / 501)  # beyond the empirical resolution
    assert np.all(np.diff(p) <= 0) and p[0] > p[-1]  # still ordered
    mi = model.mi(s)
    assert np.all((mi >= 0) & (mi <= 1))


def test_mi_is_monotone_and_continuous_at_the_tail_threshold():
    model = NullModel.fit(null_samples())
    grid = np.linspace(0.3, 1.0, 2001)
    mi = model.mi(grid)
    assert np.all(np.diff(mi) >= -1e-12)
    eps = 1e-9
    below, above = model.mi([model.threshold - eps, model.threshold + eps])
    assert abs(below - above) < 2e-3


def test_oni_follows_the_paper():
    model = NullModel.fit(null_samples())
    assert model.oni(model.mean) == pytest.approx(0.0)
    assert model.oni(model.mean + 3 * model.std) == pytest.approx(-np.tanh(3.0))
    assert -1 <= model.oni(5.0) < -0.99


def test_round_trip_through_arrays():
    model = NullModel.fit(null_samples())
    again = NullModel.from_arrays(model.to_arrays())
    s = np.linspace(0.4, 0.9, 11)
    assert np.allclose(model.p_value(s), again.p_value(s))


def test_too_small_null_is_a_clear_error():
    with pytest.raises(SettingsError, match="only 5 slices"):
        NullModel.fit(np.ones(5))


def test_folds_split_volumes_and_cover_each_once():
    folds = volume_folds(11, 5, seed=3)
    assert len(folds) == 5
    joined = np.sort(np.concatenate(folds))
    assert np.array_equal(joined, np.arange(11))
    assert volume_folds(3, 5)[0].size == 1  # never more folds than volumes
    with pytest.raises(SettingsError, match="at least 2 training volumes"):
        volume_folds(1, 5)
