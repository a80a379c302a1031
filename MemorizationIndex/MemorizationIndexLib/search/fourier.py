"""A second candidate source for verification: pixel descriptors blind to flips and shifts,
and, after normalising each slice's foreground, to crops.

Stage 1's encoder features move when a copy is shifted or cropped by a few pixels, and then
the true source may not be among its candidates. The magnitude of a thumbnail's Fourier
transform does not change under (circular) shifts; folding it over the frequency axes
makes it also blind to flips, and keeping only the lowest frequencies tolerates small
rotations and noise. A crop resized back stretches the slice along its axes, which moves
every frequency; resampling each thumbnail so its foreground is centred and spreads by a
fixed amount along each axis (foreground.py) undoes that stretch. Nearest neighbours under
both descriptors (plain and normalised) are proposed to stage 2 alongside stage 1's.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import warp
from .foreground import as_unit_images, foreground_moments
from .neighbours import best_distinct, exact_index, search_excluding

FREQUENCIES = 12  # lowest frequencies kept per axis (after folding)
SPREAD = 1.0 / 7.0  # foreground spread per axis after normalisation, share of the size


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


def normalised_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnails resampled so the foreground is centred and spreads SPREAD x size along
    each axis: a copy cropped and resized back lands on its source."""
    images = as_unit_images(thumbnails)
    size = images.shape[-1]
    centre, spread = foreground_moments(images)
    # Output pixel p samples input centre + (p - mid) * spread / target (normalised units).
    gain = spread / (SPREAD * size)
    offset = (centre - (size - 1) / 2.0) * (2.0 / size)
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = gain[:, 0], gain[:, 1]
    theta[:, :, 2] = offset
    out = warp(images, theta) * 255.0
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def descriptor_sets(thumbnails: np.ndarray) -> list[np.ndarray]:
    """The two descriptors of each thumbnail: as it is, and foreground-normalised."""
    return [
        fourier_descriptors(thumbnails),
        fourier_descriptors(normalised_thumbnails(thumbnails)),
    ]


def rotated(thumbnails: np.ndarray, angle_deg: float) -> np.ndarray:
    """Thumbnails turned about their centre (uint8 in, uint8 out)."""
    if angle_deg == 0:
        return thumbnails
    images = as_unit_images(thumbnails)
    a = np.radians(angle_deg)
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = float(np.cos(a))
    theta[:, 0, 1], theta[:, 1, 0] = float(np.sin(a)), -float(np.sin(a))
    return (warp(images, theta) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


class PixelIndex:
    """Exact indexes over the bank thumbnails' two Fourier descriptors.

    The descriptors tolerate a few degrees of rotation; queries are also searched turned by
    VIEW_ANGLES, so a copy rotated by up to about 15 degrees still finds its source.
    """

    VIEW_ANGLES = (0.0, -10.0, 10.0)

    def __init__(self, thumbnails: np.ndarray):
        self.indexes = [exact_index(d) for d in descriptor_sets(thumbnails)]
        self.ntotal = len(thumbnails)

    def search(
        self,
        thumbnails: np.ndarray,
        k: int,
        groups: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """[n, 2k] bank rows: per descriptor, the k nearest over all query views.
        groups: (query groups, row groups); no query finds a row of its own group."""
        k = min(k, self.ntotal)
        per_view = [descriptor_sets(rotated(thumbnails, a)) for a in self.VIEW_ANGLES]

        def nearest(index, descriptors):
            if groups is None:
                return index.search(descriptors, k)
            return search_excluding(index, descriptors, k, *groups)

        found = []
        for d, index in enumerate(self.indexes):
            sims, rows = zip(*(nearest(index, v[d]) for v in per_view), strict=True)
            found.append(
                best_distinct(
                    list(np.concatenate(sims, axis=1)), list(np.concatenate(rows, axis=1)), k
                )
            )
        return np.concatenate(found, axis=1)
