"""A second anatomy in `make bench`: sagittal spine series from the procedural phantom
(spine_phantom.py), scored through the command line and judged as the hard cohort is.

12 training subjects and 6 held-out ones, copies moved in 3D (rotations, shifts, a
combination) and one mirrored left-right; the bank slices sagittally (the plane spine MRI
is acquired in). No step of the engine is told it is looking at a spine.

    python Testing/benchmarks/spine_benchmark.py [--out spine-output] [--image-size 112]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from Testing.benchmarks import hard_benchmark as hb  # noqa: E402
from Testing.benchmarks import spine_phantom  # noqa: E402
from Testing.benchmarks.hard_cohort import load_truth  # noqa: E402

TITLE = "Spine phantom: a second anatomy, sagittal series, copies moved in 3D and mirrored"


class _Scoring:
    """What hard_benchmark.score_sharded reads of its arguments."""

    alpha = 0.01
    jobs = 1


def run(out: Path, image_size: int = 112, n_train: int = 12, n_novel: int = 6) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cohort = out / "cohort"
    started = time.perf_counter()
    if not (cohort / "truth.json").is_file():
        spine_phantom.make_spine_cohort(cohort, n_train=n_train, n_novel=n_novel, seed=0)
    truth = load_truth(cohort)
    made = time.perf_counter() - started
    log, bank, report = out / "engine.log", out / "bank", out / "report"
    build = hb.cli(
        "build-bank", str(cohort / "train"), "--out", str(bank), "--axis", "sagittal",
        "--image-size", str(image_size), "--seed", "0", "--encoder", "untrained", "--quiet",
        log=log,
    )  # fmt: skip
    scored = hb.score_sharded(bank, cohort / "synthetic", report, _Scoring, log)
    result = hb.evaluate(report, truth, 1)
    for row in result["rows"]:
        if row["scenario"].startswith("mirror"):  # a mirror is no rigid move: no pose error
            row.pop("pose_error_deg", None)
            row.pop("pose_error_mm", None)
    result["build_seconds"], result["score_seconds"] = build, scored
    result["score_seconds_per_volume"] = scored / max(1, len(truth.copies) + len(truth.novel))
    manifest = json.loads((bank / "manifest.json").read_text(encoding="utf-8"))
    return {
        "runs": [result],
        "alpha": _Scoring.alpha,
        "configuration": (
            f"Spine phantom (spine_phantom.DEFAULT_GRID: 24 sagittal slices of 3.5 mm, "
            f"1.75 mm in-plane), {len(truth.train)} training subjects "
            f"({manifest['n_subjects']} subjects found, {len(manifest['near_duplicates'])} "
            f"near-duplicate pairs), {len(truth.novel)} held-out, {len(truth.copies)} copies; "
            f"untrained encoder at {image_size} px, --axis sagittal; cohort made in "
            f"{made:.0f} s."
        ),
    }


def markdown(results: dict) -> str:
    return hb.markdown(results, TITLE)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="spine-output")
    p.add_argument("--image-size", type=int, default=112)
    args = p.parse_args(argv)
    results = run(Path(args.out), args.image_size)
    text = markdown(results)
    (Path(args.out) / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return results


if __name__ == "__main__":
    main()
