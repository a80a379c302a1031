"""Encoder features of every kept slice in a set of scans, batched, with reading prefetched.

The encoder is the slow part; a reader thread loads and canonicalises the next volume
while the current one is encoded, so reading does not starve it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError, SettingsError
from .preprocessing import FLIPS, PreprocessSpec, prepare_slices, thumbnails
from .progress import CancelCallback, ProgressCallback, check_cancel, report
from .scans import (
    ReadOptions,
    ScanSource,
    ScanVolume,
    SkippedInput,
    SliceInfo,
    read_scan_reporting,
)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple's MPS, then the CPU; an explicit name must be available."""
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise SettingsError(f"--device {device!r} is not a device name ({exc}).") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"--device {device!r}: no CUDA GPU is available here.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"--device {device!r}: Apple MPS is not available here.")
    return resolved


class FeatureExtractor:
    """Runs the encoder on preprocessed slices; bf16 autocast on CUDA, exact fp32 elsewhere."""

    def __init__(self, encoder, spec: PreprocessSpec, device: str = "auto", batch_size: int = 32):
        if batch_size < 1:
            raise SettingsError(f"--batch-size must be at least 1 (got {batch_size}).")
        self.device = resolve_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.spec = spec
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor, tick=None) -> list[np.ndarray]:
        """[n, 3, S, S] -> one float32 [n, D] array per requested layer.

        tick(done, n) runs before each encoder batch: callers report progress and honour
        Cancel there, so a large volume never freezes a user interface.
        """
        outputs: list[list[np.ndarray]] | None = None
        for start in range(0, len(batch), self.batch_size):
            if tick is not None:
                tick(start, len(batch))
            chunk = batch[start : start + self.batch_size].to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    layers = self.encoder(chunk)
            else:
                layers = self.encoder(chunk)
            arrays = [t.float().cpu().numpy() for t in layers]
            if outputs is None:
                outputs = [[a] for a in arrays]
            else:
                for store, a in zip(outputs, arrays, strict=True):
                    store.append(a)
        assert outputs is not None, "encode() needs at least one slice"
        return [np.concatenate(parts, axis=0) for parts in outputs]

    def slice_features(
        self, volume: ScanVolume, flip: str = "none", rows: np.ndarray | None = None, tick=None
    ) -> list[np.ndarray]:
        """Features of a volume's kept slices (or the given rows of them) under one flip."""
        slices = volume.slices if rows is None else volume.slices[rows]
        batch = prepare_slices(
            slices, volume.pixel_spacing, self.spec, flip, volume.intensity_bounds
        )
        return self.encode(batch, tick)


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

    def __len__(self) -> int:
        return len(self.slices)

    def view(self, flip: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """(rows, per-layer features) of one view; 'none' is every row."""
        if flip == "none":
            return np.arange(len(self)), self.features
        return self.flip_rows[flip], self.flip_features[flip]


def _evenly_spaced(n: int, budget: int | None) -> np.ndarray:
    if budget is None or budget >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, num=max(1, budget)).round().astype(np.int64))


def extract_features(
    sources: list[ScanSource | ScanVolume],
    extractor: FeatureExtractor,
    layers: tuple[int, ...],
    read_options: ReadOptions,
    flips: tuple[str, ...] = ("none",),
    flip_budget: int | None = None,
    thumbnail_size: int = 64,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    stage: str = "Encoding slices",
) -> FeatureSet:
    """Read, preprocess and encode every source; unusable ones are skipped and reported.

    flip_budget limits the flipped views to about that many slices in all, spread evenly
    over volumes and slices (the calibration null needs flipped views only of a sample).
    """
    for flip in flips:
        if flip not in FLIPS:
            raise SettingsError(f"Unknown flip {flip!r}; choose from {', '.join(FLIPS)}.")
    extra_flips = [f for f in flips if f != "none"]
    per_volume = None
    if flip_budget is not None and sources:
        per_volume = max(1, math.ceil(flip_budget / len(sources)))

    per_layer: list[list[np.ndarray]] = [[] for _ in layers]
    flip_parts: dict[str, list[list[np.ndarray]]] = {f: [[] for _ in layers] for f in extra_flips}
    flip_rows: dict[str, list[np.ndarray]] = {f: [] for f in extra_flips}
    infos: list[SliceInfo] = []
    volume_ids: list[np.ndarray] = []
    volume_names: list[str] = []
    volume_uids: list[str] = []
    warnings: list[list[str]] = []
    thumbs: list[np.ndarray] = []
    thumb_mm: list[np.ndarray] = []
    skipped: list[SkippedInput] = []
    offset = 0

    def load(source) -> tuple[ScanVolume | None, list[SkippedInput]]:
        if isinstance(source, ScanVolume):
            return source, []
        try:
            return read_scan_reporting(source, read_options)
        except InputError as exc:
            return None, [SkippedInput(source.path, str(exc))]

    report(progress, stage, 0, len(sources))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, sources[0]) if sources else None
        for i in range(len(sources)):
            check_cancel(cancel)
            volume, dropped = pending.result()
            pending = pool.submit(load, sources[i + 1]) if i + 1 < len(sources) else None
            skipped.extend(dropped)
            if volume is None:
                report(progress, stage, i + 1, len(sources))
                continue
            rows = _evenly_spaced(len(volume), per_volume)
            passes = 1 + len(extra_flips)

            def tick(done, n, view=0, volume_index=i, views=passes):
                # Fractional progress within the volume; Cancel is honoured per batch.
                check_cancel(cancel)
                share = (view + done / max(n, 1)) / views
                report(progress, stage, volume_index + share, len(sources))

            layer_feats = extractor.slice_features(volume, tick=tick)
            for store, feats in zip(per_layer, layer_feats, strict=True):
                store.append(feats)
            for view, flip in enumerate(extra_flips, start=1):
                check_cancel(cancel)
                feats = extractor.slice_features(
                    volume, flip, rows, tick=lambda d, n, v=view, t=tick: t(d, n, v)
                )
                for store, f in zip(flip_parts[flip], feats, strict=True):
                    store.append(f)
                flip_rows[flip].append(rows + offset)
            infos.extend(volume.slice_infos())
            volume_ids.append(np.full(len(volume), len(volume_names), dtype=np.int64))
            volume_names.append(volume.source)
            volume_uids.append(volume.series_uid)
            warnings.append(list(volume.warnings))
            thumbs.append(
                thumbnails(
                    volume.slices, volume.pixel_spacing, thumbnail_size, volume.intensity_bounds
                )
            )
            rows_mm = volume.slices.shape[1] * volume.pixel_spacing[0]
            cols_mm = volume.slices.shape[2] * volume.pixel_spacing[1]
            thumb_mm.append(np.full(len(volume), max(rows_mm, cols_mm) / thumbnail_size))
            offset += len(volume)
            report(progress, stage, i + 1, len(sources))

    if offset == 0:
        empty = [np.zeros((0, 0), np.float32) for _ in layers]
        features, flip_feats = empty, {f: list(empty) for f in extra_flips}
    else:
        features = [np.concatenate(parts) for parts in per_layer]
        flip_feats = {f: [np.concatenate(p) for p in flip_parts[f]] for f in extra_flips}
    return FeatureSet(
        layers=tuple(layers),
        features=features,
        flip_features=flip_feats,
        flip_rows={
            f: (np.concatenate(r) if r else np.zeros(0, np.int64)) for f, r in flip_rows.items()
        },
        slices=infos,
        volume_ids=np.concatenate(volume_ids) if volume_ids else np.zeros(0, np.int64),
        volumes=volume_names,
        series_uids=volume_uids,
        volume_warnings=warnings,
        thumbnails=(
            np.concatenate(thumbs)
            if thumbs
            else np.zeros((0, thumbnail_size, thumbnail_size), np.uint8)
        ),
        thumbnail_mm=np.concatenate(thumb_mm) if thumb_mm else np.zeros(0),
        skipped=skipped,
    )
