"""Write small real scan files (NIfTI, NRRD, MetaImage, DICOM) for the engine tests.

Volumes are tiny (tens of voxels a side) so a whole suite of real files stays fast.
A phantom is a bright block on a zero background, so the slices outside the block
are background, plus optional single-voxel markers to trace orientation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

MARKER = 1000.0
BLOCK = 100.0


def phantom(
    shape_xyz: Sequence[int] = (32, 24, 20),
    block: tuple[slice, slice, slice] | None = None,
    markers: Sequence[tuple[int, int, int]] = (),
    seed: int = 0,
) -> np.ndarray:
    """float32 array indexed [x, y, z] (NIfTI order): textured block, zero outside, markers."""
    nx, ny, nz = shape_xyz
    data = np.zeros(shape_xyz, dtype=np.float32)
    if block is None:
        block = (slice(4, nx - 4), slice(4, ny - 4), slice(3, nz - 3))
    rng = np.random.default_rng(seed)
    region = data[block]
    data[block] = BLOCK + rng.uniform(0.0, 10.0, size=region.shape).astype(np.float32)
    for ijk in markers:
        data[ijk] = MARKER
    return data


def write_nifti(path, data_xyz: np.ndarray, affine: np.ndarray) -> str:
    """A NIfTI file the way most tools write one: nibabel, RAS+ affine, sform and qform set."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data_xyz), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, os.fspath(path))
    return os.fspath(path)


def ras_to_lps(point) -> np.ndarray:
    x, y, z = point
    return np.array([-x, -y, z], dtype=np.float64)


def nifti_voxel_lps(affine: np.ndarray, ijk) -> np.ndarray:
    """LPS mm of voxel ijk of a NIfTI with this (RAS) affine."""
    return ras_to_lps((affine @ np.array([*ijk, 1.0]))[:3])


def sitk_image(
    data_xyz: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data_xyz, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def write_sitk(path, image: sitk.Image, compress: bool = False) -> str:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sitk.WriteImage(image, os.fspath(path), useCompression=compress)
    return os.fspath(path)


def write_dicom_series(
    folder,
    data_xyz: np.ndarray,
    series_uid: str,
    prefix: str = "IM",
    spacing=(0.8, 0.8, 2.0),
    origin=(-12.0, -10.0, 30.0),
    reverse_names: bool = False,
) -> list[str]:
    """One file per axial slice, tags as in SimpleITK's 'DICOM series from array' example.

    reverse_names numbers the files against the slice order, so a reader must sort by
    position, not by name.
    """
    os.makedirs(folder, exist_ok=True)
    values = np.clip(np.round(data_xyz), -32768, 32767).astype(np.int16)
    nz = values.shape[2]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study = series_uid.rsplit(".", 1)[0] + ".99"
    paths = []
    for k in range(nz):
        plane = sitk.GetImageFromArray(np.ascontiguousarray(values[:, :, k].T))
        plane.SetSpacing((spacing[0], spacing[1]))
        position = (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {
            "0008|0008": "ORIGINAL\\PRIMARY\\M\\ND",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0020": "20240101",
            "0008|0021": "20240101",
            "0008|0031": "120000",
            "0008|0060": "MR",
            "0008|103e": f"test series {series_uid}",
            "0010|0010": "Phantom^Test",
            "0010|0020": "PHANTOM",
            "0018|0050": f"{spacing[2]}",
            "0020|000d": study,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        number = nz - k if reverse_names else k + 1
        path = os.path.join(os.fspath(folder), f"{prefix}{number:04d}.dcm")
        writer.SetFileName(path)
        writer.Execute(plane)
        paths.append(path)
    return paths


def truncate(path, keep: float = 0.5) -> str:
    """Cut a file to a fraction of its length, as an interrupted copy would."""
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * keep)])
    return os.fspath(path)
