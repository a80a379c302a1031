"""The audit record: what was scored, against which training set, with which null, alpha
and engine, so that an audit can be repeated and cited.

The sample set is named by the SHA-256 of every file scored, and by one combined digest:
the SHA-256 of the lines `sha256sum` prints for them ("<digest>  <path>", sorted by path,
relative to the files' common folder), so `sha256sum -c` checks a copy of the set and
moving the set elsewhere keeps its identity. Nothing in the record depends on time or
place of the run: two runs on the same files give the same record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..bank.files import MANIFEST_NAME

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def scored_files(volumes: list[str]) -> list[Path]:
    """The files behind the scored inputs, each once: a file itself, every file of a
    DICOM series folder; inputs scored from memory (no such path) have none."""
    files: dict[Path, None] = {}
    for volume in volumes:
        path = Path(volume)
        if path.is_file():
            files[path.resolve()] = None
        elif path.is_dir():
            files.update(dict.fromkeys(sorted(p.resolve() for p in path.rglob("*") if p.is_file())))
    return list(files)


def sample_set_identity(volumes: list[str]) -> dict:
    """{root, n_files, sha256, files: [{path, sha256, bytes}]} of the scored inputs."""
    files = scored_files(volumes)
    if not files:
        return {"root": "", "n_files": 0, "sha256": hashlib.sha256(b"").hexdigest(), "files": []}
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    entries = sorted(
        (
            {
                "path": f.relative_to(root).as_posix(),
                "sha256": file_sha256(f),
                "bytes": f.stat().st_size,
            }
            for f in files
        ),
        key=lambda e: e["path"],
    )
    lines = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries)
    return {
        "root": str(root),
        "n_files": len(entries),
        "sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest(),
        "files": entries,
    }


def training_identity(bank) -> dict:
    """The bank's manifest (training files, subjects, settings) by its SHA-256: of the
    file as written, or of its canonical JSON for a bank that lives only in memory."""
    path = Path(bank.path) / MANIFEST_NAME if getattr(bank, "path", None) else None
    if path is not None and path.is_file():
        digest = file_sha256(path)
    else:
        text = json.dumps(bank.manifest, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return {
        "manifest_sha256": digest,
        "n_training_volumes": len(bank.volumes),
        "n_bank_slices": len(bank),
    }


def audit_record(result, bank) -> dict:
    """summary.json's "audit" entry (scoring.results.ScoreResult against its bank)."""
    from .. import __version__

    samples = np.ascontiguousarray(bank.null.samples, dtype=np.float64)
    seen: dict[str, None] = dict.fromkeys(v.volume for v in result.volumes)
    return {
        "engine_version": __version__,
        "samples": sample_set_identity(list(seen)),
        "training": training_identity(bank),
        "null": {
            "what": "similarity of held-out training subjects' slices against the bank built "
            "without them (calibration folds by subject)",
            "n_slices": int(len(samples)),
            "samples_sha256": hashlib.sha256(samples.tobytes()).hexdigest(),
        },
        "alpha": result.alpha,
        "encoder": result.summary.get("encoder"),
    }
