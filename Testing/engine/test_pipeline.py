"""Bank building and scoring end to end on real-MRI volumes (small encoder, small images)."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from MemorizationIndexLib.atomic import write_marker
from MemorizationIndexLib.bank.build import build_bank
from MemorizationIndexLib.bank.feature_bank import FeatureBank
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.errors import BankError, CancelledError, InputError
from MemorizationIndexLib.job import Job
from MemorizationIndexLib.report.files import write_report
from MemorizationIndexLib.scoring.results import (
    SLICE_COLUMNS_REQUIRED,
    VOLUME_COLUMNS_REQUIRED,
)
from MemorizationIndexLib.scoring.score import longest_ordered_run, score, simes_p_value


@pytest.fixture(scope="module")
def result(small_cohort, small_bank):
    root, _ = small_cohort
    bank, _ = small_bank
    return score(bank, root / "synthetic", bank.load_encoder(device="cpu"), stride=2)


def truth_of(members):
    return {m.path: m for m in members}


def test_copies_are_flagged_and_novel_subjects_are_not(small_cohort, result):
    _, members = small_cohort
    truth = truth_of(members)
    for v in result.volumes:
        m = truth[v["volume"]]
        if m.role == "copy":
            assert v["flagged"], (m.augmentation, v)
            assert Path(v["match_volume"]).name == Path(m.source).name
            # Rotations defeat stage 1 on a few edge-of-head slices; the rest hold.
            assert v["fraction_flagged"] > (0.75 if m.augmentation.startswith("rotate") else 0.85)
            assert v["longest_run"] >= 5
        else:
            assert not v["flagged"], v
            assert v["fraction_flagged"] < 0.2


def test_flipped_copy_is_matched_through_the_flip_view(small_cohort, result):
    _, members = small_cohort
    truth = truth_of(members)
    flipped = [v for v in result.volumes if truth[v["volume"]].augmentation == "hflip"]
    assert flipped and flipped[0]["transform"] == "hflip"
    rows = [r for r in result.slices if r["volume"] == flipped[0]["volume"] and r["flagged"]]
    assert all(r["transform"] == "hflip" for r in rows)
    # An exact (flipped) copy: the matched training slice is the same slice index.
    assert all(r["match_slice"] == r["slice_index"] for r in rows)


def true_rotation_deg(member) -> float:
    """The in-plane angle of the rotate-10 copy in the engine's convention, worked out
    without the engine: the cohort draws it (make_cohort: 4th copy, seed 903) and turns the
    stored array with ndimage.rotate(axes=(1, 2)), whose positive angle turns +x towards -y
    (the engine's turns +x towards +y). Reading reorients to LPS; each in-plane axis the
    file stores reversed (a negative direction cosine) mirrors the turn once more."""
    import SimpleITK as sitk
    from scipy import ndimage

    drawn = float(np.random.default_rng(903).uniform(-10.0, 10.0))
    copy, source = sitk.ReadImage(member.path), sitk.ReadImage(member.source)
    expected = ndimage.rotate(
        sitk.GetArrayFromImage(source), drawn, axes=(1, 2), reshape=False, order=1
    )
    assert np.allclose(sitk.GetArrayFromImage(copy), expected, atol=1e-2)  # the drawn angle
    direction = np.array(copy.GetDirection()).reshape(3, 3)
    return -drawn * float(np.sign(direction[0, 0]) * np.sign(direction[1, 1]))


def test_rotated_copy_is_aligned_by_verification(small_cohort, result):
    _, members = small_cohort
    truth = truth_of(members)
    rotated = [v for v in result.volumes if truth[v["volume"]].augmentation == "rotate-10"]
    rows = [r for r in result.slices if r["volume"] == rotated[0]["volume"] and r["flagged"]]
    angles = np.array([r["angle_deg"] for r in rows])
    assert rotated[0]["flagged"] and len(rows) >= 0.8 * rotated[0]["n_slices"]
    # One angle for the whole volume (the augmentation rotates every slice alike), with
    # the sign and size of the true one.
    assert np.ptp(np.median(angles) - angles) < 3.0
    assert np.median(angles) == pytest.approx(
        true_rotation_deg(truth[rotated[0]["volume"]]), abs=1.0
    )
    assert all(r["transform"] == "none" for r in rows)
    ncc = np.array([r["verified_ncc"] for r in rows])
    assert np.median(ncc) > 0.95 and np.mean(ncc > 0.9) >= 0.8


def test_slice_evidence_is_consistent(result):
    for r in result.slices:
        assert 0.0 <= r["mi"] <= 1.0 and -1.0 <= r["oni"] <= 1.0
        assert r["mi"] == pytest.approx(1.0 - r["p_value"])
        assert r["flagged"] == (r["p_value"] <= result.alpha)
        assert 0.0 <= r["agreement"] <= 1.0
        assert r["top_matches"].count(";") == 2


def test_outputs_follow_the_column_contract(small_bank, result, tmp_path):
    bank, _ = small_bank
    out = write_report(result, bank, tmp_path / "report")
    with open(out / "slices.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert set(SLICE_COLUMNS_REQUIRED) <= set(header)
    with open(out / "volumes.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert set(VOLUME_COLUMNS_REQUIRED) <= set(rows[0])
    assert len(rows) == len(result.volumes)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["untrained_encoder"] is True
    assert "untrained" in summary["encoder"]["name"]
    assert summary["n_volumes"] == 7 and "calibration" in summary and "skipped" in summary
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 3 * 3
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # self-contained: nothing fetched
    assert "untrained encoder" in html
    assert not list(tmp_path.glob(".report.partial-*"))


def test_bank_round_trip_gives_the_same_scores(small_cohort, small_bank, result):
    root, _ = small_cohort
    _, path = small_bank
    again_bank = FeatureBank.load(path)
    again = score(again_bank, root / "synthetic", again_bank.load_encoder(device="cpu"), stride=2)
    assert [(r["volume"], r["slice_index"]) for r in again.slices] == [
        (r["volume"], r["slice_index"]) for r in result.slices
    ]
    # Every stage and the calibration come back: stage 1, stage 2 (NCC and pose), the null.
    for key in ("similarity", "p_value", "mi", "oni", "verified_ncc", "angle_deg"):
        assert np.allclose([r[key] for r in again.slices], [r[key] for r in result.slices]), key
    for key in ("shift_x_mm", "shift_y_mm", "scale_x", "scale_y"):
        assert np.allclose([r[key] for r in again.slices], [r[key] for r in result.slices]), key
    assert [r["transform"] for r in again.slices] == [r["transform"] for r in result.slices]
    assert [r["match_slice"] for r in again.slices] == [r["match_slice"] for r in result.slices]
    assert [v["flagged"] for v in again.volumes] == [v["flagged"] for v in result.volumes]
    manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == 1
    assert manifest["encoder"]["trained"] is False
    assert manifest["settings"]["layers"] == [1, 2, 3]
    assert len(manifest["volumes"]) == 6
    assert not list(Path(path).glob("*.pkl"))


def test_bank_calibrated_by_an_earlier_verification_is_refused(small_bank, tmp_path):
    """A null built with another stage-2 score would miscalibrate MI: rebuild, said clearly."""
    import shutil

    bank, path = small_bank
    assert bank.settings.verify
    old = tmp_path / "old-bank"
    shutil.copytree(path, old)
    manifest = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["verifier_version"] >= 2
    del manifest["verifier_version"]  # banks from before the version was stored
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankError, match=r"old-bank was calibrated .* version 1.*Rebuild"):
        FeatureBank.load(old)


def test_bank_refuses_other_settings_and_encoders(small_bank, tmp_path):
    bank, _ = small_bank
    with pytest.raises(BankError, match="image_size"):
        bank.check_compatible(BankSettings(image_size=224, layers=(1, 2, 3)))
    with pytest.raises(BankError, match="untrained encoder"):
        bank.load_encoder(checkpoint=tmp_path / "mri_core.pth")
    other = dict(bank.encoder_info, checkpoint_sha256="0" * 64, name="MRI-CORE ViT-B/16")
    with pytest.raises(BankError, match="checkpoint_sha256"):
        bank.check_compatible(encoder=other)


def test_cancel_leaves_nothing_half_written(small_cohort, small_bank, tmp_path):
    root, _ = small_cohort
    existing = tmp_path / "bank"
    existing.mkdir()
    (existing / "keep.txt").write_text("old bank")
    write_marker(existing, "bank")  # an earlier bank of this tool: replaceable, so cancel matters
    with pytest.raises(CancelledError):
        build_bank(
            root / "train", existing, BankSettings(image_size=32), job=Job(cancel=lambda: True)
        )
    assert (existing / "keep.txt").read_text(encoding="utf-8") == "old bank"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_unusable_training_folders_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="No readable scan"):
        build_bank(empty, tmp_path / "bank", BankSettings(image_size=32))
    with pytest.raises(InputError, match=str(tmp_path / "missing")):
        build_bank(tmp_path / "missing", tmp_path / "bank", BankSettings(image_size=32))
    assert not (tmp_path / "bank").exists()


def test_simes_and_runs():
    assert simes_p_value(np.array([0.5, 0.01, 0.9])) == pytest.approx(0.03)
    assert simes_p_value(np.array([])) == 1.0
    vids = np.array([0] * 10 + [1] * 10)
    flagged = np.array([True, True, True, False, True, True])
    # rows 2,3,4 consecutive in volume 0; then a gap; then 15,14 (reversed, volume 1)
    assert longest_ordered_run(flagged, np.array([2, 3, 4, 9, 15, 14]), vids) == 3
    # 9 -> 10 crosses from volume 0 to volume 1: the run restarts there.
    assert longest_ordered_run(np.ones(3, bool), np.array([9, 10, 11]), vids) == 2


def test_verification_reports_progress_per_slice_and_honours_cancel(small_cohort, small_bank):
    """Stage 2 is the slowest step of scoring: it counts slices and can be stopped."""
    from MemorizationIndexLib.job import VERIFY_STAGE

    root, _ = small_cohort
    bank, _ = small_bank
    seen = []
    encoder = bank.load_encoder(device="cpu")
    score(
        bank,
        root / "synthetic",
        encoder,
        stride=4,
        job=Job(progress=lambda stage, done, total: seen.append((stage, done, total))),
    )
    verify = [(done, total) for stage, done, total in seen if stage == VERIFY_STAGE]
    assert verify and verify[-1][0] == verify[-1][1] > 1
    assert [d for d, _ in verify] == sorted(d for d, _ in verify)

    started = []
    with pytest.raises(CancelledError):
        score(
            bank,
            root / "synthetic",
            encoder,
            stride=4,
            job=Job(
                progress=lambda stage, done, total: started.append(stage == VERIFY_STAGE),
                cancel=lambda: any(started),
            ),
        )
    assert sum(started) == 1  # stopped right after the first verified slice


def test_settled_slices_follow_the_bank_gate(small_bank, result):
    """Stage 2 settles exactly the slices whose check value is below the bank's gate; the
    copies' slices that stage 2 flags are never settled."""
    bank, _ = small_bank
    gate = bank.combination.gate
    rows = result.slices
    assert any(r["verify_settled"] for r in rows) and not all(r["verify_settled"] for r in rows)
    for r in rows:
        assert r["verify_settled"] == (r["verify_check"] < gate)
