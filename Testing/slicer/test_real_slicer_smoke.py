"""The real-Slicer smoke script cannot run here (no Slicer application); check what can be
checked without it: it parses, it is the one the README documents, and every panel widget,
widget method and logic method it uses exists."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "Testing" / "slicer" / "real_slicer_smoke.py"
MODULE_FILE = ROOT / "MemorizationIndex" / "MemorizationIndex.py"
UI_FILE = ROOT / "MemorizationIndex" / "Resources" / "UI" / "MemorizationIndex.ui"


def smoke_tree():
    return ast.parse(SMOKE.read_text(encoding="utf-8"))


def attributes_of(tree, owner):
    """Names used as <owner>.<name> and <owner>.ui.<name> in the script."""
    direct, ui = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == owner:
                direct.add(node.attr)
            if (
                isinstance(value, ast.Attribute)
                and value.attr == "ui"
                and isinstance(value.value, ast.Name)
                and value.value.id == owner
            ):
                ui.add(node.attr)
    return direct, ui


def test_the_readme_documents_the_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--python-script Testing/slicer/real_slicer_smoke.py" in readme
    assert "--no-main-window" in readme and "--additional-module-paths MemorizationIndex" in readme


def test_every_widget_and_method_the_script_uses_exists():
    tree = smoke_tree()
    direct, ui = attributes_of(tree, "widget")
    ui_names = {w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")}
    assert ui and ui <= ui_names, ui - ui_names
    module = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    widget_class = next(
        n for n in module.body if isinstance(n, ast.ClassDef) and n.name.endswith("Widget")
    )
    widget_members = {n.name for n in widget_class.body if isinstance(n, ast.FunctionDef)}
    widget_members |= {"ui", "logic", "_parameterNode", "_parameterNodeGuiTag"}
    assert direct <= widget_members, direct - widget_members
    logic_calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "logic"
    }
    logic_attributes = {"ensureDependencies", "missingDependencies"}
    for name in logic_calls - logic_attributes:
        assert callable(getattr(MemorizationIndexSceneLogic, name, None)), name


def test_every_check_the_issue_asks_for_is_there():
    names = [
        d.args[0].value
        for node in ast.walk(smoke_tree())
        if isinstance(node, ast.FunctionDef)
        for d in node.decorator_list
        if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "check"
    ]
    text = " ".join(names).lower()
    for topic in (
        "loads with no warning",
        "connectors",
        "dependency",
        "child process",
        "cancel",
        "failing child",
        "table row",
        "overlay",
        "side by side",
        "plot",
        "self-test",
    ):
        assert topic in text, topic
