"""The nearest-match overlay, checked on what the Red slice logic actually renders.

`vtkMRMLSliceLogic.GetImageDataConnection()` is the view's blended RGBA slice (background
and foreground at the set opacity), the image Slicer draws. Rendering it at opacity 0
(synthetic only) and 1 (placed training match only) and comparing pixels shows whether the
matched training slice lies exactly on the copied synthetic slice.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import slicer.util
import vtk
from MemorizationIndexSlicer import views
from MemorizationIndexSlicer.views import savePNG
from MemorizationIndexSlicer.volumes import ATTR_ROLE
from slicer_test_helpers import add_volume, copied_row, synthetic_with_copy


def artifact_dir(tmp_path) -> Path:
    """Where the test's PNGs go: $MEMORIZATION_INDEX_TEST_OUTPUT if set, else tmp_path."""
    out = Path(os.environ.get("MEMORIZATION_INDEX_TEST_OUTPUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def same_window(synthetic, match):
    """One fixed window for both volumes (the synthetic's foreground range): equal voxels
    give equal pixels, and the texture is visible in the saved pictures."""
    voxels = slicer.util.arrayFromVolume(synthetic)
    low, high = float(voxels[voxels > 0].min()), float(voxels.max())
    for node in (synthetic, match):
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(low, high)


def render(logic, opacity, view="Red"):
    logic.setOverlayOpacity(opacity, view)
    return logic.renderSliceView(view)[:, :, :3].astype(np.int16)


def interior(synthetic_only):
    """Pixels inside the synthetic volume, one pixel in from its edge (edges resample apart)."""
    inside = synthetic_only.max(axis=2) > 0
    core = inside.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            core &= np.roll(inside, shift, axis=axis)
    return core


def flagged_copy(logic, training_set, scene, flip):
    node = add_volume(
        scene, synthetic_with_copy(training_set, flip=flip), "synth", origin_lps=(-7.0, 4.0, 11.0)
    )
    result = logic.scoreVolume(node, device="cpu")
    row = copied_row(result, 5)
    index = result.slices.index(row)
    assert row["flagged"] and row["match_slice"] == 7
    assert row["transform"] == ("hflip" if flip else "none")
    return node, index, row


@pytest.mark.parametrize("flip", [False, True], ids=["copy", "flipped-copy"])
def test_matched_training_slice_lies_on_the_copied_slice_pixel_for_pixel(
    logic, training_set, scene_and_app, tmp_path, flip
):
    scene, _ = scene_and_app
    node, index, row = flagged_copy(logic, training_set, scene, flip)
    synthetic, match, transform = logic.showMatch(index, opacity=0.5)
    assert synthetic is node
    assert match.GetAttribute(ATTR_ROLE) == "match"
    assert match.GetTransformNodeID() == transform.GetID()  # placed, not resampled
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToParent(matrix)
    assert np.sign(matrix.Determinant()) == (-1 if flip else 1)  # a flip is a reflection
    composite = logic.sliceCompositeNode("Red")
    assert composite.GetBackgroundVolumeID() == node.GetID()
    assert composite.GetForegroundVolumeID() == match.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    # The Red view shows the slice, centred on the synthetic slice centre.
    centre = logic.syntheticSliceCentreRAS(node, row)
    slice_to_ras = logic.sliceNode("Red").GetSliceToRAS()
    assert np.allclose([slice_to_ras.GetElement(i, 3) for i in range(3)], centre)
    assert logic.sliceNode("Red").GetOrientation() == "Axial"

    same_window(node, match)
    synthetic_only = render(logic, 0.0)
    match_only = render(logic, 1.0)
    blend = render(logic, 0.5)
    out = artifact_dir(tmp_path)
    name = "flipped-copy" if flip else "copy"
    for label, image in (("synthetic", synthetic_only), ("match", match_only), ("blend", blend)):
        savePNG(image.astype(np.uint8), out / f"overlay-{name}-{label}.png")

    core = interior(synthetic_only)
    assert core.mean() > 0.3  # the slice fills much of the view
    difference = np.abs(synthetic_only - match_only).max(axis=2)[core]
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 1, difference.max()
    # The rendered slice really is the copied content, not two blank images.
    assert synthetic_only[core].std() > 20, synthetic_only[core].std()


def test_a_wrong_placement_does_not_line_up(logic, training_set, scene_and_app):
    """Negative control: ignoring the flip the match was found through misplaces it."""
    scene, _ = scene_and_app
    node, index, row = flagged_copy(logic, training_set, scene, flip=True)
    synthetic, match, _ = logic.showMatch(index, opacity=0.0)
    same_window(synthetic, match)
    synthetic_only = render(logic, 0.0)
    logic.placeMatch(synthetic, match, dict(row, transform="none"))
    misplaced = render(logic, 1.0)
    core = interior(synthetic_only)
    assert np.abs(synthetic_only - misplaced).max(axis=2)[core].mean() > 10


def test_opacity_fades_between_the_synthetic_slice_and_its_match_and_stepping_keeps_zoom(
    logic, training_set, scene_and_app
):
    scene, _ = scene_and_app
    node = add_volume(scene, synthetic_with_copy(training_set), "synth")
    logic.scoreVolume(node, device="cpu")
    novel = logic.tableRows[-1]  # the least similar slice: its match looks different
    synthetic, match, _ = logic.showMatch(novel, opacity=0.0)
    same_window(synthetic, match)
    frames = {opacity: render(logic, opacity) for opacity in (0.0, 0.25, 0.5, 1.0)}
    core = interior(frames[0.0])
    a, b = frames[0.0][core], frames[1.0][core]
    assert np.abs(a - b).mean() > 10  # different images at the two ends
    for opacity in (0.25, 0.5):
        expected = (1.0 - opacity) * a + opacity * b
        assert np.abs(frames[opacity][core] - expected).max() <= 2
        assert np.abs(frames[opacity][core] - a).mean() > 2
    assert logic.sliceCompositeNode("Red").GetForegroundOpacity() == 1.0
    # Stepping to another slice keeps the user's zoom; the view still jumps to the slice.
    red = logic.sliceNode("Red")
    red.SetFieldOfView(31.0, 31.0, 1.0)
    logic.showMatch(logic.tableRows[0])
    assert red.GetFieldOfView()[0] == pytest.approx(31.0)
    centre = logic.syntheticSliceCentreRAS(synthetic, logic.result.slices[logic.tableRows[0]])
    assert np.allclose([red.GetSliceToRAS().GetElement(i, 3) for i in range(3)], centre)


def test_side_by_side_shows_the_match_alone_in_the_second_view(logic, training_set, scene_and_app):
    scene, _ = scene_and_app
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    node, index, _ = flagged_copy(logic, training_set, scene, flip=True)
    synthetic, match, _ = logic.showMatch(index, opacity=0.7)
    same_window(synthetic, match)
    logic.setCompareLayout(True)
    assert layout.GetViewArrangement() == layout.SlicerLayoutSideBySideView
    red, yellow = logic.sliceCompositeNode("Red"), logic.sliceCompositeNode("Yellow")
    assert red.GetForegroundOpacity() == 0.0 and red.GetBackgroundVolumeID() == node.GetID()
    assert yellow.GetBackgroundVolumeID() == match.GetID() and not yellow.GetForegroundVolumeID()
    assert red.GetLinkedControl() and yellow.GetLinkedControl()
    assert logic.sliceNode("Yellow").GetOrientation() == "Axial"
    left = logic.renderSliceView("Red")[:, :, :3].astype(np.int16)
    right = logic.renderSliceView("Yellow")[:, :, :3].astype(np.int16)
    core = interior(left)
    assert np.abs(left - right).max(axis=2)[core].mean() < 0.5  # the copy, side by side
    logic.setCompareLayout(False)
    assert layout.GetViewArrangement() == layout.SlicerLayoutFourUpView
    assert red.GetForegroundVolumeID() == match.GetID()
    assert red.GetForegroundOpacity() == pytest.approx(0.7)


def test_an_oblique_volume_is_shown_in_its_own_plane(scene_and_app):
    """Not resliced across the engine's slices: the view takes the volume's own slice plane
    nearest the bank's axis (vtkMRMLSliceNode::RotateToVolumePlane), not RAS axial."""
    scene, app = scene_and_app
    tilt = np.radians(20.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]
    )
    node = add_volume(scene, np.ones((12, 40, 48), np.float32), "oblique")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    ijk_to_ras[:3, :3] = rotation @ ijk_to_ras[:3, :3]
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    views.showLayers(scene, app, "Red", node, None, 0.0, "axial", (0.0, 0.0, 0.0))
    slice_to_ras = slicer.util.arrayFromVTKMatrix(views.sliceNode(scene, "Red").GetSliceToRAS())
    volume_axes = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    normal = slice_to_ras[:3, 2]
    assert abs(normal @ volume_axes[:, 2]) == pytest.approx(1.0, abs=1e-9)  # the k axis
    assert abs(slice_to_ras[:3, 0] @ volume_axes[:, 0]) == pytest.approx(1.0, abs=1e-9)
    assert abs(normal @ np.array([0.0, 0.0, 1.0])) < 0.95  # RAS axial would be 1
