"""Stage 2: candidate slices aligned onto the query recover the pose and score the pixels."""

import numpy as np
import pytest
import torch
from MemorizationIndexLib.demo.cohort import load_template, make_subject
from MemorizationIndexLib.encoding.preprocessing import thumbnails
from MemorizationIndexLib.geometry import sampling_theta, warp
from MemorizationIndexLib.search.verification import Verifier, foreground_ncc


@pytest.fixture(scope="module")
def slices():
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    a = make_subject(template, 1)
    b = make_subject(template, 2)
    spacing = (3.0, 3.0)
    return thumbnails(a[20:40], spacing, 64), thumbnails(b[20:40], spacing, 64)


def posed(image: np.ndarray, flip, angle, shift, scale=1.0) -> np.ndarray:
    src = torch.from_numpy(image.astype(np.float32))[None]
    out = warp(src, sampling_theta(flip, angle, scale, shift, image.shape[-1])[None])[0]
    return out.numpy().round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "flip, angle, shift",
    [
        ("none", 0.0, (0.0, 0.0)),
        ("hflip", 10.0, (3.0, -2.0)),
        ("vflip", -13.0, (-4.0, 1.5)),
        ("hvflip", 4.0, (1.0, 1.0)),
        ("none", -17.5, (5.0, 0.0)),
    ],
)
def test_pose_of_a_transformed_copy_is_recovered(slices, flip, angle, shift):
    train, _ = slices
    query = posed(train[10], flip, angle, shift)[None]
    candidates = np.array([[9, 10, 11, 3]])
    result = Verifier().align(query, train, candidates)
    assert result.candidate[0] == 10
    assert result.flip[0] == flip
    assert result.angle[0] == pytest.approx(angle, abs=1.5)
    assert np.allclose(result.shift[0], shift, atol=1.0)
    assert result.ncc[0] > 0.97


def test_copies_score_above_other_subjects(slices):
    train, other = slices
    rng = np.random.default_rng(0)
    noisy = np.clip(train[5:15] + rng.normal(0, 8, train[5:15].shape), 0, 255).astype(np.uint8)
    candidates = np.stack([np.clip(np.arange(i - 2, i + 3), 0, 19) for i in range(5, 15)])
    copies = Verifier().align(noisy, train, candidates).ncc
    novel = Verifier().align(other[5:15], train, candidates).ncc
    assert copies.min() > 0.95
    assert novel.max() < copies.min() - 0.03


def test_foreground_ncc_is_intensity_invariant_and_bounded():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.uniform(0.1, 1, (2, 16, 16)).astype(np.float32))
    assert torch.allclose(foreground_ncc(a, a * 0.7), torch.ones(2), atol=1e-5)
    assert torch.all(foreground_ncc(a, 1.1 - a) < 0)
    empty = torch.zeros(1, 16, 16)
    assert torch.isfinite(foreground_ncc(empty, empty)).all()


def test_magnified_copy_is_aligned_with_its_scale(slices):
    """A crop resized back is a magnification; the pose search covers it."""
    train, _ = slices
    query = posed(train[10], "none", 3.0, (1.0, -1.0), scale=1.15)[None]
    result = Verifier().align(query, train, np.array([[9, 10, 11, 3]]))
    assert result.candidate[0] == 10
    assert result.scale[0] == pytest.approx([1.15, 1.15], abs=0.03)
    assert result.ncc[0] > 0.97


@pytest.mark.parametrize(
    "flip, angle, stretch", [("none", -4.0, (1.12, 1.03)), ("vflip", 6.0, (1.02, 1.14))]
)
def test_copy_stretched_differently_along_rows_and_columns_is_aligned(slices, flip, angle, stretch):
    """A crop resized back stretches rows and columns by different amounts: the pose
    recovers each stretch, and the aligned copy scores far above the other subject."""
    train, other = slices
    query = posed(train[10], flip, angle, (1.0, -0.5), scale=stretch)
    both = np.stack([query, other[10]])
    result = Verifier().align(both, train, np.array([[9, 10, 11, 3]] * 2))
    assert result.candidate[0] == 10 and result.flip[0] == flip
    assert result.angle[0] == pytest.approx(angle, abs=1.0)
    assert result.scale[0] == pytest.approx(stretch, abs=0.02)
    assert result.ncc[0] > 0.98
    assert result.ncc[1] < result.ncc[0] - 0.03
