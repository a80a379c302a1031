"""2D images as inputs: every format generative code writes, read back pixel for pixel.

Every file here is written by a tool independent of the engine's reader (which is
SimpleITK for raster files and numpy's own loader for stacks): PIL for PNG, JPEG and BMP,
tifffile for TIFF, pydicom for DICOM, nibabel for NIfTI, numpy for .npy/.npz. What is read
back is compared with the array that was written.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import tifffile
from MemorizationIndexLib.errors import InputError
from MemorizationIndexLib.scans import ReadOptions, find_scans, iter_scans, read_scan
from MemorizationIndexLib.scans.reading import read_scan_reporting
from MemorizationIndexLib.scans.sources import IMAGE, IMAGE_PX, ScanSource
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROWS, COLS = 48, 40


def picture(seed: int = 0, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """An off-centre bright ellipse with texture on black: float in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    inside = ((y - rows * 0.45) / (rows * 0.4)) ** 2 + ((x - cols * 0.55) / (cols * 0.4)) ** 2 < 1
    texture = 0.5 + 0.4 * np.sin(x / 3.0 + seed) * np.cos(y / 4.0) + 0.1 * rng.random((rows, cols))
    return np.where(inside, texture, 0.0)


def as_uint8(a: np.ndarray) -> np.ndarray:
    return np.round(255 * a / a.max()).astype(np.uint8)


def only(folder) -> tuple:
    sources, skipped = find_scans(folder)
    assert len(sources) == 1 and skipped == [], (sources, skipped)
    return read_scan_reporting(sources[0])[0], sources[0]


def test_png_8_bit(tmp_path):
    pixels = as_uint8(picture())
    Image.fromarray(pixels).save(tmp_path / "a.png")
    volume, _ = only(tmp_path)
    assert volume.kind == IMAGE_PX and volume.is_2d
    assert volume.slices.shape == (1, ROWS, COLS)
    np.testing.assert_array_equal(volume.slices[0], pixels)  # row 0 is the top row
    assert volume.pixel_spacing == (1.0, 1.0) and volume.warnings == []


def test_png_16_bit(tmp_path):
    pixels = (picture() * 40000).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")  # PIL writes mode I;16 as 16-bit PNG
    volume, _ = only(tmp_path)
    np.testing.assert_array_equal(volume.slices[0], pixels)


def test_grey_saved_as_rgb_is_one_channel_without_a_warning(tmp_path):
    pixels = as_uint8(picture())
    Image.fromarray(np.stack([pixels] * 3, -1)).save(tmp_path / "fake_0.png")
    volume, _ = only(tmp_path)
    np.testing.assert_array_equal(volume.slices[0], pixels)
    assert volume.warnings == []


def test_real_colour_is_averaged_with_a_warning(tmp_path):
    pixels = as_uint8(picture())
    colour = np.stack([pixels, pixels // 2, 255 - pixels], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    volume, _ = only(tmp_path)
    np.testing.assert_allclose(volume.slices[0], colour.astype(np.float32).mean(-1), atol=1e-4)
    assert len(volume.warnings) == 1 and "colour" in volume.warnings[0]
    assert "colour.png" in volume.warnings[0]


def test_rgba_drops_alpha(tmp_path):
    pixels = as_uint8(picture())
    rgba = np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    volume, _ = only(tmp_path)
    np.testing.assert_array_equal(volume.slices[0], pixels)
    assert volume.warnings == []


def test_jpeg_of_grey_rgb(tmp_path):
    pixels = as_uint8(picture())
    Image.fromarray(np.stack([pixels] * 3, -1)).save(tmp_path / "a.jpg", quality=95)
    volume, _ = only(tmp_path)
    assert volume.warnings == []  # JPEG's chroma noise is not colour
    assert np.abs(volume.slices[0] - pixels).mean() < 3.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff(tmp_path, dtype):
    scale = {np.uint8: 255, np.uint16: 60000, np.float32: 1.0}[dtype]
    pixels = (picture() * scale).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    volume, _ = only(tmp_path)
    np.testing.assert_allclose(volume.slices[0], pixels.astype(np.float32))


def test_bmp(tmp_path):
    pixels = as_uint8(picture())
    Image.fromarray(pixels).save(tmp_path / "a.bmp")
    volume, _ = only(tmp_path)
    np.testing.assert_array_equal(volume.slices[0], pixels)


def write_dicom_slice(path, pixels: np.ndarray, spacing=(0.7, 0.9)) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = "P1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_single_frame_dicom_keeps_its_pixel_size(tmp_path):
    pixels = (picture() * 1000).astype(np.uint16)
    write_dicom_slice(tmp_path / "slice.dcm", pixels)
    volume, _ = only(tmp_path)
    assert volume.kind == IMAGE
    np.testing.assert_array_equal(volume.slices[0], pixels)  # axial, rows = anterior->posterior
    # DICOM PixelSpacing is (between rows, between columns): (row mm, column mm) as ours
    assert volume.pixel_spacing == pytest.approx((0.7, 0.9))


def test_2d_nifti_and_a_3d_nifti_of_one_slice(tmp_path):
    pixels = picture().astype(np.float32)
    affine = np.diag([-0.8, -0.8, 1.0, 1.0])  # LPS-aligned axes: the array reads as written
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nib.save(nib.Nifti1Image(pixels.T.copy(), affine), tmp_path / "a" / "slice.nii.gz")
    nib.save(nib.Nifti1Image(pixels.T[:, :, None].copy(), affine), tmp_path / "b" / "one.nii")
    for folder in ("a", "b"):
        volume, _ = only(tmp_path / folder)
        assert volume.kind == IMAGE
        np.testing.assert_allclose(volume.slices[0], pixels, atol=1e-6)
        assert volume.pixel_spacing == pytest.approx((0.8, 0.8))


def test_a_2d_image_ignores_the_banks_axis_and_stride(tmp_path):
    pixels = as_uint8(picture())
    Image.fromarray(pixels).save(tmp_path / "a.png")
    volume = read_scan(tmp_path / "a.png", ReadOptions(axis="sagittal", stride=4))
    np.testing.assert_array_equal(volume.slices[0], pixels)


# ---- NumPy stacks --------------------------------------------------------------------------


def test_npy_stack_and_single_image(tmp_path):
    stack = np.stack([as_uint8(picture(k)) for k in range(3)])
    np.save(tmp_path / "stack.npy", stack)
    np.save(tmp_path / "one.npy", stack[1].astype(np.float32) / 127.5 - 1.0)  # [-1, 1]
    sources, skipped = find_scans(tmp_path)
    assert skipped == []
    assert [s.label for s in sources] == [
        f"{tmp_path}/one.npy:[0]",
        f"{tmp_path}/stack.npy:[0]",
        f"{tmp_path}/stack.npy:[1]",
        f"{tmp_path}/stack.npy:[2]",
    ]
    volumes = [read_scan_reporting(s)[0] for s in sources]
    assert [int(v.slice_indices[0]) for v in volumes] == [0, 0, 1, 2]
    for v, expected in zip(volumes[1:], stack, strict=True):
        np.testing.assert_array_equal(v.slices[0], expected)
    np.testing.assert_allclose(volumes[0].slices[0], stack[1] / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "layout", ["NHWC", "NCHW", "NHW", "NHW1", "HWC", "HW"], ids=lambda s: s or "plain"
)
def test_npz_layouts(tmp_path, layout):
    grey = np.stack([as_uint8(picture(k)) for k in range(2)])  # [N, H, W]
    arrays = {
        "NHWC": np.stack([grey] * 3, -1),
        "NCHW": np.stack([grey] * 3, 1),
        "NHW": grey,
        "NHW1": grey[..., None],
        "HWC": np.stack([grey[0]] * 3, -1),
        "HW": grey[0],
    }
    np.savez(tmp_path / "samples.npz", arr_0=arrays[layout])
    sources, skipped = find_scans(tmp_path)
    assert skipped == []
    expected = grey if layout.startswith("N") else grey[:1]
    assert [s.series_uid for s in sources] == [f"arr_0[{k}]" for k in range(len(expected))]
    for source, pixels in zip(sources, expected, strict=True):
        volume, _ = read_scan_reporting(source)
        np.testing.assert_array_equal(volume.slices[0], pixels)
        assert volume.warnings == []


def test_npz_with_several_arrays_and_numeric_order(tmp_path):
    images = np.stack([as_uint8(picture(k)) for k in range(12)])
    np.savez(tmp_path / "s.npz", arr_0=images, labels=np.arange(12))  # labels hold no images
    sources, skipped = find_scans(tmp_path)
    assert [s.series_uid for s in sources] == [f"arr_0[{k}]" for k in range(12)]  # 2 before 10
    assert len(skipped) == 1 and "'labels'" in skipped[0].reason and "(12,)" in skipped[0].reason


@pytest.mark.parametrize("dtype", [np.int16, np.float64])
def test_npz_intensity_types(tmp_path, dtype):
    images = (np.stack([picture(k) for k in range(2)]) * 3000 - 1000).astype(dtype)
    np.savez_compressed(tmp_path / "s.npz", images=images)
    sources, _ = find_scans(tmp_path)
    volume, _ = read_scan_reporting(sources[1])
    np.testing.assert_allclose(volume.slices[0], images[1].astype(np.float32))


def test_a_stack_file_given_as_the_input_itself(tmp_path):
    np.save(tmp_path / "stack.npy", np.stack([as_uint8(picture(k)) for k in range(2)]))
    sources, _ = find_scans(tmp_path / "stack.npy")
    assert [s.series_uid for s in sources] == ["[0]", "[1]"]
    with pytest.raises(InputError, match=r"holds 2 images.*entry '\[0\]'"):
        read_scan(tmp_path / "stack.npy")
    np.save(tmp_path / "one.npy", as_uint8(picture()))
    assert read_scan(tmp_path / "one.npy").kind == IMAGE_PX
    volume = read_scan(ScanSource(str(tmp_path / "stack.npy"), "[1]"))
    assert int(volume.slice_indices[0]) == 1


# ---- bad files: skipped and named, never a crash --------------------------------------------


def test_bad_2d_files_are_skipped_with_the_reason(tmp_path):
    good = as_uint8(picture())
    for k in range(5):
        Image.fromarray(good).save(tmp_path / f"good_{k}.png")
    Image.fromarray(good).save(tmp_path / "truncated.png")
    data = (tmp_path / "truncated.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8) + 50).save(tmp_path / "tiny.png")
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(tmp_path / "blank.png")
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([good, good]))
    np.save(tmp_path / "vector.npy", np.arange(10.0))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.save(tmp_path / "complex.npy", (picture() + 1j).astype(np.complex64))
    found = list(iter_scans(tmp_path))
    volumes = [f for f in found if not hasattr(f, "reason")]
    skipped = {os.path.basename(f.path): f.reason for f in found if hasattr(f, "reason")}
    assert sorted(os.path.basename(v.source) for v in volumes) == [
        f"good_{k}.png" for k in range(5)
    ]
    assert set(skipped) == {
        "truncated.png",
        "text.png",
        "tiny.png",
        "blank.png",
        "pages.tif",
        "vector.npy",
        "broken.npz",
        "complex.npy",
    }
    for name, reason in skipped.items():
        assert name in reason, (name, reason)
    assert "16 pixels" in skipped["tiny.png"]
    assert "2 images (pages)" in skipped["pages.tif"]
    assert "constant" in skipped["blank.png"] or "no foreground" in skipped["blank.png"]
    assert "(10,)" in skipped["vector.npy"]
