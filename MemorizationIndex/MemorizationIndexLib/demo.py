"""`memorization-index demo`: the whole audit on a built-in example, in a few minutes on a CPU.

Builds a cohort from real MRI (see cohort.py): training subjects, novel synthetic
subjects, and augmented copies of training subjects; builds the bank, scores the
synthetic set, writes the report, and prints a verdict table against the ground truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from .atomic import prepare_marked_folder
from .bank import BankSettings, build_bank
from .cohort import make_cohort
from .report import write_report
from .scoring import score

DEMO_STRIDE = 3


def run_demo(
    out: Path,
    checkpoint: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    image_size: int = 112,
    progress=None,
) -> int:
    started = time.perf_counter()
    out = prepare_marked_folder(out, "demo")
    print(f"Making the example cohort from nilearn's MNI152 T1 in {out / 'cohort'} ...")
    members = make_cohort(out / "cohort")
    (out / "cohort" / "truth.json").write_text(json.dumps([asdict(m) for m in members], indent=2))
    settings = BankSettings(image_size=image_size, stride=DEMO_STRIDE)
    bank = build_bank(
        out / "cohort" / "train",
        out / "bank",
        settings,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    result = score(
        bank,
        out / "cohort" / "synthetic",
        stride=DEMO_STRIDE,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    report_dir = write_report(result, bank, out / "report")
    if progress is not None and hasattr(progress, "close"):
        progress.close()

    truth = {m.path: m for m in members}
    print()
    print(f"Encoder: {bank.encoder['name']}")
    print(
        f"{'synthetic volume':<22} {'truth':<24} {'verdict':<7} {'MI':>10} {'ONI':>7} "
        f"{'flagged':>7} {'run':>4}  best match"
    )
    caught = false_alarms = n_copies = n_novel = 0
    for v in result.volumes:
        m = truth[v["volume"]]
        label = f"copy ({m.augmentation})" if m.role == "copy" else "novel"
        if m.role == "copy":
            n_copies += 1
            caught += v["flagged"]
            right = Path(v["match_volume"]).name == Path(m.source).name
        else:
            n_novel += 1
            false_alarms += v["flagged"]
            right = True
        print(
            f"{Path(v['volume']).name:<22} {label:<24} {'COPY' if v['flagged'] else 'novel':<7} "
            f"{v['mi']:>10.6f} {v['oni']:>+7.3f} {v['fraction_flagged']:>7.2f} "
            f"{v['longest_run']:>4}  {Path(v['match_volume']).name}{'' if right else ' (wrong)'}"
        )
    print()
    print(
        f"Caught {caught} of {n_copies} copies; flagged {false_alarms} of {n_novel} novel "
        f"subjects (alpha {result.alpha}). {time.perf_counter() - started:.0f} s."
    )
    if not bank.trained_encoder:
        print(
            "Note: this ran an UNTRAINED encoder (no MRI-CORE checkpoint given); pass "
            "--checkpoint PATH to use MRI-CORE."
        )
    print(f"Report: {report_dir / 'report.html'}")
    return 0
