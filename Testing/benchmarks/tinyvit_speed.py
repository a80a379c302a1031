"""CPU throughput of LiteMedSAM's TinyViT against measured matmul, as speed.py does for the ViT.

The analytic work per slice (multiply-adds x 2 of every convolution, projection, attention
product and MLP that TinyViTEncoder.forward runs, padding included) over the measured
seconds gives the achieved FLOP/s, beside the machine's fp32 matmul rate measured just
before and after. Normalisations, GELU, softmax and pooling are left out (a few %).
"""

from __future__ import annotations

import math
import time

import torch
from MemorizationIndexLib.encoding.tinyvit import TinyViTConfig

from . import speed
from .report import table


def tinyvit_flops(config: TinyViTConfig, image_size: int, layers: tuple[int, ...]) -> float:
    """FLOPs of one slice through TinyViTEncoder.forward, up to block max(layers)."""
    dims, last = config.embed_dims, max(layers)
    res = image_size
    total = 2.0 * res * res * (3 * dims[0] // 2 + dims[0] // 2 * dims[0])  # stem
    index = 0
    for s, depth in enumerate(config.depths):
        d, n = dims[s], res * res
        for _ in range(depth):
            if s == 0:
                hidden = int(d * config.mbconv_expand_ratio)
                total += 2.0 * n * (d * hidden + hidden * 9 + hidden * d)
            else:
                w = config.window_sizes[s]
                padded = (res + (-res) % w) ** 2
                total += 2.0 * padded * (4 * d * d + 2 * w * w * d)  # qkv, proj, QK^T, AV
                total += 2.0 * n * (d * 9 + 2 * d * int(d * config.mlp_ratio))
            if index == last:
                return total
            index += 1
        if s < len(config.depths) - 1:
            out, stride = dims[s + 1], config.merge_strides[s]
            res_out = math.ceil(res / stride)
            total += 2.0 * (n * d * out + res_out * res_out * (out * 9 + out * out))
            res = res_out
    neck = config.neck_dim
    return total + 2.0 * res * res * (dims[-1] * neck + neck * neck * 9)


def throughput(image_size: int, n_slices: int = 16, batch_size: int = 16) -> dict:
    """Slices/s of LiteMedSAM's encoder (real weights) through Encoder.encode on the CPU."""
    from MemorizationIndexLib.encoding.encoder import DEFAULT_LAYERS, Encoder

    layers = DEFAULT_LAYERS["litemedsam"]
    encoder = Encoder.load(
        kind="litemedsam", image_size=image_size, layers=layers, device="cpu", batch_size=batch_size
    )
    x = torch.rand(n_slices, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    encoder.encode(x[: min(4, n_slices)])
    start = time.perf_counter()
    encoder.encode(x)
    seconds = time.perf_counter() - start
    flops = tinyvit_flops(TinyViTConfig(), image_size, layers)
    return {
        "image_size": image_size,
        "layers": list(layers),
        "n_slices": n_slices,
        "batch_size": batch_size,
        "seconds_per_slice": seconds / n_slices,
        "slices_per_s": n_slices / seconds,
        "gflop_per_slice": flops / 1e9,
        "achieved_flop_per_s": flops * n_slices / seconds,
        "encoder": encoder.info.name,
    }


def run(sizes=(96, 112, 256), n_slices: int = 16) -> dict:
    """Matmul, the TinyViT at each size, matmul again (the machine may be shared)."""
    before = speed.matmul_rate("cpu", torch.float32, 2048)
    rows = [throughput(size, n_slices) for size in sizes]
    after = speed.matmul_rate("cpu", torch.float32, 2048)
    return {"matmul": before, "tinyvit": rows, "matmul_after": after}


def markdown(result: dict) -> str:
    before, after = result["matmul"]["flop_per_s"], result["matmul_after"]["flop_per_s"]
    rows = [
        [
            r["image_size"],
            f"{r['seconds_per_slice']:.3f}",
            f"{r['slices_per_s']:.2f}",
            f"{r['gflop_per_slice']:.1f}",
            f"{r['achieved_flop_per_s'] / 1e9:.1f}",
            f"{r['achieved_flop_per_s'] / before:.0%}",
        ]
        for r in result["tinyvit"]
    ]
    return (
        "## LiteMedSAM's TinyViT on the CPU (fp32, real weights)\n\n"
        f"fp32 matmul (2048^3): {before / 1e9:.0f} GFLOP/s before the encoder runs, "
        f"{after / 1e9:.0f} after; {result['matmul']['threads']} threads. Blocks "
        f"{result['tinyvit'][0]['layers']} (the neck is not run).\n\n"
        + table(
            ["px", "s per slice", "slices/s", "GFLOP per slice", "achieved GFLOP/s", "of matmul"],
            rows,
        )
    )
