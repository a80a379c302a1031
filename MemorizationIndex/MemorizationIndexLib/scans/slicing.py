"""Cut a volume into canonically oriented 2D slices and keep the foreground ones.

Every volume is reoriented to LPS (direction identity, array [z, y, x]), so slices
of a training scan and of a synthetic scan are compared in the same anatomical
frame whatever orientation each file was stored in. Slices are shown the way a
radiologist reads them: axial with anterior up and patient right on the left,
coronal and sagittal with superior up.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, SettingsError
from .sources import IMAGE, IMAGE_PX, VOLUME, ScanVolume, quietly, reader_reason

# Slice-level foreground: a voxel is foreground above BACKGROUND_LEVEL of the way from the
# volume's 1st to its 99th intensity percentile; a slice is kept when at least
# MIN_FOREGROUND_SHARE of its pixels are (ReadOptions.min_foreground).
BACKGROUND_LEVEL = 0.1
MIN_FOREGROUND_SHARE = 0.05
# Where the background is noise (magnitude MRI: Rayleigh noise over the whole field of view),
# the threshold is raised above that noise: NOISE_REACH background sigmas, where pure noise
# lies with probability exp(-NOISE_REACH**2 / 2) = 0.03 %. Sigma is the mode of the lower
# BACKGROUND_QUANTILE of the voxels (a Rayleigh's mode is its sigma). A "mode" that lies
# higher than NOISE_FLOOR_CAP of the intensity range is tissue, not noise, and is ignored.
NOISE_REACH = 4.0
BACKGROUND_QUANTILE = 0.4
NOISE_FLOOR_CAP = 0.3
RAYLEIGH_P1 = np.sqrt(-2.0 * np.log(0.99))  # a Rayleigh's 1st percentile / sigma
RAYLEIGH_MODE_ABOVE_P1 = 1.0 - RAYLEIGH_P1  # (mode - 1st pct) / sigma
# A volume can carry two noise levels: a zoomed-out copy's zero-filled border holds only the
# generator's noise, quieter than the scan's own background, and the mode above is then the
# quieter one. So the floor also clears the loudest noise: the upper LOUD_QUANTILE of the
# sigmas of NOISE_TILE^3 tiles that look like pure Rayleigh noise (their coefficient of
# variation above the 1st percentile lies near a Rayleigh's, and their mean is low enough for
# noise whose floor stays under NOISE_FLOOR_CAP; tissue varies far less, edges of anatomy
# far more or lie far brighter).
NOISE_TILE = 8
LOUD_QUANTILE = 0.9
MIN_NOISE_TILES = 20
RAYLEIGH_STD = np.sqrt((4.0 - np.pi) / 2.0)  # a Rayleigh's standard deviation / sigma
RAYLEIGH_MEAN_ABOVE_P1 = np.sqrt(np.pi / 2.0) - RAYLEIGH_P1  # (mean - 1st pct) / sigma
RAYLEIGH_CV = RAYLEIGH_STD / RAYLEIGH_MEAN_ABOVE_P1
NOISE_CV = (0.85 * RAYLEIGH_CV, 1.2 * RAYLEIGH_CV)

AXES = ("axial", "coronal", "sagittal")

# Suffixes are matched on the lower-cased file name; longer ones first.


MIN_INPLANE = 16  # the encoder's patch size: a smaller slice cannot make one token


_CANONICAL = "LPS"


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


_OBLIQUE_WARN_DEG = 1.0


_AXIS_OF = {"axial": 0, "coronal": 1, "sagittal": 2}  # array axis of [z, y, x]


@dataclass(frozen=True)
class ReadOptions:
    """How slices are taken from a volume; checked here so a bad value fails before any read."""

    axis: str = "axial"
    stride: int = 1  # keep the foreground slices whose index is a multiple of stride
    # a slice with a smaller share of foreground pixels is background
    min_foreground: float = MIN_FOREGROUND_SHARE

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise SettingsError(
                f"ReadOptions.axis must be one of {', '.join(AXES)} (got {self.axis!r})."
            )
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)):
            raise SettingsError(f"ReadOptions.stride must be a whole number (got {self.stride!r}).")
        if self.stride < 1:
            raise SettingsError(f"ReadOptions.stride must be at least 1 (got {self.stride}).")
        share = self.min_foreground
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise SettingsError(
                "ReadOptions.min_foreground must be a fraction in [0, 1) "
                f"(got {self.min_foreground!r})."
            )


@quietly
def scan_from_image(
    image: sitk.Image,
    source: str,
    options: ReadOptions = ReadOptions(),
    series_uid: str = "",
) -> ScanVolume:
    """The same canonicalisation as read_scan for an image already in memory (Slicer nodes)."""
    return canonical_volume(image, str(source), options, series_uid, [])


def _size_text(size) -> str:
    return "x".join(str(int(s)) for s in size)


def _to_scalar_3d(image: sitk.Image, source: str, warnings: list[str]) -> sitk.Image:
    """First 3D volume of a 4D+ image, mean of vector components, float32."""
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 2:  # a 2D file (NIfTI, NRRD, MetaImage): a volume of one slice
        image = sitk.JoinSeries([image])
        dim, size = 3, image.GetSize()
    if dim < 2:
        raise InputError(
            f"{source} is a {dim}D image ({_size_text(size)}); MemorizationIndex needs a "
            "2D image or a 3D volume."
        )
    if dim > 3:
        image = sitk.Extract(image, list(size[:3]) + [0] * (dim - 3), [0] * dim)
        if any(s > 1 for s in size[3:]):
            warnings.append(
                f"{source} is a {dim}D image ({_size_text(size)}); only its first 3D volume "
                "(index 0 along the extra axes, e.g. the first time point or echo) is used."
            )
    pixel = image.GetPixelID()
    if pixel in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(
            f"{source} has complex-valued voxels; MemorizationIndex needs magnitude images."
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        values = sitk.GetArrayViewFromImage(image)
        mean = values.mean(axis=-1, dtype=np.float64).astype(np.float32)
        scalar = sitk.GetImageFromArray(mean)
        scalar.CopyInformation(image)
        image = scalar
        warnings.append(
            f"{source} has {components} values per voxel (e.g. RGB or a vector); "
            "their mean is used."
        )
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def _oriented(image: sitk.Image, name: str, warnings: list[str]) -> sitk.Image:
    """A scalar float32 3D image in LPS; InputError for anything that cannot be one."""
    try:
        image = _to_scalar_3d(image, name, warnings)
        size = image.GetSize()
        wide = [s for s in size if s > 1]
        if len(wide) < 2:
            raise InputError(
                f"{name} is a {_size_text(size)} image, neither a 2D image nor a 3D volume."
            )
        if image.GetDirection() != _IDENTITY:
            image = sitk.DICOMOrient(image, _CANONICAL)
    except RuntimeError as exc:
        raise InputError(f"{name} could not be read as a 3D volume: {reader_reason(exc)}.") from exc
    direction = np.array(image.GetDirection()).reshape(3, 3)
    tilt = float(np.degrees(np.arccos(np.clip(np.diag(direction), -1.0, 1.0))).max())
    if tilt > _OBLIQUE_WARN_DEG:
        warnings.append(
            f"{name} is oblique ({tilt:.1f} degrees from the LPS axes); slices follow the "
            "acquisition plane nearest to the chosen axis, without resampling."
        )
    return image


def _finite(image: sitk.Image, name: str, warnings: list[str]) -> sitk.Image:
    """NaN and infinite voxels set to the finite minimum (with a warning)."""
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if finite.all():
        return image
    n_finite = int(np.count_nonzero(finite))
    if n_finite == 0:
        raise InputError(f"{name} has no finite voxel (all are NaN or infinite).")
    fixed = values.copy()
    low = float(fixed[finite].min())
    fixed[~finite] = low
    warnings.append(
        f"{name} has {fixed.size - n_finite} NaN or infinite voxel(s); they were set to the "
        f"volume's finite minimum ({low:g})."
    )
    canonical = sitk.GetImageFromArray(fixed)
    canonical.CopyInformation(image)
    return canonical


OUTLIER_PERCENTILES = (0.5, 99.5)  # the volume's robust intensity range...
OUTLIER_REACH = 10.0  # ...and how many such ranges beyond it an outlier lies: no MR tissue is
# ten times brighter than the 99.5th percentile; overflow and rescaling errors are orders off


def _inlier_bounds(values: np.ndarray, name: str, warnings: list[str]) -> tuple[float, float]:
    """The range outside which voxels are outliers (hot voxels), with a warning if any are.

    Generative models emit hot voxels; one voxel of 1e6 in a slice would otherwise set that
    slice's min-max range and squash the anatomy to black, so an exact copy looked novel.
    Outliers lie more than OUTLIER_REACH robust ranges (0.5th to 99.5th percentile) beyond
    that range. A normal scan has none, and its slices are scaled exactly as before.
    """
    low_p, high_p = (float(v) for v in np.percentile(values, OUTLIER_PERCENTILES))
    reach = OUTLIER_REACH * (high_p - low_p)
    low, high = low_p - reach, high_p + reach
    n = int(np.count_nonzero((values < low) | (values > high)))
    if n:
        warnings.append(
            f"{name} has {n} voxel(s) far outside its intensity range ({low_p:.4g} to "
            f"{high_p:.4g} between the 0.5th and 99.5th percentiles); they are left out "
            "of the intensity scaling (hot voxels would otherwise hide the anatomy)."
        )
    return low, high


def loudest_noise_sigma(values: np.ndarray, p1: float, p99: float) -> float:
    """Sigma of the loudest background noise (see LOUD_QUANTILE); 0 without enough tiles
    of noise (a 2D image, a clean background, a tight crop)."""
    if values.ndim != 3 or min(values.shape) < NOISE_TILE:
        return 0.0
    t = NOISE_TILE
    n = [s // t for s in values.shape]
    step = max(1, int(np.cbrt(np.prod(n) / 20_000)))  # at most about 20,000 tiles
    tiles = values[: n[0] * t, : n[1] * t, : n[2] * t].reshape(n[0], t, n[1], t, n[2], t)
    tiles = tiles[::step, :, ::step, :, ::step].astype(np.float64)
    mean, std = tiles.mean(axis=(1, 3, 5)), tiles.std(axis=(1, 3, 5))
    above = mean - p1
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(above > 0, std / above, 0.0)
    dim = above < RAYLEIGH_MEAN_ABOVE_P1 * NOISE_FLOOR_CAP * (p99 - p1) / NOISE_REACH
    noise = (cv > NOISE_CV[0]) & (cv < NOISE_CV[1]) & (std > 0) & dim
    if noise.sum() < MIN_NOISE_TILES:
        return 0.0
    return float(np.quantile(std[noise], LOUD_QUANTILE) / RAYLEIGH_STD)


def noise_floor(values: np.ndarray, p1: float, p99: float) -> float | None:
    """The intensity that background noise stays below (see NOISE_REACH), or None when the
    background is not noise: zero-filled (the mode is at the 1st percentile), or no
    background at all (a tight crop: the lower voxels' mode is tissue, above the cap)."""
    sample = values.ravel()[:: max(1, values.size // 1_000_000)]  # a million voxels suffice
    top = float(np.quantile(sample, BACKGROUND_QUANTILE))
    if not top > p1:
        return None
    counts, edges = np.histogram(sample, bins=128, range=(p1, top))
    smooth = np.convolve(counts, np.ones(5) / 5.0, mode="same")
    mode = float(edges[int(np.argmax(smooth))] + (edges[1] - edges[0]) / 2.0)
    cap = p1 + NOISE_FLOOR_CAP * (p99 - p1)
    sigma = (mode - p1) / RAYLEIGH_MODE_ABOVE_P1
    floor = p1 + NOISE_REACH * sigma
    if sigma <= 0 or floor > cap:
        return None
    loudest = p1 + NOISE_REACH * loudest_noise_sigma(values, p1, p99)
    return max(floor, min(loudest, cap))


def _kept_slices(values: np.ndarray, axis: int, options: ReadOptions, name: str) -> np.ndarray:
    """Indices along `axis` of the foreground slices whose index is a multiple of stride.
    Foreground lies above BACKGROUND_LEVEL of the intensity range and above the noise floor
    of a noisy background: a slice of Rician background holds no anatomy to compare."""
    p1, p99 = (float(v) for v in np.percentile(values, [1, 99]))
    threshold = float(p1 + BACKGROUND_LEVEL * (p99 - p1))
    floor = noise_floor(values, p1, p99) if values.shape[axis] > 1 else None
    threshold = max(threshold, floor) if floor is not None else threshold
    other = tuple(a for a in range(3) if a != axis)
    rows, cols = (values.shape[a] for a in other)
    share = np.count_nonzero(values > threshold, axis=other) / float(rows * cols)
    constant = values.max(axis=other) == values.min(axis=other)
    foreground = np.flatnonzero((share >= options.min_foreground) & ~constant)
    if foreground.size == 0:
        low, high = float(values.min()), float(values.max())
        if low == high:
            raise InputError(f"{name} is constant (every voxel is {low:g}); it holds no image.")
        raise InputError(
            f"{name} has no foreground slice: no {options.axis} slice has "
            f"{options.min_foreground:.0%} of its pixels above the background threshold "
            f"({threshold:.4g})."
        )
    # The stride is anchored to the slice grid, not to the first foreground slice, so that a
    # copy whose background differs (added noise) is sampled at the same slices as its source.
    return foreground[foreground % options.stride == 0].astype(np.int64)


def _cut(image: sitk.Image, values: np.ndarray, kept: np.ndarray, axis: int):
    """(slices [n, rows, cols] in display orientation, LPS centres [n, 3], (row, col) mm)."""
    if axis == 0:
        slices = values[kept]
    elif axis == 1:
        slices = values[:, kept, :].transpose(1, 0, 2)[:, ::-1, :]
    else:
        slices = values[:, :, kept].transpose(2, 0, 1)[:, ::-1, :]
    slices = np.ascontiguousarray(slices, dtype=np.float32)
    nz, ny, nx = values.shape
    sx, sy, sz = image.GetSpacing()
    spacing = {0: (sy, sx), 1: (sz, sx), 2: (sz, sy)}[axis]
    centre = [(nx - 1) / 2.0, (ny - 1) / 2.0, (nz - 1) / 2.0]  # (x, y, z) index order
    positions = np.empty((len(kept), 3), dtype=np.float64)
    for row, k in enumerate(kept):
        index = list(centre)
        index[2 - axis] = float(k)
        positions[row] = image.TransformContinuousIndexToPhysicalPoint(index)
    return slices, positions, (float(spacing[0]), float(spacing[1]))


def canonical_volume(
    image: sitk.Image,
    source: str,
    options: ReadOptions,
    series_uid: str,
    warnings: list[str],
    name: str = "",
    pixel_size_known: bool = True,
) -> ScanVolume:
    """Canonical slices of one image; `name` is how messages call it (default: source).

    An image one voxel thick along some axis is a 2D image: its one slice is cut along that
    axis, whatever options.axis says, and kept unless it is blank (no stride applies).
    pixel_size_known: False for files without geometry (the pixel grid is the unit)."""
    warnings = list(warnings)
    name = name or source
    image = _oriented(image, name, warnings)
    shape = sitk.GetArrayViewFromImage(image).shape  # (z, y, x)
    flat = [a for a in range(3) if shape[a] == 1]
    axis = flat[0] if flat else _AXIS_OF[options.axis]
    if flat:
        options = ReadOptions(axis=AXES[axis], stride=1, min_foreground=options.min_foreground)
    nz, ny, nx = shape
    rows, cols = {0: (ny, nx), 1: (nz, nx), 2: (nz, ny)}[axis]
    if min(rows, cols) < MIN_INPLANE:
        acquired = AXES[int(np.argmin(shape))]  # the fewest slices: the acquired plane
        hint = f" It looks acquired {acquired}: use --axis {acquired}." if not flat else ""
        raise InputError(
            f"{name}: its {options.axis} slices are {rows}x{cols} pixels; MemorizationIndex "
            f"needs at least {MIN_INPLANE} pixels on each side (the encoder's patch size)." + hint
        )
    image = _finite(image, name, warnings)
    values = sitk.GetArrayViewFromImage(image)  # [z, y, x]
    bounds = _inlier_bounds(values, name, warnings)
    kept = _kept_slices(values, axis, options, name)
    slices, positions, spacing = _cut(image, values, kept, axis)
    kind = VOLUME if not flat else (IMAGE if pixel_size_known else IMAGE_PX)
    return ScanVolume(
        kind=kind,
        source=source,
        series_uid=series_uid,
        slices=slices,
        slice_indices=kept,
        positions=positions,
        pixel_spacing=spacing,
        n_total_slices=int(values.shape[axis]),
        warnings=warnings,
        image=image,
        intensity_bounds=bounds,
    )
