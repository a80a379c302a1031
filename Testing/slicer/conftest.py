"""Fixtures of the Slicer-side tests: a real MRML scene (slicer-core), generated scans, a bank.

slicer-core gives the MRML classes, the application logic and the slice logics Slicer's
views run on, but no Qt: the glue under test takes the scene as an argument. One small
bank (a small untrained encoder at 32 px, one query flip) is built once per session.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# The module folder holds the MemorizationIndexSlicer package (Slicer puts the folder on
# sys.path itself).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MemorizationIndex"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from MemorizationIndexSlicer.headless import createSceneWithSliceViews  # noqa: E402
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic  # noqa: E402
from MemorizationIndexSlicer.process import RUNNING  # noqa: E402
from slicer_test_helpers import (  # noqa: E402
    SHAPE,
    SLICE_VIEWS,
    SPACING,
    TrainingSet,
    random_scan,
    tiny_bank_settings,
    tiny_encoder_config,
)


@pytest.fixture(scope="session")
def training_set(tmp_path_factory) -> TrainingSet:
    """Three training NIfTI files, stored in different orientations and places.

    Volume 1 is stored with its first axis running right-to-left (direction -x) and the
    others shifted, so placing a match needs the real canonical geometry, not identity.
    """
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    canonical, paths = [], []
    for i in range(3):
        voxels = random_scan(rng)
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing(SPACING)
        image.SetOrigin((10.0 * i, -5.0 * i, 3.0 * i))
        if i == 1:  # store mirrored: same physical image, x axis reversed in the file
            stored = sitk.GetImageFromArray(voxels[:, :, ::-1].copy())
            stored.SetSpacing(SPACING)
            stored.SetOrigin(image.TransformIndexToPhysicalPoint((SHAPE[2] - 1, 0, 0)))
            stored.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
            image = stored
        path = folder / f"train-{i}.nii.gz"
        sitk.WriteImage(image, str(path))
        canonical.append(voxels)
        paths.append(str(path))
    return TrainingSet(folder, canonical, paths)


@pytest.fixture(scope="session")
def bank_build(training_set, tmp_path_factory):
    """A bank built once through the logic, as the panel builds one: started in a child
    process and polled until done. Keeps what the polling saw, for the child-process tests."""
    out = tmp_path_factory.mktemp("bank") / "bank"
    stages = []
    job = MemorizationIndexSceneLogic().startBuildBank(
        training_set.folder,
        out,
        settings=tiny_bank_settings(),
        encoderConfig=tiny_encoder_config(),
        device="cpu",
        onProgress=lambda stage, done, total: stages.append((stage, done, total)),
    )
    polls = 0
    while job.poll() == RUNNING:
        polls += 1
        time.sleep(0.05)
    if job.exception is not None:
        raise job.exception
    return SimpleNamespace(folder=out, job=job, stages=stages, polls=polls)


@pytest.fixture(scope="session")
def bank_folder(bank_build):
    return bank_build.folder


@pytest.fixture()
def scene_and_app():
    """A scene set up as Slicer's application sets it up, with Red and Yellow slice logics."""
    scene, app = createSceneWithSliceViews(SLICE_VIEWS)
    yield scene, app
    scene.Clear(1)


@pytest.fixture()
def logic(scene_and_app, bank_folder):
    scene, app = scene_and_app
    logic = MemorizationIndexSceneLogic(scene, app)
    logic.loadBank(bank_folder)
    return logic
