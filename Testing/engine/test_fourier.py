"""Pixel descriptors for stage-2 candidates: blind to shifts and flips, close under noise."""

import numpy as np
import torch
from MemorizationIndexLib.cohort import load_template, make_subject
from MemorizationIndexLib.fourier import fourier_descriptors
from MemorizationIndexLib.preprocessing import thumbnails
from MemorizationIndexLib.twostage import merge_candidates
from MemorizationIndexLib.verification import _sampling_theta, warp


def posed(image, flip, shift):
    src = torch.from_numpy(image.astype(np.float32))[None]
    out = warp(src, _sampling_theta(flip, 0.0, 1.0, shift, image.shape[-1])[None])[0]
    return out.numpy().round().clip(0, 255).astype(np.uint8)


def test_shifted_and_flipped_copies_find_their_source():
    import SimpleITK as sitk

    template = sitk.GetArrayFromImage(load_template(3.0))
    bank = np.concatenate(
        [thumbnails(make_subject(template, s)[10:50], (3.0, 3.0), 64) for s in range(6)]
    )
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
