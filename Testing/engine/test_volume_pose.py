"""Volume stage (issue 12): pose seed, 3D registration, resampling on the synthetic planes.

Moved volumes are made with scipy.ndimage.affine_transform, not with the module's own
SimpleITK resampler, so a convention error in one cannot cancel one in the other. Subjects
are nilearn's MNI152 T1 at 4 mm under smooth random deformations (fast).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.search import volume_pose as vp
from scipy import ndimage

SPACING = 4.0
# A known pose: tilts about the left-right and anterior-posterior axes, a 3D shift.
ANGLES = (6.0, -4.0, 0.0)
SHIFT = (5.0, -6.0, 4.5)


def _template() -> sitk.Image:
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    image = sitk.Cast(sitk.ReadImage(str(nilearn_datasets.MNI152_FILE_PATH)), sitk.sitkFloat32)
    image = sitk.DICOMOrient(image, "LPS")
    image = sitk.SmoothingRecursiveGaussian(image, (SPACING - 1.0) / 2.0)
    size = [
        int(round(n * s / SPACING))
        for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (SPACING,) * 3,
        image.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip


def _like(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(like)
    return image


def _subject(template: sitk.Image, seed: int) -> sitk.Image:
    """The template under a smooth random deformation (about 4 mm), with mild Rician noise."""
    rng = np.random.default_rng(seed)
    values = sitk.GetArrayFromImage(template)
    shape = values.shape
    coords = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    warped = []
    for axis in range(3):
        grid = rng.standard_normal((4, 4, 4))
        disp = ndimage.zoom(grid, [s / 4 for s in shape], order=3, grid_mode=True, mode="nearest")
        warped.append(coords[axis] + 4.0 / SPACING * disp[: shape[0], : shape[1], : shape[2]])
    out = ndimage.map_coordinates(values, warped, order=1, mode="constant")
    out = out / np.percentile(out, 99)
    return _like(_rician(out, 0.02, rng), template)


def _rician(values, sigma, rng):
    return np.hypot(values + rng.normal(0, sigma, values.shape), rng.normal(0, sigma, values.shape))


def _move_scipy(image: sitk.Image, angles_deg, shift_mm, seed: int = 7) -> sitk.Image:
    """The content moved by p' = R (p - c) + c + t (c: grid centre), by scipy, plus noise."""
    spacing = np.array(image.GetSpacing())  # x, y, z
    size = np.array(image.GetSize())
    centre_index = (size - 1) / 2.0
    r = vp.rotation_matrix(angles_deg)
    # input index (xyz) = S^-1 R^T S (out - ci) + ci - S^-1 R^T t
    s, s_inv = np.diag(spacing), np.diag(1.0 / spacing)
    m_xyz = s_inv @ r.T @ s
    off_xyz = centre_index - m_xyz @ centre_index - s_inv @ r.T @ np.asarray(shift_mm)
    flip = np.eye(3)[::-1]  # xyz <-> zyx
    values = sitk.GetArrayFromImage(image)
    moved = ndimage.affine_transform(
        values, flip @ m_xyz @ flip, offset=flip @ off_xyz, order=3, mode="constant"
    )
    rng = np.random.default_rng(seed)
    return _like(_rician(np.clip(moved, 0, None), 0.02, rng), image)


@pytest.fixture(scope="module")
def cohort():
    template = _template()
    train = _subject(template, 1)
    copy = _move_scipy(train, ANGLES, SHIFT)
    # Hot voxels, as generative models emit: intensity handling must not be min/max.
    hot = sitk.GetArrayFromImage(copy)
    hot.flat[np.random.default_rng(3).choice(hot.size, 30, replace=False)] = 1e4
    copy = _like(hot, copy)
    novel = _subject(template, 2)
    return {"train": train, "copy": copy, "novel": novel}


@pytest.fixture(scope="module")
def registered(cohort):
    return vp.register_volumes(cohort["copy"], cohort["train"])


def _assert_pose(pose: vp.RigidPose, angles, shift, deg: float, mm: float) -> None:
    error_deg = np.abs(pose.angles_deg - np.asarray(angles))
    error_mm = np.linalg.norm(pose.shift_mm - np.asarray(shift))
    assert error_deg.max() < deg, (pose.angles_deg, angles)
    assert error_mm < mm, (pose.shift_mm, shift)


def test_pose_conventions_round_trip():
    pose = vp.RigidPose.from_angles((3.0, -7.0, 2.0), (1.0, 2.0, -3.0), (10.0, -5.0, 20.0))
    assert np.allclose(pose.angles_deg, (3.0, -7.0, 2.0))
    back = vp.RigidPose.from_sitk(pose.to_sitk(), pose.centre_mm)
    assert np.allclose(back.matrix, pose.matrix) and np.allclose(back.shift_mm, pose.shift_mm)
    points = np.array([[0.0, 0.0, 0.0], [50.0, -20.0, 30.0]])
    # to_sitk maps synthetic -> training: the inverse of apply.
    synth = pose.apply(points)
    to_train = pose.to_sitk()
    assert np.allclose([to_train.TransformPoint(p.tolist()) for p in synth], points)
    assert np.allclose(pose.apply_inverse(synth), points)
    moved = pose.recentred((0.0, 0.0, 0.0))
    assert np.allclose(moved.apply(points), synth)
    # A positive LR angle turns +y (posterior) towards +z (superior).
    tilt = vp.RigidPose.from_angles((90.0, 0.0, 0.0), (0, 0, 0), (0, 0, 0))
    assert np.allclose(tilt.apply([0.0, 1.0, 0.0]), [0.0, 0.0, 1.0])


def test_registration_recovers_known_pose_within_1_degree_1_mm(registered):
    _assert_pose(registered.pose, ANGLES, SHIFT, deg=1.0, mm=1.0)
    assert registered.similarity > 0.95
    assert registered.seconds < 30


def test_seed_from_slice_matches_with_outliers(cohort, registered):
    train = cohort["train"]
    truth = vp.RigidPose.from_angles(ANGLES, SHIFT, vp.physical_centre(train))
    # Synthetic axial slice centres; the matched training slice is the one nearest (in z)
    # to the true pre-image, its in-plane pose the true in-plane offset of that centre.
    nx, ny, nz = train.GetSize()
    ks = np.arange(8, nz - 8)
    syn = np.array(
        [train.TransformContinuousIndexToPhysicalPoint(((nx - 1) / 2, (ny - 1) / 2, float(k)))
         for k in ks]
    )  # fmt: skip
    pre = truth.apply_inverse(syn)
    origin_z, dz = train.GetOrigin()[2], train.GetSpacing()[2]
    j = np.clip(np.round((pre[:, 2] - origin_z) / dz), 0, nz - 1)
    trn = syn.copy()
    trn[:, 2] = origin_z + j * dz
    offset = truth.apply(trn) - syn
    inplane = np.stack([np.zeros(len(ks)), offset[:, 0], offset[:, 1]], axis=1)
    rng = np.random.default_rng(0)
    bad = rng.choice(len(ks), 5, replace=False)  # wrong matches
    trn[bad, 2] += rng.choice([-1, 1], 5) * rng.uniform(20, 40, 5)
    inplane[bad, 1:] += rng.uniform(-25, 25, (5, 2))
    seed = vp.seed_pose_from_slice_matches(syn, trn, vp.physical_centre(train), inplane)
    assert seed.rotation_estimated
    assert not seed.inliers[bad].any()
    _assert_pose(seed.pose, ANGLES, SHIFT, deg=2.0, mm=3.0)
    refined = vp.register_volumes(cohort["copy"], train, initial=seed.pose)
    _assert_pose(refined.pose, ANGLES, SHIFT, deg=1.0, mm=1.0)
    # Without in-plane poses the centres are collinear: a shift only.
    shift_only = vp.seed_pose_from_slice_matches(syn, trn, vp.physical_centre(train))
    assert not shift_only.rotation_estimated
    assert np.allclose(shift_only.pose.matrix, np.eye(3))


def test_off_grid_copy_matches_on_resampled_planes(cohort):
    """A copy off the training grid (half a slice in z, tilted): the odd slices a stride-2
    bank never stored match the training volume resampled on their planes."""
    train = cohort["train"]
    copy = _move_scipy(train, (4.0, 0.0, 0.0), (0.0, 0.0, SPACING / 2.0), seed=11)
    reg = vp.register_volumes(copy, train)
    values = sitk.GetArrayViewFromImage(copy)
    share = (values > 0.2).mean(axis=(1, 2))
    odd = np.array([k for k in range(1, len(share), 2) if share[k] > 0.15])
    resampled = vp.resample_on_slice_planes(train, copy, reg.pose, odd)
    synth = vp.synthetic_slices(copy, odd)
    nccs = np.array([vp.slice_ncc(s, t) for s, t in zip(synth, resampled, strict=True)])
    assert len(odd) >= 8 and nccs.min() >= 0.95, nccs
    # The nearest stored (even) training slice is a worse match.
    stored = sitk.GetArrayViewFromImage(train)
    nearest = np.array([vp.slice_ncc(synth[i], stored[k - 1]) for i, k in enumerate(odd)])
    assert nearest.mean() < nccs.mean() - 0.02


def test_resampled_planes_follow_the_displayed_orientation(cohort):
    train = cohort["train"]
    identity = vp.RigidPose.identity(vp.physical_centre(train))
    stored = sitk.GetArrayFromImage(train)
    for axis, view in (
        ("axial", stored[20]),
        ("coronal", stored[:, 20, :][::-1]),
        ("sagittal", stored[:, :, 20][::-1]),
    ):
        planes = vp.resample_on_slice_planes(train, train, identity, [20], axis)
        assert np.allclose(planes[0], view, atol=1e-3), axis
        assert np.allclose(vp.synthetic_slices(train, [20], axis)[0], view)


def test_novel_subject_scores_clearly_lower(cohort, registered):
    novel = vp.register_volumes(cohort["novel"], cohort["train"])
    assert novel.similarity < registered.similarity - 0.1, (novel.similarity, registered.similarity)
