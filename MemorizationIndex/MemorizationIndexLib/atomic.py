"""Write a whole output folder under a temporary name, then rename it into place.

A bank or report is never seen half-written: if anything fails (or the user cancels),
the temporary folder is removed and an existing folder of the same name is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SettingsError


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise SettingsError(f"Output {target} exists and is not a folder.")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"Cannot create the output folder {parent}: {exc.strerror}.") from exc
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        yield temp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / target.name)
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
