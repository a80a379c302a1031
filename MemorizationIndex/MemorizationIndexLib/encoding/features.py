"""Encoder features of every kept slice of a set of scans, batched, with reading prefetched.

Each volume is encoded on its own into an `EncodedVolume` (its features, thumbnails,
provenance and compact copy): the unit that a resumable build keeps on disk
(`encode_resumable`, pieces.py) and that Ray workers send back (distributed.py), merged
in input order into one FeatureSet.

The encoder is the slow part; reading and preprocessing run ahead of it (`prepare_volume`:
read, canonicalise, min-max, filter, resize to the encoder grid, thumbnails, compact copy),
in a reader thread or, with `read_workers`, in that many worker processes, so that the
encoder only runs the network. On CUDA the prepared slices are pinned by the reader and
copied without blocking; the features stay on the device until the volume is done.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import InputError, SettingsError
from ..geometry import FLIPS
from ..job import Job, Step
from ..pieces import (
    Piece,
    ResumeFolder,
    Runner,
    pack,
    run_in_pieces,
    run_key,
    skipped_from_json,
    skipped_to_json,
    sources_content,
    unpack,
)
from ..scans import (
    ReadOptions,
    ScanSource,
    ScanVolume,
    SkippedInput,
    SliceInfo,
    read_scan_reporting,
)
from ..scans.sources import VOLUME, slice_infos
from ..search.volume_stage import CompactVolume
from .encoder import Encoder, to_numpy
from .preprocessing import PreprocessSpec, prepare_canvas, thumbnails


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
    # per volume, for stage 3 (search/volume_stage.py); empty when not asked for, None for
    # a 2D image (stage 3 registers volumes)
    compact_volumes: list[CompactVolume | None] = field(default_factory=list)
    # per volume: VOLUME, IMAGE or IMAGE_PX (scans/sources.py); empty means all volumes
    volume_kinds: list[str] = field(default_factory=list)

    def kind_of(self, vid: int) -> str:
        return self.volume_kinds[vid] if self.volume_kinds else VOLUME

    def is_2d(self, vid: int) -> bool:
        return self.kind_of(vid) != VOLUME

    def slices_of_2d(self) -> np.ndarray:
        """[N] bool: which slices are 2D images (they have no volume for stage 3)."""
        flat = np.array([self.is_2d(v) for v in range(len(self.volumes))], bool)
        return flat[self.volume_ids] if len(flat) else np.zeros(len(self), bool)

    @property
    def has_2d(self) -> bool:
        return any(k != VOLUME for k in self.volume_kinds)

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


@dataclass(frozen=True)
class EncodingPlan:
    """What is kept of each volume besides its own view's features; the same for every
    volume of a run, so a volume's piece depends only on the volume and the plan."""

    extra_flips: tuple[str, ...] = ()
    flip_rows_per_volume: int | None = None  # rows encoded through the extra flips
    thumbnail_size: int = 64
    volume_grid_mm: float | None = None  # keep a compact copy on this grid (stage 3)
    # Only every n-th input (by its index) is seen through the extra flips: with more inputs
    # than the budget (100,000 2D images, each one slice) one row each would blow it.
    flip_every: int = 1

    def flips_input(self, index: int) -> bool:
        """Whether input number `index` of the run is also encoded through the flips."""
        return index % self.flip_every == 0

    @classmethod
    def of(
        cls,
        n_sources: int,
        flips: tuple[str, ...] = ("none",),
        flip_budget: int | None = None,
        thumbnail_size: int = 64,
        volume_grid_mm: float | None = None,
    ) -> EncodingPlan:
        """flip_budget limits the flipped views to about that many slices in all, spread
        evenly over the n_sources volumes and their slices."""
        for flip in flips:
            if flip not in FLIPS:
                raise SettingsError(f"Unknown flip {flip!r}; choose from {', '.join(FLIPS)}.")
        per_volume, every = None, 1
        if flip_budget is not None and n_sources:
            per_volume = max(1, math.ceil(flip_budget / n_sources))
            every = max(1, n_sources // max(flip_budget, 1))
        extra = tuple(f for f in flips if f != "none")
        return cls(extra, per_volume, thumbnail_size, volume_grid_mm, every)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncodedVolume:
    """One volume's share of a FeatureSet: provenance, thumbnails, compact copy, features."""

    source: str
    series_uid: str
    series_name: str
    warnings: list[str]
    slice_indices: np.ndarray  # int64 [n]
    positions: np.ndarray  # float64 [n, 3]
    thumbnails: np.ndarray  # uint8 [n, size, size]
    thumbnail_mm: np.ndarray  # [n]
    flip_rows: np.ndarray  # rows of this volume also encoded through the extra flips
    compact: CompactVolume | None = None
    kind: str = VOLUME  # or IMAGE, IMAGE_PX: a 2D image (scans/sources.py)
    features: list[np.ndarray] = field(default_factory=list)  # per layer [n, D]
    flip_features: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.slice_indices)


class _Collector:
    """The per-volume pieces of a FeatureSet, concatenated at the end."""

    def __init__(self, n_layers: int, plan: EncodingPlan):
        self.per_layer: list[list[np.ndarray]] = [[] for _ in range(n_layers)]
        self.flip_parts = {f: [[] for _ in range(n_layers)] for f in plan.extra_flips}
        self.flip_rows: dict[str, list[np.ndarray]] = {f: [] for f in plan.extra_flips}
        self.infos: list[SliceInfo] = []
        self.volume_ids: list[np.ndarray] = []
        self.volumes: list[EncodedVolume] = []
        self.thumbnail_size = plan.thumbnail_size
        self.keep_compact = plan.volume_grid_mm is not None
        self.offset = 0

    def add(self, volume: EncodedVolume) -> None:
        for store, feats in zip(self.per_layer, volume.features, strict=True):
            store.append(feats)
        for flip, feats in volume.flip_features.items():
            for store, f in zip(self.flip_parts[flip], feats, strict=True):
                store.append(f)
            self.flip_rows[flip].append(volume.flip_rows + self.offset)
        self.infos.extend(
            slice_infos(volume.source, volume.series_uid, volume.slice_indices, volume.positions)
        )
        self.volume_ids.append(np.full(len(volume), len(self.volumes), dtype=np.int64))
        self.volumes.append(volume)
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
        volumes = self.volumes
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
            volumes=[v.source for v in volumes],
            series_uids=[v.series_uid for v in volumes],
            series_names=[v.series_name for v in volumes],
            volume_warnings=[list(v.warnings) for v in volumes],
            thumbnails=(
                np.concatenate([v.thumbnails for v in volumes])
                if volumes
                else np.zeros((0, size, size), np.uint8)
            ),
            thumbnail_mm=(
                np.concatenate([v.thumbnail_mm for v in volumes]) if volumes else np.zeros(0)
            ),
            skipped=skipped,
            compact_volumes=[v.compact for v in volumes] if self.keep_compact else [],
            volume_kinds=[v.kind for v in volumes],
        )


def merge_encoded(pieces: list[Piece], layers: tuple[int, ...], plan: EncodingPlan) -> FeatureSet:
    """One FeatureSet from the volumes' pieces in input order, skipped inputs included."""
    collected = _Collector(len(layers), plan)
    skipped: list[SkippedInput] = []
    for piece in pieces:
        skipped.extend(piece.skipped)
        if piece.result is not None:
            collected.add(piece.result)
    return collected.feature_set(layers, skipped)


# ---- one volume: prepared off the main thread, then encoded ---------------------------------
@dataclass
class PreparedVolume:
    """A volume read and preprocessed: its piece without features (or a skipped input) and
    the slices of each view on the encoder grid, [n, S, S] in [0, 1] ("none" first)."""

    piece: Piece
    canvases: dict[str, torch.Tensor]


def prepare_volume(
    source: ScanSource | ScanVolume,
    read_options: ReadOptions,
    plan: EncodingPlan,
    spec: PreprocessSpec,
    pin: bool = False,
    index: int = 0,
) -> PreparedVolume:
    """Read and preprocess one volume (all but the network); pin: page-locked canvases, for
    copies to a CUDA device that do not block; index: the input's number in the run (which
    inputs are seen flipped, EncodingPlan.flips_input). An unusable input is skipped."""
    if isinstance(source, ScanVolume):
        volume, dropped = source, []
    else:
        try:
            volume, dropped = read_scan_reporting(source, read_options)
        except InputError as exc:
            return PreparedVolume(Piece(None, [SkippedInput(source.path, str(exc))]), {})
    rows = _evenly_spaced(len(volume), plan.flip_rows_per_volume)
    if not plan.flips_input(index):
        rows = rows[:0]
    bounds, spacing = volume.intensity_bounds, volume.pixel_spacing
    canvases = {"none": prepare_canvas(volume.slices, spacing, spec, "none", bounds)}
    for flip in plan.extra_flips if len(rows) else ():
        canvases[flip] = prepare_canvas(volume.slices[rows], spacing, spec, flip, bounds)
    if pin:
        canvases = pinned(canvases)
    size = plan.thumbnail_size
    extent_mm = max(volume.slices.shape[1] * spacing[0], volume.slices.shape[2] * spacing[1])
    encoded = EncodedVolume(
        source=volume.source,
        series_uid=volume.series_uid,
        series_name=volume.series_name,
        warnings=list(volume.warnings),
        slice_indices=np.asarray(volume.slice_indices, np.int64),
        positions=np.asarray(volume.positions, np.float64).reshape(-1, 3),
        thumbnails=thumbnails(volume.slices, spacing, size, bounds),
        thumbnail_mm=np.full(len(volume), extent_mm / size),
        flip_rows=rows,
        compact=(
            CompactVolume.of(volume.image, bounds, plan.volume_grid_mm)
            if plan.volume_grid_mm is not None and not volume.is_2d
            else None
        ),
        kind=volume.kind,
    )
    return PreparedVolume(Piece(encoded, list(dropped)), canvases)


def encode_prepared(encoder: Encoder, prepared: PreparedVolume, step: Step) -> Piece:
    """The network over each view of a prepared volume (each view is 1/views of the step);
    the features leave the encoder's device once the whole volume is encoded."""
    encoded = prepared.piece.result
    if encoded is None:
        return prepared.piece
    views = list(prepared.canvases.items())
    on_device = {}
    for k, (view, canvas) in enumerate(views):
        step.job.check()
        part = step.part(k / len(views), 1.0 / len(views))
        on_device[view] = encoder.encode_canvas(canvas, progress=part)
    encoded.features = to_numpy(on_device.pop("none"))
    encoded.flip_features = {view: to_numpy(f) for view, f in on_device.items()}
    return prepared.piece


def encode_volume(
    source, encoder: Encoder, read_options: ReadOptions, plan: EncodingPlan, index: int = 0
):
    """One volume's piece, read, prepared and encoded here (a Ray worker's unit of work)."""
    prepared = prepare_volume(source, read_options, plan, encoder.spec, pins(encoder), index)
    return encode_prepared(encoder, prepared, Job().step(None, 1))


def pinned(canvases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Page-locked copies, which a CUDA device reads without blocking the host."""
    return {view: c.pin_memory() for view, c in canvases.items()}


def pins(encoder: Encoder) -> bool:
    """Whether prepared slices should be page-locked: only for a CUDA encoder."""
    return encoder.device.type == "cuda"


# ---- many volumes: reading ahead of the encoder ---------------------------------------------
class _Reader:
    """Prepares volumes ahead of the encoder, in input order: in one reader thread, or
    (workers > 0) in that many worker processes, whose results a thread pins."""

    def __init__(self, sources, read_options, plan, spec, pin: bool, workers: int = 0):
        self.args = (read_options, plan, spec)
        self.sources = sources
        self.pin = pin
        self.workers = int(workers)

    def iterate(self, indices) -> Iterator[tuple[int, PreparedVolume]]:
        ahead = max(1, self.workers)
        threads = ThreadPoolExecutor(max_workers=ahead)
        processes = None
        if self.workers > 0:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded torch
            processes = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_one_torch_thread
            )

        def task(i: int) -> PreparedVolume:
            if processes is None:
                return prepare_volume(self.sources[i], *self.args, pin=self.pin, index=i)
            prepared = processes.submit(
                prepare_volume, self.sources[i], *self.args, False, i
            ).result()
            if self.pin:
                prepared.canvases = pinned(prepared.canvases)
            return prepared

        todo = list(indices)[::-1]
        queued: list[tuple[int, Future]] = []

        def top_up() -> None:
            while todo and len(queued) < ahead:
                i = todo.pop()
                queued.append((i, threads.submit(task, i)))

        try:
            top_up()
            while queued:
                i, future = queued.pop(0)
                prepared = future.result()
                top_up()  # read on while this one is encoded
                yield i, prepared
        finally:
            threads.shutdown(wait=True, cancel_futures=True)
            if processes is not None:
                processes.shutdown(wait=True, cancel_futures=True)


def _one_torch_thread() -> None:
    """A reader process preprocesses one volume at a time: one thread, no oversubscription."""
    torch.set_num_threads(1)


def default_read_workers(encoder: Encoder, n_volumes: int) -> int:
    """Worker processes for reading and preprocessing: none on the CPU, where the encoder
    keeps every core busy and a reader thread keeps up (measured, see the README); on a
    GPU, up to 4, leaving a core to the process that feeds the device, and none for a
    single volume (score encodes one at a time: starting processes costs seconds)."""
    if encoder.device.type != "cuda" or n_volumes < 2:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1, n_volumes - 1))


def local_runner(
    sources,
    encoder: Encoder,
    read_options: ReadOptions,
    plan: EncodingPlan,
    step: Step,
    read_workers: int | None = None,
) -> Runner:
    """A pieces.py Runner that encodes in this process, reading ahead (see _Reader);
    progress is the step's, a fraction of a volume at a time."""
    if read_workers is None:
        read_workers = default_read_workers(encoder, len(sources))
    reader = _Reader(sources, read_options, plan, encoder.spec, pins(encoder), read_workers)

    def run(pending: list[int]) -> Iterator[tuple[int, Piece]]:
        done = len(sources) - len(pending)
        for group in _batches(reader.iterate(pending), encoder.batch_size):
            if len(group) == 1:
                i, prepared = group[0]
                yield i, encode_prepared(encoder, prepared, step.part(done, 1.0))
            else:
                step.job.check()
                encode_together(encoder, [prepared for _, prepared in group])
                for k, (i, prepared) in enumerate(group):
                    step.update(done + k + 1)
                    yield i, prepared.piece
            done += len(group)

    return run


def _batches(prepared: Iterator[tuple[int, PreparedVolume]], batch_size: int):
    """Consecutive prepared inputs grouped until their slices fill one encoder batch: a
    2D image is one slice, and one network call per image would starve the encoder."""
    group: list[tuple[int, PreparedVolume]] = []
    filled = 0
    for item in prepared:
        n = _slices_of(item[1])
        if group and filled + n > batch_size:
            yield group
            group, filled = [], 0
        group.append(item)
        filled += n
    if group:
        yield group


def _slices_of(prepared: PreparedVolume) -> int:
    return 0 if prepared.piece.result is None else len(prepared.canvases["none"])


def encode_together(encoder: Encoder, group: list[PreparedVolume]) -> None:
    """encode_prepared for several small inputs at once: each view's canvases in one
    network call, the features handed back to each input's piece."""
    live = [p for p in group if p.piece.result is not None]
    views = list(dict.fromkeys(v for p in live for v in p.canvases))
    for view in views:
        owners = [p for p in live if view in p.canvases]
        features = to_numpy(encoder.encode_canvas(torch.cat([p.canvases[view] for p in owners])))
        bounds = np.cumsum([len(p.canvases[view]) for p in owners])[:-1]
        parts = [np.split(f, bounds) for f in features]  # per layer, per owner
        for k, p in enumerate(owners):
            mine = [layer[k] for layer in parts]
            if view == "none":
                p.piece.result.features = mine
            else:
                p.piece.result.flip_features[view] = mine


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
    read_workers: int | None = None,
) -> FeatureSet:
    """Read, preprocess and encode every source; unusable ones are skipped and reported.

    flip_budget limits the flipped views to about that many slices in all, spread evenly
    over volumes and slices (the calibration null needs flipped views only of a sample).
    Progress counts volumes (fractions within one); Cancel is honoured per encoder batch.
    volume_grid_mm: also keep a compact copy of each volume on that grid (stage 3).
    read_workers: processes that read and preprocess (default: default_read_workers).
    """
    plan = EncodingPlan.of(len(sources), flips, flip_budget, thumbnail_size, volume_grid_mm)
    step = (job or Job()).step(stage, len(sources))
    run = local_runner(sources, encoder, read_options, plan, step, read_workers)
    pieces: list[Piece] = []
    for _, piece in run(list(range(len(sources)))):
        pieces.append(piece)
        step.update(len(pieces))
    return merge_encoded(pieces, encoder.layers, plan)


# ---- a resumable encoding (build-bank --out DIR, run again) ---------------------------------
class EncodedFiles:
    """The PieceCodec (pieces.py) of encoded volumes."""

    @staticmethod
    def to_parts(piece: Piece) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"skipped": skipped_to_json(piece.skipped), "volume": None}
        v: EncodedVolume | None = piece.result
        if v is None:
            return meta, {}
        meta["volume"] = {
            "source": v.source,
            "series_uid": v.series_uid,
            "series_name": v.series_name,
            "warnings": list(v.warnings),
            "layers": len(v.features),
            "flips": list(v.flip_features),
            "compact": v.compact is not None,
            "kind": v.kind,
        }
        arrays = {name: getattr(v, name) for name in _VOLUME_ARRAYS}
        for layer, f in enumerate(v.features):
            arrays[f"features.{layer}"] = f
        for flip, feats in v.flip_features.items():
            for layer, f in enumerate(feats):
                arrays[f"flip.{flip}.{layer}"] = f
        if v.compact is not None:
            for name in _COMPACT_ARRAYS:
                arrays[f"compact.{name}"] = getattr(v.compact, name)
        return meta, arrays

    @staticmethod
    def from_parts(meta: dict, arrays: dict[str, np.ndarray]) -> Piece:
        skipped = skipped_from_json(meta["skipped"])
        m = meta["volume"]
        if m is None:
            return Piece(None, skipped)
        n_layers = m["layers"]
        compact = None
        if m["compact"]:
            compact = CompactVolume(**{n: arrays[f"compact.{n}"] for n in _COMPACT_ARRAYS})
        volume = EncodedVolume(
            source=m["source"],
            series_uid=m["series_uid"],
            series_name=m["series_name"],
            warnings=list(m["warnings"]),
            compact=compact,
            kind=m.get("kind", VOLUME),
            features=[arrays[f"features.{k}"] for k in range(n_layers)],
            flip_features={
                f: [arrays[f"flip.{f}.{k}"] for k in range(n_layers)] for f in m["flips"]
            },
            **{name: arrays[name] for name in _VOLUME_ARRAYS},
        )
        return Piece(volume, skipped)


def prepared_to_bytes(prepared: PreparedVolume) -> bytes:
    """A prepared volume as one byte string (Ray Data's read-and-preprocess stage sends it
    to the encoder actors): its piece as EncodedFiles stores it, and its canvases."""
    meta, arrays = EncodedFiles.to_parts(prepared.piece)
    meta["views"] = list(prepared.canvases)
    arrays.update({f"canvas.{v}": c.numpy() for v, c in prepared.canvases.items()})
    return pack(meta, arrays)


def prepared_from_bytes(data: bytes, pin: bool = False) -> PreparedVolume:
    meta, arrays = unpack(data)
    canvases = {v: torch.from_numpy(arrays.pop(f"canvas.{v}")) for v in meta["views"]}
    if pin:
        canvases = pinned(canvases)
    return PreparedVolume(EncodedFiles.from_parts(meta, arrays), canvases)


_VOLUME_ARRAYS = ("slice_indices", "positions", "thumbnails", "thumbnail_mm", "flip_rows")
_COMPACT_ARRAYS = ("voxels", "origin", "spacing", "direction")
ENCODING_STAGE = "Encoding training slices"


def encoding_key(sources, encoder_info: dict, spec: PreprocessSpec, read_options, plan, settings):
    """Hash of everything an encoded volume depends on (pieces.run_key)."""
    return run_key(
        {
            "sources": sources_content(sources),
            "encoder": encoder_info,
            "preprocessing": spec.to_dict(),
            "read_options": asdict(read_options),
            "plan": plan.to_dict(),
            "settings": settings,
        }
    )


def encode_resumable(
    sources: list[ScanSource],
    encoder: Encoder,
    read_options: ReadOptions,
    plan: EncodingPlan,
    out: str | os.PathLike,
    job: Job | None = None,
    runner: Runner | None = None,
    run_settings: dict | None = None,
    stage: str = ENCODING_STAGE,
) -> tuple[FeatureSet, ResumeFolder]:
    """extract_features with each finished volume kept beside `out` (pieces.py): a killed
    run started again with the same inputs and settings encodes only the volumes it had
    not finished. runner: where volumes are encoded (default: here, local_runner; Ray:
    distributed.py); run_settings: anything else the features depend on (device, batch
    size; the runner's kind). Returns the FeatureSet and the resume folder (remove it once
    the output is written)."""
    job = job or Job()
    settings = {"device": str(encoder.device), "batch_size": encoder.batch_size}
    settings.update(run_settings or {})
    info = encoder.info.to_dict()
    key = encoding_key(sources, info, encoder.spec, read_options, plan, settings)
    folder = ResumeFolder(out, key, EncodedFiles())
    if runner is None:
        step = job.step(stage, len(sources), announce=False)
        runner = local_runner(sources, encoder, read_options, plan, step)
    pieces = run_in_pieces(folder, len(sources), runner, job, stage)
    return merge_encoded(pieces, encoder.layers, plan), folder
