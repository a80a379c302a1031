"""A realistic example cohort made from real MRI that ships inside a PyPI package.

Subjects are nilearn's MNI152 T1 template (real MRI, averaged over 152 adults) with
per-subject smooth deformations, bias fields, contrast changes and noise, so each looks
like a different scan of a different head. Copies are training subjects passed through the
augmentations a leaking generator might add. Used by the demo, the tests and benchmarks.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError

MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TISSUE_LEVEL = 0.02  # a subject's voxel above this (of its 99.5th percentile) gets scan noise


def template_path() -> Path:
    """Where nilearn's MNI152 T1 lies on disk (no download: it ships inside the wheel)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "The example cohort is made from nilearn's MNI152 template, and nilearn is not "
            "installed: pip install 'memorization-index[demo]' (or nilearn)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / MNI_T1
    if not path.is_file():
        raise InputError(f"nilearn is installed but its MNI152 T1 file is missing: {path}.")
    return path


def load_template(spacing_mm: float = 2.0) -> sitk.Image:
    """The MNI152 T1 as float32, resampled to isotropic `spacing_mm`."""
    image = sitk.Cast(sitk.ReadImage(str(template_path())), sitk.sitkFloat32)
    size = [
        int(round(sz * sp / spacing_mm))
        for sz, sp in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    sigma = max(0.0, (spacing_mm - image.GetSpacing()[0]) / 2.0)
    if sigma > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (spacing_mm,) * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _smooth_field(shape, rng, coarse: int, amplitude: float) -> np.ndarray:
    grid = rng.standard_normal((coarse, coarse, coarse)).astype(np.float32)
    zoom = [s / coarse for s in shape]
    return (
        ndimage.zoom(grid, zoom, order=1, grid_mode=True, mode="nearest")[
            : shape[0], : shape[1], : shape[2]
        ]
        * amplitude
    )


def make_subject(template: np.ndarray, seed: int, deformation_vox: float = 2.5) -> np.ndarray:
    """One synthetic 'subject': deformed anatomy, bias field, contrast and noise."""
    rng = np.random.default_rng(seed)
    shape = template.shape
    coords = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    # Global size and shape differences (heads differ), then local smooth warps.
    scale = rng.uniform(0.92, 1.08, size=3)
    centre = [(s - 1) / 2.0 for s in shape]
    warped = []
    for axis in range(3):
        c = (coords[axis] - centre[axis]) / scale[axis] + centre[axis]
        c += _smooth_field(shape, rng, 5, deformation_vox)
        warped.append(c)
    out = ndimage.map_coordinates(template, warped, order=1, mode="constant", cval=0.0)
    bias = np.exp(_smooth_field(shape, rng, 3, 0.12))
    out = out * bias
    top = float(np.percentile(out, 99.5)) or 1.0
    out = np.clip(out / top, 0, None) ** rng.uniform(0.8, 1.25)
    out += rng.normal(0, 0.015, size=shape).astype(np.float32) * (out > TISSUE_LEVEL)
    return (np.clip(out, 0, None) * 1000.0).astype(np.float32)


# ---- augmentations a leaking generator might apply to a memorised training scan --------


def augment(volume: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """Apply one named augmentation to a whole volume [z, y, x] (in-plane for geometry)."""
    rng = np.random.default_rng(seed)
    v = volume.astype(np.float32)
    peak = float(np.percentile(v, 99.5)) or 1.0
    if kind == "none":
        return v.copy()
    if kind.startswith("noise"):
        sigma = float(kind.split("-")[1]) if "-" in kind else 0.02
        return v + rng.normal(0, sigma * peak, size=v.shape).astype(np.float32)
    if kind == "intensity":
        return v * rng.uniform(0.9, 1.1)
    if kind == "hflip":
        return v[:, :, ::-1].copy()
    if kind == "vflip":
        return v[:, ::-1, :].copy()
    if kind.startswith("rotate"):
        limit = float(kind.split("-")[1]) if "-" in kind else 3.0
        angle = rng.uniform(-limit, limit)
        return ndimage.rotate(v, angle, axes=(1, 2), reshape=False, order=1, mode="constant")
    if kind.startswith("shift"):
        pixels = float(kind.split("-")[1]) if "-" in kind else 3.0
        dy, dx = rng.uniform(-pixels, pixels, size=2)
        return ndimage.shift(v, (0, dy, dx), order=1, mode="constant")
    raise ValueError(f"unknown augmentation {kind!r}")


@dataclass(frozen=True)
class CohortMember:
    path: str
    role: str  # "train", "novel" or "copy"
    source: str  # for copies: the training file copied
    augmentation: str


def write_volume(array: np.ndarray, like: sitk.Image, path: str | os.PathLike) -> None:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path), useCompression=True)


def make_cohort(
    out_dir: str | os.PathLike,
    n_train: int = 10,
    n_novel: int = 5,
    copies: tuple[str, ...] = ("noise-0.02", "intensity", "hflip", "none"),
    spacing_mm: float = 2.0,
    seed: int = 0,
) -> list[CohortMember]:
    """Write train/ and synthetic/ folders of NIfTI volumes; returns the ground truth."""
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    template_image = load_template(spacing_mm)
    template = sitk.GetArrayFromImage(template_image)
    members: list[CohortMember] = []
    train_arrays = []
    for i in range(n_train):
        arr = make_subject(template, seed * 1000 + i)
        path = out / "train" / f"sub-{i + 1:02d}.nii.gz"
        write_volume(arr, template_image, path)
        train_arrays.append(arr)
        members.append(CohortMember(str(path), "train", "", ""))
    rng = np.random.default_rng(seed + 7)
    synthetic = []
    for i in range(n_novel):
        arr = make_subject(template, seed * 1000 + 500 + i)
        synthetic.append((arr, "novel", "", ""))
    for j, kind in enumerate(copies):
        src = int(rng.integers(n_train))
        arr = augment(train_arrays[src], kind, seed * 1000 + 900 + j)
        synthetic.append((arr, "copy", members[src].path, kind))
    order = rng.permutation(len(synthetic))
    for k, idx in enumerate(order):
        arr, role, source, kind = synthetic[idx]
        path = out / "synthetic" / f"synth-{k + 1:02d}.nii.gz"
        write_volume(arr, template_image, path)
        members.append(CohortMember(str(path), role, source, kind))
    return members
