"""Shared fixtures of the engine tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

# ---- MRI-CORE encoder: random weights in the checkpoint's names, and a reference forward ----
# Written independently of encoder.py (explicit window loops, explicit softmax attention), so
# the tests check the module against the architecture facts, not against itself.


def random_mricore_weights(cfg, seed: int = 0, layer_scale: bool = False) -> dict:
    """Random tensors named as in an MRI-CORE checkpoint, without 'backbone.' or chunks.

    Norm biases, pos_embed and LayerScale are all non-trivial, so padding, interpolation
    and LayerScale mistakes change the outputs.
    """
    gen = torch.Generator().manual_seed(seed)
    d, p, g = cfg.embed_dim, cfg.patch_size, cfg.pretrain_grid
    hidden = int(d * cfg.mlp_ratio)

    def rand(*shape, std=0.1, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    w = {
        "patch_embed.proj.weight": rand(d, 3, p, p, std=(3 * p * p) ** -0.5),
        "patch_embed.proj.bias": rand(d),
        "pos_embed": rand(1, 1 + g * g, d, std=0.5),
    }
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        w[b + "norm1.weight"], w[b + "norm1.bias"] = rand(d, mean=1.0), rand(d, std=0.3)
        w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"] = rand(3 * d, d, std=d**-0.5), rand(3 * d)
        w[b + "attn.proj.weight"], w[b + "attn.proj.bias"] = rand(d, d, std=d**-0.5), rand(d)
        w[b + "norm2.weight"], w[b + "norm2.bias"] = rand(d, mean=1.0), rand(d, std=0.3)
        w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"] = rand(hidden, d, std=d**-0.5), rand(hidden)
        w[b + "mlp.fc2.weight"] = rand(d, hidden, std=hidden**-0.5)
        w[b + "mlp.fc2.bias"] = rand(d)
        if layer_scale:
            w[b + "ls1.gamma"], w[b + "ls2.gamma"] = rand(d, mean=0.5), rand(d, mean=0.5)
    return w


def reference_features(w: dict, images: torch.Tensor, cfg, layers) -> list[torch.Tensor]:
    """MRI-CORE's forward as plain functional torch over `random_mricore_weights` tensors."""
    d, heads, win, eps = cfg.embed_dim, cfg.num_heads, cfg.window_size, cfg.layer_norm_eps
    x = F.conv2d(
        images, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=cfg.patch_size
    )
    b, _, h, wd = x.shape
    g = math.isqrt(w["pos_embed"].shape[1] - 1)
    pos = w["pos_embed"][0, 1:].T.reshape(1, d, g, g)  # drop CLS; row-major grid
    if (g, g) != (h, wd):
        pos = F.interpolate(pos, size=(h, wd), mode="bilinear", align_corners=False)
    x = (x + pos).permute(0, 2, 3, 1)  # [B, H, W, D]

    def attention(t, p):  # t: [n, L, D]
        n, length, _ = t.shape
        qkv = F.linear(t, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
        q, k, v = (
            u.reshape(n, length, heads, d // heads).transpose(1, 2) for u in qkv.split(d, -1)
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(n, length, d)
        return F.linear(out, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])

    pooled = {}
    for i in range(max(layers) + 1):
        p = f"blocks.{i}."

        def norm1(t, p=p):
            return F.layer_norm(t, (d,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps)

        if i in cfg.global_attn_blocks:
            mixed = attention(norm1(x.reshape(b, h * wd, d)), p).reshape(b, h, wd, d)
        else:  # zero-pad to whole windows BEFORE norm1, attend per window, crop
            hp, wp = -(-h // win) * win, -(-wd // win) * win
            canvas = x.new_zeros(b, hp, wp, d)
            canvas[:, :h, :wd] = x
            mixed = torch.zeros_like(canvas)
            for r in range(0, hp, win):
                for c in range(0, wp, win):
                    tile = canvas[:, r : r + win, c : c + win].reshape(b, win * win, d)
                    out = attention(norm1(tile), p)
                    mixed[:, r : r + win, c : c + win] = out.reshape(b, win, win, d)
            mixed = mixed[:, :h, :wd]
        x = x + w.get(p + "ls1.gamma", 1.0) * mixed
        y = F.layer_norm(x, (d,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
        y = F.gelu(F.linear(y, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]))
        y = F.linear(y, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        x = x + w.get(p + "ls2.gamma", 1.0) * y
        pooled[i] = x.mean(dim=(1, 2))
    return [pooled[i] for i in layers]


@pytest.fixture
def mricore_weights():
    """random_mricore_weights(cfg, seed=0, layer_scale=False) -> {MRI-CORE name: tensor}."""
    return random_mricore_weights


@pytest.fixture
def mricore_reference():
    """reference_features(weights, images, cfg, layers) -> [B, D] per layer."""
    return reference_features
