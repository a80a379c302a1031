"""The README's console example runs for real, on a slicer-core scene, with the logic only."""

import ast
import re
from pathlib import Path

import console_example
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
from slicer_test_helpers import (
    add_volume,
    synthetic_with_copy,
    tiny_bank_settings,
    tiny_encoder_config,
)

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"


def readme_section() -> str:
    """The README's "In 3D Slicer" section, up to the next top-level heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## In 3D Slicer")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_console_example_builds_scores_and_overlays(training_set, scene_and_app, tmp_path, capsys):
    scene, app = scene_and_app
    logic = MemorizationIndexSceneLogic(scene, app)
    synthetic = add_volume(scene, synthetic_with_copy(training_set, flip=True), "synth-01")
    result = console_example.consoleExample(
        logic,
        training_set.folder,
        tmp_path / "bank",
        synthetic,
        settings=tiny_bank_settings(),
        encoderConfig=tiny_encoder_config(),
        device="cpu",
    )
    assert (tmp_path / "bank" / "manifest.json").is_file()
    assert result.volumes[0]["flagged"]
    printed = capsys.readouterr().out
    assert "synth-01: COPY" in printed
    assert re.search(r"slice \d+: MI \S+ -> \S+train-1\.nii\.gz slice \d+ \(view hflip\)", printed)
    assert logic.sliceTableNode().GetNumberOfRows() == len(result.slices)
    assert logic.plotChartNode().GetNumberOfPlotSeriesNodes() == 2
    red = logic.sliceCompositeNode("Red")
    assert red.GetBackgroundVolumeID() == synthetic.GetID()
    match = scene.GetNodeByID(red.GetForegroundVolumeID())
    assert match.GetAttribute("MemorizationIndex.Source").endswith("train-1.nii.gz")
    assert red.GetForegroundOpacity() == 1.0


def python_blocks(markdown):
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def logic_calls(source):
    return {
        node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "logic"
    }


def test_readme_console_example_is_the_tested_one():
    """The README shows the same logic calls the tested example makes, and only real ones."""
    blocks = python_blocks(readme_section())
    assert blocks, "the README section has no python example"
    shown = set().union(*(logic_calls(b) for b in blocks))
    module = ast.parse(Path(console_example.__file__).read_text(encoding="utf-8"))
    function = next(n for n in module.body if getattr(n, "name", "") == "consoleExample")
    tested = logic_calls(ast.unparse(function))
    assert tested <= shown, tested - shown
    for name in shown:
        assert callable(getattr(MemorizationIndexSceneLogic, name, None)), name
    assert any("MemorizationIndex.MemorizationIndexLogic()" in b for b in blocks)


def test_readme_pictures_exist():
    text = readme_section()
    root = HERE.parents[1]
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {Path(p).name for p in pictures} >= {"synthetic.png", "match.png", "blend.png"}
    for picture in pictures:
        assert (root / picture).is_file(), picture
