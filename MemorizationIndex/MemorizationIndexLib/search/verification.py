"""Stage 2: align each candidate training slice onto the query slice and compare pixels.

Feature similarity (stage 1) is weak exactly where a leaking generator hides best: flips,
rotations, shifts and crops move encoder features far more than they change anatomy. Here
each candidate is aligned on the query in image space, and the aligned pair is compared by
normalised cross-correlation over the foreground.

The pose maps the training slice onto the query: flip, rotation, a stretch along each of
the query's axes (a crop resized back stretches rows and columns by different amounts), and
a shift. Alignment is a cascade, each step on fewer candidates:

1. every candidate against every flip x angle (5 degree steps) of the query at 24 x 24
   (two stretches: none, and the ratio of the two slices' foreground spreads; the best
   shift of each pose from one FFT cross-correlation, its peak taken between pixels), to
   rank the candidates. At that size brains of a shared anatomy look alike, so this ranks
   but never decides;
2. at 32 x 32, on the best-ranked candidates, the 2.5 degree steps next to each flip's
   ranked best;
3. the best pose of each flip of the best candidates re-scored at full size: the highest
   foreground NCC there is the query's check value;
4. the best pose refined by projected Adam on the NCC, with exact gradients from torch.

The flips and angles are applied to the query (once per query), not to the candidates, so
each candidate is transformed once. A query whose check value lies below the bank's gate
(the level most held-out training slices stay under) is settled there: it keeps its
unrefined pose, and its stage-2 score is SETTLED_SCORE, which every null slice reaches, so
its stage-2 p-value is 1. The null's slices are gated the same way (bank/build.py), so the
gate is part of the calibrated statistic, not a shortcut beside it.
Slices are compared as the bank's uint8 thumbnails (min-max scaled, aspect kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import FLIP_NAMES, FLIPS, pose_matrices, sampling_grid, warp
from ..job import Step
from .foreground import (
    FOREGROUND_LEVEL,
    MIN_PAIR_FOREGROUND,
    as_unit_images,
    foreground_moments,
    stretch_between,
)

# Banks store the version of the stage-2 score their null was built with; bump it whenever
# the score of a pair or a slice changes, so an older bank is rebuilt rather than
# miscalibrated. 4: the ranking reads its correlation peaks between pixels, which changes
# the candidates that reach the full-size comparison, and so some slices' scores.
VERIFIER_VERSION = 4
SOFT_EDGE = 0.02  # width of the soft foreground edge the refinement differentiates through
# Stage-2 score of a slice the check settled: the lowest NCC, so its p-value is 1.
SETTLED_SCORE = -1.0
ADAM_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class VerifySettings:
    angles: tuple[float, ...] = tuple(float(a) for a in np.arange(-20.0, 20.01, 2.5))
    stretch_bounds: tuple[float, float] = (0.8, 1.3)  # per-axis stretch the search allows
    max_shift: float = 0.25  # share of the thumbnail size
    # The ranking: every candidate, every flip, these angles, at this size.
    rank_angles: tuple[float, ...] = tuple(float(a) for a in np.arange(-20.0, 20.01, 5.0))
    rank_size: int = 24
    rank_keep: int = 12  # candidates the ranking passes on to the coarse search
    local_reach: float = 2.5  # the coarse search tries `angles` this near the ranking's best
    # The gate: the share of held-out training slices whose check value lies below it.
    settle_share: float = 0.6
    coarse_size: int = 32  # the exhaustive search runs at this size, the rest at full size
    full_candidates: int = 6  # candidates re-scored at full size (best pose of each flip)
    refine_poses: int = 1  # best full-size poses per query refined by the optimiser
    refine_iterations: int = 30
    refine_step: float = 0.5  # first Adam step, in degrees, stretch per cent and pixels
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
    check: np.ndarray  # the check value: best unrefined full-size NCC (the gate compares it)
    settled: np.ndarray  # bool: below the gate (its pose is the best unrefined one)

    @property
    def score(self) -> np.ndarray:
        """The stage-2 score the null calibrates: the aligned NCC, SETTLED_SCORE if settled."""
        return np.where(self.settled, SETTLED_SCORE, self.ncc)


def settle(full: Alignments, coarse: Alignments, gate: float) -> Alignments:
    """What align(settle_below=gate) returns, from an ungated run's full and check
    alignments: queries whose check value is below the gate keep their unrefined pose."""
    settled = np.asarray(full.check) < gate

    def pick(name: str):
        mine, theirs = getattr(full, name), getattr(coarse, name)
        if name == "flip":
            return [t if s else m for m, t, s in zip(mine, theirs, settled, strict=True)]
        return np.where(settled.reshape(-1, *[1] * (np.ndim(mine) - 1)), theirs, mine)

    kept = {f.name: pick(f.name) for f in fields(full) if f.name not in ("check", "settled")}
    return Alignments(**kept, check=np.array(full.check, np.float64), settled=settled)


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


def _parabola(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor):
    """The top of the parabola through three samples: its offset from the middle one
    (clamped to half a pixel) and its rise above it; both 0 when flat or when a neighbour
    lies outside the allowed shifts (-inf)."""
    denom = left - 2.0 * centre + right
    usable = torch.isfinite(left) & torch.isfinite(right) & (denom < 0)
    safe = torch.where(usable, denom, -torch.ones_like(denom))
    offset = (0.5 * (left - right) / safe).clamp(-0.5, 0.5)
    rise = -((left - right) ** 2) / (8.0 * safe)
    zero = torch.zeros_like(denom)
    return torch.where(usable, offset, zero), torch.where(usable, rise, zero)


def best_shifts(query: torch.Tensor, variants: torch.Tensor, max_shift: int):
    """Shift (dx, dy) maximising the cross-correlation of each variant with the query, and
    the normalised peak; sub-pixel by a parabola through the peak's neighbours."""
    size = query.shape[-1]
    spectrum_q, energy_q = _centred_spectra(query)
    spectrum_v, energy_v = _centred_spectra(variants)
    corr = torch.fft.irfft2(spectrum_q[None] * torch.conj(spectrum_v), s=(size, size))
    idx = torch.arange(size)
    far = (idx > max_shift) & (idx < size - max_shift)
    corr[:, far, :] = -torch.inf
    corr[:, :, far] = -torch.inf
    norm = torch.sqrt((energy_q * energy_v).clamp_min(1e-16))
    flat = corr.flatten(1).max(dim=1)
    y, x = flat.indices // size, flat.indices % size
    n = torch.arange(len(corr))
    fy, _ = _parabola(corr[n, (y - 1) % size, x], flat.values, corr[n, (y + 1) % size, x])
    fx, _ = _parabola(corr[n, y, (x - 1) % size], flat.values, corr[n, y, (x + 1) % size])
    y = torch.where(y > size // 2, y - size, y)
    x = torch.where(x > size // 2, x - size, x)
    return torch.stack([x + fx, y + fy], dim=1), flat.values / norm


def _centred_spectra(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 of [n, S, S] images with the mean removed (a zero DC term), and each image's
    energy about its mean (sum of squares), so each image is read once."""
    pixels = images.shape[-1] * images.shape[-2]
    spectra = torch.fft.rfft2(images)
    spectra[..., 0, 0] = 0.0
    energy = (images * images).sum(dim=(-2, -1)) - images.sum(dim=(-2, -1)) ** 2 / pixels
    return spectra, energy


def peak_correlations(queries: torch.Tensor, images: torch.Tensor, max_shift: int, pairs=None):
    """[r, S, S] query variants x [m, S, S] images -> [m, r]: the normalised peak of each
    pair's cross-correlation over shifts of at most max_shift pixels. With pairs (query
    variant indices, image indices), only those pairs: [len(pairs[0])]."""
    size = queries.shape[-1]
    spectrum_q, energy_q = _centred_spectra(queries)
    spectrum_c, energy_c = _centred_spectra(images)
    if pairs is None:
        product = spectrum_q[None] * torch.conj(spectrum_c)[:, None]
        energy = energy_c[:, None] * energy_q[None]
    else:
        at_q, at_c = pairs
        product = spectrum_q[at_q] * torch.conj(spectrum_c[at_c])
        energy = energy_c[at_c] * energy_q[at_q]
    # irfft2 in two passes, keeping between them only the rows of shifts of at most
    # max_shift either way (the first and last rows of the circular correlation); then the
    # columns of such shifts likewise.
    rows = torch.fft.ifft(product, dim=-2)
    rows = torch.cat([rows[..., : max_shift + 1, :], rows[..., size - max_shift :, :]], dim=-2)
    corr = torch.fft.irfft(rows, n=size, dim=-1)
    far = torch.zeros(size, dtype=torch.bool)
    far[max_shift + 1 : size - max_shift] = True
    corr = corr.masked_fill(far, -torch.inf)
    return _subpixel_peaks(corr, max_shift) / torch.sqrt(energy.clamp_min(1e-16))


def _subpixel_peaks(corr: torch.Tensor, max_shift: int) -> torch.Tensor:
    """The peak of each [..., rows, S] correlation window, raised to the top of a parabola
    through it and its neighbours along each axis.

    At the ranking's small sizes a copy's true shift falls between pixels: its sampled
    peak drops (0.974 for an exactly shifted copy at 24 px, measured) below that of other
    subjects' slices that happen to sit on the grid, and the ranking loses the source.
    Rows are shifts 0..max_shift then -max_shift..-1, so the first and last rows are
    neighbours and the two middle ones are not.
    """
    n_rows, size = corr.shape[-2:]
    flat = corr.flatten(-2)
    best, at = flat.max(dim=-1)
    row, col = at // size, at % size

    def value(r, c):
        return flat.gather(-1, (r * size + c).unsqueeze(-1)).squeeze(-1)

    up, down = value((row - 1) % n_rows, col), value((row + 1) % n_rows, col)
    up = torch.where(row == max_shift + 1, -torch.inf, up)
    down = torch.where(row == max_shift, -torch.inf, down)
    left, right = value(row, (col - 1) % size), value(row, (col + 1) % size)
    return best + _parabola(up, best, down)[1] + _parabola(left, best, right)[1]


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
        self._grids: dict[tuple, torch.Tensor] = {}

    def _query_grids(self, angles: tuple[float, ...], size: int) -> torch.Tensor:
        """Sampling grids that turn the query by the inverse of every flip x angle pose
        (no stretch, no shift) at one size, computed once: [flips x angles, S, S, 2]."""
        if (angles, size) not in self._grids:
            n = len(FLIP_NAMES) * len(angles)
            signs = torch.tensor([FLIPS[f] for f in FLIP_NAMES])
            thetas = pose_matrices(
                signs.repeat_interleave(len(angles), dim=0),
                torch.tensor(angles, dtype=torch.float32).repeat(len(FLIP_NAMES)),
                torch.ones(n, 2),
                torch.zeros(n, 2),
                size,
            )
            inverse = torch.zeros_like(thetas)
            inverse[:, :, :2] = torch.linalg.inv(thetas[:, :, :2])
            grid = sampling_grid(inverse, size, size)
            self._grids[angles, size] = grid
        return self._grids[angles, size]

    def _pose_peaks(self, query, candidates, stretch, size: int, angles, only=None):
        """Per candidate, the peak of every pose (FFT cross-correlation at the best shift,
        at `size` pixels, over `angles`): [k, flips, angles x 2 stretches]. only: a boolean
        [k, flips, angles] of the (candidate, flip, angle) to compute; -inf elsewhere.

        Turning the query by a pose's inverse and comparing it with the candidate scores
        the pose as turning the candidate would, up to the corners each loses, and costs
        one rotation per pose rather than one per pose and candidate. The measured stretch
        is applied to the candidate, before the turn (R D rather than the pose's D R): the
        two differ by a shear of under 2 % in this range, which the refinement removes.
        """
        size = min(size, query.shape[-1])
        k, n_flips, n_angles = len(candidates), len(FLIP_NAMES), len(angles)
        if size != query.shape[-1]:
            query = F.interpolate(query[None, None], size=(size, size), mode="area")[0, 0]
            candidates = F.interpolate(candidates[:, None], size=(size, size), mode="area")[:, 0]
        stretched = warp(
            candidates,
            pose_matrices(torch.ones(k, 2), torch.zeros(k), stretch, torch.zeros(k, 2), size),
        )
        both = torch.cat([candidates, stretched])
        grid = self._query_grids(angles, size)
        turned = F.grid_sample(
            query[None, None].expand(len(grid), 1, size, size),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[:, 0]
        max_shift = int(self.settings.max_shift * size)
        if only is None:
            peaks = peak_correlations(turned, both, max_shift)
        else:
            which, flip, angle = torch.nonzero(only, as_tuple=True)
            stretched_too = torch.cat([which, which + k])
            variant = (flip * n_angles + angle).repeat(2)
            peaks = torch.full((2 * k, n_flips * n_angles), -torch.inf)
            peaks[stretched_too, variant] = peak_correlations(
                turned, both, max_shift, (variant, stretched_too)
            )
        # [stretch, k, flip, angle] -> [k, flip, angle, stretch] (the pose order above)
        peaks = peaks.view(2, k, n_flips, n_angles).permute(1, 2, 3, 0)
        return peaks.reshape(k, n_flips, -1)

    def _poses(self, which, flip, pose, stretch, angles) -> _Poses:
        """_Poses from (candidate, flip, pose within the flip) triples, unshifted; a pose
        within a flip is angle-major, then stretch (none, measured)."""
        angle, measured = pose // 2, (pose % 2).bool()
        return _Poses(
            which=which,
            flip=flip,
            angle=torch.tensor(angles, dtype=torch.float32)[angle],
            stretch=torch.where(measured[:, None], stretch[which], 1.0),
            shift=torch.zeros(len(which), 2),
        )

    def _shortlist(self, peaks: torch.Tensor, stretch, count: int, angles) -> _Poses:
        """The best pose of each flip of the `count` candidates whose best peak is highest.

        A brain is nearly left-right symmetric, so at a coarse size the wrong flip can win
        narrowly: every flip's best pose goes on to the full-size comparison.
        """
        best_of_candidate = peaks.flatten(1).max(dim=1).values
        top = torch.argsort(best_of_candidate, descending=True)[:count]
        pose = peaks[top].argmax(dim=2)  # [t, flips]
        which = top[:, None].expand_as(pose).reshape(-1)
        flip = torch.arange(len(FLIP_NAMES)).repeat(len(top))
        return self._poses(which, flip, pose.reshape(-1), stretch, angles)

    def _full_size(self, query: torch.Tensor, candidates: torch.Tensor, poses: _Poses):
        """Each pose at full size: its best shift, then the foreground NCC there."""
        size = query.shape[-1]
        images = candidates[poses.which]
        shifts, _ = best_shifts(
            query, warp(images, poses.thetas(size)), int(self.settings.max_shift * size)
        )
        poses.shift = shifts.to(torch.float32).reshape(-1, 2)
        return foreground_ncc(
            query[None].expand(len(images), -1, -1), warp(images, poses.thetas(size))
        )

    def _refine(self, queries: torch.Tensor, images: torch.Tensor, poses: _Poses):
        """Projected Adam on the soft foreground NCC of every pose, in one batch: each pose
        has its own gradient, moments and box near its start, so its result never depends
        on what else is refined with it (a joint quasi-Newton run would share line searches
        and curvature across poses, and a batch of one pose per call costs twenty times
        more). The step shrinks on a cosine from refine_step to 5 % of it; each pose keeps
        its best iterate. Returns the refined poses and the hard foreground NCC at them."""
        s = self.settings
        size = queries.shape[-1]
        signs = torch.tensor([FLIPS[FLIP_NAMES[f]] for f in poses.flip.tolist()])
        # Parameters per pose: angle (degrees), log stretch x 100 (x, y), shift (x, y).
        start = torch.cat([poses.angle[:, None], 100.0 * poses.stretch.log(), poses.shift], dim=1)
        low_stretch, high_stretch = (100.0 * math.log(b) for b in s.stretch_bounds)
        reach = torch.tensor(
            [s.refine_angle, 100 * s.refine_stretch, 100 * s.refine_stretch] + [s.refine_shift] * 2
        )
        low, high = start - reach, start + reach
        low[:, 1:3] = low[:, 1:3].clamp(low_stretch, high_stretch)
        high[:, 1:3] = high[:, 1:3].clamp(low_stretch, high_stretch)
        x = torch.minimum(torch.maximum(start, low), high)

        def soft_scores(params: torch.Tensor) -> torch.Tensor:
            thetas = pose_matrices(
                signs, params[:, 0], torch.exp(params[:, 1:3] / 100.0), params[:, 3:5], size
            )
            return _soft_foreground_ncc(queries, warp(images, thetas))

        first, second = torch.zeros_like(x), torch.zeros_like(x)
        best_x, best = x.clone(), torch.full((len(x),), -math.inf)
        with torch.enable_grad():
            for t in range(1, s.refine_iterations + 1):
                params = x.clone().requires_grad_(True)
                scores = soft_scores(params)
                (-scores.sum()).backward()
                scores = scores.detach()
                better = scores > best
                best = torch.where(better, scores, best)
                best_x[better] = x[better]
                first = ADAM_BETAS[0] * first + (1 - ADAM_BETAS[0]) * params.grad
                second = ADAM_BETAS[1] * second + (1 - ADAM_BETAS[1]) * params.grad**2
                rate = s.refine_step * (
                    0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (t - 1) / s.refine_iterations))
                )
                step = (first / (1 - ADAM_BETAS[0] ** t)) / (
                    (second / (1 - ADAM_BETAS[1] ** t)).sqrt() + 1e-8
                )
                x = torch.minimum(torch.maximum(x - rate * step, low), high)
        with torch.no_grad():
            last = soft_scores(x)
        better = last > best
        best_x[better] = x[better]
        refined = _Poses(
            poses.which,
            poses.flip,
            best_x[:, 0],
            torch.exp(best_x[:, 1:3] / 100.0),
            best_x[:, 3:5],
        )
        return refined, foreground_ncc(queries, warp(images, refined.thetas(size)))

    def _search(self, q: torch.Tensor, c: torch.Tensor, stretch, settle_below: float):
        """One query's cascade up to the refinement: (the check value, the best full-size
        pose and its score, and unless settled the refine_poses best poses and scores)."""
        s = self.settings
        ranked = self._pose_peaks(q, c, stretch, s.rank_size, s.rank_angles)
        best = ranked.flatten(1).max(dim=1).values
        keep = torch.argsort(best, descending=True)[: s.rank_keep]
        # Per kept candidate and flip, the fine angles near the ranking's best angle.
        n_flips = len(FLIP_NAMES)
        per_angle = ranked[keep].view(len(keep), n_flips, len(s.rank_angles), 2).amax(dim=-1)
        centre = torch.tensor(s.rank_angles)[per_angle.argmax(dim=-1)]  # [t, flips]
        near = (torch.tensor(s.angles) - centre[..., None]).abs() <= s.local_reach + 1e-6
        peaks = self._pose_peaks(q, c[keep], stretch[keep], s.coarse_size, s.angles, near)
        poses = self._shortlist(peaks, stretch[keep], s.full_candidates, s.angles)
        poses.which = keep[poses.which]
        scores = self._full_size(q, c, poses)
        top = torch.argsort(scores, descending=True)[: s.refine_poses]
        check = float(scores[top[0]])
        at_check = (poses.take(top[:1]), scores[top[:1]])
        if check < settle_below:
            return check, at_check, None
        return check, at_check, (poses.take(top), scores[top])

    def align(
        self,
        queries: np.ndarray,
        bank_thumbnails: np.ndarray,
        candidates: np.ndarray,
        progress: Step | None = None,
        settle_below: float | None = None,
        keep_checked: bool = False,
    ) -> Alignments | tuple[Alignments, Alignments]:
        """queries [n, S, S] uint8; candidates [n, m] bank rows (any order).

        settle_below: the bank's gate; a query whose check value is below it keeps its
        unrefined pose (settled) and is not refined. keep_checked: also return every
        query's unrefined alignment, so that settle(aligned, checked, gate) gives what a
        run with settle_below=gate gives. progress.update(done, n) follows each query: progress,
        and a place to cancel (it may raise) in what is the slowest step of scoring.
        """
        n = len(queries)
        query_images = as_unit_images(queries)
        gate = -math.inf if settle_below is None else float(settle_below)
        checks = np.zeros(n)
        at_check, searched = [], []
        with torch.inference_mode():
            _, query_spread = foreground_moments(query_images)
            for i in range(n):
                # Candidate sources overlap; each distinct row is aligned once.
                rows = np.array(list(dict.fromkeys(np.asarray(candidates[i]).tolist())))
                c = as_unit_images(bank_thumbnails[rows])
                _, spread = foreground_moments(c)
                stretch = stretch_between(query_spread[i], spread, self.settings.stretch_bounds)
                checks[i], check, best = self._search(query_images[i], c, stretch, gate)
                at_check.append((i, rows, *check))
                if best is not None:
                    searched.append((i, rows, *best))
                if progress is not None:
                    progress.update(i + 1, n)
        checked = _best_per_query(n, *_batched(at_check), checks, settled=True)
        owner, poses, bank_rows, scores = _batched(searched)
        if self.settings.refine and len(owner):
            images = as_unit_images(bank_thumbnails[bank_rows.numpy()])
            refined, refined_scores = self._refine(query_images[owner], images, poses)
            better = torch.isfinite(refined_scores) & (refined_scores > scores)
            scores = torch.where(better, refined_scores, scores)
            for name in ("angle", "stretch", "shift"):
                old, new = getattr(poses, name), getattr(refined, name)
                mask = better if old.dim() == 1 else better[:, None]
                setattr(poses, name, torch.where(mask, new, old))
        aligned = _best_per_query(n, owner, poses, bank_rows, scores, checks, settled=False)
        result = settle(aligned, checked, gate)
        return (result, checked) if keep_checked else result


def _batched(found: list) -> tuple[torch.Tensor, _Poses, torch.Tensor, torch.Tensor]:
    """(owner, poses, bank rows, scores) of every query's poses in one batch, from
    (query, candidate rows, poses, scores) per query."""
    if not found:
        empty = torch.zeros(0, dtype=torch.int64)
        poses = _Poses(empty, empty, torch.zeros(0), torch.ones(0, 2), torch.zeros(0, 2))
        return empty, poses, empty, torch.zeros(0)
    owner = torch.cat([torch.full((len(p.which),), i) for i, _, p, _ in found])
    poses = _Poses(
        *(
            torch.cat([getattr(p, k) for _, _, p, _ in found])
            for k in ("which", "flip", "angle", "stretch", "shift")
        )
    )
    bank_rows = torch.cat([torch.as_tensor(rows)[p.which] for _, rows, p, _ in found])
    return owner, poses, bank_rows, torch.cat([scores for *_, scores in found])


def _best_per_query(
    n: int, owner, poses: _Poses, bank_rows, scores, checks: np.ndarray, settled: bool
) -> Alignments:
    """The highest-scoring pose of each query (owner[j] is the query of pose j); a query
    with no pose keeps zeros (settle() replaces it)."""
    scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -1.0))
    out = Alignments(
        ncc=np.zeros(n),
        candidate=np.zeros(n, np.int64),
        flip=["none"] * n,
        angle=np.zeros(n),
        scale=np.ones((n, 2)),
        shift=np.zeros((n, 2)),
        check=np.asarray(checks, np.float64).copy(),
        settled=np.full(n, settled),
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
