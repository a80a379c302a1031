"""Shared helpers of the Slicer-side tests: generated scans and scene contents.

Kept out of conftest.py so test modules can import them by a unique module name.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
MODULE_DIR = Path(__file__).resolve().parents[2] / "MemorizationIndex"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import slicer  # noqa: E402  (slicer-core)
import slicer.util  # noqa: E402

# Geometry of the generated scans: [z, y, x] voxels, spacing (x, y, z) mm.
SHAPE = (12, 40, 48)
SPACING = (1.0, 1.2, 2.0)
SLICE_VIEWS = ("Red", "Yellow")


TINY_LAYERS = (1, 2, 3)


def tiny_bank_settings():
    """Fast but complete in 2D: 32 px slices, three blocks of a small encoder, query flip
    hflip, stages 1 and 2. Stage 3 is off: these 12-slice toy volumes are 24 mm thin, too
    thin to register in 3D; its overlay is tested with a pose of known truth
    (test_volume_placement.py) and the stage itself in Testing/engine/test_volume_stage.py."""
    from MemorizationIndexLib.bank.settings import BankSettings

    return BankSettings(
        image_size=32,
        layers=TINY_LAYERS,
        flips=("none", "hflip"),
        null_max_slices=100,
        volume_stage=False,
    )


def tiny_encoder_config():
    """A 4-block ViT in MRI-CORE's layout (the engine tests' small encoder): the glue does
    not depend on the encoder's size, and whitening 64 dimensions instead of 768 keeps the
    Slicer tests fast. MRI-CORE's ViT-B itself is covered by the engine tests."""
    from MemorizationIndexLib.encoding.vit import EncoderConfig

    return EncoderConfig.tiny()


def random_scan(rng) -> np.ndarray:
    """A head-like object on a zero background: smooth random texture with structure at
    every scale inside an off-centre ellipse, so no slice is symmetric."""
    texture = rng.normal(size=SHAPE).cumsum(1).cumsum(2).astype(np.float32)
    texture -= texture.min()
    texture += 0.5 * texture.max()
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    cy, cx = 0.52 * SHAPE[1], 0.45 * SHAPE[2]
    radius = 1.0 + 0.1 * np.cos(z / SHAPE[0] * np.pi)
    inside = ((y - cy) / (0.42 * SHAPE[1])) ** 2 + ((x - cx) / (0.38 * SHAPE[2])) ** 2 <= radius
    return np.where(inside, texture, 0.0).astype(np.float32)


@dataclass
class TrainingSet:
    folder: Path
    canonical: list  # each volume's voxels as the engine sees them (LPS, [z, y, x])
    paths: list


def add_volume(scene, voxels, name="synthetic", origin_lps=(0.0, 0.0, 0.0)):
    """A scalar volume node on an LPS-aligned grid with the scans' spacing."""
    ijk_to_ras = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    ijk_to_ras[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, voxels)
    node.CreateDefaultDisplayNodes()
    return node


def synthetic_with_copy(
    training_set, source=1, source_slice=7, target_slice=5, flip=False, seed=9, run=(-2, 4)
):
    """A novel volume with a run of training slices pasted in, as the engine displays them:
    synthetic slice target_slice + k is training slice source_slice + k for k in range(*run),
    so a copied stack (what a volume-level verdict looks for) with a known correspondence."""
    voxels = random_scan(np.random.default_rng(seed))
    for k in range(*run):
        pasted = training_set.canonical[source][source_slice + k]
        voxels[target_slice + k] = pasted[:, ::-1] if flip else pasted
    return voxels


def copied_row(result, slice_index=5, volume=None):
    """The result row of one synthetic slice."""
    return next(
        r
        for r in result.slices
        if r["slice_index"] == slice_index and (volume is None or r["volume"] == volume)
    )
