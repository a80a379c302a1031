"""Slice preprocessing as MRI-CORE was trained: min-max, square grid, 3 channels, ImageNet stats.

Slices keep their physical aspect ratio: each is scaled so its longer physical side fills
the encoder grid and is centred on a zero (background) canvas, so an anisotropic or
non-square slice is not stretched.

One addition to MRI-CORE's chain: a light Gaussian pre-filter (sigma = 1 source pixel).
Per-voxel noise is the cheapest disguise of a copied scan, and it moves encoder features
(the untrained encoder's especially) far more than it changes anatomy; measured on the demo
cohort, it raised the share of sigma = 0.02 noisy copies caught per slice from 27 % to 83 %.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..geometry import flip_axes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = "ImageNet mean/std"
UNIT_RANGE = "none: [0, 1] as LiteMedSAM"


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that changes what the encoder sees; stored in the bank to refuse mismatches."""

    image_size: int = 224
    intensity: str = "min-max per slice, volume outliers excluded"
    channels: int = 3
    normalisation: str = IMAGENET  # or UNIT_RANGE (LiteMedSAM's input)
    aspect: str = "physical aspect kept, centred on a zero canvas"
    denoise_sigma: float = 1.0  # Gaussian pre-filter, in source pixels; 0 turns it off

    def to_dict(self) -> dict:
        return asdict(self)


NO_BOUNDS = (-np.inf, np.inf)


def min_max(slice_2d: np.ndarray, bounds: tuple[float, float] = NO_BOUNDS) -> np.ndarray:
    """Scale one slice to [0, 1] by the min and max of its values inside `bounds`.

    Values outside `bounds` (the volume's outliers, see scans.ScanVolume.intensity_bounds)
    do not set the range and are clipped; a constant slice becomes zeros.
    """
    inliers = slice_2d[(slice_2d >= bounds[0]) & (slice_2d <= bounds[1])]
    if inliers.size == 0:
        return np.zeros_like(slice_2d, dtype=np.float32)
    lo, hi = float(inliers.min()), float(inliers.max())
    if hi <= lo:
        return np.zeros_like(slice_2d, dtype=np.float32)
    return np.clip((slice_2d - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def fit_to_grid(slices: np.ndarray, pixel_spacing: tuple[float, float], size: int) -> torch.Tensor:
    """Resize a stack [n, rows, cols] in [0, 1] onto a [n, size, size] canvas, aspect kept."""
    n, rows, cols = slices.shape
    height_mm = rows * float(pixel_spacing[0])
    width_mm = cols * float(pixel_spacing[1])
    scale = size / max(height_mm, width_mm)
    new_rows = max(1, min(size, round(height_mm * scale)))
    new_cols = max(1, min(size, round(width_mm * scale)))
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)).unsqueeze(1)
    antialias = new_rows < rows or new_cols < cols
    x = F.interpolate(
        x, size=(new_rows, new_cols), mode="bilinear", align_corners=False, antialias=antialias
    )
    canvas = torch.zeros((n, size, size), dtype=torch.float32)
    top = (size - new_rows) // 2
    left = (size - new_cols) // 2
    canvas[:, top : top + new_rows, left : left + new_cols] = x[:, 0].clamp_(0.0, 1.0)
    return canvas


def imagenet_stats(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as float32 [1, 3, 1, 1] tensors on a device (made once by the
    encoder: creating them on a GPU is a copy that waits for the device)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def input_stats(
    spec: PreprocessSpec, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std that to_encoder_input applies for this spec: ImageNet's, or 0 and 1
    for an encoder that takes [0, 1] (LiteMedSAM)."""
    if spec.normalisation == IMAGENET:
        return imagenet_stats(device)
    zero = torch.zeros((1, 3, 1, 1), dtype=torch.float32, device=device)
    return zero, zero + 1.0


def to_encoder_input(
    canvas: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """[n, S, S] float32 in [0, 1] -> [n, 3, S, S] normalised with ImageNet statistics, on
    the canvas's device (stats: imagenet_stats of that device; the encoder does this step on
    the GPU, where it is one kernel)."""
    mean, std = stats if stats is not None else imagenet_stats(canvas.device)
    return (canvas.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


def prepare_canvas(
    slices: np.ndarray,
    pixel_spacing: tuple[float, float],
    spec: PreprocessSpec,
    flip: str = "none",
    bounds: tuple[float, float] = NO_BOUNDS,
) -> torch.Tensor:
    """The chain up to the encoder grid: [n, rows, cols] -> [n, S, S] in [0, 1] (a third of
    the network input's bytes; to_encoder_input makes the rest)."""
    scaled = np.stack([min_max(s, bounds) for s in slices]) if len(slices) else slices
    if spec.denoise_sigma > 0 and len(slices):
        scaled = ndimage.gaussian_filter(scaled, sigma=(0, spec.denoise_sigma, spec.denoise_sigma))
    if flip_axes(flip):
        scaled = np.flip(scaled, axis=tuple(a + 1 for a in flip_axes(flip)))
    return fit_to_grid(scaled, pixel_spacing, spec.image_size)


def thumbnails(
    slices: np.ndarray,
    pixel_spacing: tuple[float, float],
    size: int,
    bounds: tuple[float, float] = NO_BOUNDS,
) -> np.ndarray:
    """Small uint8 copies of slices (min-max scaled, aspect kept) for reports and checks."""
    if len(slices) == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    scaled = np.stack([min_max(s, bounds) for s in slices])
    canvas = fit_to_grid(scaled, pixel_spacing, size).numpy()
    return np.round(canvas * 255.0).astype(np.uint8)
