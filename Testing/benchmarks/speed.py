"""Speed and memory of the engine, each figure against a reference measured in the same run.

- Encoder throughput (slices/s) against the machine's dense-matmul rate: the encoder's FLOPs
  per slice are counted analytically (what the hardware executes, window padding included),
  so achieved FLOP/s / matmul FLOP/s is the share of the machine's limit the encoder reaches.
- End-to-end bank build (read, preprocess, encode with the null's flip views, calibrate,
  save) against encoder-only throughput on the same number of slice encodings.
- Scoring latency of one 155-slice volume (already encoded) against banks of 1e4..1e6
  slices of random unit vectors, through FeatureBank.search / scoring.score.score_features.
- Bank bytes per slice, and peak memory (getrusage).

No timing here is an assertion: ratios are reported, never tested against a limit.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from MemorizationIndexLib.encoding.vit import EncoderConfig
from MemorizationIndexLib.search.fourier import FREQUENCIES


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the machine's dense-matmul rate -------------------------------------------------------


def matmul_rate(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    repeats: int = 5,
) -> dict:
    """FLOP/s of an n x n x n matrix product (the best of `repeats` after one warm-up)."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.matmul(a, b)
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    flops = 2.0 * n**3
    return {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "seconds": best,
        "flop_per_s": flops / best,
        "threads": torch.get_num_threads(),
    }


# ---- analytic FLOPs of the encoder ---------------------------------------------------------


@dataclass(frozen=True)
class EncoderFlops:
    executed: float  # FLOPs the hardware runs per slice (window padding included)
    useful: float  # the same without the padded tokens
    blocks_run: int
    grid: int
    padded_grid: int


def encoder_flops(config: EncoderConfig, image_size: int, layers: tuple[int, ...]) -> EncoderFlops:
    """Multiply-adds x 2 of one slice through MRICoreEncoder.forward (blocks up to max(layers)).

    Patch embedding; per block: qkv and output projections and attention (QK^T, AV) on the
    tokens the attention sees (a windowed block pads the grid up to a multiple of the window),
    and the MLP on the real tokens. LayerNorm, GELU, softmax and pooling are left out (well
    under 1 %).
    """
    d, p = config.embed_dim, config.patch_size
    hidden = config.mlp_dim
    grid = image_size // p
    tokens = grid * grid
    w = config.window_size
    padded_grid = grid + ((-grid) % w) if w else grid
    blocks = max(layers) + 1

    def attention(n_tokens: int, group: int) -> float:
        # qkv + proj on every token; QK^T and AV within each group of `group` tokens
        linear = 2.0 * n_tokens * d * (3 * d + d)
        mixing = 2.0 * 2.0 * n_tokens * group * d
        return linear + mixing

    executed = useful = 2.0 * tokens * (3 * p * p) * d
    for i in range(blocks):
        mlp = 2.0 * tokens * d * hidden * 2
        if i in config.global_attn_blocks or not w:
            attn_exec = attn_useful = attention(tokens, tokens)
        else:
            n_pad = padded_grid * padded_grid
            attn_exec = attention(n_pad, w * w)
            # without padding each window would hold only its real tokens (an upper bound)
            attn_useful = attention(tokens, min(w, grid) ** 2)
        executed += attn_exec + mlp
        useful += attn_useful + mlp
    return EncoderFlops(executed, useful, blocks, grid, padded_grid)


# ---- encoder throughput -------------------------------------------------------------------


def encoder_throughput(
    image_size: int,
    layers: tuple[int, ...] = (3, 7, 11),
    device: str = "cpu",
    batch_size: int = 32,
    n_slices: int = 32,
    checkpoint: str | None = None,
    config: EncoderConfig | None = None,
    engine_path: bool = True,
    repeats: int = 1,
    bf16: bool = True,
) -> dict:
    """Slices/s of the encoder on preprocessed random slices.

    engine_path: through Encoder.encode (batches moved to the device, bf16 autocast
    on CUDA, features copied back), else a bare forward with inputs already on the device
    (bf16 autocast on CUDA when bf16, else fp32).
    """
    from MemorizationIndexLib.encoding.encoder import Encoder

    encoder = Encoder.load(
        checkpoint,
        image_size=image_size,
        layers=layers,
        config=config,
        device=device,
        batch_size=batch_size,
    )
    info = encoder.info
    dev = encoder.device
    gen = torch.Generator().manual_seed(1)
    # distinct random slices for one batch, repeated (drawing millions of normals costs more
    # than the encoder on a GPU; the content does not change the work)
    base = torch.randn(min(n_slices, batch_size), 3, image_size, image_size, generator=gen)
    x = base.repeat(math.ceil(n_slices / len(base)), 1, 1, 1)[:n_slices].contiguous()
    warm = x[: min(len(x), batch_size)]

    def run_bare(inputs: torch.Tensor) -> None:
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size]
                if dev.type == "cuda" and bf16:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        encoder.network(chunk)
                else:
                    encoder.network(chunk)

    if engine_path:
        encoder.encode(warm)
        run = encoder.encode
        inputs = x
    else:
        inputs = x.to(dev)
        run_bare(inputs[: len(warm)])
        run = run_bare
    _sync(dev)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs)
        _sync(dev)
        best = min(best, time.perf_counter() - start)
    flops = encoder_flops(EncoderConfig.from_dict(info.config), image_size, tuple(layers))
    rate = n_slices / best
    return {
        "image_size": image_size,
        "device": str(dev),
        "precision": ("bf16 autocast" if dev.type == "cuda" and (bf16 or engine_path) else "fp32"),
        "path": "Encoder.encode" if engine_path else "bare forward",
        "batch_size": batch_size,
        "n_slices": n_slices,
        "seconds": best,
        "slices_per_s": rate,
        "gflop_per_slice_executed": flops.executed / 1e9,
        "gflop_per_slice_useful": flops.useful / 1e9,
        "achieved_flop_per_s": rate * flops.executed,
        "grid": flops.grid,
        "padded_grid": flops.padded_grid,
        "encoder": info.name,
    }


# ---- end-to-end bank build ---------------------------------------------------------------


def write_cohort(folder: Path, n_subjects: int, spacing_mm: float = 2.0, seed: int = 0) -> None:
    """Training volumes as compressed NIfTI files (as a user's folder would hold them)."""
    import SimpleITK as sitk
    from MemorizationIndexLib.demo.cohort import load_template, make_subject, write_volume

    folder.mkdir(parents=True, exist_ok=True)
    template_image = load_template(spacing_mm)
    template = sitk.GetArrayFromImage(template_image)
    for i in range(n_subjects):
        write_volume(
            make_subject(template, seed * 1000 + 300 + i),
            template_image,
            folder / f"sub-{i + 1:02d}.nii.gz",
        )


def bank_variants() -> list[tuple[str, dict]]:
    """Stage 1 alone, and both stages."""
    return [("stage 1", {"verify": False}), ("stage 1 + verification", {"verify": True})]


def bank_build(
    n_subjects: int,
    image_size: int,
    stride: int,
    device: str = "cpu",
    batch_size: int = 32,
    checkpoint: str | None = None,
    workdir: Path | None = None,
    spacing_mm: float = 2.0,
) -> list[dict]:
    """bank.build.build_bank on a folder of NIfTI volumes, against encoder-only time for its slices.

    One row per bank variant (stage 1; stage 1 + verification).
    """
    from MemorizationIndexLib.bank.build import build_bank
    from MemorizationIndexLib.bank.settings import BankSettings

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        write_cohort(tmp / "train", n_subjects, spacing_mm)
        for label, extra in bank_variants():
            settings = BankSettings(image_size=image_size, stride=stride, **extra)
            start = time.perf_counter()  # building the encoder is part of building a bank
            encoder = settings.encoder(checkpoint, device=device, batch_size=batch_size)
            bank = build_bank(tmp / "train", tmp / "bank", settings, encoder)
            seconds = time.perf_counter() - start
            n_slices = len(bank)
            n_null = int(bank.null.summary()["n_null_slices"])
            encodings = n_slices + (len(settings.flips) - 1) * n_null
            on_disk = sum(f.stat().st_size for f in (tmp / "bank").iterdir())
            rows.append(
                {
                    "variant": label,
                    "n_volumes": n_subjects,
                    "n_slices": n_slices,
                    "slice_encodings": encodings,
                    "image_size": image_size,
                    "stride": stride,
                    "build_seconds": seconds,
                    "build_encodings_per_s": encodings / seconds,
                    "bank_bytes_on_disk": on_disk,
                    "bank_bytes_per_slice_on_disk": on_disk / max(n_slices, 1),
                }
            )
            shutil.rmtree(tmp / "bank", ignore_errors=True)
    # encoder-only on as many slices (at most 4 batches on a CPU), same size, batch and device
    encodings = rows[0]["slice_encodings"]
    cpu = torch.device(device).type == "cpu" if device != "auto" else not torch.cuda.is_available()
    enc = encoder_throughput(
        image_size,
        settings.layers,
        device,
        batch_size=batch_size,
        n_slices=min(encodings, 4 * batch_size) if cpu else encodings,
        checkpoint=checkpoint,
    )
    for row in rows:
        encoder_only_s = row["slice_encodings"] / enc["slices_per_s"]
        row.update(
            device=enc["device"],
            encoder_only_slices_per_s=enc["slices_per_s"],
            encoder_only_seconds=encoder_only_s,
            encoder_share_of_build=encoder_only_s / row["build_seconds"],
        )
    return rows


# ---- scoring latency against large banks ------------------------------------------------


def random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_bank(n: int, d: int, layers: tuple[int, ...], rng: np.random.Generator):
    """A FeatureBank of n random unit vectors per layer, holding each layer once in memory.

    Each layer is streamed into its faiss index, which the SliceIndex takes as it is (its
    vectors are a view of the index's own storage), so the same search code runs on one
    copy. Whitening is the identity (its cost on 155 queries is negligible).
    """
    import faiss
    from MemorizationIndexLib.bank.feature_bank import FeatureBank
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.calibration.null import NullModel
    from MemorizationIndexLib.search.whitening import Whitener

    settings = BankSettings(image_size=224, layers=layers, verify=False)
    indexes = []
    chunk = 100_000
    # one block of random unit vectors; further blocks permute its coordinates (still unit
    # vectors, all distinct): drawing 2.3e9 normals would take a minute on 2 cores
    block = random_unit(rng, min(chunk, n), d)
    for _ in layers:
        index = faiss.IndexFlatIP(d)
        for start in range(0, n, chunk):
            part = block[: min(chunk, n - start)]
            index.add(np.ascontiguousarray(part[:, rng.permutation(d)]))
        indexes.append(index)
    n_volumes = max(1, -(-n // 155))
    identity = Whitener(np.zeros(d, np.float32), np.eye(d, dtype=np.float32), 0.0)
    index = settings.slice_index().set_fitted(
        [identity] * len(layers),
        indexes,
        (np.arange(n) // 155).astype(np.int64),
        np.zeros((0, 1, 1), np.uint8),
    )
    return FeatureBank(
        settings=settings,
        encoder_info={"name": "synthetic", "trained": False},
        index=index,
        slice_indices=(np.arange(n) % 155).astype(np.int64),
        positions=np.zeros((n, 3)),
        volumes=[f"volume-{i}" for i in range(n_volumes)],
        series_uids=[""] * n_volumes,
        thumbnail_mm=np.ones(0),
        null=NullModel.fit(rng.normal(0.3, 0.05, 2000)),
    )


def query_volume(n_slices: int, d: int, layers, flips, rng) -> object:
    """An encoded 155-slice volume (random features) with every query flip view."""
    from MemorizationIndexLib.encoding.features import FeatureSet
    from MemorizationIndexLib.scans import SliceInfo

    feats = [rng.standard_normal((n_slices, d), dtype=np.float32) for _ in layers]
    extra = [f for f in flips if f != "none"]
    return FeatureSet(
        thumbnail_mm=np.ones(n_slices),
        layers=tuple(layers),
        features=feats,
        flip_features={
            f: [rng.standard_normal((n_slices, d), dtype=np.float32) for _ in layers] for f in extra
        },
        flip_rows={f: np.arange(n_slices) for f in extra},
        slices=[SliceInfo("query", "", i, (0.0, 0.0, float(i))) for i in range(n_slices)],
        volume_ids=np.zeros(n_slices, np.int64),
        volumes=["query"],
        series_uids=[""],
        volume_warnings=[[]],
        thumbnails=np.zeros((n_slices, 1, 1), np.uint8),
    )


def search_reference(bank, queries: np.ndarray, k: int, device: str = "cpu") -> tuple[float, float]:
    """(engine faiss search s, torch matmul + topk s) of one layer's queries on one view."""
    from MemorizationIndexLib.search.neighbours import small_batch_blas

    start = time.perf_counter()
    with small_batch_blas():
        bank.index.indexes_[0].search(np.ascontiguousarray(queries, dtype=np.float32), k)
    faiss_s = time.perf_counter() - start
    dev = torch.device(device)
    vectors = torch.from_numpy(bank.index.vectors_[0])
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    if dev.type == "cuda":
        vectors = vectors.to(dev, torch.float16)
        q = q.to(dev, torch.float16)
        torch.topk(q @ vectors.T, k, dim=1)  # warm-up
    _sync(dev)
    start = time.perf_counter()
    torch.topk(q @ vectors.T, k, dim=1)
    _sync(dev)
    return faiss_s, time.perf_counter() - start


def scoring_latency(
    sizes=(10_000, 100_000, 1_000_000),
    d: int = 768,
    layers: tuple[int, ...] = (3, 7, 11),
    n_query: int = 155,
    full_up_to: int = 100_000,
    memory_margin: float = 3e9,
    reference_device: str = "cpu",
) -> list[dict]:
    """Seconds to score one encoded volume (every query flip) against banks of each size.

    Up to `full_up_to` slices the whole score_features call is timed. Beyond, one faiss
    search (one layer, one view: the unit score_features repeats views x layers times) is
    timed, and the full call is estimated as that times the searches plus the non-search
    time measured on the largest fully timed bank. Each row also times a torch matmul + topk
    on the same search (`reference_device`), for what the hardware allows.
    """
    from MemorizationIndexLib.scoring.score import score_features

    rng = np.random.default_rng(0)
    out = []
    overhead = None
    for n in sorted(sizes):
        need = n * d * 4 * len(layers)
        avail = available_memory_bytes()
        row = {"bank_slices": n, "bank_bytes": need, "query_slices": n_query}
        if avail is not None and need + memory_margin > avail:
            row["skipped"] = (
                f"needs {need / 1e9:.1f} GB for the vectors, {avail / 1e9:.1f} GB available "
                f"(with a {memory_margin / 1e9:.0f} GB margin)"
            )
            out.append(row)
            continue
        start = time.perf_counter()
        bank = synthetic_bank(n, d, layers, rng)
        row["build_seconds"] = time.perf_counter() - start
        queries = query_volume(n_query, d, layers, bank.settings.flips, rng)
        k = bank.settings.top_k
        searches = len(bank.settings.flips) * len(layers)
        faiss_s, torch_s = search_reference(bank, queries.features[0], k, reference_device)
        row.update(
            views=len(bank.settings.flips),
            searches=searches,
            one_search_seconds=faiss_s,
            torch_topk_one_search_seconds=torch_s,
            reference_device=reference_device,
            threads=torch.get_num_threads(),
        )
        if n <= full_up_to:
            start = time.perf_counter()
            score_features(bank, queries, alpha=0.01)
            seconds = time.perf_counter() - start
            overhead = max(0.0, seconds - searches * faiss_s)
            row.update(score_seconds=seconds, measured="full")
        else:
            row.update(
                score_seconds=searches * faiss_s + (overhead or 0.0),
                measured="estimated: searches x one timed search + overhead",
            )
        row["peak_rss_bytes"] = peak_rss_bytes()
        out.append(row)
        del bank, queries
    return out


def bank_bytes_per_slice(d: int = 768, n_layers: int = 3, thumbnail: int = 64) -> dict:
    """What one bank slice costs, from the arrays FeatureBank keeps (see bank.save)."""
    vectors = d * 4 * n_layers
    provenance = 8 + 8 + 3 * 8  # volume id, slice index, position
    thumb = thumbnail * thumbnail
    descriptors = 2 * FREQUENCIES**2 * 4  # fourier.PixelIndex: two float32 descriptors
    return {
        "vectors_bytes": vectors,
        "provenance_bytes": provenance,
        "thumbnail_bytes": thumb,
        "on_disk_bytes": vectors + provenance + thumb,
        "in_memory_bytes": vectors + provenance + thumb + descriptors,
        "note": (
            "in memory the vectors are faiss's own storage (held once); with verification the "
            f"two pixel descriptors add {descriptors} B per slice, computed on first use"
        ),
    }


def cpu_description() -> str:
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{name or 'CPU'}, {os.cpu_count()} logical cores, torch threads {threads}"
