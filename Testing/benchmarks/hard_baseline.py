"""Baseline of the current engine on the hard cohort (issue 12's "before").

Builds the hard cohort (hard_cohort.py), runs the engine through its public CLI only
(`python -m MemorizationIndexLib build-bank` at bank stride 1 and 2, `score` at stride 1),
reads slices.csv and volumes.csv, and prints per copy scenario: slice AUROC of the copy's
slices against every novel subject's slices (by slice MI, similarity breaking ties), TPR at
1 % FPR, whether the copy volume is flagged and matched to its true source, plus the novel
volumes flagged and the novel-slice flag rate at alpha. Writes results.json next to it.

    python Testing/benchmarks/hard_baseline.py --out hard-baseline-output
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

from Testing.benchmarks.hard_cohort import load_truth, make_hard_cohort  # noqa: E402


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
    flagged = np.array([r["flagged"] in ("True", "true", "1") for r in slices])
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
            "volume_flagged": vol.get("flagged") in ("True", "true", "1"),
            "volume_mi": float(vol.get("mi", "nan")),
            "volume_match_is_source": Path(vol.get("match_volume", "")).name == source,
        }
        if bank_stride > 1:
            off = mine & (index % bank_stride != 0)
            row["auroc_off_grid_slices"] = auroc(scores[off], negative)
            row["tpr_off_grid_slices"] = tpr_at_fpr(scores[off], negative)
        rows.append(row)
    is_copy = np.array([n in copy_of for n in names])
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
        "novel_volumes_flagged": [
            Path(v["volume"]).name for v in novel_vols if v["flagged"] in ("True", "true", "1")
        ],
        "n_novel_volumes": len(novel_vols),
        "copy_volumes_flagged": sum(r["volume_flagged"] for r in rows),
        "n_copy_volumes": len(rows),
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="hard-baseline-output")
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-novel", type=int, default=6)
    p.add_argument("--spacing", type=float, default=2.5)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--strides", default="1,2", help="bank strides to build (scored at 1)")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--jobs", type=int, default=1, help="score this many shards at once")
    p.add_argument("--seed", type=int, default=0)
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
        )
    truth = load_truth(cohort_dir)
    results = {"cohort_seconds": time.perf_counter() - start, "runs": []}
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
                "--seed", str(args.seed), "--quiet", log=log,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
