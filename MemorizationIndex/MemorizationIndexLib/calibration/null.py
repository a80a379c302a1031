"""The null: how similar a scan the model has NOT seen is to the training bank.

Adjacent slices of one scan are near duplicates, so the null is built from whole
training volumes held out of the bank (cross-fitted: every volume is held out once),
never from a slice-level split. MI is the calibrated tail probability of that null, with
the upper tail modelled by a generalised Pareto fit (never lighter than exponential), so
MI near 1 is resolved beyond the 1/n resolution of the empirical null.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ..errors import SettingsError

MIN_NULL_SAMPLES = 20
TAIL_QUANTILE = 0.9
MIN_TAIL_SAMPLES = 10


@dataclass
class NullModel:
    """Similarities of held-out training slices and the fitted upper tail."""

    samples: np.ndarray  # sorted ascending
    mean: float
    std: float
    threshold: float  # tail starts here
    tail_share: float  # empirical p-value at the threshold
    tail_shape: float  # GPD xi
    tail_scale: float  # GPD sigma

    @classmethod
    def fit(cls, similarities: np.ndarray) -> NullModel:
        s = np.sort(np.asarray(similarities, dtype=np.float64))
        if len(s) < MIN_NULL_SAMPLES:
            raise SettingsError(
                f"The calibration null has only {len(s)} slices; at least "
                f"{MIN_NULL_SAMPLES} are needed. Add training volumes or lower --stride."
            )
        n_tail = max(MIN_TAIL_SAMPLES, int(round(len(s) * (1.0 - TAIL_QUANTILE))))
        n_tail = min(n_tail, len(s) - 1)
        threshold = float(s[len(s) - n_tail - 1])
        excess = s[s > threshold] - threshold
        shape, scale = _fit_tail(excess)
        model = cls(
            samples=s,
            mean=float(s.mean()),
            std=float(max(s.std(ddof=1), 1e-6)),
            threshold=threshold,
            tail_share=0.0,
            tail_shape=shape,
            tail_scale=scale,
        )
        model.tail_share = float(model._empirical_p(np.array([threshold]))[0])
        return model

    def _empirical_p(self, s: np.ndarray) -> np.ndarray:
        """Conservative permutation p-value: (1 + #null >= s) / (n + 1)."""
        n = len(self.samples)
        at_least = n - np.searchsorted(self.samples, s, side="left")
        return (1.0 + at_least) / (n + 1.0)

    def p_value(self, similarity) -> np.ndarray:
        """P(null similarity >= s); the tail beyond the threshold follows the GPD fit."""
        s = np.atleast_1d(np.asarray(similarity, dtype=np.float64))
        p = self._empirical_p(s)
        above = s > self.threshold
        if above.any():
            survival = stats.genpareto.sf(
                s[above] - self.threshold, self.tail_shape, loc=0.0, scale=self.tail_scale
            )
            p[above] = self.tail_share * survival
        return p

    def mi(self, similarity) -> np.ndarray:
        """Memorization Index in [0, 1]: the null's CDF at s (1 - p-value)."""
        return 1.0 - self.p_value(similarity)

    def oni(self, similarity) -> np.ndarray:
        """Overfit/Novelty Index in [-1, 1] as the paper: -tanh((s - mu0) / sigma0)."""
        s = np.asarray(similarity, dtype=np.float64)
        return -np.tanh((s - self.mean) / self.std)

    def summary(self) -> dict:
        q = np.quantile(self.samples, [0.01, 0.5, 0.99])
        return {
            "n_null_slices": int(len(self.samples)),
            "null_mean": self.mean,
            "null_std": self.std,
            "null_q01": float(q[0]),
            "null_median": float(q[1]),
            "null_q99": float(q[2]),
            "tail_threshold": self.threshold,
            "tail_share": self.tail_share,
            "tail_shape": self.tail_shape,
            "tail_scale": self.tail_scale,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        params = asdict(self)
        params.pop("samples")
        return {"samples": self.samples, **{k: np.array(v) for k, v in params.items()}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NullModel:
        fields = {k: float(arrays[k]) for k in cls.__dataclass_fields__ if k != "samples"}
        return cls(samples=np.asarray(arrays["samples"], dtype=np.float64), **fields)


def _fit_tail(excess: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood GPD (shape, scale); an exponential tail if the fit is unusable."""
    mean_excess = float(max(excess.mean(), 1e-9))
    if len(excess) < MIN_TAIL_SAMPLES or np.ptp(excess) <= 0:
        return 0.0, mean_excess
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
        except Exception:  # scipy raises several kinds on degenerate data
            return 0.0, mean_excess
    if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0) or shape > 1.0:
        return 0.0, mean_excess
    if shape < 0:
        # A negative shape puts a hard end on the tail, just past the largest null value:
        # a novel slice a hair above it would get p = 0. Similarities are bounded, so the
        # true tail is light, but with a few hundred null samples that end is guesswork;
        # an exponential tail (shape 0) is the conservative choice and still resolves far
        # beyond 1/n for a real copy.
        return 0.0, mean_excess
    return float(shape), float(scale)


def volume_folds(
    n_volumes: int, folds: int, seed: int = 0, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split volume ids into `folds` parts at random (seeded), each held out once.

    With `groups` (a subject number per volume), every subject's volumes fall in one part:
    a repeat scan of a held-out subject left in the bank would score like a copy.
    """
    if n_volumes < 2:
        raise SettingsError(
            f"Calibration needs at least 2 training volumes (found {n_volumes}): whole "
            "volumes are held out to learn what an unseen scan scores."
        )
    groups = np.arange(n_volumes) if groups is None else np.asarray(groups)
    subjects = np.unique(groups)
    if len(subjects) < 2:
        raise SettingsError(
            f"Calibration needs training scans of at least 2 subjects; all {n_volumes} "
            "volumes belong to one subject (PatientID, sub-* folder or grouping file)."
        )
    folds = int(min(max(folds, 2), len(subjects)))
    order = np.random.default_rng(seed).permutation(subjects)
    return [np.sort(np.flatnonzero(np.isin(groups, part))) for part in np.array_split(order, folds)]
