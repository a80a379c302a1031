"""Build a bank: encode the training scans, calibrate by held-out volumes, fit the index.

The null is cross-fitted: each fold of training volumes is held out once, a SliceIndex is
fitted on the other volumes and searched with the held-out slices, exactly as scoring
searches the bank's own SliceIndex with synthetic slices.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..atomic import check_output
from ..calibration.combination import Combination
from ..calibration.content import ContentNull, SliceContent
from ..calibration.null import NullModel, volume_folds
from ..encoding.encoder import Encoder, EncoderInfo
from ..encoding.features import EncodingPlan, FeatureSet, encode_resumable
from ..errors import InputError, SettingsError
from ..job import Job
from ..pieces import Runner
from ..scans import ReadOptions, ScanSource, find_scans_required
from ..scans.images import is_image_file
from ..scans.subjects import (
    Subject,
    compile_subject_pattern,
    few_subjects_warning,
    one_subject_each_if_all_one,
    read_grouping_file,
    split_duplicates,
    subject_of,
    subject_warning,
)
from ..search.index import QuerySlices, StageResult
from ..search.verification import settle
from ..search.volume_stage import CompactVolumeStore, VolumeStageResult, volume_stage
from .feature_bank import FeatureBank, no_images
from .settings import BankSettings

CALIBRATION_STAGE = "Calibrating on held-out training volumes"


@dataclass
class NullSearch:
    """What calibration found for each held-out training slice (rows of the FeatureSet)."""

    s1: np.ndarray  # stage-1 similarity
    s2: np.ndarray | None  # stage-2 score, gated (None without verification)
    s3: np.ndarray | None  # stage-3 volume NCC (None without the volume stage)
    rows: np.ndarray  # the FeatureSet rows these belong to
    matched_volume: np.ndarray  # training volume of each slice's match
    gate: float | None = None  # stage 2's gate: this share of check values lie below it
    # stage 2's check value of every held-out slice, ungated (None without verification):
    # continuous where the gated score settles most slices at one value
    checks: np.ndarray | None = None


def cross_fitted_null(
    train: FeatureSet,
    settings: BankSettings,
    job: Job | None = None,
    groups: np.ndarray | None = None,
) -> NullSearch:
    """Stage scores of each held-out training slice against a SliceIndex of the others.

    Every subject is held out once (settings.calibration_folds folds; `groups` numbers the
    subject of each volume, default one subject per volume). With query flips the null
    uses the slices that were also encoded flipped. Stage 2's gate is the quantile
    settle_share of the check values of all held-out slices; each fold's alignments are
    then gated as scoring gates them (verification.settle), before stage 3 sees them.
    """
    job = job or Job()
    if settings.flips != ("none",):
        null_rows = train.flip_rows[settings.flips[1]]
    else:
        null_rows = np.arange(len(train))
    s1 = np.zeros(len(null_rows), np.float64)
    s2 = np.zeros(len(null_rows), np.float64) if settings.verify else None
    s3 = np.zeros(len(null_rows), np.float64) if settings.volume_stage else None
    checks = np.zeros(len(null_rows), np.float64)
    positions = train.positions() if settings.volume_stage else None  # once, for every fold
    matched = np.zeros(len(null_rows), np.int64)
    folds = volume_folds(len(train.volumes), settings.calibration_folds, settings.seed, groups)
    searched = []  # (held-out slices, FeatureSet rows of the fold's bank, result)
    settle_share = None
    for held_out in folds:
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
        settle_share = index.verifier.settings.settle_share
        queries = QuerySlices.of(train, settings.flips, null_rows[query_mask])
        result = index.search(queries, job.step(None, len(queries)), keep_checked=s2 is not None)
        s1[query_mask] = result.stage1.similarity
        if s2 is not None:
            checks[query_mask] = result.alignment.check
        searched.append((query_mask, np.flatnonzero(in_bank), result))
    gate = float(np.quantile(checks, settle_share)) if s2 is not None else None
    for query_mask, fold_bank, result in searched:
        if s2 is not None:
            result.alignment = settle(result.alignment, result.checked, gate)
            s2[query_mask] = result.alignment.score
        bank_rows = fold_bank[result.match_rows]
        matched[query_mask] = train.volume_ids[bank_rows]
        if s3 is not None:
            s3[query_mask] = held_out_volume_stage(
                train, positions, settings, null_rows[query_mask], bank_rows, result, job
            ).scores
    return NullSearch(s1, s2, s3, null_rows, matched, gate, checks if s2 is not None else None)


def held_out_volume_stage(
    train: FeatureSet,
    positions: np.ndarray,
    settings: BankSettings,
    query_rows: np.ndarray,
    bank_rows: np.ndarray,
    result: StageResult,
    job: Job,
) -> VolumeStageResult:
    """Stage 3 of held-out training slices (FeatureSet rows) whose stage-1/2 matches are
    the FeatureSet rows `bank_rows` (positions: train.positions()): the null's side of
    score.volume_stage_of."""
    return volume_stage(
        query_volumes={int(v): train.compact_volumes[int(v)] for v in train.volume_ids[query_rows]},
        training_volume=lambda vid: train.compact_volumes[vid],
        query_vids=train.volume_ids[query_rows],
        positions=positions[query_rows],
        thumbnail_mm=train.thumbnail_mm[query_rows],
        matched_vids=train.volume_ids[bank_rows],
        matched_positions=positions[bank_rows],
        stage_scores=result.stage_score,
        axis=settings.axis,
        size=settings.thumbnail_size,
        candidates=settings.volume_candidates,
        check=job.check,
        matched_flips=result.flips(settings.flips),
    )


NEAR_DUPLICATE_SPREADS = 8.0  # robust spreads above the typical volume: no two subjects
NEAR_DUPLICATE_SHARE = 0.5  # ...and this share of its slices matching the one other volume


def near_duplicates(train: FeatureSet, null: NullSearch) -> list[tuple[int, int]]:
    """Pairs (v, w) of training volumes where v's held-out slices match w like a copy.

    A volume is judged against the other volumes' typical score: its median stage score
    lies more than NEAR_DUPLICATE_SPREADS median absolute deviations above the median over
    volumes (robust, so a few duplicates cannot hide each other), and most of its slices
    match one other volume. No threshold on the score itself: it holds for any encoder.
    """
    volumes = train.volume_ids[null.rows]
    # The gated stage-2 scores. Known limit: the gate settles most held-out slices at one
    # score, so on some cohorts the spread is 0 and distinct subjects are paired (the spine
    # phantom); judging on stage 1 or on the ungated check values instead (both tried) made
    # test_overlay_poses' 3-volume toy bank miss its flipped-rotated-stretched copy.
    scores = null.s2 if null.s2 is not None else null.s1
    # A 2D image is one slice, which always "mostly" matches one other image: the rule
    # needs volumes (exact repeats of images are found by content before encoding).
    present = np.array([v for v in np.unique(volumes) if not train.is_2d(int(v))], np.int64)
    if len(present) == 0:
        return []
    medians = np.array([np.median(scores[volumes == v]) for v in present])
    centre = np.median(medians)
    spread = max(float(np.median(np.abs(medians - centre))), 1e-6)
    pairs = []
    for v, median in zip(present, medians, strict=True):
        if (median - centre) / spread <= NEAR_DUPLICATE_SPREADS:
            continue
        targets, counts = np.unique(null.matched_volume[volumes == v], return_counts=True)
        best = int(np.argmax(counts))
        if counts[best] >= NEAR_DUPLICATE_SHARE * counts.sum() and targets[best] != v:
            pairs.append((int(v), int(targets[best])))
    return pairs


def subject_groups(train: FeatureSet, subjects: dict[tuple[str, str], str]) -> np.ndarray:
    """A subject number per FeatureSet volume from {(path, series uid): subject key}."""
    keys = [
        subjects.get((v, u), f"volume:{v}:{u}")
        for v, u in zip(train.volumes, train.series_uids, strict=True)
    ]
    numbers = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([numbers[k] for k in keys], np.int64)


def merge_groups(groups: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """groups with the subjects of each pair of volumes made one."""
    merged = groups.copy()
    for v, w in pairs:
        merged[merged == merged[w]] = merged[v]
    return merged


def _check_enough(train: FeatureSet, settings: BankSettings) -> None:
    """InputError unless there are slices of at least two training volumes; SettingsError
    when stage 3 is on and the volumes were encoded without their compact copies."""
    if settings.volume_stage and len(train.compact_volumes) != len(train.volumes):
        raise SettingsError(
            "These settings verify whole volumes (stage 3): encode the training scans with "
            f"extract_features(..., volume_grid_mm={settings.volume_grid_mm}), or build with "
            "volume_stage=False."
        )
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


def settings_for(train: FeatureSet, settings: BankSettings) -> tuple[BankSettings, dict]:
    """The settings a training set allows, and the manifest's note of what changed: 2D
    images have no volume to register, so a set holding them gets no volume stage."""
    if not (settings.volume_stage and train.has_2d):
        return settings, {}
    return replace(settings, volume_stage=False), {
        "volume_stage_off": "The training set holds 2D images, which have no volume to "
        "register: the volume stage (stage 3) is off for this bank."
    }


@dataclass
class FittedNulls:
    """What calibration keeps: the stage combination, the null of its statistic and (with
    stage 3) the null of the stage-1-2 statistic of the same held-out slices, for 2D queries,
    which have no volume; each also per content bin (calibration/content.py)."""

    combination: Combination
    null: NullModel
    planar_null: NullModel | None
    content_null: ContentNull
    planar_content_null: ContentNull | None


def fitted_nulls(found: NullSearch, content: SliceContent, subjects: np.ndarray) -> FittedNulls:
    """The nulls of the held-out slices `found`; content and subjects: of those slices
    (found.rows)."""
    combination = Combination.fit(found.s1, found.s2, found.s3, gate=found.gate)
    statistic = combination.statistic_of(found.s1, found.s2, found.s3)
    fitted = FittedNulls(
        combination,
        NullModel.fit(statistic),
        None,
        ContentNull.fit(statistic, content, subjects),
        None,
    )
    if found.s3 is None:
        return fitted
    planar = Combination.fit(found.s1, found.s2, None, gate=found.gate)
    flat = planar.statistic_of(found.s1, found.s2)
    fitted.planar_null = NullModel.fit(flat)
    fitted.planar_content_null = ContentNull.fit(flat, content, subjects)
    return fitted


def build_manifest(
    train: FeatureSet,
    info: EncoderInfo,
    groups: np.ndarray,
    pairs: list[tuple[int, int]],
    extra: dict,
) -> dict:
    """What a new bank's manifest says of its inputs: skipped, warnings, subjects (with a
    warning when few), near-duplicates; `extra` is added as it is."""
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "skipped": [asdict(s) for s in train.skipped],
        "warnings": {
            f"{v} {u}".strip(): w
            for v, u, w in zip(train.volumes, train.series_uids, train.volume_warnings, strict=True)
            if w
        },
        "untrained_encoder_notice": None if info.trained else info.name,
        "subject_groups": groups.tolist(),
        "n_subjects": int(len(np.unique(groups))),
        "near_duplicates": [
            {"volume": train.volumes[v], "matches": train.volumes[w]} for v, w in pairs
        ],
    }
    manifest.update(extra)
    few = few_subjects_warning(manifest["n_subjects"])
    if few:
        manifest["subject_warnings"] = [*manifest.get("subject_warnings", []), few]
    return manifest


def bank_from_features(
    train: FeatureSet,
    settings: BankSettings,
    info: EncoderInfo,
    job: Job | None = None,
    extra_manifest: dict | None = None,
    subjects: dict[tuple[str, str], str] | None = None,
) -> FeatureBank:
    """Calibrate by subject, fit the index on all training slices, and assemble the bank.

    subjects: {(volume path, series uid): subject key}; volumes without one are their own
    subject. Near-duplicate volumes found in the null are reported and held out together.
    """
    settings, notes = settings_for(train, settings)
    _check_enough(train, settings)
    groups = subject_groups(train, subjects or {})
    found = cross_fitted_null(train, settings, job, groups)
    pairs = near_duplicates(train, found)
    if pairs:  # calibrate again with each such pair held out together
        groups = merge_groups(groups, pairs)
        found = cross_fitted_null(train, settings, job, groups)
    content = SliceContent.of_features(train).take(found.rows)
    nulls = fitted_nulls(found, content, groups[train.volume_ids[found.rows]])
    thumbnails = train.thumbnails if settings.store_images else no_images(len(train))
    index = settings.slice_index().fit(train.features, train.volume_ids, thumbnails)
    manifest = build_manifest(train, info, groups, pairs, {**notes, **(extra_manifest or {})})
    return FeatureBank(
        settings=settings,
        encoder_info=info.to_dict(),
        index=index,
        slice_indices=np.array([s.slice_index for s in train.slices], np.int64),
        positions=train.positions(),
        volumes=list(train.volumes),
        series_uids=list(train.series_uids),
        series_names=list(train.series_names),
        volume_kinds=[train.kind_of(v) for v in range(len(train.volumes))],
        thumbnail_mm=train.thumbnail_mm,
        null=nulls.null,
        planar_null=nulls.planar_null,
        content_null=nulls.content_null,
        planar_content_null=nulls.planar_content_null,
        combination=nulls.combination,
        manifest=manifest,
        compact_volumes=(
            CompactVolumeStore.of(train.compact_volumes) if settings.volume_stage else None
        ),
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
    grouping_file: str | os.PathLike | None = None,
    runner: Callable[[list, ReadOptions, EncodingPlan], Runner] | None = None,
    run_settings: dict | None = None,
    subject_pattern: str | None = None,
) -> FeatureBank:
    """Training folder -> bank saved in out_dir. Unusable files are skipped and listed in
    the manifest; exact repeats (a second link to a file, the same bytes twice) are left out
    and listed. encoder: from settings.encoder(checkpoint, ...) (default: untrained, for
    testing only); job: progress and Cancel; grouping_file (CSV `path,subject`) and
    subject_pattern (a regex on file names) name subjects (see training_subjects).

    Encoding is resumable: each encoded volume is kept in `.NAME.resume-KEY` beside out_dir
    until the bank is written (pieces.py). runner(sources, read_options, plan): where volumes are
    encoded (default here; a Ray cluster: distributed.py), run_settings what else the
    encoded volumes depend on (the runner's kind, its device)."""
    settings = settings or BankSettings()
    job = job or Job()
    checkpoint = encoder.info.checkpoint if encoder is not None else None
    inputs = (train_dir, checkpoint, grouping_file)
    check_output(out_dir, "bank", inputs)  # before hours of encoding, and again at save
    sources, skipped = find_scans_required(train_dir)
    sources, duplicates = split_duplicates(sources)
    root = os.fspath(train_dir)
    found, subject_warnings = training_subjects(sources, root, grouping_file, subject_pattern)
    encoder = encoder or settings.encoder()
    check_encoder(encoder, settings)
    # Each encoded volume is kept beside out_dir until the bank is written: a killed build
    # started again encodes only the volumes it had not finished (pieces.py).
    options, plan = settings.read_options(), encoding_plan(settings, len(sources))
    run = runner(sources, options, plan) if runner else None
    train, resume = encode_resumable(
        sources, encoder, options, plan, out_dir, job, run, run_settings
    )
    train.skipped = list(skipped) + train.skipped
    job.report(CALIBRATION_STAGE, 0, 1)
    provenance = {
        "training_folder": root,
        "duplicates": [asdict(d) for d in duplicates],
        "subjects_from": sorted({s.how for s in found.values()}),
        "subject_warnings": subject_warnings,
    }
    subjects = {k: s.key for k, s in found.items()}
    bank = bank_from_features(train, settings, encoder.info, job, provenance, subjects)
    job.report(CALIBRATION_STAGE, 1, 1)
    job.check()
    bank.save(out_dir, inputs)
    resume.remove()
    return bank


def training_subjects(
    sources: list[ScanSource],
    root: str,
    grouping_file: str | os.PathLike | None,
    subject_pattern: str | None,
) -> tuple[dict[tuple[str, str], Subject], list[str]]:
    """The subject of every training input (scans/subjects.py) and the warnings about
    them; InputError, before any encoding, when they are all one subject."""
    grouping = read_grouping_file(grouping_file) if grouping_file else None
    pattern = compile_subject_pattern(subject_pattern)
    found = {(s.path, s.series_uid): subject_of(s, root, grouping, pattern) for s in sources}
    found, all_one = one_subject_each_if_all_one(found)
    if len(sources) >= 2 and len({s.key for s in found.values()}) < 2:
        raise InputError(
            f"Calibration needs training scans of at least 2 subjects; all {len(sources)} "
            f"inputs in {root} belong to one subject ({next(iter(found.values())).how}). "
            "Check --subjects or --subject-pattern."
        )
    images = {(s.path, s.series_uid) for s in sources if is_image_file(s)}
    return found, [w for w in (all_one, subject_warning(found, images)) if w]


def encoding_plan(settings: BankSettings, n_sources: int) -> EncodingPlan:
    """What build-bank keeps of each training volume: the null's flipped views (a sample
    of null_max_slices), thumbnails, and a compact copy when stage 3 is on."""
    return EncodingPlan.of(
        n_sources,
        settings.flips,
        settings.null_max_slices,
        settings.thumbnail_size,
        settings.volume_grid_mm if settings.volume_stage else None,
    )
