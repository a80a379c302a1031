"""report.html's section on internal duplicates: the synthetic inputs that copy each other,
each pair with its two slices side by side (scoring/internal_duplicates.py)."""

from __future__ import annotations

import html
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..scoring.results import DuplicatePair, ScoreResult
from .images import difference_image, figures
from .slice_images import aligned

PAIRS_WITH_IMAGES = 50  # the rest are in the table only (internal_duplicates.csv has all)
IMAGE_PX = 192


def _slice_rows(result: ScoreResult) -> dict[tuple[str, str, int], int]:
    return {(s.volume, s.series_uid, s.slice_index): i for i, s in enumerate(result.slices)}


def _images(result: ScoreResult, rows: dict, pair: DuplicatePair) -> str:
    a = rows.get((pair.input_a, pair.series_uid_a, pair.slice_a))
    b = rows.get((pair.input_b, pair.series_uid_b, pair.slice_b))
    if a is None or b is None:
        return ""
    ta, tb = result.query_thumbnails[a], result.query_thumbnails[b]
    placed = aligned(tb, _as_alignment(pair), 0, len(tb))
    return figures(
        [
            (ta, "input A"),
            (placed, "input B, placed"),
            (difference_image(ta, placed), "difference"),
        ],
        IMAGE_PX,
    )


def _as_alignment(pair: DuplicatePair) -> SimpleNamespace:
    """The pair's pose in the shape slice_images.aligned reads (one query)."""
    return SimpleNamespace(
        flip=[pair.flip],
        angle=np.array([pair.angle_deg]),
        scale=np.array([pair.scale]),
        shift=np.array([pair.shift_px]),
    )


def _name(path: str, slice_index: int) -> str:
    """A file name with its slice; the whole path on hover."""
    esc = html.escape
    name = f'<span title="{esc(path)}">{esc(Path(path).name)}</span>'
    return f"{name} <small>slice {slice_index}</small>"


def _pair_row(result: ScoreResult, rows: dict, k: int, pair: DuplicatePair) -> str:
    esc = html.escape
    source = pair.training_source
    images = _images(result, rows, pair) if k < PAIRS_WITH_IMAGES else ""
    return (
        f'<tr class="flag"><td>{k + 1}</td>'
        f"<td>{_name(pair.input_a, pair.slice_a)}</td>"
        f"<td>{_name(pair.input_b, pair.slice_b)}</td>"
        f"<td>{pair.mi:.6f}</td><td>{pair.p_value:.2e}</td><td>{pair.slices_matched}</td>"
        f"<td>{pair.longest_run}</td>"
        f"<td>{esc(Path(source).name) if source else 'none in common'}</td></tr>"
        + (
            f'<tr><td></td><td colspan="7"><div class="imgs">{images}</div></td></tr>'
            if images
            else ""
        )
    )


def internal_duplicates_section(result: ScoreResult) -> str:
    """The section, or a line saying why the set was not searched."""
    found = result.summary.get("internal_duplicates")
    if found is None:
        return ""
    if not found["searched"]:
        why = html.escape(found["reason"])
        return f"<h2>Duplicates within the synthetic set</h2><p>Not searched: {why}</p>"
    rows = _slice_rows(result)
    body = "".join(_pair_row(result, rows, k, p) for k, p in enumerate(result.internal_duplicates))
    return f"""<h2>Duplicates within the synthetic set</h2>
<p><b>{found["n_pairs"]}</b> pair(s) of synthetic inputs copy each other;
{found["n_inputs_flagged"]} of {found["n_inputs"]} inputs flagged
({found["expected_by_chance"]:.2g} expected by chance at alpha {result.alpha:g});
{found["pairs_with_training_source"]} pair(s) copy the same training volume.
Each slice was searched among the other synthetic inputs' slices (never its own volume's)
and judged by the bank's stage-1-2 null, as against the training set. MI and p are input
A's (Simes over its slices).</p>
<table id="internal-duplicates"><tr><th>#</th><th>input A</th><th>input B</th><th>MI</th>
<th>p</th><th>slices matched</th><th>longest run</th><th>training volume both copy</th></tr>
{body or '<tr><td colspan="8">none</td></tr>'}</table>
"""
