"""Calibration holds out subjects, not volumes; duplicates in the training set are found.

The end-to-end case is the one that blinded the index before: a training set holding one
scan twice (and a noisy second copy of another) made an exact copy of a third subject look
novel. Files are written by nibabel and SimpleITK, copies made with numpy.
"""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from MemorizationIndexLib.bank.build import build_bank
from MemorizationIndexLib.bank.feature_bank import FeatureBank
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.calibration.null import volume_folds
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.errors import InputError, SettingsError
from MemorizationIndexLib.scans import find_scans
from MemorizationIndexLib.scans.subjects import (
    read_grouping_file,
    split_duplicates,
    subject_of,
)
from MemorizationIndexLib.scoring.score import score

try:
    from . import scan_fixtures as fx
except ImportError:  # run as a plain file
    import scan_fixtures as fx

from ..conftest import TINY_LAYERS, tiny_encoder_config


def test_folds_keep_each_subject_whole():
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    folds = volume_folds(len(groups), 3, seed=1, groups=groups)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    for fold in folds:
        for g in np.unique(groups[fold]):
            assert set(np.flatnonzero(groups == g)) <= set(fold.tolist())
    with pytest.raises(SettingsError, match="at least 2 subjects"):
        volume_folds(3, 2, groups=np.array([7, 7, 7]))
    # Without groups: one subject per volume, as before.
    assert [f.tolist() for f in volume_folds(6, 3, seed=2)] == [
        f.tolist() for f in volume_folds(6, 3, seed=2, groups=np.arange(6))
    ]


def test_subject_from_grouping_file_dicom_and_bids(tmp_path):
    root = tmp_path / "train"
    data = fx.phantom((32, 24, 20))
    for sub, session in (("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "ses-1")):
        fx.write_nifti(root / sub / session / "anat" / "T1w.nii.gz", data, np.eye(4))
    fx.write_nifti(root / "sub-03_T1w.nii.gz", data, np.eye(4))
    fx.write_nifti(root / "loose.nii.gz", data, np.eye(4))
    fx.write_dicom_series(root / "dicom", data, "1.2.3.4.10")
    fx.write_dicom_series(root / "dicom", data * 2, "1.2.3.4.11", prefix="B")
    sources, _ = find_scans(root)
    subjects = {
        os.path.relpath(s.path, root) + s.series_uid: subject_of(s, str(root), None)
        for s in sources
    }
    by_key = {}
    for name, subject in subjects.items():
        by_key.setdefault(subject.key, []).append(name)
    visits = [k for k, v in by_key.items() if len(v) == 2 and "sub-01" in v[0]]
    assert visits, by_key  # the two sessions of sub-01 are one subject
    dicom = [s for n, s in subjects.items() if n.startswith("dicom")]
    assert len({s.key for s in dicom}) == 1 and dicom[0].how == "DICOM PatientID"
    assert subjects["sub-03_T1w.nii.gz"].how == "BIDS folder"
    assert subjects["loose.nii.gz"].how == "volume"
    grouping = tmp_path / "groups.csv"
    grouping.write_text("path,subject\nloose.nii.gz,patient-7\nsub-03_T1w.nii.gz,patient-7\n")
    table = read_grouping_file(grouping)
    loose = next(s for s in sources if s.path.endswith("loose.nii.gz"))
    sub03 = next(s for s in sources if s.path.endswith("sub-03_T1w.nii.gz"))
    assert subject_of(loose, str(root), table) == subject_of(sub03, str(root), table)
    assert subject_of(loose, str(root), table).how == "grouping file"


@pytest.mark.parametrize(
    "text,message",
    [
        ("volume,who\na,b\n", "needs the columns 'path' and 'subject'"),
        ("path,subject\na.nii,\n", "line 2: path or subject empty"),
    ],
)
def test_bad_grouping_files_are_named(tmp_path, text, message):
    path = tmp_path / "groups.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        read_grouping_file(path)
    assert str(path) in str(error.value)
    path.write_bytes(b"path,subject\n\xff\xfe,x\n")
    with pytest.raises(InputError, match="not a UTF-8 CSV"):
        read_grouping_file(path)
    with pytest.raises(InputError, match="cannot be read"):
        read_grouping_file(tmp_path / "missing.csv")


def test_exact_duplicates_are_split_off_and_named(tmp_path):
    data = fx.phantom((32, 24, 20))
    a = fx.write_nifti(tmp_path / "a.nii.gz", data, np.eye(4))
    shutil.copy(a, tmp_path / "b_copy.nii.gz")
    os.symlink(a, tmp_path / "c_link.nii.gz")
    fx.write_nifti(tmp_path / "d_other.nii.gz", data + 1, np.eye(4))
    sources, _ = find_scans(tmp_path)
    kept, duplicates = split_duplicates(sources)
    assert [os.path.basename(s.path) for s in kept] == ["a.nii.gz", "d_other.nii.gz"]
    assert {(os.path.basename(d.path), d.how) for d in duplicates} == {
        ("b_copy.nii.gz", "the same content"),
        ("c_link.nii.gz", "the same file"),
    }
    assert all(d.duplicate_of == a for d in duplicates)


@pytest.fixture(scope="module")
def duplicated_training(small_cohort, tmp_path_factory):
    """Six training subjects plus a byte copy of one and a noisy copy of another."""
    root, members = small_cohort
    train = tmp_path_factory.mktemp("dup") / "train"
    shutil.copytree(root / "train", train)
    originals = sorted(p for p in train.iterdir())
    shutil.copy(originals[0], train / "zz_same_bytes.nii.gz")
    image = nib.load(originals[1])
    data = np.asarray(image.dataobj, np.float32)
    noisy = data + np.random.default_rng(0).normal(0, 5.0, data.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy, image.affine), train / "zz_noisy_copy.nii.gz")
    settings = BankSettings(image_size=64, layers=TINY_LAYERS, stride=2, calibration_folds=3)
    encoder = settings.encoder(config=tiny_encoder_config(), device="cpu")
    bank = build_bank(train, train.parent / "bank", settings, encoder)
    return bank, originals


def test_duplicates_are_reported_and_held_out_together(duplicated_training):
    bank, originals = duplicated_training
    manifest = bank.manifest
    (duplicate,) = manifest["duplicates"]
    assert duplicate["path"].endswith("zz_same_bytes.nii.gz")
    assert duplicate["duplicate_of"] == str(originals[0]) and duplicate["how"] == "the same content"
    assert not any(v.endswith("zz_same_bytes.nii.gz") for v in bank.volumes)
    pairs = {
        tuple(sorted(os.path.basename(p) for p in (d["volume"], d["matches"])))
        for d in manifest["near_duplicates"]
    }
    assert pairs == {(originals[1].name, "zz_noisy_copy.nii.gz")}
    groups = manifest["subject_groups"]
    noisy = next(i for i, v in enumerate(bank.volumes) if v.endswith("zz_noisy_copy.nii.gz"))
    twin = bank.volumes.index(str(originals[1]))
    assert groups[noisy] == groups[twin] and manifest["n_subjects"] == 6
    loaded = FeatureBank.load(bank.path)  # what was found survives the round trip
    assert loaded.manifest["near_duplicates"] == manifest["near_duplicates"]


def test_an_exact_copy_is_still_caught_with_duplicates_in_training(duplicated_training, tmp_path):
    bank, originals = duplicated_training
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    shutil.copy(originals[2], synthetic / "copy.nii.gz")
    result = score(bank, synthetic, bank.load_encoder(device="cpu"), stride=2)
    (volume,) = result.volumes
    assert volume.flagged and volume.mi > 0.999
    assert os.path.basename(volume.match_volume) == originals[2].name


def test_the_cli_prints_duplicates_and_subjects(small_cohort, tmp_path, capsys):
    root, _ = small_cohort
    train = tmp_path / "train"
    train.mkdir()
    for p in sorted((root / "train").iterdir())[:3]:
        shutil.copy(p, train / p.name)
    first = sorted(train.iterdir())[0]
    os.symlink(first, train / "zz_link.nii.gz")
    code = main(
        ["build-bank", str(train), "--out", str(tmp_path / "bank"), "--image-size", "32"]
        + ["--stride", "6", "--device", "cpu", "--quiet", "--no-images", "--encoder", "untrained"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "duplicate left out: " in out and "zz_link.nii.gz is the same file as" in out
    assert "Subjects: 3 (from volume)" in out
    bank = FeatureBank.load(tmp_path / "bank")
    assert not (tmp_path / "bank" / "thumbnails.npy").exists()
    assert bank.settings.store_images is False and bank.settings.verify is False
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text(encoding="utf-8"))
    assert "thumbnails.npy" not in manifest["files"]


def test_images_need_to_be_kept_for_verification():
    with pytest.raises(SettingsError, match="--no-images needs --no-verify"):
        BankSettings(store_images=False)
    assert BankSettings(store_images=False, verify=False).store_images is False


def test_dicom_series_are_named_by_description_everywhere(tmp_path):
    data = fx.phantom((32, 24, 20))
    fx.write_dicom_series(tmp_path / "dicom", data, "1.2.3.4.20")
    fx.write_dicom_series(tmp_path / "dicom", data * 2, "1.2.3.4.21", prefix="B")
    sources, _ = find_scans(tmp_path)
    assert sorted(s.series_name for s in sources) == [
        "test series 1.2.3.4.20",
        "test series 1.2.3.4.21",
    ]
    label = next(s.label for s in sources if s.series_uid == "1.2.3.4.21")
    assert label == f"DICOM series test series 1.2.3.4.21 (1.2.3.4.21) in {tmp_path / 'dicom'}"
    from MemorizationIndexLib.scans import read_scan

    assert read_scan(sources[0]).series_name == sources[0].series_name
