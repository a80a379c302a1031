"""Which training volumes come from one subject, and which are the same scan twice.

The calibration null holds out whole subjects: a repeat visit or a second series of the
same patient left in the bank while the other is held out scores like a copy, inflates the
null's tail and blinds the index to real copies. A subject is, in this order: the entry of
a grouping file the user gives, the DICOM PatientID, a BIDS `sub-*` folder in the path, or
else the volume alone. Subject keys stay in memory: outputs carry only group numbers
(a PatientID identifies a person).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass

from ..errors import InputError
from .dicom import read_header
from .sources import ScanSource

BIDS_SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
GROUPING_COLUMNS = ("path", "subject")


@dataclass(frozen=True)
class Subject:
    key: str  # never written out
    how: str  # "grouping file", "DICOM PatientID", "BIDS folder" or "volume"


@dataclass(frozen=True)
class Duplicate:
    """A training input that repeats an earlier one; it is left out of the bank."""

    path: str
    duplicate_of: str
    how: str  # "the same file" or "the same content"


def read_grouping_file(path: str | os.PathLike) -> dict[str, str]:
    """{volume path: subject} from a CSV with the columns `path,subject`.

    Paths may be absolute or relative to the training folder; InputError names the file
    and line of any problem.
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(GROUPING_COLUMNS) <= set(reader.fieldnames):
                raise InputError(
                    f"Grouping file {path} needs the columns 'path' and 'subject' in its "
                    f"first line (found {reader.fieldnames})."
                )
            groups = {}
            for line, row in enumerate(reader, start=2):
                volume, subject = ((row.get(c) or "").strip() for c in GROUPING_COLUMNS)
                if not volume or not subject:
                    raise InputError(f"Grouping file {path}, line {line}: path or subject empty.")
                groups[volume] = subject
    except OSError as exc:
        raise InputError(f"Grouping file {path} cannot be read: {exc.strerror}.") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"Grouping file {path} is not a UTF-8 CSV file ({exc}).") from exc
    return groups


def subject_of(source: ScanSource, root: str, grouping: dict[str, str] | None) -> Subject:
    """The subject a training volume belongs to (see the module docstring for the order)."""
    if grouping:
        relative = os.path.relpath(source.path, root)
        for key in (source.path, relative, relative.replace(os.sep, "/")):
            if key in grouping:
                return Subject(f"file:{grouping[key]}", "grouping file")
    if source.series_uid and source.files:
        try:
            reader = read_header(source.files[0])
            if reader.HasMetaDataKey("0010|0020"):
                patient = reader.GetMetaData("0010|0020").strip().rstrip("\x00")
                if patient:
                    return Subject(f"dicom:{patient}", "DICOM PatientID")
        except RuntimeError:
            pass  # reading reports the damage with the file's name
    parts = os.path.normpath(os.path.relpath(source.path, root)).split(os.sep)
    for part in parts[:-1] if len(parts) > 1 else []:
        if BIDS_SUBJECT.match(part):
            return Subject(f"bids:{part}", "BIDS folder")
    name = parts[-1]
    match = re.match(r"^(sub-[A-Za-z0-9]+)_", name)
    if match:
        return Subject(f"bids:{match.group(1)}", "BIDS folder")
    return Subject(f"volume:{source.path}:{source.series_uid}", "volume")


def _content_digest(source: ScanSource) -> str | None:
    files = source.files or (source.path,)
    digest = hashlib.sha256()
    try:
        for file in files:
            with open(file, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
    except OSError:
        return None  # reading reports it
    return digest.hexdigest()


def split_duplicates(sources: list[ScanSource]) -> tuple[list[ScanSource], list[Duplicate]]:
    """The sources without exact repeats (the same file through a link, or the same bytes),
    and the repeats, each naming the input it repeats."""
    kept: list[ScanSource] = []
    duplicates: list[Duplicate] = []
    by_file: dict[tuple[str, ...], ScanSource] = {}
    by_size: dict[int, list[ScanSource]] = {}
    digests: dict[str, str | None] = {}

    def digest(source: ScanSource):
        if source.label not in digests:
            digests[source.label] = _content_digest(source)
        return digests[source.label]

    for source in sources:
        files = tuple(os.path.realpath(f) for f in (source.files or (source.path,)))
        if files in by_file:
            duplicates.append(Duplicate(source.label, by_file[files].label, "the same file"))
            continue
        try:
            size = sum(os.path.getsize(f) for f in files)
        except OSError:
            size = -1
        twin = next(
            (s for s in by_size.get(size, []) if size >= 0 and digest(s) == digest(source)),
            None,
        )
        if twin is not None and digest(source) is not None:
            duplicates.append(Duplicate(source.label, twin.label, "the same content"))
            continue
        by_file[files] = source
        by_size.setdefault(size, []).append(source)
        kept.append(source)
    return kept, duplicates
