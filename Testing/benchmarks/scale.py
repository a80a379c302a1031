"""Stage-1 search at biobank scale: compressed against exact, on slice-like random vectors.

    python Testing/benchmarks/scale.py            # reduced: 2e5 bank slices (minutes)
    python Testing/benchmarks/scale.py --scale    # full: 1e6 bank slices

Per layer (768-d, three layers), built one after another so that only one exact layer is
in memory at a time: generate the bank (structured like slice features, see
slice_vectors.py), build the exact flat index, time one synthetic volume's stage-1 search
(155 slices x 3 views stacked = 465 queries, one search), build the compressed index from a
training sample, save it (codes + fp16 vectors on disk), load it back (memory-mapped), time
the same search, and compare the results. Then the three compressed layers are loaded
together and searched as a scoring run would. Everything is measured in this one run; the
extrapolation to 1e5 subjects x 150 slices is printed with its assumptions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MemorizationIndex"))

from MemorizationIndexLib.search.vector_store import (  # noqa: E402
    CompressedVectorIndex,
    ExactVectorIndex,
    load_index,
    save_index,
    stack_views,
    training_sample,
)

from Testing.benchmarks.slice_vectors import noisy_copies, volume_chunks  # noqa: E402

SLICES_PER_VOLUME = 150
QUERY_SLICES = 155
VIEWS = 3
K = 10  # the engine's --top-k
TARGET_SUBJECTS = 100_000


def rss_now() -> dict:
    """Current resident memory split into anonymous (heap) and file-backed (memory maps)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def volume_queries(bank: np.ndarray, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """One synthetic volume's 3 views: view 0 copies 155 consecutive bank slices (noise as
    a copy's), view 1 the same with twice the noise, view 2 novel slices (a flip seen by a
    trained encoder matches nothing)."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, len(bank) - QUERY_SLICES))
    rows = np.arange(start, start + QUERY_SLICES)
    novel = next(volume_chunks(2, SLICES_PER_VOLUME, bank.shape[1], seed=10_000 + seed))
    views = [
        noisy_copies(bank, rows, noise=0.5, seed=seed),
        noisy_copies(bank, rows, noise=1.0, seed=seed + 1),
        novel[:QUERY_SLICES],
    ]
    return views, rows


def timed(fn, repeat: int = 3):
    """Best of `repeat` wall times (the machine is shared) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def run_layer(layer: int, n_volumes: int, dim: int, work: Path, args) -> dict:
    res = {"layer": layer}
    t = time.perf_counter()
    exact = ExactVectorIndex(dim)
    for chunk in volume_chunks(n_volumes, SLICES_PER_VOLUME, dim, seed=layer):
        exact.add(chunk)
    res["exact_build_s"] = time.perf_counter() - t  # includes generating the vectors
    bank = exact.vectors()
    n = len(bank)

    views, rows = volume_queries(bank, seed=100 + layer)
    stacked, offsets = stack_views(views)
    res["exact_search_s"], (e_sims, e_ids) = timed(lambda ex=exact: ex.search(stacked, K))
    res["exact_search_per_view_s"], _ = timed(lambda ex=exact: [ex.search(v, K) for v in views], 1)

    t = time.perf_counter()
    comp = CompressedVectorIndex(dim, nprobe=args.nprobe, scratch_dir=work)
    comp.train(training_sample(bank), n_expected=n)
    res["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, n, 65_536):
        comp.add(bank[start : start + 65_536])
    res["add_s"] = time.perf_counter() - t
    t = time.perf_counter()
    folder = save_index(comp, work / f"layer{layer}")
    res["save_s"] = time.perf_counter() - t
    res["nlist"] = comp.nlist
    res["ram_bytes"] = comp.memory_bytes()
    res["disk_bytes"] = folder_bytes(folder)
    del comp
    comp = load_index(folder)

    # nprobe sweep: shortlist recall of the exact top-1 and re-ranked top-k overlap.
    copy_rows = slice(offsets[0], offsets[2])
    novel_rows = slice(offsets[2], offsets[3])
    sweep = []
    for nprobe in args.sweep:
        comp.set_nprobe(nprobe)
        secs, (c_sims, c_ids) = timed(lambda comp=comp: comp.search(stacked, K))
        short = comp.shortlist_search(stacked, comp.shortlist * K)
        sweep.append(
            {
                "nprobe": nprobe,
                "search_s": secs,
                "copy_top1_in_shortlist": float(
                    np.mean([e_ids[i, 0] in short[i] for i in range(*copy_rows.indices(n))])
                ),
                "copy_topk_overlap": overlap(e_ids[copy_rows], c_ids[copy_rows]),
                "novel_top1_equal": float(np.mean(e_ids[novel_rows, 0] == c_ids[novel_rows, 0])),
                "novel_topk_overlap": overlap(e_ids[novel_rows], c_ids[novel_rows]),
                "novel_top1_sim_gap": float(np.max(e_sims[novel_rows, 0] - c_sims[novel_rows, 0])),
                "source_in_topk": float(
                    np.mean([rows[i] in c_ids[i] for i in range(QUERY_SLICES)])
                ),
                "source_in_exact_topk": float(
                    np.mean([rows[i] in e_ids[i] for i in range(QUERY_SLICES)])
                ),
            }
        )
    res["sweep"] = sweep
    comp.set_nprobe(args.nprobe)
    del exact, bank, comp
    gc.collect()
    return res


def extrapolate(n: int, per_volume_s: float, build_s: float, ram: float, disk: float) -> list:
    """1e5 subjects x 150 slices: bank N = 1.5e7 slices and 1e5 synthetic volumes.

    IVF with about sqrt(N) lists scans nprobe lists of about sqrt(N) codes per query, so
    stage-1 time per volume grows as sqrt(N / n); building is linear in N. A worker is one
    machine like this one holding the whole compressed bank (read-only, shared by scoring
    shards); building is one process per layer, so at most 3 workers help it.
    """
    big = TARGET_SUBJECTS * SLICES_PER_VOLUME
    t_vol = per_volume_s * np.sqrt(big / n)
    rows = []
    for workers in (1, 8, 64):
        rows.append(
            {
                "workers": workers,
                "bank_slices": big,
                "stage1_s_per_volume": t_vol,
                "stage1_hours": TARGET_SUBJECTS * t_vol / workers / 3600,
                "build_hours": build_s * big / n / min(workers, 3) / 3600,
                "ram_gb_per_worker": ram * big / 1e9,
                "disk_gb": disk * big / 1e9,
            }
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", action="store_true", help="the full run: 1e6 bank slices")
    ap.add_argument("--slices", type=int, help="bank slices (default 2e5, 1e6 with --scale)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--sweep", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--work", help="folder for the on-disk vectors (default: a temp folder)")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    n_slices = args.slices or (1_000_000 if args.scale else 200_000)
    n_volumes = max(2, n_slices // SLICES_PER_VOLUME)
    n = n_volumes * SLICES_PER_VOLUME
    work = Path(tempfile.mkdtemp(prefix="scale-bench-", dir=args.work))
    t0 = time.perf_counter()
    try:
        layers = []
        for layer in range(args.layers):
            layers.append(run_layer(layer, n_volumes, args.dim, work, args))
            print(f"layer {layer} done at {time.perf_counter() - t0:.0f} s", flush=True)

        # A scoring run: the three compressed layers loaded together, one stacked search each.
        gc.collect()
        rss_before = rss_now()
        indexes = [load_index(work / f"layer{layer}") for layer in range(args.layers)]
        probe = next(volume_chunks(2, SLICES_PER_VOLUME, args.dim, seed=777))
        queries = [stack_views([probe[:QUERY_SLICES]] * VIEWS)[0] for _ in indexes]
        score_s, _ = timed(
            lambda: [ix.search(q, K) for ix, q in zip(indexes, queries, strict=True)]
        )
        rss_after = rss_now()
        result = {
            "bank_slices": n,
            "layers": args.layers,
            "dim": args.dim,
            "nprobe": args.nprobe,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "layers_detail": layers,
            "volume_stage1_compressed_s": score_s,
            "volume_stage1_exact_s": sum(r["exact_search_s"] for r in layers),
            "volume_stage1_exact_per_view_s": sum(r["exact_search_per_view_s"] for r in layers),
            "ram_bytes_per_slice": sum(r["ram_bytes"] for r in layers) / n,
            "disk_bytes_per_slice": sum(r["disk_bytes"] for r in layers) / n,
            "exact_ram_bytes_per_slice": args.layers * args.dim * 4,
            "build_s": sum(r["train_s"] + r["add_s"] + r["save_s"] for r in layers),
            "peak_rss_bytes": peak_rss(),
            "rss_scoring_anon_bytes": rss_after.get("RssAnon", 0) - rss_before.get("RssAnon", 0),
            "rss_scoring_file_bytes": rss_after.get("RssFile", 0) - rss_before.get("RssFile", 0),
            "rss_scoring_total_bytes": rss_after["VmRSS"],
            "wall_s": time.perf_counter() - t0,
        }
        result["extrapolation"] = extrapolate(
            n,
            result["volume_stage1_compressed_s"],
            result["build_s"],
            result["ram_bytes_per_slice"],
            result["disk_bytes_per_slice"],
        )
        print(markdown(result))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def markdown(r: dict) -> str:
    n = r["bank_slices"]
    lines = [
        f"### Stage-1 search, {n:,} bank slices x {r['layers']} layers x {r['dim']}-d "
        f"({r['cpus']} CPUs, load average {r['load_average'][0]:.1f} during the run)",
        "",
        "| measure | compressed (IVF-PQ 4-bit fast-scan + fp16 re-rank) | exact (flat) | target |",
        "|---|---|---|---|",
        f"| RAM per bank slice (serialised index) | {r['ram_bytes_per_slice']:.0f} B | "
        f"{r['exact_ram_bytes_per_slice']} B | <= 1024 B |",
        f"| disk per bank slice | {r['disk_bytes_per_slice']:.0f} B | "
        f"{r['exact_ram_bytes_per_slice']} B (fp32 .npy) | |",
        f"| one 155-slice volume, 3 views stacked, {r['layers']} searches | "
        f"{r['volume_stage1_compressed_s']:.3f} s | {r['volume_stage1_exact_s']:.3f} s "
        f"(per view: {r['volume_stage1_exact_per_view_s']:.3f} s) | < 1 s at 1e6 |",
        f"| build (train + add + save, all layers) | {r['build_s']:.0f} s | "
        f"{sum(x['exact_build_s'] for x in r['layers_detail']):.0f} s (incl. generating) | |",
        f"| peak RSS of the run (one exact layer + generation) | "
        f"{r['peak_rss_bytes'] / 1e9:.2f} GB | | |",
        f"| RSS while scoring with the compressed layers: heap / mapped vectors | "
        f"{r['rss_scoring_anon_bytes'] / 1e6:.0f} MB / {r['rss_scoring_file_bytes'] / 1e6:.0f} MB"
        f" | | |",
        "",
        "| layer | nlist | nprobe | search s | copies: exact top-1 in shortlist | copies: top-10 "
        "overlap | source in top-10 (exact) | novel: top-1 equal | novel: top-10 overlap | "
        "novel: max top-1 cosine gap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in r["layers_detail"]:
        for s in layer["sweep"]:
            lines.append(
                f"| {layer['layer']} | {layer['nlist']} | {s['nprobe']} | {s['search_s']:.3f} | "
                f"{s['copy_top1_in_shortlist']:.4f} | {s['copy_topk_overlap']:.4f} | "
                f"{s['source_in_topk']:.3f} ({s['source_in_exact_topk']:.3f}) | "
                f"{s['novel_top1_equal']:.3f} | {s['novel_topk_overlap']:.3f} | "
                f"{s['novel_top1_sim_gap']:.4f} |"
            )
    lines += [
        "",
        f"Extrapolation to {TARGET_SUBJECTS:,} subjects x {SLICES_PER_VOLUME} slices (bank and "
        "synthetic set alike); stage-1 time per volume grows as sqrt(N) with IVF lists ~ "
        "sqrt(N), build time linearly; verification not included:",
        "",
        "| workers | bank slices | stage 1 s/volume | stage 1, 1e5 volumes | index build | "
        "RAM per worker | disk |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["extrapolation"]:
        lines.append(
            f"| {e['workers']} | {e['bank_slices']:,} | {e['stage1_s_per_volume']:.2f} | "
            f"{e['stage1_hours']:.2f} h | {e['build_hours']:.2f} h | "
            f"{e['ram_gb_per_worker']:.1f} GB | {e['disk_gb']:.0f} GB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
