"""Stage 2's cascade: the check value, the gate that settles slices, and the calibrated score.

Copies are made by scipy.ndimage (not by the module's own warp); the gate is placed as the
bank places it, at a quantile of novel slices' check values.
"""

import numpy as np
import pytest
from MemorizationIndexLib.bank.feature_bank import FeatureBank
from MemorizationIndexLib.demo.cohort import load_template, make_subject
from MemorizationIndexLib.encoding.preprocessing import thumbnails
from MemorizationIndexLib.search.verification import (
    SETTLED_SCORE,
    Verifier,
    VerifySettings,
    settle,
)
from scipy import ndimage


@pytest.fixture(scope="module")
def cohort():
    """Training slices of one subject, slices of two other subjects, and copies of
    training slices turned, shifted and noised by scipy (true sources known)."""
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    train = thumbnails(make_subject(template, 1)[18:42], (3.0, 3.0), 64)
    novel = np.concatenate(
        [thumbnails(make_subject(template, s)[20:40], (3.0, 3.0), 64) for s in (2, 3)]
    )
    rng = np.random.default_rng(4)
    sources = np.array([3, 8, 12, 17, 21])
    angles = np.array([7.0, -11.0, 4.0, -6.0, 13.0])
    copies = []
    for source, angle in zip(sources, angles, strict=True):
        moved = ndimage.rotate(train[source].astype(float), angle, reshape=False, order=1)
        moved = ndimage.shift(moved, (1.5, -2.0), order=1)
        copies.append(np.clip(moved + rng.normal(0, 6, moved.shape), 0, 255).astype(np.uint8))
    return train, novel, np.stack(copies), sources


def candidates_of(n: int, sources, n_train: int, rng) -> np.ndarray:
    """Ten candidate rows per query: the true source (when given) among random others."""
    out = np.stack([rng.choice(n_train, 10, replace=False) for _ in range(n)])
    if sources is not None:
        for i, source in enumerate(sources):
            if source not in out[i]:
                out[i, rng.integers(10)] = source
    return out


@pytest.fixture(scope="module")
def gated(cohort):
    """An ungated run with its check alignments, the gate at the novel slices' 60 %
    quantile, and a gated run of the same queries (novel slices, then copies)."""
    train, novel, copies, sources = cohort
    rng = np.random.default_rng(0)
    queries = np.concatenate([novel, copies])
    candidates = np.concatenate(
        [candidates_of(len(novel), None, len(train), rng), candidates_of(5, sources, 24, rng)]
    )
    verifier = Verifier()
    full, checked = verifier.align(queries, train, candidates, keep_checked=True)
    gate = float(np.quantile(full.check[: len(novel)], 0.6))
    result = verifier.align(queries, train, candidates, settle_below=gate)
    return full, checked, gate, result, len(novel)


def test_gated_run_equals_an_ungated_run_settled_afterwards(gated):
    """What the bank's null does (settle afterwards) and what scoring does (settle_below)
    give the same alignments: the null and the scores are the same statistic."""
    full, checked, gate, result, _ = gated
    after = settle(full, checked, gate)
    assert checked.settled.all()  # the check alignments are what a settled slice keeps
    assert np.array_equal(checked.check, full.check)
    assert np.array_equal(result.settled, full.check < gate)
    assert np.array_equal(after.settled, result.settled)
    assert np.array_equal(after.candidate, result.candidate)
    assert after.flip == result.flip
    assert np.allclose(after.angle, result.angle, atol=1e-3)
    assert np.allclose(after.ncc, result.ncc, atol=1e-5)
    assert np.array_equal(after.score == SETTLED_SCORE, result.settled)


def test_settled_slices_keep_the_check_pose_and_score_as_the_lowest_ncc(gated):
    full, checked, gate, result, n_novel = gated
    settled = np.flatnonzero(result.settled)
    assert len(settled) > 0
    assert np.all(result.score[settled] == SETTLED_SCORE)
    assert SETTLED_SCORE == -1.0  # the lowest NCC: every null slice reaches it, so p2 = 1
    assert np.array_equal(result.candidate[settled], checked.candidate[settled])
    assert np.array_equal(result.ncc[settled], checked.ncc[settled])
    assert [result.flip[i] for i in settled] == [checked.flip[i] for i in settled]
    # Unsettled slices keep the full alignment, whose NCC is the refined one.
    aligned = np.flatnonzero(~result.settled)
    assert np.array_equal(result.score[aligned], result.ncc[aligned])
    assert np.all(full.ncc[aligned] >= checked.ncc[aligned] - 1e-6)


def test_copies_pass_the_gate_and_most_novel_slices_are_settled(cohort, gated):
    _, _, _, sources = cohort
    _, checked, gate, result, n_novel = gated
    # The gate sits at the novel slices' 60 % quantile: 60 % of them are settled.
    assert result.settled[:n_novel].mean() == pytest.approx(0.6, abs=0.03)
    # Every copy passes and is aligned onto its true source with the right turn.
    assert not result.settled[n_novel:].any()
    assert np.array_equal(result.candidate[n_novel:], sources)
    assert np.abs(result.angle[n_novel:] + np.array([7.0, -11.0, 4.0, -6.0, 13.0])).max() < 1.5
    assert result.ncc[n_novel:].min() > 0.9
    # The check alone already ranks the true source first.
    assert np.array_equal(checked.candidate[n_novel:], sources)


def test_only_unsettled_slices_pay_for_the_refinement(cohort, gated, monkeypatch):
    """The point of the gate: the refinement runs on the unsettled queries' poses only,
    and the ranking and coarse searches run once per query, whatever the gate."""
    train, novel, copies, sources = cohort
    _, _, gate, result, _ = gated
    verifier = Verifier()
    sizes, refined = [], []
    pose_peaks, refine = verifier._pose_peaks, verifier._refine

    def counting_peaks(query, candidates, stretch, size, angles, only=None):
        sizes.append(size)
        return pose_peaks(query, candidates, stretch, size, angles, only)

    def counting_refine(queries, images, poses):
        refined.append(len(queries))
        return refine(queries, images, poses)

    monkeypatch.setattr(verifier, "_pose_peaks", counting_peaks)
    monkeypatch.setattr(verifier, "_refine", counting_refine)
    rng = np.random.default_rng(0)
    queries = np.concatenate([novel, copies])
    candidates = np.concatenate(
        [candidates_of(len(novel), None, len(train), rng), candidates_of(5, sources, 24, rng)]
    )
    verifier.align(queries, train, candidates, settle_below=gate)
    s = VerifySettings()
    assert sizes.count(s.rank_size) == sizes.count(s.coarse_size) == len(queries)
    assert refined == [int((~result.settled).sum()) * s.refine_poses]


def test_the_bank_keeps_its_gate_and_scoring_applies_it(small_bank, tmp_path):
    """The gate is part of the calibrated statistic: the null's stage-2 scores hold
    SETTLED_SCORE for the settled share of held-out slices, and a saved bank gives the
    same gate back."""
    bank, path = small_bank
    combination = bank.combination
    share = VerifySettings().settle_share
    assert combination.gate is not None
    null_s2 = combination.nulls[1].samples
    settled_share = float(np.mean(null_s2 == SETTLED_SCORE))
    # The quantile puts settle_share of the check values below the gate (ties aside).
    assert settled_share == pytest.approx(share, abs=0.05)
    # p-value 1 for a settled slice: every null slice scores at least SETTLED_SCORE.
    assert combination.nulls[1].p_value(SETTLED_SCORE)[0] == 1.0
    loaded = FeatureBank.load(path)
    assert loaded.combination.gate == combination.gate
    assert loaded.combination.summary()["stage2_gate"] == combination.gate


def test_a_slice_is_aligned_the_same_whatever_else_is_in_the_batch(cohort):
    """Each pose is refined on its own (its own gradient, moments and box): a volume
    scored alone, resumed or on a Ray worker gets the rows a one-batch run gets."""
    train, novel, copies, sources = cohort
    rng = np.random.default_rng(1)
    queries = np.concatenate([copies, novel[:6]])
    candidates = np.concatenate(
        [candidates_of(5, sources, 24, rng), candidates_of(6, None, len(train), rng)]
    )
    verifier = Verifier()
    together = verifier.align(queries, train, candidates)
    for part in (np.arange(0, 3), np.arange(3, 11)):
        alone = verifier.align(queries[part], train, candidates[part])
        assert np.array_equal(alone.candidate, together.candidate[part])
        assert alone.flip == [together.flip[i] for i in part]
        assert np.allclose(alone.ncc, together.ncc[part], atol=1e-5, rtol=0)
        assert np.allclose(alone.angle, together.angle[part], atol=1e-3, rtol=0)
        assert np.allclose(alone.shift, together.shift[part], atol=1e-3, rtol=0)


def ranked_position_of_sources(verifier: Verifier, n: int = 12) -> list[int]:
    """Where the ranking puts the true source of copies shifted between pixels (scipy),
    among the same-position slices of four subjects that share anatomy."""
    import SimpleITK as sitk
    from MemorizationIndexLib.search.foreground import (
        as_unit_images,
        foreground_moments,
        stretch_between,
    )

    from Testing.benchmarks.verification_cost import (
        BANK_SUBJECTS,
        SLICES,
        candidate_rows,
        subject_slices,
    )

    template = sitk.GetArrayFromImage(load_template(3.0))
    bank = np.concatenate([subject_slices(template, s) for s in BANK_SUBJECTS])
    rng = np.random.default_rng(3)
    per, s = SLICES.stop - SLICES.start, verifier.settings
    positions = []
    for source in rng.choice(len(bank), n, replace=False):
        moved = ndimage.shift(bank[source].astype(float), rng.uniform(-3, 3, 2), order=1)
        query = as_unit_images(np.clip(moved, 0, 255).astype(np.uint8)[None])
        rows = candidate_rows(int(source) % per, int(source), len(BANK_SUBJECTS), rng)
        images = as_unit_images(bank[rows])
        stretch = stretch_between(
            foreground_moments(query)[1][0], foreground_moments(images)[1], s.stretch_bounds
        )
        ranked = verifier._pose_peaks(query[0], images, stretch, s.rank_size, s.rank_angles)
        order = np.argsort(-ranked.flatten(1).max(dim=1).values.numpy(), kind="stable")
        positions.append(int(np.flatnonzero(rows[order] == source)[0]))
    return positions


def test_a_copy_shifted_between_pixels_keeps_its_source_near_the_top_of_the_ranking():
    """At the ranking's 24 px a shift between pixels lowers a copy's sampled peak below
    that of other subjects' slices that sit on the grid; the peak is read between pixels,
    so the source stays near the top (a sampled peak put one such source 22nd)."""
    positions = ranked_position_of_sources(Verifier())
    assert max(positions) <= 2, positions
