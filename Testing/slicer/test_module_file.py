"""MemorizationIndex.py imported with stand-ins for what only the Slicer application has.

slicer-core has no ScriptedLoadableModule, parameter node wrapper or application, so these
are replaced by small fakes that record calls; the MRML scene and application logic are
real. This checks the module's wiring (module metadata, the logic on the application's
scene, the parameter node) and the first-use dependency install in each Slicer generation.
"""

import importlib
import sys
import types
import unittest
from pathlib import Path

import pytest
import slicer
from MemorizationIndexSceneLogic import MemorizationIndexSceneLogic, createSceneWithSliceViews
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

        def __init__(self, node):
            self.parameterNode = node

    Wrapper.__name__ = cls.__name__
    return Wrapper


class FakeApp:
    def __init__(self, app_logic):
        self._app_logic = app_logic

    def applicationLogic(self):
        return self._app_logic

    def testingEnabled(self):
        return True


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


def test_nothing_is_installed_when_everything_imports(module, monkeypatch):
    logic = module.MemorizationIndexLogic()
    assert logic.missingDependencies() == []  # this venv has the engine's packages
    monkeypatch.setattr(logic, "_slicerPackaging", lambda: pytest.fail("asked to install"))
    assert logic.ensureDependencies() is True


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, name, result=None):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result

        return record


def test_missing_packages_go_through_pip_ensure_on_current_slicer(module, monkeypatch):
    logic = module.MemorizationIndexLogic()
    missing = ["faiss-cpu"]
    monkeypatch.setattr(logic, "missingDependencies", lambda: list(missing))
    record = Recorder()
    packaging = types.SimpleNamespace(
        load_requirements=record("load_requirements", ["faiss-cpu>=1.8"]),
        pip_ensure=lambda *a, **k: (record("pip_ensure")(*a, **k), missing.clear()),
    )
    monkeypatch.setattr(logic, "_slicerPackaging", lambda: packaging)
    assert logic.ensureDependencies() is True
    (_, (path,), _), (_, (requirements,), options) = record.calls
    assert path == logic.resourcePath("requirements.txt")
    assert requirements == ["faiss-cpu>=1.8"] and options == {"requester": "MemorizationIndex"}


def test_older_slicer_asks_before_pip_install_and_respects_no(module, monkeypatch):
    logic = module.MemorizationIndexLogic()
    monkeypatch.setattr(logic, "missingDependencies", lambda: ["scipy"])
    monkeypatch.setattr(logic, "_slicerPackaging", lambda: None)
    record = Recorder()
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", record("confirm", False))
    monkeypatch.setattr(slicer.util, "pip_install", record("pip_install"))
    assert logic.ensureDependencies() is False
    assert [c[0] for c in record.calls] == ["confirm"]  # declined: nothing installed
    assert "scipy" in record.calls[0][1][0]


def test_torch_comes_from_the_pytorch_extension_when_it_is_there(module, monkeypatch):
    logic = module.MemorizationIndexLogic()
    missing = ["torch"]
    monkeypatch.setattr(logic, "missingDependencies", lambda: list(missing))
    record = Recorder()

    class FakePyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False):
            record("installTorch")(askConfirmation=askConfirmation)
            missing.clear()
            return object()

    monkeypatch.setitem(
        sys.modules,
        "PyTorchUtils",
        types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic),
    )
    packaging = types.SimpleNamespace(
        load_requirements=lambda path: [], pip_ensure=record("pip_ensure")
    )
    monkeypatch.setattr(logic, "_slicerPackaging", lambda: packaging)
    assert logic.ensureDependencies() is True
    assert record.calls[0] == ("installTorch", (), {"askConfirmation": True})


def test_slicer_packaging_module_is_found_by_either_name(module, monkeypatch):
    fake = types.ModuleType("slicer.packaging")
    fake.pip_ensure = lambda *a, **k: None
    fake.load_requirements = lambda path: []
    monkeypatch.setitem(sys.modules, "slicer.packaging", fake)
    assert module.MemorizationIndexLogic._slicerPackaging() is fake


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
