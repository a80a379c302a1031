"""Headline augmentations end to end: a training volume moved by scipy.ndimage (vertical
flip, in-plane shift, crop resized back, and flip + rotation + shift + intensity + noise
together), written as NIfTI, scored against the session's bank, flagged with the right
training volume and the right pose.

The expected pose is worked out from the stored arrays and the file's direction cosines,
not by the engine: reading reorients to LPS (axial slices: columns along L, rows along P),
so an in-plane axis stored reversed (a negative direction cosine) reverses the shift along
it, and each reversed axis mirrors a rotation once (engine angle = -ndimage angle, see
test_verification.py, times one sign per reversed axis).
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.scoring.score import score
from scipy import ndimage

SOURCE = "sub-02.nii.gz"
SHIFT_VOXELS = (2.0, -3.0)  # (rows, cols) of the stored [z, y, x] array
CROP = ((4, 74), (2, 64))  # stored (y, x) ranges kept, then resized back to the full plane
ROTATION = 6.0  # ndimage.rotate degrees, axes (1, 2)
MM = 2.5  # shift tolerance: 0.7 of a thumbnail pixel (234 mm over 64 pixels); shifts are 6-9 mm


def crop_resized(volume: np.ndarray) -> np.ndarray:
    (y0, y1), (x0, x1) = CROP
    _, ny, nx = volume.shape
    part = volume[:, y0:y1, x0:x1]
    zoom = (1.0, ny / (y1 - y0), nx / (x1 - x0))
    return ndimage.zoom(part, zoom, order=1, grid_mode=True, mode="nearest")


def combined(volume: np.ndarray) -> np.ndarray:
    v = volume[:, :, ::-1]  # hflip
    v = ndimage.rotate(v, ROTATION, axes=(1, 2), reshape=False, order=1)
    v = ndimage.shift(v, (0.0, *SHIFT_VOXELS), order=1) * 1.1
    return v + np.random.default_rng(5).normal(0, 0.02 * np.percentile(v, 99.5), v.shape)


AUGMENTATIONS = {
    "vflip": lambda v: v[:, ::-1, :],
    "shift": lambda v: ndimage.shift(v, (0.0, *SHIFT_VOXELS), order=1),
    "crop": crop_resized,
    "combined": combined,
}


@pytest.fixture(scope="module")
def scored(small_cohort, small_bank, tmp_path_factory):
    root, _ = small_cohort
    bank, _ = small_bank
    source = sitk.ReadImage(str(root / "train" / SOURCE))
    array = sitk.GetArrayFromImage(source)
    out = tmp_path_factory.mktemp("augmented")
    for name, make in AUGMENTATIONS.items():
        image = sitk.GetImageFromArray(np.ascontiguousarray(make(array), dtype=np.float32))
        image.CopyInformation(source)
        sitk.WriteImage(image, str(out / f"{name}.nii.gz"))
    result = score(bank, out, bank.load_encoder(device="cpu"), stride=4)
    direction = np.array(source.GetDirection()).reshape(3, 3)
    signs = (float(np.sign(direction[0, 0])), float(np.sign(direction[1, 1])))  # x, y
    return result, source.GetSpacing(), signs, array.shape


def rows_of(result, name):
    volume = next(v for v in result.volumes if Path(v["volume"]).name == f"{name}.nii.gz")
    rows = [r for r in result.slices if r["volume"] == volume["volume"] and r["flagged"]]
    return volume, rows


def median(rows, key):
    return float(np.median([r[key] for r in rows]))


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_copy_is_flagged_with_its_source(scored, name):
    result, *_ = scored
    volume, rows = rows_of(result, name)
    assert volume["flagged"] and Path(volume["match_volume"]).name == SOURCE, volume
    assert volume["fraction_flagged"] >= 0.7 and volume["match_fraction"] >= 0.9, volume
    assert np.mean([Path(r["match_volume"]).name == SOURCE for r in rows]) >= 0.9
    # The volume's verdict follows its slices' (verified) matches, not stage 1's guesses.
    transforms = [r["transform"] for r in rows]
    assert volume["transform"] == max(set(transforms), key=transforms.count)
    # the same slice of the source, give or take the stride's neighbour
    assert np.median([abs(r["match_slice"] - r["slice_index"]) for r in rows]) <= 1


def test_vertical_flip_is_reported(scored):
    result, *_ = scored
    volume, rows = rows_of(result, "vflip")
    assert volume["transform"] == "vflip"
    assert np.mean([r["transform"] == "vflip" for r in rows]) >= 0.9
    assert abs(median(rows, "angle_deg")) < 1.5


def test_shift_is_reported_in_millimetres(scored):
    result, spacing, (sx, sy), _ = scored
    _, rows = rows_of(result, "shift")
    dy, dx = SHIFT_VOXELS
    expected = (sx * dx * spacing[0], sy * dy * spacing[1])  # (columns, rows) in mm
    assert all(r["transform"] == "none" for r in rows)
    assert median(rows, "shift_x_mm") == pytest.approx(expected[0], abs=MM)
    assert median(rows, "shift_y_mm") == pytest.approx(expected[1], abs=MM)
    assert abs(median(rows, "angle_deg")) < 1.5


def test_crop_is_reported_as_its_stretch(scored):
    result, *_ = scored
    _, rows = rows_of(result, "crop")
    (y0, y1), (x0, x1) = CROP
    assert median(rows, "scale_x") == pytest.approx(66 / (x1 - x0), abs=0.03)
    assert median(rows, "scale_y") == pytest.approx(78 / (y1 - y0), abs=0.03)


def test_combined_augmentation_reports_flip_and_signed_angle(scored):
    result, spacing, (sx, sy), _ = scored
    volume, rows = rows_of(result, "combined")
    assert volume["transform"] == "hflip"
    assert np.mean([r["transform"] == "hflip" for r in rows]) >= 0.9
    assert median(rows, "angle_deg") == pytest.approx(-ROTATION * sx * sy, abs=1.5)
    # y = R Fl x + t: the shift comes after the turn, so it is the stored shift as it is.
    dy, dx = SHIFT_VOXELS
    assert median(rows, "shift_x_mm") == pytest.approx(sx * dx * spacing[0], abs=MM)
    assert median(rows, "shift_y_mm") == pytest.approx(sy * dy * spacing[1], abs=MM)
