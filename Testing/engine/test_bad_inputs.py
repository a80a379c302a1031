"""Bad inputs a hospital's data brings: each gets a message that names it, never a traceback,
never a silent change. Every file here is written by nibabel, SimpleITK or by hand, not by
the engine under test.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from MemorizationIndexLib.bank.build import build_bank
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.encoding.checkpoint import load_mricore_state_dict
from MemorizationIndexLib.encoding.preprocessing import min_max, thumbnails
from MemorizationIndexLib.errors import CheckpointError, InputError, SettingsError
from MemorizationIndexLib.report.files import write_csv
from MemorizationIndexLib.scans import ScanVolume, iter_scans, read_scan
from MemorizationIndexLib.scoring.score import score

try:
    from . import scan_fixtures as fx
except ImportError:  # run as a plain file
    import scan_fixtures as fx


def nifti(path: Path, data: np.ndarray, spacing=3.0) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), path)
    return path


def head_like(shape=(40, 48, 36), seed=0) -> np.ndarray:
    """An ellipsoid 'head' with texture on a zero background, float32 [x, y, z]."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.8) ** 2 < 1
    return np.where(inside, 300 + 200 * rng.random(shape), 0).astype(np.float32)


# ---- NaN that ITK's NIfTI reader would silently turn into 0 --------------------------------


def test_nan_in_a_nifti_is_reported_not_read_as_zero(tmp_path):
    data = head_like()
    data[20, 20, 10:14] = np.nan
    data[0, 0, 0] = np.inf
    volume = read_scan(nifti(tmp_path / "holes.nii.gz", data))
    (warning,) = volume.warnings
    assert "holes.nii.gz has 5 NaN or infinite voxel(s)" in warning
    everything_nan = np.full((20, 20, 20), np.nan, np.float32)
    with pytest.raises(InputError, match="no finite voxel") as error:
        read_scan(nifti(tmp_path / "all_nan.nii", everything_nan))
    assert "all_nan.nii" in str(error.value) and "constant" not in str(error.value)


# ---- hot voxels ---------------------------------------------------------------------------


def test_one_hot_voxel_per_slice_does_not_change_the_scaling(tmp_path):
    clean = head_like()
    hot = clean.copy()
    hot[2, 3, :] = 1e6  # one voxel in every axial slice, in the background corner
    a = read_scan(nifti(tmp_path / "clean.nii.gz", clean))
    b = read_scan(nifti(tmp_path / "hot.nii.gz", hot))
    assert a.warnings == [] and len(b.warnings) == 1
    assert "hot.nii.gz has 36 voxel(s) far outside its intensity range" in b.warnings[0]
    assert np.array_equal(a.slice_indices, b.slice_indices)
    for sa, sb in zip(a.slices, b.slices, strict=True):
        ua, ub = min_max(sa, a.intensity_bounds), min_max(sb, b.intensity_bounds)
        differ = ~np.isclose(ua, ub, atol=1e-6)
        assert differ.sum() <= 1  # only the hot pixel itself (clipped to the slice maximum)
    ta = thumbnails(a.slices, a.pixel_spacing, 32, a.intensity_bounds)
    tb = thumbnails(b.slices, b.pixel_spacing, 32, b.intensity_bounds)
    assert np.abs(ta.astype(int) - tb.astype(int)).mean() < 1.0
    # Without the bounds (plain min-max), one hot voxel blacks the slice out:
    assert min_max(b.slices[5]).mean() < 1e-3 < min_max(a.slices[5]).mean()


def test_int16_corner_voxels_at_the_type_limits(tmp_path):
    data = np.round(head_like()).astype(np.int16)
    data[0, 0, :] = 32767
    data[-1, -1, :] = -32767
    volume = read_scan(nifti(tmp_path / "int16.nii.gz", data))
    assert "voxel(s) far outside" in volume.warnings[0]
    scaled = min_max(volume.slices[10], volume.intensity_bounds)
    assert scaled[volume.slices[10] == 0].max() == 0.0  # the background stays black


@pytest.mark.parametrize("kind", ["hot", "int16"])
def test_a_copy_with_outlier_voxels_is_still_caught(small_cohort, small_bank, tmp_path, kind):
    root, members = small_cohort
    bank, _ = small_bank
    source = next(m.path for m in members if m.role == "train")
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if kind == "hot":
        data[1, 1, :] = 1e6
    else:
        data = np.round(data).astype(np.int16)  # the cohort's values span about 0-1500
        data[0, 0, :], data[-1, -1, :] = 32767, -32767
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    nib.save(nib.Nifti1Image(data, image.affine), synthetic / f"copy_{kind}.nii.gz")
    result = score(bank, synthetic, bank.load_encoder(device="cpu"), stride=2)
    (volume,) = result.volumes
    assert volume.flagged and Path(volume.match_volume).name == Path(source).name
    assert volume.fraction_flagged > 0.8
    assert "far outside its intensity range" in volume.warnings
    assert any("far outside" in w["warning"] for w in result.summary["warnings"])


# ---- warnings reach the console, summary.json and the report -------------------------------


def test_warnings_are_shown_everywhere(small_bank, tmp_path, capsys):
    _, bank = small_bank
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    four_d = np.stack([head_like(seed=s) for s in range(2)], axis=-1)
    nifti(synthetic / "timeseries.nii.gz", four_d)
    out = tmp_path / "report"
    assert main(["score", str(bank), str(synthetic), "--out", str(out), "--quiet"]) == 0
    console = capsys.readouterr().out
    assert "warning:" in console and "4D image" in console
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert any("4D image" in w["warning"] for w in summary["warnings"])
    assert "4D image" in (out / "report.html").read_text(encoding="utf-8")


def test_itk_says_nothing_on_stderr_while_reading(tmp_path, capfd):
    files = fx.write_dicom_series(tmp_path / "series", fx.phantom((32, 24, 20)), "1.2.3.4.7")
    os.remove(files[8])  # a missing slice: ITK prints a raw warning for it
    (volume,) = [v for v in iter_scans(tmp_path) if isinstance(v, ScanVolume)]
    assert any("not uniform" in w for w in volume.warnings)
    assert capfd.readouterr().err == ""


# ---- permissions are not "does not exist" --------------------------------------------------


def test_permission_problems_are_named_as_such(tmp_path):
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        nifti(locked / "scan.nii.gz", head_like())
        unreadable = nifti(base / "unreadable.nii.gz", head_like())
        os.chmod(unreadable, 0o600)
        script = textwrap.dedent(
            f"""
            import os
            from MemorizationIndexLib.errors import InputError
            from MemorizationIndexLib.scans import find_scans, read_scan
            if os.geteuid() == 0:  # imports first: nobody cannot read root's Python
                os.setgid(65534); os.setuid(65534)
            for call in (lambda: read_scan({str(locked / "scan.nii.gz")!r}),
                         lambda: find_scans({str(locked)!r} + "/inner"),
                         lambda: read_scan({str(unreadable)!r})):
                try:
                    call()
                except InputError as exc:
                    print(exc)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=False
        )
        lines = proc.stdout.splitlines()
        assert len(lines) == 3, proc.stdout + proc.stderr
        assert f"cannot be reached (no permission to open {locked})" in lines[0]
        assert f"cannot be reached (no permission to open {locked})" in lines[1]
        assert "unreadable.nii.gz cannot be read: permission denied" in lines[2]
    finally:
        shutil.rmtree(base)


# ---- options and files that are not what they claim ---------------------------------------


def test_a_file_that_is_not_a_checkpoint_is_called_so(tmp_path):
    text = tmp_path / "mri_core.pth"
    text.write_text("this is a README, not weights")
    with pytest.raises(CheckpointError, match="it is not one") as error:
        load_mricore_state_dict(text)
    assert str(text) in str(error.value) and "Python objects" not in str(error.value)


def test_stride_zero_and_negative_seed_are_refused_before_any_work(small_bank, tmp_path, capsys):
    bank, path = small_bank
    with pytest.raises(SettingsError, match="stride"):
        score(bank, tmp_path / "does-not-matter", stride=0)
    assert main(["score", str(path), str(tmp_path), "--out", str(tmp_path / "r"), "--stride", "0"])
    assert "stride" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder"
    assert main(["build-bank", str(missing), "--out", str(tmp_path / "b"), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "no-such-folder" not in err  # the option first, then the folder
    with pytest.raises(SettingsError, match="--seed"):
        BankSettings(seed=-1)


def test_a_build_whose_inputs_are_all_unusable_lists_each_reason(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    (train / "a.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    nifti(train / "flat.nii.gz", np.full((20, 20, 20), 3.0, np.float32))
    with pytest.raises(InputError) as error:
        build_bank(train, tmp_path / "bank", BankSettings(image_size=32))
    message = str(error.value)
    assert "a.nii.gz" in message and "flat.nii.gz" in message and "constant" in message


class Row:
    """A result row as write_csv takes it (SliceResult and VolumeResult have as_row)."""

    def __init__(self, row):
        self.row = row

    def as_row(self):
        return self.row


def test_spreadsheet_formulas_in_file_names_are_escaped(tmp_path):
    rows = [
        {"volume": '=HYPERLINK("http://x")', "mi": 0.5},
        {"volume": "+1", "mi": 0.25},
        {"volume": "@SUM(A1)", "mi": 0.1},
        {"volume": "-2", "mi": -0.5},
        {"volume": "plain.nii", "mi": 0.0},
    ]
    write_csv(tmp_path / "t.csv", [Row(r) for r in rows], ("volume", "mi"))
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        read = list(csv.DictReader(fh))
    assert [r["volume"] for r in read] == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'@SUM(A1)",
        "'-2",
        "plain.nii",
    ]
    assert [r["mi"] for r in read] == ["0.5", "0.25", "0.1", "-0.5", "0"]  # numbers untouched
