"""An output path never destroys a user's files; replacing an output is safe under kills.

The command-line cases use the real CLI on real files; the kill cases run a real child
process that SIGKILLs itself at the worst moment of the swap.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from MemorizationIndexLib import atomic
from MemorizationIndexLib.atomic import (
    MARKER_NAME,
    atomic_directory,
    check_output,
    recover_output,
)
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.errors import SettingsError


def tree_digest(folder: Path) -> dict:
    """Every file below a folder with its content hash: 'unchanged' means byte-identical."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_output(target: Path, kind: str, text: str) -> None:
    with atomic_directory(target, kind) as tmp:
        (tmp / "content.txt").write_text(text)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hidden_leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ---- the command line refuses destructive outputs before any work ---------------------------


def test_score_out_onto_the_synthetic_folder_is_refused(small_cohort, small_bank, tmp_path, capsys):
    root, _ = small_cohort
    _, bank = small_bank
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    for p in sorted((root / "synthetic").iterdir())[:2]:
        (synthetic / p.name).write_bytes(p.read_bytes())
    before, bank_before = tree_digest(synthetic), tree_digest(bank)
    assert main(["score", str(bank), str(synthetic), "--out", str(synthetic), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(synthetic) in err and "input" in err
    assert tree_digest(synthetic) == before
    # onto the bank: refused, bank byte-identical
    assert main(["score", str(bank), str(synthetic), "--out", str(bank), "--quiet"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert tree_digest(bank) == bank_before
    # inside the synthetic folder
    inner = synthetic / "report"
    assert main(["score", str(bank), str(synthetic), "--out", str(inner), "--quiet"]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert not inner.exists() and tree_digest(synthetic) == before


def test_build_bank_out_onto_the_training_folder_is_refused(small_cohort, tmp_path, capsys):
    root, _ = small_cohort
    train = tmp_path / "train"
    train.mkdir()
    for p in sorted((root / "train").iterdir())[:2]:
        (train / p.name).write_bytes(p.read_bytes())
    before = tree_digest(train)
    assert main(["build-bank", str(train), "--out", str(train), "--quiet"]) == 2
    assert "is the input" in capsys.readouterr().err
    # a folder that holds the training folder
    assert main(["build-bank", str(train), "--out", str(tmp_path), "--quiet"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert tree_digest(train) == before


def test_out_dot_and_the_current_folder_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    for out in (".", str(tmp_path), ".."):
        assert main(["score", "nobank", "nosynth", "--out", out, "--quiet"]) == 2
        assert "nobank" not in capsys.readouterr().err  # refused before the bank is looked at
    assert (tmp_path / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_foreign_folders_and_files_are_refused_before_any_work(tmp_path, capsys):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    # The bank does not exist: an error about the output proves the output is checked first.
    synthetic = str(tmp_path / "synthetic")
    assert main(["score", str(tmp_path / "nobank"), synthetic, "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "was not written by memorization-index" in err and str(mine) in err
    assert (mine / "thesis.docx").read_text(encoding="utf-8") == "years of work"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["score", str(tmp_path / "nobank"), str(tmp_path / "s"), "--out", str(a_file)]) == 2
    assert "not a folder" in capsys.readouterr().err
    under_file = a_file / "report"
    assert main(["score", "nobank", str(tmp_path / "s"), "--out", str(under_file)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert a_file.read_text(encoding="utf-8") == "x"


def test_demo_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "data.nii.gz").write_bytes(b"somebody's scan")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    assert "was not written by memorization-index" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_unwritable_parent_is_refused_before_work():
    """As an unprivileged user (root ignores permissions), a read-only parent is refused."""
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        script = textwrap.dedent(
            f"""
            import os, sys
            from MemorizationIndexLib.atomic import check_output
            from MemorizationIndexLib.errors import SettingsError
            if os.geteuid() == 0:  # imports first: nobody cannot read root's Python
                os.setgid(65534); os.setuid(65534)
            try:
                check_output({str(locked / "report")!r}, "report")
            except SettingsError as exc:
                print("REFUSED", exc)
                sys.exit(0)
            sys.exit(1)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "no permission to write" in proc.stdout and str(locked) in proc.stdout
    finally:
        os.chmod(base / "locked", 0o755)
        import shutil

        shutil.rmtree(base)


def test_check_output_accepts_new_empty_and_own_folders(tmp_path):
    assert check_output(tmp_path / "new" / "deeper", "bank") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "report")
    write_output(tmp_path / "mine", "report", "first")
    check_output(tmp_path / "mine", "report")
    with pytest.raises(SettingsError, match="holds a report"):
        check_output(tmp_path / "mine", "bank")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / MARKER_NAME).write_text(json.dumps({"written_by": "someone-else", "kind": "bank"}))
    with pytest.raises(SettingsError, match="not written by memorization-index"):
        check_output(fake, "bank")


# ---- replacing an output: atomic, safe under kills and concurrent runs ----------------------


def test_replacing_an_output_leaves_no_leftovers(tmp_path):
    target = tmp_path / "report"
    write_output(target, "report", "first")
    write_output(target, "report", "second")
    assert (target / "content.txt").read_text(encoding="utf-8") == "second"
    assert json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))["kind"] == "report"
    assert hidden_leftovers(tmp_path, "report") == []


def test_a_failure_between_the_two_renames_puts_the_old_output_back(tmp_path, monkeypatch):
    target = tmp_path / "report"
    write_output(target, "report", "old")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # systems without exchange

    def fail(where):
        if where == "between-renames":
            raise OSError("disk full")

    monkeypatch.setattr(atomic, "_fault_point", fail)
    with pytest.raises(OSError, match="disk full"):
        write_output(target, "report", "new")
    assert (target / "content.txt").read_text(encoding="utf-8") == "old"
    assert hidden_leftovers(tmp_path, "report") == []


def test_the_exchange_is_used_where_the_system_has_it(tmp_path, monkeypatch):
    if atomic._renameat2 is None:
        pytest.skip("renameat2 exists on Linux only")  # CI runs on Linux
    target = tmp_path / "report"
    write_output(target, "report", "old")
    calls = []
    real = atomic._exchange
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: calls.append(1) or real(a, b))
    write_output(target, "report", "new")
    assert calls == [1] and (target / "content.txt").read_text(encoding="utf-8") == "new"
    assert hidden_leftovers(tmp_path, "report") == []


def test_a_failure_while_writing_keeps_the_old_output(tmp_path):
    target = tmp_path / "bank"
    write_output(target, "bank", "old")
    with pytest.raises(RuntimeError), atomic_directory(target, "bank") as tmp:
        (tmp / "content.txt").write_text("half")
        raise RuntimeError("encoder crashed")
    assert (target / "content.txt").read_text(encoding="utf-8") == "old"
    assert hidden_leftovers(tmp_path, "bank") == []


KILL_SCRIPT = """
import os, signal, sys
from MemorizationIndexLib import atomic
where, exchange, target = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
if not exchange:
    atomic._exchange = lambda a, b: False
def kill(point):
    if point == where:
        os.kill(os.getpid(), signal.SIGKILL)
atomic._fault_point = kill
with atomic.atomic_directory(target, "report") as tmp:
    (tmp / "content.txt").write_text("new")
"""


@pytest.mark.parametrize(
    "where,exchange",
    [("between-renames", False), ("swapped", False), ("swapped", True)],
)
def test_a_kill_at_the_worst_moment_leaves_a_complete_output(tmp_path, where, exchange):
    target = tmp_path / "report"
    write_output(target, "report", "old")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, where, "1" if exchange else "0", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    if where == "between-renames":  # the old output is aside under a hidden name
        assert not target.exists()
        assert any(n.startswith(".report.old-") for n in hidden_leftovers(tmp_path, "report"))
        recover_output(target)
        assert (target / "content.txt").read_text(encoding="utf-8") == "old"
    else:
        assert (target / "content.txt").read_text(encoding="utf-8") == "new"
    # the next run cleans up whatever the killed one left
    write_output(target, "report", "next")
    assert (target / "content.txt").read_text(encoding="utf-8") == "next"
    assert hidden_leftovers(tmp_path, "report") == []


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    import socket

    host, dead = socket.gethostname(), dead_pid()
    partial_dead = tmp_path / f".report.partial-{host}-{dead}-abc"
    partial_live = tmp_path / f".report.partial-{host}-{os.getppid()}-def"
    aside_dead = tmp_path / f".report.old-{host}-{dead}-ghi"
    for folder in (partial_dead, partial_live, aside_dead / "report"):
        folder.mkdir(parents=True)
    (aside_dead / "report" / "content.txt").write_text("kept aside by a killed run")
    recover_output(tmp_path / "report")  # no output at the path: the aside one comes back
    assert (tmp_path / "report" / "content.txt").read_text(
        encoding="utf-8"
    ) == "kept aside by a killed run"
    assert hidden_leftovers(tmp_path, "report") == [partial_live.name]


CONCURRENT_SCRIPT = """
import sys, time
from MemorizationIndexLib.atomic import atomic_directory
target, tag = sys.argv[1], sys.argv[2]
for i in range(8):
    with atomic_directory(target, "report") as tmp:
        for n in range(20):
            (tmp / f"part{n}.txt").write_text(f"{tag}-{i}")
        time.sleep(0.01)
"""


def test_concurrent_runs_never_crash_or_mix_outputs(tmp_path):
    target = tmp_path / "report"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_SCRIPT, str(target), f"w{k}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    contents = {(target / f"part{n}.txt").read_text(encoding="utf-8") for n in range(20)}
    assert len(contents) == 1  # all files from one complete run
    assert hidden_leftovers(tmp_path, "report") == []
