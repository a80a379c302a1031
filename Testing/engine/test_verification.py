"""Stage 2: candidate slices aligned onto the query recover the pose and score the pixels."""

import numpy as np
import pytest
import torch
from MemorizationIndexLib.demo.cohort import load_template, make_subject
from MemorizationIndexLib.encoding.preprocessing import thumbnails
from MemorizationIndexLib.geometry import flip_axes, sampling_theta, warp
from MemorizationIndexLib.search.verification import Verifier, foreground_ncc
from scipy import ndimage


@pytest.fixture(scope="module")
def slices():
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    a = make_subject(template, 1)
    b = make_subject(template, 2)
    spacing = (3.0, 3.0)
    return thumbnails(a[20:40], spacing, 64), thumbnails(b[20:40], spacing, 64)


@pytest.fixture(scope="module")
def anisotropic():
    """Slices of one subject at 2 mm (rows) x 3 mm (columns), as an anisotropic scan."""
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    volume = make_subject(template, 1)[25:35]
    return ndimage.zoom(volume, (1.0, 1.5, 1.0), order=1), (2.0, 3.0)


def posed(image: np.ndarray, flip, angle, shift, scale=1.0) -> np.ndarray:
    src = torch.from_numpy(image.astype(np.float32))[None]
    out = warp(src, sampling_theta(flip, angle, scale, shift, image.shape[-1])[None])[0]
    return out.numpy().round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "flip, angle, shift",
    [
        ("none", 0.0, (0.0, 0.0)),
        ("hflip", 10.0, (3.0, -2.0)),
        ("vflip", -13.0, (-4.0, 1.5)),
        ("hvflip", 4.0, (1.0, 1.0)),
        ("none", -17.5, (5.0, 0.0)),
    ],
)
def test_pose_of_a_transformed_copy_is_recovered(slices, flip, angle, shift):
    train, _ = slices
    query = posed(train[10], flip, angle, shift)[None]
    candidates = np.array([[9, 10, 11, 3]])
    result = Verifier().align(query, train, candidates)
    assert result.candidate[0] == 10
    assert result.flip[0] == flip
    assert result.angle[0] == pytest.approx(angle, abs=1.5)
    assert np.allclose(result.shift[0], shift, atol=1.0)
    assert result.ncc[0] > 0.97


def test_copies_score_above_other_subjects(slices):
    train, other = slices
    rng = np.random.default_rng(0)
    noisy = np.clip(train[5:15] + rng.normal(0, 8, train[5:15].shape), 0, 255).astype(np.uint8)
    candidates = np.stack([np.clip(np.arange(i - 2, i + 3), 0, 19) for i in range(5, 15)])
    copies = Verifier().align(noisy, train, candidates).ncc
    novel = Verifier().align(other[5:15], train, candidates).ncc
    assert copies.min() > 0.95
    assert novel.max() < copies.min() - 0.03


def test_foreground_ncc_is_intensity_invariant_and_bounded():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.uniform(0.1, 1, (2, 16, 16)).astype(np.float32))
    assert torch.allclose(foreground_ncc(a, a * 0.7), torch.ones(2), atol=1e-5)
    assert torch.all(foreground_ncc(a, 1.1 - a) < 0)
    empty = torch.zeros(1, 16, 16)
    assert torch.isfinite(foreground_ncc(empty, empty)).all()


def test_magnified_copy_is_aligned_with_its_scale(slices):
    """A crop resized back is a magnification; the pose search covers it."""
    train, _ = slices
    query = posed(train[10], "none", 3.0, (1.0, -1.0), scale=1.15)[None]
    result = Verifier().align(query, train, np.array([[9, 10, 11, 3]]))
    assert result.candidate[0] == 10
    assert result.scale[0] == pytest.approx([1.15, 1.15], abs=0.03)
    assert result.ncc[0] > 0.97


@pytest.mark.parametrize(
    "flip, angle, stretch", [("none", -4.0, (1.12, 1.03)), ("vflip", 6.0, (1.02, 1.14))]
)
def test_copy_stretched_differently_along_rows_and_columns_is_aligned(slices, flip, angle, stretch):
    """A crop resized back stretches rows and columns by different amounts: the pose
    recovers each stretch, and the aligned copy scores far above the other subject."""
    train, other = slices
    query = posed(train[10], flip, angle, (1.0, -0.5), scale=stretch)
    both = np.stack([query, other[10]])
    result = Verifier().align(both, train, np.array([[9, 10, 11, 3]] * 2))
    assert result.candidate[0] == 10 and result.flip[0] == flip
    assert result.angle[0] == pytest.approx(angle, abs=1.0)
    assert result.scale[0] == pytest.approx(stretch, abs=0.02)
    assert result.ncc[0] > 0.98
    assert result.ncc[1] < result.ncc[0] - 0.03


# ---- Poses made by an independent tool (scipy.ndimage), not by the module's own warp ------
#
# The convention under test (verification.Alignments, geometry.pose_matrices): the pose maps
# the training slice onto the query, q = D R(angle) Fl (p - c) + c + shift, with p and q in
# pixel coordinates (x = column, y = row, rows running down), c the image centre
# ((S - 1) / 2 with pixel centres at integers), Fl the flip (a sign per axis), R(angle)
# turning +x towards +y (clockwise on screen), D the stretch along x and along y, and the
# shift (dx, dy) in thumbnail pixels. scipy.ndimage.rotate's positive angle turns +x towards
# -y on a [row, col] array (counter-clockwise on screen; checked below on a single bright
# pixel), so a copy rotated by ndimage.rotate(+a) has the engine angle -a.


def ndimage_posed(image: np.ndarray, flip: str, angle: float, stretch, shift) -> np.ndarray:
    """The training slice moved by the documented pose, resampled by ndimage.affine_transform.

    affine_transform samples input[M @ o + offset] at each output index o ([row, col]), so M
    is the inverse pose, p = Fl R(-angle) D^-1 (q - c - shift) + c, written in (row, col).
    """
    a = np.radians(angle)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # (x, y) order
    signs = {"none": (1, 1), "hflip": (-1, 1), "vflip": (1, -1), "hvflip": (-1, -1)}[flip]
    forward = np.diag(stretch) @ rotation @ np.diag(signs)
    inverse = np.linalg.inv(forward)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    centre = np.full(2, (image.shape[-1] - 1) / 2.0)
    m = swap @ inverse @ swap
    offset = swap @ (centre - inverse @ (centre + np.asarray(shift, dtype=float)))
    out = ndimage.affine_transform(image.astype(np.float64), m, offset=offset, order=1)
    return out.round().clip(0, 255).astype(np.uint8)


def test_ndimage_rotate_turns_x_towards_minus_y():
    """The sign fact the tests below rely on, read off a single bright pixel."""
    dot = np.zeros((21, 21))
    dot[10, 15] = 1.0  # 5 pixels along +x from the centre
    row, col = np.unravel_index(
        ndimage.rotate(dot, 30.0, reshape=False, order=1).argmax(), (21, 21)
    )
    assert row < 10 and col > 10  # moved up the screen: towards -y


@pytest.mark.parametrize(
    "flip, angle, stretch, shift",
    [
        ("none", 12.0, (1.0, 1.0), (0.0, 0.0)),
        ("none", -12.0, (1.0, 1.0), (0.0, 0.0)),
        ("hflip", 9.0, (1.0, 1.0), (4.0, -3.0)),
        ("vflip", -7.0, (1.1, 1.0), (-3.0, 2.0)),
        ("hvflip", 15.0, (1.0, 1.0), (2.0, 2.0)),
        ("none", 5.0, (1.04, 1.15), (-2.5, 3.5)),
    ],
)
def test_pose_of_an_independently_transformed_copy(slices, flip, angle, stretch, shift):
    """Flip, signed angle, stretch and shift of a copy moved by scipy, all recovered."""
    train, _ = slices
    query = ndimage_posed(train[10], flip, angle, stretch, shift)[None]
    result = Verifier().align(query, train, np.array([[9, 10, 11, 3]]))
    assert result.candidate[0] == 10 and result.flip[0] == flip
    assert result.angle[0] == pytest.approx(angle, abs=1.0)
    assert result.scale[0] == pytest.approx(stretch, abs=0.03)
    assert result.shift[0] == pytest.approx(shift, abs=0.75)
    assert result.ncc[0] > 0.97


@pytest.mark.parametrize("flip, ndimage_angle", [("none", 11.0), ("hflip", -8.0), ("vflip", 6.0)])
def test_copy_made_with_flip_rotate_and_shift_primitives(slices, flip, ndimage_angle):
    """np.flip, then ndimage.rotate, then ndimage.shift: no matrix written by the test. The
    engine angle is minus ndimage's (see above); the shift is (dx, dy) = (cols, rows)."""
    train, _ = slices
    image = train[10].astype(np.float64)
    if flip != "none":
        image = np.flip(image, axis=flip_axes(flip))
    image = ndimage.rotate(image, ndimage_angle, reshape=False, order=1)
    image = ndimage.shift(image, (-2.0, 3.0), order=1)  # 2 rows up, 3 columns right
    query = image.round().clip(0, 255).astype(np.uint8)[None]
    result = Verifier().align(query, train, np.array([[9, 10, 11, 3]]))
    assert result.candidate[0] == 10 and result.flip[0] == flip
    assert result.angle[0] == pytest.approx(-ndimage_angle, abs=1.0)
    assert result.shift[0] == pytest.approx((3.0, -2.0), abs=0.75)


def test_cropped_and_resized_copy_recovers_stretch_and_shift(slices):
    """A crop resized back (ndimage.zoom, pixel-area aligned): the stretch is the resize
    factor of each axis, the shift what the off-centre crop moved the image centre by."""
    train, _ = slices
    size = train.shape[-1]
    (r0, r1), (c0, c1) = (5, 57), (4, 62)
    crop = train[10, r0:r1, c0:c1].astype(np.float64)
    zoom = (size / (r1 - r0), size / (c1 - c0))
    query = ndimage.zoom(crop, zoom, order=1, grid_mode=True, mode="nearest")
    query = query.round().clip(0, 255).astype(np.uint8)[None]
    centre = (size - 1) / 2.0
    # q = s (p - crop start + 1/2) - 1/2 along each axis; the shift is q(centre) - centre.
    shift_x = zoom[1] * (centre - c0 + 0.5) - 0.5 - centre
    shift_y = zoom[0] * (centre - r0 + 0.5) - 0.5 - centre
    result = Verifier().align(query, train, np.array([[9, 10, 11, 3]]))
    assert result.candidate[0] == 10 and result.flip[0] == "none"
    assert result.angle[0] == pytest.approx(0.0, abs=1.0)
    assert result.scale[0] == pytest.approx((zoom[1], zoom[0]), abs=0.03)
    assert result.shift[0] == pytest.approx((shift_x, shift_y), abs=0.75)


@pytest.mark.parametrize("flip, shift_mm", [("none", (7.5, -5.0)), ("vflip", (-4.5, 6.0))])
def test_shift_in_millimetres_on_an_anisotropic_slice(anisotropic, flip, shift_mm):
    """A copy moved by a known distance in mm at native resolution (2 mm rows, 3 mm columns):
    the recovered shift, in thumbnail pixels times the thumbnail's mm per pixel (the slice's
    longer side over the thumbnail size, aspect kept), is that distance."""
    volume, spacing = anisotropic
    rows, cols = volume.shape[1:]
    original = volume[5]
    moved = np.flip(original, axis=flip_axes(flip)) if flip != "none" else original
    moved = ndimage.shift(moved, (shift_mm[1] / spacing[0], shift_mm[0] / spacing[1]), order=1)
    size = 64
    mm_per_pixel = max(rows * spacing[0], cols * spacing[1]) / size
    train = thumbnails(volume, spacing, size)
    query = thumbnails(moved[None], spacing, size)
    result = Verifier().align(query, train, np.array([[4, 5, 6]]))
    assert result.candidate[0] == 5 and result.flip[0] == flip
    assert result.shift[0] * mm_per_pixel == pytest.approx(shift_mm, abs=0.75 * mm_per_pixel)
