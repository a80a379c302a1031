"""The volume stage on mirrored, zoomed and header-mangled copies (issue 21, point 4).

One MNI152-made head (Testing/engine/moved_copies.py, 2 mm by default) is the training
scan; its copies are made outside the engine (numpy flips and transposes, scipy zooms,
SimpleITK headers written by hand), each with fresh Rician noise. Both volumes go through
what a bank keeps for stage 3 (volume_stage.CompactVolume) and `volume_fit.fit_volume`
with the volume stage's own settings, seeded centre onto centre (what slice matches give
when the header is wrong; the end-to-end path seeds from the matches). Reported per copy:
the rigid fit's aligned NCC, the chosen fit's, the axes found against the truth, the
errors of scale (%), rotation (degrees) and shift (mm, at the training centre), the
registrations run and the seconds. Novel rows: other subjects fitted onto the same head,
whose chosen fit must not rise above the rigid one; moved rows: copies that only moved,
which must keep their rigid fit (one registration, pose error < 0.1 degree / 0.1 mm).

    python Testing/benchmarks/run_benchmarks.py --only volume-fit --out DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MemorizationIndex"))

import SimpleITK as sitk  # noqa: E402
from MemorizationIndexLib.search import volume_fit as vf  # noqa: E402
from MemorizationIndexLib.search import volume_pose as vp  # noqa: E402
from MemorizationIndexLib.search import volume_stage as vs  # noqa: E402
from MemorizationIndexLib.search.affine_pose import AffinePose  # noqa: E402

from Testing.engine import moved_copies as mc  # noqa: E402

TITLE = "Volume stage: mirrored, zoomed and header-mangled copies (stage 3 alone)"
SETTINGS = vf.FitSettings(
    vs.REGISTRATION_GRID_MM, (2, 1), vs.REGISTRATION_ITERATIONS, vs.REGISTRATION_SAMPLING
)
# Copies that only moved (issue 12's kinds): they must keep their rigid fit.
MOVED = {
    "tilted-6deg": ((6.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "tilted-and-shifted": ((3.0, -4.0, 0.0), (4.0, -5.0, 6.0)),
}


def copies(train: sitk.Image) -> dict:
    """name -> (training image, copy, true pose)."""
    true_spacing = sitk.Image(train)
    true_spacing.SetSpacing([s * 1.1 for s in train.GetSpacing()])
    out = {
        f"mirror-{name}": (train, *mc.mirrored(train, axis))
        for axis, name in enumerate(("LR", "AP", "SI"))
    }
    for zoom in (0.9, 1.1):
        out[f"zoom-{zoom}"] = (train, *mc.zoomed(train, (zoom,) * 3))
        out[f"zoom-{zoom}-in-plane"] = (train, *mc.zoomed(train, (zoom, zoom, 1.0)))
    out["identity-header-true-1.1x"] = (
        true_spacing, *mc.identity_header(true_spacing, train.GetSpacing()[0]))  # fmt: skip
    out["axes-PS-swapped"] = (train, *mc.swapped(train, (1, 2)))
    for name, (angles, shift) in MOVED.items():
        truth = vp.RigidPose.from_angles(angles, shift, vp.physical_centre(train))
        out[name] = (train, mc.move_scipy(train, angles, shift), AffinePose.of(truth))
    return out


def compact(image: sitk.Image) -> sitk.Image:
    return vs.CompactVolume.of(image).image()


def fit_row(training: sitk.Image, copy: sitk.Image, truth: AffinePose | None) -> dict:
    fixed, moving = compact(copy), compact(training)
    c = vp.physical_centre(moving)
    seed = vp.RigidPose(np.eye(3), vp.physical_centre(fixed) - c, c)
    fit = vf.fit_volume(fixed, moving, seed, settings=SETTINGS)
    row = {
        "rigid_ncc": fit.rigid_similarity,
        "ncc": fit.similarity,
        "best_alternative_ncc": fit.alternative_similarity,
        "axes": fit.pose.mirror,
        "scale": [float(v) for v in fit.pose.scale],
        "registrations": fit.registrations,
        "seconds": fit.seconds,
    }
    if truth is not None:
        row |= pose_errors(fit.pose, truth)
    return row


def pose_errors(found: AffinePose, truth: AffinePose) -> dict:
    """The true axes and a found pose's errors: scale (%, worst axis), rotation (degrees,
    worst axis) and shift (mm, at the truth's centre)."""
    at = truth.centre_mm
    return {
        "true_axes": truth.mirror,
        "scale_error_pct": float(100 * np.max(np.abs(found.scale / truth.scale - 1))),
        "angle_error_deg": float(np.max(np.abs(found.angles_deg - truth.angles_deg))),
        "shift_error_mm": float(np.linalg.norm(found.apply(at) - truth.apply(at))),
    }


def run(out: Path, spacing: float = 2.0, n_novel: int = 4) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = mc.template(spacing)
    train = mc.subject(base, 1)
    rows = {name: fit_row(*made) for name, made in copies(train).items()}
    novel = {f"novel-{k}": fit_row(train, mc.subject(base, 50 + k), None) for k in range(n_novel)}
    results = {
        "spacing_mm": spacing,
        "shape": list(train.GetSize()),
        "copies": rows,
        "novel": novel,
        "seconds": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


def markdown(results: dict) -> str:
    lines = [
        f"### {TITLE}",
        "",
        f"One MNI152-made head at {results['spacing_mm']} mm ({results['shape']} voxels), "
        f"{results['seconds']:.0f} s in all.",
        "",
        "| copy | rigid NCC | NCC | axes (truth) | scale err % | angle err ° | shift err mm "
        "| registrations | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["copies"].items():
        lines.append(
            f"| {name} | {r['rigid_ncc']:.3f} | {r['ncc']:.3f} | {r['axes']} ({r['true_axes']}) "
            f"| {r['scale_error_pct']:.2f} | {r['angle_error_deg']:.2f} "
            f"| {r['shift_error_mm']:.2f} | {r['registrations']} | {r['seconds']:.1f} |"
        )
    for name, r in results["novel"].items():
        verdict = "refused" if r["ncc"] == r["rigid_ncc"] else "TAKEN"
        lines.append(
            f"| {name} (another subject; best mirrored/scaled fit "
            f"{r['best_alternative_ncc']:.3f}, {verdict}) | {r['rigid_ncc']:.3f} | {r['ncc']:.3f} "
            f"| {r['axes']} | | | | {r['registrations']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"
