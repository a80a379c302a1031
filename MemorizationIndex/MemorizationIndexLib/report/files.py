"""Score outputs: slices.csv, volumes.csv, internal_duplicates.csv, summary.json and a
self-contained report.html (or report.html with its pictures under images/), written
together into one folder, atomically.

The CSV columns are a contract other tools read (README, "Output files"); the rows come
from the typed results (scoring/results.py), which hold that contract.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..atomic import atomic_directory
from ..bank.feature_bank import FeatureBank
from ..scoring.audit import audit_record
from ..scoring.results import (
    DUPLICATE_COLUMNS_REQUIRED,
    SLICE_COLUMNS_REQUIRED,
    VOLUME_COLUMNS_REQUIRED,
    DuplicatePair,
    ScoreResult,
    SliceResult,
    VolumeResult,
)
from .html import render_html


def write_csv(
    path: Path,
    results: list[SliceResult] | list[VolumeResult] | list[DuplicatePair],
    required: tuple[str, ...],
) -> None:
    rows = [r.as_row() for r in results]
    present = dict.fromkeys(c for row in rows for c in row)  # every row's columns, in order
    columns = list(required) + [c for c in present if c not in required]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.3e}"
    if isinstance(v, str) and v.startswith(FORMULA_STARTS):
        return "'" + v  # a spreadsheet would run it as a formula (file names come from users)
    return v


def write_report(
    result: ScoreResult,
    bank: FeatureBank,
    out_dir: str | os.PathLike,
    inputs=(),
    images_beside: bool = False,
) -> Path:
    """Write all four outputs at once (atomically); returns the report folder.

    The summary gains its audit record (scoring/audit.py) here, where the report is made.
    images_beside: the viewer's pictures as PNG files under images/ (report.html then needs
    its folder); by default they are inline and report.html stands alone.
    The bank's folder and `inputs` (e.g. the synthetic folder) are never written into.
    """
    out_dir = Path(out_dir)
    inputs = (*inputs, bank.path) if getattr(bank, "path", None) else tuple(inputs)
    if "audit" not in result.summary:
        result.summary["audit"] = audit_record(result, bank)
    with atomic_directory(out_dir, "report", inputs) as tmp:
        write_csv(tmp / "slices.csv", result.slices, SLICE_COLUMNS_REQUIRED)
        write_csv(tmp / "volumes.csv", result.volumes, VOLUME_COLUMNS_REQUIRED)
        write_csv(
            tmp / "internal_duplicates.csv",
            result.internal_duplicates,
            DUPLICATE_COLUMNS_REQUIRED,
        )
        (tmp / "summary.json").write_text(
            json.dumps(result.summary, indent=2, default=str), encoding="utf-8"
        )
        page = render_html(result, bank, tmp if images_beside else None)
        (tmp / "report.html").write_text(page, encoding="utf-8")
    return out_dir
