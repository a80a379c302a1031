"""MemorizationIndex: find training scans leaking out of a generative MRI model, in 3D Slicer.

Needs Slicer 5.10 or newer. The panel (Resources/UI/MemorizationIndex.ui) is bound to a
parameter node; the work is done by MemorizationIndexLogic, which is the MRML glue of the
package MemorizationIndexSlicer (below this folder: Slicer loads every .py file directly in
a module folder as a module, so this is the only one) on slicer.mrmlScene. Building a bank
and scoring run in a child process that the panel polls with a timer, so Slicer stays
responsive; the engine (MemorizationIndexLib) is never imported when Slicer loads the module.
"""

import logging
import os
import typing
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from MemorizationIndexSlicer import dependencies
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
from MemorizationIndexSlicer.process import CANCELLED, RUNNING, SUCCEEDED
from MemorizationIndexSlicer.volumes import shortName
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import (
    Choice,
    GuiConnector,
    WithinRange,
    parameterNodeGuiConnector,
    parameterNodeWrapper,
    unannotatedType,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ["auto", "cpu", "cuda", "mps"]
AXES = ["axial", "coronal", "sagittal"]
# The bank's encoder (the command line's --encoder); "auto": MRI-CORE when a checkpoint is
# given, else LiteMedSAM when its weights are installed, else the untrained ViT.
ENCODERS = ["auto", "mri-core", "litemedsam", "untrained"]
SCORE_FROM_VOLUME = "volume in the scene"
SCORE_FROM_FOLDER = "folder of volumes"
CONTRIBUTORS = ["The MemorizationIndex Project (github.com/MemorizationIndex)"]
POLL_INTERVAL_MS = 200


#
# MemorizationIndex
#


class MemorizationIndex(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Memorization Index")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = list(CONTRIBUTORS)
        self.parent.helpText = _("""
Audit a generative MRI model for training-data leakage. Build a feature bank from the
training scans with the MRI foundation model MRI-CORE, score synthetic volumes with a
calibrated Memorization Index (MI, in [0, 1]; a slice is flagged when MI >= 1 - alpha) and the
Overfit/Novelty Index (ONI, negative = copy-like), and inspect each suspected copy over its
nearest training slice. Building and scoring run in a separate process: Slicer stays
responsive and Cancel stops them. The module's logic can be scripted from the Python
console; see the "In 3D Slicer" section of the
<a href="https://github.com/MemorizationIndex/SlicerMemorizationIndex#in-3d-slicer">project
README</a>.
""")
        self.parent.acknowledgementText = _("""
Method after Deo et al., "A Calibrated Memorization Index (MI) for Detecting Training Data
Leakage in Generative MRI Models" (arXiv 2602.13066), with volume-level calibration and
geometry-robust matching. MRI-CORE weights by the Mazurowski lab (Duke University).
""")


#
# OptionalPathLineEditConnector
#

# A path setting that starts empty. (`Path | None` is the same type: Slicer 5.10 turns it
# into this typing.Union before it looks for a connector.)
OptionalPath = typing.Optional[Path]  # noqa: UP045


@parameterNodeGuiConnector
class OptionalPathLineEditConnector(GuiConnector):
    """Binds an optional path (None until the user chooses one) to a ctkPathLineEdit,
    showing None as an empty field. Slicer's own connector binds only a plain Path, whose
    unset value, Path(), shows as "." and reads back as the current folder."""

    @staticmethod
    def canRepresent(widget, datatype):
        return type(widget) is ctk.ctkPathLineEdit and unannotatedType(datatype) == OptionalPath

    @staticmethod
    def create(widget, datatype):
        if OptionalPathLineEditConnector.canRepresent(widget, datatype):
            return OptionalPathLineEditConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self):
        return pathFromText(self._widget.currentPath)

    def write(self, value):
        self._widget.currentPath = "" if value is None else str(value)


def pathFromText(text):
    """A path field's text as a Path, None when it is empty (or only blanks)."""
    text = (text or "").strip()
    return Path(text) if text else None


#
# MemorizationIndexParameterNode
#


@parameterNodeWrapper
class MemorizationIndexParameterNode:
    """The panel's settings; each is bound to the widget whose SlicerParameterName names it."""

    # Paths start empty (None), not as Path(), which a path field would show as ".".
    trainingFolder: OptionalPath = None
    checkpointFile: OptionalPath = None
    bankFolder: OptionalPath = None
    encoder: Annotated[str, Choice(ENCODERS)] = "auto"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    imageSize: Annotated[int, WithinRange(0, 1024)] = 0  # 0: the encoder's own
    sliceAxis: Annotated[str, Choice(AXES)] = "axial"
    stride: Annotated[int, WithinRange(1, 64)] = 1
    scoreInput: Annotated[str, Choice([SCORE_FROM_VOLUME, SCORE_FROM_FOLDER])] = SCORE_FROM_VOLUME
    syntheticVolume: vtkMRMLScalarVolumeNode
    syntheticFolder: OptionalPath = None
    alpha: Annotated[float, WithinRange(0.0001, 0.5)] = 0.01
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    sideBySide: bool = False


def _pathOrNone(path):
    """A path setting as text for the logic, or None when it is not set."""
    return None if path is None or not str(path).strip() else str(path)


def _encoderOrNone(choice):
    """The panel's encoder choice for the logic: None ("auto") lets the engine choose."""
    return None if choice in (None, "", "auto") else choice


def _imageSizeOrNone(size):
    """The panel's image size for the logic: None (0 in the panel) is the encoder's own."""
    return None if not size else int(size)


#
# MemorizationIndexWidget
#


class MemorizationIndexWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires the .ui to the parameter node, starts jobs and polls them."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._onJobDone = None
        self._pollTimer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MemorizationIndex.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MemorizationIndexLogic()

        # The child process is polled, never waited for: Slicer's event loop keeps running.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.buildBankButton.connect("clicked(bool)", self.onBuildBank)
        self.ui.loadBankButton.connect("clicked(bool)", self.onLoadBank)
        self.ui.scoreButton.connect("clicked(bool)", self.onScore)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlot)
        self.ui.previousCopyButton.connect("clicked(bool)", lambda: self.onStepCopy(-1))
        self.ui.nextCopyButton.connect("clicked(bool)", lambda: self.onStepCopy(+1))
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.sideBySideButton.connect("toggled(bool)", self.onSideBySideToggled)
        # One signal for a row: a click (activated would call again on the same click).
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onTableRowClicked)

        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.initializeParameterNode()
        self._updateBankStatus()
        self._showResult(None)

    def cleanup(self):
        # The module is going away (Slicer closing): stop the worker and all it started,
        # now, since no timer will poll it again.
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._job is not None:
            self._job.stop()
            self._job = None
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons
            )

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self.logic.resetForNewScene(slicer.mrmlScene)
        self._showResult(None)
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.syntheticVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.syntheticVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    # ---- state of the panel ----------------------------------------------------------------
    def busy(self):
        return self._job is not None

    def _updateButtons(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        idle = not self.busy()
        fromFolder = p.scoreInput == SCORE_FROM_FOLDER
        for widget in (
            self.ui.trainingFolderPathLineEdit,
            self.ui.bankFolderPathLineEdit,
            self.ui.checkpointPathLineEdit,
            self.ui.encoderComboBox,
            self.ui.deviceComboBox,
            self.ui.imageSizeSpinBox,
            self.ui.sliceAxisComboBox,
            self.ui.strideSpinBox,
            self.ui.scoreInputComboBox,
            self.ui.alphaSpinBox,
            # The results and their views change only when no job is writing them.
            self.ui.overlayOpacitySliderWidget,
            self.ui.sideBySideButton,
            self.ui.showPlotButton,
            self.ui.resultsTableView,
        ):
            widget.enabled = idle
        self.ui.syntheticVolumeSelector.enabled = idle and not fromFolder
        self.ui.syntheticFolderPathLineEdit.enabled = idle and fromFolder
        canBuild = bool(_pathOrNone(p.trainingFolder) and _pathOrNone(p.bankFolder))
        self.ui.buildBankButton.enabled = idle and canBuild
        self.ui.buildBankButton.toolTip = (
            _("Encode the training scans into a new bank in the bank folder.")
            if canBuild
            else _("Choose a training folder and a bank folder first.")
        )
        self.ui.loadBankButton.enabled = idle and bool(_pathOrNone(p.bankFolder))
        hasInput = (
            bool(_pathOrNone(p.syntheticFolder)) if fromFolder else p.syntheticVolume is not None
        )
        canScore = self.logic.bank is not None and hasInput
        self.ui.scoreButton.enabled = idle and canScore
        self.ui.scoreButton.toolTip = (
            _("Score the synthetic volume(s) against the bank.")
            if canScore
            else _("Build or load a bank and choose what to score first.")
        )
        hasCopies = bool(self.logic.suspectedCopies())
        self.ui.previousCopyButton.enabled = idle and hasCopies
        self.ui.nextCopyButton.enabled = idle and hasCopies

    def _updateBankStatus(self):
        self.ui.bankStatusLabel.text = self.logic.bankDescription()

    def _showResult(self, result):
        """Fill the Results section: verdict of the current (or worst) volume, table, plot."""
        labels = (
            self.ui.volumeMILabel,
            self.ui.volumeONILabel,
            self.ui.fractionFlaggedLabel,
            self.ui.bestMatchLabel,
            self.ui.longestRunLabel,
            self.ui.volumePoseLabel,
        )
        if result is None:
            self.ui.verdictLabel.text = _("Nothing scored yet.")
            self.ui.datasetLabel.text = ""
            for label in labels:
                label.text = "-"
            self.ui.resultsTableView.setMRMLTableNode(None)
            self.ui.currentMatchLabel.text = ""
            self._updateButtons()
            return
        volumeName = None
        if self.logic.currentSliceIndex is not None:
            volumeName = result.slices[self.logic.currentSliceIndex]["volume"]
        summary = self.logic.volumeSummary(volumeName)
        verdictColor = "#c0392b" if summary["verdict"] == "COPY" else "#2e7d32"
        self.ui.verdictLabel.text = (
            f"<b style='color:{verdictColor}'>{summary['verdict']}</b> &mdash; "
            f"{shortName(summary['volume'])}"
        )
        self.ui.volumeMILabel.text = (
            f"{summary['mi']:.6f} (flagged at >= {1.0 - summary['alpha']:g})"
        )
        self.ui.volumeONILabel.text = f"{summary['oni']:+.3f}"
        self.ui.fractionFlaggedLabel.text = _("{percent} % of {count} slices").format(
            percent=f"{100.0 * summary['fractionFlagged']:.1f}", count=summary["nSlices"]
        )
        self.ui.bestMatchLabel.text = shortName(summary["matchVolume"])
        self.ui.bestMatchLabel.toolTip = summary["matchVolume"]
        self.ui.longestRunLabel.text = _("{count} consecutive slices").format(
            count=summary["longestRun"]
        )
        self.ui.volumePoseLabel.text = summary["volumePose"] or "-"
        s = result.summary
        note = _(" Untrained encoder: for testing only.") if s.get("untrained_encoder") else ""
        self.ui.datasetLabel.text = (
            _(
                "{volumes} of {nVolumes} volumes and {slices} of {nSlices} slices flagged "
                "(alpha {alpha})."
            ).format(
                volumes=s["n_volumes_flagged"],
                nVolumes=s["n_volumes"],
                slices=s["n_slices_flagged"],
                nSlices=s["n_slices"],
                alpha=f"{result.alpha:g}",
            )
            + note
        )
        tableNode = self.logic.sliceTableNode()
        if self.ui.resultsTableView.mrmlTableNode() != tableNode:
            self.ui.resultsTableView.setMRMLTableNode(tableNode)
        self._updateButtons()

    # ---- jobs in the child process ---------------------------------------------------------
    def startJob(self, start, onDone):
        """Start a job (start() returns it) after the dependency check; poll it with the
        timer and call onDone(value) when it succeeded. Returns the job, or None."""
        if self.busy() or not self.logic.ensureDependencies():
            return None
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start the work."), waitCursor=True):
                job = start()
        except Exception:
            return None
        self._job, self._onJobDone = job, onDone
        self.ui.statusLabel.text = job.title
        self.ui.progressBar.minimum = 0
        self.ui.progressBar.maximum = 0  # busy until the first progress line
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.enabled = True
        self.ui.cancelButton.show()
        self._updateButtons()
        self._pollTimer.start()
        return job

    def pollJob(self):
        """The timer's slot: show the child's progress; when it ended, show the outcome."""
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        state = job.poll()
        stage, done, total = job.progress
        self.ui.progressBar.maximum = max(int(total), 0)
        self.ui.progressBar.value = min(int(done), max(int(total), 0))
        if state == RUNNING:
            if not self.ui.cancelButton.enabled:
                return  # keep "Stopping..." on the status line
            self.ui.statusLabel.text = job.statusText()
            return
        self._pollTimer.stop()
        self._job, onDone = None, self._onJobDone
        self._onJobDone = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        try:
            self._showOutcome(job, state, onDone)
        finally:
            self._updateButtons()  # Build, Load and Score come back whatever happened

    def _showOutcome(self, job, state, onDone):
        if state == SUCCEEDED:
            if job.child.cancelRequested:
                text = _("{title}: done (it had finished before Cancel could stop it).")
            else:
                text = _("{title}: done.")
            self.ui.statusLabel.text = text.format(title=job.title)
            if onDone is not None:
                try:
                    # tryWithErrorDisplay shows the error, then raises it again: a timer slot
                    # must not let it escape.
                    with slicer.util.tryWithErrorDisplay(_("Could not show the results.")):
                        onDone(job.value)
                except Exception:
                    logging.error("MemorizationIndex: showing the results failed", exc_info=True)
                    self.ui.statusLabel.text = _(
                        "{title}: done, but the results could not be shown."
                    ).format(title=job.title)
        elif state == CANCELLED:
            self.ui.statusLabel.text = _("{title}: cancelled.").format(title=job.title)
        else:
            self.ui.statusLabel.text = _("{title}: failed.").format(title=job.title)
            exc = job.exception
            logging.error("%s failed: %s\n%s", job.title, exc, getattr(exc, "workerLog", ""))
            slicer.util.errorDisplay(
                _("{title} failed: {message}").format(title=job.title, message=exc),
                detailedText=getattr(exc, "workerLog", "") or None,
            )

    def onCancel(self):
        if self._job is not None:
            self._job.cancel()
            self.ui.cancelButton.enabled = False
            self.ui.statusLabel.text = _("Stopping...")

    # ---- buttons ---------------------------------------------------------------------------
    def onBuildBank(self):
        p = self._parameterNode

        def start():
            return self.logic.startBuildBank(
                _pathOrNone(p.trainingFolder),
                _pathOrNone(p.bankFolder),
                imageSize=_imageSizeOrNone(p.imageSize),
                axis=p.sliceAxis,
                stride=p.stride,
                checkpoint=_pathOrNone(p.checkpointFile),
                device=p.device,
                encoder=_encoderOrNone(p.encoder),
            )

        return self.startJob(start, lambda bank: self._bankLoaded(bank))

    def _bankLoaded(self, bank):
        if bank is not None:
            self._parameterNode.imageSize = bank.image_size
            self._parameterNode.sliceAxis = bank.axis
            self._parameterNode.encoder = bank.encoder_choice
        self._updateBankStatus()
        self._updateButtons()

    def onLoadBank(self):
        if self.busy() or not self.logic.ensureDependencies():
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not load the bank."), waitCursor=True):
                bank = self.logic.loadBank(_pathOrNone(self._parameterNode.bankFolder))
        except Exception:
            bank = None
        self._bankLoaded(bank)

    def onScore(self):
        p = self._parameterNode
        options = {
            "alpha": p.alpha,
            "checkpoint": _pathOrNone(p.checkpointFile),
            "device": p.device,
        }

        def start():
            if p.scoreInput == SCORE_FROM_FOLDER:
                return self.logic.startScoreFolder(_pathOrNone(p.syntheticFolder), **options)
            return self.logic.startScoreVolumes([p.syntheticVolume], **options)

        return self.startJob(start, self._scored)

    def _scored(self, result):
        self._showResult(result)
        copies = self.logic.suspectedCopies()
        if copies:
            self.showSlice(copies[0])
        elif self.logic.tableRows:
            self.showSlice(self.logic.tableRows[0])

    def showSlice(self, sliceIndex):
        """Show one result slice over its match and select its table row."""
        p = self._parameterNode
        try:
            with slicer.util.tryWithErrorDisplay(
                _("Could not show the nearest training match."), waitCursor=True
            ):
                self.logic.showMatch(
                    sliceIndex,
                    opacity=p.overlayOpacity,
                    compareViewName="Yellow" if p.sideBySide else None,
                )
        except Exception:
            return
        row = self.logic.result.slices[sliceIndex]
        self.ui.currentMatchLabel.text = (
            f"{shortName(row['volume'])} slice {row['slice_index']}  \u2192  "
            f"{shortName(row['match_volume'])} slice {row['match_slice']} "
            f"(view {row['transform']}; MI {row['mi']:.6f})"
        )
        self._showResult(self.logic.result)
        view = self.ui.resultsTableView
        sourceIndex = view.tableModel().index(self.logic.modelRowOfSliceIndex(sliceIndex), 0)
        view.selectRow(view.sortFilterProxyModel().mapFromSource(sourceIndex).row())

    def onTableRowClicked(self, index):
        if self.busy() or self.logic.result is None or not index.isValid():
            return
        # The view shows the table model through a sort/filter proxy model.
        sourceIndex = self.ui.resultsTableView.sortFilterProxyModel().mapToSource(index)
        sliceIndex = self.logic.sliceIndexOfModelRow(sourceIndex.row())
        if sliceIndex is not None:
            self.showSlice(sliceIndex)

    def onStepCopy(self, step):
        if self.busy():
            return
        copies = self.logic.suspectedCopies()
        if not copies:
            self.ui.statusLabel.text = _("No slice is flagged as a copy.")
            return
        current = self.logic.currentSliceIndex
        position = copies.index(current) + step if current in copies else 0
        self.showSlice(copies[position % len(copies)])

    def onOpacityChanged(self, value):
        if self.busy():
            return
        if not self._parameterNode or not self._parameterNode.sideBySide:
            self.logic.setOverlayOpacity(value)

    def onSideBySideToggled(self, sideBySide):
        if self.busy():
            return
        try:
            with slicer.util.tryWithErrorDisplay(
                _("Could not change the layout."), waitCursor=True
            ):
                self.logic.setCompareLayout(sideBySide)
                if not sideBySide:
                    self.logic.setOverlayOpacity(self._parameterNode.overlayOpacity)
        except Exception:
            logging.debug("MemorizationIndex: the layout did not change", exc_info=True)

    def onShowPlot(self):
        chartNode = self.logic.plotChartNode()
        if chartNode is None:
            slicer.util.errorDisplay(_("Score a volume first: there is no plot yet."))
            return
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)


#
# MemorizationIndexLogic
#


class MemorizationIndexLogic(ScriptedLoadableModuleLogic, MemorizationIndexSceneLogic):
    """The module's logic on slicer.mrmlScene; usable from Slicer's Python console.

    Example::

        import MemorizationIndex
        logic = MemorizationIndex.MemorizationIndexLogic()
        logic.buildBank("/data/train", "/data/bank")          # or logic.loadBank("/data/bank")
        result = logic.scoreVolume(slicer.util.getNode("synthetic_001"))
        logic.showMatch(logic.suspectedCopies()[0], opacity=0.5)

    buildBank and the score calls run the work in a child process and wait for it; the
    start... calls return the job at once. All methods besides those below come from
    MemorizationIndexSlicer.logic.MemorizationIndexSceneLogic.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        MemorizationIndexSceneLogic.__init__(self, slicer.mrmlScene, slicer.app.applicationLogic())

    def getParameterNode(self):
        return MemorizationIndexParameterNode(super().getParameterNode())

    def missingDependencies(self):
        """Names of the engine's packages that are missing here ("torch" when PyTorch is
        missing or older than the engine needs)."""
        return dependencies.missingDependencies()

    def ensureDependencies(self):
        """Install the engine's Python packages on first use, after asking once (PyTorch
        through the PyTorch extension). Returns True when everything is there."""
        return dependencies.ensureDependencies(self.resourcePath("requirements.txt"))

    def resourcePath(self, relativePath):
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)


#
# MemorizationIndexTest
#


class MemorizationIndexTest(ScriptedLoadableModuleTest):
    """Runs the whole pipeline inside Slicer on data it makes: build, score, table, overlay.

    Reload and Test calls runTest() directly, so a missing dependency is reported and the
    test returns (a skip would show as a failure there).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MemorizationIndexCopiedSlice()

    def test_MemorizationIndexCopiedSlice(self):
        """A synthetic volume holding (flipped) training slices is flagged and overlaid."""
        self.delayDisplay("Starting the test")
        logic = MemorizationIndexLogic()
        missing = logic.missingDependencies()
        if missing:
            self.delayDisplay(
                "Not run: the engine's Python packages are not installed ("
                + ", ".join(missing)
                + "). Click Build bank or Score once to install them, then run the test again."
            )
            return
        import numpy as np
        import SimpleITK as sitk

        tempDir = Path(slicer.util.tempDirectory("MemorizationIndexTest"))
        (tempDir / "train").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        shape = (12, 40, 48)
        z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
        head = ((y - 21) / 17) ** 2 + ((x - 22) / 18) ** 2 <= 1.0 + 0.1 * np.cos(z / 12 * np.pi)

        def headLikeScan():
            """Smooth random texture inside an off-centre ellipse, zero outside."""
            texture = rng.normal(size=shape).cumsum(1).cumsum(2).astype(np.float32)
            texture += 1.5 * (texture.max() - texture.min()) - texture.min()
            return np.where(head, texture, 0.0).astype(np.float32)

        training = []
        for i in range(3):
            voxels = headLikeScan()
            image = sitk.GetImageFromArray(voxels)
            image.SetSpacing((1.0, 1.2, 2.0))
            sitk.WriteImage(image, str(tempDir / "train" / f"train-{i}.nii.gz"))
            training.append(voxels)
        settings = {
            "image_size": 32,
            "layers": [1],
            "flips": ["none", "hflip"],
            "null_max_slices": 100,
        }
        stages = []
        bank = logic.buildBank(
            str(tempDir / "train"),
            str(tempDir / "bank"),
            settings=settings,
            device="cpu",
            progress=lambda stage, done, total: stages.append(stage),
        )
        self.assertEqual(len(bank.volumes), 3)
        self.assertTrue(stages, "the child process reported no progress")
        self.delayDisplay("Built the bank in a child process")

        synthetic = headLikeScan()
        for k in range(-2, 4):  # slices 3-8 copy training slices 5-10, left-right flipped
            synthetic[5 + k] = training[1][7 + k][:, ::-1]
        ijkToRAS = np.diag([-1.0, -1.2, 2.0, 1.0])  # the training files' LPS grid, in RAS
        volumeNode = slicer.util.addVolumeFromArray(synthetic, ijkToRAS, name="synthetic")
        result = logic.scoreVolume(volumeNode, device="cpu")
        copied = next(r for r in result.slices if r["slice_index"] == 5)
        self.assertTrue(copied["flagged"])
        self.assertEqual(copied["match_slice"], 7)
        self.assertEqual(copied["transform"], "hflip")
        self.assertTrue(result.volumes[0]["flagged"])
        self.assertIn(result.slices[logic.tableRows[0]]["slice_index"], range(3, 9))
        tableNode = slicer.util.getNode("MemorizationIndex slices")
        self.assertEqual(tableNode.GetNumberOfRows(), len(result.slices))
        # Model row k of the table view is table row k, the k-th most suspicious slice.
        self.assertTrue(tableNode.GetUseColumnTitleAsColumnHeader())
        self.assertEqual(logic.sliceIndexOfModelRow(0), logic.tableRows[0])
        self.delayDisplay("Scored the synthetic volume in a child process")

        _, matchNode, transformNode = logic.showMatch(copied, opacity=0.5)
        composite = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetBackgroundVolumeID(), volumeNode.GetID())
        self.assertEqual(composite.GetForegroundVolumeID(), matchNode.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.5)
        self.assertEqual(matchNode.GetTransformNodeID(), transformNode.GetID())
        # The transform mirrors left-right (the copy was flipped): negative determinant.
        matrix = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToParent(matrix)
        self.assertLess(matrix.Determinant(), 0.0)
        logic.setOverlayOpacity(1.0)
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 1.0)
        self.delayDisplay("Test passed")
