"""Build a bank: encode the training scans, calibrate by held-out volumes, fit the index.

The null is cross-fitted: each fold of training volumes is held out once, a SliceIndex is
fitted on the other volumes and searched with the held-out slices, exactly as scoring
searches the bank's own SliceIndex with synthetic slices.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import numpy as np

from ..atomic import check_output
from ..calibration.combination import Combination
from ..calibration.null import NullModel, volume_folds
from ..encoding.encoder import Encoder, EncoderInfo
from ..encoding.features import FeatureSet, extract_features
from ..errors import InputError, SettingsError
from ..job import Job
from ..scans import find_scans_required
from ..search.index import QuerySlices
from .feature_bank import FeatureBank
from .settings import BankSettings

CALIBRATION_STAGE = "Calibrating on held-out training volumes"


def cross_fitted_null(
    train: FeatureSet, settings: BankSettings, job: Job | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Stage scores of each held-out training slice against a SliceIndex of the others.

    Every volume is held out once (settings.calibration_folds folds, split by volume).
    With query flips the null uses the slices that were also encoded flipped.
    Returns (stage-1 similarities, stage-2 scores or None, rows of `train`).
    """
    job = job or Job()
    if settings.flips != ("none",):
        null_rows = train.flip_rows[settings.flips[1]]
    else:
        null_rows = np.arange(len(train))
    s1 = np.zeros(len(null_rows), np.float64)
    s2 = np.zeros(len(null_rows), np.float64) if settings.verify else None
    for held_out in volume_folds(len(train.volumes), settings.calibration_folds, settings.seed):
        job.check()
        held = np.isin(train.volume_ids, held_out)
        in_bank = ~held
        query_mask = held[null_rows]
        if not query_mask.any():
            continue
        index = settings.slice_index().fit(
            [f[in_bank] for f in train.features],
            train.volume_ids[in_bank],
            train.thumbnails[in_bank],
        )
        queries = QuerySlices.of(train, settings.flips, null_rows[query_mask])
        result = index.search(queries, job.step(None, len(queries)))
        s1[query_mask] = result.stage1.similarity
        if s2 is not None:
            s2[query_mask] = result.alignment.ncc
    return s1, s2, null_rows


def bank_from_features(
    train: FeatureSet,
    settings: BankSettings,
    info: EncoderInfo,
    job: Job | None = None,
    extra_manifest: dict | None = None,
) -> FeatureBank:
    """Calibrate by volume, fit the index on all training slices, and assemble the bank."""
    if len(train) == 0:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in train.skipped[:5])
        more = f" (and {len(train.skipped) - 5} more)" if len(train.skipped) > 5 else ""
        raise InputError(
            "No usable training slices were found, so no bank can be built"
            + (f". Every input was skipped: {reasons}{more}." if reasons else ".")
        )
    if len(train.volumes) < 2:
        raise InputError(
            f"Only {len(train.volumes)} usable training volume was found; at least 2 are "
            "needed to calibrate (whole volumes are held out)."
        )
    s1, s2, _ = cross_fitted_null(train, settings, job)
    combination = Combination.fit(s1, s2)
    null = NullModel.fit(combination.statistic_of(s1, s2))
    index = settings.slice_index().fit(train.features, train.volume_ids, train.thumbnails)
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
        encoder_info=info.to_dict(),
        index=index,
        slice_indices=np.array([s.slice_index for s in train.slices], np.int64),
        positions=np.array([s.position for s in train.slices], np.float64).reshape(-1, 3),
        volumes=list(train.volumes),
        series_uids=list(train.series_uids),
        thumbnail_mm=train.thumbnail_mm,
        null=null,
        combination=combination,
        manifest=manifest,
    )


def check_encoder(encoder: Encoder, settings: BankSettings) -> None:
    """SettingsError unless the encoder sees slices as the settings say (size, layers,
    preprocessing)."""
    if (
        encoder.info.image_size != settings.image_size
        or tuple(encoder.layers) != tuple(settings.layers)
        or encoder.spec != settings.preprocess_spec()
    ):
        raise SettingsError(
            f"encoder: it takes {encoder.info.image_size} px, layers {list(encoder.layers)} "
            f"and {encoder.spec}; the bank settings ask for {settings.image_size} px, layers "
            f"{list(settings.layers)} and {settings.preprocess_spec()}. Make it with "
            "settings.encoder(...)."
        )


def build_bank(
    train_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: BankSettings | None = None,
    encoder: Encoder | None = None,
    job: Job | None = None,
) -> FeatureBank:
    """Training folder -> bank saved in out_dir. Unusable files are skipped and listed in
    the manifest. encoder: from settings.encoder(checkpoint, ...) (default: untrained, for
    testing only); job: progress and Cancel."""
    settings = settings or BankSettings()
    job = job or Job()
    inputs = (train_dir, encoder.info.checkpoint if encoder is not None else None)
    check_output(out_dir, "bank", inputs)  # before hours of encoding, not after
    sources, skipped = find_scans_required(train_dir)
    encoder = encoder or settings.encoder()
    check_encoder(encoder, settings)
    train = extract_features(
        sources,
        encoder,
        settings.read_options(),
        flips=settings.flips,
        flip_budget=settings.null_max_slices,
        thumbnail_size=settings.thumbnail_size,
        job=job,
        stage="Encoding training slices",
    )
    train.skipped = list(skipped) + train.skipped
    job.report(CALIBRATION_STAGE, 0, 1)
    bank = bank_from_features(
        train, settings, encoder.info, job, {"training_folder": os.fspath(train_dir)}
    )
    job.report(CALIBRATION_STAGE, 1, 1)
    job.check()
    bank.save(out_dir, inputs)
    return bank
