"""Run code in a child process that SIGKILLs itself once N pieces are saved (pieces.py):
the fault injection of the resumable runs' tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KILL_PREFIX = """
import os, signal, sys
from pathlib import Path
from MemorizationIndexLib import pieces
after = int(sys.argv[1])
def kill(where, done):
    if where == "piece-saved" and done == after:
        os.kill(os.getpid(), signal.SIGKILL)
pieces._fault_point = kill
"""


def killed_after(pieces: int, run: str, args: list[str]) -> None:
    """Run the statements `run` (after KILL_PREFIX; sys.argv[2:] is `args`) in a child
    process and check that it was killed once `pieces` pieces were saved."""
    root = Path(__file__).resolve().parents[2]  # Testing's parent, for Testing.* imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_PREFIX + run, str(pieces), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
