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
