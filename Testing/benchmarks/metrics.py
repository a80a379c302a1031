"""Detection metrics on per-slice scores (higher = more copy-like), written out in full.

AUROC is the Mann-Whitney probability that a copy outscores a clean slice (ties count 1/2);
average precision is the area under the precision-recall steps (ties form one threshold, as
in scikit-learn); TPR at an FPR is the share of copies above the strictest threshold that
lets at most that share of clean slices through.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def _split(negatives, positives) -> tuple[np.ndarray, np.ndarray]:
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=np.float64).ravel()
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("metrics need at least one clean and one copied slice")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise ValueError("scores must be finite")
    return neg, pos


def auroc(negatives, positives) -> float:
    neg, pos = _split(negatives, positives)
    ranks = rankdata(np.concatenate([neg, pos]))
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(negatives, positives) -> float:
    neg, pos = _split(negatives, positives)
    scores = np.concatenate([neg, pos])
    labels = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    # one threshold per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / len(pos)
    previous = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - previous) * precision))


def threshold_at_fpr(negatives, fpr: float = 0.01) -> float:
    """Scores strictly above this flag at most floor(fpr * n) clean slices."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    allowed = int(math.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return -math.inf
    return float(neg[allowed])


def tpr_at_fpr(negatives, positives, fpr: float = 0.01) -> float:
    neg, pos = _split(negatives, positives)
    return float(np.mean(pos > threshold_at_fpr(neg, fpr)))


def flagged_share(flags) -> float:
    flags = np.asarray(flags, dtype=bool)
    return float(flags.mean()) if len(flags) else float("nan")


def estimated_copy_share(flagged_fraction: float, alpha: float) -> float:
    """The engine's dataset-level estimate (scoring.dataset_summary): flags beyond alpha."""
    return float(max(0.0, (flagged_fraction - alpha) / (1.0 - alpha)))


def mean_and_worst(values, worst: str = "min") -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.min() if worst == "min" else v.max())


def ordering_score(primary: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """One real score that orders by `primary`, ties broken by `tiebreak` (dense ranks)."""
    primary = np.asarray(primary, dtype=np.float64)
    tiebreak = np.asarray(tiebreak, dtype=np.float64)
    order = np.lexsort((tiebreak, primary))
    keys = np.stack([primary[order], tiebreak[order]], axis=1)
    new = np.r_[True, np.any(np.diff(keys, axis=0) != 0, axis=1)]
    ranks = np.empty(len(primary), np.float64)
    ranks[order] = np.cumsum(new)
    return ranks
