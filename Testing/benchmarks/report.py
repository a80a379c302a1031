"""Markdown tables of the benchmark results (the README pastes them from RESULTS.md)."""

from __future__ import annotations


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; numbers are expected pre-formatted as strings."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out) + "\n"


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "n/a"
    return f"{value:.{digits}f}"


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def environment_markdown(env: dict) -> str:
    lines = [
        "## Machine and command",
        "",
        f"- Date: {env['date']}",
        f"- Command: `{env['command']}`",
        f"- Engine: git {env.get('engine_revision', 'unknown')}",
        f"- CPU: {env['cpu']}",
        f"- GPU: {env['gpu'] or 'none'}",
        f"- Python {env['python']}, torch {env['torch']}, {env['platform']}",
    ]
    if "peak_rss_bytes" in env:
        lines.append(f"- Peak resident memory of the whole run: {gb(env['peak_rss_bytes'])}")
    return "\n".join(lines) + "\n"


def _encoder_rows(encoders: list[dict], matmul: dict) -> list[list]:
    rows = []
    for e in encoders:
        rows.append(
            [
                f"{e['image_size']} px",
                e["device"],
                e["precision"],
                e["path"],
                e["batch_size"],
                f"{e['slices_per_s']:.2f}",
                f"{e['gflop_per_slice_executed']:.1f} ({e['gflop_per_slice_useful']:.1f})",
                f"{e['achieved_flop_per_s'] / 1e9:.0f}",
                f"{matmul['flop_per_s'] / 1e9:.0f}",
                f"{e['achieved_flop_per_s'] / matmul['flop_per_s']:.0%}",
            ]
        )
    return rows


ENCODER_HEADERS = [
    "input",
    "device",
    "precision",
    "path",
    "batch",
    "slices/s",
    "GFLOP/slice executed (useful)",
    "achieved GFLOP/s",
    "matmul GFLOP/s",
    "ratio",
]


def speed_markdown(results: dict, anchors: dict) -> str:
    parts = []
    if "matmul" in results:
        mm = results["matmul"]
        after = results.get("matmul_after", mm)
        ref = dict(mm, flop_per_s=max(mm["flop_per_s"], after["flop_per_s"]))
        parts.append("## Speed and memory (CPU)\n")
        parts.append(
            f"Dense fp32 matmul {mm['n']}^3 on this machine: {mm['flop_per_s'] / 1e9:.0f} "
            f"GFLOP/s before the encoder runs, {after['flop_per_s'] / 1e9:.0f} after "
            f"({mm['threads']} torch threads); the ratio uses the higher.\n"
        )
        parts.append(table(ENCODER_HEADERS, _encoder_rows(results["encoder"], ref)))
        parts.append(
            "\nFLOPs per slice are counted analytically from the architecture (patch embedding, "
            "qkv/proj, attention, MLP of every block run); 'executed' includes the zero tokens "
            "a windowed block pads the grid with (a 7x7 grid at 112 px is padded to the 14x14 "
            "window), 'useful' leaves them out.\n"
        )
        cpu_anchor = anchors["cpu_224_seconds_per_slice"]
        parts.append(f"Reference anchor for this CPU kind: {cpu_anchor} s per 224 px slice.\n")
    if "bank_build" in results:
        parts.append("\n### Bank build, end to end\n")
        rows = [
            [
                b["variant"],
                b["device"],
                b["n_volumes"],
                b["n_slices"],
                b["slice_encodings"],
                f"{b['image_size']} px, stride {b['stride']}",
                f"{b['build_seconds']:.1f}",
                f"{b['encoder_only_seconds']:.1f}",
                f"{b['encoder_share_of_build']:.0%}",
                f"{b['bank_bytes_per_slice_on_disk']:.0f}",
            ]
            for b in results["bank_build"]
        ]
        parts.append(
            table(
                [
                    "bank",
                    "device",
                    "volumes",
                    "slices",
                    "encodings (with null flip views)",
                    "input",
                    "build s",
                    "encoder-only s",
                    "encoder share of build",
                    "bytes/slice on disk",
                ],
                rows,
            )
        )
        parts.append(
            "\nbuild_bank end to end: NIfTI reading, preprocessing, encoding (every slice, plus "
            "the hflip/vflip views of the null sample), cross-fitted calibration, save. "
            "Encoder-only = the same number of encodings at the encoder's measured throughput "
            "(same size, batch, device); the share is how much of the build the encoder is.\n"
        )
    if "scoring" in results:
        parts.append("\n### Scoring one 155-slice volume (features already extracted)\n")
        rows = []
        for s in results["scoring"]:
            if "skipped" in s:
                rows.append(
                    [f"{s['bank_slices']:,}", gb(s["bank_bytes"]), "skipped: " + s["skipped"]]
                    + [""] * 4
                )
                continue
            rows.append(
                [
                    f"{s['bank_slices']:,}",
                    gb(s["bank_bytes"]),
                    f"{s['score_seconds']:.2f} ({s['measured']})",
                    f"{s['one_search_seconds']:.3f}",
                    f"{s['torch_topk_one_search_seconds']:.3f} ({s['reference_device']})",
                    gb(s["peak_rss_bytes"]),
                ]
            )
        parts.append(
            table(
                [
                    "bank slices",
                    "vectors (3 x 768 fp32)",
                    "score_features s, stage 1 (3 views x 3 layers)",
                    "one faiss search s",
                    "torch matmul+topk, same search s",
                    "peak RSS so far",
                ],
                rows,
            )
        )
        parts.append(
            "\nBanks of random unit vectors. score_features runs the engine's exact faiss "
            "inner-product search once per query view (none, hflip, vflip) and layer; one "
            "search = 155 queries x one layer. The torch column is the same search as one "
            "matrix product + topk, for what the hardware allows.\n"
        )
    if "bytes_per_slice" in results:
        b = results["bytes_per_slice"]
        parts.append(
            f"\nBank bytes per slice: {b['vectors_bytes']} B of feature vectors + "
            f"{b['thumbnail_bytes']} B thumbnail + {b['provenance_bytes']} B provenance = "
            f"{b['on_disk_bytes']} B on disk; {b['in_memory_bytes']} B in memory ({b['note']}).\n"
        )
    if "peak_rss_bytes" in results:
        peak = gb(results["peak_rss_bytes"])
        parts.append(f"\nPeak resident memory after the speed section: {peak}.\n")
    if "gpu" in results:
        g = results["gpu"]
        parts.append(f"## GPU ({g['device_name']})\n")
        parts.append(
            f"Dense matmul 8192^3: bf16 {g['matmul_bf16']['flop_per_s'] / 1e12:.0f} TFLOP/s, "
            f"fp32 {g['matmul_fp32']['flop_per_s'] / 1e12:.0f} TFLOP/s.\n"
        )
        rows = []
        for e in g["encoder"]:
            mm = g["matmul_bf16"] if e["precision"].startswith("bf16") else g["matmul_fp32"]
            rows.append(_encoder_rows([e], mm)[0])
        headers = list(ENCODER_HEADERS)
        headers[-2] = "matmul GFLOP/s (same precision)"
        parts.append(table(headers, rows))
        parts.append(
            f"\nReference anchors (H200, random weights, 224 px): "
            f"{anchors['h200_bf16_224_slices_per_s']:,} slices/s bf16 eager, "
            f"{anchors['h200_bf16_224_compiled_slices_per_s']:,} compiled, "
            f"{anchors['h200_fp32_224_slices_per_s']:,} fp32.\n"
        )
        sub = {k: g[k] for k in ("bank_build", "scoring") if k in g}
        if sub:
            parts.append(speed_markdown(sub, anchors).replace("###", "### GPU machine:"))
    return "\n".join(parts)
