"""Calibration conditional on a slice's content (calibration/content.py).

The nulls here are drawn by numpy from distributions chosen by hand: edge-of-volume slices
score higher than middle ones (as slices showing little anatomy do), so a pooled null
flags them far more often than alpha, and the binned null must not.
"""

import numpy as np
import pytest
from MemorizationIndexLib.calibration.content import (
    EDGE_SHARE,
    MIN_BIN_SLICES,
    MIN_BIN_SUBJECTS,
    POOLED,
    ContentNull,
    SliceContent,
)
from MemorizationIndexLib.calibration.null import NullModel

ALPHA = 0.01


def volumes_of(n_volumes, n_slices, rng, foreground=None):
    """Slice content of n_volumes volumes of n_slices each, and whether each is an edge."""
    vids = np.repeat(np.arange(n_volumes), n_slices)
    index = np.tile(np.arange(n_slices), n_volumes)
    pos = index / (n_slices - 1)
    fg = rng.uniform(0.3, 0.6, len(vids)) if foreground is None else foreground
    content = SliceContent(fg, pos)
    edge = np.minimum(pos, 1 - pos) < EDGE_SHARE
    return content, edge


def scores_of(edge, rng):
    """Edge slices resemble everyone's edge slices: their null scores sit higher."""
    return np.where(edge, rng.normal(3.0, 0.3, len(edge)), rng.normal(0.0, 1.0, len(edge)))


def test_edge_slices_are_flagged_at_alpha_per_bin_not_several_times_it():
    rng = np.random.default_rng(0)
    content, edge = volumes_of(60, 50, rng)
    stat = scores_of(edge, rng)
    pooled, binned = NullModel.fit(stat), ContentNull.fit(stat, content)
    fresh, fresh_edge = volumes_of(200, 50, rng)
    novel = scores_of(fresh_edge, rng)
    pooled_flags = pooled.p_value(novel) <= ALPHA
    binned_flags = binned.p_value(novel, fresh, pooled) <= ALPHA
    # the pooled null flags edges several times alpha and the middle almost never
    assert pooled_flags[fresh_edge].mean() > 2 * ALPHA
    assert pooled_flags[~fresh_edge].mean() < ALPHA / 2
    for sel in (fresh_edge, ~fresh_edge):
        assert 0.3 * ALPHA < binned_flags[sel].mean() < 2.5 * ALPHA
    # a copy (far above either bin's null) is still flagged wherever it lies
    copies = np.full(len(novel), 9.0)
    assert (binned.p_value(copies, fresh, pooled) <= ALPHA).all()


def test_bins_follow_position_and_foreground_and_fall_back_when_thin():
    rng = np.random.default_rng(1)
    fg = np.concatenate([rng.uniform(0.0, 0.1, 1000), rng.uniform(0.4, 0.6, 3000)])
    rng.shuffle(fg)
    content, edge = volumes_of(40, 100, rng, fg)
    null = ContentNull.fit(rng.normal(size=len(fg)), content)
    assert null.low_foreground == pytest.approx(np.quantile(fg, 0.25))
    counts = null.counts
    assert sum(counts.values()) == len(fg)
    assert counts["edge/low"] + counts["edge/high"] == edge.sum()
    probe = SliceContent(
        np.array([0.05, 0.5, 0.05, 0.5, 0.05]), np.array([0.0, 0.5, 0.5, 1.0, np.nan])
    )
    assert null.bins(probe).tolist() == [
        "edge/low", "middle/high", "middle/low", "edge/high", "*/low",
    ]  # fmt: skip
    # a bin with too few null slices is judged by the coarser one that has enough
    few = ContentNull.fit(rng.normal(size=len(fg)), SliceContent(fg, np.where(edge, 0.0, 0.5)))
    assert few.counts["edge/low"] >= MIN_BIN_SLICES  # enough here; now thin it out
    thin_pos = np.where(edge & (fg < 0.1), 0.5, np.where(edge, 0.0, 0.5))
    thin = ContentNull.fit(rng.normal(size=len(fg)), SliceContent(fg, thin_pos))
    assert thin.counts["edge/low"] == 0 and "edge/low" not in thin.models
    assert thin.bins(SliceContent(np.array([0.05]), np.array([0.0]))).tolist() == ["edge/*"]
    # nothing known and nothing fitted: the pooled null
    empty = ContentNull(low_foreground=0.2)
    assert empty.bins(probe).tolist() == [POOLED] * 5


def test_a_bin_needs_slices_of_enough_subjects():
    """Neighbouring slices of one person are near-duplicates: 8 subjects' 400 edge slices
    are a thin null however many slices they make, and judge nothing on their own."""
    rng = np.random.default_rng(3)
    content, edge = volumes_of(40, 100, rng)
    stat = scores_of(edge, rng)
    subjects = np.repeat(np.arange(40), 100)
    assert "edge/*" in ContentNull.fit(stat, content, subjects).models
    few = np.repeat(np.arange(40) % (MIN_BIN_SUBJECTS - 1), 100)  # 9 subjects, 4000 slices
    thin = ContentNull.fit(stat, content, few)
    assert sum(thin.counts.values()) == len(stat) and not thin.models
    probe = SliceContent(np.array([0.5, 0.5]), np.array([0.0, 0.5]))
    assert thin.bins(probe).tolist() == [POOLED, POOLED]
    # exactly enough subjects: the bins are back
    enough = np.repeat(np.arange(40) % MIN_BIN_SUBJECTS, 100)
    assert "edge/*" in ContentNull.fit(stat, content, enough).models
    assert thin.summary()["min_subjects_for_own_null"] == MIN_BIN_SUBJECTS


def test_position_is_the_rank_among_a_volumes_kept_slices():
    thumbs = np.zeros((13, 8, 8), np.uint8)
    thumbs[:, :4] = 200  # half of each thumbnail is foreground
    vids = np.array([0] * 6 + [1] * 3 + [2] * 4)
    index = np.array([10, 2, 4, 6, 8, 12, 0, 1, 2, 5, 6, 7, 8])  # volume 0 out of order
    planar = np.array([False] * 9 + [True] * 4)
    c = SliceContent.of(thumbs, vids, index, planar)
    np.testing.assert_allclose(c.foreground, 0.5)
    np.testing.assert_allclose(c.position[:6], [0.8, 0.0, 0.2, 0.4, 0.6, 1.0])
    assert np.isnan(c.position[6:]).all()  # a 3-slice volume and 2D images: unknown


def test_round_trip_through_arrays():
    rng = np.random.default_rng(2)
    content, edge = volumes_of(30, 40, rng)
    null = ContentNull.fit(scores_of(edge, rng), content)
    back = ContentNull.from_arrays(null.to_arrays("volume_"), "volume_")
    assert back.low_foreground == null.low_foreground and back.counts == null.counts
    assert sorted(back.models) == sorted(null.models)
    s = rng.normal(size=200)
    probe = SliceContent(rng.uniform(0, 1, 200), rng.uniform(0, 1, 200))
    pooled = NullModel.fit(rng.normal(size=100))
    np.testing.assert_array_equal(back.p_value(s, probe, pooled), null.p_value(s, probe, pooled))
    assert "edge" in null.summary()["bins"]


def test_a_built_bank_keeps_its_content_nulls_and_scoring_names_each_slices_bin(
    small_bank, small_cohort, tmp_path
):
    import json
    import shutil

    from MemorizationIndexLib.bank.feature_bank import CONTENT_NULL_FILE, FeatureBank
    from MemorizationIndexLib.errors import BankError
    from MemorizationIndexLib.scoring.score import score

    bank, path = small_bank
    loaded = FeatureBank.load(path)
    counts = loaded.content_null.counts
    assert sum(counts.values()) == len(loaded.null.samples)  # every null slice has one bin
    assert counts["edge/low"] + counts["edge/high"] > 0 and counts["*/low"] == 0
    assert loaded.manifest["calibration_by_content"]["null_slices_per_bin"] == counts
    root, _ = small_cohort
    result = score(loaded, root / "synthetic", loaded.load_encoder(device="cpu"), stride=2)
    bins = {r.null_bin for r in result.slices}
    assert bins <= set(loaded.content_null.models) | {POOLED}
    for vol in {r.volume for r in result.slices}:
        mine = sorted((r for r in result.slices if r.volume == vol), key=lambda r: r.slice_index)
        if len(mine) >= 10 and "edge/*" in loaded.content_null.models:
            assert mine[0].null_bin.startswith("edge") and mine[-1].null_bin.startswith("edge")
    by_bin = result.summary["flagged_by_null_bin"]
    assert sum(b["slices"] for b in by_bin.values()) == len(result.slices)
    assert "null_bin" in result.slices[0].as_row()
    # a bank from before content bins (no such file) loads and judges by the pooled null
    old = tmp_path / "old"
    shutil.copytree(path, old)
    (old / CONTENT_NULL_FILE).unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"][CONTENT_NULL_FILE]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert FeatureBank.load(old).content_null is None
    # a damaged one is refused by name
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    (damaged / CONTENT_NULL_FILE).write_bytes(b"not an npz")
    with pytest.raises(BankError, match=CONTENT_NULL_FILE):
        FeatureBank.load(damaged)
