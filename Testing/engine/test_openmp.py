"""torch's and faiss-cpu's OpenMP runtimes in one process (MemorizationIndexLib/openmp.py).

What is loaded is read from the process's own memory map (/proc/self/maps): on Linux the
two wheels bring two GNU libgomp copies, which coexist, and both compute correctly when
they run threads one after the other and interleaved. On macOS the copies are LLVM
runtimes that abort without KMP_DUPLICATE_LIB_OK; the switch is checked to be set in the
processes that import both (the worker's environment and the command line) before torch
or faiss is imported, and never in Slicer's own process (test_responsiveness.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from MemorizationIndexLib.openmp import DUPLICATE_SWITCH, allow_duplicate_runtimes

MODULE_DIR = Path(__file__).resolve().parents[2] / "MemorizationIndex"

BOTH_RUNTIMES = """
import json, os, sys, threading
import numpy as np
import torch, faiss
from MemorizationIndexLib.openmp import loaded_runtimes

rng = np.random.default_rng(0)
a = rng.standard_normal((400, 300)).astype(np.float32)
base = rng.standard_normal((3000, 64)).astype(np.float32)
queries = base[:200] + 0.01 * rng.standard_normal((200, 64)).astype(np.float32)
torch.set_num_threads(2)
faiss.omp_set_num_threads(2)
errors = []

def torch_work():
    for _ in range(20):
        product = (torch.from_numpy(a) @ torch.from_numpy(a).T).numpy()
        if not np.allclose(product, a @ a.T, rtol=1e-4, atol=1e-3):
            errors.append("torch")

def faiss_work():
    index = faiss.IndexFlatIP(64)
    index.add(base)
    for _ in range(20):
        _, ids = index.search(queries, 1)
        if not (ids[:, 0] == np.arange(200)).all():
            errors.append("faiss")

torch_work(); faiss_work()  # one after the other
threads = [threading.Thread(target=f) for f in (torch_work, faiss_work, torch_work)]
for t in threads: t.start()
for t in threads: t.join()  # interleaved
print(json.dumps({"runtimes": loaded_runtimes(), "errors": errors,
                  "switch": os.environ.get("KMP_DUPLICATE_LIB_OK")}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_both_runtimes_load_side_by_side_and_compute_correctly():
    environment = dict(os.environ, PYTHONPATH=str(MODULE_DIR))
    environment.pop(DUPLICATE_SWITCH, None)
    allow_duplicate_runtimes(environment)
    completed = subprocess.run(
        [sys.executable, "-c", BOTH_RUNTIMES],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    assert report["errors"] == []
    assert report["switch"] == "TRUE"
    runtimes = report["runtimes"]
    owners = {Path(p).parent.name for p in runtimes}
    assert {"lib", "faiss_cpu.libs"} <= owners, runtimes  # torch/lib and faiss-cpu's
    # GNU libgomp only: an LLVM or Intel runtime here would need the switch on Linux too.
    assert all(Path(p).name.startswith("libgomp") for p in runtimes), runtimes


def test_the_command_line_sets_the_switch_before_torch_is_imported():
    probe = (
        "import os, sys\n"
        "from MemorizationIndexLib.cli import main\n"
        "before = 'torch' in sys.modules or 'faiss' in sys.modules\n"
        "main(['--version'])\n"
        "print(before, os.environ.get('KMP_DUPLICATE_LIB_OK'))\n"
    )
    environment = dict(os.environ, PYTHONPATH=str(MODULE_DIR))
    environment.pop(DUPLICATE_SWITCH, None)
    completed = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[-2:] == ["False", "TRUE"]


def test_a_users_own_setting_is_kept():
    environment = {DUPLICATE_SWITCH: "FALSE"}
    allow_duplicate_runtimes(environment)
    assert environment == {DUPLICATE_SWITCH: "FALSE"}
    fresh: dict[str, str] = {}
    allow_duplicate_runtimes(fresh)
    assert fresh == {DUPLICATE_SWITCH: "TRUE"}


def test_ray_workers_get_the_switch(monkeypatch):
    from MemorizationIndexLib import distributed

    monkeypatch.delenv(DUPLICATE_SWITCH, raising=False)
    assert distributed._openmp_switch() == {DUPLICATE_SWITCH: "TRUE"}
    monkeypatch.setenv(DUPLICATE_SWITCH, "FALSE")
    assert distributed._openmp_switch() == {DUPLICATE_SWITCH: "FALSE"}
