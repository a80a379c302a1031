"""MemorizationIndexSceneLogic: build or load a bank, score volume nodes, show each match.

Works on the scene it is given (inside Slicer: slicer.mrmlScene and the application logic,
which the module's MemorizationIndexLogic passes in; outside: headless.py). Building and
scoring run in a child process (process.py): `startBuildBank`, `startScoreVolumes` and
`startScoreFolder` return a Job at once, which the panel polls from a timer; `buildBank`,
`scoreVolumes`, `scoreVolume` and `scoreFolder` wait for it, as the console API always
did, and take `progress(stage, done, total)` and `cancel() -> bool` callbacks. When the
child succeeds its results load into the scene here: the bank, the slice table and plot.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import vtk

from MemorizationIndexSlicer import engine, nodes, views, volumes
from MemorizationIndexSlicer.placement import (
    LPS_TO_RAS,
    matchPlacementMatrix,
    poseOfRow,
    snapPose,
    volumePlacementMatrix,
)
from MemorizationIndexSlicer.process import ChildProcess, Job, workerCommand

MATCH_TRANSFORM_NAME = "MemorizationIndex match placement"


class MemorizationIndexSceneLogic:
    """The module's logic on a scene passed in; see the module docstring."""

    # The Python that runs the child process (None: PythonSlicer in Slicer, else this one).
    pythonExecutable = None

    def __init__(self, scene=None, appLogic=None):
        self.scene = scene
        self.appLogic = appLogic
        self.bank = None
        self.result = None
        self._syntheticNodeIDs = {}  # engine volume name -> node ID of the scored node
        self._loadedNodeIDs = {}  # (path, series UID) -> node ID of a volume loaded here
        self._layoutBeforeCompare = None
        self.tableRows = []  # table row -> index in result.slices
        self.currentSliceIndex = None  # index in result.slices shown in the views
        self.overlayOpacity = 0.5

    # ---- child processes -------------------------------------------------------------------
    def _startJob(self, title, task, finish, outputs=(), onProgress=None, workDir=None):
        """Write the task file into workDir (a new temporary folder by default; removed when
        the job ends), start the child, and return the Job (see process.py)."""
        workDir = Path(workDir or tempfile.mkdtemp(prefix="MemorizationIndex-"))
        task = {k: (str(v) if isinstance(v, Path) else v) for k, v in task.items()}
        task.setdefault("resultFile", str(workDir / "result.pickle"))
        taskFile = workDir / "task.json"
        taskFile.write_text(json.dumps(task, default=str), encoding="utf-8")
        existing = {str(o): engine.partialOutputs(o) for o in outputs}

        def cleanup():
            shutil.rmtree(workDir, ignore_errors=True)
            # A child killed mid-write leaves the atomic writer's temporary folder (remove
            # what this child started, nothing that was there before) and, killed between
            # the renames of a swap, the old output moved aside (put it back).
            for output, before in existing.items():
                for leftover in engine.partialOutputs(output) - before:
                    shutil.rmtree(leftover, ignore_errors=True)
                try:
                    engine.recoverOutput(output)
                except Exception:
                    logging.warning(
                        "MemorizationIndex: could not recover %s", output, exc_info=True
                    )

        child = ChildProcess(
            workerCommand(taskFile, self.pythonExecutable),
            env=engine.childEnvironment(),
            onProgress=onProgress,
        )
        try:
            child.start()
        except OSError:
            cleanup()
            raise
        return Job(title, child, finish=lambda c: finish(c, task), cleanup=cleanup)

    # ---- bank ------------------------------------------------------------------------------
    def startBuildBank(
        self,
        trainingFolder,
        bankFolder,
        imageSize=None,
        axis="axial",
        stride=1,
        checkpoint=None,
        device="auto",
        batchSize=32,
        settings=None,
        encoderConfig=None,
        onProgress=None,
        encoder=None,
    ):
        """Start encoding a folder of training scans into a bank in bankFolder; returns the
        Job, whose value is the bank's summary (see loadBank).

        `settings` (an engine BankSettings or its dict) sets everything; without it,
        imageSize (None: the encoder's own), axis and stride change the defaults. `encoder`:
        "mri-core" (needs checkpoint), "litemedsam" or "untrained"; None chooses as the
        command line does (MRI-CORE with a checkpoint, else LiteMedSAM when installed,
        else untrained). `encoderConfig` (an engine EncoderConfig) replaces MRI-CORE's
        ViT-B, for tests.
        """
        task = {
            "task": "build",
            "training": str(trainingFolder),
            "bank": str(bankFolder),
            "settings": engine.settingsDict(settings),
            "imageSize": int(imageSize) if imageSize else None,
            "encoder": encoder or None,
            "axis": axis,
            "stride": int(stride),
            "encoderConfig": engine.encoderConfigDict(encoderConfig),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "device": device,
            "batchSize": int(batchSize),
        }
        return self._startJob(
            "Building the bank",
            task,
            lambda child, task: self.loadBank(task["bank"]),
            outputs=[bankFolder],
            onProgress=onProgress,
        )

    def buildBank(self, trainingFolder, bankFolder, progress=None, cancel=None, **options):
        """Build a bank in a child process and wait for it (see startBuildBank); returns the
        bank's summary (see loadBank)."""
        return self.startBuildBank(trainingFolder, bankFolder, **options).wait(progress, cancel)

    def loadBank(self, bankFolder):
        """Use a saved bank (BankError if the folder is not one). Slicer's process reads
        only its manifest (the engine's BankSummary: size, axis, image size, encoder) and
        never imports torch or faiss; the worker process loads the bank and checks every
        file of it when it scores. For the full bank in a script outside the panel:
        `MemorizationIndexLib.load_bank(folder)`."""
        self.bank = engine.bankSummary(bankFolder)
        return self.bank

    def bankDescription(self, bank=None):
        """One line on the loaded bank, for the panel and the console."""
        bank = bank or self.bank
        return "No bank loaded." if bank is None else bank.description()

    def bankAxis(self):
        return self.bank.axis if self.bank is not None else "axial"

    def _requireBank(self):
        if self.bank is None:
            raise engine.bankError(
                "No feature bank is loaded: build one or load an existing bank first."
            )
        if not self.bank.path:
            raise engine.bankError("The loaded bank is not saved in a folder; save or rebuild it.")
        return self.bank

    # ---- scoring ---------------------------------------------------------------------------
    def scanFromVolumeNode(self, volumeNode, stride=None, name=None):
        """The engine's view of a volume node: canonical slices along the bank's axis."""
        bank = self._requireBank()
        return engine.scanFromImage(
            volumes.imageFromVolumeNode(volumeNode),
            name or volumeNode.GetName(),
            bank.axis,
            bank.min_foreground,
            stride,
        )

    def _scoreTask(self, alpha, stride, checkpoint, device, batchSize, reportFolder):
        return {
            "task": "score",
            "bank": str(self._requireBank().path),
            "alpha": float(alpha),
            "stride": int(stride) if stride else None,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "device": device,
            "batchSize": int(batchSize),
            "report": str(reportFolder) if reportFolder else None,
        }

    def startScoreVolumes(
        self,
        volumeNodes,
        alpha=0.01,
        stride=None,
        checkpoint=None,
        device="auto",
        batchSize=32,
        updateNodes=True,
        reportFolder=None,
        onProgress=None,
    ):
        """Start scoring volume nodes against the loaded bank; returns the Job, whose value
        is the engine's ScoreResult (the slice table and plot nodes updated unless
        updateNodes is False; the HTML/CSV report also written when reportFolder is set)."""
        task = self._scoreTask(alpha, stride, checkpoint, device, batchSize, reportFolder)
        volumeNodes = [n for n in volumeNodes if n is not None]
        if not volumeNodes:
            raise ValueError("Select a volume to score.")
        names = {}
        workDir = Path(tempfile.mkdtemp(prefix="MemorizationIndex-"))
        try:
            task["volumes"] = []
            for k, node in enumerate(volumeNodes):
                name = self._uniqueSourceName(node, names)
                names[name] = node.GetID()
                file = volumes.writeVolumeNode(node, workDir / f"volume-{k}.nrrd")
                task["volumes"].append({"file": file, "name": name})
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return self._startJob(
            "Scoring",
            task,
            lambda child, task: self._loadScoreResult(task, names, updateNodes),
            outputs=[reportFolder] if reportFolder else [],
            onProgress=onProgress,
            workDir=workDir,
        )

    def startScoreFolder(
        self,
        folder,
        alpha=0.01,
        stride=None,
        checkpoint=None,
        device="auto",
        batchSize=32,
        updateNodes=True,
        reportFolder=None,
        onProgress=None,
    ):
        """Start scoring every volume in a folder (read from disk by the child; loaded as
        nodes when inspected); returns the Job."""
        task = self._scoreTask(alpha, stride, checkpoint, device, batchSize, reportFolder)
        task["folder"] = str(folder)
        return self._startJob(
            "Scoring",
            task,
            lambda child, task: self._loadScoreResult(task, {}, updateNodes),
            outputs=[reportFolder] if reportFolder else [],
            onProgress=onProgress,
        )

    def scoreVolume(self, volumeNode, alpha=0.01, **kwargs):
        """Score one volume node; see scoreVolumes."""
        return self.scoreVolumes([volumeNode], alpha=alpha, **kwargs)

    def scoreVolumes(self, volumeNodes, alpha=0.01, progress=None, cancel=None, **options):
        """Score volume nodes in a child process and wait (see startScoreVolumes)."""
        job = self.startScoreVolumes(volumeNodes, alpha=alpha, **options)
        return job.wait(progress, cancel)

    def scoreFolder(self, folder, alpha=0.01, progress=None, cancel=None, **options):
        """Score a folder of volumes in a child process and wait (see startScoreFolder)."""
        return self.startScoreFolder(folder, alpha=alpha, **options).wait(progress, cancel)

    def _loadScoreResult(self, task, names, updateNodes):
        result = engine.loadResult(task["resultFile"])
        self._syntheticNodeIDs = dict(names)
        self._setResult(result, updateNodes)
        return result

    @staticmethod
    def _uniqueSourceName(volumeNode, taken):
        name = volumeNode.GetName() or volumeNode.GetID()
        if name in taken:
            name = f"{name} ({volumeNode.GetID()})"
        return name

    def _setResult(self, result, updateNodes):
        self.result = result
        self.currentSliceIndex = None
        self.tableRows = result.ranked_slices()  # the engine's one ranking rule
        if updateNodes:
            self.updateSliceTable(result)
            self.updatePlot(result)

    def volumeSummary(self, volumeName=None, result=None):
        """The verdict of one scored volume (the worst one by default) as a dict for display."""
        result = result or self.result
        if result is None or not result.volumes:
            return None
        if volumeName is None:
            row = result.ranked_volumes()[0]
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
            "volumePose": engine.volumePoseText(row),
        }

    def suspectedCopies(self, result=None):
        """Indices (into result.slices) of the flagged slices, most suspicious first."""
        result = result or self.result
        if result is None:
            return []
        return [i for i in self.tableRows if result.slices[i]["flagged"]]

    # ---- table and plot nodes --------------------------------------------------------------
    def findNode(self, className, role):
        """The node this logic made for a role ("sliceTable", "plotChart", ...), or None."""
        return nodes.findNode(self.scene, className, role)

    def sliceTableNode(self):
        return self.findNode("vtkMRMLTableNode", "sliceTable")

    def plotChartNode(self):
        return self.findNode("vtkMRMLPlotChartNode", "plotChart")

    def updateSliceTable(self, result=None):
        """One row per scored slice, most suspicious first: the table the panel shows."""
        return nodes.updateSliceTable(self.scene, result or self.result, self.tableRows)

    def updatePlot(self, result=None):
        """MI along the slices of each scored volume, with the flagging threshold 1 - alpha."""
        return nodes.updatePlot(self.scene, result or self.result)

    def sliceIndexOfModelRow(self, modelRow):
        """The result slice (index into result.slices) a row of the table view shows, or
        None for a row that shows no slice."""
        tableNode = self.sliceTableNode()
        if tableNode is None:
            return None
        tableRow = nodes.tableRowOfModelRow(tableNode, modelRow)
        if 0 <= tableRow < len(self.tableRows):
            return self.tableRows[tableRow]
        return None

    def modelRowOfSliceIndex(self, sliceIndex):
        """The table view row that shows a result slice."""
        return nodes.modelRowOfTableRow(self.sliceTableNode(), self.tableRows.index(sliceIndex))

    # ---- nodes of synthetic and matched volumes --------------------------------------------
    def loadVolumeFromSource(self, path, seriesUid="", role="match", name=None):
        """A volume the engine read from disk, as a node in its canonical (LPS) geometry.

        Read by the engine's own reader, so the node holds exactly the voxels and geometry
        that were encoded; loaded once and reused.
        """
        key = (str(path), seriesUid or "")
        nodeID = self._loadedNodeIDs.get(key)
        node = self.scene.GetNodeByID(nodeID) if nodeID else None
        if node is None:
            node = volumes.findLoadedVolume(self.scene, path, seriesUid)
        if node is None:
            node = volumes.loadVolume(self.scene, path, seriesUid, role, name)
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

    def volumeRowOf(self, row):
        """The scored volume a slice row belongs to (None when nothing is scored)."""
        if self.result is None:
            return None
        return next((v for v in self.result.volumes if v["volume"] == row["volume"]), None)

    def placeMatch(self, syntheticNode, matchNode, row, axis=None):
        """Create or update the linear transform laying the match on the synthetic volume:
        the whole training volume by the volume stage's 3D pose when that stage registered
        this very training volume, else the matched slice onto the synthetic slice."""
        axis = axis or self.bankAxis()
        volumeRow = self.volumeRowOf(row)
        poseLPS = None
        if volumeRow is not None and volumeRow["volume_match"] == row["match_volume"]:
            poseLPS = engine.volumePoseLPS(volumeRow.as_row())
        if poseLPS is not None:
            return self._setMatchTransform(syntheticNode, matchNode, volumePlacementMatrix(poseLPS))
        flip, angle, scale, shift, verified = poseOfRow(row)
        if verified:
            # The engine reports a physical pose (scale already corrected for the two
            # slices' pixel sizes); sub-resolution noise in it is snapped away.
            angle, scale, shift = snapPose(angle, scale, shift)
        matrix = matchPlacementMatrix(
            (row["position_x"], row["position_y"], row["position_z"]),
            (row["match_position_x"], row["match_position_y"], row["match_position_z"]),
            volumes.canonicalDirection(volumes.volumeDirectionLPS(syntheticNode)),
            volumes.canonicalDirection(volumes.volumeDirectionLPS(matchNode)),
            axis,
            flip,
            angle,
            scale,
            shift,
        )
        return self._setMatchTransform(syntheticNode, matchNode, matrix)

    def _setMatchTransform(self, syntheticNode, matchNode, matrix):
        transformNode = nodes.singletonNode(
            self.scene, "vtkMRMLLinearTransformNode", MATCH_TRANSFORM_NAME, "matchPlacement"
        )
        transformNode.SetMatrixTransformToParent(volumes.vtkMatrix(matrix))
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

    # ---- slice views -----------------------------------------------------------------------
    def sliceNode(self, viewName):
        return views.sliceNode(self.scene, viewName)

    def sliceCompositeNode(self, viewName):
        return views.sliceCompositeNode(self.scene, viewName)

    def sliceLogic(self, viewName):
        return views.sliceLogic(self.appLogic, viewName)

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
        axis = self.bankAxis()
        centre = self.syntheticSliceCentreRAS(syntheticNode, row)
        views.showLayers(
            self.scene, self.appLogic, viewName, syntheticNode, matchNode, opacity, axis, centre
        )
        if compareViewName:
            views.showLayers(
                self.scene, self.appLogic, compareViewName, matchNode, None, 0.0, axis, centre
            )
        views.jumpAllSlices(self.scene, centre)
        return syntheticNode, matchNode, transformNode

    def setOverlayOpacity(self, opacity, viewName="Red"):
        """Fade between the synthetic slice (0) and its training match (1)."""
        self.overlayOpacity = float(opacity)
        views.setForegroundOpacity(self.scene, viewName, self.overlayOpacity)

    def setCompareLayout(self, sideBySide, viewName="Red", compareViewName="Yellow"):
        """Side by side (synthetic | match, linked views) or back to the blend in one view."""
        self._layoutBeforeCompare = views.setSideBySideLayout(
            self.scene, sideBySide, self._layoutBeforeCompare
        )
        views.linkViews(self.scene, (viewName, compareViewName), sideBySide)
        if self.currentSliceIndex is not None and self.result is not None:
            row = self.result.slices[self.currentSliceIndex]
            opacity = 0.0 if sideBySide else self.overlayOpacity
            self._showMatchViews(row, opacity, compareViewName if sideBySide else None, viewName)

    # ---- rendering without a screen (tests, README pictures) -------------------------------
    def renderSliceView(self, viewName="Red"):
        """The view's blended slice as uint8 RGBA [rows, cols, 4], top row first."""
        return views.renderSliceView(self.appLogic, viewName)

    def resetForNewScene(self, scene):
        """Forget nodes of a closed scene; the loaded bank stays."""
        self.scene = scene
        self.result = None
        self.tableRows = []
        self.currentSliceIndex = None
        self._syntheticNodeIDs = {}
        self._loadedNodeIDs = {}
