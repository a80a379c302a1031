"""Stage 3, the volume stage: each synthetic slice compared with its candidate training
volume resampled on that slice's own plane under a 3D pose (issue 12).

Stages 1 and 2 compare a synthetic slice with stored training slices. A copy emitted by a 3D
model is rotated and shifted about every axis, or sampled between the bank's slices (bank
stride 2, copy at stride 1), so no stored slice shows the same anatomy. Here, per synthetic
volume:

1. candidates: the training volumes its slices matched most often in stages 1-2
   (`candidate_volumes`), so only volumes whose slices point somewhere pay for stage 3;
2. pose: a shift seeded from those slice matches (volume_pose.seed_pose_from_slice_matches),
   refined by SimpleITK rigid registration of the two compact volumes on a coarse grid;
   for the most matched candidate, when that rigid fit is poor, also mirrored, reordered
   and scaled fits (volume_fit.fit_volume: headers of synthetic volumes cannot be
   trusted, and training transforms flip and zoom);
3. score: every synthetic slice's thumbnail plane (the grid its stage-2 thumbnail covers)
   is sampled in both compact volumes, the training one through the pose, and compared by
   foreground NCC (volume_pose.slice_ncc). The slice's stage-3 score is the best over the
   candidates.

The same function runs for the calibration null (held-out training volumes against the
others) and for scoring, so the score joins the calibrated statistic like stage 2's does.

Compact volumes are what the bank keeps of each training scan for this: the volume scaled
by its robust range (hot voxels excluded), resampled to `grid_mm` and stored as uint8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .affine_pose import AffinePose
from .volume_fit import FitSettings, fit_volume, hinted_frame, slice_axis_slope
from .volume_pose import (
    PLANE_AXES,
    aligned_similarity,
    coarse,
    physical_centre,
    robust_unit,
    seed_pose_from_slice_matches,
    slice_ncc,
)

VOLUME_GRID_MM = 2.0  # compact copies of the volumes: fine enough for 64-px thumbnails
REGISTRATION_GRID_MM = 4.0
# Per pyramid level, and the share of voxels the metric samples: measured on the hard cohort
# (copies rotated up to 10 degrees), the pose stays within 0.15 degrees of the truth at a
# third of the cost of the defaults of volume_pose.register_volumes.
REGISTRATION_ITERATIONS = 40
REGISTRATION_SAMPLING = 0.15
GEOMETRY_FIELDS = 18  # shape (z, y, x), origin, spacing (x, y, z), direction (row-major 3x3)


@dataclass
class CompactVolume:
    """A volume reduced to what stage 3 needs: uint8 voxels [z, y, x] (0-255 spans the
    volume's robust intensity range) and its LPS geometry."""

    voxels: np.ndarray
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0)
    spacing: np.ndarray  # mm along (x, y, z)
    direction: np.ndarray  # [3, 3], columns are the (x, y, z) index axes in LPS

    @classmethod
    def of(
        cls,
        image: sitk.Image,
        bounds: tuple[float, float] = (-np.inf, np.inf),
        grid_mm: float = VOLUME_GRID_MM,
    ) -> CompactVolume:
        """The compact copy of a canonical float image; values outside `bounds` (hot
        voxels, see ScanVolume.intensity_bounds) are clipped before the range is taken."""
        values = sitk.GetArrayFromImage(image).astype(np.float32)
        low, high = bounds
        if np.isfinite(low) or np.isfinite(high):
            np.clip(values, low, high, out=values)
        clipped = sitk.GetImageFromArray(values)
        clipped.CopyInformation(image)
        small = coarse(robust_unit(clipped), grid_mm)
        voxels = np.round(sitk.GetArrayViewFromImage(small) * 255.0).astype(np.uint8)
        return cls(
            voxels=voxels,
            origin=np.array(small.GetOrigin(), np.float64),
            spacing=np.array(small.GetSpacing(), np.float64),
            direction=np.array(small.GetDirection(), np.float64).reshape(3, 3),
        )

    def image(self) -> sitk.Image:
        """The compact volume as a float32 SimpleITK image in [0, 1]."""
        image = sitk.GetImageFromArray(self.voxels.astype(np.float32) / 255.0)
        image.SetOrigin(self.origin.tolist())
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection(self.direction.ravel().tolist())
        return image

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Linear interpolation at LPS points [..., 3] (0 outside the volume), in [0, 1]."""
        p = np.asarray(points, np.float64)
        index = np.linalg.solve(self.direction * self.spacing, (p - self.origin).reshape(-1, 3).T)
        coords = index[::-1]  # (x, y, z) index -> array axes (z, y, x)
        values = ndimage.map_coordinates(
            self.voxels, coords, output=np.float32, order=1, mode="constant", cval=0.0
        )
        return (values / 255.0).reshape(p.shape[:-1]).astype(np.float32)

    def geometry(self) -> np.ndarray:
        """[GEOMETRY_FIELDS] float64: shape, origin, spacing, direction (for the bank)."""
        return np.concatenate(
            [
                np.array(self.voxels.shape, np.float64),
                self.origin,
                self.spacing,
                self.direction.ravel(),
            ]
        )

    @classmethod
    def from_geometry(cls, voxels: np.ndarray, geometry: np.ndarray) -> CompactVolume:
        g = np.asarray(geometry, np.float64)
        return cls(
            voxels=voxels.reshape(tuple(int(v) for v in g[:3])),
            origin=g[3:6],
            spacing=g[6:9],
            direction=g[9:18].reshape(3, 3),
        )


def plane_points(
    positions: np.ndarray, thumbnail_mm: np.ndarray, axis: str, size: int
) -> np.ndarray:
    """LPS points [n, size, size, 3] of each slice's thumbnail grid: pixel centres
    thumbnail_mm apart, centred on the slice centre, along the displayed columns and rows."""
    col, row = PLANE_AXES[axis]
    offsets = np.arange(size, dtype=np.float64) + 0.5 - size / 2.0
    mm = np.asarray(thumbnail_mm, np.float64)[:, None, None, None]
    along_rows = offsets[None, :, None, None] * row
    along_cols = offsets[None, None, :, None] * col
    return np.asarray(positions, np.float64)[:, None, None, :] + mm * (along_rows + along_cols)


def candidate_volumes(matched_volumes: np.ndarray, scores: np.ndarray, k: int) -> list[int]:
    """The k training volumes most of a synthetic volume's slices matched (ties: by the
    summed stage score of those slices)."""
    ids, counts = np.unique(np.asarray(matched_volumes), return_counts=True)
    totals = np.array([np.sum(scores[matched_volumes == v]) for v in ids])
    order = np.lexsort((-totals, -counts))
    return [int(ids[i]) for i in order[:k]]


@dataclass
class VolumeMatch:
    """One synthetic volume registered onto one training volume."""

    training_volume: int  # index into the bank's (or the null's) training volumes
    pose: AffinePose  # training -> synthetic, LPS mm (mirror and scale included)
    similarity: float  # volume-level aligned foreground NCC
    slice_ncc: np.ndarray  # [n] stage-3 score of each of the synthetic volume's slices
    seconds: float
    registrations: int = 1  # 1: the rigid fit was good; more: mirrors and scales tried


def match_volume(
    query: CompactVolume,
    training: CompactVolume,
    training_volume: int,
    planes: np.ndarray,
    seed_pairs: tuple[np.ndarray, np.ndarray],
    mine: np.ndarray | None = None,
    flips=None,
    axis: str = "axial",
    alternatives: bool = True,
) -> VolumeMatch:
    """Register `training` onto `query` and score every plane of `planes`.

    seed_pairs: [m, 3] synthetic and training slice centres of the slice matches; they
    seed the shift, and their slope along the slice `axis` the scale and a mirror along
    it; flips: the m matches' in-plane flips (stages 1-2), whose majority is the first
    mirror tried (search/volume_fit.py); mine: the query sampled on `planes`, when the
    caller has it already; alternatives False: a rigid fit only (no mirrors or scales)."""
    start = time.perf_counter()
    moving, fixed = training.image(), query.image()
    seed = seed_pose_from_slice_matches(seed_pairs[0], seed_pairs[1], physical_centre(moving))
    slope = slice_axis_slope(seed_pairs[0], seed_pairs[1], axis)
    # A pyramid level only where the volumes are big enough for it on the coarse grid.
    extent = min(float(np.min(np.multiply(v.GetSize(), v.GetSpacing()))) for v in (moving, fixed))
    shrink = (2, 1) if extent >= 16 * 2 * REGISTRATION_GRID_MM else (1,)
    settings = FitSettings(
        REGISTRATION_GRID_MM, shrink, REGISTRATION_ITERATIONS, REGISTRATION_SAMPLING
    )
    try:
        hint = hinted_frame(flips, slope, axis)
        fit = fit_volume(fixed, moving, seed.pose, hint, slope, settings, alternatives)
        pose, similarity, registrations = fit.pose, fit.similarity, fit.registrations
    except RuntimeError:  # ITK gives up (too little overlap, a volume too thin): the seed
        pose = AffinePose.of(seed.pose)
        similarity, registrations = aligned_similarity(fixed, moving, pose), 1
    if mine is None:  # the query's own planes: the same for every candidate
        mine = query.sample(planes)
    theirs = training.sample(pose.apply_inverse(planes))
    ncc = np.array([slice_ncc(a, b) for a, b in zip(mine, theirs, strict=True)], np.float64)
    return VolumeMatch(
        training_volume=training_volume,
        pose=pose,
        similarity=float(similarity),
        slice_ncc=ncc,
        seconds=time.perf_counter() - start,
        registrations=registrations,
    )


@dataclass
class VolumeStageResult:
    """Stage 3 for n query slices: their scores and each query volume's best match."""

    scores: np.ndarray  # [n] best stage-3 NCC of each slice over its volume's candidates
    matches: dict[int, VolumeMatch]  # query volume id -> match of the best candidate
    registrations: int = 0  # volume pairs registered

    def summary(self) -> dict:
        """What stage 3 did (summary.json). No seconds: a report is the same on every run
        (a resumed or distributed one is checked byte for byte); time it from outside."""
        return {"volumes": len(self.matches), "registrations": self.registrations}


def volume_stage_totals(summaries: list[dict]) -> dict:
    """VolumeStageResult.summary() of runs over parts of a set, for the whole set."""
    return {k: sum(s[k] for s in summaries) for k in ("volumes", "registrations")}


def volume_stage(
    query_volumes: dict[int, CompactVolume],
    training_volume: Callable[[int], CompactVolume],
    query_vids: np.ndarray,
    positions: np.ndarray,
    thumbnail_mm: np.ndarray,
    matched_vids: np.ndarray,
    matched_positions: np.ndarray,
    stage_scores: np.ndarray,
    axis: str,
    size: int,
    candidates: int,
    check=None,
    matched_flips=None,
) -> VolumeStageResult:
    """Stage 3 over query slices grouped by volume (scoring and the null alike).

    query_vids [n]: the query volume of each slice (keys of query_volumes); positions [n, 3]
    and thumbnail_mm [n]: its plane; matched_vids [n] and matched_positions [n, 3]: the
    training volume and slice centre its stage-1/2 match lies in; stage_scores [n] break ties
    between candidates; training_volume(vid) -> CompactVolume; check() may cancel;
    matched_flips [n] (optional): the in-plane flip ("none", "hflip", ...) of each slice's
    match, whose majority is the first mirror stage 3 tries.
    """
    result = VolumeStageResult(np.full(len(query_vids), -1.0), {})
    planes_all = plane_points(positions, thumbnail_mm, axis, size)
    for vid in np.unique(query_vids):
        if check is not None:
            check()
        rows = np.flatnonzero(query_vids == vid)
        query, planes = query_volumes[int(vid)], planes_all[rows]
        mine = query.sample(planes)
        best = None
        ranked = candidate_volumes(matched_vids[rows], stage_scores[rows], candidates)
        for t in ranked:
            pairs = rows[matched_vids[rows] == t]
            match = match_volume(
                query,
                training_volume(t),
                t,
                planes,
                (positions[pairs], matched_positions[pairs]),
                mine,
                None if matched_flips is None else [str(f) for f in matched_flips[pairs]],
                axis,
                alternatives=t == ranked[0],  # mirrors and scales: the most matched only
            )
            result.scores[rows] = np.maximum(result.scores[rows], match.slice_ncc)
            result.registrations += 1
            if best is None or match.similarity > best.similarity:
                best = match
        if best is not None:
            result.matches[int(vid)] = best
    return result


class CompactVolumeStore:
    """The compact volumes of a bank as two arrays: every volume's voxels one after the
    other (flat uint8, may be memory-mapped) and a geometry row per volume."""

    def __init__(self, voxels: np.ndarray, geometry: np.ndarray):
        self.voxels = voxels
        self.geometry = np.asarray(geometry, np.float64).reshape(-1, GEOMETRY_FIELDS)
        sizes = np.prod(self.geometry[:, :3], axis=1).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        if self.offsets[-1] != len(voxels):
            raise ValueError(
                f"the volume geometry accounts for {self.offsets[-1]} voxels, the voxel "
                f"file holds {len(voxels)}"
            )

    @classmethod
    def of(cls, volumes: list[CompactVolume]) -> CompactVolumeStore:
        if not volumes:
            return cls(np.zeros(0, np.uint8), np.zeros((0, GEOMETRY_FIELDS)))
        return cls(
            np.concatenate([v.voxels.ravel() for v in volumes]),
            np.stack([v.geometry() for v in volumes]),
        )

    def __len__(self) -> int:
        return len(self.geometry)

    def __getitem__(self, vid: int) -> CompactVolume:
        start, end = self.offsets[vid], self.offsets[vid + 1]
        return CompactVolume.from_geometry(np.asarray(self.voxels[start:end]), self.geometry[vid])
