"""2D images in Slicer: a single-slice volume node (what a PNG or a 2D DICOM is once dropped
into Slicer) and a folder of PNG files score through the logic's worker, and the matched
training slice is shown on the image in the Red view (slicer-core scene)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from slicer_test_helpers import SHAPE, add_volume


def test_a_single_slice_node_scores_and_shows_its_match(logic, scene_and_app, training_set):
    scene, _ = scene_and_app
    copied = training_set.canonical[1][7][:, ::-1].copy()  # a training slice, mirrored
    node = add_volume(scene, copied[None], "png-like")  # one slice: a 2D image
    result = logic.scoreVolume(node, device="cpu")
    (row,) = result.slices
    assert result.volumes[0]["kind"] == "image"
    assert row["flagged"] and row["match_slice"] == 7
    assert row["match_volume"] == training_set.paths[1]
    assert result.summary["images"]["n_flagged"] == 1
    synthetic, match, transform = logic.showMatch(0, opacity=0.5)
    assert synthetic is node and match.GetTransformNodeID() == transform.GetID()
    composite = logic.sliceCompositeNode("Red")
    assert composite.GetBackgroundVolumeID() == node.GetID()
    assert composite.GetForegroundVolumeID() == match.GetID()
    # Mirrored copy: the match is placed mirrored, so the Red view's blend at opacity 1
    # shows the synthetic image's own pixels again.
    logic.setOverlayOpacity(1.0)
    blended = logic.renderSliceView("Red")[..., 0].astype(float)
    logic.setOverlayOpacity(0.0)
    alone = logic.renderSliceView("Red")[..., 0].astype(float)
    inside = alone > 20
    assert inside.mean() > 0.05
    assert np.corrcoef(blended[inside], alone[inside])[0, 1] > 0.9


def test_a_folder_of_pngs_scores_and_its_images_load_as_nodes(
    logic, scene_and_app, training_set, tmp_path
):
    folder = tmp_path / "pngs"
    folder.mkdir()
    source = training_set.canonical[2][6]
    pixels = np.round(255 * source / source.max()).astype(np.uint8)
    Image.fromarray(np.stack([pixels] * 3, -1)).save(folder / "fake_0.png")
    rng = np.random.default_rng(5)
    noise = (rng.random(SHAPE[1:]) * 200).astype(np.uint8)
    Image.fromarray(noise).save(folder / "fake_1.png")
    result = logic.scoreFolder(folder, device="cpu")
    rows = {r["volume"].rsplit("/", 1)[-1]: r for r in result.slices}
    assert rows["fake_0.png"]["flagged"] and rows["fake_0.png"]["match_slice"] == 6
    index = result.slices.index(rows["fake_0.png"])
    synthetic, match, _ = logic.showMatch(index)
    assert synthetic.GetImageData().GetDimensions()[2] == 1  # the PNG, one slice
    assert synthetic.GetImageData().GetDimensions()[:2] == (SHAPE[2], SHAPE[1])
    assert match.GetAttribute("MemorizationIndex.Role") == "match"
