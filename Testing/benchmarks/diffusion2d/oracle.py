"""Ground truth for the diffusion benchmark: best SSIM against every training slice.

The oracle is independent of the engine: scikit-image's structural_similarity (Gaussian
window sigma 1.5, data range 255, Wang et al.'s constants) between a sample and a training
slice, both smoothed by a Gaussian of SMOOTH_SIGMA = 1 pixel, maximised over the sample's
flips (none, horizontal, vertical) and integer shifts of up to `max_shift` pixels (compared
on the overlap).

Why smoothed: SSIM of the raw pixels was tried first and mislabelled the model's copies.
The DDPM's memorised samples carry their own pixel noise, and SSIM's structure term is
dominated by that noise on low-contrast slices (the EPI template's): of 300 samples, raw SSIM
called 43 copies, 116 ambiguous and 141 novel, yet every ambiguous sample and half the
"novel" ones were noisy copies of repeated training images, by eye (and by the aligned NCC,
0.93-0.98, that the engine's stage 2 found with them). Smoothing by 1 pixel removes most of
that noise and keeps the anatomy (held-out real slices: best raw SSIM 0.18-0.53, smoothed
0.27-0.68).

Searching all of that against every training slice for every sample is slow, so
candidates are prefiltered:

1. per flip, normalised cross-correlation of 16x16 thumbnails (smoothed, mean-removed)
   against all training slices; the `top_k` best per flip go on;
2. per candidate, the NCC of the full 64 px images at every shift; the `top_shifts` best
   shifts go on;
3. SSIM at those poses; the best is the oracle's score, its training slice the source.

Bands: novel when SSIM < NOVEL_SSIM = 0.70, i.e. no closer to a training slice than real
slices of other people come (held-out subjects of the same templates reach at most 0.68 at
64 px, measured); copy when SSIM >= COPY_SSIM = 0.80, well above anything another person
reaches; ambiguous between. Checked on real held-out slices (all novel) and planted copies
(exact, flipped and shifted, noisy: all copies) in test_diffusion2d.py and by benchmark.run,
which reports the held-out distribution next to the samples'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

COPY_SSIM = 0.80
NOVEL_SSIM = 0.70
SMOOTH_SIGMA = 1.0  # pixels; 0 = raw pixels
FLIPS = ("none", "hflip", "vflip")


def flip(image: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return image
    if how == "hflip":
        return image[:, ::-1]
    if how == "vflip":
        return image[::-1, :]
    raise ValueError(how)


def _thumb(images: np.ndarray, size: int = 16) -> np.ndarray:
    """(N, H, W) -> (N, size*size) unit vectors of smoothed, mean-removed thumbnails."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    f = h // size
    sm = ndimage.gaussian_filter(images, (0, f / 2.0, f / 2.0))
    small = sm[:, : size * f, : size * f].reshape(n, size, f, size, f).mean(axis=(2, 4))
    v = small.reshape(n, -1)
    v = v - v.mean(axis=1, keepdims=True)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)


def overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The parts of a and b that meet when a is moved by (dy, dx) over b."""
    h, w = a.shape
    ya, yb = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xa, xb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    return a[ya, xa], b[yb, xb]


def smooth(images: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """(H, W) or (N, H, W) -> float32, Gaussian-smoothed in-plane by `sigma` pixels."""
    images = np.asarray(images, dtype=np.float32)
    if sigma <= 0:
        return images
    spatial = (sigma, sigma) if images.ndim == 2 else (0, sigma, sigma)
    return ndimage.gaussian_filter(images, spatial)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        structural_similarity(
            np.asarray(a, np.float64),
            np.asarray(b, np.float64),
            data_range=255.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0


@dataclass
class Match:
    ssim: float
    index: int  # training slice
    name: str  # its file name
    flip: str
    shift: tuple[int, int]
    ncc: float  # full-resolution NCC at that pose

    def label(self, copy: float = COPY_SSIM, novel: float = NOVEL_SSIM) -> str:
        return classify(self.ssim, copy, novel)


def classify(score: float, copy: float = COPY_SSIM, novel: float = NOVEL_SSIM) -> str:
    if score >= copy:
        return "copy"
    if score < novel:
        return "novel"
    return "ambiguous"


class TrainingSet:
    def __init__(self, images: np.ndarray, names: Sequence[str], sigma: float = SMOOTH_SIGMA):
        self.images = np.asarray(images, dtype=np.uint8)
        self.names = [Path(n).name for n in names]
        self.sigma = sigma
        self.work = smooth(self.images, sigma)  # what SSIM compares
        self.thumbs = _thumb(self.images)

    @classmethod
    def from_files(cls, files: Sequence[str | Path]) -> TrainingSet:
        return cls(np.stack([read_grey(f) for f in files]), [str(f) for f in files])

    def __len__(self) -> int:
        return len(self.names)


def best_match(
    query: np.ndarray,
    train: TrainingSet,
    max_shift: int = 3,
    top_k: int = 6,
    top_shifts: int = 2,
) -> Match:
    query = smooth(np.asarray(query, dtype=np.uint8), train.sigma)
    best: Match | None = None
    shifts = [
        (dy, dx)
        for dy in range(-max_shift, max_shift + 1)
        for dx in range(-max_shift, max_shift + 1)
    ]
    for how in FLIPS:
        q = np.ascontiguousarray(flip(query, how))
        sims = train.thumbs @ _thumb(q[None])[0]
        cands = np.argsort(-sims)[: min(top_k, len(train))]
        for idx in cands:
            t = train.work[idx]
            nccs = [_ncc(*overlap(q, t, dy, dx)) for dy, dx in shifts]
            for j in np.argsort(nccs)[::-1][:top_shifts]:
                dy, dx = shifts[j]
                qa, tb = overlap(q, t, dy, dx)
                s = ssim(qa, tb)
                if best is None or s > best.ssim:
                    best = Match(s, int(idx), train.names[idx], how, (dy, dx), float(nccs[j]))
    assert best is not None
    return best


def best_matches(queries, train: TrainingSet, **kw) -> list[Match]:
    return [best_match(q, train, **kw) for q in queries]


def describe_distribution(title: str, values) -> str:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return f"{title}: none"
    q = np.percentile(v, [0, 5, 50, 95, 100])
    return (
        f"{title}: n={len(v)} min {q[0]:.3f}, 5% {q[1]:.3f}, median {q[2]:.3f}, "
        f"95% {q[3]:.3f}, max {q[4]:.3f}; "
        f"copy band (>= {COPY_SSIM}) {np.mean(v >= COPY_SSIM):.1%}, "
        f"novel band (< {NOVEL_SSIM}) {np.mean(v < NOVEL_SSIM):.1%}"
    )


def read_grey(path: str | Path) -> np.ndarray:
    """A PNG (grey or RGB of grey) as (H, W) uint8."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    return arr if arr.ndim == 2 else arr[..., :3].mean(axis=2).round().astype(np.uint8)
