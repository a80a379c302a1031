"""Mutation testing of the core modules with cosmic-ray (`make mutation`; not part of CI).

For each module: a scratch copy of the repository (the working tree is never mutated),
`cosmic-ray init`, one replacement per binary operator (below), `cosmic-ray exec` running
that module's fast tests against each mutant, then the share of mutants killed and every
survivor (line, operator, the changed line) printed, and a JSON summary written.

    python Testing/benchmarks/mutation.py [--modules whitening,null] [--timeout 120]

Operator reduction: cosmic-ray replaces each binary operator by every other one (11
mutants per `+`). Only the natural counterpart is kept (+ <-> -, * <-> /, ** -> *, // -> /,
% -> //, @ -> *, & <-> |); the other ten are mostly ill-typed (`a @ b` -> `a << b` on
floats) and add run time, not information. Every other cosmic-ray operator (numbers,
comparisons, boolean and keyword replacements, `not`, decorators, break/continue, ...)
is kept whole.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = "MemorizationIndex/MemorizationIndexLib"

# module name -> (source file, its fast tests)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "verification": (
        f"{LIB}/search/verification.py",
        ("Testing/engine/test_verification.py",),
    ),
    "geometry": (f"{LIB}/geometry.py", ("Testing/engine/test_verification.py",)),
    "null": (f"{LIB}/calibration/null.py", ("Testing/engine/test_calibration.py",)),
    "combination": (
        f"{LIB}/calibration/combination.py",
        ("Testing/engine/test_calibration.py",),
    ),
    "neighbours": (f"{LIB}/search/neighbours.py", ("Testing/engine/test_matching.py",)),
    "whitening": (f"{LIB}/search/whitening.py", ("Testing/engine/test_whitening.py",)),
    "slicing": (
        f"{LIB}/scans/slicing.py",
        ("Testing/engine/test_scans.py", "Testing/engine/test_dicom_geometry.py"),
    ),
}

KEPT_BINARY = {
    "Add_Sub",
    "Sub_Add",
    "Mul_Div",
    "Div_Mul",
    "Pow_Mul",
    "FloorDiv_Div",
    "Mod_FloorDiv",
    "MatMult_Mul",
    "BitAnd_BitOr",
    "BitOr_BitAnd",
}
BINARY = re.compile(r"core/ReplaceBinaryOperator_(\w+)$")


def cosmic_ray(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], cwd=cwd, check=True)


def scratch_copy(into: Path) -> Path:
    for name in ("MemorizationIndex", "Testing"):
        shutil.copytree(
            ROOT / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def write_config(work: Path, source: str, tests: tuple[str, ...], timeout: float) -> Path:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    config = work / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{source}"\n'
        f"timeout = {float(timeout)}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(' '.join(command))}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n',
        encoding="utf-8",
    )
    return config


def skip_redundant_binary_operators(session: Path) -> int:
    """Mark every binary-operator mutant but the natural counterpart as skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    skipped = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            match = BINARY.match(item.mutations[0].operator_name)
            if match and match.group(1) not in KEPT_BINARY:
                db.set_result(
                    item.job_id,
                    WorkResult(output="redundant", worker_outcome=WorkerOutcome.SKIPPED),
                )
                skipped += 1
    return skipped


def summarise(session: Path, source_file: Path) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    lines = source_file.read_text(encoding="utf-8").splitlines()
    killed = survived = incompetent = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            mutation = item.mutations[0]
            if result.test_outcome == TestOutcome.KILLED:
                killed += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                line = mutation.start_pos[0]
                survivors.append(
                    {
                        "line": line,
                        "operator": mutation.operator_name,
                        "occurrence": mutation.occurrence,
                        "code": lines[line - 1].strip() if line <= len(lines) else "",
                    }
                )
            else:
                incompetent += 1  # the mutant did not import or the run failed: not scored
        pending = db.num_work_items - db.num_results
    scored = killed + survived
    return {
        "mutants": scored,
        "killed": killed,
        "survived": survived,
        "incompetent": incompetent,
        "pending": pending,
        "killed_share": killed / scored if scored else None,
        "survivors": sorted(survivors, key=lambda s: s["line"]),
    }


def run_module(name: str, timeout: float, keep: Path | None) -> dict:
    source, tests = MODULES[name]
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"mutation-{name}-"))
    try:
        scratch_copy(work)
        config = write_config(work, source, tests, timeout)
        session = work / "session.sqlite"
        env_path = os.environ.get("PYTHONPATH", "")
        # the mutated copy, not the installed package, is what the tests import
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(work / "MemorizationIndex"), env_path) if p
        )
        cosmic_ray("init", str(config), str(session), cwd=work)
        skipped = skip_redundant_binary_operators(session)
        cosmic_ray("exec", str(config), str(session), cwd=work)
        os.environ["PYTHONPATH"] = env_path
        summary = summarise(session, work / source)
        summary.update(module=source, tests=list(tests), skipped_binary=skipped)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if keep is not None:
            shutil.copy2(session, keep / f"{name}.sqlite")
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_summary(name: str, s: dict) -> None:
    share = "n/a" if s["killed_share"] is None else f"{100 * s['killed_share']:.1f} %"
    print(
        f"\n== {name} ({s['module']}): {s['killed']} of {s['mutants']} mutants killed ({share}); "
        f"{s['incompetent']} incompetent, {s['skipped_binary']} redundant operator swaps "
        f"skipped, {s['pending']} not run; {s['seconds']} s"
    )
    for v in s["survivors"]:
        print(f"   survived line {v['line']:>4} {v['operator']} #{v['occurrence']}: {v['code']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated names")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    parser.add_argument("--out", default="mutation-output", help="folder for the JSON summary")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {sorted(MODULES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        results[name] = run_module(name, args.timeout, out)
        print_summary(name, results[name])
        (out / "mutation.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\nkilled share per module:")
    for name, s in results.items():
        share = "n/a" if s["killed_share"] is None else f"{100 * s['killed_share']:.1f} %"
        print(f"  {name:<13} {share:>8}  ({s['killed']}/{s['mutants']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
