"""MRI-CORE's network: a DINOv2-trained ViT-B/16 in SAM's image-encoder layout.

Written from MRI-CORE's published layout (mazurowski-lab/mri_foundation), not copied:
windowed attention (window 14) with global attention in a few blocks, no relative
positions, an absolute position grid stored at the pretraining size and resized to other
inputs. SAM's neck is left out because MRI-CORE never trained it. The forward pass returns
what the index needs, the mean of all tokens after each requested block, and runs no block
past the last one requested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the encoder; the defaults are MRI-CORE's ViT-B/16."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_blocks: tuple[int, ...] = (2, 5, 8, 11)
    layer_norm_eps: float = 1e-6
    pretrain_grid: int = 14
    layer_scale: bool = False

    def __post_init__(self):
        object.__setattr__(
            self, "global_attn_blocks", tuple(int(b) for b in self.global_attn_blocks)
        )
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise SettingsError(
                f"Encoder embed_dim {self.embed_dim} must be a positive multiple of "
                f"num_heads {self.num_heads}."
            )
        for name in ("depth", "patch_size", "window_size", "pretrain_grid"):
            if getattr(self, name) < 1:
                raise SettingsError(
                    f"Encoder {name} must be at least 1 (got {getattr(self, name)})."
                )
        bad = [b for b in self.global_attn_blocks if not 0 <= b < self.depth]
        if bad:
            raise SettingsError(
                f"Encoder global_attn_blocks {bad} are not blocks of a {self.depth}-block encoder."
            )

    @classmethod
    def vit_b(cls, layer_scale: bool = False) -> EncoderConfig:
        """MRI-CORE's ViT-B/16: width 768, 12 blocks, 12 heads, patch 16, window 14."""
        return cls(layer_scale=layer_scale)

    @classmethod
    def tiny(cls) -> EncoderConfig:
        """A 4-block ViT in MRI-CORE's layout (width 64): the same code paths at a fraction
        of the cost, for tests and benchmark smoke runs. Use blocks 1, 2, 3."""
        return cls(embed_dim=64, depth=4, num_heads=4, window_size=2, global_attn_blocks=(1, 3))

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def architecture_name(self) -> str:
        """'ViT-B/16' for MRI-CORE's shape (with or without LayerScale), else the numbers."""
        if replace(self, layer_scale=False) == EncoderConfig.vit_b():
            return "ViT-B/16"
        return f"ViT-{self.embed_dim}d-{self.depth}L/{self.patch_size}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["global_attn_blocks"] = list(self.global_attn_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        return cls(**d)


# ---- the network -------------------------------------------------------------------------


class LayerScale(nn.Module):
    """DINOv2's LayerScale: a learned per-channel factor on a residual branch."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence; no relative positions."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """Two linear layers with GELU; named lin1/lin2 as in SAM (DINOv2 calls them fc1/fc2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> [B * windows, window * window, C], zero-padding H and W up to the window."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(
    x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int], batch: int
) -> torch.Tensor:
    """Inverse of window_partition, cropping the padding away: back to [B, H, W, C]."""
    hp, wp = padded
    c = x.shape[-1]
    x = x.reshape(batch, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, hp, wp, c)[:, : size[0], : size[1]]


class Block(nn.Module):
    """A pre-norm transformer block on [B, H, W, C] tokens, windowed unless global.

    As in MRI-CORE, a windowed block partitions before norm1: the zero tokens that pad the
    grid to a multiple of the window go through norm1 (becoming its bias) and take part in
    attention as keys. This matters only when the grid is not a multiple of the window.
    """

    def __init__(self, config: EncoderConfig, window: int):
        super().__init__()
        dim = config.embed_dim
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MLP(dim, config.mlp_dim)
        self.ls1 = LayerScale(dim) if config.layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim) if config.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if self.window:
            tokens, padded = window_partition(x, self.window)
            mixed = self.attn(self.norm1(tokens))
            mixed = window_unpartition(mixed, self.window, padded, (h, w), b)
        else:
            mixed = self.attn(self.norm1(x.reshape(b, h * w, c))).reshape(b, h, w, c)
        x = x + self.ls1(mixed)
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: [B, 3, S, S] -> [B, S/p, S/p, D]."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def check_layers(layers: Sequence[int], depth: int) -> tuple[int, ...]:
    """Requested block indices, validated against the encoder depth (SettingsError)."""
    layers = tuple(int(i) for i in layers)
    if not layers:
        raise SettingsError("--layers needs at least one encoder block index.")
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise SettingsError(
            f"--layers {', '.join(map(str, bad))}: the encoder has blocks 0 to {depth - 1} only."
        )
    twice = sorted({i for i in layers if layers.count(i) > 1})
    if twice:
        raise SettingsError(f"--layers lists block {', '.join(map(str, twice))} more than once.")
    return layers


class MRICoreEncoder(nn.Module):
    """The encoder trunk; `forward` gives the mean token of each requested block.

    Parameter names mirror SAM's image encoder (patch_embed.proj, pos_embed, blocks.i.*),
    so a checkpoint maps onto it one tensor to one tensor.
    """

    def __init__(
        self,
        config: EncoderConfig | None = None,
        image_size: int = 224,
        layers: Sequence[int] = (3, 7, 11),
    ):
        super().__init__()
        config = config or EncoderConfig.vit_b()
        image_size = int(image_size)
        if image_size < config.patch_size or image_size % config.patch_size:
            raise SettingsError(
                f"--image-size {image_size} is not a positive multiple of the encoder's "
                f"patch size {config.patch_size}."
            )
        self.config = config
        self.image_size = image_size
        self.layers = check_layers(layers, config.depth)
        self.grid = image_size // config.patch_size
        g, d = config.pretrain_grid, config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, d))
        self.blocks = nn.ModuleList(
            Block(config, 0 if i in config.global_attn_blocks else config.window_size)
            for i in range(config.depth)
        )

    def position_grid(self) -> torch.Tensor:
        """The stored grid, bilinearly resized to this input size: [1, grid, grid, D].

        Resized on every call rather than cached: it is cheap, and it can never go stale
        when weights are loaded or moved to another device.
        """
        if self.grid == self.config.pretrain_grid:
            return self.pos_embed
        grid = F.interpolate(
            self.pos_embed.permute(0, 3, 1, 2),
            size=(self.grid, self.grid),
            mode="bilinear",
            align_corners=False,
        )
        return grid.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, S, S] images -> one [B, D] mean-pooled token vector per requested block."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"Expected images [B, 3, {self.image_size}, {self.image_size}], "
                f"got {list(x.shape)}."
            )
        x = self.patch_embed(x) + self.position_grid()
        wanted = set(self.layers)
        pooled: dict[int, torch.Tensor] = {}
        for i in range(max(self.layers) + 1):
            x = self.blocks[i](x)
            if i in wanted:
                pooled[i] = x.mean(dim=(1, 2))
        return [pooled[i] for i in self.layers]

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> None:
        """Deterministic untrained weights: the same seed gives the same encoder anywhere.

        Truncated normal (std 0.02, cut at 2 std) for linear and conv weights and the
        position grid, zero biases, LayerNorm 1/0, LayerScale 1. A private generator is used,
        so the global random state is neither read nor changed.
        """
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                _trunc_normal(module.weight, gen)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, LayerScale):
                module.gamma.fill_(1.0)
        _trunc_normal(self.pos_embed, gen)


def _trunc_normal(t: torch.Tensor, gen: torch.Generator, std: float = 0.02) -> None:
    """Normal(0, std) cut at 2 std, by inverse CDF from the CPU generator (so the result does
    not depend on t's device); three passes instead of nn.init.trunc_normal_'s six."""
    edge = math.erf(2.0 / math.sqrt(2.0))  # P(|z| < 2) = erf(sqrt 2)
    values = torch.empty(t.shape).uniform_(-edge, edge, generator=gen).erfinv_()
    t.copy_(values.mul_(std * math.sqrt(2.0)))
