"""Stage 2: align each candidate training slice onto the query slice and compare pixels.

Feature similarity (stage 1) is weak exactly where a leaking generator hides best: flips,
rotations, shifts and crops move encoder features far more than they change anatomy. Here
each stage-1 candidate is aligned on the query in image space, and the aligned pair is
compared by normalised cross-correlation over the foreground.

Alignment: an exhaustive coarse search (4 flips x a grid of angles x two scales; the best
shift of each comes from one FFT cross-correlation), then SimpleITK refines the best pose with a
similarity transform (rotation, isotropic scale, translation) and a correlation metric.
Slices are compared as the bank's uint8 thumbnails (min-max scaled, physical aspect kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

# Flip name -> (x sign, y sign) in image coordinates (x = columns, y = rows).
FLIP_SIGNS = {
    "none": (1.0, 1.0),
    "hflip": (-1.0, 1.0),
    "vflip": (1.0, -1.0),
    "hvflip": (-1.0, -1.0),
}
FOREGROUND = 0.08  # share of the [0, 1] range above which a thumbnail pixel is foreground
MIN_FOREGROUND = 0.02  # a pair needs this share of foreground pixels to be compared
# A refinement that fails (a nearly empty slice) is detected and dropped below; ITK's own
# warnings about it would only clutter the console.
sitk.ProcessObject.SetGlobalWarningDisplay(False)


@dataclass(frozen=True)
class VerifySettings:
    angles: tuple[float, ...] = tuple(float(a) for a in np.arange(-20.0, 20.01, 2.5))
    # A crop resized back magnifies the copy: search that scale too (refinement does the rest).
    scales: tuple[float, ...] = (1.0, 1.15)
    max_shift: float = 0.25  # share of the thumbnail size
    coarse_size: int = 32  # the exhaustive search runs at this size, refinement at full size
    shortlist: int = 2  # extra coarse poses (beyond each flip's best) re-scored at full size
    refine: bool = True


@dataclass
class Alignments:
    """Best aligned candidate per query. The pose maps the training slice onto the query:
    flip first (about the slice centre), then rotate by angle (degrees; positive turns the
    +x axis (columns) towards +y (rows), which is clockwise on screen with rows running
    down), scale, then shift (dx, dy in thumbnail pixels: columns, rows)."""

    score: np.ndarray  # foreground NCC of the aligned pair, [-1, 1]
    candidate: np.ndarray  # bank row
    flip: list[str]
    angle: np.ndarray
    scale: np.ndarray
    shift: np.ndarray  # [n, 2] (dx, dy) in thumbnail pixels


def _sampling_theta(flip: str, angle_deg: float, scale: float, shift_px, size: int) -> np.ndarray:
    """affine_grid matrix for the pose: output (query) coords -> input (candidate) coords.

    Forward pose y = R(angle) * s * Fl * x + t (x candidate, y query, centred coordinates);
    sampling needs its inverse x = Fl * R(-angle) / s * (y - t), in normalised units.
    """
    sx, sy = FLIP_SIGNS[flip]
    a = math.radians(angle_deg)
    rot_inv = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    m = np.diag([sx, sy]) @ rot_inv / scale
    t = np.array(shift_px, dtype=np.float64) * 2.0 / size
    return np.concatenate([m, (-m @ t)[:, None]], axis=1)


def warp(images: torch.Tensor, thetas: np.ndarray) -> torch.Tensor:
    """Sample [n, S, S] images through [n, 2, 3] affine_grid matrices (zeros outside)."""
    theta = torch.as_tensor(thetas, dtype=torch.float32)
    grid = F.affine_grid(theta, (len(theta), 1, *images.shape[-2:]), align_corners=False)
    return F.grid_sample(
        images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, 0]


def foreground_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NCC over pixels that are foreground in either image ([n, S, S] pairs -> [n]).

    A pair with almost no foreground (the tip of the head) carries no evidence: 0.
    """
    mask = ((a > FOREGROUND) | (b > FOREGROUND)).float()
    count = mask.sum(dim=(-2, -1))
    informative = count >= MIN_FOREGROUND * a.shape[-1] * a.shape[-2]
    count = count.clamp_min(1.0)
    ma = (a * mask).sum(dim=(-2, -1)) / count
    mb = (b * mask).sum(dim=(-2, -1)) / count
    da = (a - ma[:, None, None]) * mask
    db = (b - mb[:, None, None]) * mask
    num = (da * db).sum(dim=(-2, -1))
    den = torch.sqrt((da * da).sum(dim=(-2, -1)) * (db * db).sum(dim=(-2, -1))).clamp_min(1e-8)
    return torch.where(informative, num / den, torch.zeros_like(num))


def _parabolic(left: float, centre: float, right: float) -> float:
    """Sub-pixel offset of a peak from its two neighbours (0 when flat)."""
    if not (math.isfinite(left) and math.isfinite(right)):
        return 0.0  # the peak sits on the edge of the allowed shifts
    denom = left - 2.0 * centre + right
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def best_shifts(
    query: torch.Tensor, variants: torch.Tensor, max_shift: int, with_shifts: bool = True
):
    """Shift (dx, dy) maximising the cross-correlation of each variant with the query, and
    the normalised peak; sub-pixel by a parabola through the peak's neighbours."""
    size = query.shape[-1]
    q = query - query.mean()
    v = variants - variants.mean(dim=(-2, -1), keepdim=True)
    corr = torch.fft.irfft2(
        torch.fft.rfft2(q)[None] * torch.conj(torch.fft.rfft2(v)), s=(size, size)
    )
    idx = torch.arange(size)
    far = (idx > max_shift) & (idx < size - max_shift)
    corr[:, far, :] = -torch.inf
    corr[:, :, far] = -torch.inf
    norm = torch.sqrt((q * q).sum() * (v * v).sum(dim=(-2, -1))).clamp_min(1e-8)
    flat = corr.flatten(1).max(dim=1)
    shifts = []
    for i, at in enumerate(flat.indices.tolist() if with_shifts else []):
        y, x = divmod(at, size)
        c = corr[i]
        fy = _parabolic(float(c[(y - 1) % size, x]), float(c[y, x]), float(c[(y + 1) % size, x]))
        fx = _parabolic(float(c[y, (x - 1) % size]), float(c[y, x]), float(c[y, (x + 1) % size]))
        y = y - size if y > size // 2 else y
        x = x - size if x > size // 2 else x
        shifts.append((x + fx, y + fy))
    return shifts, flat.values / norm


class Verifier:
    """Aligns candidates onto queries and scores the aligned pixels."""

    def __init__(self, settings: VerifySettings | None = None):
        self.settings = settings or VerifySettings()
        self.poses = [
            (f, a, sc)
            for f in FLIP_SIGNS
            for sc in self.settings.scales
            for a in self.settings.angles
        ]
        self._grids: dict[int, torch.Tensor] = {}

    def _pose_grid(self, size: int) -> torch.Tensor:
        """Sampling grids of every coarse pose at one size, computed once."""
        if size not in self._grids:
            thetas = np.stack([_sampling_theta(f, a, sc, (0, 0), size) for f, a, sc in self.poses])
            self._grids[size] = F.affine_grid(
                torch.as_tensor(thetas, dtype=torch.float32),
                (len(thetas), 1, size, size),
                align_corners=False,
            )
        return self._grids[size]

    def _coarse(self, query: torch.Tensor, candidates: torch.Tensor):
        """Shortlist of (candidate, flip, angle): FFT cross-correlation over every flip and
        angle at the coarse size, each pose at its best shift."""
        full = query.shape[-1]
        size = min(self.settings.coarse_size, full)
        if size != full:
            query = F.interpolate(query[None, None], size=(size, size), mode="area")[0, 0]
            candidates = F.interpolate(candidates[:, None], size=(size, size), mode="area")[:, 0]
        k, p = len(candidates), len(self.poses)
        grid = self._pose_grid(size)
        variants = F.grid_sample(
            candidates[:, None].repeat_interleave(p, dim=0),
            grid.repeat(k, 1, 1, 1),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[:, 0]  # [k*p, S, S]
        _, peaks = best_shifts(
            query, variants, int(self.settings.max_shift * size), with_shifts=False
        )
        found = []
        # The best pose of each flip, then the next best overall: a brain is nearly
        # left-right symmetric, so at the coarse size the wrong flip can win narrowly.
        n_angles = len(self.poses) // len(FLIP_SIGNS)  # poses per flip
        by_flip = (
            peaks.view(k, len(FLIP_SIGNS), n_angles).transpose(0, 1).reshape(len(FLIP_SIGNS), -1)
        )
        picks = []
        for f, row in enumerate(by_flip):
            j = int(torch.argmax(row))
            cand, angle_idx = divmod(j, n_angles)
            picks.append(cand * p + f * n_angles + angle_idx)
        for j in torch.argsort(peaks, descending=True)[: self.settings.shortlist].tolist():
            if j not in picks:
                picks.append(j)
        for best in picks:
            flip, angle, scale = self.poses[best % p]
            found.append((best // p, flip, angle, scale))
        return found

    def _refine(self, query: np.ndarray, candidate: np.ndarray, flip, angle, scale, shift):
        """SimpleITK similarity registration from the coarse pose; returns (angle, scale, shift)."""
        size = query.shape[-1]
        sx, sy = FLIP_SIGNS[flip]
        flipped = candidate[:: int(sy), :: int(sx)]
        fixed = sitk.GetImageFromArray(np.ascontiguousarray(query, dtype=np.float32))
        moving = sitk.GetImageFromArray(np.ascontiguousarray(flipped, dtype=np.float32))
        centre = ((size - 1) / 2.0, (size - 1) / 2.0)
        # SimpleITK maps fixed (query) points to moving (candidate) points: the inverse pose.
        transform = sitk.Similarity2DTransform()
        transform.SetCenter(centre)
        a = math.radians(angle)
        inv_rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        transform.SetAngle(-a)
        transform.SetScale(1.0 / scale)
        transform.SetTranslation(tuple(float(x) for x in -(inv_rot @ np.asarray(shift)) / scale))
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsCorrelation()
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-3, numberOfIterations=60, relaxationFactor=0.6
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(transform, inPlace=True)
        try:
            reg.Execute(fixed, moving)
        except RuntimeError:
            return angle, scale, shift
        params = transform.GetParameters()
        if not all(math.isfinite(x) for x in params):
            return angle, scale, shift
        inverse = transform.GetInverse()
        inverse = sitk.Similarity2DTransform(inverse)
        new_angle = math.degrees(inverse.GetAngle())
        new_scale = inverse.GetScale()
        if not 0.8 <= new_scale <= 1.3:
            return angle, scale, shift
        new_shift = tuple(float(x) for x in inverse.GetTranslation())
        return new_angle, new_scale, new_shift

    def align(
        self, queries: np.ndarray, bank_thumbnails: np.ndarray, candidates: np.ndarray
    ) -> Alignments:
        """queries [n, S, S] uint8; candidates [n, m] bank rows (stage-1 best first)."""
        n = len(queries)
        out = Alignments(
            score=np.zeros(n),
            candidate=np.zeros(n, np.int64),
            flip=["none"] * n,
            angle=np.zeros(n),
            scale=np.ones(n),
            shift=np.zeros((n, 2)),
        )
        size = queries.shape[-1]
        with torch.inference_mode():
            for i in range(n):
                rows = np.asarray(candidates[i])
                q = torch.from_numpy(queries[i].astype(np.float32) / 255.0)
                c = torch.from_numpy(bank_thumbnails[rows].astype(np.float32) / 255.0)
                # Shortlisted poses: rotate at full size, find the shift there, score pixels.
                shortlist = self._coarse(q, c)
                rotated = warp(
                    c[[w for w, *_ in shortlist]],
                    np.stack(
                        [_sampling_theta(f, a, sc, (0, 0), size) for _, f, a, sc in shortlist]
                    ),
                )
                shifts, _ = best_shifts(q, rotated, int(self.settings.max_shift * size))
                thetas = np.stack(
                    [
                        _sampling_theta(f, a, sc, sh, size)
                        for (_, f, a, sc), sh in zip(shortlist, shifts, strict=True)
                    ]
                )
                scores = foreground_ncc(
                    q[None].expand(len(shortlist), -1, -1),
                    warp(c[[w for w, *_ in shortlist]], thetas),
                )
                best = int(torch.argmax(scores))
                (which, flip, angle, scale), shift = shortlist[best], shifts[best]
                score = float(scores[best])
                if self.settings.refine:
                    r_angle, r_scale, r_shift = self._refine(
                        q.numpy(), c[which].numpy(), flip, angle, scale, shift
                    )
                    theta = _sampling_theta(flip, r_angle, r_scale, r_shift, size)[None]
                    refined = float(foreground_ncc(q[None], warp(c[which : which + 1], theta))[0])
                    # Keep the refinement only where it helped (it can fail on sparse slices).
                    if math.isfinite(refined) and refined > score:
                        score, angle, scale, shift = refined, r_angle, r_scale, r_shift
                out.score[i] = score if math.isfinite(score) else -1.0
                out.candidate[i] = rows[which]
                out.flip[i] = flip
                out.angle[i] = angle
                out.scale[i] = scale
                out.shift[i] = shift
        return out
