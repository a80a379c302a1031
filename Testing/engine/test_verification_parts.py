"""Stage 2's parts, each against a ground truth the module does not compute itself.

Shifts come from np.roll and scipy.ndimage.shift, parabola tops from the algebra of a
parabola, refinement limits from the settings, Adam's first step from its definition (its
bias-corrected first step is the learning rate, whatever the gradient's size). These pin
down the constants and boundaries that the end-to-end pose tests (test_verification.py)
pass with a tolerance.
"""

import math

import numpy as np
import pytest
import torch
from MemorizationIndexLib.demo.cohort import load_template, make_subject
from MemorizationIndexLib.encoding.preprocessing import thumbnails
from MemorizationIndexLib.geometry import pose_matrices, warp
from MemorizationIndexLib.search.foreground import (
    FOREGROUND_LEVEL,
    MIN_PAIR_FOREGROUND,
    as_unit_images,
)
from MemorizationIndexLib.search.verification import (
    Verifier,
    VerifySettings,
    _best_per_query,
    _parabola,
    _Poses,
    _soft_foreground_ncc,
    best_shifts,
    foreground_ncc,
    peak_correlations,
    settle,
)
from scipy import ndimage

from .test_verification import ndimage_posed

SIZE = 32


def smooth_image(seed: int, size: int = SIZE) -> np.ndarray:
    """Blurred noise that wraps around, so np.roll and a grid-wrap shift are exact moves."""
    noise = np.random.default_rng(seed).normal(size=(size, size))
    return ndimage.gaussian_filter(noise, 2.0, mode="wrap")


def as_tensor(*images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).astype(np.float32))


# ---- the parabola through three samples --------------------------------------------------


@pytest.mark.parametrize("top, curvature", [(0.3, 3.0), (-0.2, 3.0), (0.0, 3.0), (0.4, 0.2)])
def test_parabola_top_of_three_samples(top, curvature):
    """Samples of y = 2 - c (x - top)^2 at -1, 0, 1: the top lies at `top`, c top^2 above
    the middle sample, however flat (c = 0.2) the peak."""
    y = [torch.tensor([2.0 - curvature * (x - top) ** 2]) for x in (-1.0, 0.0, 1.0)]
    offset, rise = _parabola(*y)
    assert float(offset[0]) == pytest.approx(top, abs=1e-6)
    assert float(rise[0]) == pytest.approx(curvature * top**2, abs=1e-6)


@pytest.mark.parametrize("top", [0.8, -0.8])
def test_parabola_clamps_its_offset_to_half_a_pixel(top):
    y = [torch.tensor([-((x - top) ** 2)]) for x in (-1.0, 0.0, 1.0)]
    offset, rise = _parabola(*y)
    assert float(offset[0]) == pytest.approx(math.copysign(0.5, top))
    assert float(rise[0]) == pytest.approx(0.64, abs=1e-6)  # the rise is the parabola's own


@pytest.mark.parametrize(
    "left, right",
    [(-math.inf, 0.5), (0.5, -math.inf), (1.0, 1.0)],  # a neighbour outside, a flat top
)
def test_parabola_is_flat_without_a_usable_neighbour(left, right):
    offset, rise = _parabola(torch.tensor([left]), torch.tensor([1.0]), torch.tensor([right]))
    assert float(offset[0]) == 0.0 and float(rise[0]) == 0.0


# ---- FFT shift search -------------------------------------------------------------------


def test_best_shift_of_rolled_copies_up_to_the_largest_allowed_shift():
    """np.roll moves a wrapping image exactly; the shift that maps the copy back onto the
    query is minus the roll, found up to max_shift either way, with peak 1."""
    query = smooth_image(0)
    max_shift = 8
    rolls = [(0, max_shift), (0, -max_shift), (max_shift, 0), (-max_shift, 0), (3, -5)]
    variants = as_tensor(*(np.roll(query, roll, axis=(0, 1)) for roll in rolls))
    shifts, peaks = best_shifts(as_tensor(query)[0], variants, max_shift)
    expected = [(-cols, -rows) for rows, cols in rolls]  # (dx, dy)
    assert shifts.numpy() == pytest.approx(np.array(expected, dtype=float), abs=1e-4)
    assert peaks.numpy() == pytest.approx(np.ones(len(rolls)), abs=1e-5)


def test_best_shift_never_goes_past_max_shift():
    query = smooth_image(1)
    variants = as_tensor(np.roll(query, (0, 9), axis=(0, 1)), np.roll(query, (-9, 0), (0, 1)))
    shifts, peaks = best_shifts(as_tensor(query)[0], variants, 8)
    assert np.abs(shifts.numpy()).max() <= 8.5
    assert peaks.max() < 0.99


def test_best_shift_reads_a_shift_between_pixels():
    """A copy moved by scipy by a fraction of a pixel along each axis (rows -1.3, columns
    2.4): the parabola through the peak's neighbours recovers both fractions."""
    query = smooth_image(2)
    moved = ndimage.shift(query, (-1.3, 2.4), order=3, mode="grid-wrap")
    shifts, _ = best_shifts(as_tensor(query)[0], as_tensor(moved), 8)
    assert shifts[0].numpy() == pytest.approx((-2.4, 1.3), abs=0.15)


def test_peak_correlations_of_every_pair_and_of_chosen_pairs():
    """The peak is 1 for a copy rolled by up to max_shift along either axis either way,
    below it one pixel past reach, the same whether every pair or chosen pairs are
    computed, and raised between pixels for a half-pixel shift (where the sampled peak
    drops)."""
    query = smooth_image(3)
    reach = 6
    within = [(2, -5), (reach, 0), (-reach, 0), (0, reach), (0, -reach)]
    past = [(reach + 1, 0), (-reach - 1, 0), (0, reach + 1), (0, -reach - 1)]
    images = as_tensor(
        *(np.roll(query, roll, axis=(0, 1)) for roll in within + past),
        ndimage.shift(query, (0.5, -0.5), order=3, mode="grid-wrap"),
        smooth_image(4),
    )
    queries = as_tensor(query, smooth_image(5))
    every = peak_correlations(queries, images, reach)
    assert every.shape == (len(images), 2)
    assert every[: len(within), 0].numpy() == pytest.approx(np.ones(len(within)), abs=1e-5)
    assert every[len(within) : -2, 0].max() < 0.95
    assert float(every[-2, 0]) == pytest.approx(1.0, abs=0.01)
    assert float(every[-1, 0]) < 0.6 and every[:, 1].max() < 0.6
    pairs = (torch.tensor([0, 1, 0, 0]), torch.tensor([len(within), 0, 3, len(images) - 1]))
    chosen = peak_correlations(queries, images, reach, pairs)
    assert chosen.numpy() == pytest.approx(every[pairs[1], pairs[0]].numpy(), abs=1e-6)


def union_ncc(a: np.ndarray, b: np.ndarray) -> float:
    """NCC over the pixels that are foreground (above FOREGROUND_LEVEL) in either image."""
    union = (a > FOREGROUND_LEVEL) | (b > FOREGROUND_LEVEL)
    return float(np.corrcoef(a[union], b[union])[0, 1])


def two_blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two textured discs on a zero background that overlap in part: pixels are either 0
    or at least 0.3, far from the foreground level."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    a = np.where(np.hypot(rows - 14, cols - 14) < 9, rng.uniform(0.3, 1.0, (SIZE, SIZE)), 0)
    b = np.where(np.hypot(rows - 18, cols - 17) < 9, rng.uniform(0.3, 1.0, (SIZE, SIZE)), 0)
    b = np.where((a > 0) & (b > 0), 0.5 * a + 0.5 * b, b)  # correlated where they overlap
    return a.astype(np.float32), b.astype(np.float32)


def test_foreground_ncc_is_the_correlation_over_the_union_of_the_foregrounds():
    """Pixels background in both images are left out; those foreground in only one count.
    The smooth-edged version the refinement optimises agrees on images far from the level."""
    pairs = [two_blobs(seed) for seed in (7, 8)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    expected = [union_ncc(*p) for p in pairs]
    assert foreground_ncc(a, b).numpy() == pytest.approx(expected, abs=1e-5)
    assert foreground_ncc(b, a).numpy() == pytest.approx(expected, abs=1e-5)
    assert _soft_foreground_ncc(a, b).numpy() == pytest.approx(expected, abs=0.01)
    whole = [float(np.corrcoef(p[0].ravel(), p[1].ravel())[0, 1]) for p in pairs]
    assert np.abs(np.subtract(whole, expected)).min() > 0.05  # the mask matters here


def test_a_pair_needs_its_share_of_foreground_pixels():
    """At 50 x 50 a pair needs MIN_PAIR_FOREGROUND x 2500 = 50 foreground pixels: 50 are
    compared, 49 score 0."""
    size = 50
    needed = round(MIN_PAIR_FOREGROUND * size * size)
    assert needed == MIN_PAIR_FOREGROUND * size * size == 50
    rng = np.random.default_rng(9)
    a = np.zeros((2, size, size), np.float32)
    b = np.zeros((2, size, size), np.float32)
    for i, count in enumerate((needed, needed - 1)):
        a[i].flat[:count] = rng.uniform(0.3, 1.0, count)
        b[i].flat[:count] = a[i].flat[:count] + rng.normal(0, 0.05, count)
    ncc = foreground_ncc(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert ncc[0] == pytest.approx(union_ncc(a[0], b[0]), abs=1e-5) and ncc[0] > 0.5
    assert ncc[1] == 0.0


def test_foreground_ncc_gives_zero_to_a_pair_with_almost_no_foreground():
    """The tip of the head carries no evidence: its pair scores 0 even when the pixels it
    has match, while the other pairs of the batch keep their NCC."""
    rng = np.random.default_rng(6)
    full = rng.uniform(0.2, 1.0, (2, SIZE, SIZE)).astype(np.float32)
    tip = np.zeros((SIZE, SIZE), np.float32)
    tip[10:12, 10:12] = [[0.5, 0.9], [0.7, 0.3]]
    a = torch.from_numpy(np.stack([full[0], tip, full[1]]))
    b = torch.from_numpy(np.stack([full[0] * 0.5, tip, 1.2 - full[1]]))
    ncc = foreground_ncc(a, b).numpy()
    expected = np.corrcoef(full[1].ravel(), (1.2 - full[1]).ravel())[0, 1]
    assert ncc == pytest.approx([1.0, 0.0, expected], abs=1e-5)


# ---- refinement --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slice_64():
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    return thumbnails(make_subject(template, 1)[28:29], (3.0, 3.0), 64)[0]


def refine(settings, train, query, angle, stretch, shift):
    """_refine of one pose of the training slice, started at (angle, stretch, shift)."""
    start = _Poses(
        which=torch.zeros(1, dtype=torch.int64),
        flip=torch.zeros(1, dtype=torch.int64),  # "none"
        angle=torch.tensor([float(angle)]),
        stretch=torch.tensor([stretch], dtype=torch.float32),
        shift=torch.tensor([shift], dtype=torch.float32),
    )
    poses, score = Verifier(settings)._refine(
        as_unit_images(query[None]), as_unit_images(train[None]), start
    )
    return poses, float(score[0])


BOX_CASES = {
    # the parameter that ends on its box: (angle, stretch, shift) of the copy, the start
    "angle": ((9.0, (1.0, 1.0), (0.0, 0.0)), (0.0, (1.0, 1.0), (0.0, 0.0))),
    "stretch x": ((0.0, (1.2, 1.0), (0.0, 0.0)), (0.0, (1.0, 1.0), (0.0, 0.0))),
    "stretch y": ((0.0, (1.0, 0.85), (0.0, 0.0)), (0.0, (1.0, 1.0), (0.0, 0.0))),
    "shift x": ((0.0, (1.0, 1.0), (5.0, 0.0)), (0.0, (1.0, 1.0), (0.0, 0.0))),
    "shift y": ((0.0, (1.0, 1.0), (0.0, -5.0)), (0.0, (1.0, 1.0), (0.0, 0.0))),
    "stretch y bound": ((0.0, (1.0, 1.45), (0.0, 0.0)), (0.0, (1.0, 1.25), (0.0, 0.0))),
    "stretch x bound": ((0.0, (1.45, 1.0), (0.0, 0.0)), (0.0, (1.25, 1.0), (0.0, 0.0))),
    "stretch x low bound": ((0.0, (0.7, 1.0), (0.0, 0.0)), (0.0, (0.83, 1.0), (0.0, 0.0))),
}


def as_parameters(angle, stretch, shift) -> dict:
    return {
        "angle": float(angle),
        "stretch x": float(stretch[0]),
        "stretch y": float(stretch[1]),
        "shift x": float(shift[0]),
        "shift y": float(shift[1]),
    }


@pytest.mark.parametrize("case", BOX_CASES)
def test_refinement_stops_at_the_edge_of_its_box(slice_64, case):
    """A copy further from the start than refinement may move: the pose ends on the edge
    of its box (refine_angle degrees, refine_stretch log units, refine_shift pixels, and
    never past stretch_bounds), on the copy's side; the others stay near their start
    (they may lean a little to make up for it)."""
    s = VerifySettings()
    truth, start = BOX_CASES[case]
    poses, _ = refine(s, slice_64, ndimage_posed(slice_64, "none", *truth), *start)
    found = as_parameters(poses.angle[0], poses.stretch[0], poses.shift[0])
    began = as_parameters(*start)
    edge = {
        "angle": began["angle"] + s.refine_angle,
        "stretch x": began["stretch x"] * math.exp(s.refine_stretch),
        "stretch y": began["stretch y"] * math.exp(-s.refine_stretch),
        "shift x": began["shift x"] + s.refine_shift,
        "shift y": began["shift y"] - s.refine_shift,
        "stretch y bound": s.stretch_bounds[1],
        "stretch x bound": s.stretch_bounds[1],
        "stretch x low bound": s.stretch_bounds[0],
    }[case]
    name = case.removesuffix(" bound").removesuffix(" low")
    assert found.pop(name) == pytest.approx(edge, abs=1e-4)
    near = {"angle": 3.0, "stretch x": 0.05, "stretch y": 0.05, "shift x": 1.5, "shift y": 1.5}
    for other, value in found.items():  # the parameters the copy does not pull on
        assert value == pytest.approx(began[other], abs=near[other])


def reference_refinement(settings, query, image, start):
    """The documented refinement written with torch.optim.Adam: parameters (angle in
    degrees, 100 x log stretch along x and y, shift in pixels), learning rate on a cosine
    from refine_step to 5 % of it, each step projected on the box, the best iterate kept."""
    s = settings
    q, c = as_unit_images(query[None]), as_unit_images(image[None])
    angle, stretch, shift = start
    x0 = torch.tensor([[angle, 100 * math.log(stretch[0]), 100 * math.log(stretch[1]), *shift]])
    x0 = x0.to(torch.float32)
    reach = torch.tensor(
        [
            s.refine_angle,
            100 * s.refine_stretch,
            100 * s.refine_stretch,
            s.refine_shift,
            s.refine_shift,
        ]
    )
    low, high = x0 - reach, x0 + reach
    bounds = [100 * math.log(b) for b in s.stretch_bounds]
    low[:, 1:3] = low[:, 1:3].clamp(*bounds)
    high[:, 1:3] = high[:, 1:3].clamp(*bounds)

    def score(p):
        thetas = pose_matrices(
            torch.ones(1, 2), p[:, 0], torch.exp(p[:, 1:3] / 100), p[:, 3:5], q.shape[-1]
        )
        return _soft_foreground_ncc(q, warp(c, thetas))

    x = x0.clone().requires_grad_(True)
    adam = torch.optim.Adam([x], lr=s.refine_step, betas=(0.9, 0.999), eps=1e-8)
    best, best_x = -math.inf, x0
    for t in range(s.refine_iterations):
        cosine = 0.5 * (1 + math.cos(math.pi * t / s.refine_iterations))
        adam.param_groups[0]["lr"] = s.refine_step * (0.05 + 0.95 * cosine)
        adam.zero_grad()
        value = score(x)
        (-value.sum()).backward()
        if float(value.detach()) > best:
            best, best_x = float(value.detach()), x.detach().clone()
        adam.step()
        with torch.no_grad():
            x.copy_(torch.minimum(torch.maximum(x, low), high))
    with torch.no_grad():
        if float(score(x)) > best:
            best_x = x.detach().clone()
    p = best_x[0].numpy()
    return as_parameters(p[0], np.exp(p[1:3] / 100), p[3:5])


@pytest.mark.parametrize(
    "iterations, step, inverted",
    [(30, 0.5, False), (7, 0.5, False), (8, 3.0, False), (10, 0.5, True)],
)
def test_refinement_equals_projected_adam_written_with_torch_optim(
    slice_64, iterations, step, inverted
):
    """The batched hand-written Adam (one pose's moments, step and box its own) lands
    where torch.optim.Adam, stepped and projected pose by pose, lands. With steps of 3
    units the iterates overshoot, so the best one is not the last; with the head's
    intensities inverted every NCC is negative, and the best iterate still counts."""
    s = VerifySettings(refine_iterations=iterations, refine_step=step)
    query = ndimage_posed(slice_64, "none", 5.0, (1.08, 0.96), (1.5, -1.0))
    if inverted:
        query = np.where(query > 40, 255 - query, 0).astype(np.uint8)
    start = (2.0, (1.03, 0.98), (0.5, 0.0))
    poses, score = refine(s, slice_64, query, *start)
    found = as_parameters(poses.angle[0], poses.stretch[0], poses.shift[0])
    expected = reference_refinement(s, query, slice_64, start)
    assert (score < 0) == inverted
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, abs=1e-4), name


def test_refinement_first_step_is_the_learning_rate_for_every_parameter(slice_64):
    """Adam's bias-corrected first step is refine_step along every parameter, whatever its
    gradient's size: degrees, stretch in 100 x log units, pixels. Started off the copy's
    pose in each, one iteration moves each by exactly that and improves the score."""
    s = VerifySettings(refine_iterations=1)
    query = ndimage_posed(slice_64, "none", 6.0, (1.06, 0.95), (2.0, -2.0))
    start = (3.0, (1.0, 1.0), (0.0, 0.0))
    _, before = refine(VerifySettings(refine_iterations=0), slice_64, query, *start)
    poses, after = refine(s, slice_64, query, *start)
    moved = np.concatenate(
        [
            [float(poses.angle[0]) - start[0]],
            100.0 * np.log(poses.stretch[0].numpy()),
            poses.shift[0].numpy(),
        ]
    )
    assert np.abs(moved) == pytest.approx(np.full(5, s.refine_step), abs=1e-3)
    assert after > before


def test_refinement_is_kept_only_where_it_raises_the_score(slice_64):
    """align() compares each refined pose's NCC with the unrefined one's and keeps the
    higher: a refinement that lowers it is dropped, one that raises it is taken."""
    query = ndimage_posed(slice_64, "none", 6.0, (1.0, 1.0), (1.0, -1.0))[None]
    bank = np.stack([slice_64, np.flipud(slice_64)])
    candidates = np.array([[0, 1]])
    unrefined = Verifier(VerifySettings(refine=False)).align(query, bank, candidates)

    class Refining(Verifier):
        def __init__(self, score):
            super().__init__()
            self.score = score

        def _refine(self, queries, images, poses):
            moved = _Poses(poses.which, poses.flip, poses.angle + 5.0, poses.stretch, poses.shift)
            return moved, torch.full((len(poses.which),), self.score, dtype=torch.float64)

    worse = Refining(unrefined.ncc[0] - 0.1).align(query, bank, candidates)
    assert worse.angle[0] == pytest.approx(unrefined.angle[0], abs=1e-6)
    assert worse.ncc[0] == pytest.approx(unrefined.ncc[0], abs=1e-6)
    tie = Refining(unrefined.ncc[0]).align(query, bank, candidates)  # no gain: not taken
    assert tie.angle[0] == pytest.approx(unrefined.angle[0], abs=1e-6)
    better = Refining(0.9999).align(query, bank, candidates)
    assert better.angle[0] == pytest.approx(unrefined.angle[0] + 5.0, abs=1e-5)
    assert better.ncc[0] == pytest.approx(0.9999, abs=1e-6)


def test_a_pose_without_a_finite_score_never_wins():
    """Two poses of one query, the first with a NaN score: the second is the query's,
    however low its NCC."""
    poses = _Poses(
        which=torch.tensor([0, 1]),
        flip=torch.tensor([0, 2]),
        angle=torch.tensor([3.0, -4.0]),
        stretch=torch.ones(2, 2),
        shift=torch.zeros(2, 2),
    )
    out = _best_per_query(
        1,
        torch.tensor([0, 0]),
        poses,
        torch.tensor([7, 9]),
        torch.tensor([math.nan, -0.5]),
        np.array([-0.5]),
        settled=False,
    )
    assert out.candidate[0] == 9 and out.angle[0] == -4.0 and out.ncc[0] == pytest.approx(-0.5)


def test_poses_within_a_flip_run_angle_major_then_stretch():
    """Peaks are laid out per flip as (angle 0, no stretch), (angle 0, measured stretch),
    (angle 1, no stretch), ...: pose index p is angle p // 2, measured stretch if p is odd."""
    angles = (-5.0, 0.0, 5.0)
    measured = torch.tensor([[1.1, 0.9], [1.2, 1.05]])
    poses = Verifier()._poses(
        which=torch.tensor([0, 0, 1, 1, 1, 0]),
        flip=torch.tensor([0, 1, 2, 3, 0, 1]),
        pose=torch.tensor([0, 1, 2, 3, 4, 5]),
        stretch=measured,
        angles=angles,
    )
    assert poses.angle.tolist() == [-5.0, -5.0, 0.0, 0.0, 5.0, 5.0]
    expected = [[1, 1], [1.1, 0.9], [1, 1], [1.2, 1.05], [1, 1], [1.1, 0.9]]
    assert poses.stretch.numpy() == pytest.approx(np.array(expected), abs=1e-6)
    assert poses.flip.tolist() == [0, 1, 2, 3, 0, 1]
    assert not poses.shift.any()


def test_without_a_gate_no_slice_is_settled_whatever_its_check_value(slice_64):
    """settle_below=None means no gate at all, not a gate at 0: a query whose check value
    is negative is still refined and keeps its aligned NCC as its score."""

    class NegativeCheck(Verifier):
        def _search(self, q, c, stretch, settle_below):
            _, at_check, best = super()._search(q, c, stretch, -math.inf)
            check = -0.3
            return check, at_check, None if check < settle_below else best

    query = ndimage_posed(slice_64, "none", 3.0, (1.0, 1.0), (1.0, 0.0))[None]
    result = NegativeCheck().align(query, slice_64[None], np.array([[0]]))
    assert result.check[0] == -0.3
    assert not result.settled[0] and result.score[0] == result.ncc[0] > 0.9


def test_a_check_value_equal_to_the_gate_is_not_settled(slice_64):
    """Settled means below the gate, in scoring (settle_below) and in the null (settle)
    alike: a query whose check value is the gate itself is refined in both."""
    query = ndimage_posed(slice_64, "none", 6.0, (1.0, 1.0), (1.0, -1.0))[None]
    bank, candidates = np.stack([slice_64, np.flipud(slice_64)]), np.array([[0, 1]])
    full, checked = Verifier().align(query, bank, candidates, keep_checked=True)
    gate = float(full.check[0])
    assert not settle(full, checked, gate).settled[0]
    gated = Verifier().align(query, bank, candidates, settle_below=gate)
    assert not gated.settled[0]
    assert gated.ncc[0] == pytest.approx(full.ncc[0], abs=1e-6)  # refined, as ungated
    assert settle(full, checked, np.nextafter(gate, 2.0)).settled[0]


def test_when_every_query_is_settled_none_is_refined(slice_64, monkeypatch):
    """A gate above every check value: each query keeps its check alignment, and the
    refinement never runs."""
    queries = np.stack(
        [ndimage_posed(slice_64, "none", a, (1.0, 1.0), (0.0, 0.0)) for a in (4, -6)]
    )
    bank, candidates = np.stack([slice_64, np.flipud(slice_64)]), np.array([[0, 1], [1, 0]])
    _, checked = Verifier().align(queries, bank, candidates, keep_checked=True)
    monkeypatch.setattr(Verifier, "_refine", lambda *a: pytest.fail("refined a settled query"))
    result = Verifier().align(queries, bank, candidates, settle_below=2.0)
    assert result.settled.all() and (result.score == -1.0).all()
    assert result.ncc.tolist() == checked.ncc.tolist()
    assert result.angle.tolist() == checked.angle.tolist()


def test_without_refinement_a_pose_sits_on_the_search_grid(slice_64):
    """refine=False: the pose is the coarse search's. A copy turned halfway between the
    ranking's 5 degree steps is found at its angle on the 2.5 degree grid, which only the
    search near the ranking's best angle tries."""
    query = ndimage_posed(slice_64, "none", -7.5, (1.0, 1.0), (0.0, 0.0))[None]
    settings = VerifySettings(refine=False)
    result = Verifier(settings).align(query, slice_64[None], np.array([[0]]))
    assert result.angle[0] == -7.5
    assert result.ncc[0] > 0.97


def test_progress_follows_each_query():
    class Recorder:
        def __init__(self):
            self.calls = []

        def update(self, done, of=None):
            self.calls.append((done, of))

    rng = np.random.default_rng(10)
    bank = (rng.uniform(0, 255, (3, 24, 24))).astype(np.uint8)
    recorder = Recorder()
    Verifier().align(bank, bank, np.array([[0, 1], [1, 2], [2, 0]]), progress=recorder)
    assert recorder.calls == [(1, 3), (2, 3), (3, 3)]


def test_the_ranking_passes_on_its_best_candidates():
    """Nine candidates, the ranking keeps two: the true source (a noisy copy's) is among
    them wherever it stands in the candidate list, and is the one aligned."""
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    bank = thumbnails(make_subject(template, 1)[16:43:3], (3.0, 3.0), 64)
    rng = np.random.default_rng(11)
    settings = VerifySettings(rank_keep=2)
    for source in (0, 4, 8):
        query = ndimage_posed(bank[source], "hflip", 8.0, (1.0, 1.0), (1.0, 2.0))
        query = np.clip(query + rng.normal(0, 5, query.shape), 0, 255).astype(np.uint8)
        order = np.roll(np.arange(9), source)[None]
        result = Verifier(settings).align(query[None], bank, order)
        assert result.candidate[0] == source and result.ncc[0] > 0.95


def test_settings_cannot_change_under_a_bank():
    """The bank and every scoring run share one VerifySettings: it is frozen."""
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        VerifySettings().refine = False


def test_faint_images_correlate_as_strongly_as_bright_ones():
    """Correlation is blind to intensity scale: a copy at a hundredth of the contrast (sums
    of squares far below 1) peaks at 1 in both shift searches, and a low-contrast pair's
    foreground NCC is its correlation."""
    query = smooth_image(12) * 0.01
    rolled = np.roll(query, (2, -3), axis=(0, 1))
    shifts, peaks = best_shifts(as_tensor(query)[0], as_tensor(rolled), 8)
    assert shifts[0].numpy() == pytest.approx((3.0, -2.0), abs=1e-4)
    assert float(peaks[0]) == pytest.approx(1.0, abs=1e-4)
    assert float(peak_correlations(as_tensor(query), as_tensor(rolled), 8)[0, 0]) == (
        pytest.approx(1.0, abs=1e-4)
    )
    rng = np.random.default_rng(13)
    faint = (0.5 + 0.005 * rng.normal(size=(1, SIZE, SIZE))).astype(np.float32)
    other = (faint + 0.002 * rng.normal(size=faint.shape)).astype(np.float32)
    expected = np.corrcoef(faint.ravel(), other.ravel())[0, 1]
    ncc = foreground_ncc(torch.from_numpy(faint), torch.from_numpy(other))
    assert float(ncc[0]) == pytest.approx(expected, abs=1e-3)


def test_a_uniform_foreground_scores_zero_not_nan():
    """A pair with foreground but no variation (a flat disc) has no correlation to speak
    of: about 0 (what rounding leaves), never NaN (which would poison the null's quantiles)
    and never the 1 that rounding noise over rounding noise gives."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    disc = np.where(np.hypot(rows - 16, cols - 16) < 10, 0.6, 0.0).astype(np.float32)
    ncc = foreground_ncc(torch.from_numpy(disc[None]), torch.from_numpy(disc[None]))
    assert abs(float(ncc[0])) < 0.01


@pytest.mark.parametrize("angle", [20.0, -20.0])
def test_the_search_reaches_the_ends_of_its_angle_range(slice_64, angle):
    """Turns up to 20 degrees either way are searched: with refinement off a copy turned by
    exactly 20 degrees is found there, not at the nearest inner angle."""
    query = ndimage_posed(slice_64, "none", angle, (1.0, 1.0), (0.0, 0.0))[None]
    result = Verifier(VerifySettings(refine=False)).align(query, slice_64[None], np.array([[0]]))
    assert result.angle[0] == angle


def test_a_blank_image_correlates_with_nothing():
    """A blank thumbnail (no signal at all) among the candidates: its peaks are 0 in both
    shift searches, never NaN, and the other images' peaks are untouched."""
    query = smooth_image(14)
    images = as_tensor(np.roll(query, (1, 2), axis=(0, 1)), np.zeros_like(query))
    _, peaks = best_shifts(as_tensor(query)[0], images, 8)
    assert peaks.numpy() == pytest.approx([1.0, 0.0], abs=1e-5)
    every = peak_correlations(as_tensor(query), images, 8)
    assert every[:, 0].numpy() == pytest.approx([1.0, 0.0], abs=1e-5)
