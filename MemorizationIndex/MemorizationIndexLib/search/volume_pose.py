"""Volume stage: the 3D rigid pose of a synthetic volume on a training volume (issue 12).

A copy emitted by a 3D generative model does not keep the training scan's slice grid: it is
rotated and shifted about every axis, so each synthetic slice cuts across several training
slices and the nearest stored slice is the wrong thing to compare it with. This module

1. seeds a 3D rigid pose from the slice matches of one synthetic volume to one training
   volume (robust least squares on point pairs: RANSAC + Kabsch),
2. refines it by SimpleITK intensity registration on a coarse grid (seconds, not minutes)
   and scores the aligned volumes (foreground NCC), and
3. samples the training volume on the synthetic slices' planes under that pose, so that a
   per-slice comparison costs nothing for stride, slice spacing or out-of-plane tilt.

Conventions (the engine's canonical frame, see scans.py):
- points are LPS physical millimetres (x = left, y = posterior, z = superior);
- a `RigidPose` maps a TRAINING point to where that anatomy lies in the SYNTHETIC volume:
  p_syn = R (p_train - centre) + centre + shift, with `centre` the training volume's physical
  centre (the centre of its voxel grid), so `shift_mm` reads as "how far the copy moved";
- R = Rz(SI) @ Ry(AP) @ Rx(LR): right-handed rotations in degrees about +x (left-right axis),
  +y (anterior-posterior axis), +z (superior-inferior axis); the LR rotation applies first;
- `RigidPose.to_sitk()` is the inverse map (synthetic -> training), which is what
  SimpleITK's Resample and registration framework use (output/fixed point -> input/moving).

Intensities are normalised by percentile ranges, never min/max: generative models emit hot
voxels, and one of them would squash a min-max scaled volume to black.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

AXES = ("axial", "coronal", "sagittal")
AXIS_OF = {"axial": 0, "coronal": 1, "sagittal": 2}  # array axis of [z, y, x]
# In-plane unit vectors (LPS) of a displayed slice's columns and rows, per axis. Coronal and
# sagittal slices are shown superior up (scans.py flips their rows), so rows run along -z.
PLANE_AXES = {
    "axial": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "coronal": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}
ROBUST_PERCENTILES = (0.5, 99.5)
FOREGROUND = 0.15  # share of the robust range above which a voxel is foreground


# --------------------------------------------------------------------------- the pose
def rotation_matrix(angles_deg) -> np.ndarray:
    """R = Rz @ Ry @ Rx from right-handed angles in degrees about x (LR), y (AP), z (SI)."""
    ax, ay, az = np.radians(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_angles(matrix) -> np.ndarray:
    """Inverse of `rotation_matrix`: degrees about (LR, AP, SI) for R = Rz @ Ry @ Rx."""
    r = np.asarray(matrix, dtype=np.float64)
    ay = -np.arcsin(np.clip(r[2, 0], -1.0, 1.0))
    ax = np.arctan2(r[2, 1], r[2, 2])
    az = np.arctan2(r[1, 0], r[0, 0])
    return np.degrees([ax, ay, az])


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The nearest proper rotation (SVD), so float round-off never reaches SimpleITK."""
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


def homogeneous_matrix(linear, shift_mm, centre_mm) -> np.ndarray:
    """4x4 matrix of p -> linear @ (p - centre) + centre + shift."""
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = np.asarray(centre_mm) + shift_mm - np.asarray(linear) @ centre_mm
    return out


@dataclass(frozen=True)
class RigidPose:
    """p_syn = matrix @ (p_train - centre_mm) + centre_mm + shift_mm (LPS mm)."""

    matrix: np.ndarray
    shift_mm: np.ndarray
    centre_mm: np.ndarray

    @classmethod
    def from_angles(cls, angles_deg, shift_mm, centre_mm) -> RigidPose:
        return cls(
            rotation_matrix(angles_deg),
            np.asarray(shift_mm, dtype=np.float64),
            np.asarray(centre_mm, dtype=np.float64),
        )

    @classmethod
    def identity(cls, centre_mm=(0.0, 0.0, 0.0)) -> RigidPose:
        return cls.from_angles((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), centre_mm)

    @property
    def angles_deg(self) -> np.ndarray:
        """Degrees about the (LR, AP, SI) axes, R = Rz @ Ry @ Rx."""
        return rotation_angles(self.matrix)

    @property
    def rotation_deg(self) -> float:
        """The total rotation angle (degrees), whatever its axis."""
        cos = (np.trace(self.matrix) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    def apply(self, points) -> np.ndarray:
        """Training points [..., 3] -> synthetic points."""
        p = np.asarray(points, dtype=np.float64)
        return (p - self.centre_mm) @ self.matrix.T + self.centre_mm + self.shift_mm

    def apply_inverse(self, points) -> np.ndarray:
        """Synthetic points [..., 3] -> training points."""
        p = np.asarray(points, dtype=np.float64)
        return (p - self.centre_mm - self.shift_mm) @ self.matrix + self.centre_mm

    def recentred(self, centre_mm) -> RigidPose:
        """The same map, written about another centre (the shift changes, R does not)."""
        c = np.asarray(centre_mm, dtype=np.float64)
        return RigidPose(self.matrix, self.apply(c) - c, c)

    def homogeneous(self) -> np.ndarray:
        """4x4 LPS matrix of the map training -> synthetic."""
        return homogeneous_matrix(self.matrix, self.shift_mm, self.centre_mm)

    @classmethod
    def from_summary(cls, values: dict) -> RigidPose:
        """The pose `summary()` wrote (a volumes.csv row); KeyError or ValueError when the
        row has none."""
        get = lambda *keys: [float(values[k]) for k in keys]  # noqa: E731
        return cls.from_angles(
            get("angle_lr_deg", "angle_ap_deg", "angle_si_deg"),
            get("shift_l_mm", "shift_p_mm", "shift_s_mm"),
            get("centre_l_mm", "centre_p_mm", "centre_s_mm"),
        )

    def to_sitk(self) -> sitk.Euler3DTransform:
        """The resampling map synthetic -> training, as SimpleITK's Resample wants it."""
        inverse = nearest_rotation(self.matrix.T)
        t = sitk.Euler3DTransform()
        t.SetComputeZYX(True)
        t.SetCenter([float(v) for v in self.centre_mm])
        t.SetMatrix([float(v) for v in inverse.ravel()])
        t.SetTranslation([float(v) for v in -(inverse @ self.shift_mm)])
        return t

    @classmethod
    def from_sitk(cls, transform: sitk.Transform, centre_mm) -> RigidPose:
        """From a synthetic -> training rigid SimpleITK transform, about `centre_mm`."""
        euler = (
            sitk.Euler3DTransform(transform)
            if not isinstance(transform, sitk.Euler3DTransform)
            else transform
        )
        m = np.array(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
        c = np.array(euler.GetCenter(), dtype=np.float64)
        t = np.array(euler.GetTranslation(), dtype=np.float64)
        # p_train = m (p_syn - c) + c + t  =>  p_syn = m^T (p_train - c - t) + c
        forward = nearest_rotation(m.T)
        pose = cls(forward, forward @ (-t), c)
        return pose.recentred(centre_mm)

    def summary(self) -> dict:
        """Plain numbers for a report or volumes.csv."""
        a = self.angles_deg
        return {
            "angle_lr_deg": float(a[0]),
            "angle_ap_deg": float(a[1]),
            "angle_si_deg": float(a[2]),
            "shift_l_mm": float(self.shift_mm[0]),
            "shift_p_mm": float(self.shift_mm[1]),
            "shift_s_mm": float(self.shift_mm[2]),
            "centre_l_mm": float(self.centre_mm[0]),
            "centre_p_mm": float(self.centre_mm[1]),
            "centre_s_mm": float(self.centre_mm[2]),
        }


def physical_centre(image: sitk.Image) -> np.ndarray:
    """The physical point (LPS mm) at the centre of an image's voxel grid."""
    index = [(n - 1) / 2.0 for n in image.GetSize()]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index), dtype=np.float64)


# --------------------------------------------------------------------------- 1. the seed
def umeyama(
    source: np.ndarray, target: np.ndarray, weights=None, with_scale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991): sR and b with target ~ s R source + b, R a
    proper rotation, s > 0 the isotropic scale (1 when `with_scale` is False: Kabsch)."""
    w = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    ms, mt = w @ source, w @ target
    h = (source - ms).T @ ((target - mt) * w[:, None])
    u, sigma, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    if with_scale:
        spread = float(w @ np.sum((source - ms) ** 2, axis=1))
        r = r * (float(sigma @ [1.0, 1.0, d]) / spread if spread > 0 else 1.0)
    return r, mt - r @ ms


def kabsch(source: np.ndarray, target: np.ndarray, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation b with target ~ R source + b (no scale)."""
    return umeyama(source, target, weights, with_scale=False)


@dataclass
class SeedResult:
    """The seed pose, which matches agree with it, and how well (RMS over inliers, mm)."""

    pose: RigidPose
    inliers: np.ndarray  # bool [n_matches]
    rms_mm: float
    rotation_estimated: bool  # False: only a shift (no in-plane poses: centres are collinear)


def _match_points(synthetic_positions, training_positions, inplane, axis, arm_mm):
    """Three point pairs per match: the slice centre and two points `arm_mm` along the
    slice's columns and rows, carried by the in-plane pose (training -> synthetic)."""
    col, row = PLANE_AXES[axis]
    n = len(synthetic_positions)
    offsets = np.array([[0.0, 0.0], [arm_mm, 0.0], [0.0, arm_mm]])
    angle = np.radians(inplane[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    train_pts = np.empty((n, 3, 3))
    synth_pts = np.empty((n, 3, 3))
    for j, (u, v) in enumerate(offsets):
        train_pts[:, j] = training_positions + u * col + v * row
        # y = R(angle) x + shift in the slice's (column, row) mm; +angle turns +col to +row.
        su = cos * u - sin * v + inplane[:, 1]
        sv = sin * u + cos * v + inplane[:, 2]
        synth_pts[:, j] = synthetic_positions + su[:, None] * col + sv[:, None] * row
    return train_pts, synth_pts


def _shift_only_seed(syn, trn, w, centre, inlier_mm: float) -> SeedResult:
    """Collinear slice centres: a robust shift only (median, then the inliers' weighted mean)."""
    delta = syn - trn
    med = np.median(delta, axis=0)
    inliers = np.linalg.norm(delta - med, axis=1) <= inlier_mm
    if not inliers.any():
        inliers[:] = True
    shift = (w[inliers] @ delta[inliers]) / w[inliers].sum()
    rms = float(np.sqrt(np.mean(np.sum((delta[inliers] - shift) ** 2, axis=1))))
    return SeedResult(RigidPose(np.eye(3), shift, centre), inliers, rms, False)


def _ransac_inliers(fit, residual, w, inlier_mm: float, iterations: int, seed: int):
    """The matches consistent with the best pose fitted on random pairs of them."""
    n = len(w)
    best = np.ones(n, dtype=bool)
    if n < 3:
        return best
    rng = np.random.default_rng(seed)
    best_score = -1.0
    for _ in range(iterations):
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=2, replace=False)] = True
        inl = residual(*fit(mask)) <= inlier_mm
        score = float(w[inl].sum())
        if score > best_score:
            best, best_score = inl, score
    return best if best.sum() >= 2 else np.ones(n, dtype=bool)


def seed_pose_from_slice_matches(
    synthetic_positions,
    training_positions,
    training_centre_mm,
    inplane=None,
    axis: str = "axial",
    weights=None,
    inlier_mm: float = 8.0,
    arm_mm: float = 40.0,
    iterations: int = 300,
    seed: int = 0,
) -> SeedResult:
    """A first 3D rigid pose (training -> synthetic) from one volume's slice matches.

    synthetic_positions, training_positions: [n, 3] LPS mm of each synthetic slice's centre
    and of the centre of the training slice it matched (ScanVolume.positions / SliceInfo).
    inplane: optional [n, 3] per-match in-plane pose (angle_deg, shift_col_mm, shift_row_mm)
    mapping the training slice onto the synthetic one, y = R(angle) x + shift, in mm along the
    displayed slice's columns and rows (stage 2's pose, converted from thumbnail pixels; a
    positive angle turns +columns towards +rows). Slice centres lie on one line, so without
    in-plane poses only a shift is estimated; with them, the in-plane shifts varying along
    the slice axis reveal an out-of-plane tilt. Outliers (wrong matches) are rejected by
    RANSAC over pairs of matches, then the inliers are refitted by weighted Kabsch.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)} (got {axis!r})")
    syn = np.asarray(synthetic_positions, dtype=np.float64).reshape(-1, 3)
    trn = np.asarray(training_positions, dtype=np.float64).reshape(-1, 3)
    if len(syn) != len(trn) or len(syn) == 0:
        raise ValueError("need as many training as synthetic positions, at least one")
    centre = np.asarray(training_centre_mm, dtype=np.float64)
    w = np.ones(len(syn)) if weights is None else np.clip(np.asarray(weights, float), 1e-6, None)

    if inplane is None:
        return _shift_only_seed(syn, trn, w, centre, inlier_mm)
    planes = np.asarray(inplane, dtype=np.float64).reshape(-1, 3)
    train_pts, synth_pts = _match_points(syn, trn, planes, axis, arm_mm)

    def fit(mask):
        return kabsch(
            train_pts[mask].reshape(-1, 3), synth_pts[mask].reshape(-1, 3), np.repeat(w[mask], 3)
        )

    def residual(r, b):
        moved = train_pts @ r.T + b
        return np.linalg.norm(moved - synth_pts, axis=2).max(axis=1)

    best = _ransac_inliers(fit, residual, w, inlier_mm, iterations, seed)
    for _ in range(2):  # refit on the inliers, then re-select once
        r, b = fit(best)
        res = residual(r, b)
        refined = res <= inlier_mm
        if refined.sum() >= 2:
            best = refined
    r, b = fit(best)
    res = residual(r, b)
    # target = r p + b = r (p - c) + c + shift  =>  shift = b + r c - c
    pose = RigidPose(nearest_rotation(r), b + r @ centre - centre, centre)
    rms = float(np.sqrt(np.mean(res[best] ** 2)))
    return SeedResult(pose, best, rms, True)


# --------------------------------------------------------------------------- intensities
def robust_unit(image: sitk.Image, percentiles=ROBUST_PERCENTILES) -> sitk.Image:
    """Float32 image scaled so the given percentiles map to 0 and 1, clipped to [0, 1]."""
    values = sitk.GetArrayViewFromImage(image)
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    out = np.clip((np.nan_to_num(values, nan=lo) - lo) * scale, 0.0, 1.0).astype(np.float32)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def coarse(image: sitk.Image, grid_mm: float) -> sitk.Image:
    """The image smoothed and resampled to `grid_mm` voxels when it is finer than that."""
    spacing = np.array(image.GetSpacing())
    if np.all(spacing >= grid_mm * 0.95):
        return image
    smooth = image
    for axis, s in enumerate(spacing):  # only along the axes that get coarser
        if s < grid_mm * 0.95:
            smooth = sitk.RecursiveGaussian(smooth, float((grid_mm - s) / 2.0), direction=axis)
    size = [
        max(1, int(round(n * s / grid_mm))) for n, s in zip(image.GetSize(), spacing, strict=True)
    ]
    new_spacing = [n * s / m for n, s, m in zip(image.GetSize(), spacing, size, strict=True)]
    # Keep the physical extent: the first voxel centre moves by half the change of spacing.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    half = (np.array(new_spacing) - spacing) / 2.0
    origin = np.array(image.GetOrigin()) + direction @ half
    return sitk.Resample(
        smooth,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        new_spacing,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def foreground_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two arrays over a mask (0 when it is too small or flat)."""
    if mask.sum() < 16:
        return 0.0
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def slice_ncc(synthetic_slice: np.ndarray, training_slice: np.ndarray) -> float:
    """Foreground NCC of one slice pair, each scaled by its own percentile range.

    The foreground is where either slice is above FOREGROUND of its range, so a copy is
    judged on its anatomy and not on how much background noise surrounds it.
    """

    def unit(x):
        lo, hi = np.percentile(x, ROBUST_PERCENTILES)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(x)

    a, b = unit(np.asarray(synthetic_slice)), unit(np.asarray(training_slice))
    return foreground_ncc(a, b, (a > FOREGROUND) | (b > FOREGROUND))


def aligned_similarity(fixed: sitk.Image, moving: sitk.Image, pose: RigidPose) -> float:
    """Volume-level aligned similarity: the training volume resampled on the synthetic grid
    under the pose, then NCC over the voxels that are foreground in both and inside the
    training field of view (the overlap of anatomy, so heads of a similar outline but other
    insides do not score on their outline alone)."""
    f = robust_unit(fixed)
    m = robust_unit(moving)
    transform = pose.to_sitk()
    moved = sitk.Resample(m, f, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    inside = sitk.Resample(
        sitk.Cast(m * 0 + 1, sitk.sitkFloat32), f, transform, sitk.sitkLinear, 0.0
    )
    fa = sitk.GetArrayViewFromImage(f)
    ma = sitk.GetArrayViewFromImage(moved)
    mask = (fa > FOREGROUND) & (ma > FOREGROUND) & (sitk.GetArrayViewFromImage(inside) > 0.99)
    return foreground_ncc(fa, ma, mask)


# --------------------------------------------------------------------------- 2. refine
@dataclass
class Registration:
    """The refined pose (training -> synthetic), its aligned similarity, and its cost."""

    pose: RigidPose
    similarity: float  # foreground NCC after alignment, [-1, 1]
    metric: float  # the optimiser's final metric value (lower is better)
    iterations: int
    seconds: float
    stop: str = ""
    extra: dict = field(default_factory=dict)


def registration_method(metric, sampling, seed, iterations, shrink):
    """SimpleITK's registration set up as register_volumes describes."""
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    elif metric == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        raise ValueError(f"metric must be 'mattes' or 'correlation' (got {metric!r})")
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # SimpleITK reads a seed of 0 as "seed from the wall clock": shift ours off it.
    reg.SetMetricSamplingPercentage(float(sampling), int(seed) + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=int(iterations),
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(0.0, s - 1.0) for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def execute_registration(reg: sitk.ImageRegistrationMethod, fixed, moving) -> int:
    """Run a registration on one thread; the number of iterations it took.

    One thread: ITK sums the metric over threads in no fixed order, and the optimiser's
    path then differs in the last digits from run to run (a rerun or a resumed run must
    give the same report). The metric makes its own threader from the global default,
    so that is what is set, and put back. The coarse grid keeps one thread fast."""
    counter = {"n": 0}
    reg.AddCommand(sitk.sitkIterationEvent, lambda: counter.__setitem__("n", counter["n"] + 1))
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return counter["n"]


def register_volumes(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: RigidPose | None = None,
    grid_mm: float = 4.0,
    shrink: tuple[int, ...] = (2, 1),
    metric: str = "mattes",
    iterations: int = 80,
    sampling: float = 0.3,
    seed: int = 0,
) -> Registration:
    """Refine the pose of `moving` (training) on `fixed` (synthetic) by intensity registration.

    Both volumes are scaled by percentile ranges and resampled to a coarse `grid_mm` grid,
    then an Euler3DTransform is optimised (regular-step gradient descent, `shrink` pyramid,
    `iterations` per level) on Mattes mutual information (any contrast) or "correlation"
    (same contrast). Random metric sampling with a fixed seed keeps it deterministic. The
    pose is returned about the training volume's centre; `initial` (e.g. the seed from the
    slice matches) defaults to the identity.
    """
    start = time.perf_counter()
    centre = physical_centre(moving)
    pose0 = (initial or RigidPose.identity(centre)).recentred(centre)
    f = coarse(robust_unit(fixed), grid_mm)
    m = coarse(robust_unit(moving), grid_mm)

    reg = registration_method(metric, sampling, seed, iterations, shrink)
    transform = pose0.to_sitk()
    reg.SetInitialTransform(transform, inPlace=True)
    iterations_run = execute_registration(reg, f, m)
    pose = RigidPose.from_sitk(transform, centre)
    similarity = aligned_similarity(fixed, moving, pose)
    return Registration(
        pose=pose,
        similarity=similarity,
        metric=float(reg.GetMetricValue()),
        iterations=iterations_run,
        seconds=time.perf_counter() - start,
        stop=reg.GetOptimizerStopConditionDescription(),
    )


# --------------------------------------------------------------------------- 3. resample
def _canonical(image: sitk.Image) -> sitk.Image:
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if image.GetDirection() == identity:
        return image
    return sitk.DICOMOrient(image, "LPS")


def resample_on_slice_planes(
    training_image: sitk.Image,
    synthetic_image: sitk.Image,
    pose: RigidPose,
    slice_indices,
    axis: str = "axial",
    default: float = 0.0,
) -> np.ndarray:
    """The training volume sampled on the synthetic slices' planes under `pose`.

    Returns float32 [n, rows, cols] in the engine's displayed slice orientation (scans.py:
    axial as stored, coronal and sagittal superior up), one per index of `slice_indices`
    along `axis` of the synthetic volume in canonical LPS; `default` outside the training
    field of view. This is the image a synthetic slice should be compared with instead of
    the nearest stored training slice: stride, slice spacing and tilt then cost nothing.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)} (got {axis!r})")
    synthetic = _canonical(synthetic_image)
    training = sitk.Cast(training_image, sitk.sitkFloat32)
    transform = pose.to_sitk()
    a = AXIS_OF[axis]
    size = synthetic.GetSize()  # (x, y, z)
    out = []
    for k in np.asarray(slice_indices, dtype=np.int64).ravel():
        if not 0 <= k < size[2 - a]:
            raise IndexError(f"slice {k} is outside the synthetic volume's {axis} range")
        if a == 0:
            ref = synthetic[:, :, int(k) : int(k) + 1]
        elif a == 1:
            ref = synthetic[:, int(k) : int(k) + 1, :]
        else:
            ref = synthetic[int(k) : int(k) + 1, :, :]
        plane = sitk.Resample(training, ref, transform, sitk.sitkLinear, default, sitk.sitkFloat32)
        values = sitk.GetArrayFromImage(plane)  # [z, y, x] with one singleton axis
        if a == 0:
            view = values[0]
        elif a == 1:
            view = values[:, 0, :][::-1, :]
        else:
            view = values[:, :, 0][::-1, :]
        out.append(np.ascontiguousarray(view))
    if not out:
        return np.zeros((0, 0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32)


def synthetic_slices(synthetic_image: sitk.Image, slice_indices, axis: str = "axial"):
    """The synthetic volume's own slices at `slice_indices`, displayed like scans.py."""
    values = sitk.GetArrayFromImage(_canonical(synthetic_image))
    idx = np.asarray(slice_indices, dtype=np.int64)
    if axis == "axial":
        return values[idx]
    if axis == "coronal":
        return values[:, idx, :].transpose(1, 0, 2)[:, ::-1, :]
    return values[:, :, idx].transpose(2, 0, 1)[:, ::-1, :]
