"""The volume stage's 3D pose places the whole training volume on a tilted copy (issue 12),
and on a mirrored and zoomed one (issue 21: the placement carries the full affine).

The copy is a training volume rotated out of the slice plane and shifted (and mirrored and
scaled), made by scipy.ndimage from the pose written out here (not by the engine). A volume
row carrying that pose is shown through the real slice logic: rendered at opacity 0
(synthetic only) and 1 (the placed training volume only), the two must agree pixel for
pixel in the interior, and the same training volume placed by the slice-level rule (no 3D
pose) must not.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.scoring.results import ScoreResult, VolumeResult
from MemorizationIndexLib.search.affine_pose import AffinePose, mirror_from_text
from MemorizationIndexLib.search.volume_pose import RigidPose, physical_centre
from MemorizationIndexSlicer import engine
from scipy import ndimage
from test_overlay import interior, render, same_window

ANGLES = (5.0, -3.0, 0.0)  # about left-right, then anterior-posterior (degrees)
SHIFT = (2.0, -3.0, 4.0)  # LPS mm


def moved_by_scipy(image: sitk.Image, pose: RigidPose | AffinePose) -> sitk.Image:
    """copy(p') = image(pose^-1 p') on the same grid (identity direction), by scipy."""
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    values = sitk.GetArrayFromImage(image)
    # Output index (z, y, x) -> physical -> training physical -> training index (z, y, x).
    r_inv = np.linalg.inv(AffinePose.of(pose).linear)
    to_phys = np.diag(spacing[::-1])
    flip = np.eye(3)[::-1]  # (z, y, x) <-> (x, y, z)
    linear = np.diag(1.0 / spacing[::-1]) @ flip @ r_inv @ flip @ to_phys
    c, t = pose.centre_mm, pose.shift_mm
    offset_xyz = (r_inv @ (origin - c - t) + c - origin) / spacing
    moved = ndimage.affine_transform(values, linear, offset=offset_xyz[::-1], order=1)
    out = sitk.GetImageFromArray(moved.astype(np.float32))
    out.CopyInformation(image)
    return out


def tilted(centre):
    return RigidPose.from_angles(ANGLES, SHIFT, centre)


def mirrored_and_zoomed(centre):
    """Mirrored left-right, zoomed 1.1 in-plane and 0.95 along S, tilted and shifted."""
    return AffinePose.compose((1.1, 1.1, 0.95), mirror_from_text("RPS"), ANGLES, SHIFT, centre)


@pytest.mark.parametrize("make_pose", [tilted, mirrored_and_zoomed])
def test_a_moved_copy_is_overlaid_by_the_volume_pose(logic, training_set, tmp_path, make_pose):
    source = training_set.paths[0]
    canonical = engine.readCanonicalImage(source)
    pose = make_pose(physical_centre(canonical))
    copy_path = tmp_path / "tilted-copy.nii.gz"
    sitk.WriteImage(moved_by_scipy(canonical, pose), str(copy_path))

    k = 6  # an axial slice in the middle of the copy
    nx, ny, _ = canonical.GetSize()
    centre = canonical.TransformContinuousIndexToPhysicalPoint(((nx - 1) / 2, (ny - 1) / 2, k))
    row = {
        "volume": str(copy_path),
        "series_uid": "",
        "slice_index": k,
        "position_x": centre[0],
        "position_y": centre[1],
        "position_z": centre[2],
        "match_volume": source,
        "match_series_uid": "",
        "match_slice": k,
        "match_position_x": centre[0],
        "match_position_y": centre[1],
        "match_position_z": centre[2],
        "transform": "none",
    }
    volume = VolumeResult(
        volume=str(copy_path), series_uid="", n_slices=1, mi=1.0, p_value=0.0, oni=-1.0,
        mi_max=1.0, mi_q90=1.0, fraction_flagged=1.0, match_volume=source, match_fraction=1.0,
        longest_run=1, flip="none", flagged=True, warnings="", volume_match=source,
        aligned_similarity=0.99, pose=pose,
    )  # fmt: skip
    logic.result = ScoreResult(
        slices=[], volumes=[volume], summary={}, skipped=[],
        query_thumbnails=np.zeros((0, 1, 1), np.uint8), match_rows=np.zeros(0, int), alpha=0.01,
    )  # fmt: skip

    synthetic, match, transform = logic.showMatch(row, opacity=0.0)
    matrix = np.array(
        [[transform.GetMatrixTransformToParent().GetElement(i, j) for j in range(4)]
         for i in range(4)]
    )  # fmt: skip
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose(flip @ matrix @ flip, pose.homogeneous(), atol=1e-6)
    same_window(synthetic, match)
    synthetic_only = render(logic, 0.0)
    placed = render(logic, 1.0)
    core = interior(synthetic_only) & (placed.max(axis=2) > 0)
    assert core.mean() > 0.2
    difference = np.abs(synthetic_only - placed).max(axis=2)[core]
    spread = synthetic_only[core].std()
    assert spread > 20
    assert difference.mean() < 0.1 * spread, (difference.mean(), spread)

    # Negative control: the slice-level placement (matched slice onto the synthetic slice,
    # no 3D pose) cannot follow the tilt.
    logic.placeMatch(synthetic, match, row | {"volume": "not-scored"})
    flat = render(logic, 1.0)
    off = np.abs(synthetic_only - flat).max(axis=2)[core]
    assert off.mean() > 3 * difference.mean(), (off.mean(), difference.mean())
