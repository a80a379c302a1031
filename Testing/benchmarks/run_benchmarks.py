"""`make bench`: detection and speed benchmarks of MemorizationIndex, side by side with its peers.

    python Testing/benchmarks/run_benchmarks.py --out bench-output            # everything
    python Testing/benchmarks/run_benchmarks.py --only detection --data DIR --checkpoint ckpt.pth
    python Testing/benchmarks/run_benchmarks.py --only gpu --device cuda       # on a GPU machine

Writes results.json and results.md under --out, and prints the markdown. The default
configuration (untrained encoder, 112 px, a cohort made from nilearn's MNI152) runs in about
15 minutes on a 2-core CPU; every figure states the configuration that produced it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from Testing.benchmarks import speed  # noqa: E402
from Testing.benchmarks.report import (  # noqa: E402
    environment_markdown,
    speed_markdown,
)

# Throughput measured once on the reference machines (H200, and this 2-core CPU).
DESIGN_ANCHORS = {
    "h200_bf16_224_slices_per_s": 7435,
    "h200_bf16_224_compiled_slices_per_s": 10233,
    "h200_fp32_224_slices_per_s": 1164,
    "cpu_224_seconds_per_slice": 0.38,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="bench-output", help="folder for results.json / results.md")
    p.add_argument(
        "--only",
        choices=(
            "all",
            "detection",
            "hard",
            "spine",
            "volume-fit",
            "speed",
            "images2d",
            "diffusion2d",
            "verification",
            "gpu",
            "scale",
            "encoders",
        ),
        default="all",
        help="all = detection + hard cohort + speed + stage-2 cost + reduced scale (CPU); "
        "hard = the cohort of copies moved in 3D only; spine = the spine phantom (a second "
        "anatomy, sagittal); volume-fit = stage 3 alone on mirrored, zoomed and header-mangled "
        "copies; images2d = 2D image sets' build and "
        "score rate against the encoder alone; diffusion2d = copies made by a small DDPM that "
        "memorised (trained once, about 17 min on the CPU, then cached) and hand-made 2D "
        "copies, scored through the CLI; verification = stage 2's cost per "
        "slice against the previous verifier; gpu = the device run (bf16 throughput, GPU "
        "bank); scale = the engine on a compressed bank only; encoders = the detection "
        "protocol with the untrained ViT and with LiteMedSAM side by side, and LiteMedSAM's "
        "CPU throughput against matmul",
    )
    p.add_argument(
        "--encoder-seeds", type=int, default=1, help="seeds of the encoder column (reduced)"
    )
    p.add_argument(
        "--encoder-copies", type=int, default=8, help="copies per augmentation, encoder column"
    )
    p.add_argument(
        "--encoders",
        default="untrained,litemedsam",
        help="the encoder column's encoders, in order (untrained, litemedsam)",
    )
    p.add_argument(
        "--encoder-stage1-only",
        action="store_true",
        help="encoder column without the stage-2 cascade (its costliest part on a CPU)",
    )
    p.add_argument(
        "--scale-slices",
        type=int,
        default=100_000,
        help="bank slices of the scale section (reduced; the issue's full run is 1000000)",
    )
    p.add_argument("--scale", action="store_true", help="the full scale run: 1e6 bank slices")
    p.add_argument("--data", help="folder of volumes to use instead of the built-in cohort")
    p.add_argument("--checkpoint", help="MRI-CORE checkpoint; without it an untrained encoder")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--image-size", type=int, default=112, help="encoder input for detection")
    p.add_argument("--subjects", type=int, default=26, help="cohort size (built-in cohort)")
    p.add_argument("--train-volumes", type=int, default=12, help="volumes in each bank")
    p.add_argument("--reference-volumes", type=int, default=2, help="held-out reference set")
    p.add_argument("--stride", type=int, default=4, help="keep every n-th slice")
    p.add_argument("--copies", type=int, default=16, help="copied slices per augmentation+seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument(
        "--augmentations",
        default="all",
        help="comma-separated augmentation names (see protocol.AUGMENTATIONS), or all",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--bank-sizes",
        default="10000,100000,1000000",
        help="bank sizes (slices) for the scoring-latency test",
    )
    p.add_argument("--build-subjects", type=int, default=4, help="volumes in the bank-build test")
    p.add_argument("--build-stride", type=int, default=6)
    p.add_argument("--build-size", type=int, default=112)
    p.add_argument("--throughput-slices", type=int, default=32)
    p.add_argument(
        "--gpu-scoring-after-s",
        type=float,
        default=240.0,
        help="--only gpu: skip the scoring test if the run has taken longer than this",
    )
    return p


def engine_revision() -> str:
    """The commit the engine was run at, and whether its files had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "MemorizationIndex/MemorizationIndexLib"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return head + (" + uncommitted engine changes" if dirty else "")


def environment(args) -> dict:
    return {
        "engine_revision": engine_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": speed.cpu_description(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_speed(args) -> dict:
    results: dict = {}
    t0 = time.perf_counter()
    results["matmul"] = speed.matmul_rate("cpu", torch.float32, 2048)
    results["encoder"] = [
        speed.encoder_throughput(
            size, device="cpu", n_slices=args.throughput_slices, checkpoint=args.checkpoint
        )
        for size in sorted({224, args.image_size})
    ]
    results["matmul_after"] = speed.matmul_rate("cpu", torch.float32, 2048)
    results["bank_build"] = speed.bank_build(
        args.build_subjects,
        args.build_size,
        args.build_stride,
        device="cpu",
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
    )
    sizes = tuple(int(s) for s in args.bank_sizes.split(",") if s)
    results["scoring"] = speed.scoring_latency(sizes)
    results["bytes_per_slice"] = speed.bank_bytes_per_slice()
    results["peak_rss_bytes"] = speed.peak_rss_bytes()
    results["seconds"] = time.perf_counter() - t0
    return results


def run_gpu(args) -> dict:
    """The one prepared device run: bf16/fp32 throughput at 224 px and a whole bank on GPU."""
    results: dict = {"device_name": torch.cuda.get_device_name(0)}
    t0 = time.perf_counter()
    results["matmul_bf16"] = speed.matmul_rate("cuda", torch.bfloat16, 8192, repeats=10)
    results["matmul_fp32"] = speed.matmul_rate("cuda", torch.float32, 8192, repeats=5)
    enc = []
    for batch, engine_path, bf16, n in (
        (32, True, True, 2048),
        (256, True, True, 4096),
        (256, False, True, 8192),
        (256, False, False, 2048),
    ):
        enc.append(
            speed.encoder_throughput(
                224,
                device="cuda",
                batch_size=batch,
                n_slices=n,
                engine_path=engine_path,
                bf16=bf16,
                checkpoint=args.checkpoint,
                repeats=3,
            )
        )
        print(json.dumps(enc[-1]), flush=True)
    results["encoder"] = enc
    results["bank_build"] = speed.bank_build(
        args.build_subjects,
        224,
        args.build_stride,
        device="cuda",
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
    )
    print(json.dumps(results["bank_build"]), flush=True)
    sizes = tuple(int(s) for s in args.bank_sizes.split(",") if s)
    elapsed = time.perf_counter() - t0
    if sizes and elapsed < args.gpu_scoring_after_s:
        results["scoring"] = speed.scoring_latency(sizes, reference_device="cuda")
    elif sizes:
        results["scoring_skipped"] = f"the run had already taken {elapsed:.0f} s"
    results["peak_rss_bytes"] = speed.peak_rss_bytes()
    results["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    results["seconds"] = time.perf_counter() - t0
    return results


def run_encoders(args) -> dict:
    """The encoder column (untrained ViT-B against LiteMedSAM) and LiteMedSAM's CPU speed."""
    from Testing.benchmarks import encoder_column, protocol, tinyvit_speed

    base = protocol.DetectionConfig.from_args(args)
    base.seeds, base.copies = args.encoder_seeds, args.encoder_copies
    base.two_stage = not args.encoder_stage1_only
    encoders = tuple(e.strip() for e in args.encoders.split(",") if e.strip())
    print("Encoder column: untrained ViT-B against LiteMedSAM ...", flush=True)
    result = {"column": encoder_column.run(base, encoders)}
    if "litemedsam" in result["column"]["encoders"]:
        print("LiteMedSAM's TinyViT: CPU throughput against matmul ...", flush=True)
        result["speed"] = tinyvit_speed.run()
    return result


def encoder_markdown(result: dict) -> str:
    from Testing.benchmarks import encoder_column, tinyvit_speed

    text = encoder_column.markdown(result["column"])
    return text + ("\n" + tinyvit_speed.markdown(result["speed"]) if "speed" in result else "")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results: dict = {"environment": environment(args), "anchors": DESIGN_ANCHORS}
    sections = []
    if args.only in ("all", "detection"):
        from Testing.benchmarks import protocol

        config = protocol.DetectionConfig.from_args(args)
        print(f"Detection benchmark: {config.describe()}", flush=True)
        results["detection"] = protocol.run_detection(config, progress=print)
        sections.append(protocol.detection_tables(results["detection"]))
    if args.only in ("all", "hard"):
        from Testing.benchmarks import hard_benchmark

        print("Hard-cohort benchmark (copies moved in 3D) ...", flush=True)
        hard_args = ["--out", str(out / "hard"), "--image-size", str(args.image_size)]
        results["hard"] = hard_benchmark.main(hard_args + ["--alpha", str(args.alpha)])
        sections.append(hard_benchmark.markdown(results["hard"]))
    if args.only in ("all", "spine"):
        from Testing.benchmarks import spine_benchmark

        print("Spine phantom benchmark (a second anatomy) ...", flush=True)
        results["spine"] = spine_benchmark.run(out / "spine", args.image_size)
        sections.append(spine_benchmark.markdown(results["spine"]))
    if args.only in ("all", "volume-fit"):
        from Testing.benchmarks import volume_fit_benchmark

        print("Volume stage on mirrored, zoomed and header-mangled copies ...", flush=True)
        results["volume_fit"] = volume_fit_benchmark.run(out / "volume-fit")
        sections.append(volume_fit_benchmark.markdown(results["volume_fit"]))
    if args.only in ("all", "speed"):
        print("Speed benchmark ...", flush=True)
        results["speed"] = speed_section = run_speed(args)
        sections.append(speed_markdown(speed_section, DESIGN_ANCHORS))
    if args.only in ("all", "images2d"):
        from Testing.benchmarks import image_set_speed

        print("2D image sets: reading and batching against the encoder alone ...", flush=True)
        results["images2d"] = image_set_speed.run()
        sections.append(image_set_speed.markdown(results["images2d"]))
    if args.only in ("all", "diffusion2d"):
        from Testing.benchmarks.diffusion2d import benchmark as diffusion2d

        print("2D copies from a memorising diffusion model (trained once, cached) ...", flush=True)
        scorer = diffusion2d.cli_scorer(alpha=args.alpha, extra_build=("--encoder", "untrained"))
        results["diffusion2d"] = diffusion2d.run(out / "diffusion2d", scorer, alpha=args.alpha)
        sections.append(diffusion2d.markdown(results["diffusion2d"]))
    if args.only in ("all", "verification"):
        from Testing.benchmarks import verification_cost

        print("Stage-2 cost per slice against the previous verifier ...", flush=True)
        results["verification"] = verification_cost.run()
        sections.append(verification_cost.markdown(results["verification"]))
    if args.only in ("all", "scale"):
        from Testing.benchmarks import scale_engine

        n = 1_000_000 if args.scale else args.scale_slices
        print(f"Scale benchmark: compressed bank of {n:,} slices ...", flush=True)
        results["scale"] = scale_engine.run(n, work=str(out))
        sections.append(scale_engine.markdown(results["scale"]))
    if args.only in ("all", "encoders"):
        results["encoders"] = run_encoders(args)
        sections.append(encoder_markdown(results["encoders"]))
    if args.only == "gpu":
        results["gpu"] = run_gpu(args)
        sections.append(speed_markdown({"gpu": results["gpu"]}, DESIGN_ANCHORS))
    results["environment"]["peak_rss_bytes"] = speed.peak_rss_bytes()
    text = environment_markdown(results["environment"]) + "\n" + "\n".join(sections)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "results.md").write_text(text)
    print(text)
    print(f"Wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
