"""Synthetic whitened slice features with the structure of real ones, for index tests.

Random unit vectors are the easy case for a compressed index (every neighbour is far). Real
slice features are not: the slices of one volume follow a smooth path (neighbouring slices
have cosine ~0.96, the two ends of a volume ~0.3), subjects of one anatomy share a direction,
and a copy is its source plus noise, so its nearest bank vectors include the source's
neighbouring slices. These generators build exactly that, in chunks, for up to 1e6 slices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Scales chosen so that adjacent slices have cosine ~0.96, slices 20 apart ~0.6, the two
# ends of a 150-slice volume ~0.3, and different subjects ~0 (whitened features).
CLUSTER_WEIGHT = 0.6
SUBJECT_WEIGHT = 0.8
STEP = 0.25
SLICE_NOISE = 0.35


def volume_chunks(
    n_volumes: int,
    slices: int = 150,
    dim: int = 768,
    seed: int = 0,
    n_clusters: int = 32,
    chunk_volumes: int = 64,
) -> Iterator[np.ndarray]:
    """Unit float32 rows, volume after volume (slices consecutive), chunk_volumes at a time."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    for start in range(0, n_volumes, chunk_volumes):
        v = min(chunk_volumes, n_volumes - start)
        base = CLUSTER_WEIGHT * centres[rng.integers(n_clusters, size=v)]
        base += SUBJECT_WEIGHT * rng.standard_normal((v, dim), dtype=np.float32)
        x = np.cumsum(STEP * rng.standard_normal((v, slices, dim), dtype=np.float32), axis=1)
        x += base[:, None, :]
        x += SLICE_NOISE * rng.standard_normal((v, slices, dim), dtype=np.float32)
        x = x.reshape(v * slices, dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def structured_bank(n_volumes: int, slices: int = 150, dim: int = 768, seed: int = 0):
    """The whole bank at once [n_volumes * slices, dim] (small banks)."""
    return np.concatenate(list(volume_chunks(n_volumes, slices, dim, seed)))


def noisy_copies(
    bank: np.ndarray, rows: np.ndarray, noise: float = 0.5, seed: int = 1
) -> np.ndarray:
    """Copies of bank rows with isotropic noise of total norm ~noise (cosine to the source
    about 1 / sqrt(1 + noise^2): 0.89 at 0.5), normalised."""
    rng = np.random.default_rng(seed)
    dim = bank.shape[1]
    q = np.asarray(bank[rows], dtype=np.float32)
    q = q + (noise / np.sqrt(dim)) * rng.standard_normal(q.shape, dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)
