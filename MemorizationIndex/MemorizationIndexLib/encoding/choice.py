"""Which encoder a run uses: the user's --encoder choice, or the best one available.

One rule for the CLI, the demo and the Slicer module: MRI-CORE when a checkpoint is given,
else LiteMedSAM when its weights are installed (a learned medical encoder that installs
from the registry), else the untrained ViT, which every output then calls testing only.
"""

from __future__ import annotations

from ..errors import SettingsError
from .litemedsam import INSTALL, installed_weights, wheel_weights

CHOICES = ("mri-core", "litemedsam", "untrained")
KIND_OF_CHOICE = {"mri-core": "vit", "untrained": "vit", "litemedsam": "litemedsam"}


def choose_encoder(choice: str | None, checkpoint: str | None) -> str:
    """The --encoder choice this run takes (one of CHOICES), or SettingsError when the
    choice and --checkpoint do not go together."""
    if choice is None or choice == "":
        if checkpoint:
            return "mri-core"
        return "litemedsam" if installed_weights() is not None else "untrained"
    if choice not in CHOICES:
        raise SettingsError(f"--encoder {choice!r}: choose from {', '.join(CHOICES)}.")
    if choice == "mri-core" and not checkpoint:
        raise SettingsError(
            "--encoder mri-core needs --checkpoint PATH: MRI-CORE's weights cannot be "
            "shipped; give the .pth file you obtained from its authors."
        )
    if choice == "untrained" and checkpoint:
        raise SettingsError(
            f"--encoder untrained takes no --checkpoint (got {checkpoint}); leave one out."
        )
    if choice == "litemedsam" and not checkpoint:
        wheel_weights()  # installed, and the version and licence checked (else SettingsError)
    return choice


UNTRAINED_NOTICE = (
    "No learned encoder: no --checkpoint (MRI-CORE) was given and LiteMedSAM's weights are "
    f"not installed ({INSTALL}). An UNTRAINED encoder runs; its results are for testing only."
)
