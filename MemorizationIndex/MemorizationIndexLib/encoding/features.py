"""Encoder features of every kept slice of a set of scans, batched, with reading prefetched.

The encoder is the slow part; a reader thread loads and canonicalises the next volume
while the current one is encoded, so reading does not starve it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, SettingsError
from ..geometry import FLIPS
from ..job import Job, Step
from ..scans import (
    ReadOptions,
    ScanSource,
    ScanVolume,
    SkippedInput,
    SliceInfo,
    read_scan_reporting,
)
from ..search.volume_stage import CompactVolume
from .encoder import Encoder
from .preprocessing import thumbnails


@dataclass
class FeatureSet:
    """Features and provenance of every kept slice of a set of volumes.

    `features[l]` is [N, D] for layer position l (identity view). `flip_features[f]` holds
    the features of the rows `flip_rows[f]` seen through flip f (query-time transforms).
    """

    layers: tuple[int, ...]
    features: list[np.ndarray]
    flip_features: dict[str, list[np.ndarray]]
    flip_rows: dict[str, np.ndarray]
    slices: list[SliceInfo]
    volume_ids: np.ndarray
    volumes: list[str]
    series_uids: list[str]
    volume_warnings: list[list[str]]
    thumbnails: np.ndarray
    thumbnail_mm: np.ndarray  # [N] millimetres per thumbnail pixel
    skipped: list[SkippedInput] = field(default_factory=list)
    series_names: list[str] = field(default_factory=list)  # per volume, "" when not DICOM
    # per volume, for stage 3 (search/volume_stage.py); empty when not asked for
    compact_volumes: list[CompactVolume] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.slices)

    def positions(self) -> np.ndarray:
        """[N, 3] LPS mm of every slice's centre."""
        return np.array([s.position for s in self.slices], np.float64).reshape(-1, 3)

    def view(self, flip: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """(rows, per-layer features) of one view; 'none' is every row."""
        if flip == "none":
            return np.arange(len(self)), self.features
        return self.flip_rows[flip], self.flip_features[flip]


def _evenly_spaced(n: int, budget: int | None) -> np.ndarray:
    if budget is None or budget >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, num=max(1, budget)).round().astype(np.int64))


class _Collector:
    """The per-volume pieces of a FeatureSet, concatenated at the end."""

    def __init__(
        self,
        n_layers: int,
        extra_flips: list[str],
        thumbnail_size: int,
        volume_grid_mm: float | None = None,
    ):
        self.per_layer: list[list[np.ndarray]] = [[] for _ in range(n_layers)]
        self.flip_parts = {f: [[] for _ in range(n_layers)] for f in extra_flips}
        self.flip_rows: dict[str, list[np.ndarray]] = {f: [] for f in extra_flips}
        self.infos: list[SliceInfo] = []
        self.volume_ids: list[np.ndarray] = []
        self.names: list[str] = []
        self.uids: list[str] = []
        self.series_names: list[str] = []
        self.warnings: list[list[str]] = []
        self.thumbs: list[np.ndarray] = []
        self.thumb_mm: list[np.ndarray] = []
        self.thumbnail_size = thumbnail_size
        self.volume_grid_mm = volume_grid_mm
        self.compact: list[CompactVolume] = []
        self.offset = 0

    def add(self, volume: ScanVolume, features, flip_features: dict, rows: np.ndarray) -> None:
        for store, feats in zip(self.per_layer, features, strict=True):
            store.append(feats)
        for flip, feats in flip_features.items():
            for store, f in zip(self.flip_parts[flip], feats, strict=True):
                store.append(f)
            self.flip_rows[flip].append(rows + self.offset)
        size = self.thumbnail_size
        self.infos.extend(volume.slice_infos())
        self.volume_ids.append(np.full(len(volume), len(self.names), dtype=np.int64))
        self.names.append(volume.source)
        self.uids.append(volume.series_uid)
        self.series_names.append(volume.series_name)
        self.warnings.append(list(volume.warnings))
        self.thumbs.append(
            thumbnails(volume.slices, volume.pixel_spacing, size, volume.intensity_bounds)
        )
        rows_mm = volume.slices.shape[1] * volume.pixel_spacing[0]
        cols_mm = volume.slices.shape[2] * volume.pixel_spacing[1]
        self.thumb_mm.append(np.full(len(volume), max(rows_mm, cols_mm) / size))
        if self.volume_grid_mm is not None:
            self.compact.append(
                CompactVolume.of(volume.image, volume.intensity_bounds, self.volume_grid_mm)
            )
        self.offset += len(volume)

    def feature_set(self, layers: tuple[int, ...], skipped: list[SkippedInput]) -> FeatureSet:
        size = self.thumbnail_size
        if self.offset == 0:
            empty = [np.zeros((0, 0), np.float32) for _ in layers]
            features, flip_feats = empty, {f: list(empty) for f in self.flip_parts}
        else:
            features = [np.concatenate(parts) for parts in self.per_layer]
            flip_feats = {
                f: [np.concatenate(p) for p in parts] for f, parts in self.flip_parts.items()
            }
        return FeatureSet(
            layers=tuple(layers),
            features=features,
            flip_features=flip_feats,
            flip_rows={
                f: (np.concatenate(r) if r else np.zeros(0, np.int64))
                for f, r in self.flip_rows.items()
            },
            slices=self.infos,
            volume_ids=(
                np.concatenate(self.volume_ids) if self.volume_ids else np.zeros(0, np.int64)
            ),
            volumes=self.names,
            series_uids=self.uids,
            series_names=self.series_names,
            volume_warnings=self.warnings,
            thumbnails=(
                np.concatenate(self.thumbs) if self.thumbs else np.zeros((0, size, size), np.uint8)
            ),
            thumbnail_mm=np.concatenate(self.thumb_mm) if self.thumb_mm else np.zeros(0),
            skipped=skipped,
            compact_volumes=self.compact,
        )


def _encode_volume(
    encoder: Encoder, volume: ScanVolume, extra_flips: list[str], rows: np.ndarray, step: Step
):
    """(identity features, {flip: features of `rows`}); each view is 1/views of the step."""
    views = 1 + len(extra_flips)
    bounds = volume.intensity_bounds
    features = encoder.encode_slices(
        volume.slices, volume.pixel_spacing, progress=step.part(0.0, 1.0 / views), bounds=bounds
    )
    flipped = {}
    for view, flip in enumerate(extra_flips, start=1):
        step.job.check()
        flipped[flip] = encoder.encode_slices(
            volume.slices[rows],
            volume.pixel_spacing,
            flip,
            progress=step.part(view / views, 1.0 / views),
            bounds=bounds,
        )
    return features, flipped


def extract_features(
    sources: list[ScanSource | ScanVolume],
    encoder: Encoder,
    read_options: ReadOptions,
    flips: tuple[str, ...] = ("none",),
    flip_budget: int | None = None,
    thumbnail_size: int = 64,
    job: Job | None = None,
    stage: str = "Encoding slices",
    volume_grid_mm: float | None = None,
) -> FeatureSet:
    """Read, preprocess and encode every source; unusable ones are skipped and reported.

    flip_budget limits the flipped views to about that many slices in all, spread evenly
    over volumes and slices (the calibration null needs flipped views only of a sample).
    Progress counts volumes (fractions within one); Cancel is honoured per encoder batch.
    volume_grid_mm: also keep a compact copy of each volume on that grid (stage 3).
    """
    for flip in flips:
        if flip not in FLIPS:
            raise SettingsError(f"Unknown flip {flip!r}; choose from {', '.join(FLIPS)}.")
    job = job or Job()
    extra_flips = [f for f in flips if f != "none"]
    per_volume = None
    if flip_budget is not None and sources:
        per_volume = max(1, math.ceil(flip_budget / len(sources)))
    collected = _Collector(len(encoder.layers), extra_flips, thumbnail_size, volume_grid_mm)
    skipped: list[SkippedInput] = []

    def load(source) -> tuple[ScanVolume | None, list[SkippedInput]]:
        if isinstance(source, ScanVolume):
            return source, []
        try:
            return read_scan_reporting(source, read_options)
        except InputError as exc:
            return None, [SkippedInput(source.path, str(exc))]

    step = job.step(stage, len(sources))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, sources[0]) if sources else None
        for i in range(len(sources)):
            job.check()
            volume, dropped = pending.result()
            pending = pool.submit(load, sources[i + 1]) if i + 1 < len(sources) else None
            skipped.extend(dropped)
            if volume is not None:
                rows = _evenly_spaced(len(volume), per_volume)
                features, flipped = _encode_volume(
                    encoder, volume, extra_flips, rows, step.part(i, 1.0)
                )
                collected.add(volume, features, flipped, rows)
            step.update(i + 1)
    return collected.feature_set(encoder.layers, skipped)
