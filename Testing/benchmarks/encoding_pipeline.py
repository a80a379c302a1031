"""Does reading and preprocessing keep up with the encoder? Reader thread against worker
processes, each against the encoder alone, in one run.

For the volumes of a cohort it times (1) reading and preprocessing alone (prepare_volume),
(2) the network alone on the already prepared slices (Encoder.encode_canvas), and (3) the
whole of extract_features with the reader thread (read_workers=0) and with 1 and 2 worker
processes. The pipeline's share of the encoder's own throughput is (2) / (3).

    python Testing/benchmarks/encoding_pipeline.py [--config tiny|vit-b] [--image-size 224]
        [--device auto] [--volumes 6] [--workers 0,1,2] [--repeats 3]

No timing here is an assertion.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def best_of(repeats: int, run) -> float:
    """The shortest of `repeats` wall times (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from MemorizationIndexLib.bank.build import encoding_plan
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.demo.cohort import make_cohort
    from MemorizationIndexLib.encoding.features import extract_features, prepare_volume
    from MemorizationIndexLib.encoding.vit import EncoderConfig
    from MemorizationIndexLib.scans import find_scans_required

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("tiny", "vit-b"), default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--volumes", type=int, default=6)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--repeats", type=int, default=3, help="the best of this many runs counts")
    args = p.parse_args()

    config = EncoderConfig.tiny() if args.config == "tiny" else EncoderConfig.vit_b()
    layers = (1, 2, 3) if args.config == "tiny" else (3, 7, 11)
    settings = BankSettings(image_size=args.image_size, layers=layers, stride=args.stride)
    encoder = settings.encoder(config=config, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        make_cohort(Path(tmp), n_train=args.volumes, n_novel=0, copies=(), spacing_mm=3.0)
        sources, _ = find_scans_required(Path(tmp) / "train")
        options = settings.read_options()
        plan = encoding_plan(settings, len(sources))
        print(f"{len(sources)} volumes, {args.config} at {args.image_size} px on {encoder.device}")
        print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f} at start")

        for _ in range(2):  # the second pass, with the files in the page cache
            start = time.perf_counter()
            prepared = [prepare_volume(s, options, plan, encoder.spec) for s in sources]
            t_prepare = time.perf_counter() - start
        slices = sum(len(c) for p in prepared for c in p.canvases.values())
        encoder.encode_canvas(next(iter(prepared[0].canvases.values())))  # warm-up

        def encode_all() -> None:
            for p in prepared:
                for canvas in p.canvases.values():
                    encoder.encode_canvas(canvas)
            if encoder.device.type == "cuda":
                import torch

                torch.cuda.synchronize()

        t_encode = best_of(args.repeats, encode_all)
        print(f"read + preprocess alone: {t_prepare:.2f} s ({slices} slice encodings)")
        print(f"encoder alone:           {t_encode:.2f} s ({slices / t_encode:.1f} slices/s)")
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            pool.submit(prepare_volume, sources[0], options, plan, encoder.spec).result()
        t_start = time.perf_counter() - start
        print(f"one worker process started and used once: {t_start:.2f} s")
        for workers in (int(w) for w in args.workers.split(",")):
            t = best_of(
                args.repeats,
                lambda w=workers: extract_features(
                    sources,
                    encoder,
                    options,
                    flips=settings.flips,
                    flip_budget=settings.null_max_slices,
                    thumbnail_size=settings.thumbnail_size,
                    volume_grid_mm=plan.volume_grid_mm,
                    read_workers=w,
                ),
            )
            how = "reader thread" if workers == 0 else f"{workers} reader process(es)"
            print(
                f"extract_features, {how}: {t:.2f} s = {100 * t_encode / t:.0f} % of the "
                "encoder's own throughput"
            )
        print(f"load {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
