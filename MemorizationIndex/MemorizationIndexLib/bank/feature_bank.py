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
from ..calibration.null import NullModel
from ..encoding.encoder import Encoder
from ..encoding.features import FeatureSet
from ..errors import BankError
from ..job import Step
from ..scans import SliceInfo
from ..search.index import QuerySlices, SliceIndex, StageResult
from ..search.verification import VERIFIER_VERSION
from ..search.whitening import Whitener
from .settings import BankSettings

BANK_FORMAT = "memorization-index-bank"
BANK_FORMAT_VERSION = 1


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
    def trained_encoder(self) -> bool:
        return bool(self.encoder_info.get("trained"))

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
        return self.index.search(QuerySlices.of(queries, self.settings.flips), progress)

    def statistic(self, result: StageResult) -> np.ndarray:
        """The per-slice statistic that MI and ONI calibrate."""
        return self.combination.statistic(result)

    def load_encoder(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int = 32,
    ) -> Encoder:
        """The encoder the bank was built with: the same checkpoint (checked by SHA-256;
        by default the file the bank recorded) or the same untrained network."""
        recorded = self.encoder_info.get("checkpoint")
        if self.trained_encoder and checkpoint is None:
            if recorded and os.path.isfile(recorded):
                checkpoint = recorded
            else:
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
                    "encoder": self.encoder_info,
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
                        for layer, w in zip(layers, self.index.whiteners_, strict=True)
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
        """A bank saved by `save` (BankError when the folder is not one, or damaged)."""
        path = Path(path)
        manifest = _read_manifest(path)
        settings = BankSettings.from_dict(manifest["settings"])

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
        volume_ids = arr("slice_volume_ids.npy")
        n = len(volume_ids)
        slice_indices = arr("slice_indices.npy")
        if any(len(v) != n for v in vectors) or len(slice_indices) != n:
            raise BankError(f"Bank {path} is inconsistent: its arrays disagree on the slice count.")
        index = settings.slice_index().set_fitted(
            whiteners, vectors, volume_ids, arr("thumbnails.npy")
        )
        null_arrays = arr("null.npz")
        stages = dict(arr("null_stages.npz")) if settings.verify else {}
        return cls(
            settings=settings,
            encoder_info=manifest["encoder"],
            index=index,
            slice_indices=slice_indices,
            positions=arr("slice_positions.npy"),
            volumes=[v["path"] for v in manifest["volumes"]],
            series_uids=[v.get("series_uid", "") for v in manifest["volumes"]],
            thumbnail_mm=arr("thumbnail_mm.npy"),
            null=NullModel.from_arrays({k: null_arrays[k] for k in null_arrays.files}),
            combination=Combination.from_arrays(settings.verify, stages),
            manifest=manifest,
            path=str(path),
        )

    def check_compatible(self, settings: BankSettings | None = None, encoder: dict | None = None):
        """Refuse to score with an encoder or settings other than the bank's (BankError)."""
        problems = []
        if encoder is not None:
            for key in ("name", "checkpoint_sha256", "image_size", "layers", "config"):
                mine, theirs = self.encoder_info.get(key), encoder.get(key)
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


def _read_manifest(path: Path) -> dict:
    """The manifest of a bank folder, checked for format, version and verifier version."""
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
    built_with = manifest.get("verifier_version", 1)
    if manifest.get("settings", {}).get("verify", True) and built_with != VERIFIER_VERSION:
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
