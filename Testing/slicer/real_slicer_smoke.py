"""Smoke test of the MemorizationIndex module inside a real 3D Slicer (5.10 or newer).

The pytest suite runs the MRML glue on `slicer-core`, which has no application: this script
checks what only Slicer itself has. Run it from the repository root with the module folder
on Slicer's module paths:

    Slicer --no-main-window --additional-module-paths MemorizationIndex \\
           --python-script Testing/slicer/real_slicer_smoke.py

(without --no-main-window it runs the same in the main window). Every step, the ten checks
and the setup between them, runs under a deadline (smoke_steps.py, beside this file): it
prints a START line and a PASS, FAIL or SKIP line (a step that needs what a failed one would
have made is skipped), then one SUMMARY line, and exits with status 0 when every step
passed, 1 when one failed or was skipped, 2 when one hung: past its deadline (or the whole
script's, 2 hours) a watchdog prints "HUNG  <step> after N s", the Python stack of every
thread and the summary, and ends Slicer. With MEMORIZATION_INDEX_SMOKE_OUTPUT=file.json it
also writes the results there (rewritten as each step starts, so a killed run shows the
step that was running). Should a C++ call hold Python's lock so that no Python code can run,
Python's faulthandler prints every thread's stack a minute after the deadline and ends
Slicer with status 1; the step's START line names it. Checks:

 1. the module loaded, with no warning or error about it in the application log, and none
    of the package's files was taken for a module;
 2. the panel builds and each parameter-node connector binds both ways;
 3. the dependency flow: Slicer and Python versions, the PyTorch extension and the install
    calls the module makes, and the single question when something is missing;
 4. a bank builds through the panel in the child process: the progress bar and status line
    advance (whole numbers) while Slicer's event loop keeps running;
 5. Cancel stops a build, PythonSlicer and the python-real it started alike, and leaves no
    bank, not even a partial one;
 6. a failing child reaches Slicer's error dialog with its message and log;
 7. a volume scores through the panel in the child process and the results load;
 8. a click on table row k shows the k-th most suspicious slice;
 9. the overlay (opacity slider), side by side and the MI plot work;
10. the module's own self-test (Reload and Test) passes.

Nothing is installed: dialogs are answered by the script (a question with Cancel), so a
missing package makes the dependency check report it and the later checks fail.
"""

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import qt
import slicer
import vtk

# The step runner lies beside this script. Slicer runs --python-script with CTK's
# executeFile, which sets __file__ and puts the script's folder on sys.path while it runs;
# sys.argv[0] (Slicer sets it to the script too) covers an exec() without __file__.
HERE = Path(globals().get("__file__") or sys.argv[0]).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    from smoke_steps import CHECK, StepRunner, step
except ImportError:  # without its runner the script cannot run: still end Slicer
    slicer.util.exit(1)
    raise

MODULE = "MemorizationIndex"
PACKAGE_FILES = {
    "MemorizationIndexSceneLogic",
    "dependencies",
    "engine",
    "headless",
    "logic",
    "nodes",
    "placement",
    "process",
    "views",
    "volumes",
    "__init__",
}
SHAPE = (12, 40, 48)
SPACING = (1.0, 1.2, 2.0)
DIALOGS = []  # (kind, text, details) of every dialog the module opened
OVERALL_DEADLINE = 2 * 3600  # s, the whole script; each step has its own below
EXIT_DEADLINE = 120  # s for Slicer to end after slicer.util.exit


def check(name, deadline):
    """One of the ten checks: the StepRunner runs it under its deadline (s), records PASS or
    FAIL with the reason, and goes on with the next."""
    return step(name, deadline, kind=CHECK)


def spin(condition, timeout, what):
    """Run Slicer's event loop until condition() holds; return the longest gap (s) between
    two turns of the loop (a blocked GUI thread shows as a long gap)."""
    deadline = time.monotonic() + timeout
    last, longest = time.monotonic(), 0.0
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        slicer.app.processEvents()
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        time.sleep(0.02)
    return longest


@step("poll the deadlines from Slicer's event loop too", 30)
def pollFromEventLoop(runner):
    """PythonQt keeps Python's lock while the main thread is in Qt (a modal dialog's event
    loop, processEvents), which stops the watchdog thread; a timer of that event loop calls
    the same check."""
    timer = qt.QTimer()
    timer.setInterval(500)
    timer.connect("timeout()", runner.poll)
    timer.start()
    pollFromEventLoop.timer = timer


@step("answer the module's dialogs (questions with Cancel)", 30)
def answerDialogs():
    """Record the module's dialogs instead of showing them (a modal dialog would wait for a
    click forever): questions are answered with Cancel, so nothing is installed."""

    def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        DIALOGS.append(("error", str(text), str(kwargs.get("detailedText") or "")))
        print(f"      (error dialog) {text}", flush=True)

    def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
        DIALOGS.append(("question", str(text), ""))
        print(f"      (question, answered Cancel) {text}", flush=True)
        return False

    slicer.util.errorDisplay = errorDisplay
    slicer.util.confirmOkCancelDisplay = confirmOkCancelDisplay


def randomScan(rng):
    texture = rng.normal(size=SHAPE).cumsum(1).cumsum(2).astype(np.float32)
    texture -= texture.min()
    texture += 0.5 * texture.max()
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    inside = ((y - 0.52 * SHAPE[1]) / (0.42 * SHAPE[1])) ** 2 + (
        (x - 0.45 * SHAPE[2]) / (0.38 * SHAPE[2])
    ) ** 2 <= 1.0 + 0.1 * np.cos(z / SHAPE[0] * np.pi)
    return np.where(inside, texture, 0.0).astype(np.float32)


@step("make a temporary work folder", 60)
def makeWorkFolder():
    return Path(tempfile.mkdtemp(prefix="MemorizationIndexSmoke-"))


@step("remove the temporary work folder", 300)
def removeWorkFolder(work):
    shutil.rmtree(work)


@step("write the training set (6 NIfTI volumes)", 300)
def writeTrainingSet(work, n=6):
    import SimpleITK as sitk

    folder = work / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    volumes = []
    for i in range(n):
        voxels = randomScan(rng)
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing(SPACING)
        sitk.WriteImage(image, str(folder / f"train-{i}.nii.gz"))
        volumes.append(voxels)
    return volumes


@step("slice views: the main window's layout manager, or one made here", 120)
def ensureLayoutManager():
    """Slice views for the overlay checks: the main window's, or a layout manager made here
    (with --no-main-window Slicer has none; qSlicerMainWindow makes it the same way)."""
    if slicer.app.layoutManager() is None:
        frame = qt.QFrame()
        layoutManager = slicer.qSlicerLayoutManager(frame)
        layoutManager.setMRMLScene(slicer.mrmlScene)
        slicer.app.setLayoutManager(layoutManager)
        ensureLayoutManager.keep = (frame, layoutManager)
    slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    slicer.app.processEvents()
    assert slicer.app.layoutManager().sliceWidget("Red") is not None
    return slicer.app.layoutManager()


# ---- 1. module loading -----------------------------------------------------------------------


@check("1. the module loads with no warning, and only MemorizationIndex.py is a module", 120)
def checkModuleLoaded():
    assert hasattr(slicer.modules, MODULE.lower()), "the module is not loaded"
    module = getattr(slicer.modules, MODULE.lower())
    assert module.title == "Memorization Index", module.title
    assert Path(module.path).name == f"{MODULE}.py", module.path
    assert sorted(p.name for p in Path(module.path).parent.glob("*.py")) == [f"{MODULE}.py"]
    registered = set(slicer.app.moduleManager().factoryManager().registeredModuleNames())
    taken = registered & PACKAGE_FILES
    assert not taken, f"files of the package registered as modules: {sorted(taken)}"
    log = slicer.app.errorLogModel()
    entries = [log.logEntryDescription(i) for i in range(log.logEntryCount())]
    bad = [
        e
        for e in entries
        if MODULE in e and re.search(r"warning|error|fail|traceback|exception|assert", e, re.I)
    ]
    assert not bad, "log entries about the module:\n" + "\n".join(bad)


# ---- 2. the panel ----------------------------------------------------------------------------


@check("2. the panel builds and its parameter-node connectors bind both ways", 300)
def checkPanel():
    widget = slicer.util.getModuleWidget(MODULE)
    widget.enter()
    assert widget._parameterNodeGuiTag is not None, "connectGui did not run"
    p, ui = widget._parameterNode, widget.ui
    # float <-> ctkDoubleSpinBox (the connector that needs Slicer 5.8+)
    p.alpha = 0.05
    assert abs(ui.alphaSpinBox.value - 0.05) < 1e-9, ui.alphaSpinBox.value
    ui.alphaSpinBox.value = 0.02
    assert abs(p.alpha - 0.02) < 1e-9, p.alpha
    # float <-> ctkSliderWidget, int <-> QSpinBox, str <-> QComboBox, bool <-> QPushButton
    p.overlayOpacity = 0.3
    assert abs(ui.overlayOpacitySliderWidget.value - 0.3) < 1e-6
    p.imageSize = 32
    assert ui.imageSizeSpinBox.value == 32
    ui.strideSpinBox.value = 2
    assert p.stride == 2
    p.stride = 1
    p.device = "cpu"
    assert ui.deviceComboBox.currentText == "cpu"
    ui.sliceAxisComboBox.currentText = "coronal"
    assert p.sliceAxis == "coronal"
    p.sliceAxis = "axial"
    p.sideBySide = True
    assert ui.sideBySideButton.checked
    p.sideBySide = False
    # Path <-> ctkPathLineEdit, node <-> qMRMLNodeComboBox
    folder = Path(tempfile.gettempdir())
    p.trainingFolder = folder
    assert Path(ui.trainingFolderPathLineEdit.currentPath) == folder
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "connector-check")
    p.syntheticVolume = node
    assert ui.syntheticVolumeSelector.currentNode() == node
    slicer.mrmlScene.RemoveNode(node)
    return widget


# ---- 3. dependencies -------------------------------------------------------------------------


@check("3. dependency flow: versions, the PyTorch extension, one question when missing", 600)
def checkDependencies(widget):
    import inspect

    from MemorizationIndexSlicer import dependencies

    version = (slicer.app.majorVersion, slicer.app.minorVersion)
    assert version >= (5, 10), f"Slicer {version} is older than 5.10"
    assert sys.version_info >= (3, 10), sys.version
    import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)

    parameters = inspect.signature(PyTorchUtils.PyTorchUtilsLogic.installTorch).parameters
    assert {"askConfirmation", "torchVersionRequirement"} <= set(parameters), list(parameters)
    packaging = dependencies.slicerPackaging()
    if version >= (5, 12):
        assert packaging is not None, "Slicer 5.12+ has slicer.packaging.pip_ensure"
        assert "prompt_install" in inspect.signature(packaging.pip_ensure).parameters
    else:
        assert packaging is None and callable(slicer.util.pip_install)
    missing = widget.logic.missingDependencies()
    before = len(DIALOGS)
    ready = widget.logic.ensureDependencies()
    asked = DIALOGS[before:]
    if not missing:
        assert ready and not asked, asked
        return True
    # Missing: one question (answered Cancel here), or one error naming the extension.
    assert not ready and len(asked) == 1, asked
    raise AssertionError(
        f"missing {missing}: click Build bank in the panel once and answer Yes, then run "
        "this script again (the remaining checks need the engine's packages)"
    )


# ---- 4-7. jobs through the panel -------------------------------------------------------------


def runPanelJob(widget, start, timeout=900):
    """Start a job from a panel button and run Slicer's event loop until it ends; return
    (longest event-loop gap, status lines seen, largest progress maximum seen)."""
    job = start()
    assert job is not None, "the panel did not start the job"
    assert widget.busy() and not widget.ui.buildBankButton.enabled
    assert not widget.ui.overlayOpacitySliderWidget.enabled  # views locked while it runs
    statuses, maxima = [], []

    def done():
        statuses.append(widget.ui.statusLabel.text)
        maxima.append(widget.ui.progressBar.maximum)
        return not widget.busy()

    gap = spin(done, timeout, "the job to end")
    return gap, statuses, max(maxima)


@check("4. a bank builds in the child process; progress shows while Slicer stays responsive", 1200)
def checkBuild(widget, work):
    p = widget._parameterNode
    p.trainingFolder = work / "train"
    p.bankFolder = work / "bank"
    p.imageSize = 32
    p.stride = 1
    p.device = "cpu"
    gap, statuses, maximum = runPanelJob(widget, widget.onBuildBank)
    final = widget.ui.statusLabel.text
    assert final.endswith("done."), f"{final} (dialogs: {DIALOGS[-1:]})"
    assert widget.logic.bank is not None and (work / "bank" / "manifest.json").is_file()
    counts = [s for s in statuses if re.search(r": \d+ of \d+$", s)]
    assert counts, f"no progress counts shown: {sorted(set(statuses))[:10]}"
    assert not [s for s in statuses if re.search(r"\d\.\d+ of", s)], "fractional progress"
    assert maximum > 0, "the progress bar never had a maximum"
    assert gap < 1.0, f"Slicer's event loop stalled for {gap:.2f} s"
    assert "slices" in widget.ui.bankStatusLabel.text


@check("5. Cancel stops a build and every process of the worker, and leaves no bank", 600)
def checkCancel(widget, work):
    p = widget._parameterNode
    p.bankFolder = work / "cancelled-bank"
    job = widget.onBuildBank()
    assert job is not None
    spin(lambda: job.progress[0] != "", 300, "the first progress line")
    group = job.child.pid  # PythonSlicer leads the worker's process group; python-real is in it
    widget.onCancel()
    assert widget.ui.statusLabel.text == "Stopping..."
    spin(lambda: not widget.busy(), 60, "the cancelled child to end")
    assert widget.ui.statusLabel.text.endswith("cancelled."), widget.ui.statusLabel.text
    if os.name == "posix":  # PythonSlicer forwards no signal: python-real must be gone too
        spin(lambda: not workerGroupAlive(group), 5, "every process of the worker to end")
    time.sleep(2.0)  # a surviving python-real would swap its bank in about now
    leftovers = [
        x.name for x in work.iterdir() if x.name.startswith((".cancelled-bank", "cancelled-bank"))
    ]
    assert not leftovers, leftovers
    p.bankFolder = work / "bank"


def workerGroupAlive(group):
    """Whether any process of the worker's process group still runs (POSIX)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@check("6. a failing child reaches Slicer's error dialog with its message and log", 1200)
def checkFailure(widget, work):
    broken = work / "broken"
    broken.mkdir()
    (broken / "broken.nii.gz").write_bytes(b"not an image at all")
    p = widget._parameterNode
    p.scoreInput = "folder of volumes"
    p.syntheticFolder = broken
    before = len(DIALOGS)
    runPanelJob(widget, widget.onScore)
    errors = [d for d in DIALOGS[before:] if d[0] == "error"]
    assert len(errors) == 1, DIALOGS[before:]
    assert "None of the synthetic scans could be used" in errors[0][1], errors[0][1]
    assert "Traceback" in errors[0][2], "the dialog's details lack the child's log"
    assert widget.ui.statusLabel.text.endswith("failed.")


@check("7. a volume scores in the child process and its results load into the scene", 1200)
def checkScore(widget, training):
    synthetic = randomScan(np.random.default_rng(9))
    for k in range(-2, 4):  # slices 3-8 copy training slices 5-10 of volume 1, flipped
        synthetic[5 + k] = training[1][7 + k][:, ::-1]
    ijkToRAS = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    node = slicer.util.addVolumeFromArray(synthetic, ijkToRAS, name="synth-01")
    p = widget._parameterNode
    p.scoreInput = "volume in the scene"
    p.syntheticVolume = node
    p.alpha = 0.01
    runPanelJob(widget, widget.onScore)
    assert widget.ui.statusLabel.text.endswith("done."), widget.ui.statusLabel.text
    result = widget.logic.result
    assert result is not None and result.volumes[0]["flagged"], "the copy was not flagged"
    table = widget.logic.sliceTableNode()
    assert widget.ui.resultsTableView.mrmlTableNode() == table
    assert widget.ui.resultsTableView.model().rowCount() == len(result.slices)
    assert "COPY" in widget.ui.verdictLabel.text
    return node


# ---- 8-9. table, overlay, side by side, plot ---------------------------------------------------


@check("8. a click on table row k shows the k-th most suspicious slice", 120)
def checkTableClick(widget):
    view = widget.ui.resultsTableView
    model = view.model()
    headers = [model.headerData(c, qt.Qt.Horizontal) for c in range(model.columnCount())]
    sliceColumn, volumeColumn = headers.index("slice"), headers.index("volume")
    logic = widget.logic
    for k in sorted({0, 1, model.rowCount() - 1}):
        widget.onTableRowClicked(model.index(k, 0))  # the slot clicked(QModelIndex) calls
        shown = logic.result.slices[logic.currentSliceIndex]
        assert logic.currentSliceIndex == logic.tableRows[k], (k, logic.currentSliceIndex)
        assert model.data(model.index(k, sliceColumn)) == str(shown["slice_index"])
        assert model.data(model.index(k, volumeColumn)) == "synth-01"
        selected = [i.row() for i in view.selectionModel().selectedRows()]
        assert selected == [k], selected
        assert f"slice {shown['slice_index']}" in widget.ui.currentMatchLabel.text


@check("9. overlay, side by side and the MI plot work", 300)
def checkViews(widget, syntheticNode):
    logic = widget.logic
    widget.onStepCopy(+1)
    layoutManager = slicer.app.layoutManager()
    red = layoutManager.sliceWidget("Red").mrmlSliceCompositeNode()
    assert red.GetBackgroundVolumeID() == syntheticNode.GetID()
    match = slicer.mrmlScene.GetNodeByID(red.GetForegroundVolumeID())
    assert match is not None and match.GetAttribute("MemorizationIndex.Role") == "match"
    assert match.GetTransformNodeID() is not None
    widget.ui.overlayOpacitySliderWidget.value = 0.8
    assert abs(red.GetForegroundOpacity() - 0.8) < 1e-6, red.GetForegroundOpacity()
    # The Red view shows the synthetic volume's own plane.
    sliceToRAS = slicer.util.arrayFromVTKMatrix(
        layoutManager.sliceWidget("Red").mrmlSliceNode().GetSliceToRAS()
    )
    ijkToRAS = vtk.vtkMatrix4x4()
    syntheticNode.GetIJKToRASDirectionMatrix(ijkToRAS)
    kAxis = slicer.util.arrayFromVTKMatrix(ijkToRAS)[:3, 2]
    assert abs(abs(float(sliceToRAS[:3, 2] @ kAxis)) - 1.0) < 1e-6
    layoutNode = layoutManager.layoutLogic().GetLayoutNode()
    widget.ui.sideBySideButton.checked = True
    slicer.app.processEvents()
    assert layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    yellow = layoutManager.sliceWidget("Yellow").mrmlSliceCompositeNode()
    assert yellow.GetBackgroundVolumeID() == match.GetID()
    widget.ui.sideBySideButton.checked = False
    slicer.app.processEvents()
    assert layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    widget.onShowPlot()
    slicer.app.processEvents()
    chart = logic.plotChartNode()
    assert chart is not None and chart.GetNumberOfPlotSeriesNodes() >= 2
    plotWidget = layoutManager.plotWidget(0)
    assert plotWidget is not None
    assert plotWidget.mrmlPlotViewNode().GetPlotChartNodeID() == chart.GetID()


@check("10. the module's self-test (Reload and Test) passes", 1800)
def checkSelfTest():
    import MemorizationIndex

    test = MemorizationIndex.MemorizationIndexTest()
    test.delayDisplay = lambda message, msec=None: print(f"      (self-test) {message}")
    test.runTest()


def runChecks(runner):
    """Every step in order, each through the runner (a deadline each); a step given what a
    failed step did not make is skipped, naming that step."""
    runner.run(answerDialogs)
    runner.run(pollFromEventLoop, runner)
    runner.run(checkModuleLoaded)
    widget = runner.run(checkPanel)
    runner.run(checkDependencies, widget)
    layoutManager = runner.run(ensureLayoutManager)
    work = runner.run(makeWorkFolder)
    training = runner.run(writeTrainingSet, work)
    runner.run(checkBuild, widget, work, needs=(training,))
    runner.run(checkCancel, widget, work, needs=(training,))
    runner.run(checkFailure, widget, work)
    node = runner.run(checkScore, widget, training)
    runner.run(checkTableClick, widget, needs=(node,))
    runner.run(checkViews, widget, node, needs=(layoutManager,))
    runner.run(removeWorkFolder, work)
    runner.run(checkSelfTest)


def main():
    """Run the steps; the runner prints the summary, writes the results and calls
    slicer.util.exit in a finally (a hung step ends Slicer from the watchdog)."""
    runner = StepRunner(
        exit=slicer.util.exit,
        output=os.environ.get("MEMORIZATION_INDEX_SMOKE_OUTPUT"),
        overallDeadline=OVERALL_DEADLINE,
        exitDeadline=EXIT_DEADLINE,
        checkCount=10,
        extra=lambda: {"dialogs": DIALOGS},
    )
    runner.execute(runChecks)


main()
