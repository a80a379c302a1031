"""Result nodes: the slice table (one row per scored slice) and the MI plot chart.

Table rows and model rows. `qMRMLTableModel` (Libs/MRML/Widgets/qMRMLTableModel.cxx) shows
the column names as model row 0 unless the table node's UseColumnTitleAsColumnHeader is on
(a new vtkMRMLTableNode has it off), and `mrmlTableRowIndex` maps model row r to table row
r when it is on and r - 1 when it is off. The slice table turns it on, as Segment
Statistics does, so the row a user clicks is the table row of the same number; the two
functions below follow the model's mapping, so the panel is right either way.
"""

from __future__ import annotations

import slicer
import vtk

from MemorizationIndexSlicer.placement import alignedNcc, stretchText
from MemorizationIndexSlicer.volumes import ATTR_ROLE, shortName

SLICE_TABLE_NAME = "MemorizationIndex slices"
PLOT_TABLE_NAME = "MemorizationIndex MI plot table"
PLOT_CHART_NAME = "MemorizationIndex MI along slices"
MAX_PLOTTED_VOLUMES = 8


def tableRowOfModelRow(tableNode, modelRow):
    """The table node row a (non-transposed) qMRMLTableModel row shows; -1 for the row of
    column names."""
    offset = 0 if tableNode.GetUseColumnTitleAsColumnHeader() else 1
    return int(modelRow) - offset


def modelRowOfTableRow(tableNode, tableRow):
    """The qMRMLTableModel row that shows a table node row."""
    offset = 0 if tableNode.GetUseColumnTitleAsColumnHeader() else 1
    return int(tableRow) + offset


def findNode(scene, className, role):
    """The node made here for a role ("sliceTable", "plotChart", ...), or None."""
    for i in range(scene.GetNumberOfNodesByClass(className)):
        node = scene.GetNthNodeByClass(i, className)
        if node.GetAttribute(ATTR_ROLE) == role:
            return node
    return None


def singletonNode(scene, className, name, role):
    node = findNode(scene, className, role)
    if node is not None:
        return node
    node = scene.AddNewNodeByClass(className, name)
    node.SetAttribute(ATTR_ROLE, role)
    return node


def sliceTableColumns(rows):
    """(name, array class, values) of the slice table, one value per row."""
    return [
        ("rank", vtk.vtkIntArray, [k + 1 for k in range(len(rows))]),
        ("volume", vtk.vtkStringArray, [shortName(r["volume"]) for r in rows]),
        ("slice", vtk.vtkIntArray, [r["slice_index"] for r in rows]),
        ("MI", vtk.vtkDoubleArray, [r["mi"] for r in rows]),
        ("ONI", vtk.vtkDoubleArray, [r["oni"] for r in rows]),
        ("p-value", vtk.vtkDoubleArray, [r["p_value"] for r in rows]),
        ("similarity", vtk.vtkDoubleArray, [r["similarity"] for r in rows]),
        ("flagged", vtk.vtkStringArray, ["COPY" if r["flagged"] else "" for r in rows]),
        ("match volume", vtk.vtkStringArray, [shortName(r["match_volume"]) for r in rows]),
        ("match slice", vtk.vtkIntArray, [r["match_slice"] for r in rows]),
        ("view", vtk.vtkStringArray, [r["transform"] for r in rows]),
        ("rotation", vtk.vtkDoubleArray, [float(r.get("angle_deg") or 0.0) for r in rows]),
        ("stretch", vtk.vtkStringArray, [stretchText(r) for r in rows]),
        ("aligned NCC", vtk.vtkDoubleArray, [alignedNcc(r) for r in rows]),
        ("margin", vtk.vtkDoubleArray, [r["margin"] for r in rows]),
    ]


def updateSliceTable(scene, result, tableRows):
    """One row per scored slice in the order of `tableRows` (indices into result.slices)."""
    tableNode = singletonNode(scene, "vtkMRMLTableNode", SLICE_TABLE_NAME, "sliceTable")
    rows = [result.slices[i] for i in tableRows]
    wasModifying = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    for name, arrayClass, values in sliceTableColumns(rows):
        array = arrayClass()
        array.SetName(name)
        array.SetNumberOfValues(len(values))
        for k, value in enumerate(values):
            array.SetValue(k, value)
        tableNode.AddColumn(array)
    # Column names as the header, not as model row 0: model row k is table row k.
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetAttribute("MemorizationIndex.Alpha", str(result.alpha))
    tableNode.SetLocked(True)  # results, not for editing in the table view
    tableNode.EndModify(wasModifying)
    tableNode.Modified()
    return tableNode


def _plotColumn(name, values, length):
    array = vtk.vtkDoubleArray()
    array.SetName(name)
    array.SetNumberOfValues(length)
    for k in range(length):
        array.SetValue(k, float(values[k]) if k < len(values) else float("nan"))
    return array


def updatePlot(scene, result):
    """MI along the slices of each scored volume, with the flagging threshold 1 - alpha."""
    tableNode = singletonNode(scene, "vtkMRMLTableNode", PLOT_TABLE_NAME, "plotTable")
    chartNode = singletonNode(scene, "vtkMRMLPlotChartNode", PLOT_CHART_NAME, "plotChart")
    perVolume = []
    for name in [v["volume"] for v in result.volumes][:MAX_PLOTTED_VOLUMES]:
        rows = sorted(
            (r for r in result.slices if r["volume"] == name), key=lambda r: r["slice_index"]
        )
        perVolume.append((name, [r["slice_index"] for r in rows], [r["mi"] for r in rows]))
    allSlices = [s for _, xs, _ in perVolume for s in xs] or [0]
    threshold = ([min(allSlices), max(allSlices)], [1.0 - result.alpha, 1.0 - result.alpha])
    length = max([len(xs) for _, xs, _ in perVolume] + [2])

    wasModifying = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    seriesSpecs = []
    for k, (name, xs, ys) in enumerate(perVolume):
        xName, yName = f"slice {k + 1}", f"MI {k + 1}"
        tableNode.AddColumn(_plotColumn(xName, xs, length))
        tableNode.AddColumn(_plotColumn(yName, ys, length))
        seriesSpecs.append((f"MI: {shortName(name)}", xName, yName, False))
    tableNode.AddColumn(_plotColumn("threshold slice", threshold[0], length))
    tableNode.AddColumn(_plotColumn("threshold MI", threshold[1], length))
    seriesSpecs.append(
        (f"flagged at MI >= {1.0 - result.alpha:g}", "threshold slice", "threshold MI", True)
    )
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.EndModify(wasModifying)
    _updateSeries(scene, chartNode, tableNode, seriesSpecs)
    chartNode.SetTitle("Memorization Index along the slices")
    chartNode.SetXAxisTitle("slice index")
    chartNode.SetYAxisTitle("MI")
    chartNode.SetYAxisRangeAuto(False)
    chartNode.SetYAxisRange(0.0, 1.02)
    return chartNode


def _updateSeries(scene, chartNode, tableNode, seriesSpecs):
    wanted = {spec[0] for spec in seriesSpecs}
    existing = {}
    for i in reversed(range(chartNode.GetNumberOfPlotSeriesNodes())):
        series = chartNode.GetNthPlotSeriesNode(i)
        if series is None or series.GetName() not in wanted:
            chartNode.RemoveNthPlotSeriesNodeID(i)
            if series is not None and series.GetAttribute(ATTR_ROLE) == "plotSeries":
                scene.RemoveNode(series)
        else:
            existing[series.GetName()] = series
    colors = [(0.85, 0.28, 0.06), (0.10, 0.45, 0.75), (0.2, 0.6, 0.2), (0.55, 0.3, 0.7)]
    for k, (name, xName, yName, isThreshold) in enumerate(seriesSpecs):
        series = existing.get(name)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            series.SetAttribute(ATTR_ROLE, "plotSeries")
            chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(tableNode.GetID())
        series.SetXColumnName(xName)
        series.SetYColumnName(yName)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        if isThreshold:
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetColor(0.5, 0.5, 0.5)
        else:
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*colors[k % len(colors)])
