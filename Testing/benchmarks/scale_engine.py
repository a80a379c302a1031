"""The engine at scale: a compressed FeatureBank saved, loaded (memory-mapped) and scored.

    python Testing/benchmarks/scale_engine.py --slices 100000     # reduced (make bench)
    python Testing/benchmarks/scale_engine.py --scale             # 1e6 bank slices

Where scale.py measures the vector index alone, this runs the engine's own code: a bank of
slice-like random features (slice_vectors.py, whitening the identity, no images and no
verification: the stage-1 part of the pipeline) is built with `--index compressed`,
written by FeatureBank.save and read back by FeatureBank.load in a fresh measurement, then
synthetic volumes already encoded (155 slices, three views: a noisy copy of 155 consecutive
bank slices, a noisier one, novel slices) are scored with score_features, views stacked into
one search per layer. Reported: peak RSS, RSS after load (heap / mapped files), seconds per
volume (stage 1 and the whole score_features call), bytes per bank slice in RAM and on disk,
candidate recall (each copy's true source among the best view's top-10), and the
extrapolation to 1e5 subjects x 150 slices on 1, 8 and 64 workers.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MemorizationIndex"))

from Testing.benchmarks.scale import (  # noqa: E402
    QUERY_SLICES,
    SLICES_PER_VOLUME,
    TARGET_SUBJECTS,
    folder_bytes,
    peak_rss,
    rss_now,
)
from Testing.benchmarks.slice_vectors import noisy_copies, volume_chunks  # noqa: E402

LAYERS = (3, 7, 11)


def write_layer(path: Path, n_volumes: int, dim: int, seed: int) -> np.ndarray:
    """Slice-like unit vectors of one layer, streamed into an .npy (memory-mapped back)."""
    out = np.lib.format.open_memmap(path, "w+", np.float32, (n_volumes * SLICES_PER_VOLUME, dim))
    at = 0
    for chunk in volume_chunks(n_volumes, SLICES_PER_VOLUME, dim, seed=seed):
        out[at : at + len(chunk)] = chunk
        at += len(chunk)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def build_bank(folder: Path, work: Path, n_volumes: int, dim: int) -> dict:
    from MemorizationIndexLib.bank.feature_bank import FeatureBank, no_images
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.calibration.null import NullModel
    from MemorizationIndexLib.search.compressed import LayerSearch, compressed_layer
    from MemorizationIndexLib.search.whitening import Whitener

    settings = BankSettings(layers=LAYERS, verify=False, store_images=False, index="compressed")
    n = n_volumes * SLICES_PER_VOLUME
    t0 = time.perf_counter()
    layers = []
    for i, _ in enumerate(LAYERS):
        vectors = write_layer(work / f"raw{i}.npy", n_volumes, dim, seed=i)
        layers.append(LayerSearch(compressed_layer(vectors, scratch_dir=work)))
        del vectors
    build_s = time.perf_counter() - t0
    identity = Whitener(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32), 0.0)
    ids = np.arange(n) // SLICES_PER_VOLUME
    index = settings.slice_index().set_fitted([identity] * len(LAYERS), layers, ids, no_images(n))
    bank = FeatureBank(
        settings=settings,
        encoder_info={"name": "synthetic", "trained": False},
        index=index,
        slice_indices=(np.arange(n) % SLICES_PER_VOLUME).astype(np.int64),
        positions=np.zeros((n, 3)),
        volumes=[f"volume-{i}" for i in range(n_volumes)],
        series_uids=[""] * n_volumes,
        thumbnail_mm=np.ones(n),
        null=NullModel.fit(np.random.default_rng(0).normal(0.3, 0.05, 2000)),
    )
    t0 = time.perf_counter()
    bank.save(folder)
    save_s = time.perf_counter() - t0
    nprobe = [layer.store.nprobe for layer in layers]
    nlist = [layer.store.nlist for layer in layers]
    del bank, index, layers
    for raw in work.glob("raw*.npy"):
        raw.unlink()
    return {"build_s": build_s, "save_s": save_s, "nprobe": nprobe, "nlist": nlist}


def query_volume(bank, seed: int):
    """An encoded synthetic volume copying 155 consecutive bank slices (FeatureSet)."""
    from MemorizationIndexLib.encoding.features import FeatureSet
    from MemorizationIndexLib.scans import SliceInfo

    n = len(bank)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, n - QUERY_SLICES))
    rows = np.arange(start, start + QUERY_SLICES)
    dim = bank.index.vectors_[0].shape[1]
    novel = next(volume_chunks(2, SLICES_PER_VOLUME, dim, seed=10_000 + seed))[:QUERY_SLICES]
    copies = [noisy_copies(v, rows, 0.5, seed) for v in bank.index.vectors_]
    return rows, FeatureSet(
        layers=LAYERS,
        features=copies,
        flip_features={
            "hflip": [noisy_copies(v, rows, 1.0, seed + 1) for v in bank.index.vectors_],
            "vflip": [novel for _ in LAYERS],
        },
        flip_rows={"hflip": np.arange(QUERY_SLICES), "vflip": np.arange(QUERY_SLICES)},
        slices=[SliceInfo("query", "", i, (0.0, 0.0, float(i))) for i in range(QUERY_SLICES)],
        volume_ids=np.zeros(QUERY_SLICES, np.int64),
        volumes=["query"],
        series_uids=[""],
        volume_warnings=[[]],
        thumbnails=np.zeros((QUERY_SLICES, 1, 1), np.uint8),
        thumbnail_mm=np.ones(QUERY_SLICES),
    )


def measure(folder: Path, n_volumes: int) -> dict:
    from MemorizationIndexLib.bank.feature_bank import load_bank
    from MemorizationIndexLib.scoring.score import score_features
    from MemorizationIndexLib.search.compressed import memory_bytes
    from MemorizationIndexLib.search.index import QuerySlices, pooled_candidates

    gc.collect()
    before = rss_now()
    t0 = time.perf_counter()
    bank = load_bank(folder)
    load_s = time.perf_counter() - t0
    after = rss_now()
    n = len(bank)
    stage1, whole, recall = [], [], []
    for seed in range(n_volumes):
        rows, queries = query_volume(bank, seed)
        slices = QuerySlices.of(queries, bank.settings.flips)
        t = time.perf_counter()
        result = bank.index.search(slices)
        stage1.append(time.perf_counter() - t)
        views = [(np.arange(QUERY_SLICES), result.stage1)]
        candidates = pooled_candidates(views, QUERY_SLICES, bank.settings.top_k)
        recall.append(np.mean([r in c for r, c in zip(rows, candidates, strict=True)]))
        t = time.perf_counter()
        score_features(bank, queries)
        whole.append(time.perf_counter() - t)
    provenance = 8 + 8 + 3 * 8 + 8  # volume id, slice index, position, thumbnail mm
    peak = high_water_mark()
    exact_s = exact_stage1(bank, queries)
    return {
        "exact_stage1_s_per_volume": exact_s,
        "bank_slices": n,
        "load_s": load_s,
        "rss_after_load_anon_bytes": after.get("RssAnon", 0) - before.get("RssAnon", 0),
        "rss_after_load_file_bytes": after.get("RssFile", 0) - before.get("RssFile", 0),
        "ram_bytes_per_slice": memory_bytes(bank.index.indexes_) / n + provenance,
        "disk_bytes_per_slice": folder_bytes(folder) / n,
        "stage1_s_per_volume": float(np.median(stage1)),
        "score_s_per_volume": float(np.median(whole)),
        "candidate_recall": float(np.mean(recall)),
        "volumes_scored": n_volumes,
        "peak_rss_scoring_bytes": peak,
    }


def high_water_mark() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited from the parent
    of a spawned process)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def exact_stage1(bank, queries) -> float:
    """Stage 1 of the same volume on the exact index (vectors loaded into RAM; one search per
    view and layer, as exact banks search), after the compressed figures were taken."""
    from MemorizationIndexLib.search.index import QuerySlices, SliceIndex

    exact = SliceIndex(top_k=bank.settings.top_k).set_fitted(
        bank.index.whiteners_,
        [np.array(v, np.float32) for v in bank.index.vectors_],
        bank.volume_ids,
        bank.thumbnails,
    )
    slices = QuerySlices.of(queries, bank.settings.flips)
    exact.search(slices)  # warm
    t = time.perf_counter()
    exact.search(slices)
    return time.perf_counter() - t


def extrapolate(n: int, per_volume_s: float, build_s: float, ram: float, disk: float) -> list:
    """1e5 subjects x 150 slices (bank 1.5e7 slices, 1e5 synthetic volumes): stage 1 per
    volume grows as sqrt(N) (IVF lists ~ sqrt(N)); scoring shards by volume over workers
    (each a machine like this one holding the compressed bank); the index build is one
    process per layer (at most 3 workers help). Verification and encoding not included."""
    big = TARGET_SUBJECTS * SLICES_PER_VOLUME
    t_vol = per_volume_s * np.sqrt(big / n)
    return [
        {
            "workers": w,
            "bank_slices": big,
            "s_per_volume": t_vol,
            "score_hours": TARGET_SUBJECTS * t_vol / w / 3600,
            "build_hours": build_s * big / n / min(w, 3) / 3600,
            "ram_gb_per_worker": ram * big / 1e9,
            "disk_gb": disk * big / 1e9,
        }
        for w in (1, 8, 64)
    ]


def run(n_slices: int, dim: int = 768, volumes: int = 3, work: str | None = None) -> dict:
    n_volumes = max(2, n_slices // SLICES_PER_VOLUME)
    tmp = Path(tempfile.mkdtemp(prefix="scale-engine-", dir=work))
    t0 = time.perf_counter()
    try:
        built = build_bank(tmp / "bank", tmp, n_volumes, dim)
        # Load and score in a fresh process: its RSS is the scoring run's own, not what the
        # build left to the allocator.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            scored = pool.submit(measure, tmp / "bank", volumes).result()
        result = {**built, **scored}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(
        dim=dim,
        cpus=os.cpu_count(),
        load_average=os.getloadavg(),
        peak_rss_bytes=peak_rss(),
        wall_s=time.perf_counter() - t0,
    )
    result["extrapolation"] = extrapolate(
        result["bank_slices"],
        result["score_s_per_volume"],
        result["build_s"] + result["save_s"],
        result["ram_bytes_per_slice"],
        result["disk_bytes_per_slice"],
    )
    return result


def markdown(r: dict) -> str:
    lines = [
        f"### Engine at scale: compressed bank of {r['bank_slices']:,} slices x 3 layers x "
        f"{r['dim']}-d ({r['cpus']} CPUs, load average {r['load_average'][0]:.1f})",
        "",
        "| measure | measured | target |",
        "|---|---|---|",
        f"| stage 1, one 155-slice volume, 3 views stacked (3 searches) | "
        f"{r['stage1_s_per_volume']:.3f} s (exact index, per view: "
        f"{r['exact_stage1_s_per_volume']:.3f} s) | < 1 s at 1e6 |",
        f"| score_features per volume (stage 1, calibration, rows; no verification) | "
        f"{r['score_s_per_volume']:.3f} s | |",
        f"| candidate recall (copy's source among the best view's top-10) | "
        f"{r['candidate_recall']:.4f} | >= 0.99 |",
        f"| RAM per bank slice (codes + provenance) | {r['ram_bytes_per_slice']:.0f} B | "
        "<= 1024 B |",
        f"| disk per bank slice (fp32 vectors, codes, provenance) | "
        f"{r['disk_bytes_per_slice']:.0f} B | |",
        f"| RSS after load (fresh process): heap / mapped files | "
        f"{r['rss_after_load_anon_bytes'] / 1e6:.0f} MB / "
        f"{r['rss_after_load_file_bytes'] / 1e6:.0f} MB | |",
        f"| peak RSS: scoring process / building process | "
        f"{r['peak_rss_scoring_bytes'] / 1e9:.2f} GB / {r['peak_rss_bytes'] / 1e9:.2f} GB | |",
        f"| build (train + add + tune, 3 layers) / save / load | {r['build_s']:.0f} s / "
        f"{r['save_s']:.0f} s / {r['load_s']:.1f} s | |",
        "",
        f"Extrapolation to {TARGET_SUBJECTS:,} subjects x {SLICES_PER_VOLUME} slices "
        "(score_features time per volume grows as sqrt(N); verification and encoding not "
        "included):",
        "",
        "| workers | bank slices | s/volume | scoring 1e5 volumes | index build | RAM/worker | "
        "disk |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["extrapolation"]:
        lines.append(
            f"| {e['workers']} | {e['bank_slices']:,} | {e['s_per_volume']:.2f} | "
            f"{e['score_hours']:.2f} h | {e['build_hours']:.2f} h | "
            f"{e['ram_gb_per_worker']:.1f} GB | {e['disk_gb']:.0f} GB |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", action="store_true", help="the full run: 1e6 bank slices")
    ap.add_argument("--slices", type=int, help="bank slices (default 1e5, 1e6 with --scale)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--volumes", type=int, default=3, help="synthetic volumes scored")
    ap.add_argument("--work", help="folder for the bank (default: a temp folder)")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    n = args.slices or (1_000_000 if args.scale else 100_000)
    result = run(n, args.dim, args.volumes, args.work)
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
