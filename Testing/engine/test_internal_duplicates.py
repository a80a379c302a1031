"""Internal duplicates (issue 23.1): synthetic inputs that copy each other, found with the
bank's index and verification and judged by its stage-1-2 null. The duplicates are made
by numpy and scipy from files the tests write; the engine sees only the files."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from MemorizationIndexLib.scoring.internal_duplicates import reference_share, sidak
from PIL import Image
from scipy import ndimage

from .test_image_sets import cli, png_bank, slice_cohort, to_png  # noqa: F401 (fixtures)

N_SUBJECTS_2D = 16  # a null of a few subjects' images is too coarse to judge a pair


@pytest.fixture(scope="module")
def image_cohort(tmp_path_factory):
    """PNG slices of 16 training subjects and 3 novel ones (MNI152 with per-subject
    deformations, demo/cohort.py), four per subject, and a bank of the training ones."""
    import SimpleITK as sitk
    from MemorizationIndexLib.demo.cohort import load_template, make_subject

    template = sitk.GetArrayFromImage(load_template(3.0))
    out = tmp_path_factory.mktemp("images2d")
    train = out / "train"
    train.mkdir()
    slices, novel = {}, []
    for k in range(N_SUBJECTS_2D + 3):
        volume = make_subject(template, 700 + k)[:, ::-1]  # [z, y, x], head up
        middle = volume.shape[0] // 2
        if k >= N_SUBJECTS_2D:
            novel.append(to_png(volume[middle]))
            continue
        for z in range(middle - 6, middle + 7, 4):
            slices[(k, z)] = to_png(volume[z])
            Image.fromarray(slices[(k, z)]).save(train / f"subject{k:02d}_z{z:03d}.png")
    bank = out / "bank"
    assert (
        cli("build-bank", train, "--out", bank, "--image-size", 32, "--encoder", "untrained") == 0
    )
    return {"bank": bank, "slices": slices, "novel": novel}


def read_pairs(report) -> list[dict]:
    with open(report / "internal_duplicates.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def names(row: dict) -> frozenset:
    return frozenset(row[k].rsplit("/", 1)[-1] for k in ("input_a", "input_b"))


def test_planted_2d_duplicates_are_found_with_the_right_pairs(tmp_path, capsys, request):
    """Six PNGs: two novel images of different subjects, a mirrored noisy copy of one of
    them (a duplicate without a training source), two copies of one training image (a
    duplicate with one) and a lone copy of another training image (a copy, no duplicate)."""
    cohort = request.getfixturevalue("image_cohort")
    bank, slices, novel = cohort["bank"], cohort["slices"], cohort["novel"]
    rng = np.random.default_rng(11)
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()

    def save(name, pixels):
        noisy = pixels.astype(np.float32) + rng.normal(0, 3, pixels.shape)
        Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8)).save(synthetic / name)

    first, second = novel[:2]
    save("novel_a.png", first)
    save("novel_b.png", second)
    save("novel_a_again.png", first[:, ::-1])
    twice = sorted(k for k in slices if k[0] == 1)[2]
    once = sorted(k for k in slices if k[0] == 2)[1]
    save("copy1.png", slices[twice])
    save("copy1_shifted.png", np.roll(slices[twice], (2, -3), axis=(0, 1)))
    save("copy2.png", slices[once])
    report = tmp_path / "report"
    capsys.readouterr()
    assert cli("score", bank, synthetic, "--out", report) == 0
    out = capsys.readouterr().out
    pairs = read_pairs(report)
    assert {names(r) for r in pairs} == {
        frozenset({"novel_a.png", "novel_a_again.png"}),
        frozenset({"copy1.png", "copy1_shifted.png"}),
    }
    by_pair = {names(r): r for r in pairs}
    source = by_pair[frozenset({"copy1.png", "copy1_shifted.png"})]["shared_training_source"]
    assert source.endswith(f"subject01_z{twice[1]:03d}.png")
    mirrored = by_pair[frozenset({"novel_a.png", "novel_a_again.png"})]
    assert mirrored["shared_training_source"] == "" and mirrored["transform"] == "hflip"
    assert by_pair[frozenset({"copy1.png", "copy1_shifted.png"})]["transform"] == "none"
    for row in pairs:
        assert float(row["p_value"]) <= 0.01 and row["slices_matched"] == "1"
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    inside = summary["internal_duplicates"]
    assert inside["searched"] and inside["n_pairs"] == 2 and inside["n_inputs"] == 6
    assert inside["pairs_with_training_source"] == 1 and inside["reference_share"] == 1.0
    assert 4 <= inside["n_inputs_flagged"] <= 4  # each member of a pair, none other
    assert "Internal duplicates: 2 pair(s)" in out and "copy the same training volume" in out
    html = (report / "report.html").read_text(encoding="utf-8")
    section = html[html.index('id="internal-duplicates"') :]
    section = section[: section.index("</table>")]
    assert section.count('<tr class="flag">') == 2 and section.count("data:image/png") == 6
    assert "novel_a_again.png" in section and "none in common" in section


@pytest.fixture(scope="module")
def duplicated_volumes(small_cohort, tmp_path_factory):
    """The small cohort's synthetic set plus a shifted noisy copy (scipy) of a novel one."""
    root, members = small_cohort
    folder = tmp_path_factory.mktemp("internal") / "synthetic"
    folder.mkdir()
    for path in sorted((root / "synthetic").glob("*.nii.gz")):
        shutil.copy(path, folder / path.name)
    novel = next(m.path for m in members if m.role == "novel")
    image = nib.load(novel)
    data = np.asarray(image.dataobj, np.float32)
    rng = np.random.default_rng(4)
    moved = ndimage.shift(data, (1.0, -2.0, 0.0), order=1) + rng.normal(0, 20, data.shape)
    nib.save(nib.Nifti1Image(moved.astype(np.float32), image.affine), folder / "zz-dup.nii.gz")
    return folder, members, novel


def test_planted_volume_duplicates_are_found_with_long_runs(small_bank, duplicated_volumes):
    """Through the API. Two copies of one training subject (the cohort draws its sources at
    random) and a planted duplicate of a novel volume; alpha 0.001 because this bank's null
    comes from six subjects (the 30-volume rate test checks alpha 0.01)."""
    from MemorizationIndexLib.scoring.score import score

    bank, _ = small_bank
    folder, members, novel = duplicated_volumes
    copies = {}
    for m in members:
        if m.role == "copy":
            copies.setdefault(m.source, []).append(m.path.rsplit("/", 1)[-1])
    expected = {frozenset(v) for v in copies.values() if len(v) == 2}
    assert len(expected) == 1 and all(len(v) <= 2 for v in copies.values())
    expected.add(frozenset({novel.rsplit("/", 1)[-1], "zz-dup.nii.gz"}))
    result = score(bank, folder, alpha=0.001)
    found = {names(p.as_row()) for p in result.internal_duplicates}
    assert found == expected
    for pair in result.internal_duplicates:
        assert pair.longest_run >= 15 and pair.p_value < 1e-4
        assert abs(pair.slice_a - pair.slice_b) <= 1
        shared = frozenset({novel.rsplit("/", 1)[-1], "zz-dup.nii.gz"}) != names(pair.as_row())
        assert bool(pair.training_source) == shared
    inside = result.summary["internal_duplicates"]
    assert inside["reference_share"] == pytest.approx((8 - 1) / (6 * (1 - 1 / 3)))
    # the bank keeps every 2nd slice: so does the synthetic reference
    assert inside["reference_slices"] == pytest.approx(inside["n_slices"] / 2, abs=8)
    assert result.query_features is None  # dropped once searched


def test_a_single_input_or_the_switch_leaves_the_search_out(tmp_path, request):
    bank = request.getfixturevalue("png_bank")
    slices = request.getfixturevalue("slice_cohort")["slices"]
    synthetic = tmp_path / "one"
    synthetic.mkdir()
    key = sorted(slices)[0]
    Image.fromarray(slices[key]).save(synthetic / "only.png")
    assert cli("score", bank, synthetic, "--out", tmp_path / "r1") == 0
    inside = json.loads((tmp_path / "r1" / "summary.json").read_text(encoding="utf-8"))[
        "internal_duplicates"
    ]
    assert inside == {"searched": False, "reason": inside["reason"]}
    assert "nothing to compare" in inside["reason"]
    assert read_pairs(tmp_path / "r1") == []
    Image.fromarray(slices[key]).save(synthetic / "again.png")
    args = ("score", bank, synthetic, "--out", tmp_path / "r2", "--no-internal-duplicates")
    assert cli(*args) == 0
    inside = json.loads((tmp_path / "r2" / "summary.json").read_text(encoding="utf-8"))[
        "internal_duplicates"
    ]
    assert not inside["searched"] and "--no-internal-duplicates" in inside["reason"]
    header = (tmp_path / "r2" / "internal_duplicates.csv").read_text(encoding="utf-8").splitlines()
    assert header[0].startswith("input_a,slice_a,input_b,slice_b,p_value,mi")
    assert len(header) == 1
    assert "Not searched" in (tmp_path / "r2" / "report.html").read_text(encoding="utf-8")


def test_sidak_is_the_best_of_m_independent_draws():
    rng = np.random.default_rng(0)
    draws = rng.uniform(size=(200_000, 3)).min(axis=1)  # the best of 3 uniform p-values
    for p in (0.001, 0.01, 0.1):
        assert sidak(np.array([p]), 3.0)[0] == pytest.approx((draws <= p).mean(), rel=0.08)
    assert sidak(np.array([0.02]), 1.0)[0] == pytest.approx(0.02)
    assert sidak(np.array([1e-12]), 2.0)[0] == pytest.approx(2e-12)


def test_reference_share_never_favours_a_flag(small_bank):
    bank, _ = small_bank
    assert reference_share(bank, 2) == 1.0  # fewer inputs than the null's reference
    assert reference_share(bank, 41) == pytest.approx(40 / 4)  # 6 volumes, 3 folds: 4 kept


def test_stepped_run_follows_a_thinned_reference():
    from MemorizationIndexLib.scoring.evidence import longest_ordered_run

    def stepped_run(flagged, matched, step):  # the internal search's run: one reference input
        return longest_ordered_run(flagged, matched, np.zeros(64, int), step, repeats=True)

    on = np.ones(8, bool)
    assert stepped_run(on, np.array([10, 10, 12, 12, 14, 14, 16, 16]), 2) == 8
    assert stepped_run(on, np.array([16, 16, 14, 14, 12, 12, 10, 10]), 2) == 8
    assert stepped_run(on, np.array([10, 12, 10, 12, 10, 12, 10, 12]), 2) == 2  # back and forth
    assert stepped_run(on, np.array([10, 11, 12, 20, 21, 22, 23, 24]), 1) == 5
    gap = on.copy()
    gap[3] = False
    assert stepped_run(gap, np.arange(8), 1) == 4


def test_features_of_layers_of_different_widths_are_kept_side_by_side():
    """LiteMedSAM's TinyViT stages are 64 to 320 wide: a set's features are one array with
    the layers side by side, split back by the bank's whiteners."""
    from MemorizationIndexLib.scoring.internal_duplicates import layer_features

    rng = np.random.default_rng(1)
    layers = [rng.normal(size=(5, d)).astype(np.float32) for d in (64, 160, 256)]
    back = layer_features(np.concatenate(layers, axis=1), [64, 160, 256])
    assert all(np.array_equal(a, b) for a, b in zip(layers, back, strict=True))
    with pytest.raises(ValueError, match="480 feature columns"):
        layer_features(np.concatenate(layers, axis=1), [64, 160])
