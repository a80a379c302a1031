"""The null model: calibrated p-values, a resolved upper tail, MI in [0, 1], ONI as the paper."""

import numpy as np
import pytest
from MemorizationIndexLib.calibration.null import NullModel, volume_folds
from MemorizationIndexLib.errors import SettingsError
from scipy import stats


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


# ---- exact values: hand-counted nulls and scipy's own GPD fit ----


def gpd_quantiles(shape, m, scale=0.01):
    """m evenly spread quantiles of a generalised Pareto law (scipy), deterministic."""
    return stats.genpareto.ppf((np.arange(1, m + 1) - 0.5) / m, shape, scale=scale)


def with_tail(excess, n_body=90):
    """A null whose body ends at 0.5 (the tail threshold when 10 % is the tail) + 0.5 + excess."""
    return np.r_[np.linspace(0.3, 0.5, n_body), 0.5 + np.asarray(excess)]


def scipy_fit(samples, threshold):
    excess = samples[samples > threshold] - threshold
    shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    return shape, scale


def test_summary_of_a_hand_counted_null():
    # 0..100: 10 % of 101 rounds to 10 tail samples, so the threshold is the 91st value (90);
    # 11 values are >= 90, p = 12 / 102; the excess 1..10 fits a negative shape -> exponential
    assert NullModel.fit(np.arange(101.0)[::-1]).summary() == {
        "n_null_slices": 101,
        "null_mean": 50.0,
        "null_std": pytest.approx(np.sqrt(101 * 102 / 12)),
        "null_q01": 1.0,
        "null_median": 50.0,
        "null_q99": 99.0,
        "tail_threshold": 90.0,
        "tail_share": 12 / 102,
        "tail_shape": 0.0,
        "tail_scale": 5.5,
    }


def test_tail_size_is_ten_samples_or_ten_percent():
    small = NullModel.fit(np.arange(50.0))  # 10 tail samples, not 5: threshold is the 40th
    assert small.threshold == 39.0 and small.tail_share == 12 / 51
    large = NullModel.fit(np.arange(300.0))  # 30 tail samples: threshold is the 270th
    assert large.threshold == 269.0 and large.tail_share == 32 / 301


def test_twenty_samples_are_enough():
    model = NullModel.fit(np.arange(20.0))
    assert model.threshold == 9.0 and len(model.samples) == 20
    with pytest.raises(SettingsError, match="only 19 slices; at least 20"):
        NullModel.fit(np.arange(19.0))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # no excess over the threshold: nan scale
def test_a_constant_null_has_a_floored_std():
    model = NullModel.fit(np.full(30, 0.5))
    assert model.std == 1e-6 and model.mean == 0.5
    assert model.oni(0.5 + 1e-6) == pytest.approx(-np.tanh(1.0))


def test_empirical_p_values_count_the_null_at_or_above():
    model = NullModel.fit(np.arange(100.0))  # threshold 89
    s = np.array([-5.0, 0.0, 0.5, 10.0, 89.0])
    assert np.array_equal(model.p_value(s), np.array([101, 101, 100, 91, 12]) / 101)
    assert np.array_equal(model.mi(s), 1 - np.array([101, 101, 100, 91, 12]) / 101)


def test_heavy_tail_keeps_scipys_gpd_fit_and_its_survival():
    samples = with_tail(gpd_quantiles(0.5, 10))
    model = NullModel.fit(samples)
    assert model.threshold == 0.5 and model.tail_share == 12 / 101  # 11 values >= 0.5
    shape, scale = scipy_fit(samples, 0.5)
    assert 0.2 < shape < 0.6  # a real, positive shape below 1 (excess spread below 1 too)
    assert model.tail_shape == pytest.approx(shape) and model.tail_scale == pytest.approx(scale)
    x = np.array([0.001, 0.05, 0.5])
    survival = (1.0 + shape * x / scale) ** (-1.0 / shape)  # the GPD by hand
    assert model.p_value(0.5 + x) == pytest.approx(12 / 101 * survival, rel=1e-6)


def test_light_tail_becomes_exponential_with_the_mean_excess():
    samples = with_tail(gpd_quantiles(-0.4, 10))
    shape, _ = scipy_fit(samples, 0.5)
    assert -1.0 < shape < 0.0  # scipy would end the tail just past the largest value
    model = NullModel.fit(samples)
    mean_excess = np.mean(samples[samples > 0.5] - 0.5)
    assert model.tail_shape == 0.0 and model.tail_scale == pytest.approx(mean_excess)
    x = np.array([0.01, 0.1])
    assert model.p_value(0.5 + x) == pytest.approx(12 / 101 * np.exp(-x / mean_excess))


def test_a_shape_above_one_is_refused_for_the_exponential():
    samples = with_tail(gpd_quantiles(1.5, 10))
    shape, _ = scipy_fit(samples, 0.5)
    assert 1.0 < shape < 2.0  # an infinite-mean tail
    model = NullModel.fit(samples)
    assert model.tail_shape == 0.0
    assert model.tail_scale == pytest.approx(np.mean(samples[samples > 0.5] - 0.5))


def test_fewer_than_ten_values_above_the_threshold_are_not_fitted():
    # ties at the threshold leave 8 values above it, heavy-tailed: scipy would fit them
    samples = np.r_[np.zeros(12), gpd_quantiles(0.5, 8)]
    assert scipy_fit(samples, 0.0)[0] > 0.1
    model = NullModel.fit(samples)
    assert model.threshold == 0.0 and model.tail_share == 1.0  # all 20 are >= 0
    assert model.tail_shape == 0.0 and model.tail_scale == pytest.approx(
        gpd_quantiles(0.5, 8).mean()
    )


def test_tied_tail_is_exponential_with_its_excess():
    model = NullModel.fit(np.r_[np.zeros(10), np.ones(10)])
    assert (model.threshold, model.tail_shape, model.tail_scale) == (0.0, 0.0, 1.0)


def test_a_failing_gpd_fit_falls_back_to_the_exponential(monkeypatch):
    def fails(*args, **kwargs):
        raise FloatingPointError("degenerate")

    monkeypatch.setattr(stats.genpareto, "fit", fails)
    model = NullModel.fit(with_tail(gpd_quantiles(0.5, 10)))
    assert model.tail_shape == 0.0
    assert model.tail_scale == pytest.approx(gpd_quantiles(0.5, 10).mean(), rel=1e-9)


def test_folds_of_two_volumes_and_of_two_subjects():
    assert [f.tolist() for f in volume_folds(2, 5)] in ([[0], [1]], [[1], [0]])
    folds = volume_folds(3, 5, groups=np.array([7, 7, 9]))
    assert sorted(f.tolist() for f in folds) == [[0, 1], [2]]
    with pytest.raises(SettingsError, match="all 3 volumes belong to one subject"):
        volume_folds(3, 5, groups=np.array([4, 4, 4]))


def test_a_heavy_tail_of_twenty_is_fitted_too():
    samples = with_tail(gpd_quantiles(0.5, 20), n_body=180)  # 200 samples: 20 in the tail
    model = NullModel.fit(samples)
    assert model.threshold == 0.5
    shape, scale = scipy_fit(samples, 0.5)
    assert 0.2 < shape < 0.6
    assert model.tail_shape == pytest.approx(shape) and model.tail_scale == pytest.approx(scale)


@pytest.mark.parametrize(
    "fitted", [(np.nan, 0.0, 0.01), (0.3, 0.0, np.inf), (0.3, 0.0, -0.01), (0.3, 0.0, 0.0)]
)
def test_an_unusable_gpd_fit_falls_back_to_the_exponential(monkeypatch, fitted):
    monkeypatch.setattr(stats.genpareto, "fit", lambda *args, **kwargs: fitted)
    model = NullModel.fit(with_tail(gpd_quantiles(0.5, 10)))
    assert model.tail_shape == 0.0
    assert model.tail_scale == pytest.approx(gpd_quantiles(0.5, 10).mean(), rel=1e-9)


def test_folds_are_seeded_by_zero_and_at_least_two():
    same = volume_folds(11, 5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(volume_folds(11, 5), same, strict=True))
    other = volume_folds(11, 5, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(other, same, strict=True))
    assert len(volume_folds(11, 1)) == 2 and len(volume_folds(11, 0)) == 2


@pytest.mark.parametrize("fitted", [(1.0, 0.0, 0.02), (0.0, 0.0, 0.02)])
def test_a_gpd_fit_at_the_edges_of_the_usable_shapes_is_kept(monkeypatch, fitted):
    # shape 1 (the largest kept) and shape 0 (an exponential with the fitted scale)
    monkeypatch.setattr(stats.genpareto, "fit", lambda *args, **kwargs: fitted)
    model = NullModel.fit(with_tail(gpd_quantiles(0.5, 10)))
    assert (model.tail_shape, model.tail_scale) == (fitted[0], fitted[2])
