"""Stage 3 (issue 12): copies that moved in 3D or fall between the bank's slices are caught.

Subjects are MNI152-made heads (moved_copies.py); copies are moved by scipy.ndimage, never
by the engine's own resampler. One bank, built at stride 2, serves every case: a copy
scored at stride 1 has odd slices with no stored counterpart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.bank.build import build_bank
from MemorizationIndexLib.bank.feature_bank import load_bank
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.encoding.vit import EncoderConfig
from MemorizationIndexLib.errors import BankError
from MemorizationIndexLib.report.files import write_report
from MemorizationIndexLib.scoring.score import score
from MemorizationIndexLib.search.volume_pose import RigidPose
from MemorizationIndexLib.search.volume_stage import (
    CompactVolume,
    CompactVolumeStore,
    candidate_volumes,
    plane_points,
)

from .moved_copies import move_scipy, subject, template

N_TRAIN = 8
TILT = (6.0, 0.0, 0.0)  # about the left-right axis: each slice cuts across several
MOVED = ((3.0, -4.0, 0.0), (4.0, -5.0, 6.0))  # tilt about two axes and an 8.8 mm shift


# ---------------------------------------------------------------------- the pieces
def test_compact_volume_keeps_geometry_and_samples_voxel_centres():
    values = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    compact = CompactVolume.of(image, grid_mm=2.0)
    assert compact.voxels.shape == (4, 5, 6) and compact.voxels.dtype == np.uint8
    assert np.allclose(compact.origin, (-10.0, 5.0, 30.0))
    # Voxel (x=2, y=3, z=1) sits at origin + 2 mm * index; its stored value comes back.
    point = np.array([-10.0 + 4.0, 5.0 + 6.0, 30.0 + 2.0])
    expected = compact.voxels[1, 3, 2] / 255.0
    assert compact.sample(point[None])[0] == pytest.approx(expected, abs=1e-6)
    assert compact.sample(np.array([[500.0, 0.0, 0.0]]))[0] == 0.0  # outside: zero
    store = CompactVolumeStore.of([compact, compact])
    assert np.array_equal(store[1].voxels, compact.voxels)
    with pytest.raises(ValueError, match="voxel"):
        CompactVolumeStore(store.voxels[:-1], store.geometry)


def test_compact_volume_ignores_hot_voxels_outside_the_bounds():
    values = np.random.default_rng(0).uniform(0, 100, (8, 8, 8)).astype(np.float32)
    hot = values.copy()
    hot[0, 0, 0] = 1e6
    a = CompactVolume.of(sitk.GetImageFromArray(values), (0.0, 100.0))
    b = CompactVolume.of(sitk.GetImageFromArray(hot), (0.0, 100.0))
    assert np.abs(a.voxels.astype(int) - b.voxels.astype(int))[1:, 1:, 1:].max() <= 1


def test_plane_points_follow_the_displayed_axes():
    points = plane_points(np.array([[0.0, 0.0, 10.0]]), np.array([2.0]), "coronal", 4)
    # Columns run along +x (left), rows along -z (superior up), centred on the slice centre.
    assert np.allclose(points[0, 0, 1] - points[0, 0, 0], (2.0, 0.0, 0.0))
    assert np.allclose(points[0, 1, 0] - points[0, 0, 0], (0.0, 0.0, -2.0))
    assert np.allclose(points[0].reshape(-1, 3).mean(axis=0), (0.0, 0.0, 10.0))


def test_candidates_are_the_most_matched_volumes():
    matched = np.array([3, 3, 1, 1, 1, 2, 3])
    scores = np.array([0.9, 0.9, 0.1, 0.1, 0.1, 0.5, 0.9])
    assert candidate_volumes(matched, scores, 2) == [3, 1]  # ties by count: summed score
    assert candidate_volumes(matched, scores, 1) == [3]


def test_rigid_pose_round_trips_through_its_summary():
    pose = RigidPose.from_angles((3.0, -2.0, 1.0), (4.0, -5.0, 6.0), (1.0, 2.0, 3.0))
    again = RigidPose.from_summary(pose.summary())
    assert np.allclose(again.homogeneous(), pose.homogeneous())
    point = np.array([10.0, -20.0, 30.0])
    assert np.allclose(pose.homogeneous() @ [*point, 1.0], [*pose.apply(point), 1.0])


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume_stage")
    (root / "train").mkdir()
    (root / "synthetic").mkdir()
    base = template()
    train = [subject(base, 100 + i) for i in range(N_TRAIN)]
    for i, image in enumerate(train):
        sitk.WriteImage(image, str(root / "train" / f"sub-{i:02d}.nii.gz"))
    truth = {}

    def write(name, image, source=None, pose=None):
        path = root / "synthetic" / f"{name}.nii.gz"
        sitk.WriteImage(image, str(path))
        truth[str(path)] = {"source": source, "pose": pose}

    write("tilted", move_scipy(train[1], TILT, (0.0, 0.0, 0.0), seed=21), 1, (TILT, (0, 0, 0)))
    write("moved", move_scipy(train[2], *MOVED, seed=22), 2, MOVED)
    # The same anatomy on the same grid, fresh noise: at stride 1 half its slices are not
    # in the stride-2 bank.
    write("between-slices", move_scipy(train[3], (0, 0, 0), (0, 0, 0), seed=23), 3, None)
    for k in range(2):
        write(f"novel-{k}", subject(base, 900 + k), None, None)
    return root, truth


@pytest.fixture(scope="module")
def scored(cohort):
    root, truth = cohort
    settings = BankSettings(
        image_size=32, layers=(1, 2, 3), stride=2, calibration_folds=4, verify_k=6, pixel_k=2
    )
    encoder = settings.encoder(config=EncoderConfig.tiny())
    build_bank(root / "train", root / "bank", settings, encoder)
    bank = load_bank(root / "bank")
    result = score(bank, root / "synthetic", encoder, stride=1)
    write_report(result, bank, root / "report")
    return bank, result, truth


def _volume(result, truth, name):
    return next(v for v in result.volumes if v.volume.endswith(f"{name}.nii.gz"))


@pytest.mark.parametrize("name", ["tilted", "moved", "between-slices"])
def test_copies_that_left_the_slice_grid_are_flagged_with_their_source(scored, name):
    bank, result, truth = scored
    volume = _volume(result, truth, name)
    source = truth[volume.volume]["source"]
    assert volume.flagged, (name, volume.mi)
    assert volume.volume_match.endswith(f"sub-{source:02d}.nii.gz")
    assert volume.aligned_similarity > 0.9
    slices = [s for s in result.slices if s.volume == volume.volume]
    assert np.mean([s.flagged for s in slices]) > 0.6


@pytest.mark.parametrize("name", ["tilted", "moved"])
def test_pose_of_a_moved_copy_is_recovered(scored, name):
    _, result, truth = scored
    volume = _volume(result, truth, name)
    angles, shift = truth[volume.volume]["pose"]
    assert np.abs(volume.pose.angles_deg - np.asarray(angles)).max() < 1.0
    assert np.linalg.norm(volume.pose.shift_mm - np.asarray(shift, float)) < 1.0


def test_novel_subjects_are_not_flagged(scored):
    _, result, truth = scored
    novel = [v for v in result.volumes if "novel" in v.volume]
    assert len(novel) == 2
    assert not any(v.flagged for v in novel)
    assert all(v.aligned_similarity < 0.9 for v in novel)


def test_stage_three_is_calibrated_and_reported(scored, cohort):
    bank, result, _ = scored
    root, _ = cohort
    assert bank.combination.n_stages == 3
    manifest = json.loads((root / "bank" / "manifest.json").read_text())
    assert manifest["volume_stage"]["n_volumes"] == N_TRAIN
    assert "stage3" in manifest["combination"]
    header = (root / "report" / "volumes.csv").read_text().splitlines()[0].split(",")
    for column in ("volume_match", "aligned_similarity", "angle_lr_deg", "shift_s_mm", "scale"):
        assert column in header
    assert "volume_ncc" in (root / "report" / "slices.csv").read_text().splitlines()[0]


def test_damaged_compact_volumes_are_refused(scored, cohort, tmp_path):
    root, _ = cohort
    import shutil

    copy = tmp_path / "bank"
    shutil.copytree(root / "bank", copy)
    voxels = np.load(copy / "volume_voxels.npy")
    np.save(copy / "volume_voxels.npy", voxels[:-10])
    with pytest.raises(BankError, match="volume_voxels"):
        load_bank(copy)
