"""report.html: self-contained (images inline), the verdict per volume, the similarity
histogram against the calibration null, and the top suspected copies with their matches."""

from __future__ import annotations

import html

import numpy as np
import torch

from ..bank.feature_bank import FeatureBank
from ..geometry import flip_axes, sampling_theta, warp
from ..scoring.results import ScoreResult, SliceResult
from .images import difference_image, png_data_uri

TOP_COPIES_IN_REPORT = 12


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
    """A bank thumbnail moved onto query i by its verified pose (uint8 in and out)."""
    theta = sampling_theta(
        alignment.flip[i], alignment.angle[i], alignment.scale[i], alignment.shift[i], len(match)
    )
    image = torch.from_numpy(match.astype(np.float32))[None]
    return warp(image, theta[None])[0].numpy().round().clip(0, 255).astype(np.uint8)


def pose_text(row: SliceResult) -> str:
    text = f"{row.flip}"
    if row.verified_ncc is not None:
        text += (
            f", {row.angle_deg:+.1f}°, shift ({row.shift_mm[0]:+.1f}, "
            f"{row.shift_mm[1]:+.1f}) mm, scale ({row.scale[0]:.2f}, "
            f"{row.scale[1]:.2f}); NCC {row.verified_ncc:.3f}"
        )
    return text


def _card(result: ScoreResult, bank: FeatureBank, i: int) -> str:
    """One suspected copy: synthetic, nearest training (aligned), difference, numbers."""
    esc = html.escape
    r = result.slices[i]
    query = result.query_thumbnails[i]
    match = bank.thumbnails[int(result.match_rows[i])]
    if match.size == 0:  # a bank built without images (--no-images)
        match = np.zeros_like(query)
    elif result.alignment is not None:
        # The training slice moved onto the synthetic one by the verified pose.
        match = aligned_thumbnail(match, result.alignment, i)
    else:
        # Show the query as the matched view saw it, so the copy lines up with its match.
        axes = flip_axes(r.flip)
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
    return (
        f'<div class="card{" flag" if r.flagged else ""}"><div class="imgs">{imgs}</div>'
        f"<p><b>{esc(r.volume)}</b> slice {r.slice_index}<br>"
        f"matches <b>{esc(r.match_volume)}</b> slice {r.match_slice} "
        f"({esc(pose_text(r))})<br>MI {r.mi:.6f} &middot; p {r.p_value:.2e} "
        f"&middot; ONI {r.oni:+.3f} &middot; similarity {r.similarity:.4f}</p></div>"
    )


def _series(name: str) -> str:
    return f" <small>(series {html.escape(name)})</small>" if name else ""


def _volume_table_rows(result: ScoreResult) -> str:
    esc = html.escape
    return "".join(
        f'<tr class="{"flag" if v.flagged else ""}">'
        f"<td>{esc(v.volume)}{_series(v.series_name)}</td>"
        f"<td>{'COPY' if v.flagged else 'novel'}</td><td>{v.mi:.6f}</td>"
        f"<td>{v.oni:+.3f}</td><td>{v.fraction_flagged:.2f}</td>"
        f"<td>{v.longest_run}</td><td>{esc(v.match_volume)}</td>"
        f"<td>{esc(v.pose_text())}</td></tr>"
        for v in result.ranked_volumes()
    )


def _encoder_note(s: dict) -> str:
    esc = html.escape
    if s["untrained_encoder"]:
        return (
            f'<p class="warn">Encoder: {esc(s["encoder"]["name"])}. These scores come from an '
            "untrained encoder: use them to test the pipeline, not to judge a model.</p>"
        )
    return (
        f"<p>Encoder: {esc(s['encoder']['name'])} "
        f"(checkpoint SHA-256 {esc(str(s['encoder'].get('checkpoint_sha256')))})</p>"
    )


def _image_set_section(s: dict) -> str:
    """The headline of a set of 2D images: share of copies with its interval, and the
    training subjects copied, most first (scoring/image_set.py)."""
    images = s.get("images")
    if not images:
        return ""
    esc = html.escape
    low, high = images["share_flagged_ci95"]
    c_low, c_high = images["estimated_copy_share_ci95"]
    rows = "".join(
        f"<tr><td>{esc(str(r['subject']))}</td><td>{r['copies']}</td>"
        f"<td>{r['training_files']}</td><td>{esc(r['example'])}</td></tr>"
        for r in images["copies_per_training_subject"]
    )
    units = (
        f"<p>{images['pixel_units']} images carry no pixel size (raster or NumPy files): "
        "their poses are in pixels.</p>"
        if images["pixel_units"]
        else ""
    )
    stage3 = f"<p>{esc(s['volume_stage_skipped'])}</p>" if s.get("volume_stage_skipped") else ""
    return f"""<h2>2D images: the set</h2>
<p><b>{images["n_flagged"]} of {images["n_images"]}</b> images flagged as copies
({100 * images["share_flagged"]:.1f} %, 95 % interval {100 * low:.1f}-{100 * high:.1f} %).
Estimated share of copies, after the alpha expected of novel images:
<b>{100 * images["estimated_copy_share"]:.1f} %</b> ({100 * c_low:.1f}-{100 * c_high:.1f} %).
Mean MI {images["mean_mi"]:.3f}, mean ONI {images["mean_oni"]:+.3f}.</p>{units}{stage3}
<h3>Training subjects copied, most first</h3>
<table><tr><th>training subject (group)</th><th>copies</th><th>training images copied</th>
<th>example</th></tr>{rows or "<tr><td colspan=4>none</td></tr>"}</table>
"""


def render_html(result: ScoreResult, bank: FeatureBank) -> str:
    """The whole page; most of this function is the page's template."""
    s = result.summary
    esc = html.escape
    sims = np.array([r.similarity for r in result.slices])
    cards = [_card(result, bank, i) for i in result.ranked_slices()[:TOP_COPIES_IN_REPORT]]
    vol_rows = _volume_table_rows(result)
    skipped = "".join(
        f"<li><code>{esc(x['path'])}</code>: {esc(x['reason'])}</li>" for x in s["skipped"]
    )
    warned = "".join(
        f"<li><code>{esc(w['volume'])}</code>: {esc(w['warning'])}</li>"
        for w in s.get("warnings", [])
    )
    encoder_note = _encoder_note(s)
    if not bank.settings.store_images:
        encoder_note += (
            "<p>This bank keeps no training images (built with --no-images): the nearest "
            "training slice is named, not shown; open it in 3D Slicer.</p>"
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
{_image_set_section(s)}
<p><b>{s["n_volumes_flagged"]} of {s["n_volumes"]}</b> synthetic volumes flagged as copies;
{s["n_slices_flagged"]} of {s["n_slices"]} slices flagged
({100 * s["fraction_slices_flagged"]:.1f} %, alpha = {s["alpha"]}).
Estimated share of copied slices: {100 * s["estimated_copy_share"]:.1f} %.
Mean MI {s["mean_mi"]:.3f}.</p>
<h2>Volumes</h2>
<table><tr><th>volume</th><th>verdict</th><th>MI</th><th>ONI</th><th>slices flagged</th>
<th>longest run</th><th>best-matching training volume</th>
<th>3D registration (volume stage): training volume, similarity, pose</th></tr>{vol_rows}
</table>
<h2>Similarity: synthetic slices (orange) against the calibration null (grey)</h2>
{_histogram_svg(sims, bank.null.samples)}
<p>Null: {s["calibration"]["n_null_slices"]} slices of training volumes held out of the bank;
MI = the null's CDF at a slice's similarity (upper tail: generalised Pareto fit).</p>
<h2>Top suspected copies</h2>
{"".join(cards)}
<h2>Warnings</h2>
<ul>{warned or "<li>none</li>"}</ul>
<h2>Skipped inputs</h2>
<ul>{skipped or "<li>none</li>"}</ul>
</body></html>
"""
