"""Where a slice's foreground lies and how far it spreads along each image axis.

A crop resized back stretches a copy along the image axes by a few per cent, differently
along rows and columns; the ratio of two slices' foreground spreads measures that stretch
directly. Candidate search (fourier.py) normalises thumbnails by it, and verification
(verification.py) starts its pose search from it. Slice-level foreground (which slices of a
volume are kept) is decided when reading scans (scans/slicing.py).
"""

from __future__ import annotations

import numpy as np
import torch

# Thumbnails (uint8 scaled to [0, 1]) have a single foreground threshold, used by the pixel
# descriptors' normalisation and by verification's foreground NCC.
FOREGROUND_LEVEL = 0.08  # share of the [0, 1] range above which a thumbnail pixel is foreground
MIN_PAIR_FOREGROUND = 0.02  # a pair needs this share of foreground pixels to be compared


def foreground_moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, S, S] images in [0, 1] -> (centre [n, 2], spread [n, 2]) in pixels, (x, y) order.

    The centre is the foreground's centroid, the spread its standard deviation along the
    columns (x) and rows (y). Binary foreground, so intensity changes do not move them; an
    empty image gets the image centre and a spread of one pixel.
    """
    mask = (images > FOREGROUND_LEVEL).to(torch.float32)
    size_y, size_x = images.shape[-2:]
    ys = torch.arange(size_y, dtype=torch.float32)
    xs = torch.arange(size_x, dtype=torch.float32)
    count = mask.sum(dim=(-2, -1))
    empty = count < 1
    count = count.clamp_min(1.0)
    rows, cols = mask.sum(dim=-1), mask.sum(dim=-2)  # [n, S] profiles
    cy = (rows * ys).sum(-1) / count
    cx = (cols * xs).sum(-1) / count
    sy = ((rows * (ys - cy[:, None]) ** 2).sum(-1) / count).sqrt()
    sx = ((cols * (xs - cx[:, None]) ** 2).sum(-1) / count).sqrt()
    centre = torch.stack([cx, cy], dim=1)
    centre[empty] = torch.tensor([(size_x - 1) / 2.0, (size_y - 1) / 2.0])
    spread = torch.stack([sx, sy], dim=1).clamp_min(1.0)
    return centre, spread


def stretch_between(spread_query: torch.Tensor, spread_candidates: torch.Tensor, bounds):
    """Per-axis stretch (x, y) that maps each candidate's spread onto the query's, bounded."""
    low, high = bounds
    return (spread_query[None] / spread_candidates).clamp(low, high)


def as_unit_images(thumbnails: np.ndarray) -> torch.Tensor:
    """uint8 thumbnails (a read-only memory map too) -> float32 tensor in [0, 1]."""
    return (
        torch.from_numpy(np.require(thumbnails, requirements=["C", "W"])).to(torch.float32) / 255.0
    )
