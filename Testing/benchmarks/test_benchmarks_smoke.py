"""The benchmark machinery on known inputs and on a tiny configuration (seconds, not minutes).

`make bench` runs the real thing; this proves its parts compute what they claim: the metrics
on hand-made scores, the peers on constructed data, the plumbing of FeatureSets, and one
tiny end-to-end detection + speed run that writes its tables.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ..conftest import TINY_LAYERS, tiny_encoder_config
from . import metrics, peers, protocol, speed
from .report import speed_markdown

# ---- metrics ---------------------------------------------------------------------------


def test_auroc_perfect_reversed_and_tied():
    assert metrics.auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert metrics.auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert metrics.auroc([0.5, 0.5], [0.5, 0.5]) == 0.5
    # one inversion out of 2 x 2 pairs
    assert metrics.auroc([0.1, 0.6], [0.5, 0.9]) == pytest.approx(0.75)


def test_auroc_matches_pairwise_definition_on_random_scores():
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, 60).round(1)  # rounding makes ties
    pos = rng.normal(0.8, 1, 40).round(1)
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert metrics.auroc(neg, pos) == pytest.approx(pairs)


def test_average_precision_by_hand():
    assert metrics.average_precision([0.1, 0.2], [0.8, 0.9]) == 1.0
    # ranking: pos(0.9), neg(0.8), pos(0.7): AP = 1/2 * (1 + 2/3)
    assert metrics.average_precision([0.8], [0.9, 0.7]) == pytest.approx((1 + 2 / 3) / 2)
    # everything tied: one threshold, precision = prevalence
    assert metrics.average_precision([1, 1, 1], [1]) == pytest.approx(0.25)


def test_tpr_at_fpr_counts_allowed_false_positives():
    neg = np.arange(200) / 200.0  # 0 .. 0.995
    pos = np.array([0.99, 0.992, 0.999, 1.5, 2.0])
    # 1 % of 200 = 2 negatives may pass: threshold is the 3rd highest negative (0.985)
    assert metrics.threshold_at_fpr(neg, 0.01) == pytest.approx(0.985)
    assert metrics.tpr_at_fpr(neg, pos, 0.01) == 1.0
    # with 50 negatives none may pass: only positives above the highest negative count
    neg50 = np.arange(50) / 50.0  # max 0.98
    assert metrics.tpr_at_fpr(neg50, [0.5, 0.97, 0.99, 3.0], 0.01) == 0.5
    assert metrics.tpr_at_fpr([0, 1], [2, 3], 0.01) == 1.0


def test_calibration_share_and_estimated_copy_share():
    assert metrics.flagged_share([True] + [False] * 99) == 0.01
    assert metrics.estimated_copy_share(0.01, 0.01) == 0.0
    assert metrics.estimated_copy_share(0.0, 0.01) == 0.0
    assert metrics.estimated_copy_share(0.307, 0.01) == pytest.approx(0.3)
    assert metrics.mean_and_worst([0.9, 1.0, 0.8]) == (pytest.approx(0.9), 0.8)


def test_ordering_score_orders_by_primary_then_tiebreak():
    s = metrics.ordering_score(np.array([1.0, 1.0, 0.5, 2.0]), np.array([0.2, 0.3, 9.0, 0.0]))
    assert list(np.argsort(s)) == [2, 0, 1, 3]


# ---- peers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(80, 16))
    reference = rng.normal(size=(40, 16))
    novel = rng.normal(size=(30, 16))
    copies = train[:10] + rng.normal(scale=1e-3, size=(10, 16))
    return train, reference, novel, copies


def test_feature_peers_separate_exact_copies_and_are_finite(clouds):
    train, reference, novel, copies = clouds
    a_novel, flag_novel = peers.authenticity(train, novel)
    a_copy, flag_copy = peers.authenticity(train, copies)
    assert flag_copy.all() and flag_novel.mean() < 0.5
    assert metrics.auroc(a_novel, a_copy) == 1.0
    fld = peers.fld_memorization(train, reference, np.concatenate([novel, copies]), epochs=20)
    assert np.isfinite(fld).all()
    assert metrics.auroc(fld[:30], fld[30:]) == 1.0


def test_pixel_peers_rank_copies_first():
    rng = np.random.default_rng(2)
    train = rng.random((50, 64))
    novel = rng.random((20, 64))
    copies = train[:8] * 0.9 + 0.05  # intensity change: correlation 1, relative L2 small
    corr_n, corr_c = peers.pixel_correlation(train, novel), peers.pixel_correlation(train, copies)
    assert np.allclose(corr_c, 1.0) and (corr_n < 0.9).all()
    l2_n = peers.carlini_relative_l2(train, novel)
    l2_c = peers.carlini_relative_l2(train, copies)
    assert metrics.auroc(l2_n, l2_c) == 1.0 and np.isfinite(l2_n).all()


def test_ct_score_is_negative_for_copying_and_near_zero_otherwise(clouds):
    train, reference, novel, copies = clouds
    rng = np.random.default_rng(3)
    fresh = rng.normal(size=(60, 16))
    copying = train[:60] + rng.normal(scale=1e-3, size=(60, 16))
    assert peers.ct_score(train, reference, copying) < -3.0
    assert abs(peers.ct_score(train, reference, fresh)) < 3.0


def test_frechet_distance_matches_the_direct_formula():
    from scipy import linalg

    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 6))
    b = rng.normal(loc=0.5, scale=1.3, size=(30, 6))
    fit = peers.GaussianFit.of(a)
    cb = np.cov(b, rowvar=False)
    root = linalg.sqrtm(fit.cov @ cb).real
    direct = ((fit.mean - b.mean(0)) ** 2).sum() + np.trace(fit.cov + cb - 2 * root)
    assert peers.frechet_distance(fit, b) == pytest.approx(direct, rel=1e-6)
    assert peers.frechet_distance(fit, a) == pytest.approx(0.0, abs=1e-5)


def test_paper_mi_gives_high_z_to_copies(clouds):
    train, _, novel, copies = clouds
    layers = [train, train[:, ::-1] * 2.0]
    paper = peers.PaperMI.fit(layers)
    z_copy = paper.z([copies, copies[:, ::-1] * 2.0])
    z_novel = paper.z([novel, novel[:, ::-1] * 2.0])
    assert np.isfinite(z_copy).all() and np.isfinite(z_novel).all()
    assert z_copy.min() > z_novel.max()
    assert paper.flags(z_copy).all()


# ---- augmentations and FeatureSet plumbing --------------------------------------------------


def test_augmentations_keep_shape_and_range():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 48), np.float32)
    image[10:30, 8:20] = 1.0
    for kind in protocol.AUGMENTATIONS:
        out = protocol.augment_slice(image, kind, rng)
        assert out.shape == image.shape and out.dtype == np.float32, kind
        assert out.min() >= 0.0 and out.max() <= 1.0, kind
    assert np.array_equal(protocol.augment_slice(image, "hflip", rng), image[:, ::-1])
    assert np.array_equal(protocol.augment_slice(image, "vflip", rng), image[::-1])
    with pytest.raises(ValueError):
        protocol.augment_slice(image, "swirl", rng)


# ---- tiny end-to-end runs -------------------------------------------------------------------


TINY = dict(
    image_size=48,
    layers=TINY_LAYERS,
    single_layer=3,
    subjects=6,
    train_volumes=3,
    reference_volumes=1,
    stride=5,
    spacing_mm=3.0,
    calibration_folds=3,
    encoder_config=tiny_encoder_config(),
)


@pytest.fixture(scope="module")
def tiny_detection():
    """Every method on a tiny cohort, stage 2 (geometric verification) included; one seed
    keeps its image registrations affordable."""
    config = protocol.DetectionConfig(
        **TINY, copies=5, seeds=1, augmentations=("none", "hflip", "rotate-5"), two_stage=True
    )
    return config, protocol.run_detection(config, progress=lambda *_: None)


@pytest.fixture(scope="module")
def tiny_cohort():
    """The tiny cohort's volumes encoded with every query flip, the bank's encoder info."""
    from MemorizationIndexLib.encoding.features import extract_features

    config = protocol.DetectionConfig(**TINY)
    settings = config.settings(verify=False)
    volumes, _ = protocol.cohort_volumes(config, settings.read_options())
    encoder = settings.encoder(config=tiny_encoder_config(), device="cpu", batch_size=64)
    fs = extract_features(volumes, encoder, settings.read_options(), flips=settings.flips)
    return settings, fs, encoder.info


def test_subset_rows_carries_every_view(tiny_cohort):
    settings, fs, _ = tiny_cohort
    rows = protocol.rows_of_volumes(fs, [0, 2])
    sub = protocol.subset_rows(fs, rows)
    assert len(sub) == len(rows) and sub.volumes == [fs.volumes[0], fs.volumes[2]]
    assert set(sub.volume_ids.tolist()) == {0, 1}
    for flip in settings.flips[1:]:
        assert np.array_equal(sub.flip_rows[flip], np.arange(len(rows)))
        assert np.array_equal(sub.flip_features[flip][0], fs.flip_features[flip][0][rows])
    assert np.array_equal(sub.thumbnails, fs.thumbnails[rows])
    one = protocol.select_layers(sub, [2])
    assert one.layers == (TINY_LAYERS[2],) and len(one.features) == 1


def test_detection_run_computes_every_method(tiny_detection):
    config, det = tiny_detection
    expected = {
        "ours",
        "ours_no_whitening",
        "ours_single_layer",
        "paper_z",
        "paper_z_shrunk",
        "authenticity",
        "fld_memorization",
        "pixel_correlation",
        "carlini_l2",
    }
    assert config.two_stage
    expected.add("ours_two_stage")
    assert set(det["per_slice"]) == expected
    for method, per_aug in det["per_slice"].items():
        for aug, entry in per_aug.items():
            for key in ("auroc", "ap", "tpr_at_1pct_fpr"):
                values = entry[key]["per_seed"]
                assert len(values) == config.seeds
                assert all(0.0 <= v <= 1.0 for v in values), (method, aug, key)
    # exact copies of bank slices: our index ranks every one above every clean slice
    assert det["per_slice"]["ours"]["none"]["auroc"]["worst"] == 1.0
    assert det["per_slice"]["ours"]["hflip"]["auroc"]["worst"] == 1.0  # query flips
    # stage 2 aligns rotated copies too: every copy above every clean slice, each matched to
    # the very slice it was made from
    two = det["per_slice"]["ours_two_stage"]
    assert all(two[a]["auroc"]["worst"] == 1.0 for a in config.augmentations), two
    assert all(det["right_source"]["ours_two_stage"][a] == 1.0 for a in ("none", "hflip"))
    assert det["right_source"]["ours_two_stage"]["rotate-5"] >= 0.8
    # calibration is a share of the clean slices; datasets have every p and finite stats
    cal = det["calibration"]["ours"]
    assert 0.0 <= cal["mean"] <= 1.0 and len(cal["per_seed"]) == config.seeds
    assert cal["mean"] == pytest.approx(np.mean(cal["per_seed"]))
    for rows in det["datasets"].values():
        assert [r["p"] for r in rows] == list(config.p_values)
        assert rows[0]["true_share"] == 0.0
        assert all(math.isfinite(r["frechet"]) for r in rows)
        assert all(0.0 <= r["ours_estimated"] <= 1.0 for r in rows)
    text = protocol.detection_tables(det)
    assert "TPR at 1 % FPR" in text and "paper z-score MI" in text
    json.dumps(det, default=str)


def test_estimated_share_shortcut_equals_the_engines_summary(tiny_cohort):
    """The sweep computes (f - alpha)/(1 - alpha) from per-slice flags; score_features'
    summary must say the same for the same slices."""
    from MemorizationIndexLib.bank.build import bank_from_features

    settings, fs, info = tiny_cohort
    train = protocol.subset_rows(fs, protocol.rows_of_volumes(fs, [0, 1, 2, 3]))
    bank = bank_from_features(train, settings, info)
    scored = protocol.engine_scores(bank, fs, 0.2)
    mine = metrics.estimated_copy_share(metrics.flagged_share(scored["flag"]), 0.2)
    assert scored["summary_share"] == pytest.approx(mine)


def test_speed_pieces_and_tables(tmp_path):
    from MemorizationIndexLib.encoding.vit import EncoderConfig

    mm = speed.matmul_rate("cpu", n=256, repeats=2)
    assert 0 < mm["seconds"] < 5 and mm["n"] == 256
    assert mm["flop_per_s"] == pytest.approx(2 * 256**3 / mm["seconds"])
    # analytic FLOPs: ViT-B/16 at 224 px is about 35 GFLOP per slice (12 blocks, 196 tokens)
    flops = speed.encoder_flops(EncoderConfig(), 224, (3, 7, 11))
    assert flops.executed == flops.useful and 34e9 < flops.executed < 36e9
    padded = speed.encoder_flops(EncoderConfig(), 112, (3, 7, 11))
    assert padded.padded_grid == 14 and padded.executed > padded.useful
    enc = speed.encoder_throughput(
        48, TINY_LAYERS, n_slices=4, batch_size=2, config=tiny_encoder_config()
    )
    tiny_flops = speed.encoder_flops(tiny_encoder_config(), 48, TINY_LAYERS)
    assert enc["slices_per_s"] == pytest.approx(4 / enc["seconds"])
    assert enc["achieved_flop_per_s"] == pytest.approx(enc["slices_per_s"] * tiny_flops.executed)
    # a 48 px image is a 3 x 3 token grid: tokens and FLOPs far below ViT-B at 224 px
    assert enc["grid"] == 3 and 0 < enc["gflop_per_slice_executed"] < 1.0
    scoring = speed.scoring_latency((2000, 4000), d=32, full_up_to=2000)
    assert scoring[0]["measured"] == "full" and scoring[1]["measured"].startswith("estimated")
    assert all(s["score_seconds"] > 0 for s in scoring)
    full, estimated = scoring
    assert full["searches"] == estimated["searches"] == full["views"] * 3
    assert [s["bank_bytes"] for s in scoring] == [n * 32 * 4 * 3 for n in (2000, 4000)]
    # the estimate: the searches of the bigger bank plus the non-search time of the measured one
    overhead = full["score_seconds"] - full["searches"] * full["one_search_seconds"]
    assert estimated["score_seconds"] == pytest.approx(
        estimated["searches"] * estimated["one_search_seconds"] + max(0.0, overhead)
    )
    results = {
        "matmul": mm,
        "encoder": [enc],
        "scoring": scoring,
        "bytes_per_slice": speed.bank_bytes_per_slice(),
        "peak_rss_bytes": speed.peak_rss_bytes(),
    }
    text = speed_markdown(results, {"cpu_224_seconds_per_slice": 0.38})
    assert "slices/s" in text and "2,000" in text
    assert speed.bank_bytes_per_slice()["vectors_bytes"] == 768 * 4 * 3


def test_command_line_writes_json_and_markdown(tmp_path, monkeypatch, tiny_detection):
    """run_benchmarks.main's plumbing (config from arguments, JSON, markdown), reusing the tiny
    detection result instead of computing it again."""
    from . import run_benchmarks

    seen = {}

    def fake_run(config, progress=print):
        seen["config"] = config
        return tiny_detection[1]

    monkeypatch.setattr(protocol, "run_detection", fake_run)
    argv = ["--only", "detection", "--out", str(tmp_path), "--seeds", "2", "--copies", "5"]
    argv += ["--augmentations", "none,hflip"]
    assert run_benchmarks.main(argv) == 0
    assert seen["config"].seeds == 2 and seen["config"].augmentations == ("none", "hflip")
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert "detection" in data and data["environment"]["command"]
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "## Detection" in text and "## Machine and command" in text
    with pytest.raises(SystemExit):
        run_benchmarks.main(["--only", "detection", "--augmentations", "swirl"])


def test_scale_engine_runs_the_engine_on_a_compressed_bank():
    """scale_engine's plumbing at a tiny size: build, save, load in a fresh process, score."""
    from . import scale_engine

    result = scale_engine.run(3000, dim=32, volumes=1)
    assert result["bank_slices"] == 3000
    assert result["candidate_recall"] >= 0.99
    assert 0 < result["ram_bytes_per_slice"] < result["disk_bytes_per_slice"]
    assert [e["workers"] for e in result["extrapolation"]] == [1, 8, 64]
    assert "Engine at scale" in scale_engine.markdown(result)


def test_image_set_speed_runs_every_stage_and_reports_shares():
    """The 2D set benchmark on a few images: every stage timed, every share a fraction."""
    from Testing.benchmarks import image_set_speed

    result = image_set_speed.run(n_images=24, image_size=32)
    build, score = result["build"], result["score"]
    assert build["encodings"] >= 24 and score["encodings"] == 24 * 3  # three query views
    assert 0 < build["share_of_encoder"] and 0 < score["encoder_share_of_scoring"] < 1
    assert build["cli_images_per_s"] > 0 and score["images_per_s"] > 0
    text = image_set_speed.markdown(result)
    assert "2D image sets: 24 PNG slices" in text and "share of the encoder's rate" in text
