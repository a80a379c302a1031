"""A bank built with checkpoint A, end to end on DICOM series (written with pydicom): scored
with A, refused with B, scored with none while A's file is there (the recorded file, after
its SHA-256 is checked again), refused with none once A has moved (naming the path), and
refused when the file at A's path has changed (naming both hashes).

Checkpoints are tiny ViTs in MRI-CORE's stored form ('teacher', 'backbone.' names) with
random weights; hashes are computed here with hashlib.
"""

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from MemorizationIndexLib import cli
from MemorizationIndexLib.bank.build import build_bank
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.demo.cohort import load_template, make_subject
from MemorizationIndexLib.encoding.vit import EncoderConfig

from ..conftest import TINY_LAYERS
from .conftest import random_mricore_weights
from .dicom_writer import write_series

N_TRAIN = 4
COPIED = 1


def write_checkpoint(path: Path, seed: int) -> Path:
    weights = random_mricore_weights(EncoderConfig.tiny(), seed=seed)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in weights.items()}}, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_subject(folder: Path, volume: np.ndarray, patient: str) -> None:
    write_series(
        folder,
        volume,
        pixel_spacing=(4.0, 4.0),
        spacing_between=4.0,
        first_position=(-120.0, -140.0, -70.0),
        patient_id=patient,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoint-bank")
    template = sitk.GetArrayFromImage(load_template(4.0))
    subjects = [make_subject(template, 300 + i) for i in range(N_TRAIN)]
    for i, volume in enumerate(subjects):
        write_subject(root / "train" / f"sub-{i}", volume, f"TRAIN{i}")
    # an intensity-scaled copy (min-max preprocessing makes it the same image to the encoder)
    write_subject(root / "synthetic" / "copy", subjects[COPIED] * 1.1, "SYNTH1")
    write_subject(root / "synthetic" / "novel", make_subject(template, 399), "SYNTH2")
    a = write_checkpoint(root / "a.pth", 1)
    b = write_checkpoint(root / "b.pth", 2)
    settings = BankSettings(
        image_size=32, layers=TINY_LAYERS, stride=3, calibration_folds=2, verify=False
    )
    encoder = settings.encoder(str(a), config=EncoderConfig.tiny(), device="cpu")
    bank = build_bank(root / "train", root / "bank", settings, encoder)
    return root, a, b, bank


def score_cli(root: Path, out: str, *checkpoint) -> int:
    argv = ["score", str(root / "bank"), str(root / "synthetic"), "--out", str(root / out)]
    return cli.main([*argv, "--device", "cpu", "--quiet", *checkpoint])


def verdicts(report: Path) -> dict:
    with open(report / "volumes.csv", encoding="utf-8") as f:
        return {Path(r["volume"]).name: r for r in csv.DictReader(f)}


def test_bank_records_checkpoint_a(built):
    _, a, _, bank = built
    info = bank.encoder_info
    assert info["trained"] is True and info["checkpoint_sha256"] == sha256(a)
    assert Path(info["checkpoint"]) == a
    assert len(bank.volumes) == N_TRAIN  # one volume per DICOM series


def test_dicom_copy_scored_with_checkpoint_a(built, capsys):
    root, a, _, _ = built
    assert score_cli(root, "with-a", "--checkpoint", str(a)) == 0
    rows = verdicts(root / "with-a")
    assert rows["copy"]["flagged"] in ("1", "True") and rows["novel"]["flagged"] in ("0", "False")
    assert Path(rows["copy"]["match_volume"]).name == f"sub-{COPIED}"
    assert float(rows["copy"]["mi"]) > float(rows["novel"]["mi"])
    assert "MRI-CORE" in capsys.readouterr().out


def test_other_checkpoint_is_refused_naming_both_hashes(built, capsys):
    root, a, b, _ = built
    assert score_cli(root, "with-b", "--checkpoint", str(b)) == 2
    err = capsys.readouterr().err
    assert "checkpoint_sha256" in err and sha256(a) in err and sha256(b) in err
    assert not (root / "with-b").exists()


def test_no_checkpoint_uses_the_recorded_file_after_checking_its_hash(built, tmp_path, capsys):
    """Decision (issue 13, point 4): scoring without --checkpoint against a bank built with
    one uses the file the bank recorded, when it is there and its SHA-256 is the bank's."""
    root, a, b, _ = built
    assert score_cli(root, "with-none") == 0
    same = verdicts(root / "with-none")
    assert {k: v["mi"] for k, v in same.items()} == {
        k: v["mi"] for k, v in verdicts(root / "with-a").items()
    }
    # The file at the recorded path changed: refused as another checkpoint would be.
    kept = tmp_path / "a-kept.pth"
    shutil.copyfile(a, kept)
    try:
        shutil.copyfile(b, a)
        assert score_cli(root, "with-changed-a") == 2
        err = capsys.readouterr().err
        assert sha256(kept) in err and sha256(b) in err
        # ...and once it has moved away: refused, naming the path the bank recorded.
        a.unlink()
        assert score_cli(root, "with-moved-a") == 2
        err = capsys.readouterr().err
        assert str(a) in err and "--checkpoint" in err
        # The moved file, passed explicitly, is accepted (same hash).
        assert score_cli(root, "with-a-elsewhere", "--checkpoint", str(kept)) == 0
    finally:
        shutil.copyfile(kept, a)
