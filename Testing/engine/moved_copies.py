"""Volumes for the 3D tests: MNI152-made subjects and copies moved in 3D by scipy.

scipy.ndimage (not the engine's SimpleITK resampling) moves the copies, so a sign or order
error in the engine's pose conventions cannot cancel out in the tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MemorizationIndexLib.search import volume_pose as vp
from MemorizationIndexLib.search.affine_pose import AffinePose
from scipy import ndimage

SPACING = 4.0
# A known pose: tilts about the left-right and anterior-posterior axes, a 3D shift.
ANGLES = (6.0, -4.0, 0.0)
SHIFT = (5.0, -6.0, 4.5)


def template(spacing: float = SPACING) -> sitk.Image:
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    image = sitk.Cast(sitk.ReadImage(str(nilearn_datasets.MNI152_FILE_PATH)), sitk.sitkFloat32)
    image = sitk.DICOMOrient(image, "LPS")
    image = sitk.SmoothingRecursiveGaussian(image, (spacing - 1.0) / 2.0)
    size = [
        int(round(n * s / spacing))
        for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing,) * 3,
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
        voxels_per_4mm = 4.0 / template.GetSpacing()[0]
        warped.append(coords[axis] + voxels_per_4mm * disp[: shape[0], : shape[1], : shape[2]])
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


# ---------------------------------------------------------------- copies with a mirror, a
# zoom or a header that lies (issue 21), made by numpy/scipy and SimpleITK headers only;
# each comes with its true pose (training -> synthetic) as an AffinePose, for comparison.
def _truth(linear, image: sitk.Image, moved_to) -> AffinePose:
    """The pose p_syn = linear (p - c) + moved_to, c the training image's centre."""
    c = vp.physical_centre(image)
    return AffinePose(np.asarray(linear, float), np.asarray(moved_to, float) - c, c)


def mirrored(image: sitk.Image, axis: int, seed: int = 31):
    """The copy mirrored about its grid centre along LPS `axis` (0 = L-R), fresh noise."""
    values = sitk.GetArrayFromImage(image)
    flipped = np.flip(values, axis=2 - axis)
    linear = np.diag([-1.0 if k == axis else 1.0 for k in range(3)])
    copy = like(rician(flipped, 0.02, np.random.default_rng(seed)), image)
    return copy, _truth(linear, image, vp.physical_centre(image))


def zoomed(image: sitk.Image, factors_lps, seed: int = 32):
    """The content magnified by factors_lps about the grid centre (scipy), same grid."""
    values = sitk.GetArrayFromImage(image)
    zyx = np.asarray(factors_lps, float)[::-1]
    centre = (np.array(values.shape) - 1) / 2.0
    matrix = np.diag(1.0 / zyx)
    moved = ndimage.affine_transform(
        values, matrix, offset=centre - matrix @ centre, order=3, mode="constant"
    )
    copy = like(rician(np.clip(moved, 0, None), 0.02, np.random.default_rng(seed)), image)
    return copy, _truth(np.diag(factors_lps), image, vp.physical_centre(image))


def identity_header(image: sitk.Image, declared_mm: float, seed: int = 33):
    """The same voxels written as a generative pipeline writes them: identity direction,
    origin 0 and a declared spacing that is not the true one."""
    values = rician(sitk.GetArrayFromImage(image), 0.02, np.random.default_rng(seed))
    copy = sitk.GetImageFromArray(values.astype(np.float32))
    copy.SetSpacing([declared_mm] * 3)
    ratio = declared_mm / np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    c = vp.physical_centre(image)
    return copy, _truth(np.diag(ratio), image, ratio * (c - origin))


def swapped(image: sitk.Image, axes=(1, 2), seed: int = 34):
    """Two LPS axes' array axes swapped, written under an identity header (origin 0, the
    training spacing, isotropic here)."""
    values = sitk.GetArrayFromImage(image)
    order = [0, 1, 2]  # array axes (z, y, x) = LPS axes (2, 1, 0)
    a, b = (2 - axes[0], 2 - axes[1])
    order[a], order[b] = order[b], order[a]
    moved = np.transpose(values, order)
    copy = sitk.GetImageFromArray(rician(moved, 0.02, np.random.default_rng(seed)))
    copy = sitk.Cast(copy, sitk.sitkFloat32)
    copy.SetSpacing(image.GetSpacing())
    perm = np.eye(3)
    perm[list(axes)] = perm[list(axes[::-1])]
    c = vp.physical_centre(image)
    return copy, _truth(perm, image, perm @ (c - np.asarray(image.GetOrigin())))
