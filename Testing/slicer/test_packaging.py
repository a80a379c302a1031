"""Extension packaging: CMake lists, ExtensionsIndex entry, icons, requirements, boundaries.

Slicer installs only what the module's CMakeLists.txt lists, so an engine file missing there
breaks the extension only after it is built and installed; these checks find it here.
"""

import ast
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MemorizationIndex"
CATALOG_ENTRY = ROOT / "Resources" / "ExtensionsIndex" / "MemorizationIndex.json"
# Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json
CATALOG_SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
CATALOG_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "build_subdirectory",
    "enabled",
    "tier",
}
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
SHIPS_WITH_SLICER = {"numpy", "simpleitk", "scipy"}
FROM_THE_PYTORCH_EXTENSION = {"torch"}
GLUE = MODULE / "MemorizationIndexSlicer"


def cmake_list(text, variable):
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return match.group(1).split()


def cmake_value(text, variable):
    match = re.search(rf'set\({variable}\s+"([^"]*)"\)', text)
    assert match, variable
    return match.group(1)


@pytest.fixture(scope="module")
def module_cmake():
    return (
        (MODULE / "CMakeLists.txt")
        .read_text(encoding="utf-8")
        .replace("${MODULE_NAME}", "MemorizationIndex")
    )


@pytest.fixture(scope="module")
def extension_cmake():
    return (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")


def test_the_module_file_is_the_only_python_file_in_the_module_folder():
    """Slicer (qSlicerScriptedLoadableModuleFactory) loads every .py file directly in a
    scripted module's folder as a module: helpers live in packages below it."""
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["MemorizationIndex.py"]
    assert (GLUE / "__init__.py").is_file()


def test_module_cmake_lists_every_engine_file_and_module_script(module_cmake):
    listed = cmake_list(module_cmake, "MODULE_PYTHON_SCRIPTS")
    on_disk = {
        p.relative_to(MODULE).as_posix()
        for package in ("MemorizationIndexLib", "MemorizationIndexSlicer")
        for p in (MODULE / package).rglob("*.py")
    } | {"MemorizationIndex.py"}
    assert len(listed) == len(set(listed))
    assert set(listed) == on_disk, {
        "not listed": sorted(on_disk - set(listed)),
        "listed but missing": sorted(set(listed) - on_disk),
    }


def test_module_cmake_lists_every_resource(module_cmake):
    listed = set(cmake_list(module_cmake, "MODULE_PYTHON_RESOURCES"))
    on_disk = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert listed == on_disk
    assert "slicerMacroBuildScriptedModule(" in module_cmake
    assert "slicer_add_python_unittest(SCRIPT MemorizationIndex.py)" in module_cmake


def test_extension_metadata_is_complete_and_points_at_real_files(extension_cmake):
    assert re.search(r"^project\(MemorizationIndex\)", extension_cmake, re.M)
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL"):
        assert cmake_value(extension_cmake, f"EXTENSION_{variable}").strip(), variable
    homepage = cmake_value(extension_cmake, "EXTENSION_HOMEPAGE")
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = [cmake_value(extension_cmake, "EXTENSION_ICONURL")]
    urls += cmake_value(extension_cmake, "EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(raw), url
        path = ROOT / url[len(raw) :]
        assert path.is_file(), path
        assert png_size(path)
    assert "add_subdirectory(MemorizationIndex)" in extension_cmake
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in extension_cmake
    assert "include(${Slicer_EXTENSION_CPACK})" in extension_cmake


def test_catalog_entry_follows_the_extensions_index_schema(extension_cmake):
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    assert set(entry) <= CATALOG_KEYS and CATALOG_REQUIRED <= set(entry)
    assert entry["$schema"] == CATALOG_SCHEMA
    assert entry["category"] == cmake_value(extension_cmake, "EXTENSION_CATEGORY")
    depends = cmake_value(extension_cmake, "EXTENSION_DEPENDS").split()
    assert entry.get("build_dependencies", []) == ([] if depends == ["NA"] else depends)
    homepage = cmake_value(extension_cmake, "EXTENSION_HOMEPAGE")
    assert entry["scm_url"].removesuffix(".git") == homepage
    assert entry.get("scm_type", "git") in ("git", "local")
    assert entry.get("tier", 5) in (1, 3, 5)
    assert isinstance(entry.get("enabled", True), bool)
    assert entry.get("build_subdirectory", ".") == "."


# The ExtensionsIndex's own checks (Slicer/ExtensionsIndex at 07f1d1b2, run on this entry with
# its scripts; README, "Checking a real Slicer"), restated here so a change that would fail
# them fails first here. Only what needs no network: the index also asks GitHub whether the
# repository carries the "3d-slicer-extension" topic, and downloads the icon and screenshots.
INDEX_CATEGORY = "Quantification"  # one of the index's accepted categories
REPOSITORY_SIZE_LIMIT = 100 * 1024 * 1024  # the index refuses a larger checkout


def catalog_text():
    """The entry's text exactly as stored (bytes decoded, no newline translation)."""
    return CATALOG_ENTRY.read_bytes().decode("utf-8")


def index_formatting(entry):
    """The entry as the index's formatter writes it: two-space indent, every non-empty array
    one item per line, keys in the order given, a final newline (all of the index's entries
    are exactly this)."""
    return json.dumps(entry, indent=2, ensure_ascii=False) + "\n"


def test_catalog_entry_is_formatted_as_the_index_requires():
    text = catalog_text()
    assert "\r" not in text and "\t" not in text
    assert text == index_formatting(json.loads(text)), (
        "reformat Resources/ExtensionsIndex/MemorizationIndex.json to:\n"
        + index_formatting(json.loads(text))
    )


def repository_name(scm_url):
    path = scm_url.strip().rstrip("/").split("://", 1)[-1]
    return path.rsplit("/", 1)[-1].removesuffix(".git")


def test_repository_name_starts_with_slicer_and_extension_name_does_not(extension_cmake):
    entry = json.loads(catalog_text())
    assert repository_name(entry["scm_url"]).startswith("Slicer"), entry["scm_url"]
    # The extension is named by the entry's file name, and project() must give the same name.
    extension = CATALOG_ENTRY.stem
    assert not extension.lower().startswith("slicer")
    assert re.search(rf"^project\(\s*{extension}\s*\)", extension_cmake, re.M)


def test_catalog_entry_passes_the_index_offline_checks(extension_cmake):
    entry = json.loads(catalog_text())
    assert entry["category"] == INDEX_CATEGORY
    scheme, _, rest = entry["scm_url"].partition("://")
    assert rest and scheme in ("git", "https"), entry["scm_url"]
    assert cmake_value(extension_cmake, "EXTENSION_ICONURL").startswith("http")
    assert all(
        u.startswith("http")
        for u in cmake_value(extension_cmake, "EXTENSION_SCREENSHOTURLS").split()
    )
    assert (ROOT / "LICENSE").is_file()


def test_repository_checkout_is_below_the_index_size_limit():
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed.decode("utf-8").split("\0") if name]
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total < REPOSITORY_SIZE_LIMIT / 2, f"{total / 2**20:.1f} MiB tracked"


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_icons_are_real_128_pixel_pngs():
    assert png_size(MODULE / "Resources" / "Icons" / "MemorizationIndex.png") == (128, 128)
    assert png_size(ROOT / "Resources" / "MemorizationIndex.png") == (128, 128)


def requirement_name(line):
    return re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower()


def test_requirements_agree_with_the_engines_dependencies():
    lines = [
        line.strip()
        for line in (MODULE / "Resources" / "requirements.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        if line.strip() and not line.startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    engine = {requirement_name(d): d.replace(" ", "") for d in project}
    listed = {requirement_name(line): line.replace(" ", "") for line in lines}
    # torch comes from the PyTorch extension only: pip_ensure would install a CPU build
    # over the user's CUDA build.
    assert set(listed) == set(engine) - SHIPS_WITH_SLICER - FROM_THE_PYTORCH_EXTENSION
    for name, spec in listed.items():
        assert spec == engine[name], name
    # The module checks for each of them by its import name before installing anything,
    # and asks for the same torch the engine needs.
    tree = ast.parse((GLUE / "dependencies.py").read_text(encoding="utf-8"))
    assigned = {
        n.targets[0].id: n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
    }
    imports = ast.literal_eval(assigned["PIP_IMPORTS"])
    assert {requirement_name(r): r for r in imports.values()} == listed
    torch = ast.literal_eval(assigned["MINIMUM_TORCH"])
    assert engine["torch"] == f"torch>={torch}"


def top_level_imports(path):
    names = set()
    for node in ast.parse(Path(path).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_heavy_is_imported_when_slicer_loads_the_module():
    """Slicer imports the module at start-up: no engine, torch or faiss there (installed
    later, on first use), and the MRML glue must not need Qt."""
    heavy = {"MemorizationIndexLib", "torch", "faiss", "scipy", "tqdm", "SimpleITK"}
    assert not top_level_imports(MODULE / "MemorizationIndex.py") & heavy
    for path in GLUE.glob("*.py"):
        assert not top_level_imports(path) & (heavy | {"qt", "ctk"}), path.name


def test_engine_calls_of_the_slicer_side_are_in_one_file():
    """engine.py is the one place to re-point when the engine's names move."""
    importers = set()
    for path in [MODULE / "MemorizationIndex.py", *GLUE.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "MemorizationIndexLib" for n in names):
                importers.add(path.name)
    assert importers == {"engine.py"}


def test_the_child_process_imports_only_the_standard_library_at_top_level():
    """process.py starts before the engine is imported, in the child and in the panel."""
    assert top_level_imports(GLUE / "process.py") <= set(sys.stdlib_module_names) | {"__future__"}


def test_minimum_slicer_is_5_10_everywhere(extension_cmake):
    assert re.search(r'set\(MemorizationIndex_MINIMUM_SLICER_VERSION "5\.10"\)', extension_cmake)
    assert "find_package(Slicer ${MemorizationIndex_MINIMUM_SLICER_VERSION} REQUIRED)" in (
        extension_cmake
    )
    assert "5.10 or newer" in cmake_value(extension_cmake, "EXTENSION_DESCRIPTION")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Slicer 5.10 or newer" in readme
    assert not re.search(r"5\.[4-8] or newer", readme)
    assert "5.10" in (MODULE / "MemorizationIndex.py").read_text(encoding="utf-8")


def test_no_code_path_for_a_slicer_that_does_not_exist():
    for path in [MODULE / "MemorizationIndex.py", *GLUE.glob("*.py")]:
        assert "pydeps" not in path.read_text(encoding="utf-8"), path


def test_contributors_name_one_organisation(extension_cmake):
    module = ast.parse((MODULE / "MemorizationIndex.py").read_text(encoding="utf-8"))
    contributors = next(
        ast.literal_eval(n.value)
        for n in module.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CONTRIBUTORS"
    )
    authors = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "authors"
    ]
    organisation = authors[0]["name"]
    assert "developers" not in organisation
    assert all(c.startswith(organisation) for c in contributors)
    assert cmake_value(extension_cmake, "EXTENSION_CONTRIBUTORS") == ", ".join(contributors)


def test_the_engine_never_imports_slicer_or_qt_at_top_level():
    for path in (MODULE / "MemorizationIndexLib").rglob("*.py"):
        assert not top_level_imports(path) & {"slicer", "qt", "ctk", "vtk"}, path.name


def test_module_file_has_the_four_slicer_classes():
    tree = ast.parse((MODULE / "MemorizationIndex.py").read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: {ast.unparse(b) for b in c.bases} for name, c in classes.items()}
    assert "ScriptedLoadableModule" in bases["MemorizationIndex"]
    assert "ScriptedLoadableModuleWidget" in bases["MemorizationIndexWidget"]
    assert {"ScriptedLoadableModuleLogic", "MemorizationIndexSceneLogic"} <= bases[
        "MemorizationIndexLogic"
    ]
    assert "ScriptedLoadableModuleTest" in bases["MemorizationIndexTest"]
    test_methods = {
        n.name for n in classes["MemorizationIndexTest"].body if isinstance(n, ast.FunctionDef)
    }
    assert {"setUp", "runTest"} <= test_methods
    assert any(m.startswith("test_") for m in test_methods)
