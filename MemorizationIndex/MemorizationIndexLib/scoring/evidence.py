"""How a volume's slices add up to one verdict: the Simes combination of their p-values and
the longest run of them that copies consecutive slices of one reference volume (a training
volume, or another synthetic volume for internal duplicates)."""

from __future__ import annotations

import numpy as np


def simes_p_value(p_values: np.ndarray) -> float:
    """Simes (1986) combination: min_i n p_(i) / i; valid under positive dependence."""
    p = np.sort(np.asarray(p_values, dtype=np.float64))
    if len(p) == 0:
        return 1.0
    return float(min(1.0, np.min(len(p) * p / np.arange(1, len(p) + 1))))


def longest_ordered_run(
    flagged: np.ndarray,
    match_rows: np.ndarray,
    volume_ids: np.ndarray,
    max_step: int = 1,
    repeats: bool = False,
) -> int:
    """Longest stretch of consecutive flagged slices whose matches are slices of one
    reference volume (volume_ids[match_rows]) moving one way, a copied stack, possibly
    reversed: by one row each; by up to max_step rows, or none with `repeats`, where the
    reference keeps every max_step-th slice (internal duplicates)."""
    best = run = direction = 0
    least = 0 if repeats else 1
    for i in range(len(flagged)):
        if not flagged[i]:
            run = direction = 0
            continue
        diff = int(match_rows[i]) - int(match_rows[i - 1]) if run else 0
        follows = (
            run > 0
            and volume_ids[match_rows[i]] == volume_ids[match_rows[i - 1]]
            and least <= abs(diff) <= max_step
            and diff * direction >= 0
        )
        if follows:
            run += 1
            direction = direction or int(np.sign(diff))
        else:
            run, direction = 1, 0
        best = max(best, run)
    return best
