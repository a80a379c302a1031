"""MRML glue of the MemorizationIndex module: everything but the widget, on a scene passed in.

Volume nodes go to the engine and back, results become a table node and a plot chart node,
and the nearest training match is loaded as a node and placed, with a linear transform
node (never resampled), so that its matched slice lies exactly on the synthetic slice; the
Red view then blends the two. Only numpy, vtk and the MRML classes that the PyPI package
`slicer-core` also provides are used, so this file runs in pytest outside Slicer, and the
engine (torch, faiss, SimpleITK) is imported only inside the methods that need it.

Geometry. The engine reorients every volume to LPS (`sitk.DICOMOrient`) and records, for
each slice, the LPS position of its centre pixel. A slice's in-plane frame is the one the
engine displays it in (see `sliceFrame`); a query flip ("hflip", "vflip", "hvflip") mirrors
that frame about the slice centre. The match transform maps the training slice's frame onto
the synthetic slice's frame, flip included, so a copy lines up pixel for pixel.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import slicer
import slicer.util
import vtk

MODULE_NAME = "MemorizationIndex"
SLICE_TABLE_NAME = "MemorizationIndex slices"
PLOT_TABLE_NAME = "MemorizationIndex MI plot table"
PLOT_CHART_NAME = "MemorizationIndex MI along slices"
MATCH_TRANSFORM_NAME = "MemorizationIndex match placement"
ORIENTATION_OF_AXIS = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
MAX_PLOTTED_VOLUMES = 8
_EXTRACTOR_CACHE = {}  # the last encoder built for scoring, by what defines it

# Node attributes that tie nodes made here to what they show (kept with a saved scene).
ATTR_ROLE = "MemorizationIndex.Role"
ATTR_SOURCE = "MemorizationIndex.Source"
ATTR_SERIES = "MemorizationIndex.SeriesUID"

# In-plane flips of the engine's query views: (column sign, row sign).
FLIP_SIGNS = {
    "none": (1.0, 1.0),
    "hflip": (-1.0, 1.0),
    "vflip": (1.0, -1.0),
    "hvflip": (-1.0, -1.0),
}


# ---- a headless scene, as Slicer's application sets one up ------------------------------


def createSceneWithSliceViews(sliceViewNames=("Red", "Yellow", "Green")):
    """A scene with application logic, colours and slice logics, for scripts outside Slicer.

    Inside Slicer use `slicer.mrmlScene` and `slicer.app.applicationLogic()` instead.
    Returns (scene, applicationLogic); the slice logics live in the application logic.
    """
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.GetColorLogic().SetMRMLScene(scene)
    appLogic.GetColorLogic().AddDefaultColorNodes()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    sliceLogics = vtk.vtkCollection()
    appLogic.SetSliceLogics(sliceLogics)
    appLogic.SetViewLogics(vtk.vtkCollection())
    defaults = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    for name in sliceViewNames:
        sliceLogic = slicer.vtkMRMLSliceLogic()
        sliceLogic.SetMRMLApplicationLogic(appLogic)
        sliceLogic.SetMRMLScene(scene)
        sliceNode = sliceLogic.AddSliceNode(name)
        sliceNode.SetOrientation(defaults.get(name, "Axial"))
        sliceNode.SetDimensions(256, 256, 1)
        sliceLogics.AddItem(sliceLogic)
    return scene, appLogic


# ---- geometry ---------------------------------------------------------------------------


def _vtkMatrix(array4x4):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array4x4[r][c]))
    return matrix


def _numpyMatrix(vtkMatrix):
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeDirectionLPS(volumeNode):
    """3x3 IJK-to-LPS direction matrix of a volume node (columns: i, j, k axes)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    return LPS_TO_RAS @ _numpyMatrix(matrix)[:3, :3]


def canonicalDirection(directionLPS):
    """The direction the engine's reorientation (DICOMOrient to LPS) gives a volume."""
    import SimpleITK as sitk

    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection([float(x) for x in np.asarray(directionLPS, float).ravel()])
    return np.array(sitk.DICOMOrient(probe, "LPS").GetDirection()).reshape(3, 3)


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


def poseOfRow(row):
    """(flip, angle in degrees, physical (scale columns, scale rows), (shift columns, shift
    rows) mm, verified).

    Rows scored with verification carry the aligned pose of the match; rows of a bank
    without it carry only the flip of the query view that matched. A row with one `scale`
    (an earlier engine) stretches both axes by it.
    """
    flip = row.get("transform") or "none"
    unverified = flip, 0.0, (1.0, 1.0), (0.0, 0.0), False
    verified = "verified_ncc" in row and np.isfinite(float(row.get("verified_ncc", np.nan)))
    if not verified:
        return unverified
    angle = float(row.get("angle_deg", 0.0))
    both = float(row.get("scale", 1.0))
    scale = [float(row.get(k, both)) for k in ("scale_x", "scale_y")]
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


def imageFromVolumeNode(volumeNode):
    """A SimpleITK image (LPS geometry) with the voxels of a volume node (its local frame)."""
    import SimpleITK as sitk

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("The volume node holds no image data.")
    voxels = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    image = sitk.GetImageFromArray(voxels, isVector=voxels.ndim == 4)
    image.SetSpacing([float(s) for s in volumeNode.GetSpacing()])
    image.SetOrigin([float(x) for x in LPS_TO_RAS @ np.array(volumeNode.GetOrigin())])
    image.SetDirection([float(x) for x in volumeDirectionLPS(volumeNode).ravel()])
    return image


def ijkToRASFromImage(image):
    """4x4 IJK-to-RAS matrix of a SimpleITK image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def volumeNodeFromImage(scene, image, name, volumeNode=None):
    """Put a SimpleITK image into a (new or given) scalar volume node with display nodes."""
    import SimpleITK as sitk

    if volumeNode is None:
        volumeNode = scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name)
        )
    volumeNode.SetIJKToRASMatrix(_vtkMatrix(ijkToRASFromImage(image)))
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def shortName(path):
    """A volume's file or folder name without the image suffix, for tables and labels."""
    base = os.path.basename(os.path.normpath(str(path)))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".dcm"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


# ---- the logic --------------------------------------------------------------------------


class MemorizationIndexSceneLogic:
    """Build or load a bank, score volume nodes, and show each match over its synthetic slice.

    Works on the scene it is given (inside Slicer: slicer.mrmlScene and the application
    logic, which MemorizationIndexLogic passes in). Long calls take `progress(stage, done,
    total)` and `cancel() -> bool` callbacks, which the module's panel uses to keep Slicer
    responsive and to stop on request.
    """

    def __init__(self, scene=None, appLogic=None):
        self.scene = scene
        self.appLogic = appLogic
        self.bank = None
        self.result = None
        self._extractor = None
        self._extractorKey = None
        self._syntheticNodeIDs = {}  # engine volume name -> node ID of the scored node
        self._loadedNodeIDs = {}  # (path, series UID) -> node ID of a volume loaded here
        self.tableRows = []  # table row -> index in result.slices
        self.currentSliceIndex = None  # index in result.slices shown in the views
        self.overlayOpacity = 0.5

    # ---- bank ----------------------------------------------------------------------------
    def buildBank(
        self,
        trainingFolder,
        bankFolder,
        imageSize=224,
        axis="axial",
        stride=1,
        checkpoint=None,
        device="auto",
        batchSize=32,
        settings=None,
        encoderConfig=None,
        progress=None,
        cancel=None,
    ):
        """Encode a folder of training scans into a feature bank saved in bankFolder.

        `settings` (a MemorizationIndexLib.bank.settings.BankSettings) sets everything; without
        it, imageSize, axis and stride change the defaults. `encoderConfig` (an
        MemorizationIndexLib.encoding.vit.EncoderConfig) replaces MRI-CORE's ViT-B, for tests.
        Returns the FeatureBank.
        """
        from MemorizationIndexLib.bank.build import build_bank
        from MemorizationIndexLib.bank.settings import BankSettings
        from MemorizationIndexLib.job import Job

        if settings is None:
            settings = BankSettings(image_size=int(imageSize), axis=axis, stride=int(stride))
        encoder = settings.encoder(checkpoint or None, encoderConfig, device, int(batchSize))
        self.bank = build_bank(trainingFolder, bankFolder, settings, encoder, Job(progress, cancel))
        self._forgetExtractor()
        return self.bank

    def loadBank(self, bankFolder):
        """Load a saved bank (BankError if the folder is not one)."""
        from MemorizationIndexLib.bank.feature_bank import FeatureBank

        self.bank = FeatureBank.load(bankFolder)
        self._forgetExtractor()
        return self.bank

    def bankDescription(self, bank=None):
        """One line on the loaded bank, for the panel and the console."""
        bank = bank or self.bank
        if bank is None:
            return "No bank loaded."
        s = bank.settings
        text = (
            f"{len(bank)} slices of {len(bank.volumes)} training volumes "
            f"({s.axis}, {s.image_size} px, layers {', '.join(map(str, s.layers))}); "
            f"encoder: {bank.encoder_info.get('name')}"
        )
        if not bank.trained_encoder and "untrained" not in text.lower():
            text += ". UNTRAINED encoder: results are for testing the pipeline only."
        return text

    def _forgetExtractor(self):
        self._extractor = None
        self._extractorKey = None

    def _scorer(self, checkpoint, device, batchSize):
        """The bank's encoder, built once and reused while encoder and settings stay the same.

        Kept process-wide (the last one only: a ViT-B takes about 350 MB), so a new logic
        object, as a console user or a test makes, does not rebuild the same encoder.
        """
        key = (
            json.dumps(self.bank.encoder_info, sort_keys=True, default=str),
            json.dumps(self.bank.settings.to_dict(), sort_keys=True, default=str),
            str(checkpoint or ""),
            device,
            int(batchSize),
        )
        if self._extractorKey != key:
            cached = _EXTRACTOR_CACHE.get(key)
            if cached is None:
                # load_encoder also refuses a checkpoint that differs from the bank's.
                cached = self.bank.load_encoder(checkpoint or None, device, int(batchSize))
                _EXTRACTOR_CACHE.clear()
                _EXTRACTOR_CACHE[key] = cached
            self._extractor, self._extractorKey = cached, key
        return self._extractor

    def _requireBank(self):
        if self.bank is None:
            from MemorizationIndexLib.errors import BankError

            raise BankError("No feature bank is loaded: build one or load an existing bank first.")
        return self.bank

    # ---- scoring -------------------------------------------------------------------------
    def scanFromVolumeNode(self, volumeNode, stride=None, name=None):
        """The engine's view of a volume node: canonical slices along the bank's axis."""
        from MemorizationIndexLib.scans import ReadOptions, scan_from_image

        bank = self._requireBank()
        options = ReadOptions(
            axis=bank.settings.axis,
            stride=int(stride or 1),
            min_foreground=bank.settings.min_foreground,
        )
        return scan_from_image(
            imageFromVolumeNode(volumeNode), name or volumeNode.GetName(), options
        )

    def _uniqueSourceName(self, volumeNode, taken):
        name = volumeNode.GetName() or volumeNode.GetID()
        if name in taken:
            name = f"{name} ({volumeNode.GetID()})"
        return name

    def scoreVolume(self, volumeNode, alpha=0.01, **kwargs):
        """Score one volume node; see scoreVolumes."""
        return self.scoreVolumes([volumeNode], alpha=alpha, **kwargs)

    def scoreVolumes(
        self,
        volumeNodes,
        alpha=0.01,
        stride=None,
        checkpoint=None,
        device="auto",
        batchSize=32,
        progress=None,
        cancel=None,
        updateNodes=True,
    ):
        """Score volume nodes against the loaded bank.

        Creates or updates the slice table node and the MI plot chart node (unless
        updateNodes is False) and returns the engine's ScoreResult.
        """
        from MemorizationIndexLib.job import Job
        from MemorizationIndexLib.scoring.score import score

        bank = self._requireBank()
        volumeNodes = [n for n in volumeNodes if n is not None]
        if not volumeNodes:
            raise ValueError("Select a volume to score.")
        scans, names = [], {}
        for node in volumeNodes:
            name = self._uniqueSourceName(node, names)
            names[name] = node.GetID()
            scans.append(self.scanFromVolumeNode(node, stride, name))
        result = score(
            bank,
            scans,
            self._scorer(checkpoint, device, batchSize),
            alpha=float(alpha),
            job=Job(progress, cancel),
        )
        self._syntheticNodeIDs = names
        self._setResult(result, updateNodes)
        return result

    def scoreFolder(
        self,
        folder,
        alpha=0.01,
        stride=None,
        checkpoint=None,
        device="auto",
        batchSize=32,
        progress=None,
        cancel=None,
        updateNodes=True,
    ):
        """Score every volume in a folder (read from disk; loaded as nodes when inspected)."""
        from MemorizationIndexLib.job import Job
        from MemorizationIndexLib.scoring.score import score

        bank = self._requireBank()
        result = score(
            bank,
            folder,
            self._scorer(checkpoint, device, batchSize),
            alpha=float(alpha),
            stride=stride,
            job=Job(progress, cancel),
        )
        self._syntheticNodeIDs = {}
        self._setResult(result, updateNodes)
        return result

    def _setResult(self, result, updateNodes):
        self.result = result
        self.currentSliceIndex = None
        self.tableRows = result.ranked_slices()
        if updateNodes:
            self.updateSliceTable(result)
            self.updatePlot(result)

    def volumeSummary(self, volumeName=None, result=None):
        """The verdict of one scored volume (the worst one by default) as a dict for display."""
        result = result or self.result
        if result is None or not result.volumes:
            return None
        if volumeName is None:
            row = max(result.volumes, key=lambda v: v["mi"])
        else:
            row = next((v for v in result.volumes if v["volume"] == volumeName), None)
            if row is None:
                return None
        return {
            "volume": row["volume"],
            "verdict": "COPY" if row["flagged"] else "novel",
            "mi": row["mi"],
            "oni": row["oni"],
            "fractionFlagged": row["fraction_flagged"],
            "matchVolume": row["match_volume"],
            "longestRun": row["longest_run"],
            "nSlices": row["n_slices"],
            "alpha": result.alpha,
        }

    def suspectedCopies(self, result=None):
        """Indices (into result.slices) of the flagged slices, most suspicious first."""
        result = result or self.result
        if result is None:
            return []
        return [i for i in self.tableRows if result.slices[i]["flagged"]]

    # ---- table and plot nodes ------------------------------------------------------------
    def findNode(self, className, role):
        """The node this logic made for a role ("sliceTable", "plotChart", ...), or None."""
        for i in range(self.scene.GetNumberOfNodesByClass(className)):
            node = self.scene.GetNthNodeByClass(i, className)
            if node.GetAttribute(ATTR_ROLE) == role:
                return node
        return None

    def sliceTableNode(self):
        return self.findNode("vtkMRMLTableNode", "sliceTable")

    def plotChartNode(self):
        return self.findNode("vtkMRMLPlotChartNode", "plotChart")

    def _singleton(self, className, name, role):
        node = self.findNode(className, role)
        if node is not None:
            return node
        node = self.scene.AddNewNodeByClass(className, name)
        node.SetAttribute(ATTR_ROLE, role)
        return node

    def updateSliceTable(self, result=None):
        """One row per scored slice, most suspicious first: the table the panel shows."""
        result = result or self.result
        tableNode = self._singleton("vtkMRMLTableNode", SLICE_TABLE_NAME, "sliceTable")
        rows = [result.slices[i] for i in self.tableRows]
        columns = [
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
        wasModifying = tableNode.StartModify()
        tableNode.RemoveAllColumns()
        for name, arrayClass, values in columns:
            array = arrayClass()
            array.SetName(name)
            array.SetNumberOfValues(len(values))
            for k, value in enumerate(values):
                array.SetValue(k, value)
            tableNode.AddColumn(array)
        tableNode.SetAttribute("MemorizationIndex.Alpha", str(result.alpha))
        tableNode.SetLocked(True)  # results, not for editing in the table view
        tableNode.EndModify(wasModifying)
        tableNode.Modified()
        return tableNode

    def updatePlot(self, result=None):
        """MI along the slices of each scored volume, with the flagging threshold 1 - alpha."""
        result = result or self.result
        tableNode = self._singleton("vtkMRMLTableNode", PLOT_TABLE_NAME, "plotTable")
        chartNode = self._singleton("vtkMRMLPlotChartNode", PLOT_CHART_NAME, "plotChart")
        volumes = [v["volume"] for v in result.volumes][:MAX_PLOTTED_VOLUMES]
        perVolume = []
        for name in volumes:
            rows = sorted(
                (r for r in result.slices if r["volume"] == name), key=lambda r: r["slice_index"]
            )
            perVolume.append((name, [r["slice_index"] for r in rows], [r["mi"] for r in rows]))
        allSlices = [s for _, xs, _ in perVolume for s in xs] or [0]
        threshold = (
            [min(allSlices), max(allSlices)],
            [1.0 - result.alpha, 1.0 - result.alpha],
        )
        length = max([len(xs) for _, xs, _ in perVolume] + [2])

        def column(name, values):
            array = vtk.vtkDoubleArray()
            array.SetName(name)
            array.SetNumberOfValues(length)
            for k in range(length):
                array.SetValue(k, float(values[k]) if k < len(values) else float("nan"))
            return array

        wasModifying = tableNode.StartModify()
        tableNode.RemoveAllColumns()
        seriesSpecs = []
        for k, (name, xs, ys) in enumerate(perVolume):
            xName, yName = f"slice {k + 1}", f"MI {k + 1}"
            tableNode.AddColumn(column(xName, xs))
            tableNode.AddColumn(column(yName, ys))
            seriesSpecs.append((f"MI: {shortName(name)}", xName, yName, False))
        tableNode.AddColumn(column("threshold slice", threshold[0]))
        tableNode.AddColumn(column("threshold MI", threshold[1]))
        seriesSpecs.append(
            (f"flagged at MI >= {1.0 - result.alpha:g}", "threshold slice", "threshold MI", True)
        )
        tableNode.EndModify(wasModifying)

        wanted = {spec[0] for spec in seriesSpecs}
        existing = {}
        for i in reversed(range(chartNode.GetNumberOfPlotSeriesNodes())):
            series = chartNode.GetNthPlotSeriesNode(i)
            if series is None or series.GetName() not in wanted:
                chartNode.RemoveNthPlotSeriesNodeID(i)
                if series is not None and series.GetAttribute(ATTR_ROLE) == "plotSeries":
                    self.scene.RemoveNode(series)
            else:
                existing[series.GetName()] = series
        colors = [(0.85, 0.28, 0.06), (0.10, 0.45, 0.75), (0.2, 0.6, 0.2), (0.55, 0.3, 0.7)]
        for k, (name, xName, yName, isThreshold) in enumerate(seriesSpecs):
            series = existing.get(name)
            if series is None:
                series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
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
        chartNode.SetTitle("Memorization Index along the slices")
        chartNode.SetXAxisTitle("slice index")
        chartNode.SetYAxisTitle("MI")
        chartNode.SetYAxisRangeAuto(False)
        chartNode.SetYAxisRange(0.0, 1.02)
        return chartNode

    # ---- nodes of synthetic and matched volumes ------------------------------------------
    def _loadedNode(self, key):
        nodeID = self._loadedNodeIDs.get(key)
        node = self.scene.GetNodeByID(nodeID) if nodeID else None
        if node is not None:
            return node
        className = "vtkMRMLScalarVolumeNode"
        for i in range(self.scene.GetNumberOfNodesByClass(className)):
            candidate = self.scene.GetNthNodeByClass(i, className)
            if (
                candidate.GetAttribute(ATTR_SOURCE),
                candidate.GetAttribute(ATTR_SERIES) or "",
            ) == key:
                self._loadedNodeIDs[key] = candidate.GetID()
                return candidate
        return None

    def loadVolumeFromSource(self, path, seriesUid="", role="match", name=None):
        """A volume the engine read from disk, as a node in its canonical (LPS) geometry.

        Read by the engine's own reader, so the node holds exactly the voxels and geometry
        that were encoded; loaded once and reused.
        """
        from MemorizationIndexLib.scans import ReadOptions, ScanSource, read_scan

        key = (str(path), seriesUid or "")
        node = self._loadedNode(key)
        if node is not None:
            return node
        if not os.path.exists(str(path)):
            from MemorizationIndexLib.errors import InputError

            raise InputError(
                f"{path} is not there any more, so the matched volume cannot be shown "
                "(was the training folder moved?)."
            )
        volume = read_scan(
            ScanSource(path=str(path), series_uid=seriesUid or ""), ReadOptions(min_foreground=0.0)
        )
        label = name or f"{role}: {shortName(path)}"
        node = volumeNodeFromImage(self.scene, volume.image, label)
        node.SetAttribute(ATTR_ROLE, role)
        node.SetAttribute(ATTR_SOURCE, str(path))
        node.SetAttribute(ATTR_SERIES, seriesUid or "")
        self._loadedNodeIDs[key] = node.GetID()
        return node

    def syntheticNodeForRow(self, row):
        """The node of a result row's synthetic volume (a scored node, or loaded from disk)."""
        nodeID = self._syntheticNodeIDs.get(row["volume"])
        node = self.scene.GetNodeByID(nodeID) if nodeID else None
        if node is not None:
            return node
        return self.loadVolumeFromSource(row["volume"], row.get("series_uid", ""), role="synthetic")

    def _sliceRow(self, row):
        if isinstance(row, (int, np.integer)):
            if self.result is None:
                raise ValueError("Nothing has been scored yet.")
            self.currentSliceIndex = int(row)
            return self.result.slices[int(row)]
        if self.result is not None and row in self.result.slices:
            self.currentSliceIndex = self.result.slices.index(row)
        return row

    def placeMatch(self, syntheticNode, matchNode, row, axis=None):
        """Create or update the linear transform laying the match's slice on the synthetic one."""
        axis = axis or (self.bank.settings.axis if self.bank is not None else "axial")
        flip, angle, scale, shift, verified = poseOfRow(row)
        if verified:
            # The engine reports a physical pose (scale already corrected for the two
            # slices' pixel sizes); sub-resolution noise in it is snapped away.
            angle, scale, shift = snapPose(angle, scale, shift)
        matrix = matchPlacementMatrix(
            (row["position_x"], row["position_y"], row["position_z"]),
            (row["match_position_x"], row["match_position_y"], row["match_position_z"]),
            canonicalDirection(volumeDirectionLPS(syntheticNode)),
            canonicalDirection(volumeDirectionLPS(matchNode)),
            axis,
            flip,
            angle,
            scale,
            shift,
        )
        transformNode = self._singleton(
            "vtkMRMLLinearTransformNode", MATCH_TRANSFORM_NAME, "matchPlacement"
        )
        transformNode.SetMatrixTransformToParent(_vtkMatrix(matrix))
        # The synthetic volume may itself sit under a transform: the match follows it.
        transformNode.SetAndObserveTransformNodeID(syntheticNode.GetTransformNodeID())
        matchNode.SetAndObserveTransformNodeID(transformNode.GetID())
        return transformNode

    def syntheticSliceCentreRAS(self, syntheticNode, row):
        """World RAS of the synthetic slice centre (through the node's parent transforms)."""
        local = LPS_TO_RAS @ np.array([row["position_x"], row["position_y"], row["position_z"]])
        parent = syntheticNode.GetParentTransformNode()
        if parent is None:
            return local
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
        return np.array(toWorld.TransformPoint(*local))

    # ---- slice views ---------------------------------------------------------------------
    def sliceNode(self, viewName):
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
            if node.GetLayoutName() == viewName:
                return node
        return None

    def sliceCompositeNode(self, viewName):
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            if node.GetLayoutName() == viewName:
                return node
        return None

    def sliceLogic(self, viewName):
        if self.appLogic is None:
            return None
        return self.appLogic.GetSliceLogicByLayoutName(viewName)

    def showMatch(self, row, opacity=None, viewName="Red", compareViewName=None):
        """Show a scored slice with its nearest training slice on top of it.

        `row` is a result row (dict) or its index in result.slices. Loads the matched
        training volume, places it with a transform node so the matched slice lies on the
        synthetic slice, sets the view's background to the synthetic volume and foreground
        to the match at `opacity` (default: the last one set), and jumps every slice view
        to the slice centre. With compareViewName (e.g. "Yellow") that view shows the match
        alone and the first view the synthetic slice alone, for side by side.
        Returns (syntheticNode, matchNode, transformNode).
        """
        row = self._sliceRow(row)
        if opacity is not None:
            self.overlayOpacity = float(opacity)
        shown = 0.0 if compareViewName else self.overlayOpacity
        return self._showMatchViews(row, shown, compareViewName, viewName)

    def _showMatchViews(self, row, opacity, compareViewName, viewName="Red"):
        syntheticNode = self.syntheticNodeForRow(row)
        matchNode = self.loadVolumeFromSource(row["match_volume"], row.get("match_series_uid", ""))
        transformNode = self.placeMatch(syntheticNode, matchNode, row)
        axis = self.bank.settings.axis if self.bank is not None else "axial"
        centre = self.syntheticSliceCentreRAS(syntheticNode, row)
        self._showLayers(viewName, syntheticNode, matchNode, opacity, axis, centre)
        if compareViewName:
            self._showLayers(compareViewName, matchNode, None, 0.0, axis, centre)
        slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.scene, *centre, slicer.vtkMRMLSliceNode.CenteredJumpSlice
        )
        return syntheticNode, matchNode, transformNode

    def _showLayers(self, viewName, background, foreground, opacity, axis, centreRAS):
        composite = self.sliceCompositeNode(viewName)
        sliceNode = self.sliceNode(viewName)
        if composite is None or sliceNode is None:
            logging.warning(
                "MemorizationIndex: there is no %s slice view to show the match in.", viewName
            )
            return
        backgroundID = background.GetID() if background else None
        orientation = ORIENTATION_OF_AXIS[axis]
        # Fit the field of view only when the view starts showing another volume or plane,
        # so stepping through copies keeps the user's zoom.
        refit = (
            composite.GetBackgroundVolumeID() != backgroundID
            or sliceNode.GetOrientation() != orientation
        )
        composite.SetBackgroundVolumeID(backgroundID)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(float(opacity))
        sliceNode.SetOrientation(orientation)
        sliceLogic = self.sliceLogic(viewName)
        if refit and sliceLogic is not None:
            sliceLogic.FitSliceToBackground()
        sliceNode.JumpSliceByCentering(*centreRAS)

    def setOverlayOpacity(self, opacity, viewName="Red"):
        """Fade between the synthetic slice (0) and its training match (1)."""
        self.overlayOpacity = float(opacity)
        composite = self.sliceCompositeNode(viewName)
        if composite is not None:
            composite.SetForegroundOpacity(self.overlayOpacity)

    def setCompareLayout(self, sideBySide, viewName="Red", compareViewName="Yellow"):
        """Side by side (synthetic | match, linked views) or back to the blend in one view."""
        layoutNode = self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        sideBySideLayout = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
        if layoutNode is not None:
            if sideBySide:
                if layoutNode.GetViewArrangement() != sideBySideLayout:
                    self._layoutBeforeCompare = layoutNode.GetViewArrangement()
                layoutNode.SetViewArrangement(sideBySideLayout)
            elif layoutNode.GetViewArrangement() == sideBySideLayout:
                layoutNode.SetViewArrangement(
                    getattr(self, "_layoutBeforeCompare", None)
                    or slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
                )
        for name in (viewName, compareViewName):
            composite = self.sliceCompositeNode(name)
            if composite is not None:
                composite.SetLinkedControl(bool(sideBySide))
        if self.currentSliceIndex is not None and self.result is not None:
            row = self.result.slices[self.currentSliceIndex]
            opacity = 0.0 if sideBySide else self.overlayOpacity
            self._showMatchViews(row, opacity, compareViewName if sideBySide else None, viewName)

    # ---- rendering without a screen (tests, README pictures) -----------------------------
    def renderSliceView(self, viewName="Red"):
        """The view's blended slice as uint8 RGBA [rows, cols, 4], top row first."""
        from vtk.util import numpy_support

        sliceLogic = self.sliceLogic(viewName)
        if sliceLogic is None:
            raise ValueError(f"No slice logic for the {viewName} view in this application logic.")
        producer = sliceLogic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        cols, rows, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return pixels.reshape(rows, cols, -1)[::-1].copy()


def savePNG(rgba, path):
    """Write a rendered view (RGBA or gray) to PNG with the engine's dependency-free encoder."""
    from MemorizationIndexLib.report.images import png_bytes

    image = np.asarray(rgba)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    with open(path, "wb") as f:
        f.write(png_bytes(image))
    return path
