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
from .images import is_raster
from .sources import ScanSource

BIDS_SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
GROUPING_COLUMNS = ("path", "subject")
# A 2D image cut from a scan is named after its subject and its slice: subject00_z012.png,
# BraTS_00012_t1_slice_80.png, patient7-12.png. The subject is the name before a last
# slice-like token (a separator, an optional word such as z, slice or frame, a number).
SLICE_TOKEN = re.compile(
    r"^(?P<subject>.*?[A-Za-z0-9])[_\-. ]+"
    r"(?:z|x|y|s|sl|slc|slice|sag|cor|ax|axial|frame|f|img|image|idx|i|n|no|num)?[_\-]?\d+$",
    re.IGNORECASE,
)
SUBJECT_SOURCES = ("grouping file", "subject pattern", "DICOM PatientID", "BIDS folder")


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


def compile_subject_pattern(pattern: str | None) -> re.Pattern | None:
    """--subject-pattern: a regular expression searched in each file name; the subject is
    its group named 'subject', else its first group, else the whole match."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InputError(
            f"--subject-pattern {pattern!r} is not a regular expression: {exc}."
        ) from exc


def _matched_subject(pattern: re.Pattern, name: str) -> str | None:
    match = pattern.search(name)
    if match is None:
        return None
    if "subject" in pattern.groupindex:
        return match.group("subject")
    return match.group(1) if pattern.groups else match.group(0)


def name_subject(path: str) -> str | None:
    """The default rule for 2D image files: the name before its last slice-like token
    ("subject00_z012.png" -> "subject00"); None when the name has no such token."""
    name = os.path.basename(path)
    for suffix in (".nii.gz",):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = os.path.splitext(name)[0]
    match = SLICE_TOKEN.match(name)
    return match.group("subject") if match else None


def subject_of(
    source: ScanSource,
    root: str,
    grouping: dict[str, str] | None,
    pattern: re.Pattern | None = None,
) -> Subject:
    """The subject a training input belongs to: a grouping file's entry (by path, path
    relative to the training folder, or path:entry for an image of a NumPy stack), the
    subject pattern on the file name, the DICOM PatientID, a BIDS sub-* folder, for a 2D
    image file the name before its slice number, else the input alone."""
    relative = os.path.relpath(source.path, root)
    if grouping:
        keys = [source.path, relative, relative.replace(os.sep, "/")]
        if source.is_stack_entry:
            keys = [f"{k}:{source.series_uid}" for k in keys] + keys
        for key in keys:
            if key in grouping:
                return Subject(f"file:{grouping[key]}", "grouping file")
    if pattern is not None and not source.is_stack_entry:
        found = _matched_subject(pattern, os.path.basename(source.path))
        if found:
            folder = os.path.dirname(relative)
            return Subject(f"pattern:{folder}/{found}", "subject pattern")
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
    if is_raster(source.path):
        found = name_subject(source.path)
        if found:
            return Subject(f"name:{os.path.dirname(relative)}/{found}", "file name")
    return Subject(f"volume:{source.path}:{source.series_uid}", "volume")


def one_subject_each_if_all_one(
    found: dict[tuple[str, str], Subject],
) -> tuple[dict[tuple[str, str], Subject], str | None]:
    """When the file-name rule put every input into one subject (images named img_001.png,
    img_002.png...), it found no subjects at all: then each input is its own subject, with
    a warning. Returns the subjects and the warning (None when nothing changed)."""
    by_name = [k for k, s in found.items() if s.how == "file name"]
    keys = {found[k].key for k in by_name}
    if len(by_name) < 2 or len(keys) != 1 or len(by_name) != len(found):
        return found, None
    changed = {k: Subject(f"volume:{k[0]}:{k[1]}", "volume") for k in found}
    return changed, (
        f"Every training image's name gives the same subject ({next(iter(keys)).split('/')[-1]!r}"
        "), which cannot be right: each image is taken as its own subject. Name the subjects "
        "with --subjects CSV or --subject-pattern REGEX."
    )


def subject_warning(found: dict[tuple[str, str], Subject], images: set) -> str | None:
    """A warning when every training image (`images`: the keys of 2D image files and
    stack entries) of several is its own subject: neighbouring slices of one person then
    stay in the bank while their neighbour is held out, which makes the null too high
    (copies missed). One subject per 3D volume is the usual case and is not warned of."""
    mine = [found[k] for k in images if k in found]
    if len(mine) < 2 or any(s.how != "volume" for s in mine):
        return None
    return (
        f"Each of the {len(mine)} training images is its own subject (no grouping file, "
        "subject pattern, or subject_slice file name grouped any two). If slices of one "
        "person are among them, give --subjects CSV or --subject-pattern REGEX: calibration "
        "holds out whole subjects, and neighbouring slices of one person look like copies."
    )


MIN_SUBJECTS_FOR_NULL = 10


def few_subjects_warning(n_subjects: int) -> str | None:
    """A warning when the calibration null rests on few people: it then knows little of how
    much people differ, and a new person unlike all of them can score like a copy (the spine
    phantom's held-out subjects were flagged with a bank of 4 and not with one of 12)."""
    if n_subjects >= MIN_SUBJECTS_FOR_NULL:
        return None
    return (
        f"The training set holds only {n_subjects} subjects: the calibration null learns "
        "from them how much people differ, and a new person unlike all of them can be "
        f"flagged as a copy. Use at least {MIN_SUBJECTS_FOR_NULL} subjects for an audit you "
        "trust."
    )


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
