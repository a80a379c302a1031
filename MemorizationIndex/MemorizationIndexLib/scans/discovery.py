"""Find every volume under a folder, and every file that is not one (with the reason).

Training folders are messy: mixed formats, several DICOM series per folder, stray
files, the odd damaged scan. Discovery therefore reports every file it cannot use
(a `SkippedInput` with a sentence naming the file) instead of dropping it.
"""

from __future__ import annotations

import os

from ..errors import InputError, unreachable_reason
from .dicom import dicom_folder, is_dicom_file, single_dicom_source
from .images import entry_index, is_array_file, is_raster, stack_entries
from .sources import (
    DATA_SUFFIXES,
    FORMATS,
    VOLUME_SUFFIXES,
    ScanSource,
    SkippedInput,
    quietly,
    stem,
    suffix_in,
)


def _not_volume_reason(path: str) -> str:
    name = os.path.basename(path)
    lower = name.lower()
    if lower == "dicomdir":
        return (
            f"{path} is a DICOMDIR index, not an image; the images it lists are read from "
            "their own files."
        )
    if suffix_in(lower, (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")):
        return f"{path} is an archive; unpack it to have its scans read."
    if suffix_in(lower, DATA_SUFFIXES):
        return (
            f"{path} is a raw data file, but no header next to it (.mhd, .nhdr or .hdr) "
            "names it, so its size and geometry are unknown."
        )
    return f"{path} is not an image format MemorizationIndex reads ({FORMATS})."


def header_data_files(path: str, suffix: str) -> set[str]:
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


def claimed_data_files(dirpath: str, names: list[str]) -> set[str]:
    """Names in one folder that are the data files of a header in the same folder."""
    claimed: set[str] = set()
    header_stems: set[str] = set()
    for name in names:
        suffix = suffix_in(name, (".mhd", ".nhdr", ".hdr"))
        if not suffix:
            continue
        header_stems.add(os.path.normcase(stem(name, suffix)))
        if suffix in (".mhd", ".nhdr"):
            claimed |= header_data_files(os.path.join(dirpath, name), suffix)
    for name in names:
        suffix = suffix_in(name, DATA_SUFFIXES)
        if suffix and os.path.normcase(stem(name, suffix)) in header_stems:
            claimed.add(os.path.normcase(name))
    return {name for name in names if os.path.normcase(name) in claimed}


def _check_root(root: str | os.PathLike) -> str:
    path = os.fspath(root)
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist{unreachable_reason(path)}.")
    return path


@quietly
def find_scans(root: str | os.PathLike) -> tuple[list[ScanSource], list[SkippedInput]]:
    """Every readable volume under root (recursive, sorted), and every file that is not one.

    A root that is a single file yields that file. Data files of a header (.raw next to
    .mhd, .img next to .hdr) belong to their header and are not listed separately.
    """
    path = _check_root(root)
    if os.path.isfile(path):
        name = os.path.basename(path)
        if suffix_in(name, VOLUME_SUFFIXES) or is_raster(name):
            return [ScanSource(path=path)], []
        if is_array_file(name):
            return _stack_sources(path)
        if is_dicom_file(path):
            return [single_dicom_source(path)], []
        folder = os.path.dirname(path) or "."
        if name in claimed_data_files(folder, sorted(os.listdir(folder))):
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
        found, bad = _scan_folder(dirpath, sorted(filenames))
        sources.extend(found)
        skipped.extend(bad)
    sources.sort(key=lambda s: (_path_key(s.path), s.files[:1], _entry_order(s)))
    skipped.sort(key=lambda s: _path_key(s.path))
    return sources, skipped


def _scan_folder(dirpath: str, names: list[str]) -> tuple[list[ScanSource], list[SkippedInput]]:
    """The volumes and DICOM series of one folder's files, and the files that are neither."""
    data_files = claimed_data_files(dirpath, names)
    volumes: list[str] = []
    dicom: list[str] = []
    others: list[str] = []
    stacks: list[ScanSource] = []
    skipped: list[SkippedInput] = []
    for name in names:
        if name in data_files:
            continue
        full = os.path.join(dirpath, name)
        if suffix_in(name, VOLUME_SUFFIXES) or is_raster(name):
            volumes.append(name)
        elif is_array_file(name):
            found, bad = _stack_sources(full)
            stacks.extend(found)
            skipped.extend(bad)
        elif name.lower() == "dicomdir":
            others.append(name)  # an index of other files, not an image
        elif is_dicom_file(full):
            dicom.append(name)
        else:
            others.append(name)
    sources: list[ScanSource] = []
    claimed: set[str] = set()
    if dicom:
        sources, claimed, bad = dicom_folder(dirpath, names, dicom)
        skipped.extend(bad)
    sources.extend(ScanSource(path=os.path.join(dirpath, n)) for n in volumes)
    sources.extend(stacks)
    skipped.extend(
        SkippedInput(full, _not_volume_reason(full))
        for full in (os.path.join(dirpath, n) for n in others if n not in claimed)
    )
    return sources, skipped


def _stack_sources(path: str) -> tuple[list[ScanSource], list[SkippedInput]]:
    """One source per image of a NumPy stack (.npy, .npz), and what of it holds none."""
    try:
        entries, problems = stack_entries(path)
    except InputError as exc:
        return [], [SkippedInput(path, str(exc))]
    return [ScanSource(path=path, series_uid=e) for e in entries], [
        SkippedInput(path, problem) for problem in problems
    ]


def _entry_order(source: ScanSource) -> tuple[str, int]:
    """DICOM series by UID; the images of a stack by array, then by index (2 before 10)."""
    if source.is_stack_entry:
        return source.series_uid.rsplit("[", 1)[0], entry_index(source.series_uid)
    return source.series_uid, 0


def _path_key(path: str) -> list[str]:
    """Sort by path components, so a folder's subfolders sort among its files by name."""
    return os.path.normpath(path).split(os.sep)


def find_scans_required(root: str | os.PathLike) -> tuple[list[ScanSource], list[SkippedInput]]:
    """find_scans, but a folder without a single readable scan is an InputError."""
    sources, skipped = find_scans(root)
    if not sources:
        detail = f" ({len(skipped)} files skipped: {skipped[0].reason})" if skipped else ""
        raise InputError(f"No readable scan was found in {root}{detail}.")
    return sources, skipped
