"""The combination of stage scores: -log10 of the smallest per-stage p-value, on hand-counted nulls.

Every null here is an evenly spaced grid, so each p-value below the tail threshold is a count:
(1 + #null >= s) / (n + 1), with n = 100 and the threshold at the 90th value.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from MemorizationIndexLib.calibration.combination import Combination

GRID = np.arange(100) / 100.0  # 0.00 .. 0.99; tail threshold 0.89
FIELDS = ("samples", "mean", "std", "threshold", "tail_share", "tail_shape", "tail_scale")


def three_stages() -> Combination:
    return Combination.fit(GRID, 2 * GRID, GRID + 1.0)


def test_one_stage_is_the_feature_similarity_itself():
    for comb in (
        Combination.fit(GRID),
        Combination.fit(GRID, None),
        Combination.fit(GRID, None, None),
    ):
        assert comb.verify is False and comb.nulls == [] and comb.n_stages == 1
    s = np.array([0.25, 0.5], np.float32)
    out = Combination.fit(GRID, None).statistic_of(s, None)
    assert out.dtype == np.float64 and np.array_equal(out, [0.25, 0.5])
    # stage 1 alone is the statistic even when later stages' scores are there
    assert np.array_equal(Combination.fit(GRID).statistic_of(s, 2 * s), [0.25, 0.5])
    # a combination without verification ignores any nulls it holds
    assert Combination(verify=False, nulls=Combination.fit(GRID, GRID).nulls).n_stages == 1


def test_two_and_three_stages_fit_one_null_each():
    two = Combination.fit(GRID, None, 2 * GRID)
    assert two.verify is True and two.n_stages == 2
    assert [n.samples[-1] for n in two.nulls] == [0.99, 1.98]
    assert three_stages().n_stages == 3


def test_statistic_is_minus_log10_of_the_smallest_stage_p_value():
    comb = Combination.fit(GRID, 2 * GRID)
    # stage 1 at 0.5: 50 null values >= it -> p = 51/101; stage 2 at 0.2: 90 -> 91/101
    # stage 1 at 0.8: 20 -> 21/101; stage 2 at 0.1: 95 -> 96/101
    # stage 1 at 0.7: 30 -> 31/101; stage 2 at 1.6: 20 -> 21/101 (stage 2 wins)
    out = comb.statistic_of(np.array([0.5, 0.8, 0.7]), np.array([0.2, 0.1, 1.6]))
    assert out == pytest.approx(-np.log10([51 / 101, 21 / 101, 21 / 101]), rel=1e-12)


def test_a_p_value_of_zero_is_floored_at_1e_300():
    comb = Combination.fit(GRID, 2 * GRID)
    # far beyond the exponential tail, the survival is exactly 0.0
    assert comb.nulls[0].p_value(1e6)[0] == 0.0
    assert comb.statistic_of(np.array([1e6]), np.array([0.0]))[0] == pytest.approx(300.0)


def test_three_stages_take_the_volume_ncc_too():
    comb = three_stages()
    # stage 3's null is GRID + 1: at 1.855, 14 values >= it -> 15/101 beats 51/101 and 91/101
    out = comb.statistic_of(np.array([0.5]), np.array([0.2]), np.array([1.855]))
    assert out == pytest.approx(-np.log10([15 / 101]), rel=1e-12)


def test_the_wrong_number_of_stage_scores_is_refused():
    with pytest.raises(ValueError, match="combines 2 stage scores; 1 were given"):
        Combination.fit(GRID, GRID).statistic_of(np.array([0.5]), None)
    with pytest.raises(ValueError, match="combines 3 stage scores; 2 were given"):
        three_stages().statistic_of(np.array([0.5]), np.array([0.5]))
    with pytest.raises(ValueError, match="combines 2 stage scores; 3 were given"):
        Combination.fit(GRID, GRID).statistic_of(np.array([0.5]), np.array([0.5]), np.array([1.0]))


def test_statistic_reads_the_stage_scores_off_a_search_result():
    s1, s2, s3 = np.array([0.5, 0.8]), np.array([0.2, 0.1]), np.array([1.85, 1.0])
    stage1 = SimpleNamespace(similarity=s1)
    aligned = SimpleNamespace(stage1=stage1, alignment=SimpleNamespace(score=s2), volume_ncc=None)
    unaligned = SimpleNamespace(stage1=stage1, alignment=None, volume_ncc=None)
    volume = SimpleNamespace(stage1=stage1, alignment=SimpleNamespace(score=s2), volume_ncc=s3)
    assert np.array_equal(Combination.fit(GRID).statistic(unaligned), s1)
    two = Combination.fit(GRID, 2 * GRID)
    assert np.array_equal(two.statistic(aligned), two.statistic_of(s1, s2))
    three = three_stages()
    assert np.array_equal(three.statistic(volume), three.statistic_of(s1, s2, s3))
    with pytest.raises(ValueError, match="1 were given"):
        two.statistic(unaligned)


def test_arrays_are_named_by_stage_and_round_trip():
    assert Combination.fit(GRID).to_arrays() == {}
    assert Combination(verify=False, nulls=Combination.fit(GRID, GRID).nulls).to_arrays() == {}
    comb = three_stages()
    arrays = comb.to_arrays()
    stages = {f"stage{i}_{f}" for i in (1, 2, 3) for f in FIELDS}
    assert set(arrays) == stages | {"stage2_gate"}
    assert np.isnan(arrays["stage2_gate"])  # no gate
    assert np.array_equal(arrays["stage2_samples"], 2 * GRID)
    assert not Combination.from_arrays(False, arrays, n_stages=3).verify
    again = Combination.from_arrays(True, arrays, n_stages=3)
    assert again.verify and again.n_stages == 3 and again.gate is None
    for before, after in zip(comb.nulls, again.nulls, strict=True):
        assert np.array_equal(before.samples, after.samples)
        assert before.summary() == after.summary()
    # two stages by default: a stage-1-2 bank's arrays
    default = Combination.from_arrays(True, Combination.fit(GRID, 2 * GRID).to_arrays())
    assert default.n_stages == 2 and default.nulls[1].samples[-1] == 1.98


def test_the_stage_2_gate_is_kept_with_two_or_more_stages():
    assert Combination.fit(GRID, gate=0.35).gate is None  # stage 1 alone has no stage 2
    gated = Combination.fit(GRID, 2 * GRID, gate=0.35)
    assert gated.gate == 0.35
    arrays = gated.to_arrays()
    assert arrays["stage2_gate"] == 0.35
    assert Combination.from_arrays(True, arrays).gate == 0.35
    assert gated.summary()["stage2_gate"] == 0.35


def test_summary_names_the_statistic_and_each_stage():
    assert Combination.fit(GRID).summary() == {
        "verify": False,
        "statistic": "stage-1 feature similarity",
    }
    comb = three_stages()
    summary = comb.summary()
    assert summary["verify"] is True
    assert summary["statistic"] == "-log10 min(p_stage1, p_stage2, p_stage3)"
    assert set(summary) == {"verify", "statistic", "stage2_gate", "stage1", "stage2", "stage3"}
    assert summary["stage2_gate"] is None
    names = ["stage-1 feature similarity", "stage-2 aligned NCC", "stage-3 volume NCC"]
    for i, (name, null) in enumerate(zip(names, comb.nulls, strict=True), start=1):
        assert summary[f"stage{i}"] == {"score": name, **null.summary()}
    assert Combination.fit(GRID, GRID).summary()["statistic"] == "-log10 min(p_stage1, p_stage2)"
