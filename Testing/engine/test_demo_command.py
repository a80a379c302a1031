"""`memorization-index demo` through the command line, on a reduced cohort and encoder.

The real demo (10 + 5 + 4 subjects at 2 mm, ViT-B at 112 px) takes minutes; here the cohort
maker and the bank settings the demo calls are swapped for smaller ones (4 training
subjects, 2 novel, 2 copies at 4 mm; the tiny encoder at 32 px, stage 1 only), so everything
else — the command's arguments, the output folders, the bank, scoring, the report and the
verdict table printed against the truth — runs as `make demo` runs it.
"""

import functools
import json
import re
from dataclasses import dataclass

from MemorizationIndexLib import cli
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.demo import run as demo_run
from MemorizationIndexLib.encoding.vit import EncoderConfig

from ..conftest import TINY_LAYERS


@dataclass(frozen=True)
class TinyDemoSettings(BankSettings):
    layers: tuple = TINY_LAYERS
    calibration_folds: int = 2
    verify: bool = False  # stage 2 has end-to-end tests of its own (test_augmented_copies)

    def encoder(self, checkpoint=None, config=None, device="auto", batch_size=32):
        return super().encoder(checkpoint, EncoderConfig.tiny(), device, batch_size)


def test_demo_command_writes_cohort_bank_report_and_verdicts(tmp_path, monkeypatch, capsys):
    small = functools.partial(
        demo_run.make_cohort, n_train=4, n_novel=2, copies=("hflip", "none"), spacing_mm=4.0
    )
    monkeypatch.setattr(demo_run, "make_cohort", small)
    monkeypatch.setattr(demo_run, "BankSettings", TinyDemoSettings)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--image-size", "32", "--device", "cpu", "--quiet"]
    argv += ["--encoder", "untrained"]  # the tiny ViT; LiteMedSAM has tests of its own
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    truth = json.loads((out / "cohort" / "truth.json").read_text(encoding="utf-8"))
    assert sorted(m["role"] for m in truth) == ["copy"] * 2 + ["novel"] * 2 + ["train"] * 4
    manifest = json.loads((out / "bank" / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["volumes"]) == 4 and manifest["settings"]["image_size"] == 32
    assert (out / "report" / "report.html").is_file()
    # One verdict line per synthetic volume, beside its truth; both copies caught.
    lines = [line for line in printed.splitlines() if line.startswith("synth-")]
    assert len(lines) == 4
    for line in lines:
        if "copy (" in line:
            assert re.search(r"copy \((hflip|none)\)\s+COPY", line), line
            assert "(wrong)" not in line, line
    assert "Caught 2 of 2 copies" in printed
    assert "Internal duplicates: " in printed and " of 4 inputs flagged" in printed
    assert "UNTRAINED encoder" in printed and f"Report: {out / 'report' / 'report.html'}" in printed
