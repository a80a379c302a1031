"""Make the module icon, the extension icon and the README pictures.

    .venv/bin/python Testing/slicer/make_resources.py            # all
    .venv/bin/python Testing/slicer/make_resources.py --icons    # icons only (instant)

Icons are drawn with numpy (no imaging library). The pictures are rendered by the real
slice logic of slicer-core (`vtkMRMLSliceLogic`, the same blending Slicer's Red view does)
from an audit of a small cohort made from real MRI (nilearn's MNI152 T1, see
MemorizationIndexLib.demo.cohort): a synthetic volume that is a left-right flipped, noisy copy of
a training subject, its nearest training slice placed on it, and their blend.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MemorizationIndex"
MODULE_ICON = MODULE_DIR / "Resources" / "Icons" / "MemorizationIndex.png"
EXTENSION_ICON = ROOT / "Resources" / "MemorizationIndex.png"
SCREENSHOTS = ROOT / "Resources" / "Screenshots"
PICTURES = ("synthetic", "match", "blend")


# ---- icon ------------------------------------------------------------------------------


def _rounded_box(x, y, x0, y0, x1, y1, radius):
    """Signed-distance-like mask of a rounded rectangle (True inside)."""
    cx = np.clip(x, x0 + radius, x1 - radius)
    cy = np.clip(y, y0 + radius, y1 - radius)
    return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2


def _slice_pattern(x, y, cx, cy, mirror=False):
    """A brain-like axial slice: an ellipse with gyri-like rings and a midline."""
    u = (x - cx) / 26.0
    v = (y - cy) / 31.0
    if mirror:
        u = -u
    r = np.sqrt(u**2 + v**2)
    inside = r <= 1.0
    folds = 0.55 + 0.25 * np.cos(18.0 * r + 3.0 * np.arctan2(v, u + 0.3)) + 0.2 * (u > 0.25)
    midline = np.abs(u) < 0.05
    value = np.where(inside, np.clip(folds, 0.0, 1.0), 0.0)
    value = np.where(inside & midline, 0.15, value)
    return value, inside


def make_icon(size=128, supersample=4):
    """The module icon: a training slice and its (mirrored) copy overlapping, copy in orange."""
    n = size * supersample
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) / supersample
    rgb = np.ones((n, n, 3))
    tile = _rounded_box(x, y, 2, 2, size - 2, size - 2, 18)
    rgb[tile] = (0.12, 0.16, 0.22)
    for (x0, y0), colour, mirror in (
        ((12, 10), (0.75, 0.78, 0.82), False),
        ((48, 46), (0.96, 0.52, 0.16), True),
    ):
        frame = _rounded_box(x, y, x0, y0, x0 + 68, y0 + 72, 8)
        inner = _rounded_box(x, y, x0 + 4, y0 + 4, x0 + 64, y0 + 68, 5)
        rgb[frame] = colour
        rgb[inner] = (0.02, 0.03, 0.05)
        value, brain = _slice_pattern(x, y, x0 + 34, y0 + 36, mirror)
        brain &= inner
        tint = np.array(colour) * 0.35 + 0.65
        rgb[brain] = value[brain, None] * tint
    return (
        (rgb.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3)) * 255)
        .round()
        .astype(np.uint8)
    )


def write_icons():
    sys.path.insert(0, str(MODULE_DIR))
    from MemorizationIndexLib.report.images import png_bytes

    icon = make_icon()
    for path in (MODULE_ICON, EXTENSION_ICON):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(icon))
        print(f"wrote {path.relative_to(ROOT)}")


# ---- README pictures -------------------------------------------------------------------


def render_pictures(work: Path):
    """Audit a small real-MRI cohort with the logic and render what the Red view shows."""
    sys.path.insert(0, str(MODULE_DIR))
    import SimpleITK as sitk
    import slicer.util
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.demo.cohort import augment, load_template, make_subject, write_volume
    from MemorizationIndexSlicer.headless import createSceneWithSliceViews
    from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
    from MemorizationIndexSlicer.views import savePNG
    from MemorizationIndexSlicer.volumes import ijkToRASFromImage

    template_image = load_template(2.0)
    template = sitk.GetArrayFromImage(template_image)
    train = work / "train"
    train.mkdir(parents=True, exist_ok=True)
    subjects = [make_subject(template, seed) for seed in range(6)]
    for i, voxels in enumerate(subjects):
        write_volume(voxels, template_image, train / f"sub-{i + 1:02d}.nii.gz")
    copy = augment(augment(subjects[2], "hflip", 1), "noise-0.01", 2)

    scene, app = createSceneWithSliceViews()
    logic = MemorizationIndexSceneLogic(scene, app)
    settings = BankSettings(image_size=64, stride=2, flips=("none", "hflip"), null_max_slices=300)
    logic.buildBank(train, work / "bank", settings=settings, device="cpu")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synth-07")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRASFromImage(template_image)))
    slicer.util.updateVolumeFromArray(node, copy)
    node.CreateDefaultDisplayNodes()
    result = logic.scoreVolume(node, stride=2, device="cpu")
    print(logic.bankDescription())
    summary = logic.volumeSummary()
    print(f"verdict {summary['verdict']}, MI {summary['mi']:.6f}, match {summary['matchVolume']}")

    # A flagged slice near the middle of the brain, for a representative picture.
    copies = logic.suspectedCopies() or logic.tableRows
    middle = np.median([r["slice_index"] for r in result.slices])
    best = min(copies, key=lambda i: abs(result.slices[i]["slice_index"] - middle))
    row = result.slices[best]
    print(f"showing slice {row['slice_index']} -> {row['match_slice']} ({row['transform']})")
    _, match, _ = logic.showMatch(best, opacity=0.0)
    sliceNode = logic.sliceNode("Red")
    sliceNode.SetDimensions(320, 320, 1)
    logic.sliceLogic("Red").FitSliceToBackground()
    for volume in (node, match):  # one window for both, so the blend compares like with like
        display = volume.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, float(np.percentile(copy, 99.5)))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, opacity in zip(PICTURES, (0.0, 1.0, 0.5), strict=True):
        logic.setOverlayOpacity(opacity)
        savePNG(logic.renderSliceView("Red"), SCREENSHOTS / f"{name}.png")
        print(f"wrote {(SCREENSHOTS / f'{name}.png').relative_to(ROOT)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--icons", action="store_true", help="only the icons")
    args = parser.parse_args(argv)
    write_icons()
    if not args.icons:
        with tempfile.TemporaryDirectory() as work:
            render_pictures(Path(work))


if __name__ == "__main__":
    main()
