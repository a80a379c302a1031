"""Pure geometry shared by preprocessing, search, verification and the report.

One flip encoding: a flip is named ("none", "hflip", "vflip", "hvflip") and means a sign
per image axis, (x sign, y sign) with x the columns and y the rows. Arrays flip along the
axes whose sign is negative (`flip_axes`). A pose (flip, rotation, per-axis stretch, shift)
becomes the sampling matrix of torch's affine_grid (`pose_matrices`), and `warp` moves
images by such matrices.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Flip name -> (x sign, y sign) in image coordinates (x = columns, y = rows).
FLIPS = {
    "none": (1.0, 1.0),
    "hflip": (-1.0, 1.0),
    "vflip": (1.0, -1.0),
    "hvflip": (-1.0, -1.0),
}
FLIP_NAMES = list(FLIPS)


def flip_axes(flip: str) -> tuple[int, ...]:
    """The array axes to reverse on a [rows, cols] image for a flip: hflip (1,), vflip (0,)."""
    sx, sy = FLIPS[flip]
    return tuple(axis for axis, sign in ((0, sy), (1, sx)) if sign < 0)


def pose_matrices(signs: torch.Tensor, angle_deg, stretch, shift, size: int) -> torch.Tensor:
    """affine_grid matrices [n, 2, 3] for poses: output (query) -> input (candidate) coords.

    The forward pose is y = D R Fl x + t; sampling needs x = Fl R(-angle) D^-1 (y - t), in
    normalised units. signs [n, 2] (FLIPS values), angle_deg [n] (degrees; positive turns
    +x towards +y), stretch [n, 2] (along x, along y), shift [n, 2] (pixels of a size-pixel
    image). Differentiable in angle, stretch and shift.
    """
    a = angle_deg * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    inv_x, inv_y = 1.0 / stretch[:, 0], 1.0 / stretch[:, 1]
    fx, fy = signs[:, 0], signs[:, 1]
    # Fl @ R(-a) @ diag(1/sx, 1/sy), with R(-a) = [[cos, sin], [-sin, cos]]
    m00, m01 = fx * cos * inv_x, fx * sin * inv_y
    m10, m11 = -fy * sin * inv_x, fy * cos * inv_y
    t = shift * (2.0 / size)
    b0 = -(m00 * t[:, 0] + m01 * t[:, 1])
    b1 = -(m10 * t[:, 0] + m11 * t[:, 1])
    return torch.stack(
        [torch.stack([m00, m01, b0], dim=1), torch.stack([m10, m11, b1], dim=1)], dim=1
    )


def _as_pair(value) -> tuple[float, float]:
    values = np.broadcast_to(np.asarray(value, dtype=np.float64), (2,))
    return float(values[0]), float(values[1])


def sampling_theta(flip: str, angle_deg: float, scale, shift_px, size: int) -> np.ndarray:
    """affine_grid matrix [2, 3] of one pose (scale: one factor or a (x, y) stretch)."""
    theta = pose_matrices(
        torch.tensor([FLIPS[flip]], dtype=torch.float64),
        torch.tensor([float(angle_deg)], dtype=torch.float64),
        torch.tensor([_as_pair(scale)], dtype=torch.float64),
        torch.tensor([_as_pair(shift_px)], dtype=torch.float64),
        size,
    )
    return theta[0].numpy()


def sampling_grid(thetas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """F.affine_grid(thetas, (n, 1, height, width), align_corners=False), written out.

    Pixel centres in normalised units times each [2, 3] matrix, by broadcasting: the
    same grid as torch's (to float rounding) and differentiable, at about a third of the
    cost on a CPU, which matters in verification's inner loops.
    """
    xs = (torch.arange(width, dtype=thetas.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=thetas.dtype) * 2 + 1) / height - 1
    x, y = xs[None, None, :], ys[None, :, None]
    t = thetas[:, :, :, None, None]
    rows = [t[:, i, 0] * x + t[:, i, 1] * y + t[:, i, 2] for i in (0, 1)]
    return torch.stack(rows, dim=-1)


def warp(images: torch.Tensor, thetas) -> torch.Tensor:
    """Sample [n, S, S] images through [n, 2, 3] affine_grid matrices (zeros outside)."""
    theta = torch.as_tensor(thetas, dtype=torch.float32)
    grid = sampling_grid(theta, *images.shape[-2:])
    return F.grid_sample(
        images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, 0]
