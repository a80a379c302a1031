"""Pure geometry of showing a match: slice frames, the placement matrix, poses of rows.

The engine reorients every volume to LPS (`sitk.DICOMOrient`) and records, for each slice,
the LPS position of its centre pixel. A slice's in-plane frame is the one the engine
displays it in (see `sliceFrame`); a query flip ("hflip", "vflip", "hvflip") mirrors that
frame about the slice centre. The match transform maps the training slice's frame onto the
synthetic slice's frame, flip included, so a copy lines up pixel for pixel. numpy only.
"""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# In-plane flips of the engine's query views: (column sign, row sign).
FLIP_SIGNS = {
    "none": (1.0, 1.0),
    "hflip": (-1.0, 1.0),
    "vflip": (1.0, -1.0),
    "hvflip": (-1.0, -1.0),
}


def sliceFrame(canonicalDirectionLPS, axis):
    """Columns: the display column axis, the display row axis and the normal of a slice (LPS).

    The engine shows an axial slice as array[k] of the canonical [z, y, x] image, and a
    coronal or sagittal slice with superior up (rows run along -z).
    """
    d = np.asarray(canonicalDirectionLPS, float)
    if axis == "axial":
        columns = (d[:, 0], d[:, 1], d[:, 2])
    elif axis == "coronal":
        columns = (d[:, 0], -d[:, 2], d[:, 1])
    elif axis == "sagittal":
        columns = (d[:, 1], -d[:, 2], d[:, 0])
    else:
        raise ValueError(f"Unknown slice axis {axis!r}; choose axial, coronal or sagittal.")
    return np.stack(columns, axis=1)


def matchPlacementMatrix(
    syntheticCentreLPS,
    matchCentreLPS,
    syntheticDirectionLPS,
    matchDirectionLPS,
    axis,
    flip="none",
    angleDeg=0.0,
    scale=(1.0, 1.0),
    shiftMM=(0.0, 0.0),
):
    """4x4 RAS matrix that puts the matched training slice onto the synthetic slice.

    Maps the training slice's centre to the synthetic slice's centre and its in-plane frame
    onto the synthetic one, through the engine's pose of the match in display coordinates
    (columns, rows; centred): y = D(scale) * R(angle) * Flip * x + shift, the flip taken
    about the slice centre, D the stretch along columns and rows (a number: both). Without
    verification the pose is just the query view's flip (training = flip(synthetic), so
    synthetic = flip(training)). The normal is kept, so neighbouring training slices stay
    one slice spacing away. Directions are the canonical (reoriented) ones of each volume.
    """
    if flip not in FLIP_SIGNS:
        raise ValueError(f"Unknown flip {flip!r}; choose from {', '.join(FLIP_SIGNS)}.")
    frameS = sliceFrame(syntheticDirectionLPS, axis)
    frameT = sliceFrame(matchDirectionLPS, axis)
    a = np.radians(float(angleDeg))
    stretch = np.broadcast_to(np.asarray(scale, float), (2,))
    inPlane = (
        np.diag(stretch)
        @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        @ np.diag(FLIP_SIGNS[flip])
    )
    local = np.eye(3)
    local[:2, :2] = inPlane
    rotationLPS = frameS @ local @ frameT.T
    cS = np.asarray(syntheticCentreLPS, float) + frameS[:, :2] @ np.asarray(shiftMM, float)
    cT = np.asarray(matchCentreLPS, float)
    lps = np.eye(4)
    lps[:3, :3] = rotationLPS
    lps[:3, 3] = cS - rotationLPS @ cT
    flipRAS = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flipRAS @ lps @ flipRAS


def volumePlacementMatrix(poseLPS):
    """4x4 RAS matrix that puts the whole training volume where the volume stage found its
    anatomy in the synthetic volume (poseLPS: the 4x4 LPS map training -> synthetic, any
    affine: a mirror, a swap of axes and a scale included), so every synthetic slice plane,
    tilted or between the bank's slices, shows the training anatomy resampled on it."""
    flipRAS = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flipRAS @ np.asarray(poseLPS, float) @ flipRAS


def poseOfRow(row):
    """(flip, angle in degrees, physical (scale columns, scale rows), (shift columns, shift
    rows) mm, verified).

    Rows scored with verification carry the aligned pose of the match; rows of a bank
    without it carry only the flip of the query view that matched.
    """
    flip = row.get("transform") or "none"
    unverified = flip, 0.0, (1.0, 1.0), (0.0, 0.0), False
    verified = "verified_ncc" in row and np.isfinite(float(row.get("verified_ncc", np.nan)))
    if not verified:
        return unverified
    angle = float(row.get("angle_deg", 0.0))
    scale = [float(row.get(k, 1.0)) for k in ("scale_x", "scale_y")]
    shift = [float(row.get(k, 0.0)) for k in ("shift_x_mm", "shift_y_mm")]
    if not all(np.isfinite([angle, *scale, *shift])):
        return unverified
    return flip, angle, tuple(scale), tuple(shift), True


def stretchText(row):
    """'1.00 x 1.00' style: the verified stretch along columns x rows ('' if unverified)."""
    _, _, scale, _, verified = poseOfRow(row)
    return f"{scale[0]:.2f} x {scale[1]:.2f}" if verified else ""


def alignedNcc(row):
    """The stage-2 score of the row (NaN where the bank has no verification)."""
    value = row.get("verified_ncc")
    return float(value) if value is not None else float("nan")


def snapPose(angleDeg, scale, shiftMM):
    """Drop pose parts below what 64-px thumbnails resolve (a quarter degree, half a percent,
    a tenth of a mm): an exact copy is placed exactly, not nudged by estimation noise."""
    angleDeg = 0.0 if abs(angleDeg) < 0.25 else angleDeg
    scale = tuple(1.0 if abs(s - 1.0) < 0.005 else s for s in scale)
    return angleDeg, scale, tuple(0.0 if abs(x) < 0.1 else x for x in shiftMM)
