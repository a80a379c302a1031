"""The encoder column's pieces: the TinyViT's analytic work, the tables, the skip."""

from __future__ import annotations

import pytest
import torch
from MemorizationIndexLib.encoding.tinyvit import TinyViTConfig, TinyViTEncoder
from torch.utils.flop_counter import FlopCounterMode

from . import encoder_column, protocol, tinyvit_speed


@pytest.mark.parametrize("size, layers", [(64, (3, 9, 11)), (96, (12,)), (64, (1,))])
def test_tinyvit_flops_are_what_torch_counts(size, layers):
    network = TinyViTEncoder(TinyViTConfig(), size, layers).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.rand(1, 3, size, size))
    assert tinyvit_speed.tinyvit_flops(TinyViTConfig(), size, layers) == pytest.approx(
        counter.get_total_flops(), rel=1e-9
    )


def fake_detection(name: str) -> dict:
    cell = {"mean": 0.5, "worst": 0.4, "per_seed": [0.5]}
    entry = {"auroc": cell, "tpr_at_1pct_fpr": cell, "flagged_copies": cell}
    return {
        "description": "a fake run",
        "encoder": name,
        "config": {"alpha": 0.01},
        "augmentations": {"none": "unchanged", "hflip": "left-right flip"},
        "per_slice": {m: {"none": entry, "hflip": entry} for m in ("ours", "ours_two_stage")},
        "calibration": {"ours": {"mean": 0.01, "max": 0.02}, "ours_two_stage": None},
        "timing": {"cohort_encodings": 30, "cohort_encode_seconds": 10.0},
    }


def test_tables_have_a_column_per_encoder_and_stage():
    result = {
        "encoders": {"untrained": fake_detection("v"), "litemedsam": fake_detection("t")},
        "skipped": {},
    }
    text = encoder_column.markdown(result)
    assert "stage 1, untrained ViT-B" in text and "stages 1+2, LiteMedSAM" in text
    assert "| hflip | 0.500 / 0.500 / 0.500 |" in text and "1.00% (max seed 2.00%)" in text
    speed = {
        "matmul": {"flop_per_s": 8e10, "threads": 2},
        "matmul_after": {"flop_per_s": 7e10},
        "tinyvit": [
            {
                "image_size": 96,
                "layers": [3, 9, 11],
                "seconds_per_slice": 0.2,
                "slices_per_s": 5.0,
                "gflop_per_slice": 10.1,
                "achieved_flop_per_s": 5.05e10,
            }
        ],
    }
    assert "| 96 | 0.200 | 5.00 | 10.1 | 50.5 | 63% |" in tinyvit_speed.markdown(speed)


def test_litemedsam_is_left_out_saying_why_when_not_installed(monkeypatch):
    monkeypatch.setattr(encoder_column, "installed_weights", lambda: None)
    result = encoder_column.run(protocol.DetectionConfig(), encoders=("litemedsam",))
    assert result["encoders"] == {} and "not installed" in result["skipped"]["litemedsam"]
    assert "LiteMedSAM left out: LiteMedSAM's weights are not installed" in (
        encoder_column.markdown(result)
    )
