"""What scans are made of before any pixel is read: sources, skipped inputs, slice provenance,
the volume type, the file suffixes the engine knows, and the reader's complaints in one
short clause."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")


DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
# Data files that belong to a header (.mhd, .nhdr, .hdr) next to them.


DATA_SUFFIXES = (".raw.gz", ".raw", ".zraw", ".img.gz", ".img")


FORMATS = "NIfTI, NRRD, MetaImage, DICOM; 2D: PNG, JPEG, TIFF, BMP, .npy, .npz"
STACK_SUFFIXES = (".npy", ".npz")  # NumPy stacks: each image an entry (images.py)

# What a ScanVolume holds: a volume, a 2D image with a physical pixel size (DICOM, NIfTI),
# or a 2D image whose pixel size is unknown (raster files and NumPy stacks: units are px).
VOLUME, IMAGE, IMAGE_PX = "volume", "image", "image-px"


@dataclass(frozen=True)
class ScanSource:
    """One volume to read: a file, a DICOM series (its folder, UID and files), or one image
    of a NumPy stack (the file, and its entry in series_uid: "[12]", "arr_0[12]")."""

    path: str
    series_uid: str = ""
    files: tuple[str, ...] = ()
    series_name: str = ""  # DICOM SeriesNumber and SeriesDescription, e.g. "3 T1 MPRAGE"

    @property
    def is_stack_entry(self) -> bool:
        """One image of a NumPy stack (series_uid holds its entry, e.g. "arr_0[12]")."""
        return bool(self.series_uid) and bool(suffix_in(self.path, STACK_SUFFIXES))

    @property
    def label(self) -> str:
        """How messages name this volume."""
        if self.is_stack_entry:
            return f"{self.path}:{self.series_uid}"
        if self.series_uid:
            name = f"{self.series_name} " if self.series_name else ""
            return f"DICOM series {name}({self.series_uid}) in {self.path}"
        return self.path


@dataclass(frozen=True)
class SkippedInput:
    """A file or series that was not used, and why (a sentence naming it)."""

    path: str
    reason: str


@dataclass(frozen=True)
class SliceInfo:
    """Provenance of one kept slice, so a match can be shown in its own scan."""

    volume: str
    series_uid: str
    slice_index: int
    position: tuple[float, float, float]


@dataclass
class ScanVolume:
    """The kept slices of one volume, in canonical display orientation, with provenance."""

    source: str
    series_uid: str
    slices: np.ndarray  # float32 [n, rows, cols]
    slice_indices: np.ndarray  # int64 [n], strictly increasing, along the axis
    positions: np.ndarray  # float64 [n, 3], LPS mm of each slice's centre pixel
    pixel_spacing: tuple[float, float]  # (row mm, col mm)
    n_total_slices: int
    warnings: list[str] = field(default_factory=list)
    image: sitk.Image | None = None  # canonical float32 3D image; may be dropped to save memory
    # Values outside these are outliers (hot voxels), left out of every intensity range.
    intensity_bounds: tuple[float, float] = (-np.inf, np.inf)
    series_name: str = ""  # DICOM SeriesNumber and SeriesDescription
    kind: str = VOLUME  # VOLUME, IMAGE or IMAGE_PX (a 2D image: one slice, no volume)

    @property
    def is_2d(self) -> bool:
        return self.kind != VOLUME

    def slice_infos(self) -> list[SliceInfo]:
        return slice_infos(self.source, self.series_uid, self.slice_indices, self.positions)

    def __len__(self) -> int:
        return int(len(self.slice_indices))


def suffix_in(name: str, suffixes: tuple[str, ...]) -> str:
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return suffix
    return ""


def stem(name: str, suffix: str) -> str:
    return name[: len(name) - len(suffix)] if suffix else name


def reader_reason(exc: BaseException) -> str:
    """The reader's complaint as one short clause (ITK messages span many lines)."""
    text = str(exc)
    if "Unable to determine ImageIO reader" in text:
        return (
            "no reader recognises its contents "
            "(damaged, truncated, or not the format its name says)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd:
        reason = nrrd[-1].removeprefix("[nrrd]").strip()
        head, sep, tail = reason.partition(": ")
        if sep and head.startswith("_nrrd"):
            reason = tail
    else:
        for line in lines:
            for marker in ("ITK ERROR:", "sitk::ERROR:"):
                if marker in line:
                    reason = line.split(marker, 1)[1].strip()
                    head, sep, tail = reason.partition("): ")
                    if sep and "(0x" in head:
                        reason = tail
                    break
    lower = text.lower()
    if "cannot read requested file" in lower or "file cannot be read" in lower:
        reason = "the file is truncated or damaged"
    elif "fread got only" in lower or "but received" in lower or "not read completely" in lower:
        reason = "the file is shorter than its header says (truncated?)"
    elif "does not fully contain the requested region" in lower:
        reason = "its slices do not all have the same size"
    reason = reason.rstrip(". ")
    return reason if len(reason) <= 200 else reason[:197] + "..."


def quietly(function):
    """Run a reading function without ITK's and numpy's own warnings on stderr.

    Whatever they would say that matters is reported by this module in words that name the
    file (volume warnings, SkippedInput); the raw lines only confuse. ITK's switch is global,
    so it is restored afterwards.
    """

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                return function(*args, **kwargs)
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)

    return quiet


def slice_infos(
    source: str, series_uid: str, slice_indices: np.ndarray, positions: np.ndarray
) -> list[SliceInfo]:
    """The SliceInfo of each kept slice of one volume."""
    return [
        SliceInfo(
            volume=source,
            series_uid=series_uid,
            slice_index=int(index),
            position=(float(p[0]), float(p[1]), float(p[2])),
        )
        for index, p in zip(slice_indices, positions, strict=True)
    ]
