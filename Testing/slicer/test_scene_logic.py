"""The MRML glue's foundations: scene set-up, volume nodes <-> engine images, match geometry."""

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from MemorizationIndexLib.scans import ReadOptions, read_scan
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
from MemorizationIndexSlicer.placement import (
    FLIP_SIGNS,
    matchPlacementMatrix,
    poseOfRow,
    sliceFrame,
    snapPose,
)
from MemorizationIndexSlicer.volumes import (
    canonicalDirection,
    imageFromVolumeNode,
    volumeNodeFromImage,
)
from slicer_test_helpers import SLICE_VIEWS


def test_scene_is_set_up_as_slicer_sets_it_up(scene_and_app):
    scene, app = scene_and_app
    assert app.GetColorLogic() is not None
    assert scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None
    assert app.GetSliceLogics().GetNumberOfItems() == len(SLICE_VIEWS)
    logic = MemorizationIndexSceneLogic(scene, app)
    for name in SLICE_VIEWS:
        slice_logic = app.GetSliceLogicByLayoutName(name)
        assert slice_logic is logic.sliceLogic(name)
        assert slice_logic.GetSliceNode() is logic.sliceNode(name)
        assert slice_logic.GetSliceCompositeNode() is logic.sliceCompositeNode(name)
    # The orientation presets Slicer's views switch between are in the scene.
    red = logic.sliceNode("Red")
    for orientation in ("Axial", "Coronal", "Sagittal"):
        assert red.SetOrientation(orientation)
        assert red.GetOrientation() == orientation


def oblique_image():
    voxels = np.random.default_rng(1).random((6, 20, 24)).astype(np.float32)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((12.0, -7.0, 40.0))
    angle = np.radians(10.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    image.SetDirection(tuple((rotation @ np.diag([1.0, -1.0, -1.0])).ravel()))
    return image


def test_volume_node_and_engine_image_round_trip(scene_and_app):
    """LPS (engine) <-> RAS (Slicer) conversion keeps voxels and every bit of geometry."""
    scene, _ = scene_and_app
    image = oblique_image()
    node = volumeNodeFromImage(scene, image, "oblique")
    back = imageFromVolumeNode(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetOrigin(), image.GetOrigin())
    assert np.allclose(back.GetSpacing(), image.GetSpacing())
    assert np.allclose(back.GetDirection(), image.GetDirection())
    # The same physical point is where Slicer (RAS) and ITK (LPS) say it is.
    ijk = (3, 5, 2)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((*ijk, 1.0))[:3]
    lps = image.TransformIndexToPhysicalPoint(ijk)
    assert np.allclose(ras, (-lps[0], -lps[1], lps[2]))


def test_scoring_a_node_sees_what_reading_the_file_sees(training_set, logic, scene_and_app):
    """A node made from a file stored mirrored gives the engine the slices read_scan gives."""
    scene, _ = scene_and_app
    path = training_set.paths[1]  # stored with its x axis reversed
    stored = sitk.ReadImage(path)
    assert stored.GetDirection()[0] == -1.0
    node = volumeNodeFromImage(scene, stored, "stored")
    from_node = logic.scanFromVolumeNode(node)
    from_file = read_scan(path, ReadOptions(axis="axial"))
    assert np.array_equal(from_node.slice_indices, from_file.slice_indices)
    assert np.allclose(from_node.positions, from_file.positions)
    assert np.array_equal(from_node.slices, from_file.slices)
    assert np.array_equal(from_file.slices[7], training_set.canonical[1][7])


def test_canonical_direction_is_the_engines():
    image = oblique_image()
    assert np.allclose(
        canonicalDirection(np.array(image.GetDirection()).reshape(3, 3)),
        np.array(sitk.DICOMOrient(image, "LPS").GetDirection()).reshape(3, 3),
    )


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("flip", sorted(FLIP_SIGNS))
def test_placement_maps_centre_to_centre_and_mirrors_in_plane(axis, flip):
    direction_s = np.eye(3)
    angle = np.radians(4.0)
    direction_t = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    c_s = np.array([5.0, -3.0, 20.0])
    c_t = np.array([-40.0, 12.0, -7.5])
    m = matchPlacementMatrix(c_s, c_t, direction_s, direction_t, axis, flip)
    ras = np.diag([-1.0, -1.0, 1.0])

    def place(lps_point):  # apply the RAS matrix to an LPS point, answer in LPS
        return ras @ (m[:3, :3] @ (ras @ lps_point) + m[:3, 3])

    assert np.allclose(place(c_t), c_s)
    frame_s, frame_t = sliceFrame(direction_s, axis), sliceFrame(direction_t, axis)
    col_sign, row_sign = FLIP_SIGNS[flip]
    assert np.allclose(place(c_t + frame_t[:, 0]) - c_s, col_sign * frame_s[:, 0])
    assert np.allclose(place(c_t + frame_t[:, 1]) - c_s, row_sign * frame_s[:, 1])
    assert np.allclose(place(c_t + frame_t[:, 2]) - c_s, frame_s[:, 2])  # same plane
    assert np.isclose(np.linalg.det(m[:3, :3]), col_sign * row_sign)


def test_slice_frame_matches_the_engines_display(tmp_path):
    """Pixel (row 0, column 0) of the engine's slice lies where the frame says, every axis."""
    voxels = np.random.default_rng(2).random((18, 20, 24)).astype(np.float32) + 1.0
    stored = sitk.GetImageFromArray(voxels)
    stored.SetSpacing((0.9, 1.1, 1.7))
    stored.SetOrigin((30.0, -12.0, 55.0))
    stored.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))  # stored right-to-left, head-to-foot
    path = str(tmp_path / "stored.nii.gz")
    sitk.WriteImage(stored, path)
    canonical = sitk.DICOMOrient(sitk.ReadImage(path), "LPS")
    direction = np.array(canonical.GetDirection()).reshape(3, 3)
    for axis in ("axial", "coronal", "sagittal"):
        volume = read_scan(path, ReadOptions(axis=axis, min_foreground=0.0))
        frame = sliceFrame(direction, axis)
        rows, cols = volume.slices.shape[1:]
        spacing_r, spacing_c = volume.pixel_spacing
        k = len(volume) // 2
        corner = (
            volume.positions[k]
            - frame[:, 0] * spacing_c * (cols - 1) / 2
            - frame[:, 1] * spacing_r * (rows - 1) / 2
        )
        index = canonical.TransformPhysicalPointToContinuousIndex(tuple(corner))
        i, j, kk = (int(round(x)) for x in index)
        assert np.allclose(index, (i, j, kk), atol=1e-6), axis
        assert sitk.GetArrayViewFromImage(canonical)[kk, j, i] == volume.slices[k][0, 0], axis


def test_placement_follows_the_verified_pose():
    """y = D(scale) * R(angle) * flip * x + shift, in the synthetic slice's display frame."""
    direction = canonicalDirection(np.diag([-1.0, 1.0, 1.0]))
    c_s, c_t = np.array([1.0, 2.0, 3.0]), np.array([-5.0, 0.5, 9.0])
    angle, scale, shift = 30.0, (1.2, 0.9), (3.0, -2.0)
    m = matchPlacementMatrix(c_s, c_t, direction, direction, "axial", "hflip", angle, scale, shift)
    ras = np.diag([-1.0, -1.0, 1.0])
    frame = sliceFrame(direction, "axial")

    def place(lps_point):
        return ras @ (m[:3, :3] @ (ras @ lps_point) + m[:3, 3])

    a = np.radians(angle)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    for x in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (2.0, -3.0)):
        point = c_t + frame[:, :2] @ np.array(x)
        y = np.diag(scale) @ rotation @ np.array([-x[0], x[1]]) + np.array(shift)
        assert np.allclose(place(point), c_s + frame[:, :2] @ y)
    assert np.allclose(place(c_t + frame[:, 2]), c_s + frame[:, :2] @ shift + frame[:, 2])


def test_pose_of_a_row_without_or_with_broken_verification_is_just_the_flip():
    assert poseOfRow({"transform": "vflip"}) == ("vflip", 0.0, (1.0, 1.0), (0.0, 0.0), False)
    broken = {"transform": "hflip", "verified_ncc": float("nan"), "angle_deg": 5.0}
    assert poseOfRow(broken)[4] is False and poseOfRow(broken)[1] == 0.0
    row = {"transform": "none", "verified_ncc": 0.9, "angle_deg": 4.0}
    row.update(scale_x=1.1, scale_y=0.95)
    row.update(shift_x_mm=1.5, shift_y_mm=float("nan"))
    assert poseOfRow(row)[4] is False  # a pose with a hole is not used
    row["shift_y_mm"] = -0.5
    assert poseOfRow(row) == ("none", 4.0, (1.1, 0.95), (1.5, -0.5), True)
    assert snapPose(0.1, (1.002, 0.9), (0.05, -0.3)) == (0.0, (1.0, 0.9), (0.0, -0.3))
