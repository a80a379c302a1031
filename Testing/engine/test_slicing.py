"""scans/slicing.py on images built in memory, with every expected value derived by hand.

Volumes are [z, y, x] arrays whose voxels carry their own index (value = 10000 z + 100 y + x)
or hand-placed foreground, so a slice's pixels, its LPS centre and the kept indices can be
written down without running the code's own formulas.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.errors import InputError, SettingsError
from MemorizationIndexLib.scans.slicing import NOISE_REACH, ReadOptions, scan_from_image


def image(values, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.asarray(values))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def coded(nz, ny, nx):
    z, y, x = np.indices((nz, ny, nx))
    return (10000 * z + 100 * y + x + 1).astype(np.float32)  # + 1: no voxel is 0


ZERO = ReadOptions(min_foreground=0)  # every non-constant slice is kept


def read(values, axis="axial", **kw):
    """Slices of an in-memory image (coded volumes: min_foreground=0 keeps every slice)."""
    options = {k: kw.pop(k) for k in ("stride", "min_foreground") if k in kw}
    return scan_from_image(image(values, **kw), "mem", ReadOptions(axis=axis, **options))


# ---- read options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"axis": "axial"},
        {"axis": "sagittal", "stride": 1},
        {"stride": np.int64(3)},
        {"min_foreground": 0},
        {"min_foreground": 0.999},
    ],
)
def test_valid_read_options(kwargs):
    ReadOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axis": "oblique"}, "axis must be one of axial, coronal, sagittal (got 'oblique')"),
        ({"stride": 0}, "stride must be at least 1 (got 0)"),
        ({"stride": True}, "stride must be a whole number (got True)"),
        ({"stride": 2.0}, "stride must be a whole number (got 2.0)"),
        ({"min_foreground": 1}, "min_foreground must be a fraction in [0, 1) (got 1)"),
        ({"min_foreground": -0.01}, "min_foreground must be a fraction"),
        ({"min_foreground": 1.5}, "min_foreground must be a fraction"),
        ({"min_foreground": True}, "min_foreground must be a fraction"),
        ({"min_foreground": "0.1"}, "min_foreground must be a fraction"),
    ],
)
def test_invalid_read_options(kwargs, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        ReadOptions(**kwargs)


def test_default_read_options():
    assert ReadOptions() == ReadOptions(axis="axial", stride=1, min_foreground=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):  # shared as a default argument
        ReadOptions().stride = 2


# ---- slices, their display orientation, centres and spacing -------------------------------


def test_axial_slices_are_the_z_planes_as_stored():
    values = coded(4, 18, 17)
    vol = read(values, spacing=(0.5, 0.75, 2.0), origin=(10.0, -20.0, 30.0), min_foreground=0)
    assert vol.slice_indices.tolist() == [0, 1, 2, 3] and vol.n_total_slices == 4
    assert vol.slices.dtype == np.float32 and vol.slices.flags["C_CONTIGUOUS"]
    assert np.array_equal(vol.slices, values)
    assert vol.pixel_spacing == (0.75, 0.5)  # (row = y, col = x)
    # centre of plane k: x index 8, y index 8.5, z index k
    expected = [[10.0 + 8 * 0.5, -20.0 + 8.5 * 0.75, 30.0 + 2.0 * k] for k in range(4)]
    assert np.allclose(vol.positions, expected, atol=1e-9)
    assert vol.source == "mem" and vol.series_uid == "" and vol.warnings == []


def test_coronal_slices_have_superior_on_top():
    values = coded(17, 5, 18)  # z, y, x
    vol = read(values, "coronal", spacing=(0.5, 3.0, 2.0), origin=(1.0, 2.0, 3.0), min_foreground=0)
    assert vol.slices.shape == (5, 17, 18) and vol.n_total_slices == 5
    k = 3
    for r, c in [(0, 0), (0, 17), (16, 5), (7, 9)]:
        assert vol.slices[k][r, c] == values[16 - r, k, c]  # row 0 is the highest z
    assert vol.pixel_spacing == (2.0, 0.5)  # (row = z, col = x)
    assert np.allclose(vol.positions[k], [1.0 + 8.5 * 0.5, 2.0 + 3 * 3.0, 3.0 + 8 * 2.0])


def test_sagittal_slices_have_superior_on_top():
    values = coded(17, 19, 4)  # z, y, x
    vol = read(
        values, "sagittal", spacing=(3.0, 0.5, 2.0), origin=(1.0, 2.0, 3.0), min_foreground=0
    )
    assert vol.slices.shape == (4, 17, 19) and vol.n_total_slices == 4
    k = 2
    for r, c in [(0, 0), (0, 18), (16, 4), (9, 11)]:
        assert vol.slices[k][r, c] == values[16 - r, c, k]
    assert vol.pixel_spacing == (2.0, 0.5)  # (row = z, col = y)
    assert np.allclose(vol.positions[k], [1.0 + 2 * 3.0, 2.0 + 9 * 0.5, 3.0 + 8 * 2.0])


def test_an_image_stored_upside_down_is_read_in_lps():
    values = coded(3, 16, 16)
    # direction diag(1, 1, -1): array z runs inferior; the origin is the top plane
    vol = read(
        values, direction=(1, 0, 0, 0, 1, 0, 0, 0, -1), origin=(0.0, 0.0, 10.0), min_foreground=0
    )
    assert np.array_equal(vol.slices, values[::-1])
    assert np.allclose(vol.positions[:, 2], [8.0, 9.0, 10.0])
    assert vol.image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert vol.warnings == []


def test_slices_need_sixteen_pixels_a_side():
    read(coded(3, 16, 16))
    with pytest.raises(InputError, match="mem: its axial slices are 16x15 pixels; .* at least 16"):
        read(coded(3, 16, 15))
    with pytest.raises(InputError, match="its coronal slices are 15x20 pixels"):
        read(coded(15, 20, 20), "coronal")
    with pytest.raises(InputError, match="its sagittal slices are 20x15 pixels"):
        read(coded(20, 15, 20), "sagittal")


# ---- which slices are kept ----------------------------------------------------------------


def blobs(counts, value=100.0, size=16):
    """Axial planes of zeros, plane k with counts[k] pixels at `value`."""
    out = np.zeros((len(counts), size, size), np.float32)
    for k, n in enumerate(counts):
        out[k].flat[:n] = value
    return out


def test_a_slice_is_kept_from_exactly_min_foreground_of_its_pixels():
    # 1 % and more of the voxels are 100, the rest 0: p1 = 0, p99 = 100, threshold 10.
    # 16 of 256 pixels is exactly 1/16.
    vol = read(blobs([16, 15, 40, 0, 16, 17, 15, 60]), min_foreground=1 / 16)
    assert vol.slice_indices.tolist() == [0, 2, 4, 5, 7]
    assert vol.n_total_slices == 8 and len(vol.slices) == 5


def test_foreground_is_above_a_tenth_of_the_way_from_p1_to_p99():
    values = blobs([20] * 6)  # threshold 0 + 0.1 * (100 - 0) = 10
    values[1].flat[200:230] = 10.0  # at the threshold: background
    values[1].flat[:20] = 0.0
    values[2].flat[:20] = 0.0
    values[2].flat[200:230] = 10.5  # just above: foreground
    vol = read(values, min_foreground=0.1)
    assert vol.slice_indices.tolist() == [2]
    vol = read(values, min_foreground=0.05)
    assert vol.slice_indices.tolist() == [0, 2, 3, 4, 5]


def test_the_threshold_is_taken_from_the_1st_and_99th_percentiles():
    # voxels 0..1023, plane k holding 256 k .. 256 k + 255 (in scrambled order).
    # p1 = 0.01 * 1023 = 10.23, p99 = 0.99 * 1023 = 1012.77 (linear interpolation), so the
    # threshold is 10.23 + 0.1 * 1002.54 = 110.484: plane 0 has 145 voxels above it (111..255)
    values = np.arange(1024.0)
    values = np.concatenate(
        [np.random.default_rng(k).permutation(values[256 * k : 256 * (k + 1)]) for k in range(4)]
    ).reshape(4, 16, 16)
    assert read(values, min_foreground=145 / 256).slice_indices.tolist() == [0, 1, 2, 3]
    assert read(values, min_foreground=146 / 256).slice_indices.tolist() == [1, 2, 3]


def test_constant_slices_are_never_foreground():
    values = blobs([20, 20, 20])
    values[1] = 100.0  # all foreground but flat (a filled frame)
    assert read(values).slice_indices.tolist() == [0, 2]


def test_stride_is_anchored_to_the_slice_grid():
    counts = [0, 0, 0, 30, 30, 30, 30, 30, 30, 0]
    assert read(blobs(counts), stride=2).slice_indices.tolist() == [4, 6, 8]
    assert read(blobs(counts), stride=3).slice_indices.tolist() == [3, 6]
    assert read(blobs(counts), stride=1).slice_indices.tolist() == [3, 4, 5, 6, 7, 8]
    assert read(blobs(counts), stride=2).slice_indices.dtype == np.int64


def test_no_foreground_and_constant_volumes_are_input_errors():
    with pytest.raises(InputError, match="mem is constant \\(every voxel is 7\\)"):
        read(np.full((4, 16, 16), 7.0, np.float32))
    values = blobs([3, 3, 3, 3])  # 3 of 256 pixels: 1.2 %
    with pytest.raises(
        InputError,
        match=r"mem has no foreground slice: no axial slice has 5% of its pixels above the "
        r"background threshold \(10\)",
    ):
        read(values)
    assert read(values, min_foreground=0.01).slice_indices.tolist() == [0, 1, 2, 3]


# ---- intensity outliers -------------------------------------------------------------------


def spread(low, high, shape=(2, 16, 16)):
    """512 voxels: the 0.5th percentile is 50 and the 99.5th is 150 (flat runs around both
    ranks), so the inlier range is 50 - 10 * 100 to 150 + 10 * 100; `low` and `high` are the
    smallest and largest voxel."""
    values = np.r_[low, np.full(5, 50.0), np.linspace(51, 149, 499), np.full(6, 150.0), high]
    order = np.random.default_rng(0).permutation(values.size)
    return values[order].reshape(shape).astype(np.float64)


def test_voxels_on_the_inlier_bounds_are_inliers():
    vol = read(spread(-950.0, 1150.0))
    assert vol.intensity_bounds == (-950.0, 1150.0)
    assert vol.warnings == []


def test_voxels_beyond_the_bounds_are_counted_and_named():
    vol = read(spread(-950.5, 1150.5))
    assert vol.intensity_bounds == (-950.0, 1150.0)
    assert vol.warnings == [
        "mem has 2 voxel(s) far outside its intensity range (50 to 150 between the 0.5th and "
        "99.5th percentiles); they are left out of the intensity scaling (hot voxels would "
        "otherwise hide the anatomy)."
    ]
    assert "has 1 voxel(s)" in read(spread(-950.0, 5000.0)).warnings[0]
    assert "has 1 voxel(s)" in read(spread(-5000.0, 1150.0)).warnings[0]


# ---- voxel types, dimensions, non-finite values ---------------------------------------------


def test_integer_voxels_are_read_as_float32():
    values = coded(3, 16, 16).astype(np.int32)
    vol = read(values, min_foreground=0)
    assert vol.slices.dtype == np.float32 and np.array_equal(vol.slices, values)
    assert vol.image.GetPixelID() == sitk.sitkFloat32


def test_double_voxels_are_read_as_float32():
    vol = read(coded(3, 16, 16).astype(np.float64), min_foreground=0)
    assert vol.image.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(vol.slices, coded(3, 16, 16))


def test_vector_voxels_are_averaged():
    values = coded(3, 16, 16)
    rgb = np.stack([values, 2 * values, 6 * values], axis=-1)
    img = sitk.GetImageFromArray(rgb, isVector=True)
    img.SetSpacing((1.0, 2.0, 3.0))
    vol = scan_from_image(img, "rgb", ZERO)
    assert np.allclose(vol.slices, 3 * values)
    assert vol.pixel_spacing == (2.0, 1.0)
    assert vol.warnings == [
        "rgb has 3 values per voxel (e.g. RGB or a vector); their mean is used."
    ]


def test_two_component_voxels_are_averaged_too():
    values = coded(3, 16, 16)
    img = sitk.GetImageFromArray(np.stack([values, 3 * values], axis=-1), isVector=True)
    vol = scan_from_image(img, "pair", ZERO)
    assert np.allclose(vol.slices, 2 * values)
    assert vol.warnings[0].startswith("pair has 2 values per voxel")


def test_only_non_lps_images_are_reoriented_with_itk_warnings_off(monkeypatch):
    seen = []
    orient = sitk.DICOMOrient

    def spy(image, orientation):
        seen.append(sitk.ProcessObject.GetGlobalWarningDisplay())
        return orient(image, orientation)

    monkeypatch.setattr(sitk, "DICOMOrient", spy)
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(True)
    try:
        read(coded(3, 16, 16), min_foreground=0)  # already LPS: not reoriented (no copy)
        assert seen == []
        read(coded(3, 16, 16), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1), min_foreground=0)
        assert seen == [False]
        assert sitk.ProcessObject.GetGlobalWarningDisplay() is True
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def test_complex_voxels_are_refused():
    img = sitk.GetImageFromArray(coded(3, 16, 16).astype(np.complex64))
    with pytest.raises(InputError, match="c has complex-valued voxels"):
        scan_from_image(img, "c")


def test_4d_images_use_their_first_volume():
    values = np.stack([coded(3, 16, 16), -coded(3, 16, 16)])  # [t, z, y, x]
    vol = scan_from_image(sitk.GetImageFromArray(values, isVector=False), "4d", ZERO)
    assert np.array_equal(vol.slices, values[0])
    assert vol.warnings == [
        "4d is a 4D image (16x16x3x2); only its first 3D volume (index 0 along the extra "
        "axes, e.g. the first time point or echo) is used."
    ]
    single = scan_from_image(sitk.GetImageFromArray(values[:1], isVector=False), "4d", ZERO)
    assert np.array_equal(single.slices, values[0]) and single.warnings == []


def test_2d_images_are_one_slice_and_a_line_is_refused_with_its_size():
    flat = scan_from_image(sitk.GetImageFromArray(coded(1, 16, 16)[0]), "flat")
    thin = scan_from_image(sitk.GetImageFromArray(coded(1, 16, 17)), "thin")
    for image, rows, cols in ((flat, 16, 16), (thin, 16, 17)):
        assert image.is_2d and image.slices.shape == (1, rows, cols)
    np.testing.assert_array_equal(thin.slices[0], coded(1, 16, 17)[0])
    with pytest.raises(InputError, match=r"line is a 17x1x1 image, neither a 2D image"):
        scan_from_image(sitk.GetImageFromArray(coded(1, 1, 17)), "line")


def rotated_about_z(degrees):
    a = np.radians(degrees)
    return (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)


def test_oblique_images_are_named_from_one_degree():
    assert read(coded(3, 16, 16), direction=rotated_about_z(0.9)).warnings == []
    warnings = read(coded(3, 16, 16), direction=rotated_about_z(2.0)).warnings
    assert len(warnings) == 1
    assert warnings[0].startswith("mem is oblique (2.0 degrees from the LPS axes)")


def test_nan_and_infinite_voxels_become_the_finite_minimum():
    values = coded(3, 16, 16)
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]
    vol = read(values, min_foreground=0)
    assert vol.slices[0, 0, :4].tolist() == [4.0, 4.0, 4.0, 4.0]  # voxels 1..3 are gone: 4
    assert vol.warnings == [
        "mem has 3 NaN or infinite voxel(s); they were set to the volume's finite minimum (4)."
    ]
    with pytest.raises(InputError, match="mem has no finite voxel"):
        read(np.full((3, 16, 16), np.nan, np.float32))


def rician_phantom(sigma, seed=0):
    """An ellipsoid of tissue (0.6-1.0) in a 60 x 64 x 64 field of view; with sigma > 0 the
    magnitude of complex Gaussian noise over the whole field (Rician; Rayleigh outside)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:60, :64, :64]
    inside = ((z - 30) / 22.0) ** 2 + ((y - 32) / 27.0) ** 2 + ((x - 32) / 24.0) ** 2 < 1
    signal = np.where(inside, 0.6 + 0.4 * rng.random(inside.shape), 0.0)
    noisy = np.abs(
        signal + sigma * (rng.normal(size=signal.shape) + 1j * rng.normal(size=signal.shape))
    )
    tissue_share = inside.mean(axis=(1, 2))
    return noisy.astype(np.float32), np.flatnonzero(tissue_share >= 0.05)


def test_slices_of_pure_rician_background_are_not_foreground():
    # sigma 4.5 % of the tissue's peak: about 8 % of pure-noise pixels pass the percentile
    # threshold, so every plane of the field of view passed the 5 % rule before
    values, anatomy = rician_phantom(0.045)
    before = values > np.percentile(values, 1) + 0.1 * np.ptp(np.percentile(values, [1, 99]))
    assert (before.mean(axis=(1, 2)) >= 0.05).all()  # the old rule kept all 60 planes
    assert read(values).slice_indices.tolist() == anatomy.tolist()
    # much stronger noise: still only the planes with anatomy
    values, anatomy = rician_phantom(0.08, seed=1)
    assert read(values).slice_indices.tolist() == anatomy.tolist()


def test_a_zero_background_or_no_background_keeps_the_percentile_rule():
    clean, anatomy = rician_phantom(0.0)
    assert read(clean).slice_indices.tolist() == anatomy.tolist()
    # a tight crop: every voxel is tissue, nothing is background noise
    rng = np.random.default_rng(3)
    crop = (0.3 + 0.7 * rng.random((12, 32, 32))).astype(np.float32)
    assert read(crop).slice_indices.tolist() == list(range(12))


@pytest.mark.parametrize("zoom", [0.8, 0.9])
def test_a_zoomed_out_copys_quieter_border_does_not_let_its_background_through(zoom):
    """A copy shrunk by scipy with zero fill: its border carries only the generator's noise,
    a third of the scan's own, and the histogram's mode is that quieter noise, under whose
    floor the scan's background passed. The floor clears the loudest noise present."""
    from MemorizationIndexLib.scans.slicing import noise_floor
    from scipy import ndimage

    rng = np.random.default_rng(4)
    z, y, x = np.mgrid[:60, :64, :64]
    inside = ((z - 30) / 22.0) ** 2 + ((y - 32) / 27.0) ** 2 + ((x - 32) / 24.0) ** 2 < 1
    signal = np.where(inside, 0.6 + 0.4 * rng.random(inside.shape), 0.0)
    scan = np.abs(signal + 0.06 * (rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape)))
    centre = (np.array(scan.shape) - 1) / 2.0
    matrix = np.eye(3) / zoom  # the content shrunk about the centre, zero outside
    offset = centre - matrix @ centre
    shrunk = ndimage.affine_transform(scan, matrix, offset=offset, order=1)
    quiet = 0.02 * (rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape))
    copy = np.abs(shrunk + quiet).astype(np.float32)
    tissue = ndimage.affine_transform(inside.astype(float), matrix, offset=offset, order=0)
    anatomy = np.flatnonzero(tissue.mean(axis=(1, 2)) >= 0.05)
    # the quieter noise's floor alone lets planes of the scan's background through
    p1, p99 = np.percentile(copy, [1, 99])
    quiet_floor = p1 + NOISE_REACH * 0.02
    assert ((copy > quiet_floor).mean(axis=(1, 2)) >= 0.05).sum() > len(anatomy) + 4
    assert noise_floor(copy, p1, p99) > p1 + 3.5 * 0.06
    assert read(copy).slice_indices.tolist() == anatomy.tolist()
