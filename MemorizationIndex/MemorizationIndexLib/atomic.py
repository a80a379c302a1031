"""Output folders that never destroy a user's files and are never seen half-written.

Every folder the tool writes (a bank, a report, the demo's folder) carries a marker file,
`.memorization-index.json`, that names what it holds. An output path may be replaced only
when it is empty or carries the marker of the same kind; everything else is refused before
any work starts (`check_output`). The new content is written under a temporary name beside
the target and swapped in under a lock:

- on Linux with `renameat2(RENAME_EXCHANGE)` the old and new folders trade places in one
  step, so the path always holds a complete output;
- elsewhere the old folder is moved aside first; a run killed between the two renames leaves
  it aside as `.NAME.old-*`, and the next run (or `recover_output`) moves it back.

Leftovers of killed runs (`.NAME.partial-*`, `.NAME.old-*` whose process is gone) are
removed by the next run that writes the same output.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SettingsError
from .liveness import process_alive

MARKER_NAME = ".memorization-index.json"
OUTPUT_KINDS = ("bank", "report", "demo")
_RENAME_EXCHANGE = 2
_committing = []  # non-empty once this process began swapping a finished output in


def commit_started() -> bool:
    """Whether this process has begun putting a finished output in place. From then on a
    stop request must let it finish (Slicer's worker asks before it aborts on Cancel):
    stopping later would report "cancelled" for an output that was in fact replaced."""
    return bool(_committing)


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder this tool wrote, or None."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(marker, dict) and marker.get("written_by") == "memorization-index":
        return marker
    return None


def write_marker(folder: Path, kind: str) -> None:
    from . import __version__

    text = json.dumps({"written_by": "memorization-index", "kind": kind, "version": __version__})
    (folder / MARKER_NAME).write_text(text + "\n", encoding="utf-8")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(
    target: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Refuse, before any work, an output path whose replacement could destroy user files.

    Refused: the current folder or a folder holding it; an input (or a folder inside an
    input, or one that holds an input); an existing file; a non-empty folder without this
    tool's marker of the same kind; a place where the folder cannot be created.
    Returns the path as given (not resolved, so messages read as the user typed it).
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    target = Path(target).expanduser()
    if not target.name or target.name in (".", ".."):
        raise SettingsError(f"Output {target} must name a new folder, not '.' or '..'.")
    resolved = target.resolve()
    if _is_within(Path.cwd().resolve(), resolved):
        raise SettingsError(
            f"Output {target} is the current folder or holds it; name a new folder."
        )
    for source in inputs:
        if source is None:
            continue
        source_path = Path(source).expanduser()
        source_resolved = source_path.resolve()
        if resolved == source_resolved:
            raise SettingsError(
                f"Output {target} is the input {source_path}; writing there would destroy "
                f"it. Name a new folder."
            )
        if _is_within(resolved, source_resolved):
            raise SettingsError(
                f"Output {target} is inside the input {source_path}; the tool does not write "
                f"into its inputs. Name a folder elsewhere."
            )
        if _is_within(source_resolved, resolved):
            raise SettingsError(
                f"Output {target} holds the input {source_path}; replacing it would delete "
                f"the input. Name a new folder."
            )
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise SettingsError(f"Output {target} exists and is not a folder; name a new folder.")
    if target.is_dir():
        _check_replaceable(target, kind)
    _check_creatable(target)
    return target


def _check_replaceable(target: Path, kind: str) -> None:
    try:
        empty = next(os.scandir(target), None) is None
    except OSError as exc:
        raise SettingsError(f"Output {target} cannot be read: {exc.strerror}.") from exc
    if empty:
        return
    marker = read_marker(target)
    if marker is None:
        raise SettingsError(
            f"Output {target} already exists and was not written by memorization-index "
            f"(it has no {MARKER_NAME}); nothing was changed. Name a new folder, or remove "
            f"it yourself if you are sure."
        )
    if marker.get("kind") != kind:
        raise SettingsError(
            f"Output {target} holds a {marker.get('kind')} written by memorization-index, "
            f"not a {kind}; nothing was changed. Name another folder."
        )


def _check_creatable(target: Path) -> None:
    """The nearest existing ancestor must be a folder we may create entries in."""
    parent = target.parent if str(target.parent) else Path(".")
    existing = parent
    while not existing.exists():
        if existing.is_symlink():  # a dangling link where a folder should be
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"Cannot create the output {target}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(
            f"Cannot create the output {target}: no permission to write in {existing}."
        )


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _owner_alive(name: str, stem: str) -> bool:
    """Whether the process that named a leftover folder is still running on this host."""
    parts = name[len(stem) :].split("-")  # host (may hold '-'), pid, random suffix
    if len(parts) < 3:
        return False
    host, pid = "-".join(parts[:-2]), parts[-2]
    if host != socket.gethostname():
        return True  # another machine's run (shared file system): leave it alone
    try:
        return process_alive(int(pid))
    except ValueError:
        return False


def recover_output(target: str | os.PathLike) -> None:
    """Restore an output a killed run left aside; remove leftovers of dead runs.

    Call it under the output's lock (atomic_directory does).
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return
    old_stem, partial_stem = f".{target.name}.old-", f".{target.name}.partial-"
    olds, partials = [], []
    for entry in parent.iterdir():
        if entry.name.startswith(old_stem):
            olds.append(entry)
        elif entry.name.startswith(partial_stem):
            partials.append(entry)
    for entry in partials:
        if not _owner_alive(entry.name, partial_stem):
            shutil.rmtree(entry, ignore_errors=True)
    for entry in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
        if _owner_alive(entry.name, old_stem):
            continue
        inner = entry / target.name
        if not target.exists() and inner.is_dir():
            os.replace(inner, target)
        shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _locked(parent: Path, name: str) -> Iterator[None]:
    """Serialise swaps and clean-ups of one output between processes (held briefly)."""
    try:
        import fcntl
    except ImportError:  # Windows: a lock file opened exclusively
        yield from _windows_lock(parent / f".{name}.lock")
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _windows_lock(lock_path: Path) -> Iterator[None]:
    import msvcrt
    import time

    with open(lock_path, "a+b") as handle:
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                time.sleep(0.1)
        try:
            yield
        finally:
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def _load_renameat2():
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return function


_renameat2 = _load_renameat2()
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step where the system can; False where it cannot."""
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _fault_point(where: str) -> None:
    """Fault-injection point for tests ("swapped", "between-renames"); does nothing."""


def _swap_in(temp: Path, target: Path) -> None:
    parent = target.parent if str(target.parent) else Path(".")
    if not target.exists():
        os.replace(temp, target)
        return
    if _exchange(temp, target):
        _fault_point("swapped")
        shutil.rmtree(temp, ignore_errors=True)  # temp now holds the old output
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{_owner_tag()}-", dir=parent))
    os.replace(target, aside / target.name)
    try:
        _fault_point("between-renames")
        os.replace(temp, target)
    except BaseException:
        if not target.exists():
            os.replace(aside / target.name, target)  # put the old output back
        shutil.rmtree(aside, ignore_errors=True)
        raise
    _fault_point("swapped")
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_directory(
    target: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target` in one step.

    The folder gets the marker of `kind`. On any failure (or cancel) the temporary folder
    is removed and an existing output is left as it was.
    """
    target = check_output(target, kind, inputs)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"Cannot create the output folder {parent}: {exc.strerror}.") from exc
    with _locked(parent, target.name):
        recover_output(target)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{_owner_tag()}-", dir=parent))
    try:
        yield temp
        write_marker(temp, kind)
        _committing.append(str(target))
        with _locked(parent, target.name):
            check_output(target, kind, inputs)  # another run may have put something there
            _swap_in(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def prepare_marked_folder(target: str | os.PathLike, kind: str) -> Path:
    """Create (or reuse) an output folder that is filled in place, such as the demo's."""
    target = check_output(target, kind)
    target.mkdir(parents=True, exist_ok=True)
    if read_marker(target) is None:
        write_marker(target, kind)
    return target
