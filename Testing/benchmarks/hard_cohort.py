"""A benchmark cohort as hard as real data: copies that moved in 3D (issue 12).

The easy cohort (MemorizationIndexLib.cohort) moves copies only within the slice plane and
keeps the background clean; real copies from 3D generative models are rotated and shifted
about every axis, real scans carry bias fields and Rician noise over the whole field of view,
and not every scan is a T1. Here:

- subjects are nilearn's MNI152 T1 under smooth random deformations (a global affine part
  plus coarse and finer warps: different heads that share anatomy), a smooth multiplicative
  bias field, a contrast (T1, or a T2-like remap of the tissue classes: CSF bright, white
  matter dark) and Rician noise over the whole volume, background included;
- copies are training subjects moved rigidly in 3D about the volume's physical centre
  (rotations of 3, 6, 10 degrees about the left-right and anterior-posterior axes, 3D shifts
  of 5-10 mm, combinations), made with SimpleITK's Euler3DTransform + Resample (an
  independent tool: the engine's own resamplers are not used), with fresh Rician noise;
- "bank at stride 2, scored at stride 1" is a scoring setting, recorded as a scenario.

Every volume is written in LPS with an identity direction (array [z, y, x] = [S, P, L]),
so angles and shifts in truth.json read directly in the engine's canonical frame.

truth.json convention: a copy's pose maps a SOURCE physical point p (LPS mm) to the point
where that anatomy lies in the COPY: p' = R (p - c) + c + t, with c the volume's physical
centre, t = shift_mm (LPS), R = Rz(angle_SI) @ Ry(angle_AP) @ Rx(angle_LR) (rotation about
the LR axis applied first), each a right-handed rotation in degrees about +x (L), +y (P),
+z (S). The copy's voxels are copy(p') = source(R^T (p' - c - t) + c).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from MemorizationIndexLib.demo.cohort import load_template
from scipy import ndimage

TRUTH_CONVENTION = (
    "LPS physical mm, identity direction; pose maps a source point p to the copy: "
    "p' = R (p - c) + c + t, c = centre_mm (the volume's physical centre), t = shift_mm; "
    "R = Rz(SI) @ Ry(AP) @ Rx(LR), right-handed rotations in degrees about +x (left), "
    "+y (posterior), +z (superior); the LR rotation is applied first."
)

# name -> (rotation degrees about (LR, AP, SI), shift mm (L, P, S)).
DEFAULT_COPIES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("none", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-LR+3", (3.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-LR-6", (-6.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-LR+10", (10.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-AP-3", (0.0, -3.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-AP+6", (0.0, 6.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-AP-10", (0.0, -10.0, 0.0), (0.0, 0.0, 0.0)),
    ("shift-inplane-6-4mm", (0.0, 0.0, 0.0), (6.0, -4.0, 0.0)),
    ("shift-3d-5mm", (0.0, 0.0, 0.0), (3.0, -2.5, 3.0)),
    ("shift-3d-10mm", (0.0, 0.0, 0.0), (-5.0, 6.0, -6.0)),
    ("combo-LR+6-AP-3-shift7mm", (6.0, -3.0, 0.0), (4.0, 3.0, -4.5)),
    ("combo-LR-10-AP+6-shift5mm", (-10.0, 6.0, 0.0), (-3.0, 0.0, 4.0)),
)

# Copies a rigid registration cannot explain (issue 21): mirrored about each axis, zoomed
# (isotropic and in-plane only), written under an identity header at a spacing that is not
# the true one (a model trained at 1.1 x the declared spacing), and with two array axes
# swapped. Made by Testing/engine/moved_copies.py (numpy flips and transposes, scipy zooms,
# SimpleITK headers by hand); truth.json keeps each one's true pose as an affine map.
MANGLED_COPIES = (
    "mirror-LR",
    "mirror-AP",
    "mirror-SI",
    "zoom-0.9",
    "zoom-1.1",
    "zoom-0.9-in-plane",
    "zoom-1.1-in-plane",
    "identity-header-true-1.1x",
    "axes-PS-swapped",
)


def mangle(image: sitk.Image, name: str):
    """(copy, true AffinePose training -> copy) of one MANGLED_COPIES kind."""
    from Testing.engine import moved_copies as mc

    mirrors = {"mirror-LR": 0, "mirror-AP": 1, "mirror-SI": 2}
    if name in mirrors:
        return mc.mirrored(image, mirrors[name])
    if name.startswith("zoom-"):
        factor = float(name.split("-")[1])
        in_plane = name.endswith("in-plane")
        return mc.zoomed(image, (factor, factor, 1.0 if in_plane else factor))
    if name == "identity-header-true-1.1x":
        return mc.identity_header(image, image.GetSpacing()[0] / 1.1)
    if name == "axes-PS-swapped":
        return mc.swapped(image, (1, 2))
    raise ValueError(f"unknown mangled copy kind {name!r}; known: {', '.join(MANGLED_COPIES)}")


STRIDE_SCENARIO = {
    "name": "bank-stride-2-scored-stride-1",
    "bank_stride": 2,
    "score_stride": 1,
    "applies_to": "every synthetic volume (score the cohort against a bank built at stride 2)",
    "why": "odd slices of a copy have no stored counterpart in the bank",
}


def template_lps(spacing_mm: float = 2.5) -> sitk.Image:
    """nilearn's MNI152 T1 (shipped in the wheel) as float32 LPS, isotropic `spacing_mm`."""
    return sitk.DICOMOrient(load_template(spacing_mm), "LPS")


def smooth_field(shape, rng: np.random.Generator, coarse: int) -> np.ndarray:
    """A smooth random field of unit scale: a coarse normal grid, cubic-upsampled."""
    grid = rng.standard_normal((coarse,) * 3)
    zoom = [s / coarse for s in shape]
    field_ = ndimage.zoom(grid, zoom, order=3, grid_mode=True, mode="nearest")
    return field_[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def t2_like(t1: np.ndarray) -> np.ndarray:
    """A T2-like contrast from a T1 in [0, ~1]: background dark, CSF bright, WM darker than GM."""
    knots = [0.0, 0.08, 0.3, 0.5, 0.7, 0.9, 1.2]
    values = [0.0, 0.55, 1.0, 0.78, 0.55, 0.33, 0.3]
    return np.interp(t1, knots, values).astype(np.float32)


def rician(volume: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels (whole FOV)."""
    re = volume + rng.normal(0.0, sigma, volume.shape)
    im = rng.normal(0.0, sigma, volume.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def make_subject(
    template: np.ndarray, spacing_mm: float, seed: int, contrast: str = "T1"
) -> np.ndarray:
    """One subject: deformed anatomy, bias field, contrast and whole-FOV Rician noise."""
    rng = np.random.default_rng(seed)
    shape = template.shape
    centre = np.array([(s - 1) / 2.0 for s in shape])
    coords = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    # Global affine part (head size, shape, a little pose), then coarse and fine warps (mm).
    scale = rng.uniform(0.92, 1.08, size=3)
    angle = np.radians(rng.uniform(-2.0, 2.0))
    c, s = np.cos(angle), np.sin(angle)
    rel = [(coords[a] - centre[a]) / scale[a] for a in range(3)]
    rel[1], rel[2] = c * rel[1] - s * rel[2], s * rel[1] + c * rel[2]
    warped = []
    for axis in range(3):
        disp_mm = 3.5 * smooth_field(shape, rng, 4) + 1.5 * smooth_field(shape, rng, 8)
        warped.append(rel[axis] + centre[axis] + disp_mm / spacing_mm)
    anatomy = ndimage.map_coordinates(template, warped, order=1, mode="constant", cval=0.0)
    top = float(np.percentile(anatomy[anatomy > 0], 99)) if np.any(anatomy > 0) else 1.0
    anatomy = np.clip(anatomy / top, 0.0, None)
    if contrast == "T2":
        anatomy = t2_like(anatomy)
    elif contrast != "T1":
        raise ValueError(f"contrast must be T1 or T2 (got {contrast!r})")
    anatomy = anatomy ** rng.uniform(0.85, 1.15)
    bias = np.exp(0.18 * smooth_field(shape, rng, 3))
    noisy = rician(anatomy * bias, rng.uniform(0.025, 0.045), rng)
    return (noisy * 1000.0).astype(np.float32)


def rigid_matrix(angles_deg) -> np.ndarray:
    """R = Rz @ Ry @ Rx for right-handed angles (degrees) about x (LR), y (AP), z (SI)."""
    ax, ay, az = np.radians(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def physical_centre(image: sitk.Image) -> np.ndarray:
    """The physical point (LPS mm) at the centre of the voxel grid."""
    index = [(n - 1) / 2.0 for n in image.GetSize()]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def move_rigid(image: sitk.Image, angles_deg, shift_mm) -> sitk.Image:
    """The image's content moved by the pose p' = R (p - c) + c + t, on the same grid.

    SimpleITK resamples with the map output -> input, i.e. the pose's inverse; an
    Euler3DTransform with ComputeZYX holds R = Rz Ry Rx, so the inverse is taken exactly.
    """
    centre = physical_centre(image)
    forward = sitk.Euler3DTransform()
    forward.SetComputeZYX(True)
    forward.SetCenter(centre.tolist())
    forward.SetRotation(*np.radians(np.asarray(angles_deg, dtype=np.float64)).tolist())
    forward.SetTranslation([float(v) for v in shift_mm])
    expected = rigid_matrix(angles_deg)
    assert np.allclose(np.array(forward.GetMatrix()).reshape(3, 3), expected, atol=1e-9)
    return sitk.Resample(image, image, forward.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


@dataclass
class HardCohort:
    """Where the cohort lies and what each file is (the content of truth.json)."""

    root: str
    spacing_mm: float
    convention: str = TRUTH_CONVENTION
    train: list[dict] = field(default_factory=list)
    novel: list[dict] = field(default_factory=list)
    copies: list[dict] = field(default_factory=list)
    scenarios: list[dict] = field(default_factory=list)

    def synthetic_role(self, name: str) -> str:
        """'copy' or 'novel' for a synthetic file name."""
        for c in self.copies:
            if Path(c["file"]).name == name:
                return "copy"
        return "novel"


def fresh_noise(copy: sitk.Image, source: sitk.Image, share: float, seed: int) -> np.ndarray:
    """The copy's voxels under fresh Rician noise of `share` x its source's 99th percentile."""
    peak = float(np.percentile(sitk.GetArrayViewFromImage(source), 99))
    noisy = rician(sitk.GetArrayFromImage(copy), share * peak, np.random.default_rng(seed))
    return noisy.astype(np.float32)


def _image_like(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(like)
    return image


def make_hard_cohort(
    out_dir: str | os.PathLike,
    n_train: int = 12,
    n_novel: int = 6,
    copies=DEFAULT_COPIES,
    spacing_mm: float = 2.5,
    seed: int = 0,
    copy_noise: float = 0.02,
    mangled=(),
) -> HardCohort:
    """Write train/ and synthetic/ NIfTI volumes and truth.json; returns the truth.

    Contrasts alternate T1, T2 over subjects; copies keep their source's contrast and get
    fresh Rician noise of `copy_noise` x the source's 99th percentile over the whole FOV
    (the field of view a rotation brings in from outside is noise, not zeros). `mangled`:
    MANGLED_COPIES kinds to add, each of its own training subject in turn.
    """
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    template_image = template_lps(spacing_mm)
    template = sitk.GetArrayFromImage(template_image)
    cohort = HardCohort(root=str(out), spacing_mm=spacing_mm)
    cohort.scenarios.append(dict(STRIDE_SCENARIO))
    train_images = []
    for i in range(n_train):
        contrast = "T1" if i % 2 == 0 else "T2"
        arr = make_subject(template, spacing_mm, seed * 1000 + i, contrast)
        path = out / "train" / f"sub-{i + 1:02d}.nii.gz"
        image = _image_like(arr, template_image)
        sitk.WriteImage(image, str(path), useCompression=True)
        train_images.append(image)
        cohort.train.append({"file": str(path), "contrast": contrast})
    rng = np.random.default_rng(seed + 12)
    synthetic: list[tuple[sitk.Image, dict, str]] = []
    for i in range(n_novel):
        contrast = "T1" if i % 2 == 0 else "T2"
        arr = make_subject(template, spacing_mm, seed * 1000 + 500 + i, contrast)
        synthetic.append((_image_like(arr, template_image), {"contrast": contrast}, "novel"))
    sources = rng.permutation(np.resize(np.arange(n_train), len(copies)))
    for j, (name, angles, shift) in enumerate(copies):
        src = int(sources[j])
        moved = move_rigid(train_images[src], angles, shift)
        arr = fresh_noise(moved, train_images[src], copy_noise, seed * 1000 + 900 + j)
        info = {
            "scenario": name,
            "source": cohort.train[src]["file"],
            "contrast": cohort.train[src]["contrast"],
            "rotation_deg": {"LR_x": angles[0], "AP_y": angles[1], "SI_z": angles[2]},
            "shift_mm": [float(v) for v in shift],
            "shift_norm_mm": float(np.linalg.norm(shift)),
            "centre_mm": physical_centre(template_image).tolist(),
            "matrix": rigid_matrix(angles).tolist(),
        }
        synthetic.append((_image_like(arr, template_image), info, "copy"))
    for j, name in enumerate(mangled):
        src = (j + seed) % n_train
        copy, pose = mangle(train_images[src], name)
        noisy = sitk.GetImageFromArray(
            fresh_noise(copy, train_images[src], copy_noise, seed * 1000 + 950 + j)
        )
        noisy.CopyInformation(copy)
        info = {
            "scenario": name,
            "source": cohort.train[src]["file"],
            "contrast": cohort.train[src]["contrast"],
            "affine": {
                "linear": pose.linear.tolist(),
                "shift_mm": pose.shift_mm.tolist(),
                "centre_mm": pose.centre_mm.tolist(),
                "axes": pose.mirror,
                "scale": [float(v) for v in pose.scale],
            },
        }
        synthetic.append((noisy, info, "copy"))
    order = rng.permutation(len(synthetic))
    for k, idx in enumerate(order):
        image, info, role = synthetic[idx]
        path = out / "synthetic" / f"synth-{k + 1:02d}.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        entry = {"file": str(path), **info}
        (cohort.copies if role == "copy" else cohort.novel).append(entry)
    (out / "truth.json").write_text(json.dumps(asdict(cohort), indent=2))
    return cohort


def load_truth(root: str | os.PathLike) -> HardCohort:
    """Read truth.json back."""
    data = json.loads((Path(root) / "truth.json").read_text())
    return HardCohort(**data)
