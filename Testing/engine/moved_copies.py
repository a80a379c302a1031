"""Volumes for the 3D tests: MNI152-made subjects and copies moved in 3D by scipy.

scipy.ndimage (not the engine's SimpleITK resampling) moves the copies, so a sign or order
error in the engine's pose conventions cannot cancel out in the tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.search import volume_pose as vp
from scipy import ndimage

SPACING = 4.0
# A known pose: tilts about the left-right and anterior-posterior axes, a 3D shift.
ANGLES = (6.0, -4.0, 0.0)
SHIFT = (5.0, -6.0, 4.5)


def template() -> sitk.Image:
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    image = sitk.Cast(sitk.ReadImage(str(nilearn_datasets.MNI152_FILE_PATH)), sitk.sitkFloat32)
    image = sitk.DICOMOrient(image, "LPS")
    image = sitk.SmoothingRecursiveGaussian(image, (SPACING - 1.0) / 2.0)
    size = [
        int(round(n * s / SPACING))
        for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (SPACING,) * 3,
        image.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip


def like(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(like)
    return image


def subject(template: sitk.Image, seed: int) -> sitk.Image:
    """The template under a smooth random deformation (about 4 mm), with mild Rician noise."""
    rng = np.random.default_rng(seed)
    values = sitk.GetArrayFromImage(template)
    shape = values.shape
    coords = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    warped = []
    for axis in range(3):
        grid = rng.standard_normal((4, 4, 4))
        disp = ndimage.zoom(grid, [s / 4 for s in shape], order=3, grid_mode=True, mode="nearest")
        warped.append(coords[axis] + 4.0 / SPACING * disp[: shape[0], : shape[1], : shape[2]])
    out = ndimage.map_coordinates(values, warped, order=1, mode="constant")
    out = out / np.percentile(out, 99)
    return like(rician(out, 0.02, rng), template)


def rician(values, sigma, rng):
    return np.hypot(values + rng.normal(0, sigma, values.shape), rng.normal(0, sigma, values.shape))


def move_scipy(image: sitk.Image, angles_deg, shift_mm, seed: int = 7) -> sitk.Image:
    """The content moved by p' = R (p - c) + c + t (c: grid centre), by scipy, plus noise."""
    spacing = np.array(image.GetSpacing())  # x, y, z
    size = np.array(image.GetSize())
    centre_index = (size - 1) / 2.0
    r = vp.rotation_matrix(angles_deg)
    # input index (xyz) = S^-1 R^T S (out - ci) + ci - S^-1 R^T t
    s, s_inv = np.diag(spacing), np.diag(1.0 / spacing)
    m_xyz = s_inv @ r.T @ s
    off_xyz = centre_index - m_xyz @ centre_index - s_inv @ r.T @ np.asarray(shift_mm)
    flip = np.eye(3)[::-1]  # xyz <-> zyx
    values = sitk.GetArrayFromImage(image)
    moved = ndimage.affine_transform(
        values, flip @ m_xyz @ flip, offset=flip @ off_xyz, order=3, mode="constant"
    )
    rng = np.random.default_rng(seed)
    return like(rician(np.clip(moved, 0, None), 0.02, rng), image)
