"""The overlay of a rotated, stretched, shifted (and flipped) copy, rendered by the real Red
slice logic, lies on the synthetic slice pixel for pixel.

The copy is made with scipy.ndimage from the training slices, in millimetres (the scans'
pixels are 1.0 x 1.2 mm), under the engine's documented pose (placement.py, verification
Alignments): the training slice maps onto the synthetic one as y = D R(angle) Fl x + shift,
about the slice centre, x along the displayed columns and y along the rows (rows running
down), a positive angle turning +x towards +y. A placement with the true pose must line up;
the same pose with the angle's sign or the stretch's axes swapped must not. The pose the
engine itself recovered must line up too.
"""

import numpy as np
import pytest
from scipy import ndimage
from slicer_test_helpers import SPACING, add_volume, copied_row, random_scan
from test_overlay import interior, render, same_window

SOURCE, SOURCE_SLICE, TARGET_SLICE, RUN = 1, 7, 5, (-2, 4)
POSES = {
    # flip, angle (degrees), stretch (columns, rows), shift (mm along columns, rows)
    "rotated-shifted": ("none", 9.0, (1.0, 1.0), (2.5, -3.0)),
    "flipped-rotated-stretched": ("hflip", -7.0, (1.12, 1.04), (-2.0, 1.5)),
}


def posed_slice(plane: np.ndarray, flip, angle, stretch, shift_mm) -> np.ndarray:
    """plane [rows, cols] moved by the pose in mm, resampled by ndimage.affine_transform."""
    a = np.radians(angle)
    signs = {"none": (1, 1), "hflip": (-1, 1), "vflip": (1, -1), "hvflip": (-1, -1)}[flip]
    forward = np.diag(stretch) @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    forward = forward @ np.diag(signs)  # (x, y) in mm
    mm = np.diag([SPACING[0], SPACING[1]])  # (x, y) pixel sizes
    inverse = np.linalg.inv(mm) @ np.linalg.inv(forward) @ mm  # pixels -> pixels
    centre = np.array([(plane.shape[1] - 1) / 2.0, (plane.shape[0] - 1) / 2.0])
    offset = centre - inverse @ centre - np.linalg.inv(mm) @ np.linalg.inv(forward) @ shift_mm
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    return ndimage.affine_transform(
        plane.astype(np.float64), swap @ inverse @ swap, offset=swap @ offset, order=1
    ).astype(np.float32)


def posed_copy(training_set, pose) -> np.ndarray:
    voxels = random_scan(np.random.default_rng(9))
    for k in range(*RUN):
        plane = training_set.canonical[SOURCE][SOURCE_SLICE + k]
        voxels[TARGET_SLICE + k] = posed_slice(plane, *pose)
    return voxels


def with_pose(row, flip, angle, stretch, shift_mm):
    return dict(
        row,
        transform=flip,
        angle_deg=angle,
        scale_x=stretch[0],
        scale_y=stretch[1],
        shift_x_mm=shift_mm[0],
        shift_y_mm=shift_mm[1],
        verified_ncc=1.0,
    )


def overlay_difference(logic, row):
    """Mean |synthetic - placed match| over the synthetic slice's interior, as rendered."""
    synthetic, match, _ = logic.showMatch(row, opacity=0.0)
    same_window(synthetic, match)
    synthetic_only = render(logic, 0.0)
    match_only = render(logic, 1.0)
    core = interior(synthetic_only) & (match_only.max(axis=2) > 0)
    assert core.mean() > 0.25
    return float(np.abs(synthetic_only - match_only).max(axis=2)[core].mean())


@pytest.fixture(params=list(POSES))
def scored(request, logic, training_set, scene_and_app):
    scene, _ = scene_and_app
    pose = POSES[request.param]
    node = add_volume(scene, posed_copy(training_set, pose), "synth", (-7.0, 4.0, 11.0))
    result = logic.scoreVolume(node, device="cpu")
    return pose, copied_row(result, TARGET_SLICE)


def test_true_pose_lines_up_and_wrong_conventions_do_not(logic, training_set, scored):
    pose, row = scored
    flip, angle, stretch, shift = pose
    row = dict(row, match_volume=training_set.paths[SOURCE], match_slice=SOURCE_SLICE)
    # the match's slice centre, from the training file's own geometry (SimpleITK-free)
    row.update(
        {f"match_position_{a}": v for a, v in zip("xyz", match_centre(training_set), strict=True)}
    )
    right = overlay_difference(logic, with_pose(row, *pose))
    negated = overlay_difference(logic, with_pose(row, flip, -angle, stretch, shift))
    reflected_shift = overlay_difference(
        logic, with_pose(row, flip, angle, stretch, (-shift[0], shift[1]))
    )
    assert right < 4.0, right
    assert negated > 3 * right and negated > 8.0, (right, negated)
    assert reflected_shift > 2 * right, (right, reflected_shift)
    if stretch[0] != stretch[1]:
        swapped = overlay_difference(logic, with_pose(row, flip, angle, stretch[::-1], shift))
        assert swapped > 2 * right, (right, swapped)


def test_engine_pose_lines_up(logic, training_set, scored):
    pose, row = scored
    flip, angle, _, _ = pose
    assert row["flagged"] and row["match_slice"] == SOURCE_SLICE
    assert row["transform"] == flip
    assert row["angle_deg"] == pytest.approx(angle, abs=1.5)
    assert overlay_difference(logic, row) < 6.0


def match_centre(training_set):
    """LPS mm of training slice SOURCE_SLICE's centre: the volume's (unmirrored) origin plus
    the centre pixel, the files being LPS-aligned with spacing SPACING (conftest)."""
    origin = np.array([10.0, -5.0, 3.0]) * SOURCE
    shape = training_set.canonical[SOURCE].shape  # [z, y, x]
    index = np.array([(shape[2] - 1) / 2.0, (shape[1] - 1) / 2.0, float(SOURCE_SLICE)])
    return origin + index * np.array(SPACING)
