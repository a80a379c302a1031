"""The panel's .ui file against the module code, without Qt: parse both.

Slicer loads the .ui with slicer.util.loadUI and binds it to the parameter node through each
widget's "SlicerParameterName" property, so a renamed widget or a parameter without a widget
breaks the panel only inside Slicer. These checks find that here.
"""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI_FILE = ROOT / "MemorizationIndex" / "Resources" / "UI" / "MemorizationIndex.ui"
MODULE_FILE = ROOT / "MemorizationIndex" / "MemorizationIndex.py"

# Which widget classes Slicer's parameter node wrapper connects to which parameter types
# (Slicer docs, "GUI Connection": available connectors).
CONNECTORS = {
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "str": {"QComboBox", "ctkComboBox", "QLineEdit"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
    # Optional[Path]: the module's own OptionalPathLineEditConnector (an unset path shows
    # empty, where Slicer's Path connector shows ".")
    "OptionalPath": {"ctkPathLineEdit"},
}


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def widgets(ui):
    return {w.get("name"): w for w in ui.iter("widget")}


def string_property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            node = prop.find("string")
            return node.text if node is not None else None
    return None


def parameter_fields(module_ast):
    """name -> (type name, Annotated extras) of the @parameterNodeWrapper class's fields."""
    for node in module_ast.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            fields = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    annotation = item.annotation
                    extras = []
                    if (
                        isinstance(annotation, ast.Subscript)
                        and getattr(annotation.value, "id", "") == "Annotated"
                    ):
                        elements = annotation.slice.elts
                        annotation, extras = elements[0], elements[1:]
                    fields[item.target.id] = (ast.unparse(annotation), extras)
            return fields
    raise AssertionError("no @parameterNodeWrapper class in the module")


def test_ui_is_a_slicer_module_panel(ui):
    assert ui.tag == "ui" and ui.find("class").text == "MemorizationIndex"
    top = ui.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MemorizationIndex"
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_only_qt_ctk_and_slicer_classes_are_used(ui):
    custom = {c.find("class").text: c for c in ui.iter("customwidget")}
    for widget in ui.iter("widget"):
        cls = widget.get("class")
        assert cls.startswith(("Q", "ctk", "qMRML", "qSlicer")), cls
        if not cls.startswith("Q"):
            assert cls in custom, f"{cls} is not declared in <customwidgets>"
            assert custom[cls].find("header").text == f"{cls}.h"
    for layout in ui.iter("layout"):
        assert layout.get("class").startswith("Q"), layout.get("class")


def test_every_widget_the_module_names_exists(ui, module_ast):
    named = {
        node.attr
        for node in ast.walk(module_ast)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert len(named) > 20
    missing = named - set(widgets(ui))
    assert not missing, f"the module uses widgets the .ui lacks: {sorted(missing)}"


def test_every_parameter_is_bound_to_one_fitting_widget(ui, module_ast):
    fields = parameter_fields(module_ast)
    bound = {}
    for widget in widgets(ui).values():
        parameter = string_property(widget, "SlicerParameterName")
        if parameter is not None:
            assert parameter not in bound, f"{parameter} is bound twice"
            bound[parameter] = widget
    assert set(bound) == set(fields), set(fields) ^ set(bound)
    for name, (type_name, extras) in fields.items():
        cls = bound[name].get("class")
        kind = "node" if type_name.startswith("vtkMRML") else type_name
        assert cls in CONNECTORS[kind], f"{name}: {type_name} cannot bind to {cls}"
        if cls == "QComboBox":  # Slicer fills a combo box only from a Choice validator
            assert any(ast.unparse(e).startswith("Choice(") for e in extras), name
        if cls == "QPushButton":
            assert any(
                p.get("name") == "checkable" and p.find("bool").text == "true"
                for p in bound[name].findall("property")
            ), f"{name}: a push button binds to a bool only when checkable"


def test_numeric_widget_ranges_agree_with_the_parameter_ranges(ui, module_ast):
    fields = parameter_fields(module_ast)
    for widget in widgets(ui).values():
        parameter = string_property(widget, "SlicerParameterName")
        if parameter is None:
            continue
        for extra in fields[parameter][1]:
            text = ast.unparse(extra)
            if not text.startswith("WithinRange("):
                continue
            low, high = (ast.literal_eval(a) for a in extra.args)
            values = {
                p.get("name"): float(p[0].text)
                for p in widget.findall("property")
                if p.get("name") in ("minimum", "maximum")
            }
            assert values == {"minimum": low, "maximum": high}, parameter


def test_mrml_widgets_receive_the_scene(ui):
    receivers = {
        c.find("receiver").text
        for c in ui.iter("connection")
        if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"
    }
    needing = {n for n, w in widgets(ui).items() if w.get("class").startswith("qMRML")}
    needing.discard("MemorizationIndex")
    assert needing and needing <= receivers


def test_the_panel_has_the_four_sections_of_the_workflow(ui):
    sections = [
        string_property(w, "text")
        for w in ui.iter("widget")
        if w.get("class") == "ctkCollapsibleButton"
    ]
    assert sections == ["Training bank", "Score", "Results", "Inspect"]
