"""2D slices of subjects that differ as people do, for the diffusion benchmark (issue 20.7).

A pixel oracle can only tell a memorised sample from a novel one when real slices of
*different* people are far apart. On the earlier cohort (one template, mild warps) a held-out
subject's slice reached NCC 0.97-0.99 with a training slice at 64 px: as close as a copy.
Here subjects differ more, in the ways scans of different people and sites do:

- three templates, all real MRI shipped inside installed packages (no download):
  ``mni-t1``: nilearn's MNI152 2009a T1 (an average of 152 adults, with scalp and skull);
  ``mni-tissue``: a skull-stripped T2-like contrast built from nilearn's MNI152 grey- and
  white-matter probability maps (CSF bright, grey matter mid, white matter dark);
  ``epi``: the first frame of nibabel's example4d.nii.gz, a real individual's brain
  (echo-planar contrast, another head, another site);
- per subject a strong global affine (scale 0.85-1.15 per axis, rotation +-10 degrees in
  plane and +-6 about the left-right axis, shifts of up to 6 mm), coarse and fine elastic
  warps (about 6 mm and 2.5 mm), a contrast change (gamma 0.7-1.4), a smooth multiplicative
  bias field and Rician noise at the 64 px scale;
- axial slices at the same template levels for every subject of a template (the hardest
  case for the oracle: a held-out slice shows the same anatomy as a training slice).

Files: ``train/subjectNN_zKKK.png`` and ``heldout/subjectNN_zKKK.png`` (8-bit; odd
subjects as RGB of grey, the way medfusion writes its samples), and ``cohort.json``
(subjects, templates, parameters, the repeated images).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from Testing.benchmarks.diffusion2d.oracle import read_grey  # noqa: F401 (used here, and by others from here)

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

IMAGE_SIZE = 64
TEMPLATES = ("mni-t1", "mni-tissue", "epi")
NAME_RE = re.compile(r"subject(\d+)_z(\d+)")
GRID_MM = 2.0  # every template is resampled to this isotropic grid before warping


@dataclass
class Template:
    """A template volume on a GRID_MM grid, [x, y, z] in RAS order, scaled to ~[0, 1]."""

    name: str
    volume: np.ndarray
    levels: tuple[int, ...]  # axial slice indices used for every subject of this template
    box: tuple[int, int, int, int]  # in-plane crop (x0, x1, y0, y1), square, around the head


@dataclass
class Cohort:
    root: str
    image_size: int
    train_dir: str
    heldout_dir: str
    subjects: list[dict] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)  # training file names to repeat

    def train_files(self) -> list[Path]:
        return sorted(Path(self.train_dir).glob("*.png"))

    def heldout_files(self) -> list[Path]:
        return sorted(Path(self.heldout_dir).glob("*.png"))


def subject_of(name: str) -> int | None:
    """The subject number in a file name like subject07_z031.png (None if absent)."""
    m = NAME_RE.search(Path(name).name)
    return int(m.group(1)) if m else None


def _canonical(img) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    return ndimage.zoom(data, zooms / GRID_MM, order=1)


def _unit(volume: np.ndarray) -> np.ndarray:
    top = float(np.percentile(volume[volume > 0], 99.5))
    return np.clip(volume / top, 0.0, 1.2).astype(np.float32)


def _box(volume: np.ndarray, margin: int = 3) -> tuple[int, int, int, int]:
    """A square in-plane box around everything above 5 % (of the whole volume)."""
    proj = volume.max(axis=2) > 0.05
    xs, ys = np.flatnonzero(proj.any(axis=1)), np.flatnonzero(proj.any(axis=0))
    cx, cy = (xs[0] + xs[-1]) / 2.0, (ys[0] + ys[-1]) / 2.0
    half = max(xs[-1] - xs[0], ys[-1] - ys[0]) / 2.0 + margin
    return (
        int(round(cx - half)),
        int(round(cx + half)),
        int(round(cy - half)),
        int(round(cy + half)),
    )


def _levels(volume: np.ndarray, lo: float, hi: float, n: int) -> tuple[int, ...]:
    zs = np.flatnonzero((volume > 0.05).any(axis=(0, 1)))
    z0, z1 = zs[0] + lo * (zs[-1] - zs[0]), zs[0] + hi * (zs[-1] - zs[0])
    return tuple(int(round(z)) for z in np.linspace(z0, z1, n))


def load_templates(n_levels: int = 16) -> dict[str, Template]:
    """The three templates (files inside the nilearn and nibabel wheels; nothing downloads)."""
    import nibabel as nib
    from nibabel.testing import data_path
    from nilearn import datasets

    t1 = _unit(_canonical(datasets.load_mni152_template(resolution=1)))
    gm = _canonical(datasets.load_mni152_gm_template(resolution=1))
    wm = _canonical(datasets.load_mni152_wm_template(resolution=1))
    brain = ndimage.binary_fill_holes(ndimage.binary_closing((gm + wm) > 0.2, iterations=3))
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    csf = ndimage.gaussian_filter(csf, 0.5)
    tissue = (1.0 * csf + 0.62 * gm + 0.32 * wm) * brain
    tissue = _unit(tissue.astype(np.float32))
    epi = _canonical(nib.load(str(Path(data_path) / "example4d.nii.gz")))
    epi = _unit(epi)
    out = {}
    for name, vol, lo, hi in (
        ("mni-t1", t1, 0.35, 0.85),
        ("mni-tissue", tissue, 0.30, 0.80),
        ("epi", epi, 0.15, 0.85),
    ):
        out[name] = Template(name, vol, _levels(vol, lo, hi, n_levels), _box(vol))
    return out


def _smooth(shape, rng: np.random.Generator, coarse: int, levels) -> np.ndarray:
    """A smooth random 3D field of unit scale over `shape` (a coarse normal grid,
    cubic-interpolated), evaluated only on the axial `levels`: (X, Y, len(levels))."""
    grid = rng.standard_normal((coarse,) * 3)
    axes = [np.arange(shape[0]), np.arange(shape[1]), np.asarray(levels)]
    # grid_mode: coarse cell centres at (i + 0.5) * s / coarse - 0.5, as ndimage.zoom does
    pos = [(a + 0.5) * coarse / s - 0.5 for a, s in zip(axes, shape, strict=True)]
    pts = np.meshgrid(*pos, indexing="ij")
    return ndimage.map_coordinates(grid, pts, order=3, mode="nearest").astype(np.float32)


def subject_parameters(rng: np.random.Generator) -> dict:
    return {
        "scale": rng.uniform(0.85, 1.15, size=3).round(4).tolist(),
        "rot_z_deg": round(float(rng.uniform(-10, 10)), 3),
        "rot_x_deg": round(float(rng.uniform(-6, 6)), 3),
        "shift_mm": rng.uniform(-6, 6, size=2).round(3).tolist() + [0.0],
        "warp_coarse_mm": round(float(rng.uniform(5.0, 7.0)), 3),
        "warp_fine_mm": round(float(rng.uniform(2.0, 3.0)), 3),
        "gamma": round(float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)))), 4),
        "bias": round(float(rng.uniform(0.15, 0.3)), 4),
        "noise": round(float(rng.uniform(0.015, 0.035)), 4),
    }


def make_subject(template: Template, params: dict, rng: np.random.Generator) -> np.ndarray:
    """The subject's axial slices at the template's levels, (n_levels, 64, 64) float32."""
    vol = template.volume
    shape = vol.shape
    c = np.array([(s - 1) / 2.0 for s in shape])
    levels = np.asarray(template.levels)
    x, y, z = np.meshgrid(
        np.arange(shape[0], dtype=np.float32),
        np.arange(shape[1], dtype=np.float32),
        levels.astype(np.float32),
        indexing="ij",
    )
    rel = [(x - c[0]) * GRID_MM, (y - c[1]) * GRID_MM, (z - c[2]) * GRID_MM]  # output mm
    rel = [rel[a] - params["shift_mm"][a] for a in range(3)]
    az, ax = np.radians(params["rot_z_deg"]), np.radians(params["rot_x_deg"])
    # inverse pose: output point -> template point (rotate back, then undo the scale)
    rx, ry = np.cos(az) * rel[0] + np.sin(az) * rel[1], -np.sin(az) * rel[0] + np.cos(az) * rel[1]
    ry, rz = np.cos(ax) * ry + np.sin(ax) * rel[2], -np.sin(ax) * ry + np.cos(ax) * rel[2]
    src = [rx / params["scale"][0], ry / params["scale"][1], rz / params["scale"][2]]
    coords = []
    for a in range(3):
        disp = params["warp_coarse_mm"] * _smooth(shape, rng, 4, levels)
        disp += params["warp_fine_mm"] * _smooth(shape, rng, 9, levels)
        coords.append((src[a] + disp) / GRID_MM + c[a])
    sub = coords  # only the slices we keep (the grid holds only those levels)
    # "nearest" beyond the volume: in-plane the edges are background; in z it repeats the
    # edge slice instead of cutting the brain where a tilt reaches past a short volume (epi)
    warped = ndimage.map_coordinates(vol, sub, order=1, mode="nearest")
    bias = np.exp(params["bias"] * _smooth(shape, rng, 3, levels))
    warped = np.clip(warped, 0.0, None) ** params["gamma"] * bias
    x0, x1, y0, y1 = template.box
    pad = max(0, -x0, -y0, x1 - shape[0], y1 - shape[1])
    warped = np.pad(warped, ((pad, pad), (pad, pad), (0, 0)))
    crop = warped[x0 + pad : x1 + pad, y0 + pad : y1 + pad, :]
    zoom = (IMAGE_SIZE / crop.shape[0], IMAGE_SIZE / crop.shape[1], 1.0)
    small = ndimage.zoom(ndimage.gaussian_filter(crop, (0.6, 0.6, 0)), zoom, order=1)
    small = small[:IMAGE_SIZE, :IMAGE_SIZE]
    # axial view: rows anterior -> posterior, columns right -> left (radiological)
    slices = np.flip(np.transpose(small, (2, 1, 0)), axis=1)
    re = slices + rng.normal(0.0, params["noise"], slices.shape)
    im = rng.normal(0.0, params["noise"], slices.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def to_uint8(slices: np.ndarray) -> np.ndarray:
    """One subject's slices to 8-bit with one scale for the subject (its 99.5th percentile)."""
    top = float(np.percentile(slices, 99.5))
    return np.clip(np.round(slices / top * 255.0), 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray, rgb: bool) -> None:
    arr = np.repeat(image[..., None], 3, axis=2) if rgb else image
    Image.fromarray(arr).save(path)


def make_cohort(
    out_dir: str | Path,
    n_train: int = 16,
    n_heldout: int = 6,
    n_levels: int = 16,
    n_repeated: int = 8,
    seed: int = 0,
) -> Cohort:
    """Write train/ and heldout/ PNG slices and cohort.json (deterministic for a seed).

    Templates cycle over subjects (mni-t1, mni-tissue, epi); the held-out subjects cycle the
    same way, so every template has held-out people. `n_repeated` training slices (mid-brain
    levels, distinct subjects) are named in cohort.json as the images to repeat in training.
    """
    out = Path(out_dir)
    train_dir, held_dir = out / "train", out / "heldout"
    train_dir.mkdir(parents=True, exist_ok=True)
    held_dir.mkdir(parents=True, exist_ok=True)
    templates = load_templates(n_levels)
    cohort = Cohort(str(out), IMAGE_SIZE, str(train_dir), str(held_dir))
    for i in range(n_train + n_heldout):
        rng = np.random.default_rng([seed, i])
        tname = TEMPLATES[i % len(TEMPLATES)]
        params = subject_parameters(rng)
        slices = to_uint8(make_subject(templates[tname], params, rng))
        role = "train" if i < n_train else "heldout"
        folder = train_dir if role == "train" else held_dir
        files = []
        for k, level in enumerate(templates[tname].levels):
            name = f"subject{i:02d}_z{level:03d}.png"
            write_png(folder / name, slices[k], rgb=i % 2 == 1)
            files.append(name)
        cohort.subjects.append(
            {"subject": i, "role": role, "template": tname, "params": params, "files": files}
        )
    pick = np.random.default_rng([seed, 999])
    train_subjects = [s for s in cohort.subjects if s["role"] == "train"]
    chosen = pick.choice(len(train_subjects), size=min(n_repeated, n_train), replace=False)
    for j in sorted(chosen):
        files = train_subjects[j]["files"]
        mid = len(files) // 4 + int(pick.integers(0, max(1, len(files) // 2)))
        cohort.repeated.append(files[mid])
    (out / "cohort.json").write_text(json.dumps(asdict(cohort), indent=2))
    return cohort


def load_cohort(root: str | Path) -> Cohort:
    return Cohort(**json.loads((Path(root) / "cohort.json").read_text()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="bench-output/diffusion2d/cohort")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from Testing.benchmarks.diffusion2d import oracle

    cohort = make_cohort(args.out, seed=args.seed)
    print(f"{len(cohort.train_files())} training and {len(cohort.heldout_files())} held-out slices")
    train = oracle.TrainingSet.from_files(cohort.train_files())
    held = [read_grey(f) for f in cohort.heldout_files()]
    matches = oracle.best_matches(held, train)
    scores = np.array([m.ssim for m in matches])
    print(oracle.describe_distribution("held-out real slices, best SSIM", scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
