"""Reading a bank's files so that any damage or tampering is a BankError naming the file.

A bank's manifest records the SHA-256 and size of every array file; loading checks them
all, then each array's dtype and shape against the others, so a bank changed after it was
written, truncated, or mixed from two builds is refused by name instead of failing later
with an IndexError deep inside the search.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import BankError, unreachable_reason

MANIFEST_NAME = "manifest.json"
BANK_FORMAT = "memorization-index-bank"
BANK_FORMAT_VERSION = 1
_NOT_HASHED = {MANIFEST_NAME, ".memorization-index.json"}
_CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, dict]:
    """{file name: {"sha256", "bytes"}} of every file the manifest vouches for."""
    return {
        p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in _NOT_HASHED
    }


def verify_digests(folder: Path, recorded: dict) -> None:
    """Every recorded file is there, with its size and content hash (BankError if not)."""
    for name, expected in recorded.items():
        file = folder / name
        if not file.is_file():
            raise BankError(f"Bank file {file} is missing{unreachable_reason(file)}.")
        try:
            size = file.stat().st_size
            digest = _sha256(file) if size == expected.get("bytes") else None
        except OSError as exc:
            raise BankError(f"Bank file {file} cannot be read: {exc.strerror}.") from exc
        if digest != expected.get("sha256"):
            raise BankError(
                f"Bank file {file} was changed after the bank was written (its size or "
                "content hash differs from the manifest). Rebuild the bank."
            )


def read_manifest(folder: Path) -> dict:
    """The manifest as a dict, with its required fields checked for presence and type."""
    path = folder / MANIFEST_NAME
    if not os.path.isfile(path):  # os.path, unlike Path.is_file, says False on EACCES
        if not os.path.exists(folder):
            raise BankError(f"Bank {folder} does not exist{unreachable_reason(folder)}.")
        raise BankError(f"{folder} is not a feature bank (no {MANIFEST_NAME} there).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise BankError(f"{path} cannot be read: permission denied.") from exc
    except (OSError, ValueError) as exc:
        raise BankError(f"{path} cannot be read as JSON: {exc}.") from exc
    if not isinstance(manifest, dict):
        raise BankError(f"{path} is not a MemorizationIndex bank manifest.")
    return manifest


def read_bank_manifest(folder: Path) -> dict:
    """The manifest of a bank folder, checked for this bank format and its version."""
    manifest = read_manifest(folder)
    if manifest.get("format") != BANK_FORMAT:
        raise BankError(f"{folder / MANIFEST_NAME} is not a MemorizationIndex bank manifest.")
    if manifest.get("format_version") != BANK_FORMAT_VERSION:
        raise BankError(
            f"{folder} uses bank format {manifest.get('format_version')}; this version of "
            f"MemorizationIndex reads format {BANK_FORMAT_VERSION}. Rebuild the bank."
        )
    return manifest


def index_kind_of(manifest: dict) -> str:
    """The stage-1 index kind a saved bank uses ("exact" for banks from before the choice)."""
    entry = manifest.get("index")
    return entry.get("kind", "exact") if isinstance(entry, dict) else "exact"


def require_field(manifest: dict, key: str, kind: type | tuple[type, ...], where: str):
    """manifest[key], or a BankError naming the field when it is missing or of the wrong type."""
    if key not in manifest:
        raise BankError(f"{where} lacks the field '{key}'. Rebuild the bank.")
    value = manifest[key]
    if not isinstance(value, kind):
        raise BankError(
            f"{where} field '{key}' has the wrong type ({type(value).__name__}). Rebuild the bank."
        )
    return value


def load_array(folder: Path, name: str, kind: str, shape: tuple, mmap: bool = False) -> np.ndarray:
    """np.load of one bank array (memory-mapped read-only with mmap), checked: dtype kind
    ('f', 'i', 'u') and shape.

    `shape` holds ints (exact), None (any) or negative ints (-1: "the slice count", checked
    by the caller across files via the returned array).
    """
    file = folder / name
    try:
        array = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:  # OSError, ValueError, zipfile.BadZipFile, EOFError, ...
        raise BankError(f"Bank file {file} is missing or damaged ({exc}).") from exc
    return check_array(array, file, kind, shape)


def check_array(array, file, kind: str, shape: tuple) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype.kind not in kind:
        raise BankError(f"Bank file {file} holds data of the wrong type. Rebuild the bank.")
    if array.ndim != len(shape) or any(
        want is not None and want >= 0 and got != want
        for got, want in zip(array.shape, shape, strict=True)
    ):
        shown = "x".join("?" if s is None or s < 0 else str(s) for s in shape)
        raise BankError(
            f"Bank file {file} has shape {array.shape}, expected {shown}: it does not belong "
            "with the bank's other files. Rebuild the bank."
        )
    return array


def load_npz(folder: Path, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """All arrays of an .npz bank file; the listed keys must be there."""
    file = folder / name
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise BankError(f"Bank file {file} is missing or damaged ({exc}).") from exc
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise BankError(f"Bank file {file} lacks {', '.join(missing)}. Rebuild the bank.")
    return arrays


def same_length(file_arrays: dict[str, np.ndarray], n: int, folder: Path) -> None:
    """Every per-slice array has n rows."""
    for name, array in file_arrays.items():
        if len(array) != n:
            raise BankError(
                f"Bank {folder} is inconsistent: {name} has {len(array)} rows where the "
                f"bank has {n} slices. Rebuild the bank."
            )


def volume_paths(values, where: str) -> list[str]:
    """The manifest's volume entries as paths (BankError when they are not a list of volumes)."""
    if not isinstance(values, list) or not all(
        isinstance(v, dict) and isinstance(v.get("path"), str) for v in values
    ):
        raise BankError(f"{where} field 'volumes' is not a list of volumes. Rebuild the bank.")
    return [os.fspath(v["path"]) for v in values]
