"""The README's picture of the volume stage, made from real engine output.

A training subject of the hard cohort (hard_cohort.py) is copied with a 10-degree tilt about
the left-right axis and a 6 mm shift. The figure shows, for one axial slice of the copy:
its nearest stored training slice (what stages 1-2 compare it with), the training volume
resampled on the copy's own plane under the pose the volume stage recovered (what stage 3
compares it with), each with its difference to the copy; and sagittal views with the copy's
slice plane and the tilted plane it came from in the training scan.

    python Testing/benchmarks/volume_stage_figure.py [--out Resources/Screenshots/volume-stage.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from MemorizationIndexLib.search.volume_pose import slice_ncc  # noqa: E402
from MemorizationIndexLib.search.volume_stage import (  # noqa: E402
    CompactVolume,
    match_volume,
    plane_points,
)

from Testing.benchmarks.hard_cohort import (  # noqa: E402
    make_subject,
    move_rigid,
    rician,
    template_lps,
)

TILT = (10.0, 0.0, 0.0)
SHIFT = (0.0, 0.0, 6.0)
SIZE = 96


def _image_like(values: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(like)
    return image


def main(argv=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[2]
    p.add_argument("--out", default=str(root / "Resources" / "Screenshots" / "volume-stage.png"))
    args = p.parse_args(argv)

    base = template_lps(2.0)
    train = _image_like(make_subject(sitk.GetArrayFromImage(base), 2.0, 7), base)
    moved = move_rigid(train, TILT, SHIFT)
    peak = float(np.percentile(sitk.GetArrayViewFromImage(train), 99))
    copy = _image_like(
        rician(sitk.GetArrayFromImage(moved), 0.02 * peak, np.random.default_rng(1)), train
    )
    train_c, copy_c = CompactVolume.of(train), CompactVolume.of(copy)

    nz, ny, nx = copy_c.voxels.shape
    k = int(nz * 0.62)  # an axial slice through the ventricles
    centre_index = ((nx - 1) / 2.0, (ny - 1) / 2.0, float(k))
    position = np.array(copy.TransformContinuousIndexToPhysicalPoint(centre_index))
    fov = max(nx * copy_c.spacing[0], ny * copy_c.spacing[1])
    planes = plane_points(position[None], np.array([fov / SIZE]), "axial", SIZE)
    match = match_volume(copy_c, train_c, 0, planes, (position[None], position[None]))

    synthetic = copy_c.sample(planes)[0]
    stored = train_c.sample(planes)[0]  # the stored training slice at the same index
    resampled = train_c.sample(match.pose.apply_inverse(planes))[0]
    ncc_stored, ncc_resampled = slice_ncc(synthetic, stored), slice_ncc(synthetic, resampled)

    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4), dpi=80)
    panels = [
        (synthetic, "synthetic axial slice\n(copy: 10° LR tilt, 6 mm S)"),
        (stored, f"nearest stored training slice\nNCC {ncc_stored:.2f} (stages 1-2)"),
        (resampled, f"training volume on the copy's plane\nNCC {ncc_resampled:.2f} (stage 3)"),
        (np.abs(synthetic - resampled), "|synthetic − stage-3 image|"),
    ]
    for ax, (image, title) in zip(axes[0], panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1 if "|" not in title else 0.5)
        ax.set_title(title, fontsize=10)
    # Sagittal views: the copy with its axial plane; the training scan with where that plane
    # came from (the pose's inverse maps the copy's plane into the training scan, tilted).
    mid = nx // 2
    axes[1, 0].imshow(copy_c.voxels[::-1, :, mid], cmap="gray")
    axes[1, 0].axhline(nz - 1 - k, color="tab:orange", lw=1.5)
    axes[1, 0].set_title("copy, sagittal: its axial slice", fontsize=10)
    axes[1, 1].imshow(train_c.voxels[::-1, :, mid], cmap="gray")
    axes[1, 1].axhline(nz - 1 - k, color="tab:red", lw=1.2, ls="--")
    line = match.pose.apply_inverse(
        position + np.outer(np.linspace(-fov / 2, fov / 2, 50), (0.0, 1.0, 0.0))
    )
    index = np.array([train.TransformPhysicalPointToContinuousIndex(p) for p in line])
    axes[1, 1].plot(index[:, 1], nz - 1 - index[:, 2], color="tab:orange", lw=1.5)
    axes[1, 1].set_xlim(0, ny - 1)
    axes[1, 1].set_ylim(nz - 1, 0)
    axes[1, 1].set_title(
        "training, sagittal: stored slice (red)\nvs the copy's plane under the pose (orange)",
        fontsize=10,
    )
    a = match.pose.angles_deg
    s = match.pose.recentred(np.asarray(train.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in train.GetSize()]))).shift_mm  # fmt: skip
    axes[1, 2].axis("off")
    axes[1, 2].text(
        0.0,
        0.5,
        "recovered pose\n(truth: 10°, 0°, 0°; 0, 0, 6 mm)\n"
        f"angles LR {a[0]:.2f}°, AP {a[1]:.2f}°, SI {a[2]:.2f}°\n"
        f"shift L {s[0]:.2f}, P {s[1]:.2f}, S {s[2]:.2f} mm\n"
        f"volume NCC after registration {match.similarity:.3f}\n"
        f"{match.seconds:.1f} s (seed, registration, resampling)",
        fontsize=10,
        va="center",
    )
    axes[1, 3].imshow(np.abs(synthetic - stored), cmap="gray", vmin=0, vmax=0.5)
    axes[1, 3].set_title("|synthetic − stored slice|", fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}: stored-slice NCC {ncc_stored:.3f}, stage-3 NCC {ncc_resampled:.3f}")
    return out


if __name__ == "__main__":
    main()
