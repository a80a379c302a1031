"""MemorizationIndex: find training scans leaking out of a generative MRI model, in 3D Slicer.

The panel (Resources/UI/MemorizationIndex.ui) is bound to a parameter node; the work is
done by MemorizationIndexLogic, which is MemorizationIndexSceneLogic (the MRML glue, also
usable outside Slicer) on slicer.mrmlScene, plus first-use installation of the engine's
Python dependencies. The engine itself (MemorizationIndexLib) is imported only when used.
"""

import logging
import os
import traceback
from pathlib import Path
from typing import Annotated

import slicer
import vtk
from MemorizationIndexSceneLogic import MemorizationIndexSceneLogic, shortName
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ["auto", "cpu", "cuda", "mps"]
AXES = ["axial", "coronal", "sagittal"]
SCORE_FROM_VOLUME = "volume in the scene"
SCORE_FROM_FOLDER = "folder of volumes"
# Python packages the engine imports, by import name -> pip requirement name.
ENGINE_IMPORTS = {"torch": "torch", "faiss": "faiss-cpu", "scipy": "scipy", "tqdm": "tqdm"}


#
# MemorizationIndex
#


class MemorizationIndex(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Memorization Index"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["MemorizationIndex developers"]
        self.parent.helpText = """
Audit a generative MRI model for training-data leakage. Build a feature bank from the
training scans with the MRI foundation model MRI-CORE, score synthetic volumes with a
calibrated Memorization Index (MI, in [0, 1]; a slice is flagged when MI >= 1 - alpha) and the
Overfit/Novelty Index (ONI, negative = copy-like), and inspect each suspected copy over its
nearest training slice. The module's logic can be scripted from the Python console; see the
"In 3D Slicer" section of the project README.
"""
        self.parent.acknowledgementText = """
Method after Deo et al., "A Calibrated Memorization Index (MI) for Detecting Training Data
Leakage in Generative MRI Models" (arXiv 2602.13066), with volume-level calibration and
geometry-robust matching. MRI-CORE weights by the Mazurowski lab (Duke University).
"""


#
# MemorizationIndexParameterNode
#


@parameterNodeWrapper
class MemorizationIndexParameterNode:
    """The panel's settings; each is bound to the widget whose SlicerParameterName names it."""

    trainingFolder: Path
    checkpointFile: Path
    bankFolder: Path
    device: Annotated[str, Choice(DEVICES)] = "auto"
    imageSize: Annotated[int, WithinRange(16, 1024)] = 224
    sliceAxis: Annotated[str, Choice(AXES)] = "axial"
    stride: Annotated[int, WithinRange(1, 64)] = 1
    scoreInput: Annotated[str, Choice([SCORE_FROM_VOLUME, SCORE_FROM_FOLDER])] = SCORE_FROM_VOLUME
    syntheticVolume: vtkMRMLScalarVolumeNode
    syntheticFolder: Path
    alpha: Annotated[float, WithinRange(0.0001, 0.5)] = 0.01
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    sideBySide: bool = False


def _pathOrNone(path):
    """A path from the panel, or None when the field is empty (an empty Path reads '.')."""
    text = str(path) if path is not None else ""
    return None if text in ("", ".") else text


#
# MemorizationIndexWidget
#


class MemorizationIndexWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires the .ui to the parameter node and calls the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._busy = False
        self._cancelRequested = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MemorizationIndex.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MemorizationIndexLogic()

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
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onTableRowActivated)
        self.ui.resultsTableView.connect("activated(QModelIndex)", self.onTableRowActivated)

        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.initializeParameterNode()
        self._updateBankStatus()
        self._showResult(None)

    def cleanup(self):
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

    # ---- state of the panel ----------------------------------------------------------
    def _updateButtons(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        idle = not self._busy
        fromFolder = p.scoreInput == SCORE_FROM_FOLDER
        self.ui.syntheticVolumeSelector.setEnabled(not fromFolder)
        self.ui.syntheticFolderPathLineEdit.setEnabled(fromFolder)
        canBuild = bool(_pathOrNone(p.trainingFolder) and _pathOrNone(p.bankFolder))
        self.ui.buildBankButton.enabled = idle and canBuild
        self.ui.buildBankButton.toolTip = (
            "Encode the training scans into a new bank in the bank folder."
            if canBuild
            else "Choose a training folder and a bank folder first."
        )
        self.ui.loadBankButton.enabled = idle and bool(_pathOrNone(p.bankFolder))
        hasInput = (
            bool(_pathOrNone(p.syntheticFolder)) if fromFolder else p.syntheticVolume is not None
        )
        canScore = self.logic.bank is not None and hasInput
        self.ui.scoreButton.enabled = idle and canScore
        self.ui.scoreButton.toolTip = (
            "Score the synthetic volume(s) against the bank."
            if canScore
            else "Build or load a bank and choose what to score first."
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
        )
        if result is None:
            self.ui.verdictLabel.text = "Nothing scored yet."
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
        self.ui.fractionFlaggedLabel.text = (
            f"{100.0 * summary['fractionFlagged']:.1f} % of {summary['nSlices']} slices"
        )
        self.ui.bestMatchLabel.text = shortName(summary["matchVolume"])
        self.ui.bestMatchLabel.toolTip = summary["matchVolume"]
        self.ui.longestRunLabel.text = f"{summary['longestRun']} consecutive slices"
        s = result.summary
        note = " Untrained encoder: for testing only." if s.get("untrained_encoder") else ""
        self.ui.datasetLabel.text = (
            f"{s['n_volumes_flagged']} of {s['n_volumes']} volumes and {s['n_slices_flagged']} of "
            f"{s['n_slices']} slices flagged (alpha {result.alpha:g}).{note}"
        )
        self.ui.resultsTableView.setMRMLTableNode(self.logic.sliceTableNode())
        self._updateButtons()

    # ---- long work ---------------------------------------------------------------------
    def _progress(self, stage, done, total):
        """Engine progress callback: update the bar and keep Slicer responsive."""
        self.ui.statusLabel.text = f"{stage}: {done} of {total}" if total else stage
        self.ui.progressBar.maximum = max(int(total), 0)
        self.ui.progressBar.value = int(done)
        slicer.app.processEvents()

    def _cancel(self):
        slicer.app.processEvents()
        return self._cancelRequested

    def onCancel(self):
        self._cancelRequested = True
        self.ui.statusLabel.text = "Stopping..."

    def _runLong(self, title, work):
        """Run work() with progress, Cancel and errors shown as Slicer does; returns its result."""
        if self._busy:
            return None
        if not self.logic.ensureDependencies():
            return None
        self._busy = True
        self._cancelRequested = False
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.statusLabel.text = title
        self._updateButtons()
        slicer.app.processEvents()
        try:
            from MemorizationIndexLib.errors import CancelledError, MemorizationIndexError

            try:
                value = work()
            except CancelledError:
                self.ui.statusLabel.text = f"{title}: cancelled."
                return None
            except MemorizationIndexError as exc:
                self.ui.statusLabel.text = f"{title}: failed."
                slicer.util.errorDisplay(str(exc), detailedText=traceback.format_exc())
                return None
            self.ui.statusLabel.text = f"{title}: done."
            return value
        except Exception as exc:
            self.ui.statusLabel.text = f"{title}: failed."
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(f"{title} failed: {exc}", detailedText=traceback.format_exc())
            return None
        finally:
            self._busy = False
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self._updateButtons()

    # ---- buttons -----------------------------------------------------------------------
    def onBuildBank(self):
        p = self._parameterNode

        def work():
            return self.logic.buildBank(
                _pathOrNone(p.trainingFolder),
                _pathOrNone(p.bankFolder),
                imageSize=p.imageSize,
                axis=p.sliceAxis,
                stride=p.stride,
                checkpoint=_pathOrNone(p.checkpointFile),
                device=p.device,
                progress=self._progress,
                cancel=self._cancel,
            )

        self._runLong("Building the bank", work)
        self._updateBankStatus()

    def onLoadBank(self):
        def work():
            return self.logic.loadBank(_pathOrNone(self._parameterNode.bankFolder))

        bank = self._runLong("Loading the bank", work)
        if bank is not None:
            p = self._parameterNode
            p.imageSize = bank.settings.image_size
            p.sliceAxis = bank.settings.axis
        self._updateBankStatus()

    def onScore(self):
        p = self._parameterNode
        common = {
            "alpha": p.alpha,
            "checkpoint": _pathOrNone(p.checkpointFile),
            "device": p.device,
            "progress": self._progress,
            "cancel": self._cancel,
        }

        def work():
            if p.scoreInput == SCORE_FROM_FOLDER:
                return self.logic.scoreFolder(_pathOrNone(p.syntheticFolder), **common)
            return self.logic.scoreVolume(p.syntheticVolume, **common)

        result = self._runLong("Scoring", work)
        if result is None:
            return
        self._showResult(result)
        copies = self.logic.suspectedCopies()
        if copies:
            self._showSlice(copies[0])
        elif self.logic.tableRows:
            self._showSlice(self.logic.tableRows[0])

    def _showSlice(self, sliceIndex):
        """Show one result slice over its match and select its table row."""
        p = self._parameterNode
        try:
            with slicer.util.tryWithErrorDisplay(
                "Could not show the nearest training match.", waitCursor=True
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
        self.ui.resultsTableView.selectRow(self.logic.tableRows.index(sliceIndex))

    def onTableRowActivated(self, index):
        if self._busy or self.logic.result is None or not index.isValid():
            return
        row = index.row()
        if 0 <= row < len(self.logic.tableRows):
            self._showSlice(self.logic.tableRows[row])

    def onStepCopy(self, step):
        if self._busy:
            return
        copies = self.logic.suspectedCopies()
        if not copies:
            self.ui.statusLabel.text = "No slice is flagged as a copy."
            return
        current = self.logic.currentSliceIndex
        position = copies.index(current) + step if current in copies else 0
        self._showSlice(copies[position % len(copies)])

    def onOpacityChanged(self, value):
        if not self._parameterNode or not self._parameterNode.sideBySide:
            self.logic.setOverlayOpacity(value)

    def onSideBySideToggled(self, sideBySide):
        try:
            with slicer.util.tryWithErrorDisplay("Could not change the layout.", waitCursor=True):
                self.logic.setCompareLayout(sideBySide)
                if not sideBySide:
                    self.logic.setOverlayOpacity(self._parameterNode.overlayOpacity)
        except Exception:
            logging.debug(traceback.format_exc())

    def onShowPlot(self):
        chartNode = self.logic.plotChartNode()
        if chartNode is None:
            slicer.util.errorDisplay("Score a volume first: there is no plot yet.")
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

    All methods besides those below come from MemorizationIndexSceneLogic.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        MemorizationIndexSceneLogic.__init__(self, slicer.mrmlScene, slicer.app.applicationLogic())

    def getParameterNode(self):
        return MemorizationIndexParameterNode(super().getParameterNode())

    def resetForNewScene(self, scene):
        """Forget nodes of a closed scene; the loaded bank stays."""
        self.scene = scene
        self.result = None
        self.tableRows = []
        self.currentSliceIndex = None
        self._syntheticNodeIDs = {}
        self._loadedNodeIDs = {}

    def missingDependencies(self):
        """pip names of the engine's packages that cannot be imported here."""
        import importlib.util

        return [
            pip
            for module, pip in ENGINE_IMPORTS.items()
            if importlib.util.find_spec(module) is None
        ]

    def ensureDependencies(self):
        """Install the engine's Python packages on first use, after the user agrees.

        torch through the PyTorch extension when it is installed (it picks the CUDA build),
        the rest from Resources/requirements.txt: with Slicer's pip_ensure (5.12+: it asks,
        shows progress and skips installing in testing) or, on older Slicer, after a
        confirmation with slicer.util.pip_install. Returns True when everything imports.
        """
        missing = self.missingDependencies()
        if not missing:
            return True
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if (
                    not torchLogic.torchInstalled()
                    and torchLogic.installTorch(askConfirmation=True) is None
                ):
                    slicer.util.errorDisplay(
                        "MemorizationIndex needs PyTorch, which was not installed. Install it "
                        "from the PyTorch Utils module and try again."
                    )
                    return False
        requirementsPath = self.resourcePath("requirements.txt")
        packaging = self._slicerPackaging()
        try:
            if packaging is not None:
                packaging.pip_ensure(
                    packaging.load_requirements(requirementsPath), requester="MemorizationIndex"
                )
            else:
                missing = self.missingDependencies()
                text = (
                    "MemorizationIndex needs these Python packages, which are not installed: "
                    + ", ".join(missing)
                    + ".\n\nInstall them now? This needs a network connection and may take minutes."
                )
                if not slicer.util.confirmOkCancelDisplay(text, "Install Python packages"):
                    return False
                slicer.util.pip_install(["-r", requirementsPath])
        except Exception as exc:
            slicer.util.errorDisplay(
                f"The Python packages MemorizationIndex needs could not be installed: {exc}",
                detailedText=traceback.format_exc(),
            )
            return False
        missing = self.missingDependencies()
        if missing:
            slicer.util.errorDisplay(
                "MemorizationIndex cannot run without these Python packages: "
                + ", ".join(missing)
                + f". Install them (see {requirementsPath}) and try again."
            )
            return False
        return True

    @staticmethod
    def _slicerPackaging():
        """Slicer's pip_ensure module (slicer.packaging; slicer.pydeps in early 5.11), or None."""
        import importlib

        for name in ("slicer.packaging", "slicer.pydeps"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "pip_ensure") and hasattr(module, "load_requirements"):
                return module
        return None

    def resourcePath(self, relativePath):
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)


#
# MemorizationIndexTest
#


class MemorizationIndexTest(ScriptedLoadableModuleTest):
    """Runs the logic on generated data inside Slicer: build, score, overlay."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MemorizationIndexCopiedSlice()

    def test_MemorizationIndexCopiedSlice(self):
        """A synthetic volume holding a (flipped) training slice is flagged and overlaid."""
        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Starting the test")
        logic = MemorizationIndexLogic()
        if logic.missingDependencies():
            self.skipTest("the engine's Python packages are not installed")
        from MemorizationIndexLib.bank.settings import BankSettings

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
        settings = BankSettings(
            image_size=32, layers=(1,), flips=("none", "hflip"), null_max_slices=100
        )
        bank = logic.buildBank(
            str(tempDir / "train"), str(tempDir / "bank"), settings=settings, device="cpu"
        )
        self.assertEqual(len(bank.volumes), 3)
        self.delayDisplay("Built the bank")

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
        self.delayDisplay("Scored the synthetic volume")

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
