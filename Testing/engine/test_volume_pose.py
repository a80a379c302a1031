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

from .moved_copies import ANGLES, SHIFT, SPACING, like, move_scipy, subject, template


@pytest.fixture(scope="module")
def cohort():
    base = template()
    train = subject(base, 1)
    copy = move_scipy(train, ANGLES, SHIFT)
    # Hot voxels, as generative models emit: intensity handling must not be min/max.
    hot = sitk.GetArrayFromImage(copy)
    hot.flat[np.random.default_rng(3).choice(hot.size, 30, replace=False)] = 1e4
    copy = like(hot, copy)
    novel = subject(base, 2)
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
    copy = move_scipy(train, (4.0, 0.0, 0.0), (0.0, 0.0, SPACING / 2.0), seed=11)
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
