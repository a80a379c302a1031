"""The report's slice viewer: step through a suspected copy slice by slice, next to its
training match under the verified pose, their difference and the MI trace.

A suspect is a flagged volume, or, for 2D images (which have no volume), the flagged
images that copy one training subject. Each suspect's slices are one JSON block of the
page, parsed (and its pictures decoded) only when the reader opens it: a report of 1,000
volumes opens as fast as one of ten. Pictures are inline (data: URIs, one file) or, with
`images_beside`, PNG files under images/ that the browser fetches one slice at a time.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..scoring.image_set import subjects_of
from ..scoring.results import ScoreResult, SliceResult
from .images import difference_image, png_bytes, png_data_uri
from .slice_images import VIEW_SIZE, SliceImages

# Inline pictures make one file of the report, about 40 kB a slice (three 256 px PNGs in
# base64): past this many slices it would weigh more than a browser opens with ease, so
# the remaining suspects are listed and `--report-images beside` shows them all.
MAX_INLINE_SLICES = 1000
PICTURES = ("synthetic", "training", "difference")


@dataclass
class Suspect:
    """One viewer: its id in the page, a title, the training subject it copies, the rows
    of the ScoreResult it steps through (in slice order), the one it opens on, and the
    (volume, series_uid) of a volume (None for a group of 2D images)."""

    key: str
    title: str
    subject: int | str
    rows: list[int]
    start: int
    volume: tuple[str, str] | None = None


def suspects(result: ScoreResult, bank) -> list[Suspect]:
    """Flagged volumes, most suspicious first, then the flagged 2D images grouped by the
    training subject they copy, most copied first."""
    groups = bank.manifest.get("subject_groups")
    rows_of: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(result.slices):
        rows_of.setdefault((row.volume, row.series_uid), []).append(i)
    out: list[Suspect] = []
    flagged = [v for v in result.ranked_volumes() if v.flagged and v.kind == "volume"]
    for v, subject in zip(flagged, subjects_of(flagged, groups, bank.volumes), strict=True):
        rows = sorted(rows_of.get((v.volume, v.series_uid), []), key=_slice_index(result))
        if rows:
            title = f"{v.label}{f' (series {v.series_name})' if v.series_name else ''}"
            key = f"suspect-{len(out)}"
            found = Suspect(
                key, title, subject, rows, _best(result, rows), (v.volume, v.series_uid)
            )
            out.append(found)
    images = {(v.volume, v.series_uid) for v in result.volumes if v.kind != "volume"}
    copies = [
        i
        for i in result.ranked_slices()
        if result.slices[i].flagged
        and (result.slices[i].volume, result.slices[i].series_uid) in images
    ]
    by_subject: dict[int | str, list[int]] = {}
    chosen = [result.slices[i] for i in copies]
    for i, subject in zip(copies, subjects_of(chosen, groups, bank.volumes), strict=True):
        by_subject.setdefault(subject, []).append(i)
    for subject, rows in sorted(by_subject.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        title = f"2D images copying training subject {subject}"
        out.append(Suspect(f"suspect-{len(out)}", title, subject, rows, _best(result, rows)))
    return out


def _slice_index(result: ScoreResult) -> Callable[[int], int]:
    return lambda i: result.slices[i].slice_index


def _best(result: ScoreResult, rows: list[int]) -> int:
    """Position in rows of the most suspicious slice (the viewer opens on it)."""
    ranked = {r: k for k, r in enumerate(result.ranked_slices())}
    return min(range(len(rows)), key=lambda k: ranked[rows[k]])


def pose_text(row: SliceResult) -> str:
    """The verified pose of a slice in words (the flip alone without verification)."""
    text = f"{row.flip}"
    if row.verified_ncc is not None:
        unit = "px" if row.units == "px" else "mm"
        text += (
            f", {row.angle_deg:+.1f}°, shift ({row.shift_mm[0]:+.1f}, "
            f"{row.shift_mm[1]:+.1f}) {unit}, scale ({row.scale[0]:.2f}, "
            f"{row.scale[1]:.2f}); NCC {row.verified_ncc:.3f}"
        )
    return text


def slice_numbers(row: SliceResult) -> str:
    """What the viewer prints under the pictures of one slice."""
    where = (
        f"{row.volume}:{row.series_uid}" if row.volume.endswith((".npy", ".npz")) else row.volume
    )
    return (
        f"{where} slice {row.slice_index} · MI {row.mi:.6f} · p {row.p_value:.2e} · "
        f"ONI {row.oni:+.3f} · similarity {row.similarity:.4f} · "
        f"{'flagged' if row.flagged else 'not flagged'} — matches {row.match_volume} "
        f"slice {row.match_slice} ({pose_text(row)})"
    )


class PictureSink:
    """Where the pictures go: inline data: URIs, or PNG files under folder/images."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.files_read = 0
        self.pictures = 0

    def put(self, suspect: Suspect, k: int, name: str, image: np.ndarray) -> str:
        self.pictures += 1
        if self.folder is None:
            return png_data_uri(image)
        relative = f"images/{suspect.key}/{k:05d}-{name}.png"
        target = self.folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes(image))
        return relative


def suspect_data(
    result: ScoreResult, suspect: Suspect, images: SliceImages, sink: PictureSink
) -> dict:
    """The JSON block of one viewer: its slices' labels, MI, numbers and pictures."""
    slices = []
    pairs = images.pairs(suspect.rows)
    for k, (i, (synthetic, training, from_files)) in enumerate(
        zip(suspect.rows, pairs, strict=True)
    ):
        row = result.slices[i]
        sink.files_read += from_files
        pictures = (synthetic, training, difference_image(synthetic, training))
        slices.append(
            {
                "row": i,
                "label": f"slice {row.slice_index}",
                "mi": round(row.mi, 6),
                "flagged": row.flagged,
                "text": slice_numbers(row),
                "src": [
                    sink.put(suspect, k, n, p) for n, p in zip(PICTURES, pictures, strict=True)
                ],
            }
        )
    return {
        "title": suspect.title,
        "alpha": result.alpha,
        "start": suspect.start,
        "slices": slices,
    }


def within_budget(found: list[Suspect], slices: int) -> list[Suspect]:
    """The most suspicious suspects whose slices fit the budget (the first one always)."""
    shown, used = [], 0
    for suspect in found:
        used += len(suspect.rows)
        if shown and used > slices:
            break
        shown.append(suspect)
    return shown


def script_json(value) -> str:
    """JSON safe inside <script> (a user's file name may hold '</script>')."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def viewer_section(
    result: ScoreResult, bank, images_folder: Path | None = None, size: int = VIEW_SIZE
) -> tuple[str, list[Suspect]]:
    """The viewer's HTML (panel, data blocks, script) and the suspects it shows; with
    images_folder, the pictures are written there as files instead of inline."""
    found = suspects(result, bank)
    shown = found if images_folder is not None else within_budget(found, MAX_INLINE_SLICES)
    pictures = SliceImages(result, bank, size)
    sink = PictureSink(images_folder)
    blocks = "".join(
        f'<script type="application/json" id="{s.key}">'
        f"{script_json(suspect_data(result, s, pictures, sink))}</script>\n"
        for s in shown
    )
    more = (
        f"<p>{len(found) - len(shown)} more suspects are listed above without a viewer: "
        "write the report with <code>--report-images beside</code> to step through all "
        "of them.</p>"
        if len(shown) < len(found)
        else ""
    )
    if not found:
        return "<p>No suspect to inspect: nothing was flagged.</p>", found
    note = (
        ""
        if bank.settings.store_images
        else "<p>This bank keeps no training images: the training picture stays blank.</p>"
    )
    return VIEWER_TEMPLATE.format(size=size, blocks=blocks, more=more, note=note), shown


def suspect_button(key: str, text: str = "view") -> str:
    return (
        f'<button type="button" class="open-suspect" data-suspect="{key}">'
        f"{html.escape(text)}</button>"
    )


VIEWER_TEMPLATE = """<div id="viewer" class="viewer" hidden tabindex="-1">
<h3 id="viewer-title"></h3>{note}
<div class="imgs">
<figure><img id="viewer-synthetic" width="{size}" height="{size}" alt="synthetic slice">
<figcaption>synthetic</figcaption></figure>
<figure><img id="viewer-training" width="{size}" height="{size}" alt="training slice">
<figcaption>training, under the verified pose</figcaption></figure>
<figure><img id="viewer-difference" width="{size}" height="{size}" alt="difference">
<figcaption>difference (x2)</figcaption></figure>
</div>
<div class="controls"><button type="button" id="viewer-prev" title="previous (←, k)">◀</button>
<input type="range" id="viewer-slider" min="0" max="0" value="0" step="1" aria-label="slice">
<button type="button" id="viewer-next" title="next (→, j)">▶</button>
<span id="viewer-position"></span></div>
<p id="viewer-numbers"></p>
<svg id="viewer-trace" width="800" height="110" role="img" aria-label="MI along the volume"></svg>
<p class="hint">Keys: ← → (or j k) step, Home/End jump; click the trace to go to a slice.</p>
</div>
{more}
{blocks}<script>
(function () {{
  const $ = (id) => document.getElementById(id);
  const viewer = $("viewer"), slider = $("viewer-slider"), trace = $("viewer-trace");
  const NS = "http://www.w3.org/2000/svg";
  let data = null, at = 0, marker = null;
  const W = 800, H = 110, L = 34, R = 8, T = 6, B = 18;
  const x = (k) => L + (data.slices.length > 1 ? k * (W - L - R) / (data.slices.length - 1) : 0);
  const y = (mi) => T + (1 - mi) * (H - T - B);
  function el(name, attrs) {{
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }}
  function drawTrace() {{
    trace.replaceChildren();
    trace.append(el("line", {{x1: L, x2: W - R, y1: y(1 - data.alpha), y2: y(1 - data.alpha),
      stroke: "#d9480f", "stroke-dasharray": "4 3"}}));
    for (const [v, t] of [[0, "0"], [1, "1"]]) {{
      const lab = el("text", {{x: 4, y: y(v) + 4, "font-size": 11}}); lab.textContent = "MI " + t;
      trace.append(lab);
    }}
    const last = data.slices.length - 1;
    for (const [k, anchor] of [[0, "start"], [last, "end"]]) {{
      const lab = el("text", {{x: x(k), y: H - 4, "font-size": 11, "text-anchor": anchor}});
      lab.textContent = data.slices[k].label;
      trace.append(lab);
    }}
    trace.append(el("polyline", {{fill: "none", stroke: "#333", "stroke-width": 1.2,
      points: data.slices.map((s, k) => x(k) + "," + y(s.mi)).join(" ")}}));
    data.slices.forEach((s, k) => {{
      if (s.flagged) trace.append(el("circle", {{cx: x(k), cy: y(s.mi), r: 2.5, fill: "#d9480f"}}));
    }});
    marker = el("line", {{id: "viewer-marker", y1: T, y2: H - B, stroke: "#1c7ed6",
      "stroke-width": 2}});
    trace.append(marker);
  }}
  function show(k) {{
    if (!data) return;
    at = Math.max(0, Math.min(data.slices.length - 1, k));
    const s = data.slices[at];
    $("viewer-synthetic").src = s.src[0];
    $("viewer-training").src = s.src[1];
    $("viewer-difference").src = s.src[2];
    slider.value = at;
    const n = data.slices.length;
    $("viewer-position").textContent = s.label + " (" + (at + 1) + " of " + n + ")";
    $("viewer-numbers").textContent = s.text;
    marker.setAttribute("x1", x(at));
    marker.setAttribute("x2", x(at));
    viewer.dataset.at = at;
    viewer.dataset.row = s.row;
  }}
  function open(key) {{
    data = JSON.parse($(key).textContent);
    viewer.dataset.showing = key;
    $("viewer-title").textContent = data.title;
    slider.max = data.slices.length - 1;
    drawTrace();
    viewer.hidden = false;
    show(data.start);
    viewer.scrollIntoView();
    viewer.focus();
  }}
  document.addEventListener("click", (e) => {{
    const b = e.target.closest("button[data-suspect]");
    if (b) open(b.dataset.suspect);
  }});
  slider.addEventListener("input", () => show(Number(slider.value)));
  $("viewer-prev").addEventListener("click", () => show(at - 1));
  $("viewer-next").addEventListener("click", () => show(at + 1));
  trace.addEventListener("click", (e) => {{
    if (!data) return;
    const box = trace.getBoundingClientRect(), n = data.slices.length;
    show(Math.round((e.clientX - box.left - L) / Math.max(1, W - L - R) * (n - 1)));
  }});
  document.addEventListener("keydown", (e) => {{
    if (!data || viewer.hidden || e.target === slider) return;
    const step = {{ArrowRight: 1, ArrowDown: 1, j: 1, ArrowLeft: -1, ArrowUp: -1, k: -1}}[e.key];
    if (step) show(at + step);
    else if (e.key === "Home") show(0);
    else if (e.key === "End") show(data.slices.length - 1);
    else return;
    e.preventDefault();
  }});
}})();
</script>
"""

VIEWER_STYLE = (
    ".viewer{border:1px solid #1c7ed6;border-radius:6px;padding:8px;margin:8px 0}"
    ".viewer img{width:256px;height:256px;background:#000}"
    ".controls{display:flex;gap:8px;align-items:center}.controls input{flex:1}"
    ".hint{font-size:12px;color:#555}"
)
