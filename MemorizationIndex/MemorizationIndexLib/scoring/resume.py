"""Scoring in per-volume pieces that survive a killed run (`score --out DIR`, run again).

Synthetic volumes are independent given the bank (MI calibrates against the bank's null,
never against the other synthetic scans), so `score` encodes and scores one volume at a
time: each volume's rows then depend only on the bank and that volume, whatever else is
scored with it, in one process or on a Ray worker (stage 2 refines each slice's pose on
its own, so its result does not depend on the batch either).

Each finished volume's results are a piece in a resume folder beside the output (pieces.py:
temporary name then rename, a key that hashes the bank (its manifest and file digests), the
encoder, the synthetic inputs (paths, sizes, times), alpha, stride, device and batch size).
When every volume is done the pieces are merged in input order (the dataset summary is
computed over all of them, as in one pass), the report is written atomically (atomic.py)
and the resume folder is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import fields

import numpy as np

from ..encoding.encoder import Encoder
from ..errors import InputError
from ..job import Job
from ..pieces import (  # Piece: a ScoreResult, or None and the reasons the volume was skipped
    Piece,
    ResumeFolder,
    Runner,
    run_in_pieces,
    skipped_from_json,
    skipped_to_json,
    sources_content,
)
from ..pieces import run_key as run_key_of
from ..scans import ReadOptions, ScanSource, SkippedInput, find_scans_required
from ..scans.images import is_image_file
from ..search.affine_pose import AffinePose
from ..search.verification import Alignments
from ..search.volume_stage import volume_stage_totals
from .results import ScoreResult, SliceResult, VolumeResult
from .score import (
    check_alpha,
    dataset_summary,
    encode_queries,
    score_features,
    with_internal_duplicates,
)

SCORING_STAGE = "Scoring synthetic volumes"


def run_options(bank, alpha: float, stride: int | None) -> ReadOptions:
    check_alpha(alpha)
    return ReadOptions(  # validates stride (0 is an error, not 1) before any work
        axis=bank.settings.axis,
        stride=1 if stride is None else stride,
        min_foreground=bank.settings.min_foreground,
    )


def score_volume(bank, source: ScanSource, encoder: Encoder, options, alpha: float) -> Piece:
    """Encode and score one synthetic volume against the bank."""
    queries = encode_queries(bank, [source], encoder, options)
    if len(queries) == 0:
        return Piece(None, list(queries.skipped))
    return Piece(score_features(bank, queries, alpha, internal_duplicates=None))


# ---- the resume folder (pieces.py) --------------------------------------------------------
def run_key(bank, encoder_info: dict, sources: list[ScanSource], settings: dict) -> str:
    """Hash of everything a volume's results depend on (see the module docstring)."""
    return run_key_of(
        {
            "bank": os.path.abspath(bank.path or ""),
            "bank_files": bank.manifest.get("files"),
            "bank_settings": bank.settings.to_dict(),
            "encoder": encoder_info,
            "sources": sources_content(sources),
            "settings": settings,
        }
    )


# ---- pieces to files and back --------------------------------------------------------------
_ROWS = {"slices": SliceResult, "volumes": VolumeResult}


def _row_to_json(row) -> dict:
    values = {f.name: getattr(row, f.name) for f in fields(row)}
    if values.get("pose") is not None:  # the volume stage's pose, as volumes.csv has it
        values["pose"] = values["pose"].summary()
    return values


def _row_from_json(cls, values: dict):
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        value, kind = values[f.name], str(f.type)
        if kind.startswith("tuple") and value is not None:
            value = tuple(value)
        elif kind.startswith("dict[int"):
            value = {int(k): v for k, v in value.items()}
        elif "Pose" in kind and value is not None:
            value = AffinePose.from_summary(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def piece_to(piece: Piece) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON part, arrays) of a piece; every ScoreResult field is kept."""
    meta = {"skipped": skipped_to_json(piece.skipped), "result": None}
    arrays: dict[str, np.ndarray] = {}
    if piece.result is None:
        return meta, arrays
    result = {}
    for f in fields(ScoreResult):
        value = getattr(piece.result, f.name)
        if f.name in _ROWS:
            result[f.name] = [_row_to_json(r) for r in value]
        elif f.name == "skipped":
            result[f.name] = skipped_to_json(value)
        elif isinstance(value, np.ndarray):
            arrays[f.name] = value
        elif isinstance(value, Alignments):
            for g in fields(Alignments):
                arrays[f"{f.name}.{g.name}"] = np.asarray(getattr(value, g.name))
            result[f.name] = "arrays"
        else:
            json.dumps(value, default=str)  # anything else must be JSON (TypeError if not)
            result[f.name] = value
    meta["result"] = result
    return meta, arrays


def piece_from(meta: dict, arrays: dict[str, np.ndarray]) -> Piece:
    skipped = skipped_from_json(meta["skipped"])
    stored = meta["result"]
    if stored is None:
        return Piece(None, skipped)
    values = {}
    for f in fields(ScoreResult):
        if f.name in _ROWS:
            values[f.name] = [_row_from_json(_ROWS[f.name], r) for r in stored[f.name]]
        elif f.name == "skipped":
            values[f.name] = skipped_from_json(stored[f.name])
        elif f.name in arrays:
            values[f.name] = arrays[f.name]
        elif stored.get(f.name) == "arrays":
            parts = {g.name: arrays[f"{f.name}.{g.name}"] for g in fields(Alignments)}
            parts["flip"] = [str(x) for x in parts["flip"]]
            values[f.name] = Alignments(**parts)
        elif f.name in stored:
            values[f.name] = stored[f.name]
    return Piece(ScoreResult(**values), skipped)


class PieceFiles:
    """The PieceCodec of scoring pieces (pieces.py)."""

    to_parts = staticmethod(piece_to)
    from_parts = staticmethod(piece_from)


# ---- merging -------------------------------------------------------------------------------
def _concat_alignments(parts: list[Alignments | None]) -> Alignments | None:
    if not parts or any(a is None for a in parts):
        return None
    out = {}
    for g in fields(Alignments):
        values = [getattr(a, g.name) for a in parts]
        out[g.name] = (
            sum((list(v) for v in values), []) if g.name == "flip" else np.concatenate(values)
        )
    return Alignments(**out)


def merge_pieces(bank, pieces: list[Piece], alpha: float, skipped: list[SkippedInput]):
    """One ScoreResult from the pieces in input order, as one pass over all volumes gives."""
    results = [p.result for p in pieces if p.result is not None]
    skipped = list(skipped)
    for p in pieces:
        skipped.extend(p.skipped if p.result is None else p.result.skipped)
    if not results:
        raise InputError(
            "None of the synthetic scans could be used: "
            + "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
        )
    slices = [s for r in results for s in r.slices]
    volumes = [v for r in results for v in r.volumes]
    oni = np.array([s.oni for s in slices], np.float64)
    summary = dataset_summary(bank, slices, volumes, alpha, oni)
    summary["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    summary["warnings"] = [w for r in results for w in r.summary.get("warnings", [])]
    stage3 = [r.summary["volume_stage"] for r in results if "volume_stage" in r.summary]
    if stage3:
        summary["volume_stage"] = volume_stage_totals(stage3)
    return ScoreResult(
        slices=slices,
        volumes=volumes,
        summary=summary,
        skipped=skipped,
        query_thumbnails=np.concatenate([r.query_thumbnails for r in results]),
        match_rows=np.concatenate([r.match_rows for r in results]),
        alpha=alpha,
        alignment=_concat_alignments([r.alignment for r in results]),
        query_features=_concat_features([r.query_features for r in results]),
    )


def _concat_features(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """The pieces' slice features in order; None when a piece has none (an older one)."""
    if any(f is None for f in parts):
        return None
    return np.concatenate(parts)


# ---- the run -------------------------------------------------------------------------------
def local_runner(bank, sources, encoder: Encoder, options, alpha: float, job: Job) -> Runner:
    """Volumes one at a time; 2D image files in blocks of batch_size (one network call and
    one search per block instead of per image). A block is always scored whole, also when
    a resumed run needs only part of it, so every image is computed in the same company
    (and the same floating-point batch) in a resumed run as in an uninterrupted one."""
    block_size = max(1, encoder.batch_size)

    def run(pending: list[int]) -> Iterator[tuple[int, Piece]]:
        wanted = set(pending)
        done_blocks = set()
        for i in pending:
            job.check()
            if not is_image_file(sources[i]):
                yield i, score_volume(bank, sources[i], encoder, options, alpha)
                continue
            block = i // block_size
            if block in done_blocks:
                continue
            done_blocks.add(block)
            members = [
                k
                for k in range(block * block_size, min((block + 1) * block_size, len(sources)))
                if is_image_file(sources[k])
            ]
            pieces = score_images(bank, [sources[k] for k in members], encoder, options, alpha)
            for k, piece in zip(members, pieces, strict=True):
                if k in wanted:
                    yield k, piece

    return run


def score_images(bank, sources: list[ScanSource], encoder: Encoder, options, alpha) -> list:
    """score_volume for each of several 2D images, encoded and searched together; one
    piece per source (its result, or why it was skipped)."""
    queries = encode_queries(bank, sources, encoder, options)
    scored = (
        score_features(bank, queries, alpha, internal_duplicates=None) if len(queries) else None
    )
    by_key = split_by_volume(scored) if scored is not None else {}
    pieces = []
    for source in sources:
        result = by_key.get((source.path, source.series_uid))
        if result is not None:
            pieces.append(Piece(result))
            continue
        label = source.label
        mine = [s for s in queries.skipped if s.path == source.path and label in s.reason]
        pieces.append(Piece(None, mine or [SkippedInput(source.path, f"{label}: not read.")]))
    return pieces


def split_by_volume(result: ScoreResult) -> dict[tuple[str, str], ScoreResult]:
    """A ScoreResult of several volumes as one per volume (merge_pieces joins them again)."""
    keys = [(s.volume, s.series_uid) for s in result.slices]
    out = {}
    for volume in result.volumes:
        key = (volume.volume, volume.series_uid)
        rows = np.array([k == key for k in keys], bool)
        alignment = result.alignment
        if alignment is not None:
            alignment = Alignments(
                **{
                    g.name: (
                        [x for x, keep in zip(alignment.flip, rows, strict=True) if keep]
                        if g.name == "flip"
                        else np.asarray(getattr(alignment, g.name))[rows]
                    )
                    for g in fields(Alignments)
                }
            )
        warnings = [w for w in result.summary.get("warnings", []) if w["volume"] == key[0]]
        out[key] = ScoreResult(
            slices=[s for s, keep in zip(result.slices, rows, strict=True) if keep],
            volumes=[volume],
            summary={"warnings": warnings},
            skipped=[],
            query_thumbnails=result.query_thumbnails[rows],
            match_rows=result.match_rows[rows],
            alpha=result.alpha,
            alignment=alignment,
            query_features=(None if result.query_features is None else result.query_features[rows]),
        )
    return out


def score_resumable(
    bank,
    synth_dir: str | os.PathLike,
    out: str | os.PathLike,
    make_runner: Callable[[list[ScanSource], ReadOptions], Runner],
    encoder_info: dict,
    alpha: float = 0.01,
    stride: int | None = None,
    job: Job | None = None,
    run_settings: dict | None = None,
    internal_duplicates: bool = True,
) -> tuple[ScoreResult, ResumeFolder]:
    """Score every synthetic volume of synth_dir, skipping those a killed run with the same
    key finished; returns the merged result and the resume folder (remove it once the
    report is written). make_runner(sources, options) gives the Runner. The search for
    internal duplicates runs on the merged set (it needs every input)."""
    job = job or Job()
    options = run_options(bank, alpha, stride)
    sources, skipped = find_scans_required(synth_dir)
    settings = {"alpha": alpha, "stride": options.stride, **(run_settings or {})}
    folder = ResumeFolder(out, run_key(bank, encoder_info, sources, settings), PieceFiles())
    pieces = run_in_pieces(folder, len(sources), make_runner(sources, options), job, SCORING_STAGE)
    merged = merge_pieces(bank, pieces, alpha, skipped)
    return with_internal_duplicates(bank, merged, internal_duplicates, job), folder
