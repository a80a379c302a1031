"""Shared fixtures: a real-MRI example cohort and a small encoder for plumbing tests."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def tiny_encoder_config():
    """A 4-block ViT in MRI-CORE's layout: the same code paths at a fraction of the cost."""
    from MemorizationIndexLib.encoding.vit import EncoderConfig

    return EncoderConfig.tiny()


TINY_LAYERS = (1, 2, 3)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """6 training subjects, 3 novel ones and 4 augmented copies, 3 mm MNI152-based NIfTI."""
    from MemorizationIndexLib.demo.cohort import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    members = make_cohort(
        root,
        n_train=6,
        n_novel=3,
        copies=("noise-0.02", "hflip", "intensity", "rotate-10"),
        spacing_mm=3.0,
    )
    return root, members


@pytest.fixture(scope="session")
def small_bank(small_cohort, tmp_path_factory):
    from MemorizationIndexLib.bank.build import build_bank
    from MemorizationIndexLib.bank.settings import BankSettings

    root, _ = small_cohort
    out = tmp_path_factory.mktemp("bank") / "bank"
    settings = BankSettings(image_size=64, layers=TINY_LAYERS, stride=2, calibration_folds=3)
    encoder = settings.encoder(config=tiny_encoder_config(), device="cpu")
    bank = build_bank(root / "train", out, settings, encoder)
    return bank, out
