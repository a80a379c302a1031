"""Per-layer ZCA whitening with a Ledoit-Wolf shrunk covariance.

A bank can hold fewer slices than the 768 feature dimensions; a bare inverse square root
of the sample covariance then blows up its null directions. Shrinking towards a scaled
identity keeps every direction's gain bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """Ledoit & Wolf (2004) optimal shrinkage intensity for centred samples [n, d]."""
    n, d = centred.shape
    if n < 2:
        return 1.0
    x = centred.astype(np.float64)
    x2 = x * x
    trace = x2.sum() / n
    mu = trace / d
    beta_sum = float((x2.T @ x2).sum())
    cov = x.T @ x / n
    delta_sum = float((cov * cov).sum())
    beta = (beta_sum / n - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * trace + d * mu * mu) / d
    if delta <= 0:
        return 1.0
    return float(min(max(beta / delta, 0.0), 1.0))


@dataclass
class Whitener:
    """x -> normalise((x - mean) @ matrix): symmetric (ZCA) whitening, then unit length."""

    mean: np.ndarray
    matrix: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, features: np.ndarray, min_shrinkage: float = 1e-3) -> Whitener:
        x = np.asarray(features, dtype=np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        n, d = centred.shape
        shrinkage = max(ledoit_wolf_shrinkage(centred), min_shrinkage)
        cov = centred.T @ centred / max(n - 1, 1)
        target = np.trace(cov) / d
        if target <= 0:
            target = 1.0
        shrunk = (1.0 - shrinkage) * cov + shrinkage * target * np.eye(d)
        eigval, eigvec = np.linalg.eigh(shrunk)
        eigval = np.maximum(eigval, eigval.max() * 1e-12)
        matrix = (eigvec / np.sqrt(eigval)) @ eigvec.T
        return cls(mean.astype(np.float32), matrix.astype(np.float32), float(shrinkage))

    def transform(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float32) - self.mean) @ self.matrix
        return l2_normalise(z)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
