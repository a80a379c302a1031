"""MRI-CORE checkpoints in every stored form load exactly; anything else fails loudly."""

from __future__ import annotations

import itertools
import os
import pathlib

import pytest
import torch
from MemorizationIndexLib.encoding.checkpoint import encoder_name, load_mricore_state_dict
from MemorizationIndexLib.encoding.encoder import build_network, sha256_file
from MemorizationIndexLib.encoding.vit import EncoderConfig
from MemorizationIndexLib.errors import CheckpointError

# Patch 4 on a 6x6 pretrain grid, 24 px in: window 4 pads the grid to 8 (four windows).
TINY = EncoderConfig(
    embed_dim=32,
    depth=4,
    num_heads=2,
    patch_size=4,
    window_size=4,
    global_attn_blocks=(1, 3),
    pretrain_grid=6,
)
TINY_SIZE = 24
LAYERS = (0, 2, 3)
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is many times faster than two fighting over a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n=2, size=TINY_SIZE, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def stored_form(weights, *, prefix=True, chunks=0, extras=True, depth=TINY.depth):
    """MRI-CORE names as a checkpoint stores them: 'backbone.', DINOv2 block chunks, heads."""
    out = {}
    per_chunk = depth // chunks if chunks else 0
    for key, value in weights.items():
        if chunks and key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // per_chunk}.{key[len('blocks.') :]}"
        out[("backbone." if prefix else "") + key] = value
    if extras:
        d = weights["patch_embed.proj.weight"].shape[0]
        out.update(
            {
                "dino_head.mlp.0.weight": torch.randn(64, d),
                "dino_head.last_layer.weight_g": torch.randn(100, 1),
                "ibot_head.mlp.0.weight": torch.randn(64, d),
                ("backbone." if prefix else "") + "cls_token": torch.randn(1, 1, d),
                ("backbone." if prefix else "") + "mask_token": torch.randn(1, d),
                ("backbone." if prefix else "") + "register_tokens": torch.randn(1, 4, d),
                ("backbone." if prefix else "") + "norm.weight": torch.randn(d),
                ("backbone." if prefix else "") + "norm.bias": torch.randn(d),
            }
        )
    return out


def save(tmp_path, obj, name="mricore.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def assert_matches_reference(model, weights, reference, cfg=TINY, size=TINY_SIZE, layers=LAYERS):
    x = images(size=size)
    with torch.no_grad():
        got = model(x)
        want = reference(weights, x, cfg, layers)
    assert len(got) == len(layers)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (x.shape[0], cfg.embed_dim)
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


FORMS = list(
    itertools.product(
        ["teacher", "student", "model", "bare"],  # container
        [True, False],  # "backbone." prefix
        [0, 2],  # block chunks (0: "blocks.3.", 2: "blocks.1.3.")
        [True, False],  # LayerScale
    )
)


@pytest.mark.parametrize(("container", "prefix", "chunks", "layer_scale"), FORMS)
def test_every_stored_form_reproduces_the_reference(
    tmp_path, mricore_weights, mricore_reference, container, prefix, chunks, layer_scale
):
    weights = mricore_weights(TINY, seed=3, layer_scale=layer_scale)
    state = stored_form(weights, prefix=prefix, chunks=chunks, extras=container != "bare")
    obj = state if container == "bare" else {container: state, "iteration": 1000}
    path = save(tmp_path, obj)

    model, info = build_network(path, image_size=TINY_SIZE, layers=LAYERS, config=TINY)

    assert info.trained and info.checkpoint == os.path.abspath(path)
    assert info.checkpoint_sha256 == sha256_file(path)
    assert info.config["layer_scale"] is layer_scale
    assert model.config.layer_scale is layer_scale
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert_matches_reference(model, weights, mricore_reference)


def test_bare_dict_with_the_heads_and_extras_loads(tmp_path, mricore_weights, mricore_reference):
    weights = mricore_weights(TINY, seed=4)
    path = save(tmp_path, stored_form(weights, prefix=True, chunks=2, extras=True))
    model, _ = build_network(path, image_size=TINY_SIZE, layers=LAYERS, config=TINY)
    assert_matches_reference(model, weights, mricore_reference)


def test_teacher_is_preferred_over_student(tmp_path, mricore_weights, mricore_reference):
    teacher, student = mricore_weights(TINY, seed=5), mricore_weights(TINY, seed=6)
    path = save(tmp_path, {"student": stored_form(student), "teacher": stored_form(teacher)})
    model, _ = build_network(path, image_size=TINY_SIZE, layers=LAYERS, config=TINY)
    assert_matches_reference(model, teacher, mricore_reference)


def test_full_training_state_under_model_uses_the_teacher(
    tmp_path, mricore_weights, mricore_reference
):
    """DINOv2's training checkpoint: {"model": {"student.backbone.*", "teacher.backbone.*"}}."""
    teacher, student = mricore_weights(TINY, seed=7), mricore_weights(TINY, seed=8)
    state = {f"student.{k}": v for k, v in stored_form(student).items()}
    state.update({f"teacher.{k}": v for k, v in stored_form(teacher).items()})
    path = save(tmp_path, {"model": state, "optimizer": {"lr": 0.1}})
    model, _ = build_network(path, image_size=TINY_SIZE, layers=LAYERS, config=TINY)
    assert_matches_reference(model, teacher, mricore_reference)


def test_half_precision_checkpoint_loads_as_float32(tmp_path, mricore_weights, mricore_reference):
    weights = {k: v.half() for k, v in mricore_weights(TINY, seed=9).items()}
    path = save(tmp_path, {"teacher": stored_form(weights)})
    model, _ = build_network(path, image_size=TINY_SIZE, layers=LAYERS, config=TINY)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_matches_reference(model, {k: v.float() for k, v in weights.items()}, mricore_reference)


def test_pos_embed_becomes_the_row_major_grid(tmp_path, mricore_weights):
    weights = mricore_weights(TINY, seed=10)
    path = save(tmp_path, {"teacher": stored_form(weights)})
    state, config = load_mricore_state_dict(path, TINY)
    g, d = TINY.pretrain_grid, TINY.embed_dim
    assert state["pos_embed"].shape == (1, g, g, d)
    # grid[r, c] is the token r * G + c of the stored sequence (after the CLS entry)
    assert torch.equal(state["pos_embed"][0, 2, 5], weights["pos_embed"][0, 1 + 2 * g + 5])
    assert config == TINY


def test_encoder_name_mapping():
    assert encoder_name("backbone.blocks.0.3.norm1.weight") == "blocks.3.norm1.weight"
    assert encoder_name("backbone.blocks.3.norm1.weight") == "blocks.3.norm1.weight"
    assert encoder_name("blocks.2.11.mlp.fc1.bias") == "blocks.11.mlp.lin1.bias"
    assert encoder_name("backbone.blocks.7.mlp.fc2.weight") == "blocks.7.mlp.lin2.weight"
    assert encoder_name("backbone.blocks.7.ls1.gamma") == "blocks.7.ls1.gamma"
    assert encoder_name("backbone.pos_embed") == "pos_embed"
    for dropped in (
        "dino_head.last_layer.weight_g",
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.register_tokens",
        "backbone.norm.weight",
        "norm.bias",
    ):
        assert encoder_name(dropped) is None


def test_real_vit_b_teacher_checkpoint(tmp_path, mricore_weights, mricore_reference):
    """The real architecture: a full 197-entry pos_embed, chunked blocks, heads present."""
    torch.set_num_threads(THREADS)  # real work: use every core (one_thread restores 1 after)
    cfg = EncoderConfig.vit_b()
    weights = mricore_weights(cfg, seed=11)
    assert weights["pos_embed"].shape == (1, 197, 768)
    path = save(tmp_path, {"teacher": stored_form(weights, chunks=4, depth=12)})

    state, config = load_mricore_state_dict(path)
    model, info = build_network(path)  # ViT-B, 224 px, blocks 3, 7, 11 by default

    assert config == cfg
    assert set(state) == set(model.state_dict())  # no encoder tensor is missing
    assert info.name == "MRI-CORE ViT-B/16" and info.trained
    assert info.layers == (3, 7, 11) and info.image_size == 224
    x = images(n=2, size=224, seed=2)
    with torch.no_grad():
        got = model(x)
        want = mricore_reference(weights, x, cfg, (3, 7, 11))
    for g, w in zip(got, want, strict=True):
        assert g.shape == (2, 768)
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


# ---- failures: each a CheckpointError that names the file ---------------------------------


def load_error(path, config=TINY) -> str:
    with pytest.raises(CheckpointError) as caught:
        build_network(path, image_size=TINY_SIZE, layers=LAYERS, config=config)
    message = str(caught.value)
    assert pathlib.Path(path).name in message
    return message


def test_missing_tensors_are_all_listed(tmp_path, mricore_weights):
    state = stored_form(mricore_weights(TINY))
    del state["backbone.blocks.1.attn.qkv.bias"]
    del state["backbone.blocks.2.mlp.fc2.weight"]
    message = load_error(save(tmp_path, {"teacher": state}))
    assert "blocks.1.attn.qkv.bias" in message
    assert "blocks.2.mlp.lin2.weight" in message
    assert "2 encoder tensor(s) missing" in message


def test_missing_pos_embed_is_never_ignored(tmp_path, mricore_weights):
    """Upstream stores it under a key its model does not have and loads with strict=False."""
    state = stored_form(mricore_weights(TINY))
    state["backbone.pos_embedding"] = state.pop("backbone.pos_embed")
    message = load_error(save(tmp_path, {"teacher": state}))
    assert "1 encoder tensor(s) missing: pos_embed" in message
    assert "1 unexpected tensor(s): backbone.pos_embedding" in message


def test_unexpected_tensors_are_all_listed(tmp_path, mricore_weights):
    state = stored_form(mricore_weights(TINY))
    state["backbone.blocks.0.attn.rel_pos_h"] = torch.zeros(7, 16)
    state["backbone.head.weight"] = torch.zeros(10, 32)
    message = load_error(save(tmp_path, {"teacher": state}))
    assert "backbone.blocks.0.attn.rel_pos_h" in message
    assert "backbone.head.weight" in message
    assert "2 unexpected" in message


def test_wrong_shapes_are_listed(tmp_path, mricore_weights):
    state = stored_form(mricore_weights(TINY))
    state["backbone.blocks.0.mlp.fc1.weight"] = torch.zeros(100, 32)
    state["backbone.pos_embed"] = torch.zeros(1, 1 + 8 * 8, 32)  # an 8x8 grid, not 6x6
    message = load_error(save(tmp_path, {"teacher": state}))
    assert "backbone.blocks.0.mlp.fc1.weight is [100, 32], expected [128, 32]" in message
    assert "backbone.pos_embed is [1, 65, 32], expected [1, 37, 32]" in message


def test_other_architectures_are_refused(tmp_path, mricore_weights):
    deeper = EncoderConfig(**{**TINY.to_dict(), "depth": 5})
    message = load_error(save(tmp_path, {"teacher": stored_form(mricore_weights(deeper))}))
    assert "5 blocks (expected 4)" in message
    wider = EncoderConfig(**{**TINY.to_dict(), "embed_dim": 48})
    message = load_error(save(tmp_path, {"teacher": stored_form(mricore_weights(wider))}, "w.pt"))
    assert "embedding width 48 (expected 32)" in message


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nowhere.pth")
    assert "does not exist" in message


def test_folder_instead_of_file(tmp_path):
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    assert "folder" in load_error(folder)


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b"", b"PK\x03\x04broken zip"])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    assert "could not be read as a PyTorch checkpoint" in load_error(path)


def test_no_weights_inside(tmp_path):
    assert "no weight tensors" in load_error(save(tmp_path, {"teacher": {}, "epoch": 3}))
    assert "not a dictionary" in load_error(save(tmp_path, torch.zeros(3), "tensor.pt"))


class Planted:
    """Unpickling this would create a file: weights_only must refuse it before it runs."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_objects_are_refused_without_running(tmp_path, mricore_weights):
    marker = tmp_path / "code-ran"
    state = stored_form(mricore_weights(TINY))
    path = save(tmp_path, {"teacher": state, "args": Planted(marker)}, "unsafe.pth")
    message = load_error(path)
    assert "weights_only" in message and "refuses" in message
    assert not marker.exists()
