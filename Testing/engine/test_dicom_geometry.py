"""DICOM series in non-identity orientations with anisotropic pixels: read with the right
geometry. Files are written with pydicom (dicom_writer.py); the expected slice positions,
spacings and pixel layout are computed here from the tags alone (DICOM PS3.3 C.7.6.2.1.1),
not by SimpleITK, which the engine reads with."""

import numpy as np
import pytest
from MemorizationIndexLib.scans import read_scan
from MemorizationIndexLib.scans.slicing import ReadOptions

from .dicom_writer import slice_frame, write_series

ROWS, COLS, N = 36, 44, 12
PIXEL_SPACING = (0.7, 1.1)  # between rows, between columns: anisotropic
SPACING_BETWEEN = 2.5
FIRST = (-20.0, 15.0, 40.0)


def textured(seed=0) -> np.ndarray:
    """[n, rows, cols] with a distinct value at every pixel of every slice."""
    rng = np.random.default_rng(seed)
    return rng.uniform(100.0, 900.0, size=(N, ROWS, COLS)).round()


def expected_centres(row_direction, column_direction) -> np.ndarray:
    """LPS mm of each slice's centre pixel, from the tags: position(k) + (cols - 1) / 2
    columns along the row direction + (rows - 1) / 2 rows along the column direction."""
    row, col, _, position = slice_frame(
        row_direction, column_direction, PIXEL_SPACING, FIRST, SPACING_BETWEEN
    )
    c, r = (COLS - 1) / 2.0, (ROWS - 1) / 2.0
    return np.array(
        [position(k) + c * PIXEL_SPACING[1] * row + r * PIXEL_SPACING[0] * col for k in range(N)]
    )


def angle_deg(t):
    return np.cos(np.radians(t)), np.sin(np.radians(t))


CASES = {
    # name: (row direction, column direction, axis read, how the stored plane is displayed)
    # Coronal (rows run inferior): shown superior up, patient right on the left: as stored.
    "coronal": ((1, 0, 0), (0, 0, -1), "coronal", lambda p: p),
    # Axial stored with both in-plane axes reversed (RAS-like): LPS display flips both.
    "axial-reversed": ((-1, 0, 0), (0, -1, 0), "axial", lambda p: p[::-1, ::-1]),
    # Sagittal, rows running inferior, columns running anterior: LPS display (posterior to
    # the right) reverses the columns.
    "sagittal": ((0, -1, 0), (0, 0, -1), "sagittal", lambda p: p[:, ::-1]),
    # Axial tilted 12 degrees in plane: read without resampling, as stored, with a warning.
    "axial-oblique": (
        (angle_deg(12)[0], angle_deg(12)[1], 0.0),
        (-angle_deg(12)[1], angle_deg(12)[0], 0.0),
        "axial",
        lambda p: p,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_oriented_anisotropic_series_is_read_with_its_geometry(tmp_path, case):
    row_direction, column_direction, axis, displayed = CASES[case]
    pixels = textured()
    write_series(
        tmp_path / case,
        pixels,
        row_direction=row_direction,
        column_direction=column_direction,
        pixel_spacing=PIXEL_SPACING,
        first_position=FIRST,
        spacing_between=SPACING_BETWEEN,
    )
    volume = read_scan(tmp_path / case, ReadOptions(axis=axis))
    assert volume.n_total_slices == N and len(volume.slices) == N
    assert volume.pixel_spacing == pytest.approx(PIXEL_SPACING, abs=1e-4)
    centres = expected_centres(row_direction, column_direction)
    # Slices come in increasing index along the LPS axis; the normal of every case points
    # along +L, +P or +S, so that is the files' own order.
    assert np.allclose(volume.positions, centres, atol=1e-3), (volume.positions, centres)
    for k in (0, N // 2, N - 1):
        assert np.array_equal(volume.slices[k], displayed(pixels[k]).astype(np.float32)), k
    oblique = [w for w in volume.warnings if "oblique" in w]
    assert (case == "axial-oblique") == bool(oblique), volume.warnings
    if oblique:
        assert "12.0 degrees" in oblique[0]
