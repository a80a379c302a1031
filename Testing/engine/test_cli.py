"""The command line: exit codes, messages that name the fault, files written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from MemorizationIndexLib.cli import main


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "build-bank" in capsys.readouterr().out
    assert main(["--version"]) == 0


def test_bad_usage_exits_2(capsys, tmp_path):
    assert main(["score"]) == 2
    assert main(["build-bank", str(tmp_path), "--out", str(tmp_path / "b"), "--layers", "x"]) == 2
    assert "--layers" in capsys.readouterr().err


def test_unusable_input_exits_2_with_the_path(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["build-bank", str(empty), "--out", str(tmp_path / "bank")]) == 2
    err = capsys.readouterr().err
    assert "No readable scan" in err and str(empty) in err
    assert main(["score", str(tmp_path / "nobank"), str(tmp_path), "--out", "x"]) == 2
    assert "nobank" in capsys.readouterr().err
    assert main(["build-bank", str(tmp_path), "--out", "b", "--stride", "0"]) == 2
    assert "stride" in capsys.readouterr().err


def test_build_bank_with_the_real_vit_b(small_cohort, tmp_path, capsys):
    """build-bank on the real ViT-B architecture, few slices at a small image size."""
    root, _ = small_cohort
    train = tmp_path / "train"
    train.mkdir()
    for path in sorted((root / "train").iterdir())[:3]:
        shutil.copy(path, train / path.name)
    (train / "notes.txt").write_text("not a scan")
    bank = tmp_path / "bank"
    code = main(
        ["build-bank", str(train), "--out", str(bank), "--image-size", "32", "--stride", "6"]
        + ["--device", "cpu", "--quiet", "--encoder", "untrained"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "untrained ViT-B/16" in out and "Bank:" in out and "3 volumes" in out
    assert "notes.txt" in out  # skipped and said so
    manifest = json.loads((bank / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["encoder"]["config"]["embed_dim"] == 768
    assert manifest["skipped"][0]["path"].endswith("notes.txt")


def test_score_writes_the_report(small_cohort, small_bank, tmp_path, capsys):
    root, _ = small_cohort
    _, bank = small_bank
    synthetic = tmp_path / "synthetic"
    shutil.copytree(root / "synthetic", synthetic)
    (synthetic / "broken.nii.gz").write_bytes(b"not a NIfTI file at all")
    report = tmp_path / "report"
    code = main(
        ["score", str(bank), str(synthetic), "--out", str(report), "--stride", "2", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "4 of 7 volumes flagged" in out and "report.html" in out
    assert "broken.nii.gz" in out  # skipped, and said so
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_volumes"] == 7
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["broken.nii.gz"]
    assert summary["skipped"][0]["reason"]
    assert {p.name for p in report.iterdir()} == {
        "slices.csv",
        "volumes.csv",
        "internal_duplicates.csv",
        "summary.json",
        "report.html",
        ".memorization-index.json",
    }


def test_python_dash_m_is_the_same_command():
    proc = subprocess.run(
        [sys.executable, "-m", "MemorizationIndexLib", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "memorization-index" in proc.stdout


@pytest.mark.parametrize("alpha", ["0", "1.5"])
def test_alpha_out_of_range(small_cohort, small_bank, tmp_path, capsys, alpha):
    root, _ = small_cohort
    _, bank = small_bank
    code = main(
        [
            "score",
            str(bank),
            str(root / "synthetic"),
            "--out",
            str(tmp_path / "r"),
            "--alpha",
            alpha,
            "--quiet",
        ]
    )
    assert code == 2 and "--alpha" in capsys.readouterr().err
