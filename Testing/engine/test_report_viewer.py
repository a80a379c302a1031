"""The report as a reader uses it: a slice viewer per suspect, clicked through in a real
browser (Debian's headless Chromium, driven by Playwright), its pictures and numbers
checked against the scores; the audit record reproduced across runs; the training
subjects copied, exact on the planted cohort; progress as plain lines in a log.

The score runs through the command line, as a user runs it, on the shared real-MRI
cohort (4 planted copies of training subjects, 3 novel subjects).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.progress_lines import LineProgress
from MemorizationIndexLib.report.viewer import slice_numbers
from PIL import Image

from .test_image_sets import png_bank, slice_cohort, to_png  # noqa: F401 (its fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags this sandbox needs: no network beyond loopback, running as root (DESIGN: tests).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def scored(small_cohort, small_bank, tmp_path_factory):
    """`score` run twice from the command line, pictures inline and beside, with stderr
    as a log file sees it (not a terminal)."""
    root, members = small_cohort
    _, bank_dir = small_bank
    out = tmp_path_factory.mktemp("scored")
    logs = {}
    for mode in ("inline", "beside"):
        log = io.StringIO()
        with redirect_stderr(log):
            argv = ["score", str(bank_dir), str(root / "synthetic"), "--out", str(out / mode)]
            argv += ["--device", "cpu", "--stride", "2", "--report-images", mode]
            assert main(argv) == 0
        logs[mode] = log.getvalue()
    return out, members, logs


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def viewer_blocks(page_html: str) -> dict[str, dict]:
    blocks = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', page_html)
    return {key: json.loads(text) for key, text in blocks}


def decode(src: str, folder: Path) -> np.ndarray:
    if src.startswith("data:image/png;base64,"):
        raw = base64.b64decode(src.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(raw)))
    return np.asarray(Image.open(folder / src))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def shrink(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


# ---- what the page holds ---------------------------------------------------------------------


def test_every_flagged_volume_gets_a_viewer_of_its_slices_in_order(scored):
    out, members, _ = scored
    volumes = read_csv(out / "inline" / "volumes.csv")
    slices = read_csv(out / "inline" / "slices.csv")
    flagged = [v["volume"] for v in volumes if v["flagged"] == "1"]
    copies = {m.path for m in members if m.role == "copy"}
    assert set(flagged) == copies  # the pipeline's own verdict, as test_pipeline checks
    blocks = viewer_blocks((out / "inline" / "report.html").read_text(encoding="utf-8"))
    assert len(blocks) == len(flagged)
    for data in blocks.values():
        rows = [slices[s["row"]] for s in data["slices"]]
        assert {r["volume"] for r in rows} == {data["title"]}
        indices = [int(r["slice_index"]) for r in rows]
        assert indices == sorted(indices)
        assert len(rows) == sum(s["volume"] == data["title"] for s in slices)  # every slice
        for s, r in zip(data["slices"], rows, strict=True):
            assert s["mi"] == pytest.approx(float(r["mi"]), abs=1e-5)
            assert s["flagged"] == (r["flagged"] == "1")
        # It opens on the volume's most suspicious slice.
        best = max(range(len(rows)), key=lambda k: float(rows[k]["mi"]))
        assert float(rows[data["start"]]["mi"]) == pytest.approx(float(rows[best]["mi"]))


def test_pictures_are_256_px_of_the_right_slices_and_the_match_lies_on_the_copy(scored):
    """The synthetic picture is the scored slice (it agrees with the 64 px thumbnail the
    engine scored); the training picture, moved by the verified pose, lies on the copy."""
    out, _, _ = scored
    html_text = (out / "inline" / "report.html").read_text(encoding="utf-8")
    for data in viewer_blocks(html_text).values():
        flagged_nccs = []
        for s in data["slices"]:
            synthetic, training, difference = (decode(x, out / "inline") for x in s["src"])
            assert synthetic.shape == training.shape == difference.shape == (256, 256)
            if s["flagged"]:
                flagged_nccs.append(ncc(synthetic, training))
        assert np.median(flagged_nccs) > 0.9, (data["title"], flagged_nccs)


def test_pictures_beside_the_report_are_files_the_page_names(scored):
    out, _, _ = scored
    inline = viewer_blocks((out / "inline" / "report.html").read_text(encoding="utf-8"))
    beside = viewer_blocks((out / "beside" / "report.html").read_text(encoding="utf-8"))
    assert inline.keys() == beside.keys()
    for key, data in beside.items():
        for s, t in zip(data["slices"], inline[key]["slices"], strict=True):
            assert all(src.startswith(f"images/{key}/") for src in s["src"])
            for src, same in zip(s["src"], t["src"], strict=True):
                assert np.array_equal(decode(src, out / "beside"), decode(same, out / "inline"))
    inline_size = (out / "inline" / "report.html").stat().st_size
    assert (out / "beside" / "report.html").stat().st_size < inline_size / 5


# ---- in a real browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(
            "no Chromium on this machine: `make test` installs Debian's chromium where it "
            "may (apt-get, as root); install it to run the browser tests"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def state(page) -> dict:
    """What the viewer shows, once its pictures are loaded (files load asynchronously)."""
    page.wait_for_function(
        "['synthetic', 'training', 'difference'].every("
        "n => document.getElementById('viewer-' + n).complete)"
    )
    return page.evaluate(
        """() => ({
        at: Number(document.getElementById('viewer').dataset.at),
        row: Number(document.getElementById('viewer').dataset.row),
        hidden: document.getElementById('viewer').hidden,
        title: document.getElementById('viewer-title').textContent,
        srcs: ['synthetic', 'training', 'difference'].map(
            n => document.getElementById('viewer-' + n).getAttribute('src')),
        widths: ['synthetic', 'training', 'difference'].map(
            n => document.getElementById('viewer-' + n).naturalWidth),
        numbers: document.getElementById('viewer-numbers').textContent,
        slider: Number(document.getElementById('viewer-slider').value),
        marker: Number(document.getElementById('viewer-marker').getAttribute('x1')),
    })"""
    )


@pytest.mark.parametrize("mode", ["inline", "beside"])
def test_the_viewer_steps_through_a_volume_in_headless_chromium(scored, browser, mode):
    out, _, _ = scored
    folder = out / mode
    html_text = (folder / "report.html").read_text(encoding="utf-8")
    blocks = viewer_blocks(html_text)
    result_rows = read_csv(folder / "slices.csv")
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((folder / "report.html").as_uri())
    assert page.evaluate("document.getElementById('viewer').hidden")
    # Open the most suspicious volume from the volume table.
    page.locator("table button.open-suspect").first.click()
    opened = state(page)
    key = page.evaluate("document.getElementById('viewer').dataset.showing")
    data = blocks[key]
    assert not opened["hidden"] and opened["title"] == data["title"]
    assert opened["at"] == data["start"] == opened["slider"]

    def check(s):
        expected = data["slices"][s["at"]]
        assert s["srcs"] == expected["src"]
        assert s["widths"] == [256, 256, 256]  # decoded: the browser loaded them
        assert s["row"] == expected["row"]
        row = result_rows[s["row"]]
        assert s["numbers"] == expected["text"]
        assert f"slice {row['slice_index']} · MI {float(row['mi']):.6f}" in s["numbers"]
        assert f"matches {row['match_volume']} slice {row['match_slice']}" in s["numbers"]

    check(opened)
    n = len(data["slices"])
    page.keyboard.press("Home")
    first = state(page)
    assert first["at"] == 0
    check(first)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("j")
    second = state(page)
    assert second["at"] == 2 and second["marker"] > first["marker"]
    check(second)
    page.keyboard.press("ArrowLeft")
    assert state(page)["at"] == 1
    page.keyboard.press("End")
    assert state(page)["at"] == n - 1
    page.locator("#viewer-slider").fill(str(n // 2))  # the slider, as a drag sets it
    middle = state(page)
    assert middle["at"] == n // 2
    check(middle)
    page.locator("#viewer-prev").click()
    assert state(page)["at"] == n // 2 - 1
    page.locator("#viewer-next").click()
    assert state(page)["at"] == n // 2
    # Another suspect, from the table of training subjects.
    others = [k for k in blocks if k != key]
    if others:
        page.locator(f'button[data-suspect="{others[0]}"]').first.click()
        assert state(page)["title"] == blocks[others[0]]["title"]
        check_other = state(page)
        assert check_other["srcs"] == blocks[others[0]]["slices"][check_other["at"]]["src"]
    assert not errors
    page.close()


def test_slice_numbers_name_the_volume_slice_and_match():
    from MemorizationIndexLib.scoring.results import SliceResult

    row = SliceResult(
        volume="/s/a.nii.gz",
        series_uid="",
        slice_index=7,
        position=(0, 0, 0),
        similarity=0.5,
        mi=0.999,
        oni=-0.9,
        p_value=0.001,
        flagged=True,
        match_volume="/t/b.nii.gz",
        match_series_uid="",
        match_slice=9,
        match_position=(0, 0, 0),
        statistic=0.5,
        view="none",
        flip="hflip",
    )
    text = slice_numbers(row)
    assert text.startswith("/s/a.nii.gz slice 7 · MI 0.999000")
    assert "matches /t/b.nii.gz slice 9 (hflip)" in text


# ---- the audit record --------------------------------------------------------------------


def test_the_audit_record_names_the_files_scored_and_repeats_across_runs(scored, small_cohort):
    out, _, _ = scored
    root, _ = small_cohort
    first = json.loads((out / "inline" / "summary.json").read_text())["audit"]
    second = json.loads((out / "beside" / "summary.json").read_text())["audit"]
    assert first == second  # two runs of the same audit: the same record
    files = sorted((root / "synthetic").iterdir())
    assert first["samples"]["n_files"] == len(files)
    # The combined digest is that of `sha256sum`'s lines, sorted by path.
    listing = subprocess.run(
        ["sha256sum", *sorted(f.name for f in files)],
        cwd=root / "synthetic",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert first["samples"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert [e["path"] for e in first["samples"]["files"]] == [f.name for f in files]
    assert first["alpha"] == 0.01 and first["engine_version"]
    assert len(first["training"]["manifest_sha256"]) == 64
    assert first["null"]["n_slices"] > 0 and len(first["null"]["samples_sha256"]) == 64
    page = (out / "inline" / "report.html").read_text(encoding="utf-8")
    assert first["samples"]["sha256"] in page and first["training"]["manifest_sha256"] in page


def test_the_audit_record_changes_when_a_scored_file_does(tmp_path):
    from MemorizationIndexLib.scoring.audit import sample_set_identity

    (tmp_path / "a.nii.gz").write_bytes(b"one")
    (tmp_path / "b.nii.gz").write_bytes(b"two")
    paths = [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]
    before = sample_set_identity(paths)
    assert before == sample_set_identity(list(reversed(paths)))  # order does not matter
    (tmp_path / "b.nii.gz").write_bytes(b"twO")
    after = sample_set_identity(paths)
    assert after["sha256"] != before["sha256"]
    assert after["files"][0] == before["files"][0] and after["files"][1] != before["files"][1]


# ---- copies per training subject ---------------------------------------------------------------


def test_copies_per_training_subject_is_exact_on_the_planted_cohort(scored):
    out, members, _ = scored
    summary = json.loads((out / "inline" / "summary.json").read_text())
    table = summary["copies_per_training_subject"]
    planted = Counter(m.source for m in members if m.role == "copy")
    assert {r["example"]: r["copies"] for r in table} == dict(planted)
    assert all(r["training_files"] == 1 for r in table)  # one file per subject here
    assert [r["copies"] for r in table] == sorted(planted.values(), reverse=True)
    page = (out / "inline" / "report.html").read_text(encoding="utf-8")
    assert "Training subjects copied by volumes, most first" in page


# ---- logs --------------------------------------------------------------------------------------


def test_progress_in_a_log_is_a_few_whole_lines_per_stage(scored):
    _, _, logs = scored
    for log in logs.values():
        assert "\r" not in log
        lines = [line for line in log.splitlines() if ": " in line and " s" in line]
        stages = Counter(line.split(":")[0] for line in lines)
        assert stages, log
        assert max(stages.values()) <= 12, stages


def test_line_progress_bounds_its_lines():
    stream = io.StringIO()
    progress = LineProgress(stream)
    for done in np.linspace(0, 1000, 5001):
        progress("Verifying", float(done), 1000)
    progress("Writing", 0, 0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len([x for x in lines if x.startswith("Verifying")]) == 11  # 0 %, 10 %, ... 100 %
    assert lines[-1].startswith("Writing: 0 vol")
    assert [x.split(",")[0] for x in lines if x.startswith("Verifying")][:2] == [
        "Verifying: 0/1000 vol (0 %)",
        "Verifying: 100/1000 vol (10 %)",
    ]
    parts = io.StringIO()
    thirds = LineProgress(parts)
    thirds("Scoring", 11 / 3, 9)
    assert parts.getvalue().startswith("Scoring: 3.7/9 vol (41 %)")
    assert "\r" not in stream.getvalue()


def test_flagged_2d_images_are_grouped_by_the_training_subject_they_copy():
    """2D images have no volume: one viewer per training subject copied, most copied first,
    stepping through its copies; subjects come from the bank's groups (a and b are one)."""
    from types import SimpleNamespace

    from MemorizationIndexLib.report.viewer import suspects
    from MemorizationIndexLib.scoring.results import ScoreResult, SliceResult, VolumeResult

    def image(name, match, mi, flagged):
        common = dict(volume=f"s/{name}.png", series_uid="", mi=mi, oni=0.0, p_value=1 - mi)
        common.update(flagged=flagged, match_volume=f"t/{match}.png")
        row = SliceResult(
            **common,
            slice_index=0,
            position=(0, 0, 0),
            similarity=mi,
            match_series_uid="",
            match_slice=0,
            match_position=(0, 0, 0),
            statistic=mi,
            view="none",
            flip="none",
        )
        vol = VolumeResult(
            **common,
            n_slices=1,
            mi_max=mi,
            mi_q90=mi,
            fraction_flagged=float(flagged),
            match_fraction=1.0,
            longest_run=int(flagged),
            flip="none",
            warnings="",
            kind="image",
        )
        return row, vol

    made = [
        image("x1", "c", 0.999, True),
        image("x2", "a", 0.9995, True),
        image("x3", "b", 0.998, True),
        image("x4", "a", 0.5, False),
        image("x5", "c", 0.9999, True),
        image("x6", "a", 0.9991, True),
    ]
    result = ScoreResult(
        slices=[r for r, _ in made],
        volumes=[v for _, v in made],
        summary={},
        skipped=[],
        query_thumbnails=np.zeros((6, 8, 8), np.uint8),
        match_rows=np.zeros(6, int),
        alpha=0.01,
    )
    bank = SimpleNamespace(
        manifest={"subject_groups": [0, 0, 1]}, volumes=["t/a.png", "t/b.png", "t/c.png"]
    )
    found = suspects(result, bank)
    assert [(s.subject, len(s.rows)) for s in found] == [(0, 3), (1, 2)]
    assert all(s.volume is None for s in found)
    assert {result.slices[i].volume for i in found[0].rows} == {"s/x2.png", "s/x3.png", "s/x6.png"}
    assert result.slices[found[1].rows[found[1].start]].volume == "s/x5.png"  # its best first


# ---- a set of 2D images, clicked through ---------------------------------------------------


def test_the_viewer_steps_through_a_2d_sets_copies_in_headless_chromium(browser, tmp_path, request):
    """A folder of PNGs from a 2D model: three copies of one training subject's slices
    (flipped, with noise, made by numpy) and two novel images. The report's viewer for that
    subject opens from the subjects table and steps through exactly its copies, each next to
    the training slice it copies."""
    bank = request.getfixturevalue("png_bank")  # test_image_sets' fixtures
    cohort = request.getfixturevalue("slice_cohort")
    slices, novel = cohort["slices"], cohort["novel"]
    rng = np.random.default_rng(5)
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    copied = sorted(z for k, z in slices if k == 2)[:3]
    for n, z in enumerate(copied):
        pixels = slices[(2, z)][:, ::-1].astype(np.float32) + rng.normal(0, 3, slices[(2, z)].shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(synthetic / f"s{n}.png")
    for n, volume in enumerate(novel):
        Image.fromarray(to_png(volume[volume.shape[0] // 2])).save(synthetic / f"novel{n}.png")
    report = tmp_path / "report"
    argv = ["score", str(bank), str(synthetic), "--out", str(report), "--device", "cpu"]
    assert main([*argv, "--quiet"]) == 0
    blocks = viewer_blocks((report / "report.html").read_text(encoding="utf-8"))
    rows = read_csv(report / "slices.csv")
    groups = [k for k, b in blocks.items() if "training subject" in b["title"]]
    assert len(groups) == 1, [b["title"] for b in blocks.values()]
    data = blocks[groups[0]]
    shown = sorted(Path(rows[s["row"]]["volume"]).name for s in data["slices"])
    assert shown == ["s0.png", "s1.png", "s2.png"]
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((report / "report.html").as_uri())
    page.locator(f'button[data-suspect="{groups[0]}"]').first.click()
    opened = state(page)
    assert not opened["hidden"] and opened["title"] == data["title"]
    page.keyboard.press("Home")
    seen = []
    for step in range(len(data["slices"])):
        s = state(page)
        assert s["at"] == step and s["widths"] == [256, 256, 256]
        row = rows[s["row"]]
        source = f"subject02_z{copied[int(Path(row['volume']).stem[1:])]:03d}.png"
        assert row["match_volume"].endswith(source) and row["flagged"] == "1"
        assert s["numbers"] == data["slices"][step]["text"]
        assert source in s["numbers"]
        seen.append(Path(row["volume"]).name)
        page.keyboard.press("ArrowRight")
    assert sorted(seen) == shown
    assert not errors
    page.close()
