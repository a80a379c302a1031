"""Stage 2: align each candidate training slice onto the query slice and compare pixels.

Feature similarity (stage 1) is weak exactly where a leaking generator hides best: flips,
rotations, shifts and crops move encoder features far more than they change anatomy. Here
each candidate is aligned on the query in image space, and the aligned pair is compared by
normalised cross-correlation over the foreground.

The pose maps the training slice onto the query: flip, rotation, a stretch along each of
the query's axes (a crop resized back stretches rows and columns by different amounts), and
a shift. Alignment is an exhaustive coarse search (4 flips x a grid of angles x two
stretches: none, and the ratio of the two slices' foreground spreads; the best shift of each
pose comes from one FFT cross-correlation), then the best candidates are re-scored at full
size and their best poses refined by scipy's L-BFGS-B on the NCC, with exact gradients from
torch. Slices are compared as the bank's uint8 thumbnails (min-max scaled, aspect kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from ..geometry import FLIP_NAMES, FLIPS, pose_matrices, warp
from ..job import Step
from .foreground import (
    FOREGROUND_LEVEL,
    MIN_PAIR_FOREGROUND,
    as_unit_images,
    foreground_moments,
    stretch_between,
)

# Banks store the version of the stage-2 score their null was built with; bump it whenever
# the score of a pair changes, so an older bank is rebuilt rather than miscalibrated.
VERIFIER_VERSION = 2
SOFT_EDGE = 0.02  # width of the soft foreground edge the refinement differentiates through


@dataclass(frozen=True)
class VerifySettings:
    angles: tuple[float, ...] = tuple(float(a) for a in np.arange(-20.0, 20.01, 2.5))
    stretch_bounds: tuple[float, float] = (0.8, 1.3)  # per-axis stretch the search allows
    max_shift: float = 0.25  # share of the thumbnail size
    coarse_size: int = 32  # the exhaustive search runs at this size, the rest at full size
    full_candidates: int = 6  # candidates re-scored at full size (best pose of each flip)
    refine_poses: int = 1  # best full-size poses per query refined by the optimiser
    refine_iterations: int = 25
    # How far refinement may move a pose from where the search put it.
    refine_angle: float = 4.0  # degrees
    refine_stretch: float = 0.08  # log units per axis
    refine_shift: float = 3.0  # thumbnail pixels
    refine: bool = True


@dataclass
class Alignments:
    """Best aligned candidate per query. The pose maps the training slice onto the query:
    y = D(scale) R(angle) Flip x + shift, in centred thumbnail pixel coordinates (x
    columns, y rows). The flip is about the slice centre; a positive angle turns the +x
    axis towards +y (clockwise on screen, rows running down); scale is the stretch along
    the query's columns and rows; shift is (dx, dy) in thumbnail pixels."""

    ncc: np.ndarray  # foreground NCC of the aligned pair, [-1, 1]
    candidate: np.ndarray  # bank row
    flip: list[str]
    angle: np.ndarray
    scale: np.ndarray  # [n, 2] (along x, along y)
    shift: np.ndarray  # [n, 2] (dx, dy) in thumbnail pixels


def _ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NCC of [n, S, S] pairs over a (hard or soft) mask -> [n]."""
    count = mask.sum(dim=(-2, -1)).clamp_min(1.0)
    ma = (a * mask).sum(dim=(-2, -1)) / count
    mb = (b * mask).sum(dim=(-2, -1)) / count
    da = (a - ma[:, None, None]) * mask
    db = (b - mb[:, None, None]) * mask
    num = (da * db).sum(dim=(-2, -1))
    den = torch.sqrt((da * da).sum(dim=(-2, -1)) * (db * db).sum(dim=(-2, -1))).clamp_min(1e-8)
    return num / den


def foreground_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NCC over pixels that are foreground in either image ([n, S, S] pairs -> [n]).

    A pair with almost no foreground (the tip of the head) carries no evidence: 0.
    """
    mask = ((a > FOREGROUND_LEVEL) | (b > FOREGROUND_LEVEL)).float()
    informative = mask.sum(dim=(-2, -1)) >= MIN_PAIR_FOREGROUND * a.shape[-1] * a.shape[-2]
    ncc = _ncc(a, b, mask)
    return torch.where(informative, ncc, torch.zeros_like(ncc))


def _soft_foreground_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """foreground_ncc with a smooth mask edge, so the optimiser sees a smooth objective."""
    mask = torch.maximum(
        torch.sigmoid((a - FOREGROUND_LEVEL) / SOFT_EDGE),
        torch.sigmoid((b - FOREGROUND_LEVEL) / SOFT_EDGE),
    )
    return _ncc(a, b, mask)


def _parabolic(left: float, centre: float, right: float) -> float:
    """Sub-pixel offset of a peak from its two neighbours (0 when flat)."""
    if not (math.isfinite(left) and math.isfinite(right)):
        return 0.0  # the peak sits on the edge of the allowed shifts
    denom = left - 2.0 * centre + right
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def best_shifts(query: torch.Tensor, variants: torch.Tensor, max_shift: int):
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
    for i, at in enumerate(flat.indices.tolist()):
        y, x = divmod(at, size)
        c = corr[i]
        fy = _parabolic(float(c[(y - 1) % size, x]), float(c[y, x]), float(c[(y + 1) % size, x]))
        fx = _parabolic(float(c[y, (x - 1) % size]), float(c[y, x]), float(c[y, (x + 1) % size]))
        y = y - size if y > size // 2 else y
        x = x - size if x > size // 2 else x
        shifts.append((x + fx, y + fy))
    return shifts, flat.values / norm


def peak_correlations(query: torch.Tensor, variants: torch.Tensor, max_shift: int):
    """best_shifts' normalised peaks alone, over shifts of at most max_shift pixels.

    The means are removed in the frequency domain (a zero DC term) and the norms come from
    sums of squares, so each variant is read once.
    """
    size = query.shape[-1]
    pixels = size * size
    spectrum_q = torch.fft.rfft2(query)
    spectrum_v = torch.fft.rfft2(variants)
    spectrum_q[0, 0] = 0.0
    spectrum_v[:, 0, 0] = 0.0
    corr = torch.fft.irfft2(spectrum_q[None] * torch.conj(spectrum_v), s=(size, size))
    near = torch.cat([torch.arange(max_shift + 1), torch.arange(size - max_shift, size)])
    peaks = corr.index_select(1, near).index_select(2, near).flatten(1).max(dim=1).values
    energy_q = (query * query).sum() - query.sum() ** 2 / pixels
    energy_v = (variants * variants).sum(dim=(-2, -1)) - variants.sum(dim=(-2, -1)) ** 2 / pixels
    return peaks / torch.sqrt((energy_q * energy_v).clamp_min(1e-16))


@dataclass
class _Poses:
    """A batch of poses of candidates (indices into the query's candidate list)."""

    which: torch.Tensor  # [m] candidate position
    flip: torch.Tensor  # [m] index into FLIP_NAMES
    angle: torch.Tensor  # [m] degrees
    stretch: torch.Tensor  # [m, 2]
    shift: torch.Tensor  # [m, 2] pixels

    def thetas(self, size: int) -> torch.Tensor:
        signs = torch.tensor([FLIPS[FLIP_NAMES[f]] for f in self.flip.tolist()])
        return pose_matrices(signs, self.angle, self.stretch, self.shift, size)

    def take(self, idx) -> _Poses:
        return _Poses(
            *(getattr(self, k)[idx] for k in ("which", "flip", "angle", "stretch", "shift"))
        )


class Verifier:
    """Aligns candidates onto queries and scores the aligned pixels."""

    def __init__(self, settings: VerifySettings | None = None):
        self.settings = settings or VerifySettings()
        angles = torch.tensor(self.settings.angles, dtype=torch.float32)
        n_flips, n_angles = len(FLIP_NAMES), len(angles)
        # Coarse poses per candidate: flip-major, then angle, then stretch (none, measured).
        self._flip_of = torch.arange(n_flips).repeat_interleave(n_angles * 2)
        self._angle_of = angles.repeat_interleave(2).repeat(n_flips)
        self._measured = torch.tensor([False, True]).repeat(n_flips * n_angles)
        self._grids: dict[int, torch.Tensor] = {}

    def _rotation_grid(self, size: int) -> torch.Tensor:
        """Sampling grids of every flip x angle at one size (no stretch), computed once."""
        if size not in self._grids:
            angles = torch.tensor(self.settings.angles, dtype=torch.float32)
            n = len(FLIP_NAMES) * len(angles)
            signs = torch.tensor([FLIPS[f] for f in FLIP_NAMES])
            thetas = pose_matrices(
                signs.repeat_interleave(len(angles), dim=0),
                angles.repeat(len(FLIP_NAMES)),
                torch.ones(n, 2),
                torch.zeros(n, 2),
                size,
            )
            self._grids[size] = F.affine_grid(thetas, (n, 1, size, size), align_corners=False)
        return self._grids[size]

    def _coarse(self, query: torch.Tensor, candidates: torch.Tensor, stretch: torch.Tensor):
        """Per candidate, the coarse peak of every pose (FFT cross-correlation at the best
        shift, at the coarse size): [k, flips, poses per flip].

        The measured stretch is applied to the candidate before it is rotated (R D rather
        than the pose's D R): the two differ by a shear of under 2 % in this range, which
        the refinement removes, and the rotation grids can then be shared.
        """
        full = query.shape[-1]
        size = min(self.settings.coarse_size, full)
        k = len(candidates)
        stretched = warp(
            candidates,
            pose_matrices(torch.ones(k, 2), torch.zeros(k), stretch, torch.zeros(k, 2), full),
        )
        both = torch.stack([candidates, stretched], dim=1).reshape(2 * k, full, full)
        if size != full:
            query = F.interpolate(query[None, None], size=(size, size), mode="area")[0, 0]
            both = F.interpolate(both[:, None], size=(size, size), mode="area")[:, 0]
        grid = self._rotation_grid(size)
        r = len(grid)
        # Every image sampled at every grid in one call: images as channels, grids stacked.
        variants = F.grid_sample(
            both[None],
            grid.reshape(1, r * size, size, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[0].reshape(2 * k * r, size, size)
        peaks = peak_correlations(query, variants, int(self.settings.max_shift * size))
        # [k, stretch, flip, angle] -> [k, flip, angle, stretch] (the pose order above)
        peaks = peaks.view(k, 2, len(FLIP_NAMES), -1).permute(0, 2, 3, 1)
        return peaks.reshape(k, len(FLIP_NAMES), -1)

    def _shortlist(self, peaks: torch.Tensor, stretch: torch.Tensor) -> _Poses:
        """The best pose of each flip for the candidates whose best coarse peak is highest.

        A brain is nearly left-right symmetric, so at the coarse size the wrong flip can win
        narrowly: every flip's best pose goes on to the full-size comparison.
        """
        best_of_candidate = peaks.flatten(1).max(dim=1).values
        top = torch.argsort(best_of_candidate, descending=True)[: self.settings.full_candidates]
        pose = peaks[top].argmax(dim=2)  # [t, flips]
        which = top[:, None].expand_as(pose).reshape(-1)
        flip = torch.arange(len(FLIP_NAMES)).repeat(len(top))
        index = flip * (peaks.shape[2]) + pose.reshape(-1)
        measured = self._measured[index]
        return _Poses(
            which=which,
            flip=flip,
            angle=self._angle_of[index],
            stretch=torch.where(measured[:, None], stretch[which], 1.0),
            shift=torch.zeros(len(which), 2),
        )

    def _full_size(self, query: torch.Tensor, candidates: torch.Tensor, poses: _Poses):
        """Each pose at full size: its best shift, then the foreground NCC there."""
        size = query.shape[-1]
        images = candidates[poses.which]
        shifts, _ = best_shifts(
            query, warp(images, poses.thetas(size)), int(self.settings.max_shift * size)
        )
        poses.shift = torch.tensor(shifts, dtype=torch.float32).reshape(-1, 2)
        scores = foreground_ncc(
            query[None].expand(len(images), -1, -1), warp(images, poses.thetas(size))
        )
        return scores

    def _refine(self, queries: torch.Tensor, images: torch.Tensor, poses: _Poses) -> torch.Tensor:
        """L-BFGS-B (scipy) on the soft foreground NCC of every pose at once, gradients by
        torch; each pose bounded near its start. Updates poses in place; returns the hard
        foreground NCC at the refined poses."""
        s = self.settings
        size = queries.shape[-1]
        signs = torch.tensor([FLIPS[FLIP_NAMES[f]] for f in poses.flip.tolist()])
        # Parameters per pose: angle (degrees), log stretch x 100 (x, y), shift (x, y).
        start = torch.cat(
            [poses.angle[:, None], 100.0 * poses.stretch.log(), poses.shift], dim=1
        ).double()
        low_stretch, high_stretch = (100.0 * math.log(b) for b in s.stretch_bounds)
        reach = torch.tensor(
            [s.refine_angle, 100 * s.refine_stretch, 100 * s.refine_stretch] + [s.refine_shift] * 2,
            dtype=torch.float64,
        )
        low, high = start - reach, start + reach
        low[:, 1:3] = low[:, 1:3].clamp(low_stretch, high_stretch)
        high[:, 1:3] = high[:, 1:3].clamp(low_stretch, high_stretch)
        x0 = torch.minimum(torch.maximum(start, low), high)

        def objective(flat: np.ndarray):
            x = torch.tensor(flat.reshape(-1, 5), dtype=torch.float32, requires_grad=True)
            thetas = pose_matrices(signs, x[:, 0], torch.exp(x[:, 1:3] / 100.0), x[:, 3:5], size)
            grid = F.affine_grid(thetas, (len(x), 1, size, size), align_corners=False)
            moved = F.grid_sample(
                images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )[:, 0]
            loss = -_soft_foreground_ncc(queries, moved).sum()
            loss.backward()
            return float(loss.detach()), x.grad.double().numpy().ravel()

        with torch.enable_grad():
            result = minimize(
                objective,
                x0.numpy().ravel(),
                jac=True,
                method="L-BFGS-B",
                bounds=list(zip(low.numpy().ravel(), high.numpy().ravel(), strict=True)),
                options={"maxiter": s.refine_iterations},
            )
        x = torch.tensor(result.x.reshape(-1, 5), dtype=torch.float32)
        refined = _Poses(poses.which, poses.flip, x[:, 0], torch.exp(x[:, 1:3] / 100.0), x[:, 3:5])
        return refined, foreground_ncc(queries, warp(images, refined.thetas(size)))

    def _shortlists(self, query_images, bank_thumbnails, candidates, progress):
        """Per query: its distinct candidate rows, the best full-size poses (refine_poses of
        them) and their scores, after the exhaustive coarse search."""
        s = self.settings
        n = len(query_images)
        _, query_spread = foreground_moments(query_images)
        chosen: list[_Poses] = []
        chosen_scores = []
        kept_rows = []
        for i in range(n):
            # Candidate sources overlap; each distinct row is aligned once.
            rows = np.array(list(dict.fromkeys(np.asarray(candidates[i]).tolist())))
            kept_rows.append(rows)
            q = query_images[i]
            c = as_unit_images(bank_thumbnails[rows])
            _, spread = foreground_moments(c)
            stretch = stretch_between(query_spread[i], spread, s.stretch_bounds)
            peaks = self._coarse(q, c, stretch)
            poses = self._shortlist(peaks, stretch)
            scores = self._full_size(q, c, poses)
            keep = torch.argsort(scores, descending=True)[: s.refine_poses]
            chosen.append(poses.take(keep))
            chosen_scores.append(scores[keep])
            if progress is not None:
                progress.update(i + 1, n)
        return chosen, chosen_scores, kept_rows

    def align(
        self,
        queries: np.ndarray,
        bank_thumbnails: np.ndarray,
        candidates: np.ndarray,
        progress: Step | None = None,
    ) -> Alignments:
        """queries [n, S, S] uint8; candidates [n, m] bank rows (any order).

        progress.update(done, n) follows each query's search: progress, and a place to
        cancel (it may raise) in what is the slowest step of scoring.
        """
        n = len(queries)
        query_images = as_unit_images(queries)
        with torch.inference_mode():
            chosen, chosen_scores, kept_rows = self._shortlists(
                query_images, bank_thumbnails, candidates, progress
            )
        # One batch over every query's shortlisted poses.
        owner = torch.cat([torch.full((len(p.which),), i) for i, p in enumerate(chosen)])
        poses = _Poses(
            *(
                torch.cat([getattr(p, k) for p in chosen])
                for k in ("which", "flip", "angle", "stretch", "shift")
            )
        )
        bank_rows = torch.cat(
            [torch.as_tensor(rows)[p.which] for rows, p in zip(kept_rows, chosen, strict=True)]
        )
        scores = torch.cat(chosen_scores)
        if self.settings.refine and len(owner):
            images = as_unit_images(bank_thumbnails[bank_rows.numpy()])
            refined, refined_scores = self._refine(query_images[owner], images, poses)
            better = torch.isfinite(refined_scores) & (refined_scores > scores)
            scores = torch.where(better, refined_scores, scores)
            for name in ("angle", "stretch", "shift"):
                old, new = getattr(poses, name), getattr(refined, name)
                mask = better if old.dim() == 1 else better[:, None]
                setattr(poses, name, torch.where(mask, new, old))
        scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -1.0))
        return _best_per_query(n, owner, scores, bank_rows, poses)


def _best_per_query(n: int, owner, scores, bank_rows, poses: _Poses) -> Alignments:
    """The highest-scoring pose of each query (owner[j] is the query of pose j)."""
    out = Alignments(
        ncc=np.zeros(n),
        candidate=np.zeros(n, np.int64),
        flip=["none"] * n,
        angle=np.zeros(n),
        scale=np.ones((n, 2)),
        shift=np.zeros((n, 2)),
    )
    for i in range(n):
        mine = torch.nonzero(owner == i)[:, 0]
        if len(mine) == 0:
            continue
        j = int(mine[torch.argmax(scores[mine])])
        out.ncc[i] = float(scores[j])
        out.candidate[i] = int(bank_rows[j])
        out.flip[i] = FLIP_NAMES[int(poses.flip[j])]
        out.angle[i] = float(poses.angle[j])
        out.scale[i] = poses.stretch[j].numpy()
        out.shift[i] = poses.shift[j].numpy()
    return out
