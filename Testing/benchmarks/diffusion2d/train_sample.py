"""Train a small 2D denoising diffusion model on the cohort's training slices and sample it.

A real memorising model for the benchmark (issue 20.7): a DDPM (Ho et al. 2020; epsilon
prediction, 1000 linear-beta steps) with a small UNet written here in plain torch (4x4
pixel-unshuffle, three levels, self-attention at the coarsest, about 2 M parameters),
trained on the CPU on the training slices, of which a handful are repeated many times in
the training set (repeated images are the ones diffusion models memorise: Carlini et al.
2023, Somepalli et al. 2023). Sampling is ancestral DDPM over 250 respaced steps (Nichol and
Dhariwal 2021) from fixed seeds; see Settings.sampler for why not DDIM.

Outputs (the two formats the engine reads from generative models):
``samples/fake_N.png`` (RGB of grey, as medfusion writes) and ``samples_NxHxWxC.npz``
(key arr_0, uint8, as guided-diffusion's image_sample.py writes).

Everything is cached, in two levels: the model under a key made of the training settings
and the SHA-256 of every training file (names and bytes), ``<cache>/<train key>/`` (model.pt:
EMA weights; train.json: settings, hashes, training time, the loss curve), and the samples
under a key of all settings, ``<cache>/<train key>/samples-<key>/`` (settings.json: settings,
seeds, the samples' hash, timings; the npz; samples/). A second call with the same settings
and training files reuses the samples; new sampling settings reuse the model. The cache is
~/.cache/memorization-index/diffusion2d (XDG_CACHE_HOME respected) unless --cache says.

    python Testing/benchmarks/diffusion2d/train_sample.py --cohort DIR [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

VERSION = 1  # bump when the model, training or sampling code changes what it produces


@dataclass(frozen=True)
class Settings:
    """Everything that decides the samples (part of the cache key)."""

    image_size: int = 64
    # pixel-unshuffle: the UNet runs on 16-channel 16x16 images (4x4 patches), which is what
    # makes CPU training affordable (about 0.35 s a step of 32 on one busy core)
    patch: int = 4
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    attention_at: int = 4  # self-attention at this resolution (of the unshuffled grid)
    timesteps: int = 1000
    repeats: int = 50  # copies of each repeated image in the training set
    steps: int = 2000  # optimiser steps
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    n_samples: int = 300
    # Ancestral DDPM over `sample_steps` evenly respaced steps, x0 clipped to [-1, 1]. DDIM
    # (eta 0) was tried first with this model and failed: its deterministic path follows the
    # model's epsilon at high noise, where x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) magnifies
    # the error about 160x at t = 999, and every DDIM sample ended as noise (best SSIM 0.03).
    sampler: str = "ddpm"
    sample_steps: int = 250
    sample_batch: int = 50
    seed: int = 0
    # One torch thread: on a shared 2-core machine two threads oversubscribe the cores and
    # ran 2-3x slower per step (measured: 0.85 s against 0.34 s median under load).
    threads: int = 1
    version: int = VERSION

    def train_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in SAMPLE_FIELDS}

    def sample_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in SAMPLE_FIELDS + ("seed", "version")}

    def train_key(self, data_hash: str) -> str:
        """The model's cache key: training settings and training data."""
        return _hash({"settings": self.train_settings(), "data": data_hash})

    def key(self, data_hash: str) -> str:
        """The samples' cache key: every setting and the training data."""
        return _hash({"settings": asdict(self), "data": data_hash})


SAMPLE_FIELDS = ("n_samples", "sampler", "sample_steps", "sample_batch")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


TINY = Settings(
    patch=2,
    base_channels=8,
    channel_mults=(1, 2),
    attention_at=0,
    timesteps=100,
    repeats=20,
    steps=30,
    batch_size=8,
    n_samples=6,
    sample_steps=5,
    sample_batch=6,
    warmup=5,
)


# ---- the network ------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(temb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Encoder-decoder with skip connections: one ResBlock per level each way."""

    def __init__(self, s: Settings):
        super().__init__()
        ch = s.base_channels
        tdim = 4 * ch
        self.ch = ch
        self.temb = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.patch = s.patch
        self.inp = nn.Conv2d(s.patch**2, ch, 3, padding=1)
        chans = [ch * m for m in s.channel_mults]
        self.down, self.downsample, self.down_attn = nn.ModuleList(), nn.ModuleList(), []
        res, cin = s.image_size // s.patch, ch
        attn = {}
        for i, c in enumerate(chans):
            self.down.append(ResBlock(cin, c, tdim))
            attn[f"d{i}"] = Attention(c) if res == s.attention_at else nn.Identity()
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, 2, 1))
            res = res if last else res // 2
            cin = c
        self.mid1 = ResBlock(cin, cin, tdim)
        self.mid_attn = Attention(cin) if s.attention_at else nn.Identity()
        self.mid2 = ResBlock(cin, cin, tdim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            self.up.append(ResBlock(cin + c, c, tdim))
            attn[f"u{i}"] = Attention(c) if res == s.attention_at else nn.Identity()
            first = i == 0
            self.upsample.append(
                nn.Identity() if first else nn.Conv2d(c, chans[i - 1], 3, padding=1)
            )
            res = res if first else res * 2
            cin = c if first else chans[i - 1]
        self.attn = nn.ModuleDict(attn)
        self.out = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, s.patch**2, 3, padding=1))
        self.n_levels = len(chans)

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.ch))
        h = self.inp(F.pixel_unshuffle(x, self.patch))
        skips = []
        for i in range(self.n_levels):
            h = self.attn[f"d{i}"](self.down[i](h, temb))
            skips.append(h)
            h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for j, i in enumerate(reversed(range(self.n_levels))):
            h = self.attn[f"u{i}"](self.up[j](torch.cat([h, skips[i]], dim=1), temb))
            if i > 0:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return F.pixel_shuffle(self.out(h), self.patch)


# ---- diffusion ----------------------------------------------------------------------------


def alphas_cumprod(timesteps: int) -> torch.Tensor:
    betas = torch.linspace(1e-4 * 1000 / timesteps, 0.02 * 1000 / timesteps, timesteps)
    return torch.cumprod(1.0 - betas.double(), dim=0).float()


def training_list(files: list[Path], repeated: list[str], repeats: int) -> list[int]:
    """Indices into `files`: every file once, each repeated one `repeats` times in all."""
    names = [f.name for f in files]
    missing = [r for r in repeated if r not in names]
    if missing:
        raise ValueError(f"repeated images not among the training files: {missing}")
    order = list(range(len(files)))
    for r in repeated:
        order += [names.index(r)] * (repeats - 1)
    return order


def load_images(files: list[Path]) -> torch.Tensor:
    from Testing.benchmarks.diffusion2d.cohort import read_grey

    arr = np.stack([read_grey(f) for f in files]).astype(np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0)[:, None]


def train(
    settings: Settings, images: torch.Tensor, order: list[int], log=print
) -> tuple[UNet, dict]:
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = UNet(settings)
    ema = UNet(settings)
    ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    abar = alphas_cumprod(settings.timesteps)
    order_t = torch.tensor(order)
    losses, t0 = [], time.perf_counter()
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / settings.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * step / settings.steps)) * 0.9 + 0.1
        for g in opt.param_groups:
            g["lr"] = lr
        pick = order_t[torch.randint(len(order_t), (settings.batch_size,), generator=gen)]
        x0 = images[pick]
        t = torch.randint(settings.timesteps, (settings.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = settings.ema_decay if step >= settings.warmup else 0.0
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        losses.append(loss.item())
        if (step + 1) % max(1, settings.steps // 20) == 0:
            el = time.perf_counter() - t0
            log(
                f"step {step + 1}/{settings.steps} loss {np.mean(losses[-50:]):.4f} "
                f"({el:.0f} s, {el / (step + 1):.3f} s/step)"
            )
    info = {
        "train_seconds": time.perf_counter() - t0,
        "loss_every_50": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return ema.eval(), info


@torch.no_grad()
def sample(model: UNet, settings: Settings, n: int, seed: int) -> np.ndarray:
    """n samples from fixed seeds as (n, H, W) uint8: ancestral DDPM (or DDIM, eta 0) over
    `sample_steps` evenly respaced steps (Nichol and Dhariwal 2021), x0 clipped to [-1, 1]."""
    abar = alphas_cumprod(settings.timesteps)
    ts = np.linspace(settings.timesteps - 1, 0, settings.sample_steps).round().astype(int)
    gen = torch.Generator().manual_seed(seed)
    size = settings.image_size
    x = torch.randn((n, 1, size, size), generator=gen)
    for i, t in enumerate(ts):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        eps = model(x, torch.full((n,), int(t), dtype=torch.long))
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        if settings.sampler == "ddim":
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            continue
        if settings.sampler != "ddpm":
            raise ValueError(f"sampler must be ddpm or ddim (got {settings.sampler!r})")
        beta = 1 - a / a_prev  # the respaced step's beta
        mean = (a_prev.sqrt() * beta / (1 - a)) * x0 + (
            (1 - beta).sqrt() * (1 - a_prev) / (1 - a)
        ) * x
        if i + 1 < len(ts):
            var = beta * (1 - a_prev) / (1 - a)
            x = mean + var.sqrt() * torch.randn(x.shape, generator=gen)
        else:
            x = mean
    return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


# ---- files and the cache ------------------------------------------------------------------


def data_hash(files: list[Path], repeated: list[str]) -> tuple[str, dict]:
    per_file = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    blob = json.dumps({"files": per_file, "repeated": sorted(repeated)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest(), per_file


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memorization-index" / "diffusion2d"


def npz_name(samples: np.ndarray) -> str:
    n, h, w, c = samples.shape
    return f"samples_{n}x{h}x{w}x{c}.npz"


def write_samples(folder: Path, grey: np.ndarray) -> tuple[Path, Path]:
    """samples/fake_N.png (RGB of grey) and samples_NxHxWxC.npz (arr_0, uint8 NHWC)."""
    rgb = np.repeat(grey[..., None], 3, axis=3)
    png_dir = folder / "samples"
    png_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(rgb):
        Image.fromarray(im).save(png_dir / f"fake_{i}.png")
    npz = folder / npz_name(rgb)
    np.savez(npz, arr_0=rgb)
    return png_dir, npz


@dataclass
class Samples:
    folder: Path  # the cache entry
    png_dir: Path
    npz: Path
    images: np.ndarray  # (N, H, W) uint8
    meta: dict
    reused: bool


def _complete(entry: Path) -> dict | None:
    meta_path = entry / "settings.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    npz = entry / meta.get("npz", "")
    if not npz.is_file() or len(list((entry / "samples").glob("fake_*.png"))) != meta.get(
        "n_samples"
    ):
        return None
    return meta


def _atomic_dir(entry: Path) -> Path:
    tmp = entry.with_name(entry.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: Path, entry: Path) -> None:
    if entry.exists():  # a stale, incomplete entry
        shutil.rmtree(entry)
    tmp.rename(entry)


def trained_model(
    train_files: list[Path], repeated: list[str], settings: Settings, cache: Path, log=print
) -> tuple[UNet, Path, dict, bool]:
    """The model for these training settings and files: <cache>/<train key>/model.pt,
    trained on a miss. Returns (model, its folder, train.json's content, reused)."""
    dhash, per_file = data_hash(train_files, repeated)
    entry = cache / settings.train_key(dhash)
    meta_path = entry / "train.json"
    model = UNet(settings)
    if meta_path.is_file() and (entry / "model.pt").is_file():
        model.load_state_dict(torch.load(entry / "model.pt", weights_only=True))
        log(f"diffusion2d: reusing the trained model {entry}")
        return model.eval(), entry, json.loads(meta_path.read_text()), True
    images = load_images(train_files)
    order = training_list(train_files, repeated, settings.repeats)
    tmp = _atomic_dir(entry)
    log(
        f"diffusion2d: training on {len(train_files)} slices ({len(order)} in the training "
        f"set: {len(repeated)} repeated x {settings.repeats}), {settings.steps} steps -> {entry}"
    )
    model, info = train(settings, images, order, log)
    torch.save(model.state_dict(), tmp / "model.pt")
    meta = {
        "train_key": entry.name,
        "settings": settings.train_settings(),
        "training_files": per_file,
        "repeated": list(repeated),
        "training_set_size": len(order),
        "data_hash": dhash,
        "torch": torch.__version__,
        **info,
    }
    (tmp / "train.json").write_text(json.dumps(meta, indent=2))
    _commit_dir(tmp, entry)
    log(f"diffusion2d: trained in {info['train_seconds']:.0f} s")
    return model, entry, meta, False


def train_and_sample(
    train_files: list[Path],
    repeated: list[str],
    settings: Settings = Settings(),
    cache: str | Path | None = None,
    log=print,
) -> Samples:
    """The cached samples for these settings and training files.

    Layout: <cache>/<train key>/model.pt and train.json (the model: training settings and
    data), <cache>/<train key>/samples-<key>/ (settings.json, samples/fake_N.png, the npz).
    Trains only when the model is missing, samples only when the samples are."""
    train_files = sorted(Path(f) for f in train_files)
    cache = Path(cache) if cache is not None else default_cache()
    dhash, _ = data_hash(train_files, repeated)
    entry = cache / settings.train_key(dhash) / f"samples-{settings.key(dhash)}"
    meta = _complete(entry)
    if meta is not None:
        images = np.load(entry / meta["npz"])["arr_0"][..., 0]
        log(f"diffusion2d: reusing cached samples {entry}")
        return Samples(entry, entry / "samples", entry / meta["npz"], images, meta, True)
    torch.set_num_threads(settings.threads)
    model, model_dir, train_meta, _ = trained_model(train_files, repeated, settings, cache, log)
    tmp = _atomic_dir(entry)
    t0 = time.perf_counter()
    seeds = [
        settings.seed * 1000 + 1 + b
        for b in range(math.ceil(settings.n_samples / settings.sample_batch))
    ]
    chunks = []
    for b, start in enumerate(range(0, settings.n_samples, settings.sample_batch)):
        n = min(settings.sample_batch, settings.n_samples - start)
        chunks.append(sample(model, settings, n, seed=seeds[b]))
    grey = np.concatenate(chunks)
    sample_seconds = time.perf_counter() - t0
    _, npz = write_samples(tmp, grey)
    meta = {
        "key": entry.name,
        "settings": asdict(settings),
        "model": str(model_dir / "model.pt"),
        "npz": npz.name,
        "n_samples": int(len(grey)),
        "samples_sha256": hashlib.sha256(grey.tobytes()).hexdigest(),
        "sampling_seeds": seeds,
        "sample_seconds": sample_seconds,
        **{k: train_meta.get(k) for k in ("train_seconds", "training_set_size", "parameters")},
        "repeated": list(repeated),
        "data_hash": dhash,
        "torch": torch.__version__,
    }
    (tmp / "settings.json").write_text(json.dumps(meta, indent=2))
    _commit_dir(tmp, entry)
    log(f"diffusion2d: sampled {len(grey)} in {sample_seconds:.0f} s -> {entry}")
    return Samples(entry, entry / "samples", entry / npz.name, grey, meta, False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cohort", default="bench-output/diffusion2d/cohort", help="cohort folder")
    p.add_argument("--cache", help=f"cache folder (default {default_cache()})")
    p.add_argument("--steps", type=int, default=Settings.steps)
    p.add_argument("--samples", type=int, default=Settings.n_samples)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from Testing.benchmarks.diffusion2d.cohort import load_cohort, make_cohort

    root = Path(args.cohort)
    cohort = load_cohort(root) if (root / "cohort.json").is_file() else make_cohort(root)
    settings = Settings(steps=args.steps, n_samples=args.samples, seed=args.seed)
    s = train_and_sample(cohort.train_files(), cohort.repeated, settings, args.cache)
    print(f"{len(s.images)} samples: {s.png_dir} and {s.npz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
