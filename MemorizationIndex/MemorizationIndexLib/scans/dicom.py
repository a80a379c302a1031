"""DICOM: one header reader (GDCM), one is-DICOM test, series grouping and reading.

A series is read whole; when that fails, the files that break it are found and left out
(reported as SkippedInput) and the rest is read if at least two remain.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .sources import (
    DATA_SUFFIXES,
    DICOM_SUFFIXES,
    VOLUME_SUFFIXES,
    ScanSource,
    SkippedInput,
    reader_reason,
    suffix_in,
)


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


def read_header(path: str) -> sitk.ImageFileReader:
    """One file's DICOM header read by GDCM (no pixels); RuntimeError when it cannot be."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def series_name(path: str) -> str:
    """SeriesNumber and SeriesDescription of a DICOM file ("3 T1 MPRAGE"), or ""."""
    try:
        reader = read_header(path)
    except RuntimeError:
        return ""
    parts = []
    for tag in ("0020|0011", "0008|103e"):
        if reader.HasMetaDataKey(tag):
            parts.append(reader.GetMetaData(tag).strip().rstrip("\x00").strip())
    return " ".join(p for p in parts if p)


def is_dicom_file(path: str) -> bool:
    """A DICOM file: a DICOM suffix, or no volume or raw-data suffix and DICOM contents."""
    if suffix_in(path, VOLUME_SUFFIXES):
        return False
    return bool(suffix_in(path, DICOM_SUFFIXES)) or (
        not suffix_in(path, DATA_SUFFIXES) and _sniff_dicom(path)
    )


def _dicom_file_problem(path: str) -> str:
    """Why a file that looks like DICOM is in no series: damaged, or not an image."""
    try:
        read_header(path)
    except RuntimeError as exc:
        return (
            f"{path} looks like a DICOM file but could not be read: {reader_reason(exc)}; "
            "it was left out of its series."
        )
    return (
        f"{path} is a DICOM file that belongs to no image series (no pixel data or no "
        "series UID); it was not used."
    )


def dicom_folder(
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
            name = series_name(files[0])
            sources.append(ScanSource(dirpath, uid, tuple(files), name))
    sources.sort(key=lambda s: (s.files[0], s.series_uid))
    skipped = [
        SkippedInput(joined[name], _dicom_file_problem(joined[name]))
        for name in candidates
        if name not in claimed
    ]
    return sources, claimed, skipped


def single_dicom_source(path: str) -> ScanSource:
    uid = ""
    try:
        reader = read_header(path)
        if reader.HasMetaDataKey("0020|000e"):
            uid = reader.GetMetaData("0020|000e").strip().rstrip("\x00")
    except RuntimeError:
        pass  # read_scan reports the damage with the reader's reason
    return ScanSource(path=path, series_uid=uid, files=(path,), series_name=series_name(path))


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
        try:
            reader = read_header(f)
        except RuntimeError as exc:
            bad[f] = f"{f} could not be read as DICOM: {reader_reason(exc)}."
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
                bad[f] = f"{f} could not be read as DICOM: {reader_reason(exc)}."
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


def read_dicom(source: ScanSource) -> tuple[sitk.Image, list[str], list[SkippedInput]]:
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
        first_reason = reader_reason(exc)
        bad = _bad_dicom_files(files)
        kept = tuple(f for f in files if f not in bad)
        if not bad or len(kept) < 2:
            detail = f" Damaged files: {', '.join(bad)}." if bad else ""
            raise InputError(f"{label} could not be read: {first_reason}.{detail}") from exc
        try:
            image, reader = _execute_series(kept)
        except RuntimeError as exc2:
            raise InputError(
                f"{label} could not be read: {reader_reason(exc2)} "
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


def is_dicom_source(source: ScanSource) -> bool:
    """A source read as DICOM: a series (files, UID or folder), or a DICOM file."""
    if source.is_stack_entry:
        return False
    if source.files or source.series_uid or os.path.isdir(source.path):
        return True
    return is_dicom_file(source.path)
