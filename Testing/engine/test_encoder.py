"""MRI-CORE's encoder: SAM-layout names, the reference forward, position grid, validation."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from MemorizationIndexLib.encoding.encoder import EncoderInfo, build_network, sha256_file
from MemorizationIndexLib.encoding.vit import EncoderConfig, MRICoreEncoder
from MemorizationIndexLib.errors import SettingsError

THREADS = torch.get_num_threads()
# ViT-B geometry (patch 16, window 14, 14x14 grid) at a tiny width and depth.
SMALL = EncoderConfig(embed_dim=32, depth=4, num_heads=2, global_attn_blocks=(1, 3))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is many times faster than two fighting over a busy CPU."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(THREADS)


def images(n=2, size=224, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_vit_b_config_is_mricore():
    cfg = EncoderConfig.vit_b()
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (768, 12, 12, 16)
    assert (cfg.mlp_ratio, cfg.window_size, cfg.layer_norm_eps) == (4.0, 14, 1e-6)
    assert cfg.global_attn_blocks == (2, 5, 8, 11) and cfg.pretrain_grid == 14
    assert not cfg.layer_scale and EncoderConfig.vit_b(layer_scale=True).layer_scale
    assert cfg.architecture_name() == "ViT-B/16"
    assert EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"embed_dim": 30, "num_heads": 4},
        {"depth": 4, "global_attn_blocks": (2, 5)},
        {"window_size": 0, "global_attn_blocks": ()},
    ],
)
def test_impossible_configs_are_refused(bad):
    with pytest.raises(SettingsError):
        EncoderConfig(**bad)


@pytest.mark.parametrize("layer_scale", [False, True])
def test_module_names_mirror_sam(layer_scale):
    cfg = EncoderConfig(**{**SMALL.to_dict(), "layer_scale": layer_scale})
    shapes = {k: tuple(v.shape) for k, v in MRICoreEncoder(cfg, layers=(3,)).state_dict().items()}
    d, h = cfg.embed_dim, cfg.mlp_dim
    want = {"patch_embed.proj.weight": (d, 3, 16, 16), "patch_embed.proj.bias": (d,)}
    want["pos_embed"] = (1, 14, 14, d)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        for name, shape in {
            "norm1": (d,),
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "norm2": (d,),
            "mlp.lin1": (h, d),
            "mlp.lin2": (d, h),
        }.items():
            want[b + name + ".weight"] = shape
            want[b + name + ".bias"] = (shape[0],)
        if layer_scale:
            want[b + "ls1.gamma"] = want[b + "ls2.gamma"] = (d,)
    assert shapes == want  # and so no SAM neck, no relative positions, no CLS token


def checkpoint_with(tmp_path, weights):
    path = tmp_path / "mricore.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in weights.items()}}, path)
    return path


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        (224, 14),  # the pretraining grid: no interpolation, one 14x14 window
        (112, 7),  # smaller grid: windows padded from 7 to 14
        (320, 20),  # larger grid, not a multiple of the window: padded to 28, four windows
    ],
)
def test_position_grid_and_windows_match_reference(
    tmp_path, mricore_weights, mricore_reference, size, grid
):
    weights = mricore_weights(SMALL, seed=2, layer_scale=True)
    layers = (3, 0, 2)
    model, info = build_network(
        checkpoint_with(tmp_path, weights), image_size=size, layers=layers, config=SMALL
    )
    assert model.position_grid().shape == (1, grid, grid, SMALL.embed_dim)
    assert info.image_size == size and info.layers == layers
    x = images(size=size)
    with torch.no_grad():
        got = model(x)
        want = mricore_reference(weights, x, SMALL, layers)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_padding_goes_through_norm1(tmp_path, mricore_weights, mricore_reference):
    """Padding before norm1 (MRI-CORE) differs from padding after it (SAM) when padded."""
    weights = mricore_weights(SMALL, seed=3)
    model, _ = build_network(
        checkpoint_with(tmp_path, weights), image_size=112, layers=(0,), config=SMALL
    )
    x = images(size=112)
    with torch.no_grad():
        mricore = model(x)[0]
        for block in model.blocks:  # zero norm1's bias: padded tokens then stay zero
            block.norm1.bias.zero_()
        sam_like = model(x)[0]
    assert not torch.allclose(mricore, sam_like, atol=1e-3)
    torch.testing.assert_close(
        mricore, mricore_reference(weights, x, SMALL, (0,))[0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("size", [230, 8, 0])
def test_image_size_must_be_a_multiple_of_the_patch(size):
    with pytest.raises(SettingsError, match=f"--image-size {size} "):
        MRICoreEncoder(SMALL, image_size=size)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((1, 4), "--layers 4:"),
        ((12,), "--layers 12:"),
        ((-1, 2), "--layers -1:"),
        ((), "at least one"),
        ((2, 2), "block 2 more than once"),
    ],
)
def test_layers_must_be_blocks_of_the_encoder(layers, message):
    with pytest.raises(SettingsError, match=message):
        build_network(None, image_size=64, layers=layers, config=SMALL)


def test_forward_stops_after_the_last_requested_block():
    model, _ = build_network(None, image_size=64, layers=(1, 0), config=SMALL)
    ran = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    with torch.no_grad():
        out = model(images(size=64))
    assert ran == [0, 1]
    assert [o.shape for o in out] == [(2, SMALL.embed_dim)] * 2
    assert not torch.equal(out[0], out[1])


def test_forward_refuses_other_input_sizes():
    model, _ = build_network(None, image_size=64, config=SMALL, layers=(0,))
    with pytest.raises(ValueError, match="64, 64"):
        model(images(size=96))


def test_untrained_encoder_is_seeded_and_says_so():
    a, info = build_network(None, image_size=64, layers=(0, 3), config=SMALL, seed=0)
    b, _ = build_network(None, image_size=64, layers=(0, 3), config=SMALL, seed=0)
    c, other = build_network(None, image_size=64, layers=(0, 3), config=SMALL, seed=1)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.pos_embed, c.pos_embed)
    assert not info.trained and info.checkpoint is None and info.checkpoint_sha256 is None
    assert "untrained" in info.name and "not MRI-CORE" in info.name and "(seed 0)" in info.name
    assert info.name != other.name  # a bank built with one seed refuses the other
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_untrained_init_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_network(None, image_size=64, config=SMALL, layers=(0,))
    assert torch.equal(torch.rand(4), expected)


def test_untrained_vit_b_features_follow_image_content():
    """The default path without a checkpoint: real ViT-B shape, features that tell images apart."""
    torch.set_num_threads(THREADS)
    model, info = build_network(None)
    assert info.name == ("untrained ViT-B/16 (seed 0) — not MRI-CORE; results are for testing only")
    x = images(n=2, size=224, seed=4)
    x[1] = x[0].flip(-1)  # same pixels, other place: mean pooling alone would not tell
    with torch.no_grad():
        first = model(x)
        again = model(x[:1])
    for layer, one in zip(first, again, strict=True):
        assert torch.isfinite(layer).all()
        torch.testing.assert_close(layer[:1], one, atol=1e-5, rtol=1e-5)
        gap = (layer[0] - layer[1]).norm() / layer[0].norm()
        assert gap > 0.05  # about 0.4 at seed 0


def test_info_round_trips_through_json(tmp_path):
    _, info = build_network(None, image_size=64, layers=(2, 0), config=SMALL, seed=7)
    d = json.loads(json.dumps(info.to_dict()))
    assert d["layers"] == [2, 0] and d["image_size"] == 64 and d["trained"] is False
    assert EncoderConfig.from_dict(d["config"]) == SMALL
    assert set(d) == {f for f in EncoderInfo.__dataclass_fields__}


def test_sha256_file_streams(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
