"""Read one volume from disk (NIfTI, NRRD, MetaImage, DICOM) into canonical slices.

Reading one bad file never stops a folder of 500: `iter_scans` turns every problem into a
SkippedInput that names the file. ITK fills a truncated NIfTI with zeros without a word,
so its length is checked here first.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, unreachable_reason
from .dicom import is_dicom_file, is_dicom_source, read_dicom, single_dicom_source
from .discovery import find_scans, header_data_files
from .images import (
    entry_index,
    image_on_pixel_grid,
    is_array_file,
    is_raster,
    read_raster,
    read_stack_entry,
    stack_entries,
)
from .slicing import ReadOptions, canonical_volume
from .sources import ScanSource, ScanVolume, SkippedInput, quietly, reader_reason, suffix_in


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


def _readable(path: str) -> str:
    """The path of an existing file we may read (InputError naming it otherwise)."""
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist or is not a file{unreachable_reason(path)}.")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path} cannot be read: permission denied.")
    return path


def _read_file(path: str) -> sitk.Image:
    _readable(path)
    if suffix_in(path, (".nii", ".nii.gz", ".hdr")):
        problem = _nifti_truncation(path)
        if problem:
            raise InputError(f"{path} could not be read: {problem}.")
    suffix = suffix_in(path, (".mhd", ".nhdr"))
    if suffix:
        folder = os.path.dirname(path)
        for name in header_data_files(path, suffix):
            if not os.path.exists(os.path.join(folder, name)):
                raise InputError(
                    f"{path} could not be read: its data file {name} is missing next to it."
                )
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise InputError(f"{path} could not be read: {reader_reason(exc)}.") from exc
    if suffix_in(path, (".nii", ".nii.gz")):
        image = _with_nonfinite_restored(path, image)
    return image


@quietly
def read_scan_reporting(
    source: ScanSource, options: ReadOptions | None = None
) -> tuple[ScanVolume, list[SkippedInput]]:
    """read_scan, plus one SkippedInput per file left out of a damaged DICOM series.

    For callers that read sources themselves (a prefetching reader) and must report
    dropped files the way iter_scans does.
    """
    if not os.path.exists(source.path) and not source.files:
        raise InputError(f"{source.path} does not exist{unreachable_reason(source.path)}.")
    known, skipped = True, []
    if source.is_stack_entry:
        values, warnings = read_stack_entry(source.path, source.series_uid)
        image, known = image_on_pixel_grid(values), False
    elif is_raster(source.path):
        values, warnings = read_raster(_readable(source.path))
        image, known = image_on_pixel_grid(values), False
    elif is_dicom_source(source):
        image, warnings, skipped = read_dicom(source)
    else:
        image, warnings = _read_file(source.path), []
    volume = canonical_volume(
        image,
        source.path,
        options or ReadOptions(),
        source.series_uid,
        warnings,
        name=source.label,
        pixel_size_known=known,
    )
    volume.series_name = source.series_name
    if source.is_stack_entry:
        volume.slice_indices = np.array([entry_index(source.series_uid)], np.int64)
    return volume, skipped


def read_scan(
    source: ScanSource | str | os.PathLike, options: ReadOptions | None = None
) -> ScanVolume:
    """Read one volume and keep its foreground slices; InputError names the file at fault.

    A path is accepted for convenience: a file, or a folder holding one DICOM series. Files
    dropped from a damaged DICOM series are named in the volume's warnings.
    """
    if not isinstance(source, ScanSource):
        path = os.fspath(source)
        dicom = os.path.isfile(path) and is_dicom_file(path)
        source = single_dicom_source(path) if dicom else ScanSource(path=path)
        if is_array_file(path):
            entries, _ = stack_entries(path)
            if len(entries) != 1:
                raise InputError(
                    f"{path} holds {len(entries)} images; read one as "
                    f"ScanSource(path, entry), e.g. entry {entries[0] if entries else '[0]'!r}."
                )
            source = ScanSource(path=path, series_uid=entries[0])
    volume, _ = read_scan_reporting(source, options)
    return volume


def iter_scans(
    root: str | os.PathLike, options: ReadOptions | None = None
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
