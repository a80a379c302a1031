"""Auditing sets of 2D images: subjects from file names, any mix of 2D and 3D, the set's
verdict, through the command line as a user runs it.

The training slices are cut with numpy from real MRI (the MNI152 template that ships with
nilearn, deformed per subject by the demo cohort) and written by PIL and numpy, never by
the engine; copies are training slices (flipped, with noise), novel images are slices of
subjects the bank has never seen.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.errors import InputError
from MemorizationIndexLib.scans.sources import ScanSource
from MemorizationIndexLib.scans.subjects import (
    compile_subject_pattern,
    name_subject,
    one_subject_each_if_all_one,
    subject_of,
    subject_warning,
)
from MemorizationIndexLib.scoring.image_set import copy_share, wilson_interval
from PIL import Image

# ---- subjects of 2D files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, subject",
    [
        ("subject00_z012.png", "subject00"),
        ("sub-07_slice12.png", "sub-07"),
        ("patient7-12.png", "patient7"),
        ("BraTS2021_00012_t1_slice_080.png", "BraTS2021_00012_t1"),
        ("case3_frame_4.tif", "case3"),
        ("knee.12.jpg", "knee"),
        ("P017_080.png", "P017"),
        ("00012.png", None),  # no subject in the name
        ("brain.png", None),
        ("subject03.nii.gz", None),  # a subject, no slice
    ],
)
def test_the_default_rule_takes_the_name_before_the_slice_number(name, subject):
    assert name_subject(f"/data/train/{name}") == subject


def test_subjects_of_2d_files_by_rule_pattern_and_file(tmp_path):
    root = str(tmp_path)
    png = ScanSource(f"{root}/a/P017_slice_080.png")
    entry = ScanSource(f"{root}/s.npz", "arr_0[3]")
    assert subject_of(png, root, None).how == "file name"
    assert subject_of(png, root, None).key == "name:a/P017"  # the word "slice" is dropped
    pattern = compile_subject_pattern(r"^(P\d+)_")
    assert subject_of(png, root, None, pattern).key == "pattern:a/P017"
    named = compile_subject_pattern(r"(?P<subject>P\d{3})")
    assert subject_of(png, root, None, named).key == "pattern:a/P017"
    assert subject_of(entry, root, None).how == "volume"  # a stack entry: its own
    grouping = {"s.npz:arr_0[3]": "Q", "a/P017_slice_080.png": "R"}
    assert subject_of(entry, root, grouping).key == "file:Q"
    assert subject_of(png, root, grouping).key == "file:R"
    with pytest.raises(InputError, match="not a regular expression"):
        compile_subject_pattern("(unclosed")


def test_a_rule_that_makes_one_subject_of_everything_found_none(tmp_path):
    sources = [ScanSource(f"{tmp_path}/img_{k:03d}.png") for k in range(4)]
    found = {(s.path, ""): subject_of(s, str(tmp_path), None) for s in sources}
    assert len({s.key for s in found.values()}) == 1
    changed, warning = one_subject_each_if_all_one(found)
    assert len({s.key for s in changed.values()}) == 4
    assert "'img'" in warning and "--subject-pattern" in warning
    images = set(changed)
    assert "Each of the 4 training images is its own subject" in subject_warning(changed, images)
    assert subject_warning(found, images) is None  # grouped: no warning
    assert subject_warning(changed, set()) is None  # 3D volumes, one per subject: usual


def test_set_statistics():
    low, high = wilson_interval(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.0713, abs=1e-3)
    low, high = wilson_interval(25, 50)
    assert low == pytest.approx(0.3664, abs=1e-3) and high == pytest.approx(0.6336, abs=1e-3)
    assert copy_share(0.01, 0.01) == 0.0
    assert copy_share(0.505, 0.01) == pytest.approx(0.5)
    assert copy_share(0.0, 0.01) == 0.0


# ---- a 2D cohort made from real MRI --------------------------------------------------------


def canonical_slices(path) -> np.ndarray:
    """[z, y, x] of a NIfTI volume in LPS display order, read by nibabel (not the engine)."""
    image = nib.as_closest_canonical(nib.load(path))  # RAS+
    data = np.asarray(image.dataobj, np.float32)  # [x, y, z] in R, A, S order
    return data[::-1, ::-1, :].transpose(2, 1, 0)  # L->R and A->P: LPS, as [z, y, x]


def to_png(values: np.ndarray) -> np.ndarray:
    top = np.percentile(values, 99.5)
    return np.clip(np.round(255 * values / max(top, 1e-6)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slice_cohort(small_cohort, tmp_path_factory):
    """Training PNGs (subjectNN_zKKK.png), each training subject's volume, and held-out
    subjects' slices, from the demo cohort's MNI-based volumes."""
    root, members = small_cohort
    out = tmp_path_factory.mktemp("slices")
    train = out / "train"
    train.mkdir()
    volumes = sorted((root / "train").glob("*.nii*"))[:4]
    slices = {}
    for k, path in enumerate(volumes):
        data = canonical_slices(path)
        middle = data.shape[0] // 2
        for z in range(middle - 8, middle + 9, 4):
            pixels = to_png(data[z])
            slices[(k, z)] = pixels
            Image.fromarray(np.stack([pixels] * 3, -1)).save(train / f"subject{k:02d}_z{z:03d}.png")
    novel = [canonical_slices(m.path) for m in members if m.role == "novel"][:2]
    assert novel
    return {"train": train, "slices": slices, "volumes": volumes, "novel": novel, "out": out}


def cli(*args) -> int:
    return main([*map(str, args), "--device", "cpu", "--quiet"])


@pytest.fixture(scope="module")
def png_bank(slice_cohort):
    bank = slice_cohort["out"] / "bank"
    train = slice_cohort["train"]
    assert (
        cli("build-bank", train, "--out", bank, "--image-size", 32, "--encoder", "untrained") == 0
    )
    return bank


def test_a_bank_built_from_pngs_knows_its_subjects(png_bank, slice_cohort):
    manifest = json.loads((png_bank / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["n_subjects"] == 4 and manifest["subjects_from"] == ["file name"]
    assert manifest["settings"]["volume_stage"] is False and manifest["volume_stage_off"]
    assert {v["kind"] for v in manifest["volumes"]} == {"image-px"}
    assert len(manifest["volumes"]) == len(slice_cohort["slices"])


def test_pngs_build_a_bank_that_scores_an_npz_archive(png_bank, slice_cohort, tmp_path, capsys):
    """The issue's case: train on PNG slices, score the guided-diffusion style archive."""
    slices, novel = slice_cohort["slices"], slice_cohort["novel"]
    rng = np.random.default_rng(3)
    copied = [
        (1, sorted(z for k, z in slices if k == 1)[2]),
        (3, sorted(z for k, z in slices if k == 3)[1]),
    ]
    images = []
    for k, z in copied:  # a copy flipped left-right, with noise
        pixels = slices[(k, z)][:, ::-1].astype(np.float32) + rng.normal(0, 4, slices[(k, z)].shape)
        images.append(np.clip(pixels, 0, 255))
    for volume in novel:
        for z in range(volume.shape[0] // 2 - 4, volume.shape[0] // 2 + 5, 4):
            images.append(to_png(volume[z]).astype(np.float32))
    stack = np.stack([np.stack([i] * 3, -1) for i in images]).astype(np.uint8)
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    np.savez(
        synthetic / f"samples_{len(stack)}x{stack.shape[1]}x{stack.shape[2]}x3.npz", arr_0=stack
    )
    capsys.readouterr()
    assert cli("score", png_bank, synthetic, "--out", tmp_path / "report") == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "report" / "slices.csv", encoding="utf-8")))
    by_entry = {r["series_uid"]: r for r in rows}
    assert set(by_entry) == {f"arr_0[{k}]" for k in range(len(stack))}
    for k, (subject, z) in enumerate(copied):
        row = by_entry[f"arr_0[{k}]"]
        assert row["flagged"] == "1", row
        assert row["match_volume"].endswith(f"subject{subject:02d}_z{z:03d}.png")
        assert row["slice_index"] == str(k) and row["units"] == "px"
    novel_rows = [r for e, r in by_entry.items() if int(e[6:-1]) >= len(copied)]
    assert len(novel_rows) == 6 and sum(r["flagged"] == "1" for r in novel_rows) <= 1
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    images = summary["images"]
    assert images["n_images"] == len(stack) and images["n_flagged"] >= len(copied)
    subjects = {r["example"].split("/")[-1][:9] for r in images["copies_per_training_subject"]}
    assert {"subject01", "subject03"} <= subjects
    assert "2D images:" in out and "Training subjects copied" in out
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "2D images: the set" in html


def test_a_bank_of_volumes_scores_png_slices_cut_from_them(small_bank, slice_cohort, tmp_path):
    """Volumes with the volume stage in the bank; PNG slices as queries: stage 3 does not
    apply to them and they are judged by the null of stages 1-2 (MemorizationIndexLib API:
    the bank uses the small encoder)."""
    from MemorizationIndexLib.scoring.score import score

    bank, _ = small_bank
    assert bank.compact_volumes is not None and bank.planar_null is not None
    training = canonical_slices(bank.volumes[2])
    middle = training.shape[0] // 4 * 2  # the bank keeps even slices (stride 2)
    queries = tmp_path / "queries"
    queries.mkdir()
    Image.fromarray(to_png(training[middle])).save(queries / "copy_a.png")
    Image.fromarray(to_png(training[middle + 4][::-1])).save(queries / "copy_b.png")  # v-flip
    novel = slice_cohort["novel"][0]
    for z in range(novel.shape[0] // 2 - 4, novel.shape[0] // 2 + 5, 4):
        Image.fromarray(to_png(novel[z])).save(queries / f"novel_{z}.png")
    encoder = bank.load_encoder(device="cpu")
    result = score(bank, queries, encoder, alpha=0.01)
    rows = {r.volume.split("/")[-1]: r for r in result.slices}
    for name in ("copy_a.png", "copy_b.png"):
        assert rows[name].flagged and rows[name].match_volume == bank.volumes[2], rows[name]
        assert rows[name].volume_ncc is None
    assert not any(r.flagged for n, r in rows.items() if n.startswith("novel"))
    assert result.summary["images"]["n_images"] == len(rows)
    assert "volume_stage_skipped" in result.summary


def test_a_bank_of_pngs_scores_a_volume_slice_by_slice(png_bank, slice_cohort, tmp_path, capsys):
    """A 2D model's training slices, a synthetic 3D volume: every slice is judged; the
    volume of the training subject whose slices the bank holds is flagged."""
    source = slice_cohort["volumes"][2]  # the volume subject02's PNGs were cut from
    synthetic = tmp_path / "volumes"
    synthetic.mkdir()
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine), synthetic / "synth.nii.gz")
    capsys.readouterr()
    assert cli("score", png_bank, synthetic, "--out", tmp_path / "report") == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    assert "images" not in summary  # a volume: the volume verdict is the headline
    volumes = list(csv.DictReader(open(tmp_path / "report" / "volumes.csv", encoding="utf-8")))
    assert volumes[0]["flagged"] == "1"
    assert "subject02_z" in volumes[0]["match_volume"]


# ---- many small images: batched encoding, blocks of scoring, the flip budget --------------


def test_the_flip_budget_holds_when_inputs_outnumber_it():
    """100,000 one-slice images and a budget of 3,000 flipped slices: every 33rd image is
    seen flipped, not every image (which would triple the encoding)."""
    from MemorizationIndexLib.encoding.features import EncodingPlan

    plan = EncodingPlan.of(100_000, ("none", "hflip", "vflip"), 3000)
    assert plan.flip_every == 33 and plan.flip_rows_per_volume == 1
    assert sum(plan.flips_input(i) for i in range(100_000)) == pytest.approx(3000, rel=0.02)
    volumes = EncodingPlan.of(40, ("none", "hflip"), 3000)
    assert volumes.flip_every == 1 and volumes.flip_rows_per_volume == 75  # as before


def test_small_inputs_are_encoded_together_with_the_same_features(slice_cohort):
    """extract_features batches one-slice inputs into one network call: each image gets
    the features it gets alone (to float precision), its own flips, in input order."""
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.encoding.features import extract_features
    from MemorizationIndexLib.scans import find_scans_required

    from ..conftest import TINY_LAYERS, tiny_encoder_config

    settings = BankSettings(image_size=32, layers=TINY_LAYERS)
    sources, _ = find_scans_required(slice_cohort["train"])
    sources = sources[:10]
    options = settings.read_options()
    together = settings.encoder(config=tiny_encoder_config(), device="cpu", batch_size=8)
    alone = settings.encoder(config=tiny_encoder_config(), device="cpu", batch_size=1)
    kwargs = dict(flips=settings.flips, flip_budget=4, thumbnail_size=16)
    a = extract_features(sources, together, options, **kwargs)
    b = extract_features(sources, alone, options, **kwargs)
    assert a.volumes == b.volumes == [s.path for s in sources]
    for fa, fb in zip(a.features, b.features, strict=True):
        np.testing.assert_allclose(fa, fb, rtol=1e-4, atol=1e-5)
    assert {f: r.tolist() for f, r in a.flip_rows.items()} == {"hflip": [0, 2, 4, 6, 8]} | {
        "vflip": [0, 2, 4, 6, 8]
    }
    for flip in a.flip_features:
        for fa, fb in zip(a.flip_features[flip], b.flip_features[flip], strict=True):
            np.testing.assert_allclose(fa, fb, rtol=1e-4, atol=1e-5)


def test_images_are_scored_in_blocks_that_a_resumed_run_repeats_whole(small_bank, slice_cohort):
    """score's runner scores 2D images a block at a time; a run that needs only some of a
    block (a resumed one) scores the block whole and returns exactly the same rows."""
    from MemorizationIndexLib.job import Job
    from MemorizationIndexLib.scans import find_scans_required
    from MemorizationIndexLib.scoring.resume import local_runner, run_options

    bank, _ = small_bank
    encoder = bank.load_encoder(device="cpu", batch_size=4)
    sources, _ = find_scans_required(slice_cohort["train"])
    sources = sources[:7]  # blocks [0-3] and [4-6]
    options = run_options(bank, 0.01, None)
    full = dict(local_runner(bank, sources, encoder, options, 0.01, Job())(list(range(7))))
    resumed = dict(local_runner(bank, sources, encoder, options, 0.01, Job())([1, 5, 6]))
    assert sorted(full) == list(range(7)) and sorted(resumed) == [1, 5, 6]
    for i in resumed:
        (a,), (b,) = full[i].result.slices, resumed[i].result.slices
        assert a.as_row() == b.as_row()
        assert full[i].result.volumes[0].volume == sources[i].path
