"""Scoring volume nodes: the result, the slice table node and the MI plot chart node."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
from MemorizationIndexLib.errors import BankError
from MemorizationIndexSlicer.headless import createSceneWithSliceViews
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
from MemorizationIndexSlicer.nodes import (
    PLOT_CHART_NAME,
    SLICE_TABLE_NAME,
    modelRowOfTableRow,
    tableRowOfModelRow,
)
from slicer_test_helpers import SLICE_VIEWS, add_volume, copied_row, synthetic_with_copy

TABLE_COLUMNS = [
    "rank",
    "volume",
    "slice",
    "MI",
    "ONI",
    "p-value",
    "similarity",
    "flagged",
    "match volume",
    "match slice",
    "view",
    "rotation",
    "stretch",
    "aligned NCC",
    "margin",
]


def column(table_node, name):
    table = table_node.GetTable()
    array = table.GetColumnByName(name)
    assert array is not None, name
    return [array.GetValue(i) for i in range(table.GetNumberOfRows())]


def nodes_with_role(scene, class_name, role):
    return [
        n
        for n in (
            scene.GetNthNodeByClass(i, class_name)
            for i in range(scene.GetNumberOfNodesByClass(class_name))
        )
        if n.GetAttribute("MemorizationIndex.Role") == role
    ]


@pytest.fixture(scope="module")
def scored_scene(training_set, bank_folder):
    """One scene with one scored volume, shared by the read-only checks below."""
    scene, app = createSceneWithSliceViews(SLICE_VIEWS)
    logic = MemorizationIndexSceneLogic(scene, app)
    logic.loadBank(bank_folder)
    node = add_volume(scene, synthetic_with_copy(training_set, flip=True), "synth-01")
    result = logic.scoreVolume(node, alpha=0.01, device="cpu")
    yield scene, logic, node, result
    scene.Clear(1)


@pytest.fixture()
def scored(scored_scene):
    return scored_scene[1:]


def test_scoring_a_volume_node_flags_the_copied_slice(scored):
    logic, node, result = scored
    assert [v["volume"] for v in result.volumes] == ["synth-01"]
    copied = copied_row(result, 5)  # synthetic slices 3-8 are training slices 5-10, flipped
    assert copied["flagged"]
    assert copied["match_volume"].endswith("train-1.nii.gz") and copied["match_slice"] == 7
    assert copied["transform"] == "hflip"
    flagged = {r["slice_index"] for r in result.slices if r["flagged"]}
    assert set(range(3, 9)) <= flagged and len(flagged) <= 7  # the rest is novel
    assert result.slices[logic.tableRows[0]]["slice_index"] in range(3, 9)
    summary = logic.volumeSummary()
    assert summary["verdict"] == "COPY" and summary["volume"] == "synth-01"
    assert summary["matchVolume"].endswith("train-1.nii.gz")
    assert logic.suspectedCopies()[0] == logic.tableRows[0]
    assert "untrained" in logic.bankDescription().lower()


def test_slice_table_node_lists_every_slice_most_suspicious_first(scored_scene):
    scene, logic, _, result = scored_scene
    table_node = scene.GetFirstNodeByName(SLICE_TABLE_NAME)
    assert table_node is not None and table_node.IsA("vtkMRMLTableNode")
    table = table_node.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == TABLE_COLUMNS
    assert table.GetNumberOfRows() == len(result.slices)
    mi = column(table_node, "MI")
    assert mi == sorted(mi, reverse=True)
    assert column(table_node, "rank") == list(range(1, len(mi) + 1))
    for k, index in enumerate(logic.tableRows):  # row k is result.slices[tableRows[k]]
        row = result.slices[index]
        assert column(table_node, "slice")[k] == row["slice_index"]
        assert column(table_node, "MI")[k] == pytest.approx(row["mi"])
        assert column(table_node, "match slice")[k] == row["match_slice"]
    assert column(table_node, "flagged")[0] == "COPY"
    assert column(table_node, "match volume")[0] == "train-1"
    assert column(table_node, "view")[0] == "hflip"
    assert column(table_node, "aligned NCC")[0] > 0.95  # the copy lines up in pixels too
    assert column(table_node, "stretch")[0] == "1.00 x 1.00"  # a plain flip: no stretch
    assert column(table_node, "volume") == ["synth-01"] * len(mi)
    assert table_node.GetAttribute("MemorizationIndex.Alpha") == "0.01"


def test_plot_chart_shows_mi_along_the_slices_and_the_threshold(scored_scene):
    scene, logic, _, result = scored_scene
    chart = scene.GetFirstNodeByName(PLOT_CHART_NAME)
    assert chart is not None and chart.IsA("vtkMRMLPlotChartNode")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    by_name = {s.GetName(): s for s in series}
    mi_series = by_name["MI: synth-01"]
    threshold = next(s for s in series if s is not mi_series)
    table_node = mi_series.GetTableNode()
    ordered = sorted(result.slices, key=lambda r: r["slice_index"])
    xs = slicer.util.arrayFromTableColumn(table_node, mi_series.GetXColumnName())
    ys = slicer.util.arrayFromTableColumn(table_node, mi_series.GetYColumnName())
    assert np.array_equal(xs[: len(ordered)], [r["slice_index"] for r in ordered])
    assert np.allclose(ys[: len(ordered)], [r["mi"] for r in ordered])
    assert ys[list(xs).index(5)] == pytest.approx(max(r["mi"] for r in result.slices))
    ty = slicer.util.arrayFromTableColumn(table_node, threshold.GetYColumnName())
    assert np.allclose(ty[:2], 1.0 - result.alpha)
    assert chart.GetXAxisTitle() == "slice index" and chart.GetYAxisTitle() == "MI"


def test_scoring_again_updates_the_same_nodes(logic, scene_and_app, training_set):
    scene, _ = scene_and_app
    node = add_volume(scene, synthetic_with_copy(training_set, flip=True), "synth-01")
    logic.scoreVolume(node, device="cpu")
    second = add_volume(scene, synthetic_with_copy(training_set, flip=False, seed=3), "synth-02")
    result = logic.scoreVolumes([node, second], alpha=0.05, device="cpu")
    assert len(nodes_with_role(scene, "vtkMRMLTableNode", "sliceTable")) == 1
    assert len(nodes_with_role(scene, "vtkMRMLPlotChartNode", "plotChart")) == 1
    chart = nodes_with_role(scene, "vtkMRMLPlotChartNode", "plotChart")[0]
    assert chart.GetNumberOfPlotSeriesNodes() == 3  # two volumes and the threshold
    assert len(nodes_with_role(scene, "vtkMRMLPlotSeriesNode", "plotSeries")) == 3
    table_node = scene.GetFirstNodeByName(SLICE_TABLE_NAME)
    # One row per scored slice of each volume, nothing left over from the first scoring.
    assert table_node.GetNumberOfRows() == len(result.slices)
    names = column(table_node, "volume")
    assert set(names) == {"synth-01", "synth-02"}
    for volume in result.volumes:
        assert names.count(volume["volume"]) == volume["n_slices"] > 0, volume["volume"]
    table_slices = zip(names, (int(i) for i in column(table_node, "slice")), strict=True)
    assert sorted(table_slices) == sorted((r["volume"], r["slice_index"]) for r in result.slices)
    copy2 = copied_row(result, 5, volume="synth-02")
    assert copy2["flagged"] and copy2["transform"] == "none" and copy2["match_slice"] == 7


def test_scoring_a_folder_loads_the_synthetic_volume_when_inspected(
    logic, training_set, scene_and_app, tmp_path
):
    scene, _ = scene_and_app
    folder = tmp_path / "synthetic"
    folder.mkdir()
    image = sitk.GetImageFromArray(synthetic_with_copy(training_set, flip=True))
    image.SetSpacing((1.0, 1.2, 2.0))
    sitk.WriteImage(image, str(folder / "synth-03.nii.gz"))
    result = logic.scoreFolder(folder, device="cpu")
    assert result.volumes[0]["flagged"]
    synthetic, match, _ = logic.showMatch(logic.suspectedCopies()[0])
    assert synthetic.GetAttribute("MemorizationIndex.Role") == "synthetic"
    assert synthetic.GetAttribute("MemorizationIndex.Source") == str(folder / "synth-03.nii.gz")
    assert match.GetAttribute("MemorizationIndex.Role") == "match"
    # Inspecting another slice of the same volumes reuses the loaded nodes.
    count = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    logic.showMatch(logic.tableRows[1])
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") <= count + 1


def test_scoring_without_a_bank_says_what_to_do(scene_and_app):
    scene, app = scene_and_app
    node = add_volume(scene, np.ones((12, 40, 48), np.float32))
    with pytest.raises(BankError, match="build one or load"):
        MemorizationIndexSceneLogic(scene, app).scoreVolume(node)


def test_table_view_row_k_is_table_row_k_and_shows_its_slice(scored):
    """qMRMLTableModel shows column names as model row 0 unless the table node uses column
    titles as the header; the slice table does, so a click on row k is table row k."""
    logic, _, result = scored
    table_node = logic.sliceTableNode()
    assert table_node.GetUseColumnTitleAsColumnHeader()
    slices, volumes = column(table_node, "slice"), column(table_node, "volume")
    for k in range(table_node.GetNumberOfRows()):
        index = logic.sliceIndexOfModelRow(k)
        assert index == logic.tableRows[k]
        assert slices[k] == result.slices[index]["slice_index"]
        assert volumes[k] == result.slices[index]["volume"]
        assert logic.modelRowOfSliceIndex(index) == k
    assert logic.sliceIndexOfModelRow(table_node.GetNumberOfRows()) is None


def test_row_mapping_follows_qmrmltablemodel_either_way():
    """Libs/MRML/Widgets/qMRMLTableModel.cxx, mrmlTableRowIndex: model row r is table row r
    with UseColumnTitleAsColumnHeader on, r - 1 with it off (row 0 holds the names)."""
    node = slicer.vtkMRMLTableNode()
    assert not node.GetUseColumnTitleAsColumnHeader()  # a new table node: names in row 0
    assert tableRowOfModelRow(node, 0) == -1 and tableRowOfModelRow(node, 3) == 2
    assert modelRowOfTableRow(node, 2) == 3
    node.SetUseColumnTitleAsColumnHeader(True)
    assert tableRowOfModelRow(node, 3) == 3 and modelRowOfTableRow(node, 3) == 3
