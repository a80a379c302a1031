"""report.html: self-contained (images inline), the verdict per volume, the similarity
histogram against the calibration null, and the top suspected copies with their matches."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..bank.feature_bank import FeatureBank
from ..geometry import flip_axes
from ..scoring.results import ScoreResult
from .duplicates_section import internal_duplicates_section
from .images import difference_image, figures
from .slice_images import aligned
from .viewer import VIEWER_STYLE, Suspect, pose_text, suspect_button, viewer_section

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
        match = aligned(match, result.alignment, i, len(match))
    else:
        # Show the query as the matched view saw it, so the copy lines up with its match.
        axes = flip_axes(r.flip)
        query = np.flip(query, axis=axes) if axes else query
    imgs = figures(
        [
            (query, "synthetic"),
            (match, "nearest training"),
            (difference_image(query, match), "difference"),
        ],
        128,
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


def _volume_table_rows(result: ScoreResult, viewers: dict[tuple[str, str], str]) -> str:
    """One row per volume, most suspicious first; a flagged one opens in the viewer."""
    esc = html.escape
    return "".join(
        f'<tr class="{"flag" if v.flagged else ""}">'
        f"<td>{esc(v.volume)}{_series(v.series_name)}</td>"
        f"<td>{'COPY' if v.flagged else 'novel'}</td><td>{v.mi:.6f}</td>"
        f"<td>{v.oni:+.3f}</td><td>{v.fraction_flagged:.2f}</td>"
        f"<td>{v.longest_run}</td><td>{esc(v.match_volume)}</td>"
        f"<td>{esc(v.pose_text())}</td>"
        f"<td>{_open(viewers.get((v.volume, v.series_uid)))}</td></tr>"
        for v in result.ranked_volumes()
    )


def _open(key: str | None, text: str = "view") -> str:
    return suspect_button(key, text) if key else ""


def _subject_rows(table: list[dict], shown: list[Suspect]) -> str:
    """Rows of a copies-per-training-subject table, each with its suspects' viewers."""
    esc = html.escape
    buttons: dict[str, list[str]] = {}
    for k, suspect in enumerate(shown):
        buttons.setdefault(str(suspect.subject), []).append(_open(suspect.key, f"#{k + 1}"))
    rows = "".join(
        f"<tr><td>{esc(str(r['subject']))}</td><td>{r['copies']}</td>"
        f"<td>{r['training_files']}</td><td>{esc(r['example'])}</td>"
        f"<td>{' '.join(buttons.get(str(r['subject']), []))}</td></tr>"
        for r in table
    )
    return rows or "<tr><td colspan=5>none</td></tr>"


SUBJECT_HEADER = (
    "<tr><th>training subject (group)</th><th>copies</th><th>training {what} copied</th>"
    "<th>example</th><th>inspect</th></tr>"
)


def _subject_section(s: dict, shown: list[Suspect]) -> str:
    """The flagged volumes grouped by the training subject they copy (a data owner's view)."""
    table = s.get("copies_per_training_subject")
    if table is None or (not table and "images" in s):
        return ""
    return (
        "<h2>Training subjects copied by volumes, most first</h2>"
        f"<table>{SUBJECT_HEADER.format(what='volumes')}{_subject_rows(table, shown)}</table>"
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


def _image_set_section(s: dict, shown: list[Suspect]) -> str:
    """The headline of a set of 2D images: share of copies with its interval, and the
    training subjects copied, most first (scoring/image_set.py)."""
    images = s.get("images")
    if not images:
        return ""
    esc = html.escape
    low, high = images["share_flagged_ci95"]
    c_low, c_high = images["estimated_copy_share_ci95"]
    rows = _subject_rows(images["copies_per_training_subject"], shown)
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
<table>{SUBJECT_HEADER.format(what="images")}{rows}</table>
"""


def _audit_section(s: dict) -> str:
    """The audit record (scoring/audit.py): enough to repeat the audit and cite it."""
    a = s.get("audit")
    if not a:
        return ""
    esc = html.escape
    samples, training, null = a["samples"], a["training"], a["null"]
    return f"""<h2>Audit record</h2>
<table>
<tr><th>engine</th><td>memorization-index {esc(a["engine_version"])}</td></tr>
<tr><th>sample set</th><td>{samples["n_files"]} files under <code>{esc(samples["root"])}</code>;
SHA-256 of their <code>sha256sum</code> lines: <code>{samples["sha256"]}</code>
(per-file digests in summary.json)</td></tr>
<tr><th>training manifest</th><td>SHA-256 <code>{training["manifest_sha256"]}</code>
({training["n_training_volumes"]} training volumes, {training["n_bank_slices"]} slices)</td></tr>
<tr><th>null</th><td>{esc(null["what"])}: {null["n_slices"]} slices, SHA-256
<code>{null["samples_sha256"]}</code></td></tr>
<tr><th>alpha</th><td>{a["alpha"]} (flag when MI &ge; 1 - alpha)</td></tr>
</table>
"""


def render_html(result: ScoreResult, bank: FeatureBank, images_folder: Path | None = None) -> str:
    """The whole page; most of this function is the page's template. images_folder: write
    the viewer's pictures there (the report's folder) instead of inline."""
    s = result.summary
    esc = html.escape
    sims = np.array([r.similarity for r in result.slices])
    cards = [_card(result, bank, i) for i in result.ranked_slices()[:TOP_COPIES_IN_REPORT]]
    viewer, shown = viewer_section(result, bank, images_folder)
    viewers = {x.volume: x.key for x in shown if x.volume is not None}
    vol_rows = _volume_table_rows(result, viewers)
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
{VIEWER_STYLE}
</style></head><body>
<h1>Memorization Index report</h1>
{encoder_note}
{_image_set_section(s, shown)}
<p><b>{s["n_volumes_flagged"]} of {s["n_volumes"]}</b> synthetic volumes flagged as copies;
{s["n_slices_flagged"]} of {s["n_slices"]} slices flagged
({100 * s["fraction_slices_flagged"]:.1f} %, alpha = {s["alpha"]}).
Estimated share of copied slices: {100 * s["estimated_copy_share"]:.1f} %.
Mean MI {s["mean_mi"]:.3f}.</p>
<h2>Volumes</h2>
<table><tr><th>volume</th><th>verdict</th><th>MI</th><th>ONI</th><th>slices flagged</th>
<th>longest run</th><th>best-matching training volume</th>
<th>3D registration (volume stage): training volume, similarity, pose</th>
<th>inspect</th></tr>{vol_rows}
</table>
{_subject_section(s, shown)}
{internal_duplicates_section(result)}
<h2>Inspect the suspects: slice by slice</h2>
{viewer}
<h2>Similarity: synthetic slices (orange) against the calibration null (grey)</h2>
{_histogram_svg(sims, bank.null.samples)}
<p>Null: {s["calibration"]["n_null_slices"]} slices of training volumes held out of the bank;
MI = the null's CDF at a slice's similarity (upper tail: generalised Pareto fit).</p>
<h2>Top suspected copies</h2>
{"".join(cards)}
{_audit_section(s)}
<h2>Warnings</h2>
<ul>{warned or "<li>none</li>"}</ul>
<h2>Skipped inputs</h2>
<ul>{skipped or "<li>none</li>"}</ul>
</body></html>
"""
