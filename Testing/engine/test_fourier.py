"""Pixel descriptors for stage-2 candidates: blind to shifts and flips, close under noise."""

import numpy as np
import pytest
import torch
from MemorizationIndexLib.demo.cohort import load_template, make_subject
from MemorizationIndexLib.encoding.preprocessing import thumbnails
from MemorizationIndexLib.geometry import sampling_theta, warp
from MemorizationIndexLib.search.foreground import as_unit_images, foreground_moments
from MemorizationIndexLib.search.fourier import (
    PixelIndex,
    fourier_descriptors,
    normalised_thumbnails,
    rotated,
)
from MemorizationIndexLib.search.index import merge_candidates


def posed(image, flip, shift, scale=1.0):
    src = torch.from_numpy(image.astype(np.float32))[None]
    out = warp(src, sampling_theta(flip, 0.0, scale, shift, image.shape[-1])[None])[0]
    return out.numpy().round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bank():
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    return np.concatenate(
        [thumbnails(make_subject(template, s)[10:50], (3.0, 3.0), 64) for s in range(6)]
    )


def test_shifted_and_flipped_copies_find_their_source(bank):
    descriptors = fourier_descriptors(bank)
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(bank), 40, replace=False)
    flips = ["none", "hflip", "vflip", "hvflip"]
    queries = np.stack(
        [posed(bank[r], flips[i % 4], tuple(rng.uniform(-4, 4, 2))) for i, r in enumerate(rows)]
    )
    sims = fourier_descriptors(queries) @ descriptors.T
    rank = (sims > sims[np.arange(len(rows)), rows][:, None]).sum(axis=1)
    assert np.mean(rank < 8) >= 0.95  # the source is among the 8 proposed candidates


def test_merge_keeps_order_and_drops_duplicates():
    merged = merge_candidates(np.array([[5, 3, 5]]), np.array([[3, 9]]))
    assert merged.tolist() == [[5, 3, 9, 9, 9]]


def test_cropped_copies_find_their_source_through_the_normalised_descriptor(bank):
    """A crop resized back stretches rows and columns by different amounts (here 4-15 %);
    the plain descriptor loses many such copies, the foreground-normalised one does not."""
    rng = np.random.default_rng(1)
    rows = rng.choice(len(bank), 40, replace=False)
    flips = ["none", "hflip", "vflip", "hvflip"]
    queries = np.stack(
        [
            posed(bank[r], flips[i % 4], tuple(rng.uniform(-2, 2, 2)), rng.uniform(1.04, 1.15, 2))
            for i, r in enumerate(rows)
        ]
    )
    index = PixelIndex(bank)
    found = index.search(queries, 8)
    assert found.shape == (40, 16)
    normalised = found[:, 8:]
    assert np.mean([r in near for r, near in zip(rows, normalised, strict=True)]) >= 0.95
    assert np.mean([r in near for r, near in zip(rows, found, strict=True)]) >= 0.95


def test_normalised_thumbnails_centre_the_foreground_at_a_fixed_spread():
    image = np.zeros((1, 64, 64), np.uint8)
    image[0, 10:30, 5:45] = 200  # off-centre, wider than tall
    centre, spread = foreground_moments(as_unit_images(image))
    assert np.allclose(centre[0], (24.5, 19.5))  # (x, y)
    assert np.allclose(spread[0], (np.std(np.arange(40)), np.std(np.arange(20))))
    out_centre, out_spread = foreground_moments(as_unit_images(normalised_thumbnails(image)))
    assert np.allclose(out_centre[0], (31.5, 31.5), atol=0.6)
    assert abs(out_spread[0, 0] - out_spread[0, 1]) < 0.5  # both axes now spread alike
    empty = foreground_moments(torch.zeros(1, 8, 8))
    assert np.allclose(empty[0], 3.5) and np.allclose(empty[1], 1.0)


def test_copies_rotated_by_up_to_15_degrees_find_their_source(bank):
    """The descriptors tolerate a few degrees; the turned query views cover the rest."""
    rng = np.random.default_rng(2)
    rows = rng.choice(len(bank), 30, replace=False)
    queries = np.stack(
        [rotated(bank[r][None], float(rng.choice([-1, 1]) * rng.uniform(11, 15)))[0] for r in rows]
    )
    found = PixelIndex(bank).search(queries, 8)
    assert np.mean([r in near for r, near in zip(rows, found, strict=True)]) >= 0.95
