"""Score outputs: slices.csv, volumes.csv, summary.json and a self-contained report.html.

The CSV columns are a contract other tools read (README, "Output files"); new columns may
be added, the documented ones are never renamed.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_directory
from .bank import FeatureBank
from .imaging import difference_image, png_data_uri
from .preprocessing import FLIPS
from .scoring import ScoreResult

SLICE_COLUMNS_REQUIRED = (
    "volume",
    "slice_index",
    "similarity",
    "mi",
    "oni",
    "match_volume",
    "match_slice",
    "flagged",
)
VOLUME_COLUMNS_REQUIRED = (
    "volume",
    "mi",
    "oni",
    "fraction_flagged",
    "match_volume",
    "longest_run",
    "flagged",
)
TOP_COPIES_IN_REPORT = 12


def write_csv(path: Path, rows: list[dict], required: tuple[str, ...]) -> None:
    columns = list(required) + [c for c in (rows[0].keys() if rows else []) if c not in required]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.3e}"
    return v


def write_report(
    result: ScoreResult, bank: FeatureBank, out_dir: str | os.PathLike, inputs=()
) -> Path:
    """Write all four outputs at once (atomically); returns the report folder.

    The bank's folder and `inputs` (e.g. the synthetic folder) are never written into.
    """
    out_dir = Path(out_dir)
    inputs = (*inputs, bank.path) if getattr(bank, "path", None) else tuple(inputs)
    with atomic_directory(out_dir, "report", inputs) as tmp:
        write_csv(tmp / "slices.csv", result.slices, SLICE_COLUMNS_REQUIRED)
        write_csv(tmp / "volumes.csv", result.volumes, VOLUME_COLUMNS_REQUIRED)
        (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str))
        (tmp / "report.html").write_text(render_html(result, bank))
    return out_dir


def _histogram_svg(synthetic: np.ndarray, null: np.ndarray, width=560, height=200) -> str:
    """MI-free view: similarity histograms of the synthetic set against the calibration null."""
    values = np.concatenate([synthetic, null]) if len(synthetic) else null
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-3
    bins = np.linspace(lo, hi, 41)
    hs = np.histogram(synthetic, bins)[0] / max(len(synthetic), 1)
    hn = np.histogram(null, bins)[0] / max(len(null), 1)
    top = max(hs.max(initial=0), hn.max(initial=0), 1e-9)
    bw = (width - 40) / 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" '
        'role="img" aria-label="similarity histogram">'
    ]
    for i in range(40):
        for h, color in ((hn[i], "#7a7a7a"), (hs[i], "#d9480f")):
            bar = (height - 10) * h / top
            parts.append(
                f'<rect x="{30 + i * bw:.1f}" y="{height - bar:.1f}" width="{bw - 1:.1f}" '
                f'height="{bar:.1f}" fill="{color}" fill-opacity="0.55"/>'
            )
    parts.append(
        f'<text x="30" y="{height + 18}" font-size="11">{lo:.3f}</text>'
        f'<text x="{width - 60}" y="{height + 18}" font-size="11">{hi:.3f}</text>'
        f'<text x="{width / 2 - 40}" y="{height + 18}" font-size="11">similarity</text></svg>'
    )
    return "".join(parts)


def aligned_thumbnail(match: np.ndarray, alignment, i: int) -> np.ndarray:
    import torch

    from .verification import sampling_theta, warp

    theta = sampling_theta(
        alignment.flip[i], alignment.angle[i], alignment.scale[i], alignment.shift[i], len(match)
    )
    image = torch.from_numpy(match.astype(np.float32))[None]
    return warp(image, theta[None])[0].numpy().round().clip(0, 255).astype(np.uint8)


def pose_text(row: dict) -> str:
    text = f"{row['transform']}"
    if "verified_ncc" in row:
        text += (
            f", {row['angle_deg']:+.1f}°, shift ({row['shift_x_mm']:+.1f}, "
            f"{row['shift_y_mm']:+.1f}) mm, scale ({row['scale_x']:.2f}, "
            f"{row['scale_y']:.2f}); NCC {row['verified_ncc']:.3f}"
        )
    return text


def render_html(result: ScoreResult, bank: FeatureBank) -> str:
    s = result.summary
    esc = html.escape
    sims = np.array([r["similarity"] for r in result.slices])
    order = np.argsort([-r["mi"] - 1e-9 * r["similarity"] for r in result.slices])[
        :TOP_COPIES_IN_REPORT
    ]
    cards = []
    for i in order:
        r = result.slices[int(i)]
        query = result.query_thumbnails[int(i)]
        match = bank.thumbnails[int(result.match_rows[int(i)])]
        if result.alignment is not None:
            # The training slice moved onto the synthetic one by the verified pose.
            match = aligned_thumbnail(match, result.alignment, int(i))
        else:
            # Show the query as the matched view saw it, so the copy lines up with its match.
            axes = tuple(FLIPS[r["transform"]])
            query = np.flip(query, axis=axes) if axes else query
        imgs = "".join(
            f'<figure><img src="{png_data_uri(im)}" width="128" height="128" alt="{cap}">'
            f"<figcaption>{cap}</figcaption></figure>"
            for im, cap in (
                (query, "synthetic"),
                (match, "nearest training"),
                (difference_image(query, match), "difference"),
            )
        )
        cards.append(
            f'<div class="card{" flag" if r["flagged"] else ""}"><div class="imgs">{imgs}</div>'
            f"<p><b>{esc(r['volume'])}</b> slice {r['slice_index']}<br>"
            f"matches <b>{esc(r['match_volume'])}</b> slice {r['match_slice']} "
            f"({esc(pose_text(r))})<br>MI {r['mi']:.6f} &middot; p {r['p_value']:.2e} "
            f"&middot; ONI {r['oni']:+.3f} &middot; similarity {r['similarity']:.4f}</p></div>"
        )
    vol_rows = "".join(
        f'<tr class="{"flag" if v["flagged"] else ""}"><td>{esc(v["volume"])}</td>'
        f"<td>{'COPY' if v['flagged'] else 'novel'}</td><td>{v['mi']:.6f}</td>"
        f"<td>{v['oni']:+.3f}</td><td>{v['fraction_flagged']:.2f}</td>"
        f"<td>{v['longest_run']}</td><td>{esc(v['match_volume'])}</td></tr>"
        for v in sorted(result.volumes, key=lambda v: -v["mi"])
    )
    skipped = "".join(
        f"<li><code>{esc(x['path'])}</code>: {esc(x['reason'])}</li>" for x in s["skipped"]
    )
    encoder_note = (
        f'<p class="warn">Encoder: {esc(s["encoder"]["name"])}. These scores come from an '
        "untrained encoder: use them to test the pipeline, not to judge a model.</p>"
        if s["untrained_encoder"]
        else f"<p>Encoder: {esc(s['encoder']['name'])} "
        f"(checkpoint SHA-256 {esc(str(s['encoder'].get('checkpoint_sha256')))})</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Memorization Index report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
tr.flag td{{background:#fde2d6}}.warn{{background:#fff3bf;padding:.6em;border-radius:4px}}
.card{{border:1px solid #ccc;border-radius:6px;padding:8px;margin:8px 0}}
.card.flag{{border-color:#d9480f}}.imgs{{display:flex;gap:8px}}
figure{{margin:0;text-align:center;font-size:12px}}img{{image-rendering:pixelated}}
</style></head><body>
<h1>Memorization Index report</h1>
{encoder_note}
<p><b>{s["n_volumes_flagged"]} of {s["n_volumes"]}</b> synthetic volumes flagged as copies;
{s["n_slices_flagged"]} of {s["n_slices"]} slices flagged
({100 * s["fraction_slices_flagged"]:.1f} %, alpha = {s["alpha"]}).
Estimated share of copied slices: {100 * s["estimated_copy_share"]:.1f} %.
Mean MI {s["mean_mi"]:.3f}.</p>
<h2>Volumes</h2>
<table><tr><th>volume</th><th>verdict</th><th>MI</th><th>ONI</th><th>slices flagged</th>
<th>longest run</th><th>best-matching training volume</th></tr>{vol_rows}</table>
<h2>Similarity: synthetic slices (orange) against the calibration null (grey)</h2>
{_histogram_svg(sims, bank.null.samples)}
<p>Null: {s["calibration"]["n_null_slices"]} slices of training volumes held out of the bank;
MI = the null's CDF at a slice's similarity (upper tail: generalised Pareto fit).</p>
<h2>Top suspected copies</h2>
{"".join(cards)}
<h2>Skipped inputs</h2>
<ul>{skipped or "<li>none</li>"}</ul>
</body></html>
"""
