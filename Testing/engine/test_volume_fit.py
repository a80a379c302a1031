"""Volume stage beyond a rigid pose (issue 21): mirrored, zoomed and header-mangled copies.

Copies are made outside the engine (moved_copies.py: numpy flips and transposes, scipy
zooms, SimpleITK headers written by hand) from MNI152-made heads at 4 mm, with fresh Rician
noise. Each must register at aligned NCC >= 0.95 with its pose, mirror and scale recovered
within 1 degree, 1 mm and 1 %; another subject's fit must not rise above its rigid one.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.search import volume_fit as vf
from MemorizationIndexLib.search import volume_pose as vp
from MemorizationIndexLib.search.affine_pose import (
    AffinePose,
    decompose,
    mirror_from_text,
    mirror_text,
)

from .moved_copies import identity_header, mirrored, subject, swapped, template, zoomed

COPIES = {
    "mirror-LR": lambda t: mirrored(t, 0),
    "mirror-AP": lambda t: mirrored(t, 1),
    "mirror-SI": lambda t: mirrored(t, 2),
    "zoom-0.9": lambda t: zoomed(t, (0.9, 0.9, 0.9)),
    "zoom-1.1": lambda t: zoomed(t, (1.1, 1.1, 1.1)),
    "zoom-in-plane-0.9": lambda t: zoomed(t, (0.9, 0.9, 1.0)),
    "zoom-in-plane-1.1": lambda t: zoomed(t, (1.1, 1.1, 1.0)),
    "identity-header-1.1mm": None,  # built from a training volume at 4.4 mm, declared 4.0
    "axes-PS-swapped": lambda t: swapped(t, (1, 2)),
}


@pytest.fixture(scope="module")
def heads():
    base = template()
    return {"train": subject(base, 1), "novel": subject(base, 2)}


def centre_seed(synthetic: sitk.Image, training: sitk.Image) -> vp.RigidPose:
    """What slice matches at the wrong spacing or axes still give: centre onto centre."""
    c = vp.physical_centre(training)
    return vp.RigidPose(np.eye(3), vp.physical_centre(synthetic) - c, c)


def copy_of(name: str, train: sitk.Image):
    if name != "identity-header-1.1mm":
        return (train, *COPIES[name](train))
    true = sitk.Image(train)
    true.SetSpacing([4.4] * 3)  # the scan's true spacing; the copy declares 4 mm
    return (true, *identity_header(true, 4.0))


def assert_pose(found: AffinePose, truth: AffinePose) -> None:
    assert found.mirror == truth.mirror, (found.mirror, truth.mirror)
    assert np.allclose(found.scale, truth.scale, rtol=0.01), (found.scale, truth.scale)
    assert np.abs(found.angles_deg - truth.angles_deg).max() < 1.0, found.angles_deg
    at = truth.centre_mm
    assert np.linalg.norm(found.apply(at) - truth.apply(at)) < 1.0


@pytest.mark.parametrize("name", list(COPIES))
def test_copy_is_registered_with_its_mirror_and_scale(heads, name):
    training, copy, truth = copy_of(name, heads["train"])
    fit = vf.fit_volume(copy, training, centre_seed(copy, training))
    assert fit.similarity >= 0.95, (name, fit.similarity, fit.tried)
    assert fit.rigid_similarity < vf.GOOD_FIT  # a rigid fit alone cannot explain it
    assert_pose(fit.pose, truth)
    assert fit.registrations <= 1 + 2 + len(vf.DEFAULT_FRAMES) + 2


def test_novel_subject_is_not_raised_by_mirrors_or_scales(heads):
    novel, train = heads["novel"], heads["train"]
    fit = vf.fit_volume(novel, train, centre_seed(novel, train))
    assert fit.similarity <= fit.rigid_similarity + 0.01, (fit.similarity, fit.tried)
    assert fit.pose.rigid
    assert fit.registrations > 1  # the alternatives were tried, and refused


def test_a_copy_that_only_moved_keeps_its_rigid_fit(heads):
    from .moved_copies import ANGLES, SHIFT, move_scipy

    train = heads["train"]
    copy = move_scipy(train, ANGLES, SHIFT)
    fit = vf.fit_volume(copy, train, vp.RigidPose.identity(vp.physical_centre(train)))
    assert fit.registrations == 1 and fit.pose.rigid and fit.similarity > 0.95
    truth = vp.RigidPose.from_angles(ANGLES, SHIFT, vp.physical_centre(train))
    assert np.abs(fit.pose.angles_deg - truth.angles_deg).max() < 1.0


# ---------------------------------------------------------------- the pose and its pieces
def test_affine_pose_round_trips_through_its_summary_and_sitk():
    mirror = mirror_from_text("RSP")  # L-R mirrored, P and S swapped
    pose = AffinePose.compose((1.1, 0.9, 1.05), mirror, (3.0, -2.0, 5.0), (4, -5, 6), (1, 2, 3))
    assert pose.mirror == "RSP" and pose.mirrored is False  # two reflections: proper
    scale, g, r = decompose(pose.linear)
    assert np.allclose(scale, (1.1, 0.9, 1.05)) and np.allclose(g, mirror)
    assert np.allclose(vp.rotation_angles(r), (3.0, -2.0, 5.0))
    row = pose.summary()
    assert row["axes"] == "RSP" and row["scale"] == pytest.approx((1.1 * 0.9 * 1.05) ** (1 / 3))
    again = AffinePose.from_summary(row)
    assert np.allclose(again.homogeneous(), pose.homogeneous())
    points = np.array([[0.0, 0.0, 0.0], [50.0, -20.0, 30.0]])
    synthetic = pose.apply(points)
    back = [pose.to_sitk().TransformPoint(p.tolist()) for p in synthetic]
    assert np.allclose(back, points) and np.allclose(pose.apply_inverse(synthetic), points)
    assert np.allclose(pose.homogeneous() @ [*points[1], 1.0], [*synthetic[1], 1.0])
    # A rigid row (the volume stage before issue 21) reads as rigid.
    rigid = vp.RigidPose.from_angles((3.0, 0.0, 0.0), (1, 2, 3), (0, 0, 0))
    old = rigid.summary() | {"scale": 1.0}
    assert np.allclose(AffinePose.from_summary(old).homogeneous(), rigid.homogeneous())
    assert AffinePose.of(rigid).rigid and "mirrored" not in AffinePose.of(rigid).text()
    assert "mirrored" in AffinePose.compose((1,) * 3, mirror_from_text("RPS"), (0,) * 3,
                                            (0,) * 3, (0,) * 3).text()  # fmt: skip


def test_mirror_text_names_where_each_training_axis_went():
    assert mirror_text(np.eye(3)) == "LPS"
    assert mirror_text(np.diag([1.0, -1.0, 1.0])) == "LAS"
    with pytest.raises(ValueError, match="axis order"):
        mirror_from_text("LLS")


def test_slice_matches_hint_the_mirror_and_the_scale():
    trn = np.zeros((10, 3))
    trn[:, 2] = np.arange(10) * 4.0
    syn = trn.copy()
    syn[:, 2] = 100.0 - trn[:, 2] / 1.1  # reversed slice order at the wrong spacing
    syn[3, 2] = 7.0  # one wrong match
    slope = vf.slice_axis_slope(syn, trn, "axial")
    assert slope == pytest.approx(-1 / 1.1, rel=0.01)
    hint = vf.hinted_frame(["hflip"] * 6 + ["none"] * 3, slope, "axial")
    assert np.allclose(hint, np.diag([-1.0, 1.0, -1.0]))
    assert np.allclose(vf.hinted_frame(None, 1.0, "coronal"), np.eye(3))
    assert np.allclose(vf.hinted_frame(["vflip"], 1.0, "coronal"), np.diag([1.0, 1.0, -1.0]))
    assert vf.slice_axis_slope(syn[:2], trn[:2], "axial") == 1.0  # too few to tell


def test_umeyama_recovers_a_similarity_and_kabsch_stays_rigid():
    rng = np.random.default_rng(4)
    source = rng.uniform(-50, 50, (20, 3))
    r = vp.rotation_matrix((10.0, -5.0, 20.0))
    target = 1.1 * source @ r.T + np.array([3.0, -4.0, 5.0])
    sr, b = vp.umeyama(source, target)
    assert np.allclose(sr, 1.1 * r) and np.allclose(b, (3.0, -4.0, 5.0))
    rigid, _ = vp.kabsch(source, target)
    assert np.allclose(rigid, r)  # no scale: the rotation alone
