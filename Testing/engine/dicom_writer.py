"""DICOM series written with pydicom, tag by tag, for reader and end-to-end tests.

Independent of SimpleITK (which the engine reads with): every geometry tag is set here from
numbers the test chooses, so the positions and spacings the engine reports can be checked
against values computed from those numbers alone.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def slice_frame(row_direction, column_direction, pixel_spacing, first_position, spacing_between):
    """The LPS frame of a series: unit row and column directions (as ImageOrientationPatient
    lists them), their normal, and a function k -> ImagePositionPatient of slice k."""
    row = np.asarray(row_direction, dtype=np.float64)
    col = np.asarray(column_direction, dtype=np.float64)
    normal = np.cross(row, col)
    first = np.asarray(first_position, dtype=np.float64)

    def position(k: int) -> np.ndarray:
        return first + k * spacing_between * normal

    return row, col, normal, position


def write_series(
    folder,
    pixels: np.ndarray,
    *,
    row_direction=(1.0, 0.0, 0.0),
    column_direction=(0.0, 1.0, 0.0),
    pixel_spacing=(1.0, 1.0),
    first_position=(0.0, 0.0, 0.0),
    spacing_between: float = 1.0,
    series_uid: str | None = None,
    patient_id: str = "PATIENT",
    description: str = "test series",
) -> list[str]:
    """Write pixels [n, rows, cols] (int16 range) as n MR files, one per slice.

    Pixel (r, c) of slice k lies at position(k) + c * pixel_spacing[1] * row_direction
    + r * pixel_spacing[0] * column_direction (DICOM PS3.3 C.7.6.2.1.1): PixelSpacing is
    (between rows, between columns).
    """
    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    values = np.clip(np.round(pixels), -32768, 32767).astype(np.int16)
    _, _, _, position = slice_frame(
        row_direction, column_direction, pixel_spacing, first_position, spacing_between
    )
    paths = []
    for k, plane in enumerate(values):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientID = patient_id
        ds.PatientName = "Test^Phantom"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position(k)]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_direction, *column_direction)]
        ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
        ds.SliceThickness = f"{spacing_between:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        path = os.path.join(os.fspath(folder), f"IM{k + 1:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
