"""Long runs in per-volume pieces that survive a kill: `score --out DIR` and the encoding
part of `build-bank --out DIR`, run again with the same output, skip what was finished.

Each finished volume's outcome (a *piece*) is kept in a resume folder beside the output,
`.NAME.resume-KEY`, where KEY hashes everything the pieces depend on (`run_key`: the
engine's version, the inputs' paths, sizes and modification times, and whatever settings
the caller names: encoder and checkpoint digest, preprocessing, stride, bank...).

- A piece is written into a temporary folder and renamed into place, so a piece under its
  final name is complete; its `piece.json` names the key and the volume, and a piece that
  does not read back whole, or names another run, is computed again.
- A run with other inputs or settings uses another folder; nothing of it is trusted.
- The caller merges the pieces in input order once all are there, writes its output
  atomically (atomic.py) and then removes the folder, which carries this tool's marker.

What a piece holds is the caller's (a `PieceCodec` turns it into a JSON part and arrays and
back): scoring/resume.py keeps a volume's scores, encoding/features.py a volume's encoder
features. Pieces computed on Ray workers (distributed.py) come back through the same codec,
so a distributed run resumes too and merges exactly like a single-process one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import __version__
from .atomic import read_marker, write_marker
from .job import Job
from .scans import SkippedInput

PIECE_FILE = "piece.json"
ARRAYS_FILE = "arrays.npz"

# A runner takes the indices of the volumes still to do and yields (index, piece) as each
# finishes, in any order: in this process or on a Ray cluster (distributed.py).
Runner = Callable[[list[int]], Iterable[tuple[int, Any]]]


def _fault_point(where: str, done: int) -> None:
    """Fault-injection point for tests ("piece-saved" after `done` pieces); does nothing."""


@dataclass
class Piece:
    """One volume's outcome (scores, features...; None when it was skipped) and the inputs
    left out on the way, with the reasons."""

    result: Any | None
    skipped: list[SkippedInput] = field(default_factory=list)


def skipped_to_json(skipped: list[SkippedInput]) -> list:
    return [[s.path, s.reason] for s in skipped]


def skipped_from_json(values: list) -> list[SkippedInput]:
    return [SkippedInput(p, r) for p, r in values]


class PieceCodec(Protocol):
    """How one kind of piece is stored: a JSON-able dict and named numpy arrays."""

    def to_parts(self, piece) -> tuple[dict, dict[str, np.ndarray]]: ...

    def from_parts(self, meta: dict, arrays: dict[str, np.ndarray]): ...


def file_stats(paths: Iterable[str]) -> list:
    """[path, size, mtime in ns] of each file ([path, None, None] when it is not there)."""
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stats.append([path, None, None])
            continue
        stats.append([path, st.st_size, st.st_mtime_ns])
    return stats


def sources_content(sources) -> list:
    """What identifies the scan inputs of a run: each source's path, series and files."""
    return [[s.path, s.series_uid, file_stats(s.files or (s.path,))] for s in sources]


def run_key(content: dict) -> str:
    """Hash of everything a run's pieces depend on, with the engine's version."""
    text = json.dumps({"engine": __version__, **content}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def pack(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A piece's parts as one byte string (what a Ray worker sends back)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{PIECE_FILE: np.array(json.dumps(meta, allow_nan=True))})
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    return json.loads(str(arrays.pop(PIECE_FILE))), arrays


class ResumeFolder:
    """The finished pieces of one run: `.NAME.resume-KEY` beside the output NAME."""

    def __init__(self, out: str | os.PathLike, key: str, codec: PieceCodec):
        out = Path(out)
        self.key = key
        self.codec = codec
        self.path = out.parent / f".{out.name}.resume-{key}"

    def piece_path(self, i: int) -> Path:
        return self.path / f"volume-{i:06d}"

    def load(self, i: int):
        """Piece i if it was finished by a run with this key, else None."""
        folder = self.piece_path(i)
        try:
            meta = json.loads((folder / PIECE_FILE).read_text(encoding="utf-8"))
            if meta.get("key") != self.key or meta.get("index") != i:
                return None
            with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            return self.codec.from_parts(meta, arrays)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None

    def save(self, i: int, piece) -> None:
        """Write piece i under a temporary name, then rename it into place."""
        if not self.path.is_dir():
            self.path.mkdir(parents=True, exist_ok=True)
            write_marker(self.path, "resume")
        final = self.piece_path(i)
        tmp = self.path / f".{final.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        meta, arrays = self.codec.to_parts(piece)
        meta = {**meta, "key": self.key, "index": i}
        with open(tmp / ARRAYS_FILE, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        with open(tmp / PIECE_FILE, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(meta, allow_nan=True))
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # a stale or damaged piece of this key: it is ours to replace
            shutil.rmtree(final)
        os.replace(tmp, final)

    def remove(self) -> None:
        """Delete the folder, only when it carries this tool's marker (it wrote it)."""
        marker = read_marker(self.path)
        if marker is not None and marker.get("kind") == "resume":
            shutil.rmtree(self.path, ignore_errors=True)


def run_in_pieces(folder: ResumeFolder, n: int, runner: Runner, job: Job, stage: str) -> list[Any]:
    """The pieces of volumes 0..n-1: those a killed run with this key finished, and the
    rest from `runner`, each saved as it arrives. Progress counts volumes."""
    pieces: list[Any] = [folder.load(i) for i in range(n)]
    pending = [i for i, p in enumerate(pieces) if p is None]
    step = job.step(stage, n)
    done = n - len(pending)
    step.update(done)
    for i, piece in runner(pending):
        folder.save(i, piece)
        pieces[i] = piece
        done += 1
        step.update(done)
        _fault_point("piece-saved", done)
    return pieces
