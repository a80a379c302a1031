"""Every call the Slicer side makes into the engine (MemorizationIndexLib), in one place.

The engine is imported inside these functions only: Slicer imports the module at start-up,
before the engine's packages (torch, faiss) may be installed, and the child process imports
this file before it knows which task it runs. When the engine's names move, this is the one
file to re-point.

Tasks run by the child process (see process.py) are JSON objects:

    {"task": "build", "training": folder, "bank": folder, "settings": {...BankSettings} or
     null for the defaults with "imageSize": null (the encoder's own), "axis": "axial",
     "stride": 1, "encoder": "mri-core" | "litemedsam" | "untrained" or null (MRI-CORE
     with a checkpoint, else LiteMedSAM when installed, else untrained),
     "encoderConfig": {...EncoderConfig} or null, "checkpoint": file or null,
     "device": "auto", "batchSize": 32}
    {"task": "score", "bank": folder, "volumes": [{"file": nrrd, "name": node name}, ...]
     or "folder": folder, "alpha": 0.01, "stride": null, "checkpoint": null, "encoder": null
     (the bank's own; another is refused), "device": "auto", "batchSize": 32,
     "resultFile": pickle file, "report": folder or null}
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pickle
from pathlib import Path


# ---- errors ---------------------------------------------------------------------------------
def errorsModule():
    from MemorizationIndexLib import errors

    return errors


def engineError(typeName, message):
    """An engine exception of the named class (a MemorizationIndexError), or None."""
    errors = errorsModule()
    cls = getattr(errors, str(typeName), None)
    if isinstance(cls, type) and issubclass(cls, errors.MemorizationIndexError):
        return cls(message)
    return None


def isEngineError(exc):
    return isinstance(exc, errorsModule().MemorizationIndexError)


def isCancelled(exc):
    return isinstance(exc, errorsModule().CancelledError)


def cancelledError(message="Stopped at the user's request; nothing was written."):
    return errorsModule().CancelledError(message)


def bankError(message):
    return errorsModule().BankError(message)


def inputError(message):
    return errorsModule().InputError(message)


# ---- settings -------------------------------------------------------------------------------
def bankSettings(
    imageSize=None, axis="axial", stride=1, settings=None, encoder=None, checkpoint=None
):
    """The engine's BankSettings: `settings` as given (object or dict), else the defaults
    with image size (None: the encoder's own), axis, stride and the encoder's kind changed
    (encoder: the --encoder choice, None to choose as the command line does)."""
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.encoding.choice import KIND_OF_CHOICE, choose_encoder

    if isinstance(settings, BankSettings):
        return settings
    if isinstance(settings, dict):
        return BankSettings.from_dict(settings)
    return BankSettings(
        image_size=int(imageSize) if imageSize else None,
        axis=axis,
        stride=int(stride),
        encoder_kind=KIND_OF_CHOICE[choose_encoder(encoder, checkpoint)],
    )


def settingsDict(settings):
    """Bank settings (a BankSettings, its dict, or None for the defaults) as the JSON the
    worker reads; never imports the engine's settings module (it imports torch)."""
    if settings is None or isinstance(settings, dict):
        return settings
    return settings.to_dict()


def encoderConfigDict(encoderConfig):
    """An EncoderConfig as JSON-able dict (None stays None)."""
    if encoderConfig is None or isinstance(encoderConfig, dict):
        return encoderConfig
    return dataclasses.asdict(encoderConfig)


def encoderConfigFrom(config):
    from MemorizationIndexLib.encoding.vit import EncoderConfig

    if config is None or isinstance(config, EncoderConfig):
        return config
    return EncoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


# ---- banks ----------------------------------------------------------------------------------
def volumePoseLPS(volumeRow):
    """4x4 LPS matrix of a volumes.csv row's stage-3 pose (training -> synthetic: rotation,
    shift, and the mirror, axis order and scale where the copy has them), or None when the
    row has no usable pose."""
    import numpy as np
    from MemorizationIndexLib.search.affine_pose import AffinePose

    try:
        matrix = AffinePose.from_summary(volumeRow).homogeneous()
    except (KeyError, TypeError, ValueError):
        return None
    return matrix if np.all(np.isfinite(matrix)) else None


def volumePoseText(volumeRow):
    """The volume stage's finding in words ("" without it), as the report writes it."""
    return volumeRow.pose_text()


def buildBank(
    trainingFolder,
    bankFolder,
    settings,
    checkpoint=None,
    device="auto",
    batchSize=32,
    encoderConfig=None,
    progress=None,
    cancel=None,
):
    from MemorizationIndexLib.bank.build import build_bank
    from MemorizationIndexLib.job import Job

    settings = bankSettings(settings=settings)
    encoder = settings.encoder(
        checkpoint or None, encoderConfigFrom(encoderConfig), device, int(batchSize)
    )
    return build_bank(trainingFolder, bankFolder, settings, encoder, Job(progress, cancel))


def loadBank(bankFolder):
    """A saved bank, loaded in full (BankError if the folder is not one). In the worker
    process only: it imports torch and faiss."""
    from MemorizationIndexLib.bank.feature_bank import FeatureBank

    return FeatureBank.load(bankFolder)


def bankSummary(bankFolder):
    """What Slicer's process knows of a bank: its manifest, read without torch or faiss
    (BankError if the folder is not a bank); the worker checks its files when it uses it."""
    from MemorizationIndexLib.bank.summary import read_bank_summary

    return read_bank_summary(bankFolder)


def childEnvironment(environ=None):
    """The environment of a worker process: this one's, plus the switch that lets torch's
    and faiss's OpenMP runtimes load side by side there (MemorizationIndexLib/openmp.py)."""
    from MemorizationIndexLib.openmp import allow_duplicate_runtimes

    environ = dict(os.environ if environ is None else environ)
    allow_duplicate_runtimes(environ)
    return environ


def partialOutputs(target):
    """Folders the engine's atomic writer is (or was) filling for `target`: what a killed
    child leaves behind. The writer names them ".<name>.partial-*" next to the target."""
    target = Path(target)
    pattern = os.path.join(
        glob.escape(str(target.parent)), f".{glob.escape(target.name)}.partial-*"
    )
    return set(glob.glob(pattern))


def recoverOutput(target):
    """After a killed child: put back an output it had moved aside mid-swap and remove what
    dead runs left half-written (the engine's own recovery of its output folders)."""
    from MemorizationIndexLib.atomic import recover_output

    recover_output(target)


def commitStarted():
    """Whether this (worker) process began putting a finished output in place; a Cancel
    after that point lets it finish (MemorizationIndexLib/atomic.py)."""
    from MemorizationIndexLib.atomic import commit_started

    return commit_started()


def processAlive(pid):
    """Whether a process exists (a check that is safe on Windows too)."""
    from MemorizationIndexLib.liveness import process_alive

    return process_alive(pid)


# ---- scans ----------------------------------------------------------------------------------
def readCanonicalImage(path, seriesUid=""):
    """A scan read by the engine's own reader: the SimpleITK image in its canonical (LPS)
    geometry, exactly the voxels the engine encodes."""
    from MemorizationIndexLib.scans import ReadOptions, ScanSource, read_scan

    volume = read_scan(
        ScanSource(path=str(path), series_uid=seriesUid or ""), ReadOptions(min_foreground=0.0)
    )
    return volume.image


def scanFromImage(image, name, axis, minForeground, stride=None):
    """The engine's view of an image: canonical slices along the bank's axis."""
    from MemorizationIndexLib.scans import ReadOptions, scan_from_image

    options = ReadOptions(axis=axis, stride=int(stride or 1), min_foreground=minForeground)
    return scan_from_image(image, name, options)


# ---- scoring --------------------------------------------------------------------------------
def score(
    bank,
    inputs,
    alpha=0.01,
    stride=None,
    checkpoint=None,
    device="auto",
    batchSize=32,
    progress=None,
    cancel=None,
    encoder=None,
):
    from MemorizationIndexLib.job import Job
    from MemorizationIndexLib.scoring.score import score as engineScore

    # load_encoder refuses a checkpoint or an --encoder choice that differs from the bank's.
    encoder = bank.load_encoder(checkpoint or None, device, int(batchSize), encoder or None)
    return engineScore(
        bank, inputs, encoder, alpha=float(alpha), stride=stride, job=Job(progress, cancel)
    )


def writeReport(result, bank, folder, inputs=()):
    """The HTML and CSV report, written in one step; `inputs` are never written over."""
    from MemorizationIndexLib.report.files import write_report

    return write_report(result, bank, folder, inputs=tuple(i for i in inputs if i))


def pngBytes(image):
    from MemorizationIndexLib.report.images import png_bytes

    return png_bytes(image)


# ---- the child process's tasks --------------------------------------------------------------
def runTask(task, progress=None, cancel=None):
    """Run one task (see the module docstring) and return a JSON-able summary of it."""
    kind = task.get("task")
    if kind == "build":
        settings = bankSettings(
            task.get("imageSize"),
            task.get("axis", "axial"),
            task.get("stride", 1),
            task.get("settings"),
            # a test's small ViT (encoderConfig) is the untrained ViT unless MRI-CORE is given
            task.get("encoder") or ("untrained" if task.get("encoderConfig") else None),
            task.get("checkpoint"),
        )
        bank = buildBank(
            task["training"],
            task["bank"],
            settings,
            checkpoint=task.get("checkpoint"),
            device=task.get("device", "auto"),
            batchSize=task.get("batchSize", 32),
            encoderConfig=task.get("encoderConfig"),
            progress=progress,
            cancel=cancel,
        )
        return {"bank": str(task["bank"]), "slices": len(bank), "volumes": len(bank.volumes)}
    if kind == "score":
        import SimpleITK as sitk

        bank = loadBank(task["bank"])
        if task.get("folder"):
            inputs = task["folder"]
        else:
            s = bank.settings
            inputs = [
                scanFromImage(
                    sitk.ReadImage(v["file"]),
                    v["name"],
                    s.axis,
                    s.min_foreground,
                    task.get("stride"),
                )
                for v in task["volumes"]
            ]
        result = score(
            bank,
            inputs,
            alpha=task.get("alpha", 0.01),
            stride=task.get("stride"),
            checkpoint=task.get("checkpoint"),
            device=task.get("device", "auto"),
            batchSize=task.get("batchSize", 32),
            progress=progress,
            cancel=cancel,
            encoder=task.get("encoder"),
        )
        if task.get("report"):
            writeReport(result, bank, task["report"], (task["bank"], task.get("folder")))
        resultFile = Path(task["resultFile"])
        partial = resultFile.with_name(resultFile.name + ".partial")
        # Without stage 2's per-slice alignment arrays (their class imports torch; the
        # slice rows carry the poses Slicer places matches by): Slicer loads this file.
        forSlicer = dataclasses.replace(result, alignment=None)
        with open(partial, "wb") as f:
            pickle.dump(forSlicer, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, resultFile)
        return {
            "resultFile": str(resultFile),
            "slices": len(result.slices),
            "volumes": len(result.volumes),
        }
    raise ValueError(f"Unknown task {kind!r}; expected 'build' or 'score'.")


def loadResult(resultFile):
    """The ScoreResult the child process pickled (same Python, same engine); loading it
    imports neither torch nor faiss."""
    with open(resultFile, "rb") as f:
        return pickle.load(f)
