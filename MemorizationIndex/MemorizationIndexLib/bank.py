"""The feature bank: whitened training features, their provenance, and the calibrated null.

On disk a bank is a folder of .npy arrays and one manifest.json (no pickles), written
atomically. The manifest records everything that must match at scoring time (encoder and
checkpoint hash, image size, layers, preprocessing, slice axis, query flips), so a bank is
never silently used with another encoder or other settings.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from . import __version__
from .calibration import NullModel, volume_folds
from .encoder import EncoderConfig, EncoderInfo, build_encoder
from .errors import BankError, InputError, SettingsError
from .features import FeatureExtractor, FeatureSet, extract_features
from .fourier import PixelIndex
from .matching import exact_index, index_vectors
from .preprocessing import FLIPS, PreprocessSpec
from .progress import CancelCallback, ProgressCallback, check_cancel, report
from .scans import ReadOptions, SliceInfo, find_scans_required
from .twostage import Combination, StageResult, run_stages
from .verification import VERIFIER_VERSION, Verifier
from .whitening import Whitener

BANK_FORMAT = "memorization-index-bank"
BANK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BankSettings:
    """Choices that shape a bank. Those in MUST_MATCH are checked again at scoring time."""

    image_size: int = 224
    layers: tuple[int, ...] = (3, 7, 11)
    axis: str = "axial"
    stride: int = 1
    min_foreground: float = 0.05
    flips: tuple[str, ...] = ("none", "hflip", "vflip")
    top_k: int = 10
    calibration_folds: int = 10
    null_max_slices: int = 3000
    thumbnail_size: int = 64
    denoise_sigma: float = 1.0
    verify: bool = True
    verify_k: int = 24
    pixel_k: int = 8
    seed: int = 0

    MUST_MATCH = ("image_size", "layers", "axis", "flips", "verify")

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        flips = tuple(self.flips)
        if "none" not in flips:
            flips = ("none", *flips)
        object.__setattr__(self, "flips", flips)
        for flip in flips:
            if flip not in FLIPS:
                raise SettingsError(f"Unknown flip {flip!r}; choose from {', '.join(FLIPS)}.")
        if not self.layers:
            raise SettingsError("--layers needs at least one encoder block index.")
        if self.top_k < 1:
            raise SettingsError(f"--top-k must be at least 1 (got {self.top_k}).")
        if self.calibration_folds < 2:
            raise SettingsError(
                f"--calibration-folds must be at least 2 (got {self.calibration_folds})."
            )
        if self.pixel_k < 0:
            raise SettingsError(f"--pixel-k must be >= 0 (got {self.pixel_k}).")
        if self.verify and self.verify_k < 1:
            raise SettingsError(f"--verify-k must be at least 1 (got {self.verify_k}).")
        if self.denoise_sigma < 0:
            raise SettingsError(f"--denoise-sigma must be >= 0 (got {self.denoise_sigma}).")
        if self.null_max_slices < 100:
            raise SettingsError(f"--null-max-slices must be >= 100 (got {self.null_max_slices}).")
        self.read_options()  # validates axis, stride, min_foreground

    def read_options(self) -> ReadOptions:
        return ReadOptions(axis=self.axis, stride=self.stride, min_foreground=self.min_foreground)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(image_size=self.image_size, denoise_sigma=self.denoise_sigma)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["flips"] = list(self.flips)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BankSettings:
        known = {f.name for f in fields(cls)}
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        )


@dataclass
class FeatureBank:
    """A loaded bank: per-layer whiteners, unit vectors and exact indexes, provenance, null."""

    settings: BankSettings
    encoder: dict
    whiteners: list[Whitener]
    vectors: list[np.ndarray]
    volume_ids: np.ndarray
    slice_indices: np.ndarray
    positions: np.ndarray
    volumes: list[str]
    series_uids: list[str]
    thumbnails: np.ndarray
    thumbnail_mm: np.ndarray  # [N] millimetres per thumbnail pixel
    null: NullModel
    combination: Combination = field(default_factory=lambda: Combination(verify=False))
    manifest: dict = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self):
        # faiss keeps its own copy of the vectors; use it as ours so a bank sits in memory once.
        self._indexes = [exact_index(v) for v in self.vectors]
        self.vectors = [index_vectors(index) for index in self._indexes]

    def __len__(self) -> int:
        return len(self.volume_ids)

    @property
    def trained_encoder(self) -> bool:
        return bool(self.encoder.get("trained"))

    def slice_info(self, row: int) -> SliceInfo:
        vid = int(self.volume_ids[row])
        return SliceInfo(
            volume=self.volumes[vid],
            series_uid=self.series_uids[vid],
            slice_index=int(self.slice_indices[row]),
            position=tuple(float(x) for x in self.positions[row]),
        )

    def whiten(self, features: list[np.ndarray]) -> list[np.ndarray]:
        return [w.transform(f) for w, f in zip(self.whiteners, features, strict=True)]

    def match(
        self, queries: FeatureSet, verifier: Verifier | None = None, tick=None
    ) -> StageResult:
        """Both stages for every query slice: feature candidates, then verification
        (tick(done, n) after each verified query; see Verifier.align)."""
        views = []
        for flip in self.settings.flips:
            rows, feats = queries.view(flip)
            views.append((rows, self.whiten(feats) if len(rows) else feats))
        return run_stages(
            views,
            len(queries),
            self.vectors,
            self._indexes,
            self.volume_ids,
            self.settings.top_k,
            self.settings.verify_k if self.settings.verify else 0,
            queries.thumbnails,
            self.thumbnails,
            verifier,
            pixel_index=self.pixel_index() if self.settings.verify else None,
            pixel_k=self.settings.pixel_k,
            tick=tick,
        )

    def pixel_index(self):
        """The thumbnails' Fourier-descriptor index, built on first use."""
        if getattr(self, "_pixel_index", None) is None:
            self._pixel_index = PixelIndex(self.thumbnails)
        return self._pixel_index

    def statistic(self, result: StageResult) -> np.ndarray:
        """The per-slice statistic that MI and ONI calibrate."""
        return self.combination.statistic(result)

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike, inputs=()) -> Path:
        """Write the bank to `path` in one step (see atomic.py); `inputs` may not be touched."""
        from .atomic import atomic_directory

        path = Path(path)
        with atomic_directory(path, "bank", inputs) as tmp:
            for layer, w, v in zip(self.settings.layers, self.whiteners, self.vectors, strict=True):
                np.save(tmp / f"features_layer{layer}.npy", v.astype(np.float32))
                np.save(tmp / f"whitening_layer{layer}_mean.npy", w.mean)
                np.save(tmp / f"whitening_layer{layer}_matrix.npy", w.matrix)
            np.save(tmp / "slice_volume_ids.npy", self.volume_ids.astype(np.int64))
            np.save(tmp / "slice_indices.npy", self.slice_indices.astype(np.int64))
            np.save(tmp / "slice_positions.npy", self.positions.astype(np.float64))
            np.save(tmp / "thumbnails.npy", self.thumbnails.astype(np.uint8))
            np.save(tmp / "thumbnail_mm.npy", self.thumbnail_mm.astype(np.float64))
            np.savez(tmp / "null.npz", **self.null.to_arrays())
            if self.combination.verify:
                np.savez(tmp / "null_stages.npz", **self.combination.to_arrays())
            manifest = dict(self.manifest)
            manifest.update(
                {
                    "format": BANK_FORMAT,
                    "format_version": BANK_FORMAT_VERSION,
                    "engine_version": __version__,
                    "encoder": self.encoder,
                    "settings": self.settings.to_dict(),
                    "preprocessing": self.settings.preprocess_spec().to_dict(),
                    "slice_reading": asdict(self.settings.read_options()),
                    "n_slices": len(self),
                    "volumes": [
                        {"path": p, "series_uid": u}
                        for p, u in zip(self.volumes, self.series_uids, strict=True)
                    ],
                    "shrinkage": {
                        str(layer): w.shrinkage
                        for layer, w in zip(self.settings.layers, self.whiteners, strict=True)
                    },
                    "calibration": self.null.summary(),
                    "combination": self.combination.summary(),
                    "verifier_version": VERIFIER_VERSION if self.combination.verify else None,
                }
            )
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self.path = str(path)
        self.manifest = manifest
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureBank:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BankError(f"{path} is not a feature bank (no manifest.json there).")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise BankError(f"{manifest_path} cannot be read as JSON: {exc}.") from exc
        if manifest.get("format") != BANK_FORMAT:
            raise BankError(f"{manifest_path} is not a MemorizationIndex bank manifest.")
        if manifest.get("format_version") != BANK_FORMAT_VERSION:
            raise BankError(
                f"{path} uses bank format {manifest.get('format_version')}; this version of "
                f"MemorizationIndex reads format {BANK_FORMAT_VERSION}. Rebuild the bank."
            )
        settings = BankSettings.from_dict(manifest["settings"])
        built_with = manifest.get("verifier_version", 1)
        if settings.verify and built_with != VERIFIER_VERSION:
            raise BankError(
                f"{path} was calibrated with stage-2 verification version {built_with}; this "
                f"version of MemorizationIndex verifies differently (version "
                f"{VERIFIER_VERSION}), so its null would not match the scores. Rebuild the bank."
            )

        def arr(name):
            file = path / name
            try:
                return np.load(file, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise BankError(f"Bank file {file} is missing or damaged ({exc}).") from exc

        whiteners, vectors = [], []
        for layer in settings.layers:
            whiteners.append(
                Whitener(
                    arr(f"whitening_layer{layer}_mean.npy"),
                    arr(f"whitening_layer{layer}_matrix.npy"),
                    float(manifest.get("shrinkage", {}).get(str(layer), 0.0)),
                )
            )
            vectors.append(np.ascontiguousarray(arr(f"features_layer{layer}.npy"), np.float32))
        null_arrays = arr("null.npz")
        volumes = manifest["volumes"]
        bank = cls(
            settings=settings,
            encoder=manifest["encoder"],
            whiteners=whiteners,
            vectors=vectors,
            volume_ids=arr("slice_volume_ids.npy"),
            slice_indices=arr("slice_indices.npy"),
            positions=arr("slice_positions.npy"),
            volumes=[v["path"] for v in volumes],
            series_uids=[v.get("series_uid", "") for v in volumes],
            thumbnails=arr("thumbnails.npy"),
            thumbnail_mm=arr("thumbnail_mm.npy"),
            null=NullModel.from_arrays({k: null_arrays[k] for k in null_arrays.files}),
            combination=Combination.from_arrays(
                settings.verify,
                dict(arr("null_stages.npz")) if settings.verify else {},
            ),
            manifest=manifest,
            path=str(path),
        )
        n = len(bank.volume_ids)
        if any(len(v) != n for v in vectors) or len(bank.slice_indices) != n:
            raise BankError(f"Bank {path} is inconsistent: its arrays disagree on the slice count.")
        return bank

    def check_compatible(self, settings: BankSettings | None = None, encoder: dict | None = None):
        """Refuse to score with an encoder or settings other than the bank's (BankError)."""
        problems = []
        if encoder is not None:
            for key in ("name", "checkpoint_sha256", "image_size", "layers", "config"):
                mine, theirs = self.encoder.get(key), encoder.get(key)
                if _normal(mine) != _normal(theirs):
                    problems.append(f"encoder {key}: bank has {mine!r}, asked for {theirs!r}")
        if settings is not None:
            for key in BankSettings.MUST_MATCH:
                mine, theirs = getattr(self.settings, key), getattr(settings, key)
                if _normal(mine) != _normal(theirs):
                    problems.append(f"{key}: bank has {mine!r}, asked for {theirs!r}")
        if problems:
            raise BankError(
                f"The bank {self.path or ''} was built with other settings: "
                + "; ".join(problems)
                + ". Score with the bank's settings or rebuild the bank."
            )


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


# ---- building ----------------------------------------------------------------------------


def encoder_for(
    settings: BankSettings,
    checkpoint: str | os.PathLike | None,
    config: EncoderConfig | dict | None = None,
):
    """The encoder a bank's settings call for (ViT-B unless a config is given)."""
    if isinstance(config, dict):
        config = EncoderConfig.from_dict(config)
    return build_encoder(
        checkpoint,
        image_size=settings.image_size,
        layers=settings.layers,
        config=config,
        seed=settings.seed,
    )


def cross_fitted_null(
    train: FeatureSet, settings: BankSettings, cancel: CancelCallback | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Stage scores of each held-out training slice against a bank of the other volumes.

    Every volume is held out once (settings.calibration_folds folds, split by volume); the
    held-out slices go through `run_stages` exactly as synthetic slices do at scoring time.
    With query flips the null uses the slices that were also encoded flipped.
    Returns (stage-1 similarities, stage-2 scores or None, rows of `train`).
    """
    n_volumes = len(train.volumes)
    if settings.flips != ("none",):
        null_rows = train.flip_rows[settings.flips[1]]
    else:
        null_rows = np.arange(len(train))
    s1 = np.zeros(len(null_rows), np.float64)
    s2 = np.zeros(len(null_rows), np.float64) if settings.verify else None
    verifier = Verifier()
    for held_out in volume_folds(n_volumes, settings.calibration_folds, settings.seed):
        check_cancel(cancel)
        held = np.isin(train.volume_ids, held_out)
        in_bank = ~held
        whiteners = [Whitener.fit(f[in_bank]) for f in train.features]
        vectors = [w.transform(f[in_bank]) for w, f in zip(whiteners, train.features, strict=True)]
        query_mask = held[null_rows]
        query_rows = null_rows[query_mask]
        if len(query_rows) == 0:
            continue
        views = []
        for flip in settings.flips:
            rows, feats = train.view(flip)
            pos = np.searchsorted(rows, query_rows) if flip != "none" else query_rows
            whitened = [w.transform(f[pos]) for w, f in zip(whiteners, feats, strict=True)]
            views.append((np.arange(len(query_rows)), whitened))
        result = run_stages(
            views,
            len(query_rows),
            vectors,
            [exact_index(v) for v in vectors],
            train.volume_ids[in_bank],
            settings.top_k,
            settings.verify_k if settings.verify else 0,
            train.thumbnails[query_rows],
            train.thumbnails[in_bank],
            verifier,
            pixel_index=PixelIndex(train.thumbnails[in_bank]) if settings.verify else None,
            pixel_k=settings.pixel_k,
            tick=lambda done, total: check_cancel(cancel),
        )
        s1[query_mask] = result.stage1.similarity
        if s2 is not None:
            s2[query_mask] = result.alignment.score
    return s1, s2, null_rows


def bank_from_features(
    train: FeatureSet,
    settings: BankSettings,
    info: EncoderInfo,
    cancel: CancelCallback | None = None,
    extra_manifest: dict | None = None,
) -> FeatureBank:
    """Fit whitening on all training slices, calibrate by volume, and assemble the bank."""
    if len(train) == 0:
        raise InputError("No usable training slices were found, so no bank can be built.")
    if len(train.volumes) < 2:
        raise InputError(
            f"Only {len(train.volumes)} usable training volume was found; at least 2 are "
            "needed to calibrate (whole volumes are held out)."
        )
    s1, s2, _ = cross_fitted_null(train, settings, cancel)
    combination = Combination.fit(s1, s2)
    null = NullModel.fit(combination.statistic_of(s1, s2))
    whiteners = [Whitener.fit(f) for f in train.features]
    vectors = [w.transform(f) for w, f in zip(whiteners, train.features, strict=True)]
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "skipped": [asdict(s) for s in train.skipped],
        "warnings": {
            f"{v} {u}".strip(): w
            for v, u, w in zip(train.volumes, train.series_uids, train.volume_warnings, strict=True)
            if w
        },
        "untrained_encoder_notice": None if info.trained else info.name,
    }
    manifest.update(extra_manifest or {})
    return FeatureBank(
        settings=settings,
        encoder=info.to_dict(),
        whiteners=whiteners,
        vectors=vectors,
        volume_ids=train.volume_ids,
        slice_indices=np.array([s.slice_index for s in train.slices], np.int64),
        positions=np.array([s.position for s in train.slices], np.float64).reshape(-1, 3),
        volumes=list(train.volumes),
        series_uids=list(train.series_uids),
        thumbnails=train.thumbnails,
        thumbnail_mm=train.thumbnail_mm,
        null=null,
        combination=combination,
        manifest=manifest,
    )


def build_bank(
    train_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: BankSettings | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    encoder_config: EncoderConfig | None = None,
) -> FeatureBank:
    """Training folder -> saved bank. Unusable files are skipped and listed in the manifest.

    encoder_config picks another architecture than MRI-CORE's ViT-B (small ones keep tests
    fast); it is recorded in the bank and used again at scoring time.
    """
    from .atomic import check_output

    settings = settings or BankSettings()
    inputs = (train_dir, checkpoint)
    check_output(out_dir, "bank", inputs)  # before hours of encoding, not after
    sources, skipped = find_scans_required(train_dir)
    encoder, info = encoder_for(settings, checkpoint, encoder_config)
    extractor = FeatureExtractor(encoder, settings.preprocess_spec(), device, batch_size)
    train = extract_features(
        sources,
        extractor,
        settings.layers,
        settings.read_options(),
        flips=settings.flips,
        flip_budget=settings.null_max_slices,
        thumbnail_size=settings.thumbnail_size,
        progress=progress,
        cancel=cancel,
        stage="Encoding training slices",
    )
    train.skipped = list(skipped) + train.skipped
    report(progress, "Calibrating on held-out training volumes", 0, 1)
    bank = bank_from_features(
        train, settings, info, cancel, {"training_folder": os.fspath(train_dir)}
    )
    report(progress, "Calibrating on held-out training volumes", 1, 1)
    check_cancel(cancel)
    bank.save(out_dir, inputs)
    return bank
