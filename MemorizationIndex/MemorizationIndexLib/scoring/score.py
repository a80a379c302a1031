"""Score synthetic slices against a bank: per slice, per volume, and for the whole set.

Slice: the best training slice over the bank's query flips, its similarity, MI (calibrated
tail probability of the held-out null), ONI, and the evidence (per-layer cosines, margin
to the best other training volume, cross-layer agreement, top-k matches).
Volume: a copy shows as many slices matching one training volume in order. Its MI is
1 - the Simes combination of its slice p-values, which stays valid for positively
dependent slices, so a volume is flagged at about rate alpha when it is genuinely novel.
"""

from __future__ import annotations

import os

import numpy as np

from ..bank.feature_bank import FeatureBank
from ..calibration.content import SliceContent
from ..encoding.encoder import Encoder
from ..encoding.features import FeatureSet, extract_features
from ..errors import InputError, SettingsError
from ..job import VERIFY_STAGE, Job
from ..scans import ReadOptions, ScanSource, ScanVolume, SkippedInput, find_scans_required
from ..scans.sources import IMAGE_PX
from ..search.index import StageResult
from ..search.volume_stage import VolumeMatch, VolumeStageResult, volume_stage
from .evidence import longest_ordered_run, simes_p_value
from .image_set import copies_per_subject, image_set_summary
from .internal_duplicates import add_internal_duplicates, not_searched
from .results import ScoreResult, SliceResult, VolumeResult

HIGH_QUANTILE = 0.9
TOP_MATCHES_LISTED = 3


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise SettingsError(f"--alpha must lie strictly between 0 and 1 (got {alpha}).")


def _calibrated(bank: FeatureBank, queries: FeatureSet, stages: StageResult, alpha: float):
    """(statistic, p, mi, oni, flagged, null bin) per slice, arrays [n]; each slice judged
    by the null of its content bin where the bank has them (calibration/content.py)."""
    planar = queries.slices_of_2d()
    statistic, p, oni, bins = bank.calibrate(stages, planar, SliceContent.of_features(queries))
    return statistic, p, 1.0 - p, oni, p <= alpha, bins


def _pose(bank: FeatureBank, queries: FeatureSet, stages: StageResult, i: int) -> dict:
    """The verified pose of slice i in millimetres: the shift is in the query's thumbnail
    pixels; the scale also carries the ratio of the two slices' pixel sizes."""
    al = stages.alignment
    if al is None:
        return {"flip": bank.settings.flips[int(stages.view[i])]}
    mm = float(queries.thumbnail_mm[i])
    mm_match = float(bank.thumbnail_mm[int(stages.match_rows[i])])
    return {
        "verified_ncc": float(al.ncc[i]),
        "verify_check": float(al.check[i]),
        "verify_settled": bool(al.settled[i]),
        "flip": al.flip[i],
        "angle_deg": float(al.angle[i]),
        "shift_mm": (float(al.shift[i, 0]) * mm, float(al.shift[i, 1]) * mm),
        "scale": (
            float(al.scale[i, 0]) * mm / mm_match,
            float(al.scale[i, 1]) * mm / mm_match,
        ),
    }


def volume_stage_of(bank: FeatureBank, queries: FeatureSet, stages: StageResult, job: Job):
    """Stage 3 of the synthetic slices against the bank (None when the bank has none);
    the scoring side of build.held_out_volume_stage."""
    if bank.compact_volumes is None:
        return None
    # 2D images have no volume to register: stage 3 runs on the slices of volumes only.
    solid = ~queries.slices_of_2d()
    if not solid.any():
        return None
    if len(queries.compact_volumes) != len(queries.volumes):
        raise SettingsError(
            "This bank verifies whole volumes (stage 3): encode the synthetic scans with "
            f"extract_features(..., volume_grid_mm={bank.settings.volume_grid_mm})."
        )
    rows = np.flatnonzero(solid)
    matched = stages.match_rows[rows]
    result = volume_stage(
        query_volumes={v: c for v, c in enumerate(queries.compact_volumes) if c is not None},
        training_volume=bank.compact_volumes.__getitem__,
        query_vids=queries.volume_ids[rows],
        positions=queries.positions()[rows],
        thumbnail_mm=queries.thumbnail_mm[rows],
        matched_vids=bank.volume_ids[matched],
        matched_positions=bank.positions[matched],
        stage_scores=stages.stage_score[rows],
        axis=bank.settings.axis,
        size=bank.settings.thumbnail_size,
        candidates=bank.settings.volume_candidates,
        check=job.check,
        matched_flips=stages.flips(bank.settings.flips)[rows],
    )
    scores = np.full(len(queries), np.nan)  # none for the slices of 2D images
    scores[rows] = result.scores
    result.scores = scores
    return result


def _volume_pose(bank: FeatureBank, match: VolumeMatch | None) -> dict:
    """The volume stage's columns of a volume: its training volume, pose and similarity."""
    if match is None:
        return {}
    return {
        "volume_match": bank.volumes[match.training_volume],
        "aligned_similarity": match.similarity,
        "pose": match.pose,
    }


def _top_matches(bank: FeatureBank, rows: np.ndarray, similarities: np.ndarray) -> str:
    return ";".join(
        f"{bank.slice_info(int(r)).volume}#{bank.slice_info(int(r)).slice_index}={float(s):.4f}"
        for r, s in zip(rows[:TOP_MATCHES_LISTED], similarities[:TOP_MATCHES_LISTED], strict=True)
    )


def _name_of(names: list[str], vid: int) -> str:
    return names[vid] if vid < len(names) else ""


def _slice_results(bank, queries, stages, calibrated) -> list[SliceResult]:
    statistic, p, mi, oni, flagged, bins = calibrated
    best = stages.stage1
    out = []
    for i, info in enumerate(queries.slices):
        match = bank.slice_info(int(stages.match_rows[i]))
        out.append(
            SliceResult(
                volume=info.volume,
                series_uid=info.series_uid,
                slice_index=info.slice_index,
                position=info.position,
                similarity=float(best.similarity[i]),
                mi=float(mi[i]),
                oni=float(oni[i]),
                p_value=float(p[i]),
                flagged=bool(flagged[i]),
                match_volume=match.volume,
                match_series_uid=match.series_uid,
                series_name=_name_of(queries.series_names, int(queries.volume_ids[i])),
                match_series_name=_name_of(
                    bank.series_names, int(bank.volume_ids[int(stages.match_rows[i])])
                ),
                match_slice=match.slice_index,
                match_position=match.position,
                statistic=float(statistic[i]),
                view=bank.settings.flips[int(stages.view[i])],
                margin=float(best.margin[i]),
                agreement=float(best.agreement[i]),
                layer_similarity={
                    layer: float(best.layer_cosine[i, j])
                    for j, layer in enumerate(bank.settings.layers)
                },
                top_matches=_top_matches(bank, best.topk[i], best.topk_similarity[i]),
                volume_ncc=_finite_or_none(stages.volume_ncc, i),
                null_bin=str(bins[i]),
                units=_units(
                    queries.kind_of(int(queries.volume_ids[i])),
                    bank.kind_of(int(bank.volume_ids[int(stages.match_rows[i])])),
                ),
                **_pose(bank, queries, stages, i),
            )
        )
    return out


def _volume_result(
    bank, queries, stages, calibrated, vid: int, alpha: float, stage3: VolumeStageResult | None
) -> VolumeResult:
    _, p, mi, oni, flagged, _ = calibrated
    rows = np.flatnonzero(queries.volume_ids == vid)
    # The volume's match, run and flip follow its slices' reported (verified) matches.
    matched = stages.match_rows[rows]
    p_v = p[rows]
    vol_p = simes_p_value(p_v)
    weights = np.zeros(len(bank.volumes))
    np.add.at(weights, bank.volume_ids[matched], -np.log10(np.maximum(p_v, 1e-300)))
    match_vid = int(np.argmax(weights))
    to_match = bank.volume_ids[matched] == match_vid
    run = longest_ordered_run(flagged[rows] & to_match, matched, bank.volume_ids)
    fl = flagged[rows]
    flips = [_pose(bank, queries, stages, int(i))["flip"] for i in rows[fl]]
    return VolumeResult(
        volume=queries.volumes[vid],
        series_uid=queries.series_uids[vid],
        series_name=_name_of(queries.series_names, vid),
        n_slices=int(len(rows)),
        mi=1.0 - vol_p,
        p_value=vol_p,
        oni=float(np.mean(oni[rows])) if len(rows) else 0.0,
        mi_max=float(mi[rows].max()),
        mi_q90=float(np.quantile(mi[rows], HIGH_QUANTILE)),
        fraction_flagged=float(fl.mean()),
        match_volume=bank.volumes[match_vid],
        match_fraction=float(to_match.mean()),
        longest_run=int(run),
        flip=max(set(flips), key=flips.count) if flips else "",
        flagged=bool(vol_p <= alpha),
        warnings=" | ".join(queries.volume_warnings[vid]),
        kind=queries.kind_of(vid),
        **_volume_pose(bank, stage3.matches.get(vid) if stage3 is not None else None),
    )


def score_features(
    bank: FeatureBank,
    queries: FeatureSet,
    alpha: float = 0.01,
    skipped: list[SkippedInput] | None = None,
    job: Job | None = None,
    internal_duplicates: bool | None = True,
) -> ScoreResult:
    """The scoring core on already-encoded slices (the benchmark calls it directly).

    alpha: flag a slice (and a volume) when its p-value <= alpha, i.e. MI >= 1 - alpha.
    internal_duplicates: also search the set for inputs that copy each other
    (internal_duplicates.py); None keeps the slice features for a later search of a
    larger set (a resumable run's pieces) and searches nothing.
    """
    check_alpha(alpha)
    job = job or Job()
    # Stage 2 reports per verified slice (it is the slow part), from the first one on.
    stages = bank.search(queries, job.step(VERIFY_STAGE, len(queries), announce=False))
    stage3 = volume_stage_of(bank, queries, stages, job)
    if stage3 is not None:
        stages.volume_ncc = stage3.scores
    calibrated = _calibrated(bank, queries, stages, alpha)
    slices = _slice_results(bank, queries, stages, calibrated)
    volumes = [
        _volume_result(bank, queries, stages, calibrated, vid, alpha, stage3)
        for vid in range(len(queries.volumes))
    ]
    summary = dataset_summary(bank, slices, volumes, alpha, calibrated[3])
    if bank.compact_volumes is not None and queries.has_2d:
        summary["volume_stage_skipped"] = (
            "Stage 3 registers volumes: the 2D images were judged by stages 1 and 2, against "
            "the null of those stages on the same held-out training slices."
        )
    skipped = list(skipped or []) + list(queries.skipped)
    summary["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    if stage3 is not None:
        summary["volume_stage"] = stage3.summary()
    summary["warnings"] = [
        {"volume": volume, **({"series_uid": uid} if uid else {}), "warning": warning}
        for volume, uid, warnings in zip(
            queries.volumes, queries.series_uids, queries.volume_warnings, strict=True
        )
        for warning in warnings
    ]
    result = ScoreResult(
        slices=slices,
        volumes=volumes,
        summary=summary,
        skipped=skipped,
        query_thumbnails=queries.thumbnails,
        match_rows=stages.match_rows,
        alpha=alpha,
        alignment=stages.alignment,
        query_features=np.concatenate(queries.features, axis=1).astype(np.float32, copy=False),
    )
    return with_internal_duplicates(bank, result, internal_duplicates, job)


def with_internal_duplicates(bank, result: ScoreResult, search: bool | None, job) -> ScoreResult:
    """The internal-duplicate search of a whole scored set, as `search` asks: True search,
    False record that it was turned off, None leave the features for a later search."""
    if search is None:
        return result
    if not search:
        return not_searched(result, "Turned off (--no-internal-duplicates).")
    return add_internal_duplicates(bank, result, job)


def dataset_summary(
    bank: FeatureBank,
    slice_rows: list[SliceResult],
    volume_rows: list[VolumeResult],
    alpha: float,
    oni: np.ndarray,
) -> dict:
    """summary.json without the skipped inputs: counts, shares, MI and ONI over the set."""
    n_slices = len(slice_rows)
    n_vol = len(volume_rows)
    slice_flag = np.array([r.flagged for r in slice_rows], bool)
    frac = float(slice_flag.mean()) if n_slices else 0.0
    mi = np.array([r.mi for r in slice_rows])
    groups = bank.manifest.get("subject_groups")
    images = image_set_summary(slice_rows, volume_rows, alpha, groups, bank.volumes)
    solid = [v for v in volume_rows if v.kind == "volume"]
    # What a data owner reads: how many flagged volumes copy each training subject.
    per_subject = copies_per_subject([v for v in solid if v.flagged], groups, bank.volumes)
    return {
        **({"images": images} if images else {}),
        **({"copies_per_training_subject": per_subject} if solid else {}),
        "alpha": alpha,
        "n_volumes": n_vol,
        "n_slices": n_slices,
        "n_volumes_flagged": int(sum(v.flagged for v in volume_rows)),
        "fraction_volumes_flagged": (
            float(np.mean([v.flagged for v in volume_rows])) if n_vol else 0.0
        ),
        "n_slices_flagged": int(slice_flag.sum()),
        "fraction_slices_flagged": frac,
        # Flagged share beyond the alpha expected of novel slices: a floor on the copy share.
        "estimated_copy_share": float(max(0.0, (frac - alpha) / (1.0 - alpha))),
        "mean_mi": float(mi.mean()) if n_slices else 0.0,
        "oni_quantiles": (
            {q: float(np.quantile(oni, float(q))) for q in ("0.05", "0.25", "0.5", "0.75", "0.95")}
            if n_slices
            else {}
        ),
        "encoder": bank.encoder_info,
        "untrained_encoder": not bank.trained_encoder,
        "calibration": bank.null.summary(),
        "calibration_by_content": (
            bank.content_null.summary() if bank.content_null is not None else None
        ),
        "flagged_by_null_bin": flagged_by_bin(slice_rows),
        "bank": {
            "path": bank.path,
            "n_slices": len(bank),
            "n_volumes": len(bank.volumes),
            "settings": bank.settings.to_dict(),
        },
    }


def flagged_by_bin(slice_rows: list[SliceResult]) -> dict[str, dict]:
    """Per content bin whose null judged them: slices, flagged slices and their share (a
    novel set is flagged at about alpha in every bin)."""
    out: dict[str, dict] = {}
    for r in slice_rows:
        entry = out.setdefault(r.null_bin, {"slices": 0, "flagged": 0})
        entry["slices"] += 1
        entry["flagged"] += int(r.flagged)
    for entry in out.values():
        entry["share"] = entry["flagged"] / entry["slices"]
    return dict(sorted(out.items()))


def encode_queries(
    bank: FeatureBank,
    sources: list[ScanSource | ScanVolume],
    encoder: Encoder,
    options: ReadOptions,
    job: Job | None = None,
) -> FeatureSet:
    """The synthetic slices as the bank's stages need them: its query flips and thumbnail
    size, and each volume's compact copy when the bank has the volume stage."""
    return extract_features(
        sources,
        encoder,
        options,
        flips=bank.settings.flips,
        thumbnail_size=bank.settings.thumbnail_size,
        job=job,
        stage="Scoring synthetic slices",
        volume_grid_mm=bank.settings.volume_grid_mm if bank.settings.volume_stage else None,
    )


def score(
    bank: FeatureBank,
    inputs: str | os.PathLike | list[ScanSource | ScanVolume],
    encoder: Encoder | None = None,
    alpha: float = 0.01,
    stride: int | None = None,
    job: Job | None = None,
    internal_duplicates: bool = True,
) -> ScoreResult:
    """Score a folder (or a file, or in-memory volumes) of synthetic scans against a bank.

    encoder: from bank.load_encoder(checkpoint, device, batch_size) (default: the bank's
    own, on the best device); stride: score every n-th foreground slice; job: progress
    and Cancel; internal_duplicates: also look for inputs that copy each other.
    """
    check_alpha(alpha)
    options = ReadOptions(  # validates stride (0 is an error, not 1) before any work
        axis=bank.settings.axis,
        stride=1 if stride is None else stride,
        min_foreground=bank.settings.min_foreground,
    )
    # The encoder first: a wrong checkpoint is reported before any folder is scanned.
    encoder = encoder or bank.load_encoder()
    skipped: list[SkippedInput] = []
    if isinstance(inputs, (str, os.PathLike)):
        sources, skipped = find_scans_required(inputs)
    else:
        sources = list(inputs)
    queries = encode_queries(bank, sources, encoder, options, job)
    if len(queries) == 0:
        raise InputError(
            "None of the synthetic scans could be used: "
            + "; ".join(f"{s.path}: {s.reason}" for s in (skipped + queries.skipped)[:5])
        )
    return score_features(bank, queries, alpha, skipped, job, internal_duplicates)


def _units(query_kind: str, match_kind: str) -> str:
    """ "px" when either image of a pair has no pixel size (a pose is then in pixels)."""
    return "px" if IMAGE_PX in (query_kind, match_kind) else "mm"


def _finite_or_none(values: np.ndarray | None, i: int) -> float | None:
    """values[i], or None where there is none (no stage 3, or the slice of a 2D image)."""
    if values is None or not np.isfinite(values[i]):
        return None
    return float(values[i])
