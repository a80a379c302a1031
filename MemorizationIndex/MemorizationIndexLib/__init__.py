"""MemorizationIndex engine: plain Python, no Qt or Slicer imports.

Builds a feature bank from training MRI with MRI-CORE's encoder and scores synthetic
volumes with a calibrated Memorization Index (MI) and the Overfit/Novelty Index (ONI).

    import MemorizationIndexLib as mi

    settings = mi.BankSettings(image_size=224, layers=(3, 7, 11))
    encoder = settings.encoder("mri_core.pth", device="cuda")
    bank = mi.build_bank("train/", "bank/", settings, encoder, mi.Job(progress, cancel))
    bank = mi.load_bank("bank/")
    result = mi.score(bank, "synthetic/", bank.load_encoder("mri_core.pth"), alpha=0.01)
    mi.write_report(result, bank, "report/")
    for v in result.ranked_volumes(): print(v.volume, v.mi, v.flagged)

The names below are imported on first use, so `import MemorizationIndexLib` stays cheap
(no torch, faiss or SimpleITK until they are needed). Everything else lives in the
sub-packages, in pipeline order: scans -> encoding -> search -> calibration -> bank ->
scoring -> report (cli and demo apart).
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "BankSettings": "bank.settings",
    "FeatureBank": "bank.feature_bank",
    "load_bank": "bank.feature_bank",
    "build_bank": "bank.build",
    "Encoder": "encoding.encoder",
    "EncoderConfig": "encoding.vit",
    "Job": "job",
    "score": "scoring.score",
    "ScoreResult": "scoring.results",
    "SliceResult": "scoring.results",
    "VolumeResult": "scoring.results",
    "write_report": "report.files",
    "MemorizationIndexError": "errors",
    "CancelledError": "errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
