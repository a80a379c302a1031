"""`score --out DIR` killed half-way and run again finishes only the missing volumes and
writes the report an uninterrupted run writes; on a local 2-worker Ray cluster too."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from . import kill_points

OUTPUTS = ("slices.csv", "volumes.csv", "internal_duplicates.csv", "summary.json")
SCORE_ARGS = ["--stride", "3", "--quiet", "--device", "cpu"]

CLI = "from MemorizationIndexLib.cli import main\nsys.exit(main(sys.argv[2:]))\n"


@pytest.fixture(scope="module")
def synthetic(small_cohort, tmp_path_factory):
    """Five synthetic volumes: novel ones and copies."""
    root, _ = small_cohort
    folder = tmp_path_factory.mktemp("synth") / "synthetic"
    folder.mkdir()
    for path in sorted((root / "synthetic").iterdir())[:5]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def reference(small_bank, synthetic, tmp_path_factory):
    """An uninterrupted run."""
    from MemorizationIndexLib.cli import main

    _, bank = small_bank
    out = tmp_path_factory.mktemp("ref") / "report"
    assert main(["score", str(bank), str(synthetic), "--out", str(out), *SCORE_ARGS]) == 0
    return out


def same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        want, got = (a / name).read_text("utf-8"), (b / name).read_text("utf-8")
        if want != got:
            cells = [
                (i, x, y)
                for i, (u, v) in enumerate(zip(want.splitlines(), got.splitlines(), strict=False))
                for x, y in zip(u.split(","), v.split(","), strict=False)
                if x != y
            ]
            raise AssertionError(f"{name} differs in {len(cells)} cells: {cells[:8]}")


def killed_after(pieces: int, args: list[str]) -> None:
    """Run the CLI in a child process SIGKILLed once `pieces` volumes are saved."""
    kill_points.killed_after(pieces, CLI, args)


def resume_folders(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.resume-*"))


def test_a_killed_score_resumes_where_it_stopped(
    small_bank, synthetic, reference, tmp_path, monkeypatch
):
    from MemorizationIndexLib.cli import main
    from MemorizationIndexLib.scoring import resume

    _, bank = small_bank
    out = tmp_path / "report"
    args = ["score", str(bank), str(synthetic), "--out", str(out), *SCORE_ARGS]
    killed_after(2, args)
    assert not out.exists()  # no report from a killed run
    (folder,) = resume_folders(out)
    assert len(list(folder.glob("volume-*"))) == 2

    scored = []
    real = resume.score_volume

    def counted(bank, source, *rest):
        scored.append(source)
        return real(bank, source, *rest)

    monkeypatch.setattr(resume, "score_volume", counted)
    assert main(args) == 0
    assert len(scored) == 3  # only the volumes the killed run had not finished
    same_outputs(reference, out)
    assert resume_folders(out) == []  # removed once the report is written


def test_a_damaged_piece_is_scored_again(small_bank, synthetic, reference, tmp_path):
    from MemorizationIndexLib.cli import main

    _, bank = small_bank
    out = tmp_path / "report"
    args = ["score", str(bank), str(synthetic), "--out", str(out), *SCORE_ARGS]
    killed_after(1, args)
    (folder,) = resume_folders(out)
    (piece,) = folder.glob("volume-*")
    (piece / "arrays.npz").write_bytes(b"half a file")
    (folder / ".volume-000003.partial-1").mkdir()  # a piece that was being written
    assert main(args) == 0
    same_outputs(reference, out)


def test_ray_two_workers_write_the_same_report(small_bank, synthetic, reference, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install memorization-index[ray])")
    from MemorizationIndexLib.cli import main

    _, bank = small_bank
    out = tmp_path / "report"
    args = ["score", str(bank), str(synthetic), "--out", str(out), *SCORE_ARGS]
    assert main([*args, "--workers", "2"]) == 0
    same_outputs(reference, out)
    assert resume_folders(out) == []


def test_ray_options_say_how_to_install_ray(small_bank, synthetic, tmp_path, monkeypatch, capsys):
    from MemorizationIndexLib.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    _, bank = small_bank
    out = tmp_path / "report"
    code = main(["score", str(bank), str(synthetic), "--out", str(out), "--workers", "2"])
    assert code == 2
    assert "pip install memorization-index[ray]" in capsys.readouterr().err
