"""The hard cohort (issue 12): its truth.json describes what is in the files, checked with
scipy (an independent resampler), and the baseline's metrics on known inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from Testing.benchmarks import hard_benchmark, hard_cohort

pytest.importorskip("nilearn")

COPIES = (
    ("none", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("combo", (8.0, -6.0, 0.0), (6.0, -4.0, 5.0)),
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    return hard_cohort.make_hard_cohort(root, n_train=2, n_novel=1, copies=COPIES, spacing_mm=4.0)


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def _ncc(a, b, mask):
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _scipy_move(image_path, matrix, shift_mm):
    """p' = R (p - c) + c + t on the grid, in index space (isotropic, identity direction)."""
    image = sitk.ReadImage(str(image_path))
    spacing = image.GetSpacing()[0]
    centre = (np.array(image.GetSize()) - 1) / 2.0  # x, y, z
    r = np.asarray(matrix)
    flip = np.eye(3)[::-1]
    m = flip @ r.T @ flip  # [z, y, x]
    c = flip @ centre
    t = flip @ (np.asarray(shift_mm) / spacing)
    offset = c - m @ (c + t)
    return ndimage.affine_transform(sitk.GetArrayFromImage(image), m, offset=offset, order=1)


def test_files_and_truth(cohort):
    truth = hard_cohort.load_truth(cohort.root)
    assert len(truth.train) == 2 and len(truth.novel) == 1 and len(truth.copies) == 2
    assert "LPS" in truth.convention and truth.scenarios[0]["bank_stride"] == 2
    for entry in truth.train + truth.novel + truth.copies:
        image = sitk.ReadImage(entry["file"])
        assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert image.GetSpacing() == (4.0, 4.0, 4.0)
    combo = next(c for c in truth.copies if c["scenario"] == "combo")
    assert combo["rotation_deg"] == {"LR_x": 8.0, "AP_y": -6.0, "SI_z": 0.0}
    assert combo["shift_mm"] == [6.0, -4.0, 5.0]
    assert np.allclose(combo["matrix"], hard_cohort.rigid_matrix((8.0, -6.0, 0.0)))


def test_truth_pose_matches_the_copy_by_an_independent_resampler(cohort):
    combo = next(c for c in cohort.copies if c["scenario"] == "combo")
    copy = _array(combo["file"])
    right = _scipy_move(combo["source"], combo["matrix"], combo["shift_mm"])
    wrong = _scipy_move(
        combo["source"], np.asarray(combo["matrix"]).T, -np.array(combo["shift_mm"])
    )
    mask = right > np.percentile(right, 70)
    assert _ncc(copy, right, mask) > 0.9
    assert _ncc(copy, right, mask) > _ncc(copy, wrong, mask) + 0.1


def test_subjects_differ_noise_fills_the_field_of_view_and_contrasts_differ(cohort):
    a, b = (_array(t["file"]) for t in cohort.train)
    none = _array(next(c for c in cohort.copies if c["scenario"] == "none")["file"])
    source = _array(next(c for c in cohort.copies if c["scenario"] == "none")["source"])
    mask = source > np.percentile(source, 70)
    assert _ncc(none, source, mask) > 0.95
    # Whole-FOV Rician noise: the corners are not zero.
    for v in (a, b, none):
        assert np.median(v[:3, :3, :3]) > 0
    # Training alternates T1 and T2; in T2, CSF is brighter than white matter.
    assert [t["contrast"] for t in cohort.train] == ["T1", "T2"]
    assert hard_cohort.t2_like(np.array([0.3]))[0] > hard_cohort.t2_like(np.array([0.9]))[0]


def test_baseline_metrics_on_known_inputs(tmp_path, cohort):
    assert hard_benchmark.auroc([2, 3], [0, 1]) == 1.0
    assert hard_benchmark.auroc([1], [1]) == 0.5
    negative = np.arange(100.0)
    assert hard_benchmark.tpr_at_fpr([98.5, 97.5, 200], negative) == pytest.approx(2 / 3)
    # evaluate() on hand-written CSVs shaped like the engine's report.
    truth = hard_cohort.load_truth(cohort.root)
    copy, novel = truth.copies[0], truth.novel[0]
    slices = [
        {"volume": copy["file"], "slice_index": i, "similarity": 0.9, "mi": 0.999,
         "match_volume": copy["source"], "match_slice": i, "flagged": "True"}
        for i in range(4)
    ] + [
        {"volume": novel["file"], "slice_index": i, "similarity": 0.1, "mi": 0.2,
         "match_volume": truth.train[0]["file"], "match_slice": i, "flagged": "False"}
        for i in range(4)
    ]  # fmt: skip
    volumes = [
        {"volume": copy["file"], "mi": 0.999, "match_volume": copy["source"], "flagged": "True"},
        {"volume": novel["file"], "mi": 0.2, "match_volume": "x", "flagged": "False"},
    ]
    for name, rows in (("slices.csv", slices), ("volumes.csv", volumes)):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    run = hard_benchmark.evaluate(tmp_path, truth, bank_stride=2)
    row = next(r for r in run["rows"] if r["file"] == copy["file"].split("/")[-1])
    assert row["auroc"] == 1.0 and row["volume_flagged"] and row["match_is_source"] == 1.0
    assert row["auroc_off_grid_slices"] == 1.0
    assert run["novel_slice_flag_rate"] == 0.0 and run["novel_volumes_flagged"] == []
    json.dumps(run)


@pytest.fixture(scope="module")
def mangled(tmp_path_factory):
    root = tmp_path_factory.mktemp("mangled")
    return hard_cohort.make_hard_cohort(
        root, n_train=2, n_novel=1, copies=(), spacing_mm=4.0,
        mangled=hard_cohort.MANGLED_COPIES,
    )  # fmt: skip


def _physical_to_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """LPS points [n, 3] -> continuous [z, y, x] indices of an identity-direction image."""
    xyz = (points - np.asarray(image.GetOrigin())) / np.asarray(image.GetSpacing())
    return xyz[:, ::-1]


@pytest.mark.parametrize("kind", hard_cohort.MANGLED_COPIES)
def test_mangled_copy_truth_maps_source_anatomy_onto_the_copy(mangled, kind):
    """truth.json's affine, read by hand (p' = linear (p - c) + c + t), carries the source's
    bright voxels onto the copy's; a rigid reading (identity) and the inverse one do not."""
    entry = next(c for c in mangled.copies if c["scenario"] == kind)
    source, copy = sitk.ReadImage(entry["source"]), sitk.ReadImage(entry["file"])
    src = sitk.GetArrayFromImage(source).astype(np.float64)
    dst = sitk.GetArrayFromImage(copy).astype(np.float64)
    a = entry["affine"]
    linear, centre = np.array(a["linear"]), np.array(a["centre_mm"])
    shift = np.array(a["shift_mm"])
    zyx = np.argwhere(src > np.percentile(src, 60))[::7]
    points = np.asarray(source.GetOrigin()) + zyx[:, ::-1] * np.asarray(source.GetSpacing())

    def ncc_under(m):
        moved = (points - centre) @ m.T + centre + shift
        values = ndimage.map_coordinates(dst, _physical_to_index(copy, moved).T, order=1)
        x = src[tuple(zyx.T)] - src[tuple(zyx.T)].mean()
        y = values - values.mean()
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    assert ncc_under(linear) > 0.9, kind
    for wrong in (np.eye(3), np.linalg.inv(linear)):
        if not np.allclose(wrong, linear):
            assert ncc_under(wrong) < ncc_under(linear) - 0.05, kind
    assert a["axes"] == ("LPS" if "zoom" in kind or "header" in kind else a["axes"])
    if kind == "identity-header-true-1.1x":
        assert copy.GetOrigin() == (0.0, 0.0, 0.0)
        assert copy.GetSpacing()[0] == pytest.approx(4.0 / 1.1, rel=1e-6)
