"""The hard-cohort benchmark: copies that moved in 3D, off the bank's slice grid (issue 12).

Builds the hard cohort (hard_cohort.py), runs the engine through its public CLI only
(`python -m MemorizationIndexLib build-bank` at bank stride 1 and 2, `score` at stride 1),
reads slices.csv and volumes.csv, and reports per copy scenario: slice AUROC of the copy's
slices against every novel subject's slices, stage by stage (each stage's own score:
stage-1 feature similarity, stage-2 aligned NCC, stage-3 volume NCC) and for the calibrated
statistic (slice MI, similarity breaking ties), TPR at 1 % FPR, whether the copy volume is
flagged and matched to its true source, the error of the recovered 3D pose, plus the novel
volumes flagged and the novel-slice flag rate at alpha. Writes results.json and results.md.

    python Testing/benchmarks/hard_benchmark.py --out hard-output
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from MemorizationIndexLib.search.affine_pose import AffinePose  # noqa: E402
from MemorizationIndexLib.search.volume_pose import RigidPose  # noqa: E402

from Testing.benchmarks.hard_cohort import (  # noqa: E402
    MANGLED_COPIES,
    load_truth,
    make_hard_cohort,
)
from Testing.benchmarks.volume_fit_benchmark import pose_errors  # noqa: E402


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count one half)."""
    pos = np.asarray(positive, dtype=np.float64)[:, None]
    neg = np.asarray(negative, dtype=np.float64)[None, :]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives above the threshold that lets at most `fpr` of negatives through."""
    neg = np.sort(np.asarray(negative, dtype=np.float64))[::-1]
    if len(positive) == 0:
        return float("nan")
    k = int(np.floor(fpr * len(neg)))
    threshold = neg[k] if k < len(neg) else -np.inf
    return float(np.mean(np.asarray(positive) > threshold))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cli(*args: str, log: Path) -> float:
    """Run the engine's CLI; returns the seconds it took."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ memorization-index {' '.join(args)}\n")
        f.flush()
        subprocess.run(
            [sys.executable, "-m", "MemorizationIndexLib", *args],
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return time.perf_counter() - start


def score_sharded(bank: Path, synth_dir: Path, report: Path, args, log: Path) -> float:
    """`score` over `args.jobs` shards of the synthetic volumes at once (each volume is
    scored on its own against the bank's null, so shards are exact); CSVs merged."""
    files = sorted(synth_dir.glob("*.nii.gz"))
    jobs = max(1, min(args.jobs, len(files)))
    start = time.perf_counter()
    procs = []
    for j in range(jobs):
        shard = report.parent / f"{report.name}-shard{j}"
        (shard / "in").mkdir(parents=True, exist_ok=True)
        for f in files[j::jobs]:
            link = shard / "in" / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
        cmd = [
            sys.executable, "-m", "MemorizationIndexLib", "score", str(bank), str(shard / "in"),
            "--out", str(shard / "report"), "--alpha", str(args.alpha), "--quiet",
        ]  # fmt: skip
        out = open(shard / "engine.log", "w")  # closed below
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), out, shard))
    for proc, out, shard in procs:
        code = proc.wait()
        out.close()
        with open(log, "a") as f:
            f.write((shard / "engine.log").read_text())
        if code:
            raise RuntimeError(f"score failed on {shard} (exit {code}); see its engine.log")
    report.mkdir(parents=True, exist_ok=True)
    stage3 = [
        json.loads((shard / "report" / "summary.json").read_text()).get("volume_stage")
        for _, _, shard in procs
    ]
    stage3 = [s for s in stage3 if s]
    if stage3:
        (report / "volume_stage.json").write_text(
            json.dumps({"registrations": sum(s["registrations"] for s in stage3)})
        )
    for name in ("slices.csv", "volumes.csv"):
        rows = [r for _, _, shard in procs for r in read_csv(shard / "report" / name)]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(report / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return time.perf_counter() - start


def slice_scores(rows: list[dict]) -> np.ndarray:
    """Slice MI with the similarity breaking ties (MI saturates at 1 for clear copies)."""
    mi = np.array([float(r["mi"]) for r in rows])
    sim = np.array([float(r["similarity"]) for r in rows])
    order = np.lexsort((sim, mi))
    ranks = np.empty(len(rows))
    ranks[order] = np.arange(len(rows))
    return ranks


STAGE_COLUMNS = (
    ("stage 1", "similarity"),
    ("stage 2", "verified_ncc"),
    ("stage 3", "volume_ncc"),
)


def stage_scores(rows: list[dict]) -> dict[str, np.ndarray]:
    """Each stage's own per-slice score, for the stages the report has."""
    out = {}
    for label, column in STAGE_COLUMNS:
        if rows and column in rows[0] and rows[0][column] != "":
            out[label] = np.array([float(r[column]) for r in rows])
    return out


def pose_error(volume: dict, copy: dict) -> tuple[float, float]:
    """(largest angle error in degrees, shift error in mm at the truth's centre) of the
    volume stage's pose against truth.json; NaN when the report has no pose."""
    try:
        pose = RigidPose.from_summary(volume)
    except (KeyError, ValueError):
        return float("nan"), float("nan")
    rot = copy["rotation_deg"]
    angles = np.array([rot["LR_x"], rot["AP_y"], rot["SI_z"]])
    at_truth = pose.recentred(copy["centre_mm"])
    return (
        float(np.abs(at_truth.angles_deg - angles).max()),
        float(np.linalg.norm(at_truth.shift_mm - np.asarray(copy["shift_mm"]))),
    )


def affine_error(volume: dict, copy: dict) -> dict:
    """Of a mangled copy (truth.json `affine`): whether the volume stage found the true axes,
    and its errors of scale (%, worst axis), rotation (degrees, worst axis) and shift (mm, at
    the truth's centre); empty when the report has no pose."""
    try:
        found = AffinePose.from_summary(volume)
    except (KeyError, ValueError):
        return {}
    t = copy["affine"]
    truth = AffinePose(np.array(t["linear"]), np.array(t["shift_mm"]), np.array(t["centre_mm"]))
    return {"axes": found.mirror, **pose_errors(found, truth)}


def is_true(value) -> bool:
    return value in ("True", "true", "1")


def evaluate(report: Path, truth, bank_stride: int) -> dict:
    """Per-scenario rows of one bank/score run."""
    slices = read_csv(report / "slices.csv")
    volumes = read_csv(report / "volumes.csv")
    scores = slice_scores(slices)
    names = [Path(r["volume"]).name for r in slices]
    copy_of = {Path(c["file"]).name: c for c in truth.copies}
    novel_names = {Path(n["file"]).name for n in truth.novel}
    is_novel = np.array([n in novel_names for n in names])
    negative = scores[is_novel]
    flagged = np.array([is_true(r["flagged"]) for r in slices])
    stages = stage_scores(slices)
    vol_flag = {Path(v["volume"]).name: v for v in volumes}
    rows = []
    for name, c in sorted(copy_of.items(), key=lambda kv: kv[1]["scenario"]):
        mine = np.array([n == name for n in names])
        index = np.array([int(r["slice_index"]) for r in slices])
        source = Path(c["source"]).name
        true_match = np.array([Path(r["match_volume"]).name == source for r in slices])
        vol = vol_flag.get(name, {})
        row = {
            "scenario": c["scenario"],
            "file": name,
            "n_slices": int(mine.sum()),
            "auroc": auroc(scores[mine], negative),
            "tpr_at_1pct_fpr": tpr_at_fpr(scores[mine], negative),
            "slices_flagged": float(flagged[mine].mean()) if mine.any() else float("nan"),
            "match_is_source": float(true_match[mine].mean()) if mine.any() else float("nan"),
            "volume_flagged": is_true(vol.get("flagged")),
            "volume_mi": float(vol.get("mi", "nan")),
            "volume_match_is_source": Path(vol.get("match_volume", "")).name == source,
            "stages": {
                label: {
                    "auroc": auroc(values[mine], values[is_novel]),
                    "tpr_at_1pct_fpr": tpr_at_fpr(values[mine], values[is_novel]),
                }
                for label, values in stages.items()
            },
        }
        if vol.get("volume_match"):
            row["registered_source"] = Path(vol["volume_match"]).name == source
            row["aligned_similarity"] = float(vol["aligned_similarity"])
            if "affine" in c:
                row |= affine_error(vol, c)
                row["pose_error_deg"] = row.get("angle_error_deg", float("nan"))
                row["pose_error_mm"] = row.get("shift_error_mm", float("nan"))
            else:
                row["pose_error_deg"], row["pose_error_mm"] = pose_error(vol, c)
        if bank_stride > 1:
            off = mine & (index % bank_stride != 0)
            row["auroc_off_grid_slices"] = auroc(scores[off], negative)
            row["tpr_off_grid_slices"] = tpr_at_fpr(scores[off], negative)
        rows.append(row)
    is_copy = np.array([n in copy_of for n in names])
    stage3_file = report / "volume_stage.json"
    stage3 = json.loads(stage3_file.read_text()) if stage3_file.is_file() else None
    novel_vols = [v for v in volumes if Path(v["volume"]).name in novel_names]
    return {
        "bank_stride": bank_stride,
        "rows": rows,
        "all_copies": {
            "auroc": auroc(scores[is_copy], negative),
            "tpr_at_1pct_fpr": tpr_at_fpr(scores[is_copy], negative),
        },
        "n_novel_slices": int(is_novel.sum()),
        "novel_slice_flag_rate": float(flagged[is_novel].mean()),
        "novel_flag_rates_by_bin": novel_flag_rates_by_bin(slices, is_novel, flagged),
        "novel_volumes_flagged": [
            Path(v["volume"]).name for v in novel_vols if is_true(v["flagged"])
        ],
        "n_novel_volumes": len(novel_vols),
        "copy_volumes_flagged": sum(r["volume_flagged"] for r in rows),
        "volume_stage_registrations": stage3["registrations"] if stage3 else None,
        "n_copy_volumes": len(rows),
    }


EDGE_SHARES = (0.06, 0.10)  # the outer 6 % (where issue 21 found the false flags), 10 %


def novel_flag_rates_by_bin(slices: list[dict], is_novel: np.ndarray, flagged: np.ndarray):
    """Novel slices' flag rate per bin, by two definitions: the benchmark's own (a slice's
    rank among its volume's scored slices: outer 6 %, outer 6-10 %, middle) and the content
    bin whose null judged it (slices.csv `null_bin`, when the engine writes it)."""
    names = np.array([r["volume"] for r in slices])
    index = np.array([int(r["slice_index"]) for r in slices])
    rel = np.full(len(slices), np.nan)
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        order = rows[np.argsort(index[rows], kind="stable")]
        rel[order] = np.arange(len(order)) / max(len(order) - 1, 1)
    edge = np.minimum(rel, 1 - rel)
    own = np.where(
        edge < EDGE_SHARES[0], "outer 6 %", np.where(edge < EDGE_SHARES[1], "6-10 %", "middle")
    )
    out = {"position": _rates(own, is_novel, flagged)}
    if slices and "null_bin" in slices[0]:
        out["null_bin"] = _rates(np.array([r["null_bin"] for r in slices]), is_novel, flagged)
    return out


def _rates(labels: np.ndarray, is_novel: np.ndarray, flagged: np.ndarray) -> dict:
    return {
        str(label): {
            "slices": int((is_novel & (labels == label)).sum()),
            "flagged": int((is_novel & (labels == label) & flagged).sum()),
        }
        for label in np.unique(labels[is_novel])
    }


def print_run(run: dict) -> None:
    stride = run["bank_stride"]
    print(f"\n== bank stride {stride}, scored at stride 1 ==")
    extra = "  AUROC(off-grid) TPR(off-grid)" if stride > 1 else ""
    print(
        f"{'scenario':<28} {'n':>3} {'AUROC':>6} {'TPR@1%':>7} {'sl.flag':>7} "
        f"{'src':>5} {'vol':>5} {'volMI':>8} {'vsrc':>5}{extra}"
    )
    for r in run["rows"]:
        line = (
            f"{r['scenario']:<28} {r['n_slices']:>3} {r['auroc']:>6.3f} "
            f"{r['tpr_at_1pct_fpr']:>7.3f} {r['slices_flagged']:>7.2f} "
            f"{r['match_is_source']:>5.2f} {'COPY' if r['volume_flagged'] else 'miss':>5} "
            f"{r['volume_mi']:>8.5f} {'yes' if r['volume_match_is_source'] else 'no':>5}"
        )
        if stride > 1:
            line += f"  {r['auroc_off_grid_slices']:>15.3f} {r['tpr_off_grid_slices']:>13.3f}"
        print(line)
    a = run["all_copies"]
    print(f"{'all copies':<28}     {a['auroc']:>6.3f} {a['tpr_at_1pct_fpr']:>7.3f}")
    print(
        f"copy volumes flagged {run['copy_volumes_flagged']}/{run['n_copy_volumes']}; "
        f"novel volumes flagged {len(run['novel_volumes_flagged'])}/{run['n_novel_volumes']} "
        f"{run['novel_volumes_flagged']}; novel-slice flag rate "
        f"{100 * run['novel_slice_flag_rate']:.2f} % of {run['n_novel_slices']}"
    )


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


HARD_TITLE = "Hard cohort: copies moved in 3D, off the slice grid, whole-FOV noise"


def markdown(results: dict, title: str = HARD_TITLE) -> str:
    """The hard-cohort rows of the detection tables, stage by stage."""
    lines = [f"## {title}", ""]
    lines.append(results.get("configuration", ""))
    for run in results["runs"]:
        stride = run["bank_stride"]
        labels = [label for label, _ in STAGE_COLUMNS if label in run["rows"][0]["stages"]]
        lines += [
            "",
            f"### Bank at stride {stride}, scored at stride 1",
            "",
            "Slice AUROC of each copy's slices against all novel subjects' slices, by each "
            "stage's own score and by the calibrated MI; TPR at 1 % FPR by MI; the copy "
            "volume's verdict; the volume stage's training volume and pose error.",
            "",
            "| scenario | slices | "
            + " | ".join(f"AUROC {label}" for label in labels)
            + " | AUROC MI | TPR@1% MI | volume | source found | pose error |",
            "|---" * (len(labels) + 7) + "|",
        ]
        for r in run["rows"]:
            stages = " | ".join(_cell(r["stages"][label]["auroc"]) for label in labels)
            found = {True: "yes", False: "no"}.get(r.get("registered_source"), "–")
            error = (
                f"{_cell(r.get('pose_error_deg'), 2)}° / {_cell(r.get('pose_error_mm'), 2)} mm"
                if "pose_error_deg" in r
                else "–"
            )
            lines.append(
                f"| {r['scenario']} | {r['n_slices']} | {stages} | {_cell(r['auroc'])} | "
                f"{_cell(r['tpr_at_1pct_fpr'])} | "
                f"{'flagged' if r['volume_flagged'] else '**missed**'} | {found} | {error} |"
            )
        a = run["all_copies"]
        lines += [
            "",
            f"All copies: slice AUROC {_cell(a['auroc'])}, TPR at 1 % FPR "
            f"{_cell(a['tpr_at_1pct_fpr'])}; copy volumes flagged "
            f"{run['copy_volumes_flagged']}/{run['n_copy_volumes']}; novel volumes flagged "
            f"{len(run['novel_volumes_flagged'])}/{run['n_novel_volumes']}; clean (novel) "
            f"slices flagged {100 * run['novel_slice_flag_rate']:.2f} % of "
            f"{run['n_novel_slices']} at alpha {results.get('alpha', 0.01)}; build "
            f"{run.get('build_seconds', 0):.0f} s, score "
            f"{run.get('score_seconds_per_volume', 0):.1f} s per synthetic volume"
            + (
                f" ({run['volume_stage_registrations']} volume-stage registrations)."
                if run.get("volume_stage_registrations")
                else "."
            ),
        ]
        lines += mangled_table(run["rows"])
        lines += bin_table(run.get("novel_flag_rates_by_bin") or {}, results.get("alpha", 0.01))
    return "\n".join(lines) + "\n"


def mangled_table(rows: list[dict]) -> list[str]:
    """The volume stage on the mirrored, zoomed and header-mangled copies: axes found
    against the truth, aligned NCC and the errors of scale, rotation and shift."""
    mangled = [r for r in rows if "true_axes" in r]
    if not mangled:
        return []
    lines = ["", "Volume stage on the mirrored, zoomed and header-mangled copies:", ""]
    lines += [
        "| scenario | aligned NCC | axes (truth) | scale err % | angle err ° | shift err mm |",
        "|---|---|---|---|---|---|",
    ]
    for r in mangled:
        lines.append(
            f"| {r['scenario']} | {_cell(r.get('aligned_similarity'))} | {r['axes']} "
            f"({r['true_axes']}) | {_cell(r['scale_error_pct'], 2)} | "
            f"{_cell(r['angle_error_deg'], 2)} | {_cell(r['shift_error_mm'], 2)} |"
        )
    return lines


def bin_table(by_bin: dict, alpha: float) -> list[str]:
    """Novel slices flagged per bin (the calibration target: about alpha in every bin)."""
    if not by_bin:
        return []
    lines = ["", f"Novel slices flagged at alpha {alpha}, per bin:", ""]
    lines += ["| binned by | bin | novel slices | flagged | share |", "|---|---|---|---|---|"]
    names = {"position": "slice position (benchmark)", "null_bin": "null that judged it (engine)"}
    for kind, bins in by_bin.items():
        for label, c in bins.items():
            share = c["flagged"] / c["slices"] if c["slices"] else float("nan")
            lines.append(
                f"| {names.get(kind, kind)} | {label} | {c['slices']} | {c['flagged']} | "
                f"{100 * share:.1f} % |"
            )
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="hard-output")
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-novel", type=int, default=6)
    p.add_argument("--spacing", type=float, default=2.5)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--strides", default="1,2", help="bank strides to build (scored at 1)")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--jobs", type=int, default=1, help="score this many shards at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--encoder", default="untrained", help="the bank's encoder (build-bank --encoder)"
    )
    p.add_argument(
        "--no-mangled",
        action="store_true",
        help="leave out the mirrored, zoomed and header-mangled copies (issue 21)",
    )
    p.add_argument("--cohort", help="an existing cohort folder (default: OUT/cohort, made once)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "engine.log"
    cohort_dir = Path(args.cohort) if args.cohort else out / "cohort"
    start = time.perf_counter()
    if not (cohort_dir / "truth.json").is_file():
        make_hard_cohort(
            cohort_dir,
            n_train=args.n_train,
            n_novel=args.n_novel,
            spacing_mm=args.spacing,
            seed=args.seed,
            mangled=() if args.no_mangled else MANGLED_COPIES,
        )
    truth = load_truth(cohort_dir)
    results = {
        "cohort_seconds": time.perf_counter() - start,
        "runs": [],
        "alpha": args.alpha,
        "configuration": (
            f"Cohort: {len(truth.train)} training subjects (T1 and T2-like, MNI152 under smooth "
            f"deformations, bias fields, Rician noise over the whole field of view), "
            f"{len(truth.novel)} novel subjects, {len(truth.copies)} copies (moved in 3D, "
            f"or mirrored, zoomed or header-mangled), at {truth.spacing_mm} mm; {args.encoder} "
            f"encoder at {args.image_size} px; engine run "
            "through its CLI (`build-bank`, `score`)."
        ),
    }
    print(
        f"cohort: {len(truth.train)} training, {len(truth.novel)} novel, "
        f"{len(truth.copies)} copies at {truth.spacing_mm} mm -> {cohort_dir}"
    )
    for stride in (int(s) for s in args.strides.split(",")):
        bank, report = out / f"bank-stride{stride}", out / f"report-stride{stride}"
        t_build = 0.0
        if not (bank / "manifest.json").is_file():
            t_build = cli(
                "build-bank", str(cohort_dir / "train"), "--out", str(bank),
                "--image-size", str(args.image_size), "--stride", str(stride),
                "--seed", str(args.seed), "--encoder", args.encoder, "--quiet", log=log,
            )  # fmt: skip
        t_score = score_sharded(bank, cohort_dir / "synthetic", report, args, log)
        run = evaluate(report, truth, stride)
        run["build_seconds"], run["score_seconds"] = t_build, t_score
        n_synth = len(truth.copies) + len(truth.novel)
        run["score_seconds_per_volume"] = t_score / n_synth
        results["runs"].append(run)
        print_run(run)
        print(f"build {t_build:.0f} s, score {t_score:.0f} s ({t_score / n_synth:.1f} s/volume)")
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
