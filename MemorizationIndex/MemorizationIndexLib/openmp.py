"""Two OpenMP runtimes in one process, and the one switch that lets them live together.

PyTorch's wheel and faiss-cpu's wheel each bring their own OpenMP runtime, and the engine
needs both. On Linux both are GNU libgomp under different file names, which coexist. On
macOS (and in some Windows builds) both are LLVM/Intel runtimes, and the second one to
start aborts the process ("OMP: Error #15: Initializing libomp.dylib, but found
libomp.dylib already initialized"; faiss-wheels#40, faiss#1977) unless
KMP_DUPLICATE_LIB_OK is TRUE. Neither wheel can be told to use the other's runtime and no
import order avoids it, so the engine sets that switch in the processes that import both:
the command line (before torch or faiss is imported) and the worker process Slicer starts
(in the worker's environment only, never in Slicer's own process, which imports neither).
GNU libgomp ignores the switch.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DUPLICATE_SWITCH = "KMP_DUPLICATE_LIB_OK"
RUNTIME_NAMES = ("libgomp", "libomp", "libiomp", "vcomp")


def allow_duplicate_runtimes(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the switch in `environ` (this process's environment by default) unless the user
    set it already. Must happen before torch or faiss is imported to take effect."""
    environ = os.environ if environ is None else environ
    environ.setdefault(DUPLICATE_SWITCH, "TRUE")


def loaded_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; [] where the system
    does not list its mappings in /proc)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith(RUNTIME_NAMES))
