"""Find and read MRI volumes, and cut them into canonically oriented 2D slices.

Training folders are messy: mixed formats, several DICOM series per folder, stray
files, the odd damaged scan. Discovery therefore reports every file it cannot use
(a `SkippedInput` with a sentence naming the file) instead of dropping it, and
reading one bad file never stops a folder of 500.

Every volume is reoriented to LPS (direction identity, array [z, y, x]), so slices
of a training scan and of a synthetic scan are compared in the same anatomical
frame whatever orientation each file was stored in. Slices are shown the way a
radiologist reads them: axial with anterior up and patient right on the left,
coronal and sagittal with superior up.
"""

from __future__ import annotations

import functools
import gzip
import math
import numbers
import os
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import InputError, SettingsError, unreachable_reason

AXES = ("axial", "coronal", "sagittal")

# Suffixes are matched on the lower-cased file name; longer ones first.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
# Data files that belong to a header (.mhd, .nhdr, .hdr) next to them.
DATA_SUFFIXES = (".raw.gz", ".raw", ".zraw", ".img.gz", ".img")
FORMATS = "NIfTI, NRRD, MetaImage, DICOM"
MIN_INPLANE = 16  # the encoder's patch size: a smaller slice cannot make one token
_CANONICAL = "LPS"
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_OBLIQUE_WARN_DEG = 1.0
_AXIS_OF = {"axial": 0, "coronal": 1, "sagittal": 2}  # array axis of [z, y, x]


@dataclass(frozen=True)
class ReadOptions:
    """How slices are taken from a volume; checked here so a bad value fails before any read."""

    axis: str = "axial"
    stride: int = 1  # keep the foreground slices whose index is a multiple of stride
    min_foreground: float = 0.05  # a slice with a smaller share of foreground pixels is background

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise SettingsError(
                f"ReadOptions.axis must be one of {', '.join(AXES)} (got {self.axis!r})."
            )
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)):
            raise SettingsError(f"ReadOptions.stride must be a whole number (got {self.stride!r}).")
        if self.stride < 1:
            raise SettingsError(f"ReadOptions.stride must be at least 1 (got {self.stride}).")
        share = self.min_foreground
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise SettingsError(
                "ReadOptions.min_foreground must be a fraction in [0, 1) "
                f"(got {self.min_foreground!r})."
            )


@dataclass(frozen=True)
class ScanSource:
    """One volume to read: a file, or a DICOM series (its folder, UID and files)."""

    path: str
    series_uid: str = ""
    files: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How messages name this volume."""
        if self.series_uid:
            return f"DICOM series {self.series_uid} in {self.path}"
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

    def slice_infos(self) -> list[SliceInfo]:
        return [
            SliceInfo(
                volume=self.source,
                series_uid=self.series_uid,
                slice_index=int(index),
                position=(float(p[0]), float(p[1]), float(p[2])),
            )
            for index, p in zip(self.slice_indices, self.positions, strict=True)
        ]

    def __len__(self) -> int:
        return int(len(self.slice_indices))


# --------------------------------------------------------------------------- discovery


def _suffix_in(name: str, suffixes: tuple[str, ...]) -> str:
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return suffix
    return ""


def _stem(name: str, suffix: str) -> str:
    return name[: len(name) - len(suffix)] if suffix else name


def _sniff_dicom(path: str) -> bool:
    """DICOM without a telling extension: the 'DICM' preamble, or an old preamble-less file."""
    if not os.path.isfile(path):  # never open a FIFO or device: it could block
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    # ACR-NEMA style: starts straight with a little-endian group 0008 (or 0002) element.
    name = os.path.basename(path)
    bare = "." not in name or name.rsplit(".", 1)[1].isdigit()
    return bare and len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3] == 0


def _not_volume_reason(path: str) -> str:
    name = os.path.basename(path)
    lower = name.lower()
    if lower == "dicomdir":
        return (
            f"{path} is a DICOMDIR index, not an image; the images it lists are read from "
            "their own files."
        )
    if _suffix_in(lower, (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")):
        return f"{path} is an archive; unpack it to have its scans read."
    if _suffix_in(lower, DATA_SUFFIXES):
        return (
            f"{path} is a raw data file, but no header next to it (.mhd, .nhdr or .hdr) "
            "names it, so its size and geometry are unknown."
        )
    return f"{path} is not a volume format MemorizationIndex reads ({FORMATS})."


def _header_data_files(path: str, suffix: str) -> set[str]:
    """File names a .mhd or .nhdr header points to (its voxel data)."""
    names: set[str] = set()
    try:
        with open(path, encoding="latin-1") as fh:
            text = fh.read(65536)
    except OSError:
        return names
    for line in text.splitlines():
        if suffix == ".mhd":
            key, sep, value = line.partition("=")
            if not sep or key.strip() != "ElementDataFile":
                continue
        else:
            key, sep, value = line.partition(":")
            if not sep or key.strip().lower() not in ("data file", "datafile"):
                continue
        value = value.strip()
        if value and value.upper() not in ("LOCAL", "LIST") and " " not in value:
            names.add(os.path.normcase(os.path.basename(value)))
        break
    return names


def _claimed_data_files(dirpath: str, names: list[str]) -> set[str]:
    """Names in one folder that are the data files of a header in the same folder."""
    claimed: set[str] = set()
    header_stems: set[str] = set()
    for name in names:
        suffix = _suffix_in(name, (".mhd", ".nhdr", ".hdr"))
        if not suffix:
            continue
        header_stems.add(os.path.normcase(_stem(name, suffix)))
        if suffix in (".mhd", ".nhdr"):
            claimed |= _header_data_files(os.path.join(dirpath, name), suffix)
    for name in names:
        suffix = _suffix_in(name, DATA_SUFFIXES)
        if suffix and os.path.normcase(_stem(name, suffix)) in header_stems:
            claimed.add(os.path.normcase(name))
    return {name for name in names if os.path.normcase(name) in claimed}


def _dicom_file_problem(path: str) -> str:
    """Why a file that looks like DICOM is in no series: damaged, or not an image."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return (
            f"{path} looks like a DICOM file but could not be read: {_reader_reason(exc)}; "
            "it was left out of its series."
        )
    return (
        f"{path} is a DICOM file that belongs to no image series (no pixel data or no "
        "series UID); it was not used."
    )


def _dicom_folder(
    dirpath: str, names: list[str], candidates: list[str]
) -> tuple[list[ScanSource], set[str], list[SkippedInput]]:
    """Group one folder's DICOM files per SeriesInstanceUID; report the files in no series."""
    joined = {name: os.path.join(dirpath, name) for name in names}
    sources: list[ScanSource] = []
    claimed: set[str] = set()
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
        found = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid)
        files = []
        for f in found:
            name = os.path.basename(f)
            claimed.add(name)
            files.append(joined.get(name, f))
        if files:
            sources.append(ScanSource(path=dirpath, series_uid=uid, files=tuple(files)))
    sources.sort(key=lambda s: (s.files[0], s.series_uid))
    skipped = [
        SkippedInput(joined[name], _dicom_file_problem(joined[name]))
        for name in candidates
        if name not in claimed
    ]
    return sources, claimed, skipped


def _single_dicom_source(path: str) -> ScanSource:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    uid = ""
    try:
        reader.ReadImageInformation()
        if reader.HasMetaDataKey("0020|000e"):
            uid = reader.GetMetaData("0020|000e").strip().rstrip("\x00")
    except RuntimeError:
        pass  # read_scan reports the damage with the reader's reason
    return ScanSource(path=path, series_uid=uid, files=(path,))


def _quietly(function):
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


def _check_root(root: str | os.PathLike) -> str:
    path = os.fspath(root)
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist{unreachable_reason(path)}.")
    return path


@_quietly
def find_scans(root: str | os.PathLike) -> tuple[list[ScanSource], list[SkippedInput]]:
    """Every readable volume under root (recursive, sorted), and every file that is not one.

    A root that is a single file yields that file. Data files of a header (.raw next to
    .mhd, .img next to .hdr) belong to their header and are not listed separately.
    """
    path = _check_root(root)
    if os.path.isfile(path):
        name = os.path.basename(path)
        if _suffix_in(name, VOLUME_SUFFIXES):
            return [ScanSource(path=path)], []
        if _suffix_in(name, DICOM_SUFFIXES) or _sniff_dicom(path):
            return [_single_dicom_source(path)], []
        folder = os.path.dirname(path) or "."
        if name in _claimed_data_files(folder, sorted(os.listdir(folder))):
            reason = f"{path} is the data file of a header next to it; open the header instead."
            return [], [SkippedInput(path, reason)]
        return [], [SkippedInput(path, _not_volume_reason(path))]

    sources: list[ScanSource] = []
    skipped: list[SkippedInput] = []
    seen_dirs: set[str] = set()

    def unlistable(err: OSError) -> None:
        where = err.filename or path
        skipped.append(SkippedInput(where, f"{where} could not be listed ({err.strerror})."))

    for dirpath, dirnames, filenames in os.walk(path, onerror=unlistable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a second link to a folder already read
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        names = sorted(filenames)
        data_files = _claimed_data_files(dirpath, names)
        volumes: list[str] = []
        dicom: list[str] = []
        others: list[str] = []
        for name in names:
            if name in data_files:
                continue
            full = os.path.join(dirpath, name)
            if _suffix_in(name, VOLUME_SUFFIXES):
                volumes.append(name)
            elif name.lower() == "dicomdir":
                others.append(name)  # an index of other files, not an image
            elif _suffix_in(name, DICOM_SUFFIXES) or (
                not _suffix_in(name, DATA_SUFFIXES) and _sniff_dicom(full)
            ):
                dicom.append(name)
            else:
                others.append(name)
        claimed: set[str] = set()
        if dicom:
            series, claimed, bad = _dicom_folder(dirpath, names, dicom)
            sources.extend(series)
            skipped.extend(bad)
        sources.extend(ScanSource(path=os.path.join(dirpath, n)) for n in volumes)
        skipped.extend(
            SkippedInput(full, _not_volume_reason(full))
            for full in (os.path.join(dirpath, n) for n in others if n not in claimed)
        )
    sources.sort(key=lambda s: (_path_key(s.path), s.files[:1], s.series_uid))
    skipped.sort(key=lambda s: _path_key(s.path))
    return sources, skipped


def _path_key(path: str) -> list[str]:
    """Sort by path components, so a folder's subfolders sort among its files by name."""
    return os.path.normpath(path).split(os.sep)


# --------------------------------------------------------------------------- reading


def _reader_reason(exc: BaseException) -> str:
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


def _nifti_layout(head: bytes) -> tuple[int, int] | None:
    """(voxel data offset, voxel data bytes) from a NIfTI-1/2 or Analyze header."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or not math.isfinite(offset) or offset < 0:
        return None
    shape = dims[1 : ndim + 1]
    if any(d <= 0 for d in shape):
        return None
    return int(offset), math.prod(shape) * bitpix // 8


def _gzip_length(path: str, expected: int) -> int:
    """Uncompressed length of a gzip file; the trailer answers without decompressing when it
    matches, a full pass settles any doubt (a truncated stream has no true trailer)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            if struct.unpack("<I", fh.read(4))[0] == expected % 2**32:
                return expected
    except OSError:
        return expected  # let the image reader report what is wrong
    total = 0
    stream = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):  # small input: deflate expands up to ~1000x
                while chunk:
                    total += len(stream.decompress(chunk))
                    chunk = b""
                    if stream.eof:  # another gzip member may follow
                        chunk, stream = stream.unused_data, zlib.decompressobj(wbits=31)
    except zlib.error:
        pass  # damaged from here on: total holds what is readable
    except OSError:
        return expected
    return total


def _nifti_truncation(path: str) -> str | None:
    """ITK fills a truncated NIfTI with zeros without a word; check the length ourselves."""
    lower = path.lower()
    gz = lower.endswith(".gz")
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as fh:
            head = fh.read(544)
    except (OSError, EOFError):
        return None  # not gzip or unreadable: the image reader says why
    layout = _nifti_layout(head)
    if layout is None:
        return None
    offset, nbytes = layout
    data_path = path
    if lower.endswith(".hdr"):
        data_path = path[:-4] + (".img" if path[-4:] == ".hdr" else ".IMG")
        if not os.path.exists(data_path):
            return None
    expected = offset + nbytes
    actual = _gzip_length(data_path, expected) if gz else os.path.getsize(data_path)
    if actual < expected:
        return (
            f"it is truncated (only {actual} of the {expected} bytes its header calls for "
            "are there)"
        )
    return None


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def _nifti_nonfinite(path: str) -> np.ndarray | None:
    """Where the first 3D volume of a float NIfTI file holds NaN or infinity, as [z, y, x].

    ITK's NIfTI reader silently turns NaN into 0, so a volume full of NaN would be read as
    "constant" and NaN holes as black: read the raw voxels once more to find them. None for
    files that are not float NIfTI-1/2 (their values cannot be NaN) or that cannot be read.
    """
    gz = path.lower().endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as fh:
            head = fh.read(544)
            for endian in "<>":
                size = struct.unpack(endian + "i", head[:4])[0]
                if size == 348:
                    dims = struct.unpack(endian + "8h", head[40:56])
                    code = struct.unpack(endian + "h", head[70:72])[0]
                    offset = int(struct.unpack(endian + "f", head[108:112])[0])
                    break
                if size == 540:
                    code = struct.unpack(endian + "h", head[12:14])[0]
                    dims = struct.unpack(endian + "8q", head[16:80])
                    offset = int(struct.unpack(endian + "q", head[168:176])[0])
                    break
            else:
                return None
            if code not in _NIFTI_FLOATS or dims[0] < 3:
                return None
            nx, ny, nz = dims[1:4]
            fh.seek(offset)
            dtype = np.dtype(endian + _NIFTI_FLOATS[code])
            raw = fh.read(nx * ny * nz * dtype.itemsize)
    except (OSError, EOFError, struct.error, ValueError):
        return None
    if len(raw) < nx * ny * nz * dtype.itemsize:
        return None
    values = np.frombuffer(raw, dtype=dtype).reshape(nz, ny, nx)
    bad = ~np.isfinite(values)
    return bad if bad.any() else None


def _with_nonfinite_restored(path: str, image: sitk.Image) -> sitk.Image:
    """Put back the NaN ITK's NIfTI reader turned into 0, so reading reports them."""
    bad = _nifti_nonfinite(path)
    if bad is None or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return image
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    if values.shape != bad.shape:
        return image
    values[bad] = np.nan
    restored = sitk.GetImageFromArray(values)
    restored.CopyInformation(image)
    return restored


def _read_file(path: str) -> sitk.Image:
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist or is not a file{unreachable_reason(path)}.")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path} cannot be read: permission denied.")
    if _suffix_in(path, (".nii", ".nii.gz", ".hdr")):
        problem = _nifti_truncation(path)
        if problem:
            raise InputError(f"{path} could not be read: {problem}.")
    suffix = _suffix_in(path, (".mhd", ".nhdr"))
    if suffix:
        folder = os.path.dirname(path)
        for name in _header_data_files(path, suffix):
            if not os.path.exists(os.path.join(folder, name)):
                raise InputError(
                    f"{path} could not be read: its data file {name} is missing next to it."
                )
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise InputError(f"{path} could not be read: {_reader_reason(exc)}.") from exc
    if _suffix_in(path, (".nii", ".nii.gz")):
        image = _with_nonfinite_restored(path, image)
    return image


def _series_files(source: ScanSource) -> tuple[str, ...]:
    """The files of a DICOM source given only as a folder (and maybe a UID)."""
    if source.files:
        return source.files
    if os.path.isfile(source.path):
        return (source.path,)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(source.path)
    if source.series_uid:
        if source.series_uid not in ids:
            raise InputError(f"{source.path} holds no DICOM series {source.series_uid}.")
        uid = source.series_uid
    elif len(ids) == 1:
        uid = ids[0]
    elif not ids:
        raise InputError(f"{source.path} holds no readable DICOM series.")
    else:
        raise InputError(
            f"{source.path} holds {len(ids)} DICOM series ({', '.join(ids)}); "
            "name one with series_uid, or use find_scans to list them all."
        )
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(source.path, uid))


def _execute_series(files: tuple[str, ...]) -> tuple[sitk.Image, sitk.ImageSeriesReader]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.SetImageIO("GDCMImageIO")
    reader.MetaDataDictionaryArrayUpdateOn()
    return reader.Execute(), reader


def _bad_dicom_files(files: tuple[str, ...]) -> dict[str, str]:
    """The files that break a series read: unreadable ones, then those whose image size
    differs from the rest, then (if still none) those whose pixels fail to load."""
    bad: dict[str, str] = {}
    shapes: dict[str, tuple] = {}
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            bad[f] = f"{f} could not be read as DICOM: {_reader_reason(exc)}."
            continue
        shapes[f] = (tuple(reader.GetSize()[:2]), reader.GetNumberOfComponents())
    if shapes:
        common, _ = Counter(shapes.values()).most_common(1)[0]
        for f, shape in shapes.items():
            if shape != common:
                size = "x".join(map(str, shape[0]))
                want = "x".join(map(str, common[0]))
                bad[f] = (
                    f"{f} does not fit its series: its image is {size} pixels with "
                    f"{shape[1]} component(s), the series' {want} with {common[1]}."
                )
    if not bad:
        for f in files:
            try:
                sitk.ReadImage(f, imageIO="GDCMImageIO")
            except RuntimeError as exc:
                bad[f] = f"{f} could not be read as DICOM: {_reader_reason(exc)}."
    return bad


def _spacing_warning(reader: sitk.ImageSeriesReader, n: int, label: str) -> str | None:
    """ITK places slices evenly; say so when the files' positions are not evenly spaced."""
    if n < 3:
        return None
    try:
        iop = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
        ipp = np.array(
            [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)]
        )
    except (RuntimeError, ValueError, IndexError):
        return None
    if len(iop) != 6 or ipp.shape != (n, 3):
        return None
    normal = np.cross(iop[:3], iop[3:])
    gaps = np.abs(np.diff(ipp @ normal))
    typical = float(np.median(gaps))
    if typical > 0 and np.all(np.abs(gaps - typical) <= max(0.01 * typical, 1e-3)):
        return None
    return (
        f"{label}: slice gaps are not uniform ({gaps.min():.3g} to {gaps.max():.3g} mm; "
        "missing, duplicate or mixed slices?); slices are placed as if evenly spaced."
    )


def _read_dicom(source: ScanSource) -> tuple[sitk.Image, list[str], list[SkippedInput]]:
    """Read a series; on failure drop the files that cause it and read the rest (>= 2)."""
    label = source.label
    files = _series_files(source)
    if not files:
        raise InputError(f"{label} has no files.")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise InputError(f"{label}: {missing[0]} does not exist.")
    warnings: list[str] = []
    skipped: list[SkippedInput] = []
    try:
        image, reader = _execute_series(files)
    except RuntimeError as exc:
        first_reason = _reader_reason(exc)
        bad = _bad_dicom_files(files)
        kept = tuple(f for f in files if f not in bad)
        if not bad or len(kept) < 2:
            detail = f" Damaged files: {', '.join(bad)}." if bad else ""
            raise InputError(f"{label} could not be read: {first_reason}.{detail}") from exc
        try:
            image, reader = _execute_series(kept)
        except RuntimeError as exc2:
            raise InputError(
                f"{label} could not be read: {_reader_reason(exc2)} "
                f"(even without {len(bad)} damaged file(s))."
            ) from exc2
        skipped = [SkippedInput(f, reason) for f, reason in bad.items()]
        names = ", ".join(os.path.basename(f) for f in bad)
        warnings.append(
            f"{label}: {len(bad)} of {len(files)} files could not be used and were left out "
            f"({names}); the volume is read from the other {len(kept)}."
        )
        files = kept
    if len(files) > 1:
        note = _spacing_warning(reader, len(files), label)
        if note:
            warnings.append(note)
    return image, warnings, skipped


def _is_dicom_source(source: ScanSource) -> bool:
    if source.files or source.series_uid or os.path.isdir(source.path):
        return True
    return bool(_suffix_in(source.path, DICOM_SUFFIXES)) or (
        not _suffix_in(source.path, VOLUME_SUFFIXES) and _sniff_dicom(source.path)
    )


@_quietly
def read_scan_reporting(
    source: ScanSource, options: ReadOptions = ReadOptions()
) -> tuple[ScanVolume, list[SkippedInput]]:
    """read_scan, plus one SkippedInput per file left out of a damaged DICOM series.

    For callers that read sources themselves (a prefetching reader) and must report
    dropped files the way iter_scans does.
    """
    if not os.path.exists(source.path) and not source.files:
        raise InputError(f"{source.path} does not exist{unreachable_reason(source.path)}.")
    if _is_dicom_source(source):
        image, warnings, skipped = _read_dicom(source)
    else:
        image, warnings, skipped = _read_file(source.path), [], []
    volume = _canonical_volume(
        image, source.path, options, source.series_uid, warnings, name=source.label
    )
    return volume, skipped


def read_scan(
    source: ScanSource | str | os.PathLike, options: ReadOptions = ReadOptions()
) -> ScanVolume:
    """Read one volume and keep its foreground slices; InputError names the file at fault.

    A path is accepted for convenience: a file, or a folder holding one DICOM series. Files
    dropped from a damaged DICOM series are named in the volume's warnings.
    """
    if not isinstance(source, ScanSource):
        path = os.fspath(source)
        source = _single_dicom_source(path) if _is_dicom_file(path) else ScanSource(path=path)
    volume, _ = read_scan_reporting(source, options)
    return volume


def _is_dicom_file(path: str) -> bool:
    return os.path.isfile(path) and (
        bool(_suffix_in(path, DICOM_SUFFIXES))
        or (not _suffix_in(path, VOLUME_SUFFIXES) and _sniff_dicom(path))
    )


def iter_scans(
    root: str | os.PathLike, options: ReadOptions = ReadOptions()
) -> Iterator[ScanVolume | SkippedInput]:
    """Find and read every scan under root, one volume in memory at a time.

    Yields a SkippedInput for every file or series that cannot be used (discovery first,
    then read problems in order) and never raises for a single bad file. A root that does
    not exist raises InputError at once; a root that is a file yields that file. Whether a
    root without any usable scan is an error is the caller's decision.
    """
    sources, skipped = find_scans(root)
    return _iterate(sources, skipped, options)


def _iterate(
    sources: list[ScanSource], skipped: list[SkippedInput], options: ReadOptions
) -> Iterator[ScanVolume | SkippedInput]:
    yield from skipped
    for source in sources:
        try:
            volume, dropped = read_scan_reporting(source, options)
        except InputError as exc:
            yield SkippedInput(source.path, str(exc))
            continue
        except MemoryError:
            yield SkippedInput(source.path, f"{source.label} is too large to read into memory.")
            continue
        yield from dropped
        yield volume


# --------------------------------------------------------------------------- canonical slices


@_quietly
def scan_from_image(
    image: sitk.Image,
    source: str,
    options: ReadOptions = ReadOptions(),
    series_uid: str = "",
) -> ScanVolume:
    """The same canonicalisation as read_scan for an image already in memory (Slicer nodes)."""
    return _canonical_volume(image, str(source), options, series_uid, [])


def _size_text(size) -> str:
    return "x".join(str(int(s)) for s in size)


def _to_scalar_3d(image: sitk.Image, source: str, warnings: list[str]) -> sitk.Image:
    """First 3D volume of a 4D+ image, mean of vector components, float32."""
    dim = image.GetDimension()
    size = image.GetSize()
    if dim < 3:
        raise InputError(
            f"{source} is a {dim}D image ({_size_text(size)}); MemorizationIndex needs a 3D volume."
        )
    if dim > 3:
        image = sitk.Extract(image, list(size[:3]) + [0] * (dim - 3), [0] * dim)
        if any(s > 1 for s in size[3:]):
            warnings.append(
                f"{source} is a {dim}D image ({_size_text(size)}); only its first 3D volume "
                "(index 0 along the extra axes, e.g. the first time point or echo) is used."
            )
    pixel = image.GetPixelID()
    if pixel in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(
            f"{source} has complex-valued voxels; MemorizationIndex needs magnitude images."
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        values = sitk.GetArrayViewFromImage(image)
        mean = values.mean(axis=-1, dtype=np.float64).astype(np.float32)
        scalar = sitk.GetImageFromArray(mean)
        scalar.CopyInformation(image)
        image = scalar
        warnings.append(
            f"{source} has {components} values per voxel (e.g. RGB or a vector); "
            "their mean is used."
        )
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


OUTLIER_PERCENTILES = (0.5, 99.5)  # the volume's robust intensity range...
OUTLIER_REACH = 10.0  # ...and how many such ranges beyond it an outlier lies: no MR tissue is
# ten times brighter than the 99.5th percentile; overflow and rescaling errors are orders off


def _inlier_bounds(values: np.ndarray, name: str, warnings: list[str]) -> tuple[float, float]:
    """The range outside which voxels are outliers (hot voxels), with a warning if any are.

    Generative models emit hot voxels; one voxel of 1e6 in a slice would otherwise set that
    slice's min-max range and squash the anatomy to black, so an exact copy looked novel.
    Outliers lie more than OUTLIER_REACH robust ranges (0.5th to 99.5th percentile) beyond
    that range. A normal scan has none, and its slices are scaled exactly as before.
    """
    low_p, high_p = (float(v) for v in np.percentile(values, OUTLIER_PERCENTILES))
    reach = OUTLIER_REACH * (high_p - low_p)
    low, high = low_p - reach, high_p + reach
    n = int(np.count_nonzero((values < low) | (values > high)))
    if n:
        warnings.append(
            f"{name} has {n} voxel(s) far outside its intensity range ({low_p:.4g} to "
            f"{high_p:.4g} between the 0.5th and 99.5th percentiles); they are left out "
            "of the intensity scaling (hot voxels would otherwise hide the anatomy)."
        )
    return low, high


def _canonical_volume(
    image: sitk.Image,
    source: str,
    options: ReadOptions,
    series_uid: str,
    warnings: list[str],
    name: str = "",
) -> ScanVolume:
    """Canonical slices of one image; `name` is how messages call it (default: source)."""
    warnings = list(warnings)
    name = name or source
    try:
        image = _to_scalar_3d(image, name, warnings)
        size = image.GetSize()
        wide = [s for s in size if s > 1]
        if len(wide) < 3:
            shown = _size_text(wide) if len(wide) == 2 else _size_text(size)
            raise InputError(
                f"{name} is a 2D image ({shown}); MemorizationIndex needs a 3D volume."
            )
        if image.GetDirection() != _IDENTITY:
            image = sitk.DICOMOrient(image, _CANONICAL)
    except RuntimeError as exc:
        raise InputError(
            f"{name} could not be read as a 3D volume: {_reader_reason(exc)}."
        ) from exc

    direction = np.array(image.GetDirection()).reshape(3, 3)
    tilt = float(np.degrees(np.arccos(np.clip(np.diag(direction), -1.0, 1.0))).max())
    if tilt > _OBLIQUE_WARN_DEG:
        warnings.append(
            f"{name} is oblique ({tilt:.1f} degrees from the LPS axes); slices follow the "
            "acquisition plane nearest to the chosen axis, without resampling."
        )

    axis = _AXIS_OF[options.axis]
    values = sitk.GetArrayViewFromImage(image)  # [z, y, x]
    nz, ny, nx = values.shape
    rows, cols = {0: (ny, nx), 1: (nz, nx), 2: (nz, ny)}[axis]
    if min(rows, cols) < MIN_INPLANE:
        raise InputError(
            f"{name}: its {options.axis} slices are {rows}x{cols} pixels; MemorizationIndex "
            f"needs at least {MIN_INPLANE} pixels on each side (the encoder's patch size)."
        )

    finite = np.isfinite(values)
    if not finite.all():
        n_finite = int(np.count_nonzero(finite))
        if n_finite == 0:
            raise InputError(f"{name} has no finite voxel (all are NaN or infinite).")
        fixed = values.copy()
        low = float(fixed[finite].min())
        fixed[~finite] = low
        n_bad = fixed.size - n_finite
        warnings.append(
            f"{name} has {n_bad} NaN or infinite voxel(s); they were set to the volume's "
            f"finite minimum ({low:g})."
        )
        canonical = sitk.GetImageFromArray(fixed)
        canonical.CopyInformation(image)
        image = canonical
        values = sitk.GetArrayViewFromImage(image)
    del finite
    bounds = _inlier_bounds(values, name, warnings)

    p1, p99 = np.percentile(values, [1, 99])
    threshold = float(p1 + 0.1 * (p99 - p1))
    other = tuple(a for a in range(3) if a != axis)
    share = np.count_nonzero(values > threshold, axis=other) / float(rows * cols)
    constant = values.max(axis=other) == values.min(axis=other)
    foreground = np.flatnonzero((share >= options.min_foreground) & ~constant)
    if foreground.size == 0:
        low, high = float(values.min()), float(values.max())
        if low == high:
            raise InputError(f"{name} is constant (every voxel is {low:g}); it holds no image.")
        raise InputError(
            f"{name} has no foreground slice: no {options.axis} slice has "
            f"{options.min_foreground:.0%} of its pixels above the background threshold "
            f"({threshold:.4g})."
        )
    # The stride is anchored to the slice grid, not to the first foreground slice, so that a
    # copy whose background differs (added noise) is sampled at the same slices as its source.
    kept = foreground[foreground % options.stride == 0].astype(np.int64)

    if axis == 0:
        slices = values[kept]
    elif axis == 1:
        slices = values[:, kept, :].transpose(1, 0, 2)[:, ::-1, :]
    else:
        slices = values[:, :, kept].transpose(2, 0, 1)[:, ::-1, :]
    slices = np.ascontiguousarray(slices, dtype=np.float32)

    sx, sy, sz = image.GetSpacing()
    spacing = {0: (sy, sx), 1: (sz, sx), 2: (sz, sy)}[axis]
    centre = [(nx - 1) / 2.0, (ny - 1) / 2.0, (nz - 1) / 2.0]  # (x, y, z) index order
    positions = np.empty((len(kept), 3), dtype=np.float64)
    for row, k in enumerate(kept):
        index = list(centre)
        index[2 - axis] = float(k)
        positions[row] = image.TransformContinuousIndexToPhysicalPoint(index)

    return ScanVolume(
        source=source,
        series_uid=series_uid,
        slices=slices,
        slice_indices=kept,
        positions=positions,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        n_total_slices=int(values.shape[axis]),
        warnings=warnings,
        image=image,
        intensity_bounds=bounds,
    )


def find_scans_required(root: str | os.PathLike) -> tuple[list[ScanSource], list[SkippedInput]]:
    """find_scans, but a folder without a single readable scan is an InputError."""
    sources, skipped = find_scans(root)
    if not sources:
        detail = f" ({len(skipped)} files skipped: {skipped[0].reason})" if skipped else ""
        raise InputError(f"No readable scan was found in {root}{detail}.")
    return sources, skipped
