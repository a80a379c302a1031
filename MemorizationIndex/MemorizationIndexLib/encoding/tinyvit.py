"""LiteMedSAM's image encoder: a TinyViT-5M in MobileSAM's layout, written in plain torch.

Written from the published architecture (microsoft/Cream TinyViT, its MobileSAM variant and
bowang-lab/MedSAM branch LiteMedSAM), not copied, so that no timm (and with it torchvision)
is needed. LiteMedSAM's own changes are kept: a patch embedding of two 1x1 convolutions
(no down-sampling: a 256 px input runs its first stage at 256 x 256), and a last merge that
keeps the resolution (stride 1), so stages 2 and 3 share one grid of S/4 x S/4.

Parameter names are those of the checkpoint's `image_encoder.*` tensors but for the stages
(`layers.i` there, `stages.i` here: `layers` is the tuple of requested blocks, as for the
ViT), so a file maps onto it one tensor to one tensor. The forward pass returns the mean of
the feature map after each requested block (blocks 0-11 over the four stages; 12 is SAM's
neck) and runs no block past the last one requested.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError
from .vit import check_layers


@dataclass(frozen=True)
class TinyViTConfig:
    """Architecture of the TinyViT; the defaults are LiteMedSAM's (5.7 M parameters)."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)  # stage 0 is convolutional: no heads used
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)  # the merges after stages 0, 1, 2
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    neck_dim: int = 256
    pretrain_size: int = 256

    def __post_init__(self):
        for name in ("embed_dims", "depths", "num_heads", "window_sizes", "merge_strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.depths)
        if n < 2 or len(self.embed_dims) != n or len(self.num_heads) != n:
            raise SettingsError(
                "TinyViT embed_dims, depths and num_heads need one entry per stage (2 or more)."
            )
        if len(self.window_sizes) != n or len(self.merge_strides) != n - 1:
            raise SettingsError(
                "TinyViT window_sizes needs one entry per stage, merge_strides one fewer."
            )
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:], strict=True):
            if heads < 1 or dim % heads:
                raise SettingsError(f"TinyViT width {dim} is not a multiple of {heads} heads.")

    @property
    def depth(self) -> int:
        """Blocks over all stages; block index `depth` is the neck."""
        return sum(self.depths)

    @property
    def down_sampling(self) -> int:
        """Input pixels per side of one token of the last stage (4 for LiteMedSAM)."""
        factor = 1
        for stride in self.merge_strides:
            factor *= stride
        return factor

    def architecture_name(self) -> str:
        if self == TinyViTConfig():
            return "TinyViT-5M"
        return f"TinyViT-{'-'.join(map(str, self.embed_dims))}"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> TinyViTConfig:
        return cls(**d)


class ConvBN(nn.Sequential):
    """A bias-free convolution and its BatchNorm (named c and bn, as in the checkpoint), run
    as one convolution on [B, H, W, C] maps.

    The network runs channels-last throughout: a 1x1 convolution is then a matrix product
    and the depthwise ones run on PyTorch's channels-last kernels, about twice as fast on a
    CPU as the same convolutions on [B, C, H, W]. BatchNorm (eval: fixed statistics) is
    folded into the convolution's weight and bias on each call; the weights are tiny.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, 1, groups, False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1:
            return F.linear(x, weight.flatten(1), bias)
        out = F.conv2d(
            x.permute(0, 3, 1, 2), weight, bias, conv.stride, conv.padding, 1, conv.groups
        )
        return out.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """LiteMedSAM's stem: two 1x1 conv+BN with GELU between; the grid stays the input's."""

    def __init__(self, dim: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand: float):
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, strided 3x3 depthwise conv, 1x1 conv: [B, H, W, C] -> [B, H/s, W/s, C']."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


@functools.lru_cache(maxsize=8)
def bias_index(window: int) -> torch.Tensor:
    """[N, N] index into a window's learned biases: |row offset| * window + |col offset|
    (TinyViT numbers offsets in the order the first token meets them, which is this)."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None]).abs() * window + (cols[:, None] - cols[None]).abs()


class Attention(nn.Module):
    """Pre-norm multi-head attention inside a window, with a learned bias per head and offset.

    The qkv projection is laid out per head ([q, k, v] of head 0, then head 1, ...), as
    TinyViT stores it, not SAM's [all q, all k, all v].
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.window = window  # no index buffer: one made on the meta device stays garbage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * (c // self.num_heads))
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)
        index = bias_index(self.window).to(self.attention_biases.device)
        bias = self.attention_biases[:, index].to(q.dtype)
        # Written out: on a CPU, scaled_dot_product_attention with an additive mask takes
        # a slower path (about 1.5x on these 49- and 196-token windows).
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """Pre-norm two-layer MLP with GELU (norm, fc1, fc2 as in the checkpoint)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise 3x3 conv, an MLP; on [B, H, W, C] maps.

    As in TinyViT, the grid is zero-padded up to the window before the attention's norm, so
    the padding tokens take part as keys: it matters when the grid is not a multiple of the
    window (64 tokens and window 14 at 256 px), and the weights were trained with it.
    """

    def __init__(self, dim: int, num_heads: int, window: int, config: TinyViTConfig):
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, config.local_conv_size, groups=dim)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win = self.window
        pad_h, pad_w = (-h) % win, (-w) % win
        padded = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        hp, wp = h + pad_h, w + pad_w
        windows = padded.reshape(b, hp // win, win, wp // win, win, c).transpose(2, 3)
        mixed = self.attn(windows.reshape(-1, win * win, c))
        mixed = mixed.view(b, hp // win, wp // win, win, win, c).transpose(2, 3)
        x = self.local_conv(x + mixed.reshape(b, hp, wp, c)[:, :h, :w])
        return x + self.mlp(x)


class Stage(nn.Module):
    """The blocks of one stage and the merge that follows it (none after the last)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class Neck(nn.Module):
    """SAM's neck on [B, H, W, C]: 1x1 conv, LayerNorm over channels, 3x3 conv, LayerNorm
    (eps 1e-6); stored as a Sequential 0-3, as in the checkpoint."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.add_module("0", nn.Conv2d(dim, out_dim, 1, bias=False))
        self.add_module("1", nn.LayerNorm(out_dim, eps=1e-6))
        self.add_module("2", nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False))
        self.add_module("3", nn.LayerNorm(out_dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, norm1, conv2, norm2 = (getattr(self, str(i)) for i in range(4))
        x = norm1(F.linear(x, conv1.weight.flatten(1)))
        x = F.conv2d(x.permute(0, 3, 1, 2), conv2.weight, padding=1).permute(0, 2, 3, 1)
        return norm2(x)


class TinyViTEncoder(nn.Module):
    """The image encoder; `forward` gives the mean feature vector after each requested block.

    Blocks are numbered over the stages (LiteMedSAM: 0-1 convolutional at S x S, 2-3 at
    S/2, 4-9 and 10-11 at S/4); index `config.depth` (12) is SAM's neck, which LiteMedSAM
    trained (unlike MRI-CORE's), 256 channels.
    """

    def __init__(
        self,
        config: TinyViTConfig | None = None,
        image_size: int = 256,
        layers: Sequence[int] = (3, 9, 11),
    ):
        super().__init__()
        config = config or TinyViTConfig()
        step = config.down_sampling
        image_size = int(image_size)
        if image_size < 32 or image_size % step:
            raise SettingsError(
                f"--image-size {image_size} does not suit LiteMedSAM's TinyViT: it takes a "
                f"multiple of {step} pixels, at least 32 (trained at {config.pretrain_size})."
            )
        self.config = config
        self.image_size = image_size
        self.layers = check_layers(layers, config.depth + 1)
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(dims[0])
        stages = []
        for i, depth in enumerate(config.depths):
            if i == 0:
                blocks = [MBConv(dims[0], config.mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dims[i], config.num_heads[i], config.window_sizes[i], config)
                    for _ in range(depth)
                ]
            merge = None
            if i < len(config.depths) - 1:
                merge = PatchMerging(dims[i], dims[i + 1], config.merge_strides[i])
            stages.append(Stage(blocks, merge))
        self.stages = nn.ModuleList(stages)
        self.neck = Neck(dims[-1], config.neck_dim)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, S, S] images in [0, 1] -> one [B, C] mean feature per requested block."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"Expected images [B, 3, {self.image_size}, {self.image_size}], "
                f"got {list(x.shape)}."
            )
        wanted, last = set(self.layers), max(self.layers)
        pooled: dict[int, torch.Tensor] = {}
        x = self.patch_embed(x.permute(0, 2, 3, 1))  # channels-last from here on
        index = 0
        for stage in self.stages:
            for block in stage.blocks:
                x = block(x)
                if index in wanted:
                    pooled[index] = x.mean(dim=(1, 2))
                index += 1
                if index > last:
                    return [pooled[i] for i in self.layers]
            if stage.downsample is not None:
                x = stage.downsample(x)
        pooled[index] = self.neck(x).mean(dim=(1, 2))
        return [pooled[i] for i in self.layers]
