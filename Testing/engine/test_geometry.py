"""geometry.py against numpy's flips and rotations, scipy's interpolation and hand-derived matrices.

The convention: x = columns, y = rows (down); a positive angle turns +x towards +y, which on an
array shown with row 0 on top is clockwise (numpy's rot90 with k=-1). The forward pose is
y = D R Fl x + t: flip first, then rotation, then stretch, then shift (pixels).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from MemorizationIndexLib.geometry import (
    FLIP_NAMES,
    FLIPS,
    flip_axes,
    pose_matrices,
    sampling_grid,
    sampling_theta,
    warp,
)
from scipy import ndimage

S = 8


def image(seed=0, size=S):
    return np.random.default_rng(seed).random((size, size))


def warped(img, flip="none", angle=0.0, scale=1.0, shift=(0.0, 0.0)):
    theta = sampling_theta(flip, angle, scale, shift, img.shape[0])
    out = warp(torch.as_tensor(img[None], dtype=torch.float32), theta[None])
    assert out.shape == (1, *img.shape) and out.dtype == torch.float32
    return out[0].numpy().astype(np.float64)


def shifted(img, dx=0, dy=0):
    """img moved dx columns right and dy rows down, zeros where nothing comes in."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def stretched(img, sx, sy):
    """img stretched about its centre by scipy (bilinear; pixel centres at integers)."""
    c = (np.array(img.shape) - 1) / 2.0
    rows, cols = np.indices(img.shape, dtype=np.float64)
    coords = [c[0] + (rows - c[0]) / sy, c[1] + (cols - c[1]) / sx]
    return ndimage.map_coordinates(img, coords, order=1, mode="grid-constant", cval=0.0)


def test_flip_names_and_signs():
    assert FLIPS == {
        "none": (1.0, 1.0),
        "hflip": (-1.0, 1.0),
        "vflip": (1.0, -1.0),
        "hvflip": (-1.0, -1.0),
    }
    assert FLIP_NAMES == ["none", "hflip", "vflip", "hvflip"]
    assert [flip_axes(f) for f in FLIP_NAMES] == [(), (1,), (0,), (0, 1)]
    img = image()
    assert np.array_equal(np.flip(img, flip_axes("hflip")), img[:, ::-1])
    assert np.array_equal(np.flip(img, flip_axes("vflip")), img[::-1])


@pytest.mark.parametrize(
    ("flip", "angle", "scale", "shift", "size", "expected"),
    [
        ("none", 0, 1, (0, 0), S, [[1, 0, 0], [0, 1, 0]]),
        ("hflip", 0, 1, (0, 0), S, [[-1, 0, 0], [0, 1, 0]]),
        ("vflip", 0, 1, (0, 0), S, [[1, 0, 0], [0, -1, 0]]),
        # sampling undoes a +90 degree turn (x -> y): x_in = y_out, y_in = -x_out
        ("none", 90, 1, (0, 0), S, [[0, 1, 0], [-1, 0, 0]]),
        ("none", 0, (2, 4), (0, 0), S, [[0.5, 0, 0], [0, 0.25, 0]]),
        ("none", 0, 2, (0, 0), S, [[0.5, 0, 0], [0, 0.5, 0]]),
        # 5 px of a 10 px image is 1.0 in normalised units (the image spans -1..1)
        ("none", 0, 1, (5, -2.5), 10, [[1, 0, -1], [0, 1, 0.5]]),
        ("hflip", 0, 2, (5, 0), 10, [[-0.5, 0, 0.5], [0, 0.5, 0]]),
    ],
)
def test_sampling_theta_by_hand(flip, angle, scale, shift, size, expected):
    theta = sampling_theta(flip, angle, scale, shift, size)
    assert theta.shape == (2, 3) and theta.dtype == np.float64
    assert np.allclose(theta, expected, atol=1e-12)


def test_sampling_theta_inverts_the_forward_pose():
    """theta maps the forward image of a point (y = D R Fl x + t) back onto the point."""
    flip, angle, stretch, shift, size = "hvflip", 30.0, (1.5, 0.8), (3.0, -2.0), 16
    a = math.radians(angle)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    forward = np.diag(stretch) @ rotation @ np.diag(FLIPS[flip])
    t = np.array(shift) * 2.0 / size
    theta = sampling_theta(flip, angle, stretch, shift, size)
    points = np.random.default_rng(1).uniform(-1, 1, (20, 2))
    moved = points @ forward.T + t
    back = moved @ theta[:, :2].T + theta[:, 2]
    assert np.allclose(back, points, atol=1e-12)


def test_pose_matrices_batches_poses_in_order():
    signs = torch.tensor([FLIPS["hflip"], FLIPS["vflip"]], dtype=torch.float64)
    angle = torch.tensor([20.0, -45.0], dtype=torch.float64)
    stretch = torch.tensor([[1.2, 0.9], [0.7, 1.1]], dtype=torch.float64)
    shift = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
    thetas = pose_matrices(signs, angle, stretch, shift, 12)
    assert thetas.shape == (2, 2, 3)
    assert np.allclose(thetas[0], sampling_theta("hflip", 20.0, (1.2, 0.9), (1.0, 2.0), 12))
    assert np.allclose(thetas[1], sampling_theta("vflip", -45.0, (0.7, 1.1), (-3.0, 0.5), 12))


def test_warp_flips_like_numpy():
    img = image()
    assert np.allclose(warped(img), img, atol=1e-6)
    assert np.allclose(warped(img, "hflip"), img[:, ::-1], atol=1e-6)
    assert np.allclose(warped(img, "vflip"), img[::-1], atol=1e-6)
    assert np.allclose(warped(img, "hvflip"), img[::-1, ::-1], atol=1e-6)


def test_warp_turns_a_positive_angle_clockwise_on_screen():
    img = image()
    assert np.allclose(warped(img, angle=90), np.rot90(img, -1), atol=1e-6)
    assert np.allclose(warped(img, angle=-90), np.rot90(img, 1), atol=1e-6)
    assert np.allclose(warped(img, angle=180), img[::-1, ::-1], atol=1e-6)


def test_warp_shifts_by_pixels_with_zeros_coming_in():
    img = image()
    assert np.allclose(warped(img, shift=(2, 0)), shifted(img, dx=2), atol=1e-6)
    assert np.allclose(warped(img, shift=(0, -3)), shifted(img, dy=-3), atol=1e-6)
    # half a pixel: the mean of two neighbours, and half the edge pixel against the zeros
    half = 0.5 * img + 0.5 * shifted(img, dx=1)
    assert np.allclose(warped(img, shift=(0.5, 0)), half, atol=1e-6)


def test_warp_stretches_like_scipy():
    img = image(2, 16)
    assert np.allclose(warped(img, scale=(2, 1)), stretched(img, 2, 1), atol=1e-5)
    assert np.allclose(warped(img, scale=(1, 1.6)), stretched(img, 1, 1.6), atol=1e-5)
    assert np.allclose(warped(img, scale=2), stretched(img, 2, 2), atol=1e-5)


def test_warp_applies_flip_then_turn_then_stretch_then_shift():
    img = image(3, 16)
    out = warped(img, "hflip", 90, (2, 1), (2, -1))
    expected = shifted(stretched(np.rot90(img[:, ::-1], -1), 2, 1), dx=2, dy=-1)
    # in one step the 2 left columns and the last row come from outside the stretched frame
    assert np.allclose(out[:-1, 2:], expected[:-1, 2:], atol=1e-5)


def test_warp_takes_a_batch():
    imgs = np.stack([image(4), image(5)])
    thetas = np.stack([sampling_theta("hflip", 0, 1, 0, S), sampling_theta("none", 90, 1, 0, S)])
    out = warp(torch.as_tensor(imgs, dtype=torch.float32), thetas).numpy()
    assert out.shape == (2, S, S)
    assert np.allclose(out[0], imgs[0][:, ::-1], atol=1e-6)
    assert np.allclose(out[1], np.rot90(imgs[1], -1), atol=1e-6)


def test_sampling_grid_is_torchs_affine_grid():
    thetas = torch.tensor(
        np.random.default_rng(6).normal(size=(3, 2, 3)), dtype=torch.float64
    )  # any matrices, on a grid that is not square
    grid = sampling_grid(thetas, 5, 7)
    reference = F.affine_grid(thetas, (3, 1, 5, 7), align_corners=False)
    assert grid.shape == (3, 5, 7, 2)
    assert torch.allclose(grid, reference, atol=1e-12)
