"""A second candidate source for verification: shift- and flip-invariant pixel descriptors.

Stage 1's encoder features move when a copy is shifted or cropped by a few pixels, and then
the true source may not be among its candidates. The magnitude of a thumbnail's Fourier
transform does not change under (circular) shifts; folding it over the frequency axes
makes it also blind to flips, and keeping only the lowest frequencies, pooled over small
blocks, tolerates small rotations, crops and noise. Nearest neighbours under this
descriptor are proposed to stage 2 alongside stage 1's candidates.
"""

from __future__ import annotations

import numpy as np

FREQUENCIES = 12  # lowest frequencies kept per axis (after folding)


def fourier_descriptors(thumbnails: np.ndarray, frequencies: int = FREQUENCIES) -> np.ndarray:
    """[n, S, S] uint8 thumbnails -> [n, frequencies**2] unit vectors (float32)."""
    x = thumbnails.astype(np.float32) / 255.0
    x = x - x.mean(axis=(1, 2), keepdims=True)
    mag = np.abs(np.fft.fft2(x))
    size = x.shape[-1]
    # |F(u, v)| of a real image equals |F(-u, -v)|; a flip maps (u, v) to (-u, v) or
    # (u, -v). Averaging the four sign patterns makes the descriptor flip-invariant.
    flipped_u = np.roll(mag[:, ::-1, :], 1, axis=1)
    flipped_v = np.roll(mag[:, :, ::-1], 1, axis=2)
    folded = (mag + flipped_u + flipped_v + np.roll(flipped_u[:, :, ::-1], 1, axis=2)) / 4.0
    f = min(frequencies, size // 2)
    low = folded[:, :f, :f].reshape(len(x), -1)
    low = np.log1p(low)
    low -= low.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(low, axis=1, keepdims=True)
    return (low / np.maximum(norms, 1e-12)).astype(np.float32)
