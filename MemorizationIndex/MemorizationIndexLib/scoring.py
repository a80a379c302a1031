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
from dataclasses import dataclass

import numpy as np

from .bank import FeatureBank, encoder_for
from .errors import BankError, InputError, SettingsError
from .features import FeatureExtractor, FeatureSet, extract_features
from .progress import VERIFY_STAGE, CancelCallback, ProgressCallback, check_cancel, report
from .scans import ReadOptions, ScanSource, ScanVolume, SkippedInput, find_scans_required
from .verification import Alignments

HIGH_QUANTILE = 0.9


@dataclass
class ScoreResult:
    """Everything `score` reports; `slices` and `volumes` rows follow the CSV column contract."""

    slices: list[dict]
    volumes: list[dict]
    summary: dict
    skipped: list[SkippedInput]
    query_thumbnails: np.ndarray
    match_rows: np.ndarray
    alpha: float
    alignment: Alignments | None = None

    def flagged_volumes(self) -> list[dict]:
        return [v for v in self.volumes if v["flagged"]]


def simes_p_value(p_values: np.ndarray) -> float:
    """Simes (1986) combination: min_i n p_(i) / i; valid under positive dependence."""
    p = np.sort(np.asarray(p_values, dtype=np.float64))
    if len(p) == 0:
        return 1.0
    return float(min(1.0, np.min(len(p) * p / np.arange(1, len(p) + 1))))


def longest_ordered_run(flagged: np.ndarray, match_rows: np.ndarray, bank_vids: np.ndarray) -> int:
    """Longest stretch of consecutive flagged slices whose matches are consecutive bank slices
    of one training volume, in a consistent direction (a copied stack, possibly reversed)."""
    best = 0
    run = 0
    step = 0
    for i in range(len(flagged)):
        if not flagged[i]:
            run, step = 0, 0
            continue
        if run > 0:
            diff = int(match_rows[i]) - int(match_rows[i - 1])
            same_volume = bank_vids[match_rows[i]] == bank_vids[match_rows[i - 1]]
            if same_volume and abs(diff) == 1 and (step == 0 or diff == step):
                run += 1
                step = diff
            else:
                run, step = 1, 0
        else:
            run = 1
        best = max(best, run)
    return best


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise SettingsError(f"--alpha must lie strictly between 0 and 1 (got {alpha}).")


def score_features(
    bank: FeatureBank,
    queries: FeatureSet,
    alpha: float = 0.01,
    skipped=None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> ScoreResult:
    """The scoring core on already-extracted features (the benchmark calls it directly)."""
    check_alpha(alpha)
    settings = bank.settings

    def tick(done: int, total: int) -> None:
        check_cancel(cancel)
        report(progress, VERIFY_STAGE, done, total)

    stages = bank.match(queries, tick=tick)
    best = stages.stage1
    chosen = stages.view
    match_rows = stages.match
    statistic = bank.statistic(stages)
    p = bank.null.p_value(statistic)
    mi = 1.0 - p
    oni = bank.null.oni(statistic)
    flagged = p <= alpha
    flips = list(settings.flips)
    layers = settings.layers
    al = stages.alignment

    slice_rows = []
    for i, info in enumerate(queries.slices):
        match = bank.slice_info(int(match_rows[i]))
        row = {
            "volume": info.volume,
            "series_uid": info.series_uid,
            "slice_index": info.slice_index,
            "position_x": info.position[0],
            "position_y": info.position[1],
            "position_z": info.position[2],
            "similarity": float(best.similarity[i]),
            "mi": float(mi[i]),
            "oni": float(oni[i]),
            "p_value": float(p[i]),
            "flagged": bool(flagged[i]),
            "match_volume": match.volume,
            "match_series_uid": match.series_uid,
            "match_slice": match.slice_index,
            "match_position_x": match.position[0],
            "match_position_y": match.position[1],
            "match_position_z": match.position[2],
            "score": float(statistic[i]),
            "view": flips[int(chosen[i])],
        }
        if al is not None:
            # Thumbnail pixels -> millimetres: the shift is in the query's pixels; the scale
            # also carries the ratio of the two slices' pixel sizes.
            mm = float(queries.thumbnail_mm[i])
            mm_match = float(bank.thumbnail_mm[int(match_rows[i])])
            row.update(
                {
                    "verified_ncc": float(al.score[i]),
                    "transform": al.flip[i],
                    "angle_deg": float(al.angle[i]),
                    "shift_x_mm": float(al.shift[i, 0]) * mm,
                    "shift_y_mm": float(al.shift[i, 1]) * mm,
                    "scale_x": float(al.scale[i, 0]) * mm / mm_match,
                    "scale_y": float(al.scale[i, 1]) * mm / mm_match,
                }
            )
        else:
            row.update({"transform": flips[int(chosen[i])], "angle_deg": 0.0})
            row.update({"shift_x_mm": 0.0, "shift_y_mm": 0.0, "scale_x": 1.0, "scale_y": 1.0})
        row["margin"] = float(best.margin[i])
        row["agreement"] = float(best.agreement[i])
        for j, layer in enumerate(layers):
            row[f"layer{layer}_similarity"] = float(best.layer_cosine[i, j])
        row["top_matches"] = ";".join(
            f"{bank.slice_info(int(r)).volume}#{bank.slice_info(int(r)).slice_index}={float(s):.4f}"
            for r, s in zip(best.topk[i, :3], best.topk_similarity[i, :3], strict=True)
        )
        slice_rows.append(row)

    volume_rows = []
    for vid, name in enumerate(queries.volumes):
        rows = np.flatnonzero(queries.volume_ids == vid)
        p_v = p[rows]
        vol_p = simes_p_value(p_v)
        weights = np.zeros(len(bank.volumes))
        np.add.at(weights, bank.volume_ids[best.match[rows]], -np.log10(np.maximum(p_v, 1e-300)))
        match_vid = int(np.argmax(weights))
        to_match = bank.volume_ids[best.match[rows]] == match_vid
        run = longest_ordered_run(flagged[rows] & to_match, best.match[rows], bank.volume_ids)
        fl = flagged[rows]
        transforms = [flips[int(c)] for c in chosen[rows][fl]]
        volume_rows.append(
            {
                "volume": name,
                "series_uid": queries.series_uids[vid],
                "n_slices": int(len(rows)),
                "mi": 1.0 - vol_p,
                "p_value": vol_p,
                "oni": float(np.mean(oni[rows])) if len(rows) else 0.0,
                "mi_max": float(mi[rows].max()),
                "mi_q90": float(np.quantile(mi[rows], HIGH_QUANTILE)),
                "fraction_flagged": float(fl.mean()),
                "match_volume": bank.volumes[match_vid],
                "match_fraction": float(to_match.mean()),
                "longest_run": int(run),
                "transform": max(set(transforms), key=transforms.count) if transforms else "",
                "flagged": bool(vol_p <= alpha),
                "warnings": " | ".join(queries.volume_warnings[vid]),
            }
        )

    summary = dataset_summary(bank, slice_rows, volume_rows, alpha, oni)
    skipped = list(skipped or []) + list(queries.skipped)
    summary["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    summary["warnings"] = [
        {"volume": volume, "warning": warning}
        for volume, warnings in zip(queries.volumes, queries.volume_warnings, strict=True)
        for warning in warnings
    ]
    return ScoreResult(
        slices=slice_rows,
        volumes=volume_rows,
        summary=summary,
        skipped=skipped,
        query_thumbnails=queries.thumbnails,
        match_rows=match_rows,
        alpha=alpha,
        alignment=al,
    )


def dataset_summary(bank, slice_rows, volume_rows, alpha, oni) -> dict:
    n_slices = len(slice_rows)
    n_vol = len(volume_rows)
    slice_flag = np.array([r["flagged"] for r in slice_rows], bool)
    frac = float(slice_flag.mean()) if n_slices else 0.0
    mi = np.array([r["mi"] for r in slice_rows])
    return {
        "alpha": alpha,
        "n_volumes": n_vol,
        "n_slices": n_slices,
        "n_volumes_flagged": int(sum(v["flagged"] for v in volume_rows)),
        "fraction_volumes_flagged": (
            float(np.mean([v["flagged"] for v in volume_rows])) if n_vol else 0.0
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
        "encoder": bank.encoder,
        "untrained_encoder": not bank.trained_encoder,
        "calibration": bank.null.summary(),
        "bank": {
            "path": bank.path,
            "n_slices": len(bank),
            "n_volumes": len(bank.volumes),
            "settings": bank.settings.to_dict(),
        },
    }


def load_scorer(
    bank: FeatureBank,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
) -> FeatureExtractor:
    """The encoder the bank was built with: same checkpoint (checked by SHA-256) or untrained."""
    recorded = bank.encoder.get("checkpoint")
    if bank.trained_encoder and checkpoint is None:
        if recorded and os.path.isfile(recorded):
            checkpoint = recorded
        else:
            raise BankError(
                f"The bank {bank.path} was built with the checkpoint {recorded}, which is not "
                "there now; pass --checkpoint with the same file."
            )
    if not bank.trained_encoder and checkpoint is not None:
        raise BankError(
            f"The bank {bank.path} was built with an untrained encoder; it cannot score with "
            f"the checkpoint {checkpoint}. Rebuild the bank with --checkpoint."
        )
    encoder, info = encoder_for(bank.settings, checkpoint, bank.encoder.get("config"))
    bank.check_compatible(encoder=info.to_dict())
    return FeatureExtractor(encoder, bank.settings.preprocess_spec(), device, batch_size)


def score(
    bank: FeatureBank,
    inputs: str | os.PathLike | list[ScanSource | ScanVolume],
    alpha: float = 0.01,
    stride: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
    extractor: FeatureExtractor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> ScoreResult:
    """Score a folder (or a file, or in-memory volumes) of synthetic scans against a bank."""
    check_alpha(alpha)
    options = ReadOptions(  # validates stride (0 is an error, not 1)
        axis=bank.settings.axis,
        stride=1 if stride is None else stride,
        min_foreground=bank.settings.min_foreground,
    )
    # The encoder first: a wrong checkpoint is reported before any folder is scanned.
    extractor = extractor or load_scorer(bank, checkpoint, device, batch_size)
    skipped: list[SkippedInput] = []
    if isinstance(inputs, (str, os.PathLike)):
        sources, skipped = find_scans_required(inputs)
    else:
        sources = list(inputs)
    queries = extract_features(
        sources,
        extractor,
        bank.settings.layers,
        options,
        flips=bank.settings.flips,
        thumbnail_size=bank.settings.thumbnail_size,
        progress=progress,
        cancel=cancel,
        stage="Scoring synthetic slices",
    )
    if len(queries) == 0:
        raise InputError(
            "None of the synthetic scans could be used: "
            + "; ".join(f"{s.path}: {s.reason}" for s in (skipped + queries.skipped)[:5])
        )
    return score_features(bank, queries, alpha, skipped, progress=progress, cancel=cancel)
