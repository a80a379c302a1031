"""Read an MRI-CORE checkpoint and map it onto MRICoreEncoder's tensor names, exactly.

MRI-CORE saves DINOv2 training state: a torch pickle with the encoder under "teacher"
(we also take "student", "model", "state_dict" or a bare state dict), keys "backbone.*" in
DINOv2 names. The upstream loader drops pos_embed without a word (wrong key, strict=False)
and needs CUDA; here the file is mapped to the CPU, read with weights_only (a checkpoint
can never run code), and every missing, unexpected or misshapen tensor is reported at once.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import CheckpointError, unreachable_reason
from .vit import EncoderConfig, MRICoreEncoder

# Where the encoder's state dict sits in the pickle, in order of preference.
CONTAINER_KEYS = ("teacher", "student", "model", "state_dict")
# Prefixes of whole training modules in one state dict (DINOv2's SSLMetaArch), preferred first.
MODULE_PREFIXES = ("teacher.", "student.")
# DINOv2 tensors that MRI-CORE's SAM-layout encoder does not use.
DROPPED_PREFIXES = ("dino_head.", "ibot_head.", "norm.")
DROPPED_NAMES = ("cls_token", "mask_token", "register_tokens")

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LAYER_SCALE = re.compile(r"^blocks\.\d+\.ls[12]\.gamma$")


def load_mricore_state_dict(
    path: str | os.PathLike, config: EncoderConfig | None = None
) -> tuple[dict[str, torch.Tensor], EncoderConfig]:
    """(state dict in MRICoreEncoder's names, the config it fits), or CheckpointError.

    The width and depth read from the tensors must match `config` (ViT-B by default); the
    head count cannot be read from tensors and is taken from `config`. If the checkpoint
    carries DINOv2 LayerScale factors (ls1/ls2.gamma), the returned config has
    layer_scale=True and the factors are loaded: they are part of the network MRI-CORE
    trained, and dropping them would give different features.
    """
    path = Path(path)
    config = config or EncoderConfig.vit_b()
    tensors = _state_dict_in(read_checkpoint(path), path)
    mapped, origin = _map_names(tensors, path)
    config = _fit_config(mapped, config, path)
    return _checked(mapped, origin, tensors, config, path), config


def read_checkpoint(path: Path, what: str = "the MRI-CORE .pth file"):
    """torch.load on the CPU with weights_only, every failure a CheckpointError naming the
    file (what: the file the user should give instead)."""
    if not os.path.exists(path):
        raise CheckpointError(f"Checkpoint {path} does not exist{unreachable_reason(path)}.")
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a folder; give the checkpoint file itself.")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"Checkpoint {path} cannot be read: {exc.strerror}.") from exc
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save zip, or pickle
        raise CheckpointError(
            f"Checkpoint {path} could not be read as a PyTorch checkpoint: it is not one "
            "(torch.save writes a zip archive or a pickle; this file is neither). Give the "
            f"{what}."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (KeyError, EOFError, ...)
        message = str(exc)
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
            held = f"a Python object of type {found.group(1)}" if found else "Python objects"
            raise CheckpointError(
                f"Checkpoint {path} holds {held}, which safe loading (weights_only) refuses "
                "because unpickling it could run code. If you trust the file, re-save only "
                "the encoder weights, e.g. torch.save({'teacher': state_dict}, new_path)."
            ) from exc
        reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        raise CheckpointError(
            f"Checkpoint {path} could not be read as a PyTorch checkpoint ({reason})."
        ) from exc


def _state_dict_in(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the encoder's state dict inside whatever the pickle holds."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"Checkpoint {path} holds a {type(obj).__name__}, not a dictionary of weights."
        )
    for key in CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in MODULE_PREFIXES:
        if any(k.startswith(prefix + "backbone.") for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:10])) or "none"
        raise CheckpointError(
            f"Checkpoint {path} holds no weight tensors where an encoder state dict was "
            f"expected (keys: {keys})."
        )
    return tensors


def encoder_name(key: str) -> str | None:
    """A checkpoint key in our module's names, or None for a tensor the encoder does not use.

    'backbone.' is optional; DINOv2 chunked blocks ('blocks.C.I.rest', both numbers) are
    block I; DINOv2's mlp.fc1/fc2 are our mlp.lin1/lin2.
    """
    name = key.removeprefix("backbone.")
    if name in DROPPED_NAMES or name.startswith(DROPPED_PREFIXES):
        return None
    chunked = _CHUNKED_BLOCK.match(name)
    plain = _BLOCK.match(name)
    if chunked:
        index, rest = chunked.group(2), chunked.group(3)
    elif plain:
        index, rest = plain.group(1), plain.group(2)
    else:
        return name
    rest = rest.replace("mlp.fc1.", "mlp.lin1.").replace("mlp.fc2.", "mlp.lin2.")
    return f"blocks.{int(index)}.{rest}"


def _map_names(
    tensors: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({our name: tensor}, {our name: checkpoint key}); two keys for one tensor is an error."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        name = encoder_name(key)
        if name is None:
            continue
        if name in origin:
            raise CheckpointError(
                f"Checkpoint {path} holds {name} twice (as {origin[name]} and {key})."
            )
        if value.is_floating_point():
            value = value.float()  # half-precision checkpoints run in fp32 like the rest
        mapped[name] = value
        origin[name] = key
    if "pos_embed" in mapped:
        mapped["pos_embed"] = _pos_grid(mapped["pos_embed"])
    return mapped, origin


def _pos_grid(pos: torch.Tensor) -> torch.Tensor:
    """DINOv2's [1, 1 + G*G, D] (CLS entry first) as SAM's [1, G, G, D] grid.

    [1, G*G, D] without a CLS entry and an already-gridded [1, G, G, D] are taken as well;
    any other shape is left for the shape check to report.
    """
    if pos.ndim != 3 or pos.shape[0] != 1:
        return pos
    n = pos.shape[1]
    for skip in (1, 0):
        g = math.isqrt(max(n - skip, 0))
        if g > 0 and g * g == n - skip:
            return pos[:, skip:].reshape(1, g, g, pos.shape[2]).contiguous()
    return pos


def _fit_config(mapped: dict[str, torch.Tensor], config: EncoderConfig, path: Path):
    """Check width and depth against the config; switch LayerScale on if the file has it."""
    found = []
    patch = mapped.get("patch_embed.proj.weight")
    if patch is not None and patch.ndim == 4 and patch.shape[0] != config.embed_dim:
        found.append(f"embedding width {patch.shape[0]} (expected {config.embed_dim})")
    blocks = {int(n.split(".")[1]) for n in mapped if _BLOCK.match(n)}
    if blocks and max(blocks) + 1 != config.depth:
        found.append(f"{max(blocks) + 1} blocks (expected {config.depth})")
    if found:
        raise CheckpointError(
            f"Checkpoint {path} is not a {config.architecture_name()} like MRI-CORE: it has "
            + " and ".join(found)
            + "."
        )
    return replace(config, layer_scale=any(_LAYER_SCALE.match(n) for n in mapped))


def _checked(
    mapped: dict[str, torch.Tensor],
    origin: dict[str, str],
    tensors: dict[str, torch.Tensor],
    config: EncoderConfig,
    path: Path,
) -> dict[str, torch.Tensor]:
    """Our own strict load check: list every missing, unexpected and misshapen tensor."""
    grid = config.pretrain_grid
    with torch.device("meta"):
        reference = MRICoreEncoder(config, grid * config.patch_size, (config.depth - 1,))
    # pos_embed is said in DINOv2's layout, as the file stores it
    pos = f"[1, {grid * grid + 1}, {config.embed_dim}] (a CLS entry + {grid}x{grid} grid)"
    wants = {"pos_embed": pos}
    return check_tensors(
        mapped,
        origin,
        tensors,
        reference,
        f"Checkpoint {path} does not fit MRI-CORE's {config.architecture_name()} encoder",
        wants,
    )


def check_tensors(
    mapped: dict[str, torch.Tensor],
    origin: dict[str, str],
    tensors: dict[str, torch.Tensor],
    reference: torch.nn.Module,
    failure: str,
    wants: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of `reference`'s state dict from `mapped` (our names; origin: their keys
    in the file, tensors: the file's), or CheckpointError('failure: every missing,
    unexpected and misshapen tensor'); wants: how to say an expected shape, by name."""
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    missing = [name for name in expected if name not in mapped]
    unexpected = [origin[name] for name in mapped if name not in expected]
    wrong = []
    for name, shape in expected.items():
        if name not in mapped or tuple(mapped[name].shape) == shape:
            continue
        key = origin[name]
        want = (wants or {}).get(name, str(list(shape)))
        wrong.append(f"{key} is {list(tensors[key].shape)}, expected {want}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} encoder tensor(s) missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape: {'; '.join(wrong)}")
    if problems:
        raise CheckpointError(failure + ": " + ". ".join(problems) + ".")
    return {name: mapped[name] for name in expected}
