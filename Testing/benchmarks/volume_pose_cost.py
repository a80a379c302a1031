"""Cost and accuracy of the volume stage (volume_pose) on the hard cohort (issue 12).

Per copy: register its true source onto it from the identity (no seed: the worst start),
compare the pose with truth.json, resample the source on every foreground slice plane of
the copy and take per-slice NCC. Per novel subject: the same against every training subject
of its contrast (the volume-level similarities a null would hold). Prints seconds per
synthetic volume for registration and for resampling all its slices.

    python Testing/benchmarks/volume_pose_cost.py hard-baseline-output/cohort
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from MemorizationIndexLib.search import volume_pose as vp  # noqa: E402

from Testing.benchmarks.hard_cohort import load_truth  # noqa: E402


def foreground_slices(image: sitk.Image, share: float = 0.05) -> np.ndarray:
    """Axial slices with anatomy: `share` of voxels above a quarter of the robust range (a
    lower threshold lets slices of pure Rician background noise through)."""
    values = sitk.GetArrayFromImage(vp.robust_unit(image))  # a copy: the image is a temporary
    return np.flatnonzero((values > 0.25).mean(axis=(1, 2)) >= share)


def stage(synthetic: sitk.Image, training: sitk.Image) -> dict:
    reg = vp.register_volumes(synthetic, training)
    start = time.perf_counter()
    ks = foreground_slices(synthetic)
    planes = vp.resample_on_slice_planes(training, synthetic, reg.pose, ks)
    synth = vp.synthetic_slices(synthetic, ks)
    nccs = np.array([vp.slice_ncc(s, t) for s, t in zip(synth, planes, strict=True)])
    return {
        "pose": reg.pose.summary(),
        "similarity": reg.similarity,
        "register_seconds": reg.seconds,
        "resample_seconds": time.perf_counter() - start,
        "n_slices": int(len(ks)),
        "slice_ncc_min": float(nccs.min()),
        "slice_ncc_median": float(np.median(nccs)),
        "slice_ncc_q10": float(np.percentile(nccs, 10)),
    }


def centre_of_slice(image: sitk.Image, k: int) -> tuple[float, float, float]:
    nx, ny, _ = image.GetSize()
    return image.TransformContinuousIndexToPhysicalPoint(((nx - 1) / 2, (ny - 1) / 2, float(k)))


def seeded_from_report(report: Path, truth) -> list[dict]:
    """The seed from the engine's own slice matches (slices.csv: match slice and the stage-2
    in-plane pose, flips left out), then registration from it, for every copy."""
    with open(report / "slices.csv", newline="") as f:
        slices = list(csv.DictReader(f))
    with open(report / "volumes.csv", newline="") as f:
        volumes = {Path(v["volume"]).name: v for v in csv.DictReader(f)}
    rows = []
    for c in sorted(truth.copies, key=lambda c: c["scenario"]):
        name = Path(c["file"]).name
        candidate = volumes[name]["match_volume"]
        mine = [
            r
            for r in slices
            if Path(r["volume"]).name == name
            and r["match_volume"] == candidate
            and r.get("transform", "none") == "none"
        ]
        synthetic, training = sitk.ReadImage(c["file"]), sitk.ReadImage(candidate)
        row = {"scenario": c["scenario"], "n_matches": len(mine)}
        row["candidate_is_source"] = Path(candidate).name == Path(c["source"]).name
        if len(mine) < 2:
            rows.append(row)
            continue
        syn = np.array([centre_of_slice(synthetic, int(r["slice_index"])) for r in mine])
        trn = np.array([centre_of_slice(training, int(r["match_slice"])) for r in mine])
        inplane = np.array(
            [[float(r.get(k, 0.0) or 0.0) for k in ("angle_deg", "shift_x_mm", "shift_y_mm")]
             for r in mine]
        )  # fmt: skip
        weights = np.array([float(r["similarity"]) for r in mine])
        start = time.perf_counter()
        seed = vp.seed_pose_from_slice_matches(
            syn, trn, vp.physical_centre(training), inplane, weights=np.clip(weights, 1e-3, None)
        )
        seed_seconds = time.perf_counter() - start
        reg = vp.register_volumes(synthetic, training, initial=seed.pose)
        true_angles = np.array([c["rotation_deg"][k] for k in ("LR_x", "AP_y", "SI_z")])
        for label, pose in (("seed", seed.pose), ("refined", reg.pose)):
            row[f"{label}_angle_error_deg"] = float(np.abs(pose.angles_deg - true_angles).max())
            row[f"{label}_shift_error_mm"] = float(np.linalg.norm(pose.shift_mm - c["shift_mm"]))
        row.update(
            inliers=int(seed.inliers.sum()),
            seed_seconds=seed_seconds,
            register_seconds=reg.seconds,
            similarity=reg.similarity,
        )
        rows.append(row)
        print(
            f"{c['scenario']:<28} matches {len(mine):>3} inliers {row['inliers']:>3} "
            f"source {'yes' if row['candidate_is_source'] else 'NO ':>3}  seed "
            f"{row['seed_angle_error_deg']:>5.2f} deg {row['seed_shift_error_mm']:>5.2f} mm  "
            f"refined {row['refined_angle_error_deg']:>5.2f} deg "
            f"{row['refined_shift_error_mm']:>5.2f} mm  NCC {reg.similarity:.3f}  "
            f"{reg.seconds:.1f} s"
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cohort", help="folder with truth.json (hard_cohort.make_hard_cohort)")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--report", help="a score report of the cohort: seed from its slices.csv")
    args = p.parse_args(argv)
    truth = load_truth(args.cohort)
    if args.report:
        rows = seeded_from_report(Path(args.report), truth)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2))
        return 0
    read = sitk.ReadImage
    rows = []
    print(f"{'copy':<28} {'dLR':>6} {'dAP':>6} {'dSI':>6} {'dt mm':>6} {'NCC':>6} "
          f"{'sl.min':>6} {'sl.q10':>6} {'reg s':>6} {'res s':>6}")  # fmt: skip
    for c in sorted(truth.copies, key=lambda c: c["scenario"]):
        r = stage(read(c["file"]), read(c["source"]))
        pose = r["pose"]
        true_angles = [c["rotation_deg"][k] for k in ("LR_x", "AP_y", "SI_z")]
        got = [pose["angle_lr_deg"], pose["angle_ap_deg"], pose["angle_si_deg"]]
        shift = [pose["shift_l_mm"], pose["shift_p_mm"], pose["shift_s_mm"]]
        r["angle_error_deg"] = (np.array(got) - true_angles).tolist()
        r["shift_error_mm"] = float(np.linalg.norm(np.array(shift) - c["shift_mm"]))
        r.update(role="copy", scenario=c["scenario"], file=c["file"])
        rows.append(r)
        e = r["angle_error_deg"]
        print(
            f"{c['scenario']:<28} {e[0]:>+6.2f} {e[1]:>+6.2f} {e[2]:>+6.2f} "
            f"{r['shift_error_mm']:>6.2f} {r['similarity']:>6.3f} {r['slice_ncc_min']:>6.3f} "
            f"{r['slice_ncc_q10']:>6.3f} {r['register_seconds']:>6.1f} "
            f"{r['resample_seconds']:>6.1f}"
        )
    for n in truth.novel:
        for t in truth.train:
            if t["contrast"] != n["contrast"]:
                continue
            r = stage(read(n["file"]), read(t["file"]))
            r.update(role="novel", file=n["file"], training=t["file"])
            rows.append(r)
    copies = [r for r in rows if r["role"] == "copy"]
    novel = [r for r in rows if r["role"] == "novel"]
    best_novel = {}
    for r in novel:
        best_novel[r["file"]] = max(best_novel.get(r["file"], -1.0), r["similarity"])
    print(
        f"copies: aligned NCC min {min(r['similarity'] for r in copies):.3f}; "
        f"per-slice NCC min {min(r['slice_ncc_min'] for r in copies):.3f}"
    )
    print(
        f"novel vs same-contrast training: aligned NCC max {max(best_novel.values()):.3f} "
        f"(per novel best: {', '.join(f'{v:.3f}' for v in best_novel.values())}); "
        f"per-slice NCC median of medians {np.median([r['slice_ncc_median'] for r in novel]):.3f}"
    )
    reg = [r["register_seconds"] for r in rows]
    res = [r["resample_seconds"] / r["n_slices"] for r in rows]
    print(
        f"cost: registration {np.median(reg):.1f} s median ({min(reg):.1f}-{max(reg):.1f}) per "
        f"volume pair; resampling + NCC {1000 * np.median(res):.1f} ms per slice "
        f"({np.median([r['resample_seconds'] for r in rows]):.1f} s per volume)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
