"""Does a folder of many small 2D images keep the encoder busy? Build and score of PNG
and .npz sets against the encoder alone, in one run.

A 2D audit reads thousands of small files; the encoder is the work that cannot be avoided.
For N training PNG slices (cut with numpy from the demo cohort's MNI-based volumes and
written by PIL) and an .npz archive of N synthetic images it times:
  (1) the encoder alone on the already prepared images, in full batches, every view the
      pipeline encodes (Encoder.encode_canvas);
  (2) build-bank's encoding of the PNG folder (extract_features: reading, preprocessing,
      the reader thread, the batching of small inputs);
  (3) score's encoding of the archive (scoring/resume.py's blocks of images);
and reports (1)/(2) and (1)/(3), the share of the encoder's own rate that reading and
batching leave, and the whole CLI build and score in images per second (which add the
calibration null and stage 2, not encoding).

    python Testing/benchmarks/image_set_speed.py [--images 256] [--image-size 64]

No timing here is an assertion.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def write_image_set(folder: Path, n: int) -> tuple[Path, Path]:
    """n training PNGs (subjectNN_zKKK.png) and an .npz of n images, from real MRI."""
    import nibabel as nib
    from MemorizationIndexLib.demo.cohort import make_cohort
    from PIL import Image

    make_cohort(folder / "cohort", n_train=8, n_novel=0, copies=(), spacing_mm=2.0)
    train = folder / "train"
    train.mkdir()
    slices = []
    for k, path in enumerate(sorted((folder / "cohort" / "train").glob("*.nii*"))):
        data = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, np.float32)
        data = data[::-1, ::-1, :].transpose(2, 1, 0)  # LPS [z, y, x]
        top = np.percentile(data, 99.5)
        for z in range(data.shape[0]):
            image = np.clip(255 * data[z] / top, 0, 255).astype(np.uint8)
            if (image > 25).mean() > 0.1:
                slices.append((k, z, image))
    picks = np.linspace(0, len(slices) - 1, n).round().astype(int)
    for k, z, image in (slices[i] for i in picks):
        Image.fromarray(image).save(train / f"subject{k:02d}_z{z:03d}.png")
    synthetic = folder / "synthetic"
    synthetic.mkdir()
    stack = np.stack([slices[i][2] for i in picks[::-1]])
    np.savez(synthetic / f"samples_{n}x{stack.shape[1]}x{stack.shape[2]}x1.npz", arr_0=stack)
    return train, synthetic


def run(n_images: int = 256, image_size: int = 64, config: str = "tiny") -> dict:
    import torch
    from MemorizationIndexLib.bank.build import build_bank, encoding_plan
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.encoding.features import extract_features, prepare_volume
    from MemorizationIndexLib.encoding.vit import EncoderConfig
    from MemorizationIndexLib.job import Job
    from MemorizationIndexLib.scans import find_scans_required
    from MemorizationIndexLib.scoring.resume import local_runner, run_options

    torch.set_num_threads(os.cpu_count() or 1)
    encoder_config = EncoderConfig.tiny() if config == "tiny" else EncoderConfig.vit_b()
    layers = (1, 2, 3) if config == "tiny" else (3, 7, 11)
    settings = BankSettings(image_size=image_size, layers=layers)
    encoder = settings.encoder(config=encoder_config, device="cpu")
    out: dict = {"images": n_images, "image_size": image_size, "encoder": config}
    with tempfile.TemporaryDirectory() as tmp:
        train, synthetic = write_image_set(Path(tmp), n_images)
        sources, _ = find_scans_required(train)
        options, plan = settings.read_options(), encoding_plan(settings, len(sources))
        prepared = [
            prepare_volume(s, options, plan, encoder.spec, index=i) for i, s in enumerate(sources)
        ]
        views = {v for p in prepared for v in p.canvases}
        canvases = {
            v: torch.cat([p.canvases[v] for p in prepared if v in p.canvases]) for v in views
        }
        encoder.encode_canvas(canvases["none"][: encoder.batch_size])  # warm-up
        start = time.perf_counter()
        for canvas in canvases.values():
            encoder.encode_canvas(canvas)
        t_encoder_build = time.perf_counter() - start
        encodings = sum(len(c) for c in canvases.values())

        start = time.perf_counter()
        extract_features(
            sources,
            encoder,
            options,
            flips=settings.flips,
            flip_budget=settings.null_max_slices,
            thumbnail_size=settings.thumbnail_size,
        )
        t_build_encoding = time.perf_counter() - start
        out["build"] = {
            "encodings": encodings,
            "encoder_alone_per_s": encodings / t_encoder_build,
            "pipeline_per_s": encodings / t_build_encoding,
            "share_of_encoder": t_encoder_build / t_build_encoding,
        }

        start = time.perf_counter()
        bank = build_bank(train, Path(tmp) / "bank", settings, encoder)
        out["build"]["cli_images_per_s"] = n_images / (time.perf_counter() - start)

        queries, _ = find_scans_required(synthetic)
        q_options = run_options(bank, 0.01, None)
        query_canvases = [
            prepare_volume(s, q_options, plan, encoder.spec).canvases["none"] for s in queries
        ]
        stacked = torch.cat(query_canvases)
        start = time.perf_counter()
        for _ in bank.settings.flips:  # a query is encoded through every view of the bank
            encoder.encode_canvas(stacked)
        t_encoder_score = time.perf_counter() - start
        score_encodings = len(stacked) * len(bank.settings.flips)
        runner = local_runner(bank, queries, encoder, q_options, 0.01, Job())
        start = time.perf_counter()
        pieces = list(runner(list(range(len(queries)))))
        t_score = time.perf_counter() - start
        assert len(pieces) == len(queries)
        out["score"] = {
            "encodings": score_encodings,
            "encoder_alone_per_s": score_encodings / t_encoder_score,
            "images_per_s": len(queries) / t_score,
            "encoder_share_of_scoring": t_encoder_score / t_score,
        }
    out["load_at_end"] = os.getloadavg()[0]
    return out


def markdown(r: dict) -> str:
    b, s = r["build"], r["score"]
    return "\n".join(
        [
            f"### 2D image sets: {r['images']} PNG slices and an .npz of {r['images']} images "
            f"({r['encoder']} encoder, {r['image_size']} px, CPU)",
            "",
            "| stage | encoder alone | the pipeline | share of the encoder's rate |",
            "|---|---:|---:|---:|",
            f"| build-bank encoding (read, preprocess, batch; {b['encodings']} encodings) | "
            f"{b['encoder_alone_per_s']:.1f}/s | {b['pipeline_per_s']:.1f}/s | "
            f"{100 * b['share_of_encoder']:.0f} % |",
            f"| score (encoding + search + stage 2; {s['encodings']} encodings) | "
            f"{s['encoder_alone_per_s']:.1f}/s | {s['images_per_s']:.1f} images/s | "
            f"{100 * s['encoder_share_of_scoring']:.0f} % of the time is the encoder |",
            "",
            f"Whole build-bank (encoding, calibration null with stage 2, index): "
            f"{b['cli_images_per_s']:.1f} images/s. Load at the end {r['load_at_end']:.1f}.",
            "",
        ]
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--config", choices=("tiny", "vit-b"), default="tiny")
    args = p.parse_args(argv)
    result = run(args.images, args.image_size, args.config)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
