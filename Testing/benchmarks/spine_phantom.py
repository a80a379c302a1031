"""A procedural thoracolumbar spine phantom: a second anatomy for the engine (issue 20.8).

Everything else in this project is a head (MNI152 under deformations). The paper's data
include spine and thigh MRI, and the package registry carries almost no real non-brain MR
(pydicom's wheel ships one axial abdominal slice, examples_overlay.dcm), so subjects are
drawn here from an anatomical model instead, as sagittal T2 (or T1) spine series:

- anatomy, built in millimetres: a chain of vertebral bodies from the sacrum up to the
  mid-thoracic spine (rounded boxes with concave endplates, a cortical rim and a textured
  marrow), wedge-shaped intervertebral discs between the endplates (annulus, and a nucleus
  that is bright in T2 when healthy, dark and thin when degenerated, with a posterior
  bulge), the spinal canal (epidural fat, a continuous CSF-filled dural sac, the cord down
  to the conus, cauda equina roots below it), posterior elements (pedicles, laminae,
  articular processes, spinous processes, lumbar transverse processes, thoracic ribs),
  paraspinal and psoas muscles, subcutaneous fat and skin on an elliptical trunk, the aorta
  (flow void) and the inferior vena cava, kidneys in perirenal fat, the liver, the
  abdominal viscera below the diaphragm and the lungs and mediastinum above it, air around;
- subjects differ as people do: vertebral and disc heights (which, with where the field of
  view falls, sets the number of visible levels), sacral slope and lordosis/kyphosis,
  scoliosis (a lateral curve and a tilt), a spondylolisthesis now and then, disc
  degeneration (darker, thinner, bulging discs, Modic endplate changes), marrow signal and
  haemangiomas, canal size and conus level, body size and fat thickness, tissue contrast
  and gamma, a coil sensitivity falling off from the posterior surface coil with a smooth
  random bias field, and Rician noise over the whole field of view;
- each volume is stored the way a sagittal spine series comes off a scanner: slices run
  left -> right along the third index, rows superior -> inferior, columns anterior ->
  posterior (direction cosines: columns +y, rows -z, slices -x in LPS, a right-handed
  frame), anisotropic spacing (thick slices, finer in-plane), written as NIfTI by
  SimpleITK (nibabel reads its axes as P, I, R).

A subject is a pure function of (seed, subject index) and the grid. make_spine_cohort
writes train/ and synthetic/ (held-out subjects and copies moved in 3D, as hard_cohort.py
does for heads) with a truth.json that hard_cohort.load_truth reads, so the hard-cohort
benchmark's evaluation applies unchanged; write_slice_pngs cuts sagittal slices to uint8
PNG files named subjectNN_xNNN.png for the 2D path.

    python Testing/benchmarks/spine_phantom.py --out spine-cohort --png spine-png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from Testing.benchmarks.hard_cohort import (  # noqa: E402
    TRUTH_CONVENTION,
    HardCohort,
    move_rigid,
    physical_centre,
    rician,
    rigid_matrix,
)

# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class SpineGrid:
    """The acquisition grid of a sagittal series: n_lr slices of n_si rows x n_ap columns.

    Array order (SimpleITK's [z, y, x]): [slice (left -> right), row (superior ->
    inferior), column (anterior -> posterior)]; the grid's centre is the LPS origin.
    """

    n_lr: int = 24
    n_si: int = 160
    n_ap: int = 128
    spacing_lr: float = 3.5
    spacing_si: float = 1.75
    spacing_ap: float = 1.75

    # Index axes (x = columns, y = rows, z = slices) in LPS: +P, -S, -L (a right-handed
    # frame: the slice normal is the row direction x the column direction).
    DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_lr, self.n_si, self.n_ap)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """SimpleITK order: (columns, rows, slices)."""
        return (self.spacing_ap, self.spacing_si, self.spacing_lr)

    @property
    def fov_mm(self) -> tuple[float, float, float]:
        """(left-right, superior-inferior, anterior-posterior) extent in mm."""
        return (
            self.n_lr * self.spacing_lr,
            self.n_si * self.spacing_si,
            self.n_ap * self.spacing_ap,
        )

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS mm of voxel (0, 0, 0): the leftmost slice, top row, most anterior column."""
        return (
            (self.n_lr - 1) / 2.0 * self.spacing_lr,
            -(self.n_ap - 1) / 2.0 * self.spacing_ap,
            (self.n_si - 1) / 2.0 * self.spacing_si,
        )

    def coordinates(self, sub_lr: int = 1):
        """LPS mm along each array axis: l [n_lr * sub_lr] (sub-slices within each thick
        slice, for partial volume), s [n_si], a [n_ap]."""
        k = np.arange(self.n_lr * sub_lr, dtype=np.float64)
        offset = (k % sub_lr + 0.5) / sub_lr - 0.5
        l_mm = self.origin[0] - (k // sub_lr + offset) * self.spacing_lr
        s_mm = self.origin[2] - np.arange(self.n_si) * self.spacing_si
        a_mm = self.origin[1] + np.arange(self.n_ap) * self.spacing_ap
        return l_mm, s_mm, a_mm

    def image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.DIRECTION)
        return image


# The default: a 280 x 224 mm sagittal field of view, 24 slices of 3.5 mm (84 mm across,
# the spine, its posterior elements and the paraspinal muscles), 1.75 mm in-plane pixels.
DEFAULT_GRID = SpineGrid()
# Small and fast, the same field of view (tests and CPU benchmarks).
SMALL_GRID = SpineGrid(n_lr=20, n_si=112, n_ap=96, spacing_lr=4.0, spacing_si=2.5, spacing_ap=2.5)


# --------------------------------------------------------------------------- tissues

AIR, SKIN, FAT, MUSCLE, CORTEX, MARROW, ANNULUS, CSF, CORD, LIGAMENT = range(10)
AORTA, IVC, VISCERA, LUNG, KIDNEY, LIVER, MEDIASTINUM, ROOT, EPIDURAL, HAEMANGIOMA = range(10, 20)
MODIC = 20
NUCLEUS = 32  # NUCLEUS + i: the nucleus of disc i (each disc has its own signal)
TISSUE_NAMES = {
    AIR: "air", SKIN: "skin", FAT: "fat", MUSCLE: "muscle", CORTEX: "cortical bone",
    MARROW: "marrow", ANNULUS: "annulus", CSF: "CSF", CORD: "cord", LIGAMENT: "ligament",
    AORTA: "aorta", IVC: "IVC", VISCERA: "viscera", LUNG: "lung", KIDNEY: "kidney",
    LIVER: "liver", MEDIASTINUM: "mediastinum", ROOT: "nerve root", EPIDURAL: "epidural fat",
    HAEMANGIOMA: "haemangioma", MODIC: "Modic change",
}  # fmt: skip

# Relative signal (CSF = 1 in T2): fast spin echo values read off clinical spine series.
CONTRAST = {
    "T2": {
        AIR: 0.0, SKIN: 0.45, FAT: 0.80, MUSCLE: 0.22, CORTEX: 0.05, MARROW: 0.48,
        ANNULUS: 0.24, CSF: 1.0, CORD: 0.42, LIGAMENT: 0.08, AORTA: 0.05, IVC: 0.30,
        VISCERA: 0.40, LUNG: 0.03, KIDNEY: 0.62, LIVER: 0.25, MEDIASTINUM: 0.30,
        ROOT: 0.35, EPIDURAL: 0.78, HAEMANGIOMA: 0.85, MODIC: 0.75,
    },
    "T1": {
        AIR: 0.0, SKIN: 0.50, FAT: 1.0, MUSCLE: 0.35, CORTEX: 0.05, MARROW: 0.72,
        ANNULUS: 0.30, CSF: 0.14, CORD: 0.48, LIGAMENT: 0.08, AORTA: 0.06, IVC: 0.25,
        VISCERA: 0.40, LUNG: 0.03, KIDNEY: 0.42, LIVER: 0.52, MEDIASTINUM: 0.30,
        ROOT: 0.45, EPIDURAL: 0.95, HAEMANGIOMA: 0.95, MODIC: 0.30,
    },
}  # fmt: skip
NUCLEUS_SIGNAL = {"T2": (0.18, 0.92), "T1": (0.30, 0.38)}  # (degenerated, healthy)

# Levels from the sacrum up: vertebral body height, depth (AP) and width (LR) in mm, and
# the height of the disc below the level (S1: none).
LEVELS = (
    # name  height depth width disc-below
    ("S1", 44.0, 36.0, 48.0, 0.0),
    ("L5", 27.0, 35.0, 50.0, 11.0),
    ("L4", 28.0, 35.0, 48.0, 12.0),
    ("L3", 28.0, 35.0, 46.0, 11.0),
    ("L2", 27.0, 34.0, 44.0, 10.0),
    ("L1", 26.0, 32.0, 42.0, 9.0),
    ("T12", 24.0, 30.0, 38.0, 7.0),
    ("T11", 22.0, 29.0, 36.0, 6.0),
    ("T10", 21.0, 28.0, 34.0, 5.0),
    ("T9", 20.0, 27.0, 32.0, 5.0),
    ("T8", 19.0, 26.0, 31.0, 4.5),
    ("T7", 18.5, 25.0, 30.0, 4.5),
    ("T6", 18.0, 24.0, 29.0, 4.0),
)


# --------------------------------------------------------------------------- the subject


@dataclass
class Vertebra:
    name: str
    centre: np.ndarray  # LPS mm (l, a, s order: x, y, z)
    frame: np.ndarray  # [3, 3] columns: w (left), v (posterior), u (superior) in LPS
    height: float
    depth: float
    width: float
    phi_deg: float  # sagittal angle of the axis: + tilts the top posteriorly
    psi_deg: float  # coronal tilt (scoliosis)


@dataclass
class Disc:
    below: int  # index of the vertebra under it
    degeneration: float  # 0 healthy .. 1 collapsed and black
    height: float
    nucleus_signal: float  # relative to CSF in this contrast


@dataclass
class SpineSubject:
    """One drawn subject: the anatomy's parameters (truth for tests) and the volume."""

    seed: int
    subject: int
    contrast: str
    grid: SpineGrid
    vertebrae: list[Vertebra]
    discs: list[Disc]
    params: dict = field(default_factory=dict)
    array: np.ndarray | None = None  # float32 [n_lr, n_si, n_ap], acquisition order
    labels: np.ndarray | None = None  # uint8, the tissue at each voxel's centre

    def image(self) -> sitk.Image:
        return self.grid.image(self.array)

    def visible_levels(self) -> list[str]:
        """Levels whose body centre lies inside the field of view."""
        half = self.grid.fov_mm[1] / 2.0
        return [v.name for v in self.vertebrae if abs(v.centre[2]) < half]


def _frame(phi_deg: float, psi_deg: float) -> np.ndarray:
    """Columns (w, v, u) in LPS of a vertebra tilted phi (sagittal) then psi (coronal)."""
    phi, psi = np.radians(phi_deg), np.radians(psi_deg)
    # (l, a, s) rotations: about LR by phi (s towards a), then about AP by psi (s towards l).
    r_lr = np.array([[1, 0, 0], [0, np.cos(phi), np.sin(phi)], [0, -np.sin(phi), np.cos(phi)]])
    r_ap = np.array([[np.cos(psi), 0, np.sin(psi)], [0, 1, 0], [-np.sin(psi), 0, np.cos(psi)]])
    return r_ap @ r_lr


def draw_subject(seed: int, subject: int, contrast: str = "T2", grid: SpineGrid = DEFAULT_GRID):
    """The anatomy of one subject (no voxels yet): a SpineSubject with vertebrae and discs."""
    if contrast not in CONTRAST:
        raise ValueError(f"contrast must be one of {', '.join(CONTRAST)} (got {contrast!r})")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(subject), 20]))
    size = rng.uniform(0.88, 1.12)  # overall vertebral size
    disc_scale = rng.uniform(0.85, 1.15)
    severity = rng.beta(1.3, 2.2)  # how degenerated this spine is
    # Sagittal curve: the axis angle of each segment (degrees, + = top tilted posteriorly).
    sacral = -rng.uniform(30.0, 50.0)
    lordosis = rng.uniform(0.65, 1.35)
    steps = np.array([17.0, 9.0, 7.5, 5.5, 4.0, 2.0]) * lordosis  # S1->L5 ... L1->T12
    kyphosis = rng.uniform(2.0, 4.5)
    phis = [sacral]
    for i in range(1, len(LEVELS)):
        step = steps[i - 1] if i - 1 < len(steps) else -kyphosis
        phis.append(phis[-1] + step * rng.uniform(0.8, 1.2))
    slip_level = int(rng.integers(1, 3)) if rng.random() < 0.15 else -1  # L5 or L4 slips
    slip_mm = rng.uniform(3.0, 8.0) if slip_level > 0 else 0.0
    # Chain in the sagittal plane (s, a), from the top endplate of S1 at the origin.
    chain = []
    top = np.zeros(2)
    sacrum_h = LEVELS[0][1] * size
    t = np.array([np.cos(np.radians(phis[0])), np.sin(np.radians(phis[0]))])
    chain.append(top - t * sacrum_h / 2.0)
    disc_heights = [0.0]
    heights = [sacrum_h]
    for i in range(1, len(LEVELS)):
        _, h, _, _, g = LEVELS[i]
        h *= size * rng.uniform(0.94, 1.06)
        g *= size * disc_scale * rng.uniform(0.9, 1.1)
        mean = np.radians((phis[i - 1] + phis[i]) / 2.0)
        bottom = top + g * np.array([np.cos(mean), np.sin(mean)])
        t = np.array([np.cos(np.radians(phis[i])), np.sin(np.radians(phis[i]))])
        if i == slip_level:
            bottom = bottom + np.array([0.0, -slip_mm])  # anterolisthesis: forward (-a)
        centre = bottom + t * h / 2.0
        top = bottom + t * h
        chain.append(centre)
        disc_heights.append(g)
        heights.append(h)
    chain = np.array(chain)
    # Place the chain in the field of view: its SI centre and the canal's AP position.
    s_mid = rng.uniform(85.0, 135.0)  # chain height at the centre of the field of view
    depths = [lv[2] * size for lv in LEVELS]
    k = int(np.searchsorted(chain[:, 0], s_mid))
    k = min(max(k, 1), len(chain) - 1)
    canal_ap = rng.uniform(6.5, 9.0)  # AP radius of the bony canal
    a_canal = np.interp(s_mid, chain[:, 0], chain[:, 1] + np.array(depths) / 2.0 + canal_ap)
    shift = np.array([-s_mid, rng.uniform(4.0, 16.0) - a_canal])
    chain = chain + shift
    # Scoliosis: a lateral curve l(s) and a global tilt; the coronal angle follows it.
    amplitude = rng.uniform(0.0, 4.0) if rng.random() < 0.5 else rng.uniform(4.0, 14.0)
    wavelength = rng.uniform(250.0, 450.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    tilt = np.radians(rng.uniform(-2.5, 2.5))
    l_offset = rng.uniform(-5.0, 5.0)

    def lateral(s):
        return l_offset + amplitude * np.sin(2 * np.pi * s / wavelength + phase) + np.tan(tilt) * s

    def lateral_slope(s):
        return (2 * np.pi / wavelength) * amplitude * np.cos(
            2 * np.pi * s / wavelength + phase
        ) + np.tan(tilt)

    vertebrae = []
    for i, (name, _, depth, width, _) in enumerate(LEVELS):
        s, a = chain[i]
        psi = float(np.degrees(np.arctan(lateral_slope(s))))
        vertebrae.append(
            Vertebra(
                name=name,
                centre=np.array([lateral(s), a, s]),
                frame=_frame(phis[i], psi),
                height=heights[i],
                depth=depth * size * rng.uniform(0.95, 1.05),
                width=width * size * rng.uniform(0.95, 1.05),
                phi_deg=float(phis[i]),
                psi_deg=psi,
            )
        )
    low, high = NUCLEUS_SIGNAL[contrast]
    discs = []
    for i in range(1, len(LEVELS)):
        lumbar = LEVELS[i][0].startswith("L")
        # Lower lumbar discs degenerate most; severity sets how far it goes.
        risk = severity * (1.4 if i <= 2 else 1.0 if lumbar else 0.6)
        degeneration = float(np.clip(risk * rng.uniform(0.2, 1.6) - 0.15, 0.0, 1.0))
        discs.append(
            Disc(
                below=i - 1,
                degeneration=degeneration,
                height=disc_heights[i] * (1.0 - 0.55 * degeneration),
                nucleus_signal=high + (low - high) * degeneration,
            )
        )
    params = {
        "size": float(size),
        "severity": float(severity),
        "sacral_slope_deg": float(-sacral),
        "lordosis_factor": float(lordosis),
        "kyphosis_per_level_deg": float(kyphosis),
        "spondylolisthesis": (
            {"level": LEVELS[slip_level][0], "mm": float(slip_mm)} if slip_level > 0 else None
        ),
        "scoliosis_mm": float(amplitude),
        "scoliosis_wavelength_mm": float(wavelength),
        "scoliosis_phase": float(phase),
        "tilt_deg": float(np.degrees(tilt)),
        "l_offset_mm": float(l_offset),
        "canal_ap_radius_mm": float(canal_ap),
        "canal_lr_radius_mm": float(rng.uniform(9.5, 12.5)),
        "conus_level": ["T12", "L1", "L1", "L2"][int(rng.integers(0, 4))],
        "back_muscle_mm": float(rng.uniform(38.0, 58.0)),
        "fat_mm": float(rng.uniform(6.0, 32.0)),
        "abdomen_mm": float(rng.uniform(80.0, 170.0)),
        "half_width_mm": float(rng.uniform(130.0, 175.0)),
        "diaphragm_mm": float(rng.uniform(-15.0, 30.0)),
        "marrow": float(rng.uniform(0.75, 1.3)),
    }
    return SpineSubject(seed, subject, contrast, grid, vertebrae, discs, params), rng


# --------------------------------------------------------------------------- rendering


class _Canvas:
    """Labels on the supersampled grid, and local coordinates of objects inside boxes."""

    def __init__(self, grid: SpineGrid, sub_lr: int):
        self.l, self.s, self.a = grid.coordinates(sub_lr)
        self.labels = np.zeros((len(self.l), len(self.s), len(self.a)), np.uint8)

    def box(self, centre, radius):
        """Slices of the grid within `radius` mm of `centre` (l, a, s), or None."""
        out = []
        for coords, c in ((self.l, centre[0]), (self.s, centre[2]), (self.a, centre[1])):
            idx = np.flatnonzero(np.abs(coords - c) <= radius)
            if idx.size == 0:
                return None
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return tuple(out)

    def local(self, box, centre, frame):
        """(w, v, u) local coordinates [k, r, c] of the box's points in an object frame."""
        dl = (self.l[box[0]] - centre[0])[:, None, None]
        ds = (self.s[box[1]] - centre[2])[None, :, None]
        da = (self.a[box[2]] - centre[1])[None, None, :]
        return tuple(frame[0, j] * dl + frame[1, j] * da + frame[2, j] * ds for j in range(3))

    def paint(self, box, mask, label):
        region = self.labels[box]
        region[mask] = label


def _superellipse(w, v, u, hw, hv, hu, p_fp=2.5, p_u=6.0):
    """A rounded box's norm: <= 1 inside; cross-section a superellipse of power p_fp."""
    footprint = (np.abs(w / hw) ** p_fp + np.abs(v / hv) ** p_fp) ** (1.0 / p_fp)
    return (footprint**p_u + np.abs(u / hu) ** p_u) ** (1.0 / p_u)


def _bone(canvas, centre, frame, half, cortex_mm=1.3, p_fp=2.5, p_u=6.0, radius=None):
    """A bone piece: cortex shell and marrow inside (half = (w, v, u) half sizes, mm)."""
    box = canvas.box(centre, radius or float(np.linalg.norm(half)) + 2.0)
    if box is None:
        return
    w, v, u = canvas.local(box, centre, frame)
    norm = _superellipse(w, v, u, *half, p_fp=p_fp, p_u=p_u)
    canvas.paint(box, norm <= 1.0, CORTEX)
    inner = 1.0 - cortex_mm / min(half)
    canvas.paint(box, norm <= inner, MARROW)


def _rotated(frame, angle_deg):
    """The frame turned about its w axis by angle (u towards v: + points a process down)."""
    t = np.radians(angle_deg)
    w, v, u = frame[:, 0], frame[:, 1], frame[:, 2]
    return np.stack([w, np.cos(t) * v - np.sin(t) * u, np.sin(t) * v + np.cos(t) * u], axis=1)


def _centreline(subject: SpineSubject):
    """The spine as functions of s (mm): dense samples of each quantity along the chain."""
    verts = subject.vertebrae
    rows = []
    for i, v in enumerate(verts):
        u = v.frame[:, 2]
        for f in (-0.5, 0.0, 0.5):
            p = v.centre + f * v.height * u
            rows.append((p[2], p[1], p[0], v.depth, v.width, v.phi_deg, i))
    rows.sort()
    arr = np.array(rows)
    return {
        "s": arr[:, 0],
        "a": arr[:, 1],
        "l": arr[:, 2],
        "depth": arr[:, 3],
        "width": arr[:, 4],
        "phi": arr[:, 5],
    }


def _along(line, key, s):
    return np.interp(s, line["s"], line[key])


def _smooth_noise(shape, rng, sigma, anisotropy=(1.0, 1.0, 1.0)):
    """Zero-mean, unit-std smooth noise on a grid ([k, r, c] sigmas in voxels)."""
    field_ = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32),
        [sigma * a for a in anisotropy],
        mode="wrap",
    )
    std = float(field_.std()) or 1.0
    return field_ / std


def render(subject: SpineSubject, rng: np.random.Generator, sub_lr: int = 3) -> SpineSubject:
    """Voxels and labels of a drawn subject (sets subject.array and subject.labels)."""
    grid, p = subject.grid, subject.params
    canvas = _Canvas(grid, sub_lr)
    L = canvas.l[:, None, None]
    S = canvas.s[None, :, None]
    A = canvas.a[None, None, :]
    line = _centreline(subject)
    s1 = canvas.s
    a_mid = _along(line, "a", s1)[None, :, None]  # vertebral body centre line
    depth = _along(line, "depth", s1)[None, :, None]
    phi = np.radians(_along(line, "phi", s1))[None, :, None]
    cos_phi = np.cos(phi)
    l_mid = _along(line, "l", s1)[None, :, None]
    width = _along(line, "width", s1)[None, :, None]
    a_post = a_mid + depth / 2.0 / cos_phi  # posterior wall of the vertebral bodies
    a_ant = a_mid - depth / 2.0 / cos_phi
    rc_ap, rc_lr = p["canal_ap_radius_mm"], p["canal_lr_radius_mm"]
    a_canal = a_post + rc_ap / cos_phi
    names = [v.name for v in subject.vertebrae]
    s_of = {v.name: float(v.centre[2]) for v in subject.vertebrae}
    thoracic = S > s_of["T12"] + 0.3 * (s_of["L1"] - s_of["T12"])

    # Trunk: an ellipse per height, its back at the muscles plus fat, a midline furrow;
    # the outline follows the spine smoothly (sigma 20 mm along SI).
    lateral = L - l_mid
    sigma = 20.0 / grid.spacing_si
    muscle = np.where(thoracic[0, :, 0], 0.8, 1.0) * p["back_muscle_mm"]
    back0 = ndimage.gaussian_filter1d(a_canal[0, :, 0] + muscle, sigma, mode="nearest")
    back0 = (back0 + rc_ap + p["fat_mm"])[None, :, None]
    front0 = ndimage.gaussian_filter1d(a_ant[0, :, 0], sigma, mode="nearest")
    front0 = (front0 - p["abdomen_mm"])[None, :, None]
    half_ap = (back0 - front0) / 2.0
    centre_ap = (back0 + front0) / 2.0
    ratio = np.clip(lateral / p["half_width_mm"], -1.0, 1.0)
    extent = half_ap * np.sqrt(1.0 - ratio**2)
    furrow = 6.0 * np.exp(-((lateral / 14.0) ** 2)) * min(1.0, p["fat_mm"] / 15.0)
    back = centre_ap + extent - furrow
    front = centre_ap - extent
    inside = (A < back) & (A > front)
    depth_back = back - A
    depth_front = A - front
    diaphragm = s_of["T12"] + p["diaphragm_mm"] + 0.35 * np.clip(a_ant - A, 0.0, None)
    chest = S > diaphragm
    lab = canvas.labels
    lab[np.broadcast_to(inside & ~chest, lab.shape)] = VISCERA
    lab[np.broadcast_to(inside & chest, lab.shape)] = LUNG
    mediastinum = inside & chest & (np.abs(lateral) < 28.0) & (A < a_ant - 4.0)
    lab[np.broadcast_to(mediastinum, lab.shape)] = MEDIASTINUM
    # Liver: right upper abdomen, under the diaphragm.
    liver = (
        ((L + 75.0) / 95.0) ** 2
        + ((A - (a_ant - 45.0)) / 75.0) ** 2
        + ((S - (diaphragm - 70.0)) / 95.0) ** 2
    ) <= 1.0
    lab[np.broadcast_to(liver & inside & ~chest, lab.shape)] = LIVER
    # Kidneys in perirenal fat, beside L1-L3.
    s_kid = (s_of["L1"] + s_of["L2"]) / 2.0
    for side, drop in ((1.0, 0.0), (-1.0, -15.0)):  # the right kidney sits lower
        c = (side * 62.0 + l_mid, a_mid - 2.0, s_kid + drop)
        norm = ((L - c[0]) / 28.0) ** 2 + ((A - c[1]) / 24.0) ** 2 + ((S - c[2]) / 55.0) ** 2
        lab[np.broadcast_to((norm <= 1.6) & inside & ~chest, lab.shape)] = FAT
        lab[np.broadcast_to((norm <= 1.0) & inside & ~chest, lab.shape)] = KIDNEY
    # Posterior compartment: everything behind the vertebral bodies is muscle (and bone).
    posterior = inside & (A > a_post - 2.0)
    lab[np.broadcast_to(posterior, lab.shape)] = MUSCLE
    # Psoas beside the lumbar bodies, growing towards the pelvis.
    growth = np.clip((s_of["L1"] - S) / max(s_of["L1"] - s_of["L5"], 1.0), 0.0, 1.0)
    for side in (1.0, -1.0):
        c_l = l_mid + side * (width / 2.0 + 8.0 + 8.0 * growth)
        r_lr, r_ap = 8.0 + 10.0 * growth, 9.0 + 9.0 * growth
        psoas = (((L - c_l) / r_lr) ** 2 + ((A - (a_mid - 2.0)) / r_ap) ** 2 <= 1.0) & (
            S < s_of["T12"]
        )
        lab[np.broadcast_to(psoas & inside, lab.shape)] = MUSCLE
    # Great vessels in front of the spine: the aorta (left) to L4, the IVC (right).
    aorta = ((L - (l_mid + 9.0)) ** 2 + (A - (a_ant - 13.0)) ** 2 <= 11.0**2) & (S > s_of["L4"])
    lab[np.broadcast_to(aorta & inside, lab.shape)] = AORTA
    ivc = (((L - (l_mid - 22.0)) / 13.0) ** 2 + ((A - (a_ant - 11.0)) / 9.0) ** 2 <= 1.0) & (
        S < diaphragm + 25.0
    )
    lab[np.broadcast_to(ivc & inside, lab.shape)] = IVC
    # Anterior abdominal wall (when the body is thin enough to show it), fat, skin.
    wall = inside & ~chest & (depth_front < p["fat_mm"] * 0.6 + 10.0)
    lab[np.broadcast_to(wall, lab.shape)] = MUSCLE
    fat = inside & ((depth_back < p["fat_mm"] + 2.0) | (depth_front < p["fat_mm"] * 0.6 + 2.0))
    lab[np.broadcast_to(fat, lab.shape)] = FAT
    skin = inside & ((depth_back < 2.0) | (depth_front < 2.0))
    lab[np.broadcast_to(skin, lab.shape)] = SKIN

    # The bony canal (epidural fat) and, over it, discs and bone.
    canal_dist = ((A - a_canal) * cos_phi / (rc_ap + 1.5)) ** 2 + ((L - l_mid) / (rc_lr + 1.5)) ** 2
    lab[np.broadcast_to(canal_dist <= 1.0, lab.shape)] = EPIDURAL

    verts = subject.vertebrae
    for d, disc in enumerate(subject.discs):
        lower, upper = verts[disc.below], verts[disc.below + 1]
        u_lo, u_up = lower.frame[:, 2], upper.frame[:, 2]
        top_lo = lower.centre + u_lo * lower.height / 2.0
        bottom_up = upper.centre - u_up * upper.height / 2.0
        # The upper vertebra sits on the (possibly collapsed) disc: a thinner disc is
        # painted between the lower endplate and a plane moved down by the lost height.
        centre = (top_lo + bottom_up) / 2.0
        frame = _frame((lower.phi_deg + upper.phi_deg) / 2.0, (lower.psi_deg + upper.psi_deg) / 2)
        hv = (lower.depth + upper.depth) / 4.0
        hw = (lower.width + upper.width) / 4.0
        bulge = 1.0 + 3.5 * disc.degeneration
        box = canvas.box(centre, max(hv, hw) + 12.0)
        if box is None:
            continue
        w, v, u = canvas.local(box, centre, frame)
        dl = (canvas.l[box[0]] - top_lo[0])[:, None, None]
        ds = (canvas.s[box[1]] - top_lo[2])[None, :, None]
        da = (canvas.a[box[2]] - top_lo[1])[None, None, :]
        above_lo = u_lo[0] * dl + u_lo[1] * da + u_lo[2] * ds > -0.5
        dl = (canvas.l[box[0]] - bottom_up[0])[:, None, None]
        ds = (canvas.s[box[1]] - bottom_up[2])[None, :, None]
        da = (canvas.a[box[2]] - bottom_up[1])[None, None, :]
        below_up = u_up[0] * dl + u_up[1] * da + u_up[2] * ds < 0.5
        hv_eff = np.where(v > 0, hv + bulge, hv + 0.5)
        footprint = (np.abs(w / (hw + 0.5)) ** 2.5 + np.abs(v / hv_eff) ** 2.5) ** 0.4
        disc_mask = above_lo & below_up & (footprint <= 1.0)
        canvas.paint(box, disc_mask, ANNULUS)
        gap = float(np.linalg.norm(bottom_up - top_lo))
        nucleus = (
            (w / (0.65 * hw)) ** 2
            + ((v - 0.08 * hv) / (0.66 * hv)) ** 2
            + (u / max(0.42 * gap * (1.0 - 0.5 * disc.degeneration), 0.8)) ** 2
        ) <= 1.0
        canvas.paint(box, disc_mask & nucleus, NUCLEUS + d)
        if disc.degeneration < 0.4 and (d + subject.subject) % 3 == 0:  # intranuclear cleft
            canvas.paint(box, disc_mask & nucleus & (np.abs(u) < 0.6), ANNULUS)

    for i, vert in enumerate(verts):
        hu, hv, hw = vert.height / 2.0, vert.depth / 2.0, vert.width / 2.0
        if vert.name == "S1":  # the sacrum tapers backwards and down
            hv *= 1.05
        box = canvas.box(vert.centre, float(np.linalg.norm([hu, hv, hw])) + 2.0)
        if box is None:
            continue
        w, v, u = canvas.local(box, vert.centre, vert.frame)
        fp = (np.abs(w / hw) ** 2.4 + np.abs(v / hv) ** 2.4) ** (1.0 / 2.4)
        concave = hu - 1.6 * np.clip(1.0 - fp**2, 0.0, 1.0)  # endplates dip in the middle
        norm = (fp**8 + (np.abs(u) / concave) ** 8) ** 0.125
        canvas.paint(box, norm <= 1.0, CORTEX)
        inner = (fp**8 + (np.abs(u) / (concave - 1.2)) ** 8) ** 0.125
        canvas.paint(box, inner <= 1.0 - 1.2 / hv, MARROW)
        # Modic change beside a degenerated disc (above or below this body).
        for d in (i - 1, i):
            if 0 <= d < len(subject.discs) and subject.discs[d].degeneration > 0.6:
                side = 1.0 if d == i else -1.0
                band = (np.sign(u) == side) & (np.abs(u) > hu - 6.0) & (inner <= 0.9)
                canvas.paint(box, band, MODIC)
        if rng.random() < 0.12:  # a haemangioma
            c = rng.uniform(-0.5, 0.5, 3) * np.array([hw, hv, hu])
            r = rng.uniform(3.0, 6.0)
            spot = ((w - c[0]) ** 2 + (v - c[1]) ** 2 + (u - c[2]) ** 2) <= r * r
            canvas.paint(box, spot & (inner <= 0.9), HAEMANGIOMA)

    # Posterior elements, in each vertebra's frame (w left, v posterior, u superior).
    for vert in verts:
        lumbar = vert.name.startswith("L")
        sacral = vert.name == "S1"
        hu, hv = vert.height / 2.0, vert.depth / 2.0
        f = vert.frame
        canal_back = hv + 2.0 * rc_ap

        def at(w, v, u, vert=vert, f=f):
            return vert.centre + f @ np.array([w, v, u])

        for side in (1.0, -1.0):
            # pedicle, superior and inferior articular processes
            _bone(
                canvas,
                at(side * (rc_lr + 3.5), hv + rc_ap, 0.25 * hu),
                f,
                (4.0, rc_ap + 2, 0.3 * hu),
            )
            if not sacral:
                _bone(
                    canvas, at(side * (rc_lr + 8.0), canal_back - 1.0, hu + 1.0), f, (5.0, 6.0, 6.5)
                )
            _bone(canvas, at(side * (rc_lr + 9.0), canal_back + 3.0, -hu - 2.0), f, (5.0, 6.0, 6.5))
            if lumbar:  # transverse process
                _bone(
                    canvas,
                    at(side * (rc_lr + 22.0), hv + rc_ap + 2.0, 0.1 * hu),
                    f,
                    (15.0, 4.5, 4.5),
                )
            elif not sacral:  # a rib, running out and back from the transverse process
                for t in np.arange(0.0, 60.0, 6.0):
                    c = at(
                        side * (rc_lr + 12.0 + t), hv + rc_ap + 4.0 + 0.45 * t, 0.1 * hu - 0.25 * t
                    )
                    _bone(canvas, c, f, (4.5, 5.0, 5.0), cortex_mm=1.2, p_fp=2.0, p_u=2.0)
        # lamina, then the spinous process (lumbar: straight back; thoracic: down)
        _bone(canvas, at(0.0, canal_back + 2.5, -0.1 * hu), f, (rc_lr + 7.0, 3.5, 0.75 * hu))
        if sacral:
            continue
        angle = 8.0 if lumbar else 40.0
        length = (30.0 if lumbar else 34.0) * p["size"]
        sp = _rotated(f, angle)
        centre = at(0.0, canal_back + 3.0, -0.15 * hu) + sp[:, 1] * length / 2.0
        _bone(canvas, centre, sp, (4.5, length / 2.0, (9.0 if lumbar else 5.5)), p_fp=4.0)

    # The dural sac (CSF), continuous from top to bottom; narrower at bulging discs.
    narrowing = np.zeros_like(s1)
    for disc in subject.discs:
        lo, up = verts[disc.below], verts[disc.below + 1]
        s_disc = (lo.centre[2] + up.centre[2]) / 2.0
        narrowing += 2.5 * disc.degeneration * np.exp(-(((s1 - s_disc) / 6.0) ** 2))
    sac_ap = np.clip(rc_ap - 0.5 - narrowing, 3.0, None)[None, :, None]
    sac = ((A - a_canal) * cos_phi / sac_ap) ** 2 + ((L - l_mid) / (rc_lr - 1.5)) ** 2
    lab[np.broadcast_to(sac <= 1.0, lab.shape)] = CSF
    # Cord to the conus (tapering), cauda equina roots below, lying posteriorly (supine).
    conus = s_of[p["conus_level"]]
    taper = np.clip((S - conus) / 25.0, 0.0, 1.0)
    cord_r = np.where(S > conus, 1.0, 0.0) * (1.5 + 2.5 * taper)
    cord = ((A - (a_canal - 0.8)) * cos_phi) ** 2 / np.maximum(cord_r, 1e-3) ** 2 + (
        (L - l_mid) / np.maximum(cord_r * 1.3, 1e-3)
    ) ** 2
    lab[np.broadcast_to((cord <= 1.0) & (sac <= 1.0), lab.shape)] = CORD
    for dl in (-5.0, -2.0, 2.0, 5.0):
        root = ((A - (a_canal + 0.35 * rc_ap)) * cos_phi) ** 2 + (L - l_mid - dl) ** 2 <= 1.0
        lab[np.broadcast_to(root & (S < conus) & (sac <= 1.0), lab.shape)] = ROOT
    # Nothing outside the body, whatever the bone boxes reached.
    lab[np.broadcast_to(~inside, lab.shape)] = AIR

    # Signal: a value per tissue, textured, averaged over sub-slices, blurred in-plane.
    table = dict(CONTRAST[subject.contrast])
    for key in table:
        table[key] *= rng.uniform(0.9, 1.1)
    table[MARROW] *= p["marrow"]
    lut = np.zeros(NUCLEUS + len(subject.discs), np.float32)
    for key, value in table.items():
        lut[key] = value
    for d, disc in enumerate(subject.discs):
        lut[NUCLEUS + d] = disc.nucleus_signal * rng.uniform(0.92, 1.08)
    signal = lut[lab]
    base = (len(canvas.l), len(canvas.s), len(canvas.a))
    fine = np.repeat(_smooth_noise(grid.shape, rng, 0.8), sub_lr, axis=0)
    coarse = np.repeat(_smooth_noise(grid.shape, rng, 3.0), sub_lr, axis=0)
    streak = np.repeat(_smooth_noise(grid.shape, rng, 0.7, (1.0, 4.0, 1.0)), sub_lr, axis=0)
    assert fine.shape == base
    texture = np.ones(base, np.float32)
    texture += np.where(lab == MARROW, 0.14 * fine + 0.10 * coarse, 0.0)
    texture += np.where(lab == MUSCLE, 0.14 * streak, 0.0)
    texture += np.where((lab == FAT) | (lab == EPIDURAL), 0.04 * fine, 0.0)
    texture += np.where(lab == LIVER, 0.06 * coarse, 0.0)
    signal = signal * texture
    bowel = 0.15 + 0.55 / (1.0 + np.exp(-2.5 * coarse - 0.8 * fine))
    signal = np.where(lab == VISCERA, bowel * table[VISCERA] / 0.4, signal)
    signal = np.where(lab == LUNG, table[LUNG] + 0.06 * np.clip(fine, 0.0, None), signal)
    volume = signal.reshape(grid.n_lr, sub_lr, grid.n_si, grid.n_ap).mean(axis=1)
    volume = ndimage.gaussian_filter(volume, (0.0, 0.6, 0.6))
    # Coil: a posterior surface array, falling off towards the front and the FOV's ends.
    reach = rng.uniform(110.0, 220.0)
    a_skin = float(np.median(back))
    a1, s2 = grid.coordinates(1)[2], grid.coordinates(1)[1]
    coil = 0.3 + 0.7 * np.exp(-np.clip(a_skin - a1, 0.0, None) / reach)[None, None, :]
    ends = 1.0 - 0.25 * (s2 / (grid.fov_mm[1] / 2.0))[None, :, None] ** 2
    bias = coil * ends * np.exp(0.12 * _smooth_noise(grid.shape, rng, 10.0))
    gamma = rng.uniform(0.85, 1.15)
    volume = np.clip(volume * bias, 0.0, None) ** gamma
    noisy = rician(volume, rng.uniform(0.015, 0.035), rng)
    subject.array = (noisy * rng.uniform(500.0, 1500.0)).astype(np.float32)
    centre_sub = sub_lr // 2
    subject.labels = lab[centre_sub::sub_lr].copy()
    subject.params.update(
        {
            "gamma": float(gamma),
            "coil_reach_mm": float(reach),
            "visible_levels": subject.visible_levels(),
            "disc_degeneration": {
                f"{names[d.below + 1]}-{names[d.below]}": round(d.degeneration, 3)
                for d in subject.discs
            },
        }
    )
    return subject


def make_subject(
    seed: int,
    subject: int,
    contrast: str = "T2",
    grid: SpineGrid = DEFAULT_GRID,
    sub_lr: int = 3,
) -> SpineSubject:
    """One subject, drawn and rendered: deterministic in (seed, subject, contrast, grid)."""
    drawn, rng = draw_subject(seed, subject, contrast, grid)
    return render(drawn, rng, sub_lr)


# --------------------------------------------------------------------------- files


def write_volume(subject: SpineSubject, path: str | os.PathLike) -> Path:
    """The subject as a NIfTI file (SimpleITK writes the sagittal direction into the sform)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(subject.image(), str(path), useCompression=True)
    return path


def sagittal_slices(image: sitk.Image) -> np.ndarray:
    """[n, rows, cols] sagittal slices in the engine's order (LPS x: right to left),
    superior up and anterior left (as read on a workstation), whatever the file's stored
    orientation."""
    canonical = sitk.DICOMOrient(image, "LPS")
    values = sitk.GetArrayFromImage(canonical)  # [z (I->S), y (A->P), x (R->L)]
    return np.ascontiguousarray(values.transpose(2, 0, 1)[:, ::-1, :])


def write_slice_pngs(
    volume: str | os.PathLike | sitk.Image,
    out_dir: str | os.PathLike,
    subject: int,
    every: int = 1,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> list[Path]:
    """Sagittal slices of one volume as 8-bit PNG files subjectNN_xNNN.png (NN the
    subject, NNN the engine's sagittal slice index: LPS x, right to left), scaled by the
    volume's percentiles."""
    from PIL import Image

    image = volume if isinstance(volume, sitk.Image) else sitk.ReadImage(str(volume))
    slices = sagittal_slices(image)
    low, high = np.percentile(slices, percentiles)
    scaled = np.clip((slices - low) / max(high - low, 1e-6), 0.0, 1.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for x in range(0, len(slices), every):
        path = out / f"subject{subject:02d}_x{x:03d}.png"
        Image.fromarray(np.round(scaled[x] * 255.0).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


# Copies a leaking generator might emit: (name, rotation about (LR, AP, SI) in degrees,
# shift (L, P, S) in mm). For sagittal slices a rotation about LR is in-plane.
DEFAULT_COPIES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("none", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-LR+5", (5.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-AP-4", (0.0, -4.0, 0.0), (0.0, 0.0, 0.0)),
    ("rot-SI+4", (0.0, 0.0, 4.0), (0.0, 0.0, 0.0)),
    ("shift-inplane-6mm", (0.0, 0.0, 0.0), (0.0, 4.0, -4.5)),
    ("shift-3d-7mm", (0.0, 0.0, 0.0), (3.5, -3.0, 5.0)),
    ("combo-LR+6-AP+3-shift5mm", (6.0, 3.0, 0.0), (2.0, 3.0, -3.0)),
)


def mirror_lr(image: sitk.Image) -> sitk.Image:
    """The volume mirrored left-right about its grid centre, on the same grid (the mirror
    a generator's flip augmentation makes; for this grid: the slice order reversed)."""
    array = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[0])))  # index axis (x, y, z) along LR
    mirrored = sitk.GetImageFromArray(np.flip(array, axis=2 - axis).copy())
    mirrored.CopyInformation(image)
    return mirrored


def make_spine_cohort(
    out_dir: str | os.PathLike,
    n_train: int = 12,
    n_novel: int = 6,
    copies=DEFAULT_COPIES,
    mirrored: int = 1,
    grid: SpineGrid = DEFAULT_GRID,
    seed: int = 0,
    contrasts: tuple[str, ...] = ("T2",),
    copy_noise: float = 0.02,
) -> HardCohort:
    """Write train/ and synthetic/ NIfTI volumes and truth.json (hard_cohort's format, so
    hard_cohort.load_truth and hard_benchmark.evaluate read it); returns the truth.

    Training subjects are (seed, 0..n_train-1), novel ones (seed, 1000 + i); contrasts
    cycle over subjects. Copies are training subjects moved rigidly about the volume's
    physical centre (hard_cohort.move_rigid: SimpleITK, not the engine) with fresh Rician
    noise of `copy_noise` x the source's 99th percentile; `mirrored` more copies are
    mirrored left-right (scenario "mirror-LR", no rigid pose: rotation and shift 0 and
    "mirror": true in truth.json).
    """
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    spacing = min(grid.spacing)
    cohort = HardCohort(root=str(out), spacing_mm=spacing)
    cohort.convention = TRUTH_CONVENTION.replace(", identity direction", "")
    cohort.scenarios.append(
        {
            "name": "spine-sagittal",
            "axis": "sagittal",
            "grid": asdict(grid),
            "why": "a second anatomy: sagittal spine series, thick slices, no head",
        }
    )
    images = []
    for i in range(n_train):
        contrast = contrasts[i % len(contrasts)]
        subj = make_subject(seed, i, contrast, grid)
        path = write_volume(subj, out / "train" / f"spine-{i + 1:02d}.nii.gz")
        images.append(subj.image())
        cohort.train.append({"file": str(path), "contrast": contrast, "params": subj.params})
    rng = np.random.default_rng(seed + 20)
    synthetic = []
    for i in range(n_novel):
        contrast = contrasts[i % len(contrasts)]
        subj = make_subject(seed, 1000 + i, contrast, grid)
        synthetic.append((subj.image(), {"contrast": contrast, "params": subj.params}, "novel"))
    jobs = list(copies) + [("mirror-LR", None, None)] * mirrored
    sources = rng.permutation(np.resize(np.arange(n_train), len(jobs)))
    for j, (name, angles, shift) in enumerate(jobs):
        src = int(sources[j])
        if angles is None:
            moved, angles, shift = mirror_lr(images[src]), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
        else:
            moved = move_rigid(images[src], angles, shift)
        peak = float(np.percentile(sitk.GetArrayViewFromImage(images[src]), 99))
        arr = rician(
            sitk.GetArrayFromImage(moved), copy_noise * peak, np.random.default_rng([seed, 900 + j])
        )
        image = sitk.GetImageFromArray(arr)
        image.CopyInformation(images[src])
        info = {
            "scenario": name,
            "source": cohort.train[src]["file"],
            "contrast": cohort.train[src]["contrast"],
            "mirror": name == "mirror-LR",
            "rotation_deg": {"LR_x": angles[0], "AP_y": angles[1], "SI_z": angles[2]},
            "shift_mm": [float(v) for v in shift],
            "shift_norm_mm": float(np.linalg.norm(shift)),
            "centre_mm": physical_centre(images[src]).tolist(),
            "matrix": rigid_matrix(angles).tolist(),
        }
        synthetic.append((image, info, "copy"))
    order = rng.permutation(len(synthetic))
    for k, idx in enumerate(order):
        image, info, role = synthetic[idx]
        path = out / "synthetic" / f"synth-{k + 1:02d}.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        (cohort.copies if role == "copy" else cohort.novel).append({"file": str(path), **info})
    (out / "truth.json").write_text(json.dumps(asdict(cohort), indent=2))
    return cohort


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="spine-cohort")
    ap.add_argument("--n-train", type=int, default=12)
    ap.add_argument("--n-novel", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="the small grid (tests, CPU runs)")
    ap.add_argument("--contrasts", default="T2", help="comma-separated, cycled: T2,T1")
    ap.add_argument("--png", help="also cut every training volume's slices to PNG here")
    args = ap.parse_args(argv)
    grid = SMALL_GRID if args.small else DEFAULT_GRID
    cohort = make_spine_cohort(
        args.out,
        n_train=args.n_train,
        n_novel=args.n_novel,
        grid=grid,
        seed=args.seed,
        contrasts=tuple(args.contrasts.split(",")),
    )
    if args.png:
        for i, entry in enumerate(cohort.train):
            write_slice_pngs(entry["file"], args.png, i)
    print(
        f"{len(cohort.train)} training, {len(cohort.novel)} novel, {len(cohort.copies)} "
        f"copies -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
