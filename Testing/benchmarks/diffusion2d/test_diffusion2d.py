"""The diffusion benchmark's machinery in seconds: a tiny cohort, a tiny DDPM trained for a
few steps and its cache, the oracle on planted copies and on held-out subjects, the written
PNG / npz formats, and the metrics on a stand-in scorer (the engine is not run here)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from . import benchmark, oracle
from .cohort import make_cohort, read_grey, subject_of
from .train_sample import TINY, train_and_sample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2") / "out"
    cohort = make_cohort(root / "cohort", n_train=3, n_heldout=3, n_levels=5, n_repeated=2)
    return root, cohort


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_cohort_files_and_names(tiny):
    _, cohort = tiny
    train, held = cohort.train_files(), cohort.heldout_files()
    assert len(train) == 15 and len(held) == 15
    assert {subject_of(f.name) for f in train} == {0, 1, 2}
    assert {subject_of(f.name) for f in held} == {3, 4, 5}
    assert subject_of("subject07_z031.png") == 7 and subject_of("fake_3.png") is None
    modes = {subject_of(f.name): Image.open(f).mode for f in train + held}
    assert modes[0] == "L" and modes[1] == "RGB"  # odd subjects as RGB of grey
    for f in train[:3]:
        im = np.asarray(Image.open(f))
        assert im.shape[:2] == (64, 64) and im.dtype == np.uint8 and im.max() > 100
    assert len(cohort.repeated) == 2 and all(
        (f in {t.name for t in train}) for f in cohort.repeated
    )
    templates = [s["template"] for s in cohort.subjects]
    assert templates == ["mni-t1", "mni-tissue", "epi"] * 2


def test_tiny_model_trains_samples_and_caches(tiny, cache):
    _, cohort = tiny
    s = train_and_sample(cohort.train_files(), cohort.repeated, TINY, cache, log=lambda *_: None)
    assert not s.reused and s.folder.parent.parent == cache
    assert (s.folder.parent / "model.pt").is_file() and (s.folder.parent / "train.json").is_file()
    arr = np.load(s.npz)["arr_0"]
    assert s.npz.name == "samples_6x64x64x3.npz"
    assert arr.shape == (6, 64, 64, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 2])  # RGB of grey
    pngs = sorted(s.png_dir.glob("fake_*.png"))
    assert len(pngs) == 6
    first = np.asarray(Image.open(s.png_dir / "fake_0.png"))
    assert first.shape == (64, 64, 3) and np.array_equal(first, arr[0])
    meta = json.loads((s.folder / "settings.json").read_text())
    assert meta["settings"]["steps"] == TINY.steps and meta["n_samples"] == 6
    assert meta["training_set_size"] == 15 + 2 * (TINY.repeats - 1)
    trained = json.loads((s.folder.parent / "train.json").read_text())
    assert set(trained["training_files"]) == {f.name for f in cohort.train_files()}
    again = train_and_sample(cohort.train_files(), cohort.repeated, TINY, cache)
    assert again.reused and np.array_equal(again.images, s.images)
    # other sampling settings: new samples from the same model, not retrained
    logs = []
    other = train_and_sample(
        cohort.train_files(), cohort.repeated, replace(TINY, n_samples=3), cache, log=logs.append
    )
    assert not other.reused and other.images.shape == (3, 64, 64)
    assert other.folder.parent == s.folder.parent and any("reusing the trained" in x for x in logs)
    # other training settings: another model
    assert TINY.train_key("x") != replace(TINY, steps=31).train_key("x")
    assert TINY.train_key("x") == replace(TINY, n_samples=3).train_key("x")


def test_oracle_finds_planted_copies_with_flip_and_shift(tiny):
    _, cohort = tiny
    files = cohort.train_files()
    train = oracle.TrainingSet.from_files(files)
    src = read_grey(files[7])
    exact = oracle.best_match(src, train)
    assert exact.ssim == pytest.approx(1.0) and exact.name == files[7].name
    assert exact.label() == "copy"
    moved = np.roll(src[:, ::-1], (2, -1), axis=(0, 1))  # flipped left-right, shifted
    m = oracle.best_match(moved, train)
    assert m.name == files[7].name and m.flip == "hflip" and m.label() == "copy"
    assert m.ssim > 0.97
    noisy = np.clip(src + np.random.default_rng(0).normal(0, 5, src.shape), 0, 255)
    n = oracle.best_match(noisy.astype(np.uint8)[::-1], train)
    assert n.name == files[7].name and n.flip == "vflip" and n.label() == "copy"


def test_oracle_calls_heldout_subjects_novel(tiny):
    _, cohort = tiny
    train = oracle.TrainingSet.from_files(cohort.train_files())
    matches = oracle.best_matches([read_grey(f) for f in cohort.heldout_files()], train)
    scores = np.array([m.ssim for m in matches])
    assert (scores < oracle.NOVEL_SSIM).all(), scores
    assert oracle.classify(0.9) == "copy" and oracle.classify(0.7) == "ambiguous"
    assert oracle.classify(0.1) == "novel"


def test_evaluate_by_hand():
    truth = {
        "fake_0.png": {"class": "copy", "source_subject": 1},
        "fake_1.png": {"class": "copy", "source_subject": 2},
        "fake_2.png": {"class": "novel-sample", "source_subject": 0},
        "fake_3.png": {"class": "ambiguous", "source_subject": 0},
        "subject09_z010.png": {"class": "novel-real", "source_subject": None},
    }
    rows = [
        ("fake_0.png", 1.0, 0.9, True, "train/subject01_z020.png"),
        ("fake_1.png", 1.0, 0.8, True, "train/subject05_z020.png"),  # wrong source
        ("fake_2.png", 0.3, 0.5, False, "train/subject00_z020.png"),
        ("fake_3.png", 0.99, 0.7, True, "train/subject00_z020.png"),
        ("subject09_z010.png", 0.5, 0.6, False, "train/subject00_z010.png"),
    ]
    scores = [
        {"file": f, "mi": mi, "similarity": s, "flagged": fl, "match_volume": mv}
        for f, mi, s, fl, mv in rows
    ]
    m = benchmark.evaluate(truth, scores, 0.01)
    assert m["auroc"] == 1.0 and m["tpr_at_1pct_fpr"] == 1.0
    assert m["copies_flagged"] == 1.0 and m["copies_flagged_true_source"] == 0.5
    assert m["flag_rate_novel"] == 0.0 and m["flag_rate_ambiguous"] == 1.0
    assert m["counts"] == {"copy": 2, "novel-sample": 1, "ambiguous": 1, "novel-real": 1}


def test_run_end_to_end_with_a_stand_in_scorer(tiny, cache):
    root, cohort = tiny

    def stand_in(train_dir, queries, work):
        # nearest training slice by thumbnail correlation: a stand-in for the engine
        files = sorted(train_dir.glob("*.png"))
        train = oracle.TrainingSet.from_files(files)
        out = []
        for f in sorted(queries.glob("*.png")):
            sims = train.thumbs @ oracle._thumb(read_grey(f)[None])[0]
            j = int(np.argmax(sims))
            out.append(
                {"file": f.name, "mi": float(sims[j]), "similarity": float(sims[j]),
                 "flagged": bool(sims[j] > 0.99), "match_volume": str(files[j])}
            )  # fmt: skip
        return out

    result = benchmark.run(
        root, stand_in, TINY, cache=cache, log=lambda *_: None, augmented_per_kind=2
    )
    assert result["scoring"] == "ok"
    assert result["oracle"]["heldout_real"]["in_copy_band"] == 0.0
    m = result["metrics"]
    assert m["n_scored"] == 6 + 15 and m["counts"]["novel-real"] == 15
    assert (root / "results.json").is_file() and (root / "oracle.json").is_file()
    n_aug = 2 * len(benchmark.AUGMENTATIONS)
    n_blends = 2 * len(benchmark.BLEND_WEIGHTS)
    assert len(list((root / "queries").glob("*.png"))) == 21 + n_aug + n_blends + 2  # 2 dups
    assert set(result["blends"]) == {f"{w:.1f}" for w in benchmark.BLEND_WEIGHTS}
    assert "duplicates" not in result  # the stand-in writes no internal_duplicates.csv
    aug = result["augmented"]
    assert set(aug) == set(benchmark.AUGMENTATIONS) and aug["none"]["n"] == 2
    # exact copies: the stand-in finds them at correlation 1 with their own source
    assert aug["none"]["flagged_true_source"] == 1.0 and aug["none"]["auroc"] == 1.0
    text = benchmark.markdown(result)
    assert "Copies from a real memorising model" in text and "| none (exact copy) | 2 |" in text

    def unsupported(train_dir, queries, work):
        raise benchmark.ScoringUnsupported("score: not a volume format")

    result = benchmark.run(root, unsupported, TINY, cache=cache, log=lambda *_: None)
    assert result["scoring"].startswith("unsupported") and "metrics" not in result
    assert result["samples_reused"]
    assert "unsupported" in benchmark.markdown(result)


def test_augmented_copies_are_their_source_moved(tiny, tmp_path):
    _, cohort = tiny
    files = cohort.train_files()
    truth = benchmark.write_augmented_copies(files, tmp_path, per_kind=3, seed=5)
    assert len(truth) == 3 * len(benchmark.AUGMENTATIONS)
    for name, t in truth.items():
        image = read_grey(tmp_path / name)
        source = read_grey(next(f for f in files if f.name == t["source"]))
        assert t["source_subject"] == subject_of(t["source"]) and image.shape == source.shape
        if t["class"] == "aug:none":
            assert np.array_equal(image, source)
        if t["class"] == "aug:hflip":
            assert np.array_equal(image, source[:, ::-1])
    # three copies of one kind come from three subjects where the cohort has them
    subjects = {t["source_subject"] for t in truth.values() if t["class"] == "aug:shift"}
    assert len(subjects) == 3


def test_blends_and_planted_duplicates_are_what_they_say(tiny, tmp_path):
    from Testing.benchmarks.diffusion2d import set_audit

    _, cohort = tiny
    train, held = cohort.train_files(), cohort.heldout_files()
    truth = set_audit.write_blends(train, held, tmp_path, per_weight=2, seed=1)
    assert len(truth) == 2 * len(set_audit.BLEND_WEIGHTS)
    for name, t in truth.items():
        w = float(t["class"].split(":")[1])
        source = read_grey(next(f for f in train if f.name == t["source"])) / 255.0
        blend = read_grey(tmp_path / name) / 255.0
        # the rest, (blend - w source) / (1 - w), is the held-out slice named as partner
        rest = (blend - w * source) / (1 - w)
        partner = read_grey(next(h for h in held if h.name == t["partner"])) / 255.0
        assert np.abs(rest - partner).max() <= 1.0 / 255 / (1 - w) + 1e-6
    planted = set_audit.write_duplicates(held, tmp_path, n=3, seed=2)
    for dup, original in planted.items():
        a = read_grey(tmp_path / dup).astype(float)
        b = read_grey(next(h for h in held if h.name == original))[:, ::-1].astype(float)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    samples = [
        {"file": "fake_0.png", "label": "copy", "source": "subject01_z020.png"},
        {"file": "fake_1.png", "label": "copy", "source": "subject01_z020.png"},
        {"file": "fake_2.png", "label": "copy", "source": "subject02_z020.png"},
        {"file": "fake_3.png", "label": "novel", "source": "subject03_z020.png"},
    ]
    (dup, original), *_ = planted.items()
    real = [h.name for h in held]
    other = next(r for r in real if r != original)
    pairs = [
        ("fake_1.png", "fake_0.png", "/train/subject01_z020.png"),
        (original, dup, ""),
        (other, next(r for r in real if r not in (other, original)), ""),
    ]
    d = set_audit.evaluate_duplicates(pairs, planted, samples, real)
    assert d["planted_found"] == 1 and d["planted"] == 3
    assert d["sources_copied_twice"] == 1 and d["sources_paired"] == 1
    assert d["pairs_with_shared_source"] == 1
    # the third pair: two held-out slices; false unless both show the same person
    assert d["real_pairs_same_person"] + d["real_false_pairs"] == 1
    assert d["real_slices_falsely_paired"] == 2 * d["real_false_pairs"]
    assert d["real_slices"] == len(real)
    blend = {"blend-0.5_00.png": {"partner": other}}
    with_blend = [("blend-0.5_00.png", other, ""), ("fake_2.png", other, "")]
    d2 = set_audit.evaluate_duplicates(with_blend, planted, samples, real, blend)
    assert d2["real_false_pairs"] == 1 and d2["real_slices_falsely_paired"] == 1
    result = {"blends": {"0.8": {"n": 2, "auroc": 1.0, "tpr_at_1pct_fpr": 1.0, "flagged": 1.0,
              "flagged_true_source": 1.0}}, "duplicates": d}  # fmt: skip
    text = "\n".join(benchmark._set_audit_lines(result))
    assert "| 0.8 | 2 | 1.000 |" in text and "| 3 | 1 / 3 | 1 / 1 | 1 |" in text
