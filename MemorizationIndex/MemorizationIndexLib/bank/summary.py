"""What a saved bank is, read from its manifest alone: no torch, no faiss, no arrays.

Slicer's own process shows a bank (its size, axis, encoder) and passes its folder to the
worker process, which loads and checks it in full (FeatureBank.load: every file's hash,
every array, the verifier version). Loading the whole bank in Slicer would import torch and
faiss into the application, freezing its window for seconds, and load a second OpenMP
runtime into it (openmp.py); this summary is all the panel needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import (
    MANIFEST_NAME,
    index_kind_of,
    read_bank_manifest,
    require_field,
    volume_paths,
)


@dataclass(frozen=True)
class BankSummary:
    """A bank folder's description; `settings` is the manifest's BankSettings as a dict."""

    path: str
    n_slices: int
    volumes: list[str]
    settings: dict
    encoder: dict
    index_kind: str = "exact"
    manifest: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.n_slices

    @property
    def axis(self) -> str:
        return str(self.settings.get("axis", "axial"))

    @property
    def image_size(self) -> int:
        return int(self.settings.get("image_size", 224))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(int(layer) for layer in self.settings.get("layers", ()))

    @property
    def min_foreground(self) -> float:
        return float(self.settings["min_foreground"])

    @property
    def trained_encoder(self) -> bool:
        return bool(self.encoder.get("trained"))

    @property
    def encoder_choice(self) -> str:
        """The --encoder choice this bank was built with (for a panel that shows it)."""
        return choice_of_bank(self.encoder)

    @property
    def encoder_name(self) -> str:
        return str(self.encoder.get("name", ""))

    def description(self) -> str:
        """One line for the panel and the console."""
        text = (
            f"{self.n_slices} slices of {len(self.volumes)} training volumes "
            f"({self.axis}, {self.image_size} px, layers {', '.join(map(str, self.layers))}); "
            f"encoder: {self.encoder_name}; {self.index_kind} index"
        )
        if not self.trained_encoder and "untrained" not in text.lower():
            text += ". UNTRAINED encoder: results are for testing the pipeline only."
        return text


def choice_of_bank(encoder_info: dict) -> str:
    """The --encoder choice a bank was built with (mri-core, litemedsam or untrained), from
    its recorded EncoderInfo; here, not in encoding/, because Slicer's process reads it and
    must not import torch."""
    if encoder_info.get("kind", "vit") == "litemedsam":
        return "litemedsam"
    return "mri-core" if encoder_info.get("trained") else "untrained"


def read_bank_summary(path: str | os.PathLike) -> BankSummary:
    """The summary of the bank in folder `path`; BankError naming the file when the folder
    is not a bank of this format. The bank's files are checked when it is used."""
    folder = Path(path)
    manifest = read_bank_manifest(folder)
    where = str(folder / MANIFEST_NAME)
    settings = require_field(manifest, "settings", dict, where)
    for key, kind in (
        ("axis", str),
        ("image_size", int),
        ("layers", list),
        ("min_foreground", (int, float)),
    ):
        require_field(settings, key, kind, f"{where} field 'settings'")
    return BankSummary(
        path=str(folder),
        n_slices=require_field(manifest, "n_slices", int, where),
        volumes=volume_paths(require_field(manifest, "volumes", list, where), where),
        settings=dict(settings),
        encoder=dict(require_field(manifest, "encoder", dict, where)),
        index_kind=index_kind_of(manifest),
        manifest=manifest,
    )
