"""Scan discovery and reading on real files written here: formats, orientation, bad input."""

from __future__ import annotations

import itertools
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.errors import InputError, SettingsError
from MemorizationIndexLib.scans import (
    AXES,
    ReadOptions,
    ScanSource,
    ScanVolume,
    SkippedInput,
    find_scans,
    iter_scans,
    read_scan,
    read_scan_reporting,
    scan_from_image,
)

try:  # Testing/engine may become a package
    from . import scan_fixtures as fx
except ImportError:
    import scan_fixtures as fx

SHAPE = (32, 24, 20)  # x, y, z of the default phantom: every view has its own size

# NIfTI affines (RAS+, as NIfTI stores them) with the marker pairs that test anatomy:
# the second marker is more anterior and more to the patient's left than the first, in the
# same axial plane.
# RAS-aligned array with anisotropic spacing: i -> R, j -> A, k -> S.
RAS_AFFINE = np.array([[0.9, 0, 0, -10], [0, 1.1, 0, 5], [0, 0, 2.0, -3], [0, 0, 0, 1]])
RAS_MARKERS = ((20, 8, 9), (17, 11, 9))  # left = smaller i, anterior = larger j
# Permuted and flipped: i -> A, j -> L (-R), k -> I (-S).
PERMUTED_AFFINE = np.array([[0, -1.1, 0, 12], [0.9, 0, 0, -4], [0, 0, -2.0, 40], [0, 0, 0, 1]])
PERMUTED_MARKERS = ((10, 8, 9), (13, 11, 9))  # anterior = larger i, left = larger j


def _lps_extent(affine: np.ndarray, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest LPS coordinate of the voxel centres, from the affine alone."""
    corners = [
        fx.nifti_voxel_lps(affine, c) for c in itertools.product(*[(0, n - 1) for n in shape])
    ]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _pixel_of(volume: ScanVolume, lps, low, high, axis: str) -> tuple[int, int, int]:
    """(kept slice, row, col) where an LPS point must appear, from geometry alone.

    Axial: rows run anterior -> posterior (+y), cols patient right -> left (+x).
    Coronal and sagittal: rows run superior -> inferior; cols +x resp. +y.
    """
    row_mm, col_mm = volume.pixel_spacing
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[axis]
    matches = np.flatnonzero(np.isclose(volume.positions[:, normal], lps[normal], atol=1e-3))
    assert matches.size == 1, f"no kept {axis} slice through {lps}"
    if axis == "axial":
        row, col = (lps[1] - low[1]) / row_mm, (lps[0] - low[0]) / col_mm
    elif axis == "coronal":
        row, col = (high[2] - lps[2]) / row_mm, (lps[0] - low[0]) / col_mm
    else:
        row, col = (high[2] - lps[2]) / row_mm, (lps[1] - low[1]) / col_mm
    return int(matches[0]), int(round(row)), int(round(col))


def _assert_marker(volume, lps, low, high, axis="axial") -> tuple[int, int]:
    k, row, col = _pixel_of(volume, lps, low, high, axis)
    assert volume.slices[k][row, col] == pytest.approx(fx.MARKER)
    return row, col


def _nifti(tmp_path, name="scan.nii.gz", affine=RAS_AFFINE, markers=RAS_MARKERS, **kw):
    data = fx.phantom(SHAPE, markers=markers, **kw)
    return fx.write_nifti(tmp_path / name, data, affine), data


# --------------------------------------------------------------------------- formats, geometry


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    "affine, markers",
    [(RAS_AFFINE, RAS_MARKERS), (PERMUTED_AFFINE, PERMUTED_MARKERS)],
    ids=["ras", "permuted-flipped"],
)
def test_nifti_is_read_in_canonical_lps_orientation(tmp_path, suffix, affine, markers):
    path, _ = _nifti(tmp_path, "scan" + suffix, affine, markers)
    volume = read_scan(ScanSource(path))

    assert volume.image.GetDirection() == pytest.approx(np.eye(3).ravel())
    low, high = _lps_extent(affine)
    first, second = (fx.nifti_voxel_lps(affine, m) for m in markers)
    row1, col1 = _assert_marker(volume, first, low, high)
    row2, col2 = _assert_marker(volume, second, low, high)
    assert row2 < row1, "anterior must be nearer the top of an axial slice"
    assert col2 > col1, "the patient's left must be on the right (radiological view)"

    # Every position is the LPS point of its slice's centre pixel.
    centre = (low + high) / 2
    z = low[2] + volume.slice_indices * 2.0
    assert np.allclose(volume.positions[:, :2], centre[:2])
    assert np.allclose(volume.positions[:, 2], z)
    assert volume.pixel_spacing == pytest.approx((1.1, 0.9) if affine is RAS_AFFINE else (0.9, 1.1))
    assert volume.slices.dtype == np.float32 and volume.slices.flags.c_contiguous
    assert volume.slices.shape[1:] == ((24, 32) if affine is RAS_AFFINE else (32, 24))
    assert volume.warnings == []


@pytest.mark.parametrize("name", ["scan.nrrd", "scan.mha"])
def test_nrrd_and_metaimage_with_flipped_direction(tmp_path, name):
    markers = ((10, 8, 9), (13, 11, 9))
    data = fx.phantom(SHAPE, markers=markers)
    flipped = (-1, 0, 0, 0, 1, 0, 0, 0, -1)  # x runs to the right, z downwards
    image = fx.sitk_image(data, (0.7, 0.8, 1.5), (20.0, -5.0, 60.0), flipped)
    path = fx.write_sitk(tmp_path / name, image, compress=True)

    volume = read_scan(ScanSource(path))
    corners = [
        image.TransformIndexToPhysicalPoint(c)
        for c in itertools.product(*[(0, n - 1) for n in SHAPE])
    ]
    low, high = np.min(corners, axis=0), np.max(corners, axis=0)
    for m in markers:
        _assert_marker(volume, np.array(image.TransformIndexToPhysicalPoint(m)), low, high)
    assert volume.pixel_spacing == pytest.approx((0.8, 0.7))
    assert volume.n_total_slices == SHAPE[2]


def test_dicom_two_series_in_one_folder_are_two_volumes(tmp_path):
    folder = tmp_path / "dicom"
    first = fx.phantom(SHAPE, markers=[(5, 6, 7)])
    second = 2 * fx.phantom((24, 20, 16), markers=[(9, 4, 10)], seed=1)
    fx.write_dicom_series(folder, first, "1.2.826.0.1.3680043.2.1125.1.1", prefix="A")
    fx.write_dicom_series(
        folder, second, "1.2.826.0.1.3680043.2.1125.1.2", prefix="B", reverse_names=True
    )

    sources, skipped = find_scans(tmp_path)
    assert skipped == []
    assert [s.series_uid for s in sources] == [
        "1.2.826.0.1.3680043.2.1125.1.1",
        "1.2.826.0.1.3680043.2.1125.1.2",
    ]
    assert all(s.path == str(folder) for s in sources)
    assert [len(s.files) for s in sources] == [20, 16]

    volumes = [read_scan(s) for s in sources]
    assert [v.n_total_slices for v in volumes] == [20, 16]
    assert [v.slices.shape[1:] for v in volumes] == [(24, 32), (20, 24)]
    assert [v.series_uid for v in volumes] == [s.series_uid for s in sources]
    # The series are not mixed: the second is twice as bright.
    assert volumes[1].slices.max() == pytest.approx(2 * fx.MARKER)
    assert np.median(volumes[1].slices[volumes[1].slices > 0]) > 150
    # Sorted by position although the second's file names run the other way.
    for volume, (i, j, k) in zip(volumes, [(5, 6, 7), (9, 4, 10)], strict=True):
        assert np.all(np.diff(volume.positions[:, 2]) == pytest.approx(2.0))
        row = int(np.flatnonzero(volume.slice_indices == k)[0])
        assert volume.positions[row, 2] == pytest.approx(30.0 + 2.0 * k)
        assert volume.slices[row][j, i] == pytest.approx(volume.slices.max())
        assert volume.pixel_spacing == pytest.approx((0.8, 0.8))
        assert volume.warnings == []


def test_recursive_discovery_is_sorted_and_complete(tmp_path):
    data = fx.phantom(SHAPE)
    fx.write_nifti(tmp_path / "b" / "deep" / "one.nii.gz", data, RAS_AFFINE)
    fx.write_sitk(tmp_path / "b" / "two.nrrd", fx.sitk_image(data))
    fx.write_sitk(tmp_path / "a" / "three.mha", fx.sitk_image(data))
    fx.write_sitk(tmp_path / "a" / "four.mhd", fx.sitk_image(data))  # + four.raw
    fx.write_sitk(tmp_path / "a" / "five.nhdr", fx.sitk_image(data), compress=True)  # + .raw.gz
    fx.write_sitk(tmp_path / "a" / "six.hdr", fx.sitk_image(data))  # NIfTI pair: + six.img
    fx.write_dicom_series(tmp_path / "c" / "series", data, "1.2.3.4.5", prefix="")

    sources, skipped = find_scans(tmp_path)
    assert skipped == [], "header data files (.raw, .raw.gz) must not be reported"
    paths = [s.path for s in sources]
    assert paths == [
        str(tmp_path / "a" / "five.nhdr"),
        str(tmp_path / "a" / "four.mhd"),
        str(tmp_path / "a" / "six.hdr"),
        str(tmp_path / "a" / "three.mha"),
        str(tmp_path / "b" / "deep" / "one.nii.gz"),
        str(tmp_path / "b" / "two.nrrd"),
        str(tmp_path / "c" / "series"),
    ]
    assert find_scans(str(tmp_path)) == (sources, skipped)

    items = list(iter_scans(tmp_path))
    assert all(isinstance(v, ScanVolume) for v in items)
    assert [v.source for v in items] == paths
    assert {v.n_total_slices for v in items} == {SHAPE[2]}


def test_root_that_is_a_file_is_that_file(tmp_path):
    path, _ = _nifti(tmp_path)
    sources, skipped = find_scans(path)
    assert sources == [ScanSource(path)] and skipped == []
    (volume,) = list(iter_scans(path))
    assert volume.source == path
    assert len(read_scan(path)) == len(volume)  # a plain path is accepted too


@pytest.mark.parametrize("axis", ["coronal", "sagittal"])
def test_coronal_and_sagittal_slices_have_superior_at_the_top(tmp_path, axis):
    # Same axial plane markers plus one 5 voxels higher (superior: larger k in RAS).
    markers = ((20, 8, 9), (20, 8, 14), (17, 11, 9))
    path, _ = _nifti(tmp_path, markers=markers)
    volume = read_scan(ScanSource(path), ReadOptions(axis=axis))
    low, high = _lps_extent(RAS_AFFINE)

    nx, ny, nz = SHAPE
    expected = {"coronal": (nz, nx), "sagittal": (nz, ny)}[axis]
    assert volume.slices.shape[1:] == expected
    assert volume.n_total_slices == {"coronal": ny, "sagittal": nx}[axis]
    assert volume.pixel_spacing == pytest.approx(
        {"coronal": (2.0, 0.9), "sagittal": (2.0, 1.1)}[axis]
    )
    low_marker, high_marker, other = (fx.nifti_voxel_lps(RAS_AFFINE, m) for m in markers)
    row_low, col_low = _assert_marker(volume, low_marker, low, high, axis)
    row_high, col_high = _assert_marker(volume, high_marker, low, high, axis)
    assert row_high == row_low - 5 and col_high == col_low
    row_other, col_other = _assert_marker(volume, other, low, high, axis)
    if axis == "coronal":  # cols run to the patient's left
        assert col_other > col_low
    else:  # cols run anterior -> posterior
        assert col_other < col_low
    # Background slices (outside the block) are left out along this axis too.
    n_axis = volume.n_total_slices
    assert volume.slice_indices.tolist() == list(range(4, n_axis - 4))


def test_background_slices_are_skipped_and_stride_applies(tmp_path):
    path, _ = _nifti(tmp_path)
    volume = read_scan(ScanSource(path))
    assert volume.n_total_slices == 20
    assert volume.slice_indices.tolist() == list(range(3, 17))  # the block spans z 3..16
    assert volume.slice_indices.dtype == np.int64

    strided = read_scan(ScanSource(path), ReadOptions(stride=3))
    assert strided.slice_indices.tolist() == [3, 6, 9, 12, 15]
    assert np.array_equal(strided.slices, volume.slices[::3])
    assert np.array_equal(strided.positions, volume.positions[::3])

    infos = strided.slice_infos()
    assert [i.slice_index for i in infos] == [3, 6, 9, 12, 15]
    assert infos[0].volume == path and infos[0].series_uid == ""
    assert infos[0].position == pytest.approx(tuple(strided.positions[0]))


def test_min_foreground_decides_what_a_small_blob_is(tmp_path):
    data = fx.phantom(SHAPE)
    data[14:17, 10:13, 18] = 100.0  # 9 of 768 pixels (1 %) in an otherwise empty slice
    path = fx.write_nifti(tmp_path / "blob.nii", data, RAS_AFFINE)
    assert 18 not in read_scan(path).slice_indices
    assert 18 in read_scan(path, ReadOptions(min_foreground=0.01)).slice_indices
    # Constant slices are background whatever the share.
    assert 0 not in read_scan(path, ReadOptions(min_foreground=0.0)).slice_indices


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"axis": "oblique"}, "axis"),
        ({"stride": 0}, "stride"),
        ({"stride": 1.5}, "stride"),
        ({"min_foreground": 1.0}, "min_foreground"),
        ({"min_foreground": -0.1}, "min_foreground"),
        ({"min_foreground": "0.1"}, "min_foreground"),
    ],
)
def test_read_options_are_validated(kwargs, option):
    with pytest.raises(SettingsError, match=option):
        ReadOptions(**kwargs)
    assert {ReadOptions(axis=a).axis for a in AXES} == set(AXES)


def test_oblique_scan_is_read_along_its_nearest_plane_with_a_warning(tmp_path):
    angle = np.radians(10.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation
    path, _ = _nifti(tmp_path, affine=affine)
    volume = read_scan(ScanSource(path))
    assert volume.slices.shape[1:] == (24, 32)
    (warning,) = volume.warnings
    assert path in warning and "oblique (10.0 degrees" in warning


def test_in_memory_image_gives_the_same_volume_as_its_file(tmp_path):
    data = fx.phantom(SHAPE, markers=[(3, 4, 5)])
    image = fx.sitk_image(data, (0.5, 0.6, 1.2), (1, 2, 3), (1, 0, 0, 0, -1, 0, 0, 0, -1))
    path = fx.write_sitk(tmp_path / "x.mha", image)
    from_file = read_scan(ScanSource(path))
    in_memory = scan_from_image(image, "node:Volume1", ReadOptions(), series_uid="9.8")
    assert in_memory.source == "node:Volume1" and in_memory.series_uid == "9.8"
    assert np.array_equal(in_memory.slices, from_file.slices)
    assert np.allclose(in_memory.positions, from_file.positions)


def test_4d_image_uses_the_first_volume_and_says_so(tmp_path):
    first = fx.phantom(SHAPE, markers=[(5, 5, 5)])
    stack = np.stack([first, 3 * first], axis=-1)
    path = fx.write_nifti(tmp_path / "fmri.nii.gz", stack, RAS_AFFINE)
    volume = read_scan(ScanSource(path))
    assert volume.slices.max() == pytest.approx(fx.MARKER)
    assert any("first 3D volume" in w and path in w for w in volume.warnings)


def test_vector_pixels_are_averaged_with_a_warning(tmp_path):
    data = fx.phantom(SHAPE)
    parts = [fx.sitk_image(data * f) for f in (1.0, 2.0, 3.0)]
    path = fx.write_sitk(tmp_path / "rgb.nrrd", sitk.Compose(parts))
    volume = read_scan(ScanSource(path))
    plain = scan_from_image(parts[1], "plain")
    assert np.allclose(volume.slices, plain.slices)
    assert any("3 values per voxel" in w and path in w for w in volume.warnings)


# --------------------------------------------------------------------------- bad input


def test_empty_folder_yields_nothing(tmp_path):
    assert find_scans(tmp_path) == ([], [])
    assert list(iter_scans(tmp_path)) == []


def test_nonexistent_root_is_an_input_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (find_scans, iter_scans, read_scan):
        with pytest.raises(InputError, match="nowhere"):
            call(missing)


def test_non_image_files_are_reported_not_dropped(tmp_path):
    _nifti(tmp_path)
    names = ["notes.txt", "meta.json", "table.csv", "pic.png", ".DS_Store", "orphan.raw"]
    for name in names:
        (tmp_path / name).write_bytes(b"not an image\n" * 20)
    fx.write_sitk(tmp_path / "paired.mhd", fx.sitk_image(fx.phantom(SHAPE)))  # + paired.raw

    sources, skipped = find_scans(tmp_path)
    # pic.png has an image's name: found as a 2D image, skipped when it cannot be read.
    assert [os.path.basename(s.path) for s in sources] == ["paired.mhd", "pic.png", "scan.nii.gz"]
    not_images = sorted(n for n in names if n != "pic.png")
    assert sorted(os.path.basename(s.path) for s in skipped) == not_images
    for item in skipped:
        assert item.path in item.reason
        if item.path.endswith("orphan.raw"):
            assert "no header" in item.reason
        else:
            assert "not an image format MemorizationIndex reads" in item.reason

    items = list(iter_scans(tmp_path))
    unread = [i for i in items if isinstance(i, SkippedInput)]
    assert len(unread) == len(names)
    picture = next(i for i in unread if i.path.endswith("pic.png"))
    assert "could not be read" in picture.reason and picture.path in picture.reason
    assert sum(isinstance(i, ScanVolume) for i in items) == 2


@pytest.mark.parametrize("kind", ["random.nii.gz", "truncated.nii", "truncated.nii.gz"])
def test_corrupt_nifti_is_an_input_error_naming_the_file(tmp_path, kind):
    if kind.startswith("random"):
        path = tmp_path / kind
        path.write_bytes(np.random.default_rng(0).bytes(4000))
        path = str(path)
    else:
        path, _ = _nifti(tmp_path, kind)
        fx.truncate(path, 0.6)
    with pytest.raises(InputError) as error:
        read_scan(ScanSource(path))
    assert path in str(error.value)
    if kind.startswith("truncated"):
        assert "truncated" in str(error.value)

    good, _ = _nifti(tmp_path, "good.nii.gz")
    items = list(iter_scans(tmp_path))  # one bad file never stops the folder
    assert sum(isinstance(i, ScanVolume) for i in items) == 1
    (bad,) = [i for i in items if isinstance(i, SkippedInput)]
    assert bad.path == path and path in bad.reason


def test_truncated_dicom_file_is_reported_and_the_rest_read(tmp_path):
    folder = tmp_path / "series"
    files = fx.write_dicom_series(folder, fx.phantom(SHAPE), "1.2.3.4.6")
    fx.truncate(files[8], 0.6)

    items = list(iter_scans(tmp_path))
    skipped = [i for i in items if isinstance(i, SkippedInput)]
    volumes = [i for i in items if isinstance(i, ScanVolume)]
    assert [s.path for s in skipped] == [files[8]]
    assert files[8] in skipped[0].reason
    (volume,) = volumes
    assert volume.n_total_slices == 19
    assert any("not uniform" in w for w in volume.warnings), volume.warnings

    # A series listed before the damage: the read drops the culprit and names it.
    source = ScanSource(str(folder), "1.2.3.4.6", tuple(files))
    volume = read_scan(source)
    assert volume.n_total_slices == 19
    assert any(os.path.basename(files[8]) in w and "left out" in w for w in volume.warnings)
    volume, dropped = read_scan_reporting(source)
    assert [d.path for d in dropped] == [files[8]] and files[8] in dropped[0].reason


def test_dicom_file_of_another_size_is_dropped_from_its_series(tmp_path):
    folder = tmp_path / "series"
    files = fx.write_dicom_series(folder, fx.phantom(SHAPE), "1.2.3.4.7")
    small = fx.write_dicom_series(tmp_path / "small", fx.phantom((20, 18, 20)), "1.2.3.4.7")
    shutil.copyfile(small[5], files[5])  # same UIDs and position, 20x18 pixels

    items = list(iter_scans(folder))
    skipped = [i for i in items if isinstance(i, SkippedInput)]
    assert [s.path for s in skipped] == [files[5]]
    assert files[5] in skipped[0].reason and "20x18" in skipped[0].reason
    (volume,) = [i for i in items if isinstance(i, ScanVolume)]
    assert volume.n_total_slices == 19
    assert any("1 of 20 files" in w for w in volume.warnings)


def test_constant_volume_is_an_input_error(tmp_path):
    path = fx.write_nifti(tmp_path / "flat.nii.gz", np.full(SHAPE, 7.0, np.float32), RAS_AFFINE)
    with pytest.raises(InputError, match="constant") as error:
        read_scan(ScanSource(path))
    assert path in str(error.value)


def test_nan_voxels_become_the_finite_minimum_with_a_warning(tmp_path):
    data = fx.phantom(SHAPE) + 5.0
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    data[12, 10, 10] = np.nan
    # NRRD keeps NaN on disk and through ITK; ITK's NIfTI reader itself turns them into 0.
    path = fx.write_sitk(tmp_path / "nan.nrrd", fx.sitk_image(data))
    volume = read_scan(ScanSource(path))
    assert np.isfinite(volume.slices).all()
    assert volume.slices.min() == pytest.approx(5.0)
    (warning,) = volume.warnings
    assert path in warning and "3 NaN or infinite" in warning
    assert np.isfinite(sitk.GetArrayViewFromImage(volume.image)).all()

    data[:] = np.nan
    fx.write_sitk(path, fx.sitk_image(data))
    with pytest.raises(InputError, match="no finite voxel") as error:
        read_scan(ScanSource(path))
    assert path in str(error.value)


@pytest.mark.parametrize("shape", [(256, 256), (40, 36, 1)])
def test_a_2d_file_is_read_as_one_image(tmp_path, shape):
    """A 2D NIfTI, or a 3D one a single voxel thick, is a 2D image (test_images_2d.py has
    every 2D format); a 1D one is still refused."""
    data = np.random.default_rng(0).uniform(50, 100, size=shape).astype(np.float32)
    image = sitk.GetImageFromArray(data.T)
    path = fx.write_sitk(tmp_path / "flat.nii.gz", image)
    volume = read_scan(ScanSource(path))
    assert volume.is_2d and len(volume) == 1
    assert volume.slices.shape[1:] == shape[:2][::-1]  # [rows = y, cols = x]
    line = fx.write_sitk(tmp_path / "line.nii.gz", sitk.GetImageFromArray(data[:, :1, ...].T))
    with pytest.raises(InputError, match="neither a 2D image nor a 3D volume") as error:
        read_scan(ScanSource(line))
    assert line in str(error.value)


def test_volume_thinner_than_the_encoder_patch_is_an_input_error(tmp_path):
    data = fx.phantom((12, 40, 30), block=(slice(2, 10), slice(4, 36), slice(3, 27)))
    path = fx.write_nifti(tmp_path / "thin.nii.gz", data, RAS_AFFINE)
    with pytest.raises(InputError, match="40x12 pixels") as error:
        read_scan(ScanSource(path))
    assert path in str(error.value)
    # The same file cut along an axis with big enough slices is fine.
    assert read_scan(ScanSource(path), ReadOptions(axis="sagittal")).slices.shape[1:] == (30, 40)
