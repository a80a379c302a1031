"""Internal duplicates: synthetic inputs that copy each other (mode collapse), with or
without a training source behind them.

The synthetic set is searched as if it were a bank: every synthetic slice against the
slices of the *other* synthetic inputs (never its own volume, whose neighbouring slices are
near-duplicates by anatomy), through the same stage 1 (the bank's whiteners, an exact
index) and stage 2 (the bank's verifier and gate). Its statistic is judged by the bank's
stage-1-2 null, content bin by content bin: held-out training slices searched against the
other training subjects ask the same question, "is this slice closer to another subject's
slice than a new subject's slice ever is?". Stage 3 is not used (it registers a volume
onto a training volume). Synthetic slices are searched unflipped in stage 1 (stage 2 still
tries every flip), which can only make the test conservative.

The null's answer depends on how much it searched, so the synthetic reference is made to
match it, never to favour a flag:
- slice density: a volume's slices are kept as reference at the bank's slice spacing (a
  bank kept every 2nd slice: a reference twice as dense would hold nearer neighbours);
- reference size: the null's best match was the best of the training inputs kept in its
  fold; the best of m times as many is judged as the best of m independent draws
  (p' = 1 - (1 - p)^m, Sidak), when m > 1; a smaller synthetic set keeps p as it is.

Per input, the Simes combination of its slice p-values judges it, as in volumes.csv; a
pair found in both directions is reported once, under the more significant one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..calibration.content import SliceContent, rows_by_group
from ..calibration.null import volume_folds
from ..job import INTERNAL_STAGE, Job
from ..search.index import QuerySlices, StageResult
from .evidence import longest_ordered_run, simes_p_value
from .results import DuplicatePair, ScoreResult


def _cannot_search(bank, result: ScoreResult) -> str:
    """Why the set cannot be searched for internal duplicates ("" when it can)."""
    if len(result.volumes) < 2:
        return "A single synthetic input: there is nothing to compare it with."
    if result.query_features is None:
        return "The synthetic slices' features were not kept (a resumed run of an older version)."
    if bank.compact_volumes is not None and bank.planar_null is None:
        return "The bank predates the stage-1-2 null that judges them; rebuild it."
    return ""


def _volume_ids(result: ScoreResult) -> np.ndarray:
    """[n] the input (index into result.volumes) of every slice."""
    position = {(v.volume, v.series_uid): k for k, v in enumerate(result.volumes)}
    return np.array([position[(s.volume, s.series_uid)] for s in result.slices], np.int64)


def _slice_gap(positions: np.ndarray, vids: np.ndarray) -> float:
    """Median distance (mm) between consecutive slices of one volume; NaN without any."""
    positions = np.asarray(positions, np.float64)
    same = vids[1:] == vids[:-1]
    if not same.any():
        return float("nan")
    return float(np.median(np.linalg.norm(np.diff(positions, axis=0)[same], axis=1)))


def reference_step(bank, result: ScoreResult, vids: np.ndarray) -> int:
    """k: every k-th slice of a synthetic volume lies about as far from the next as the
    bank's slices do (1 without volumes on either side)."""
    positions = np.array([s.position for s in result.slices], np.float64)
    ratio = _slice_gap(bank.positions, bank.volume_ids) / _slice_gap(positions, vids)
    return max(1, round(ratio)) if np.isfinite(ratio) else 1


def reference_rows(by_input: list[tuple[int, np.ndarray]], n: int, step: int) -> np.ndarray:
    """[n] bool: every step-th slice of each input, the synthetic reference."""
    keep = np.zeros(n, bool)
    for _, rows in by_input:
        keep[rows[::step]] = True
    return keep


def reference_share(bank, n_inputs: int) -> float:
    """m: how many times more inputs the synthetic reference holds (all but the query's
    own) than the null's did (the training inputs kept in a calibration fold); >= 1."""
    groups = bank.manifest.get("subject_groups")
    n = len(bank.volumes)
    folds = volume_folds(
        n, bank.settings.calibration_folds, bank.settings.seed, None if not groups else groups
    )
    kept = n - n / len(folds)  # the mean over folds of the volumes left in the bank
    return max(1.0, (n_inputs - 1) / max(kept, 1.0))


def sidak(p: np.ndarray, m: float) -> np.ndarray:
    """The p-value of the best of m independent draws, each with p-value p."""
    return -np.expm1(m * np.log1p(-np.clip(p, 0.0, 1.0 - 1e-16)))


def layer_features(side_by_side: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """The per-layer [n, D_l] arrays of features kept side by side (ScoreResult)."""
    if side_by_side.shape[1] != sum(widths):
        raise ValueError(
            f"{side_by_side.shape[1]} feature columns kept, the bank's layers take {sum(widths)}"
        )
    edges = np.cumsum([0, *widths])
    return [
        np.ascontiguousarray(side_by_side[:, edges[k] : edges[k + 1]]) for k in range(len(widths))
    ]


def search_within(
    bank, result: ScoreResult, vids: np.ndarray, reference: np.ndarray, job: Job
) -> StageResult:
    """Stages 1 and 2 of every synthetic slice against the other synthetic inputs' slices
    marked `reference`; match rows are rows of the whole set."""
    bank_index = bank.index
    whiteners = bank_index.whiteners_
    layers = layer_features(result.query_features, [len(w.mean) for w in whiteners])
    index = bank_index.unfitted().set_fitted(
        whiteners,
        [w.transform(f[reference]) for w, f in zip(whiteners, layers, strict=True)],
        vids[reference],
        result.query_thumbnails[reference],
    )
    queries = QuerySlices([(np.arange(len(vids)), layers)], result.query_thumbnails)
    progress = job.step(INTERNAL_STAGE, len(vids))
    found = index.search(queries, progress, settle_below=bank.combination.gate, query_volumes=vids)
    rows = np.flatnonzero(reference)
    if found.alignment is not None:
        found.alignment.candidate = rows[found.alignment.candidate]
    found.stage1.best_row = rows[found.stage1.best_row]
    found.stage1.topk = rows[found.stage1.topk]
    return found


def _direction(result, vids, stages, p, slice_indices, a: int, rows: np.ndarray, step: int):
    """(b, the DuplicatePair a -> b) for input a (its slices: rows) and its best partner
    b; None when a is not flagged."""
    matched = stages.match_rows[rows]
    partner = vids[matched]
    p_a = p[rows]
    simes = simes_p_value(p_a)
    alpha = result.alpha
    if simes > alpha:
        return None
    weights = defaultdict(float)
    for b, value in zip(partner, -np.log10(np.maximum(p_a, 1e-300)), strict=True):
        weights[int(b)] += float(value)
    b = max(weights, key=weights.get)
    to_b = partner == b
    best = rows[to_b][np.argmin(p_a[to_b])]
    flagged = (p_a <= alpha) & to_b
    va, vb = result.volumes[a], result.volumes[b]
    return b, DuplicatePair(
        input_a=va.volume,
        slice_a=int(slice_indices[best]),
        input_b=vb.volume,
        slice_b=int(slice_indices[stages.match_rows[best]]),
        p_value=simes,
        mi=1.0 - simes,
        score=float(stages.stage_score[best]),
        slices_matched=int(flagged.sum()),
        longest_run=longest_ordered_run(flagged, matched, vids, step, repeats=True),
        source_a=va.match_volume if va.flagged else "",
        source_b=vb.match_volume if vb.flagged else "",
        series_uid_a=va.series_uid,
        series_uid_b=vb.series_uid,
        **_pose(stages, int(best)),
    )


def _pose(stages: StageResult, i: int) -> dict:
    """Stage 2's pose of slice i's match (none without stage 2)."""
    al = stages.alignment
    if al is None:
        return {}
    return {
        "flip": al.flip[i],
        "angle_deg": float(al.angle[i]),
        "scale": (float(al.scale[i, 0]), float(al.scale[i, 1])),
        "shift_px": (float(al.shift[i, 0]), float(al.shift[i, 1])),
    }


def _pairs(found: list[tuple[int, int, DuplicatePair]]) -> list[DuplicatePair]:
    """One pair per unordered (a, b), the more significant direction, most significant
    first."""
    best: dict[frozenset, tuple[int, int, DuplicatePair]] = {}
    for a, b, pair in found:
        key = frozenset((a, b))
        if key not in best or pair.p_value < best[key][2].p_value:
            best[key] = (a, b, pair)
    return [pair for _, _, pair in sorted(best.values(), key=lambda x: (x[2].p_value, x[0]))]


def find_internal_duplicates(
    bank, result: ScoreResult, job: Job | None = None
) -> tuple[list[DuplicatePair], dict]:
    """(pairs, summary.json's "internal_duplicates" entry) of a scored set; the set's
    slice features (result.query_features) must still be there."""
    reason = _cannot_search(bank, result)
    if reason:
        return [], {"searched": False, "reason": reason}
    job = job or Job()
    vids = _volume_ids(result)
    planar = np.array([result.volumes[v].kind != "volume" for v in vids], bool)
    slice_indices = np.array([s.slice_index for s in result.slices], np.int64)
    step = reference_step(bank, result, vids)
    by_input = rows_by_group(vids)
    reference = reference_rows(by_input, len(vids), step)
    stages = search_within(bank, result, vids, reference, job)
    content = SliceContent.of(result.query_thumbnails, vids, slice_indices, planar)
    _, p, _, _ = bank.calibrate(stages, np.ones(len(vids), bool), content)
    m = reference_share(bank, len(result.volumes))
    p = sidak(p, m)
    found = []
    for a, rows in by_input:
        direction = _direction(result, vids, stages, p, slice_indices, a, rows, step)
        if direction is not None:
            found.append((a, *direction))
    pairs = _pairs(found)
    n_inputs = len(result.volumes)
    flagged_inputs = len(found)
    return pairs, {
        "searched": True,
        "n_pairs": len(pairs),
        "n_inputs_flagged": flagged_inputs,
        "n_inputs": n_inputs,
        "expected_by_chance": result.alpha * n_inputs,
        "pairs_with_training_source": sum(bool(p.training_source) for p in pairs),
        "n_slices": len(vids),
        "n_slices_flagged": int((p <= result.alpha).sum()),
        "reference_slices": int(reference.sum()),
        "reference_share": m,
        "null": "the bank's stage-1-2 null of held-out training slices (by content bin)",
    }


def add_internal_duplicates(bank, result: ScoreResult, job: Job | None = None) -> ScoreResult:
    """Fill result.internal_duplicates and summary["internal_duplicates"], then drop the
    slice features the search needed (a result handed to Slicer stays small)."""
    result.internal_duplicates, result.summary["internal_duplicates"] = find_internal_duplicates(
        bank, result, job
    )
    result.query_features = None
    return result


def not_searched(result: ScoreResult, why: str) -> ScoreResult:
    """A result whose set was deliberately not searched (the user turned it off)."""
    result.summary["internal_duplicates"] = {"searched": False, "reason": why}
    result.query_features = None
    return result


def headline(found: dict, alpha: float) -> str:
    """The one line the console prints of summary.json's "internal_duplicates"."""
    if not found["searched"]:
        return f"Internal duplicates: not searched. {found['reason']}"
    return (
        f"Internal duplicates: {found['n_pairs']} pair(s) of synthetic inputs copy each other; "
        f"{found['n_inputs_flagged']} of {found['n_inputs']} inputs flagged "
        f"({found['expected_by_chance']:.2g} expected by chance at alpha {alpha:g}), "
        f"{found['pairs_with_training_source']} pair(s) copy the same training volume."
    )
