"""Mutation testing of the core modules with cosmic-ray (`make mutation`; not part of CI).

For each module: a scratch copy of the repository (the working tree is never mutated),
`cosmic-ray init`, one replacement per binary operator (below), `cosmic-ray exec` running
that module's fast tests against each mutant, then the share of mutants killed and every
survivor (line, operator, the changed line) printed, and a JSON summary written.

    python Testing/benchmarks/mutation.py [--modules whitening,null] [--timeout 120]
    python Testing/benchmarks/mutation.py --modules null --rerun-survivors   # after new tests
    python Testing/benchmarks/mutation.py --modules slicing --lines 1-120    # a scoped run

Each session is kept as OUT/<module>.sqlite; `--rerun-survivors` runs only that session's
survivors again (the source must be unchanged: its hash is kept beside the session), so a
new test is checked against exactly the mutants it was written for. `--lines A-B` runs only
the mutants that start on those lines of the source (the rest are marked out of scope).
Modules whose tests need no fixture from conftest.py run with `--noconftest`: the engine's
conftest imports torch, about 2 s of every mutant's run.

Operator reduction: cosmic-ray replaces each binary operator by every other one (11
mutants per `+`). Only the natural counterpart is kept (+ <-> -, * <-> /, ** -> *, // -> /,
% -> //, @ -> *, & <-> |); the other ten are mostly ill-typed (`a @ b` -> `a << b` on
floats) and add run time, not information. Every other cosmic-ray operator (numbers,
comparisons, boolean and keyword replacements, `not`, decorators, break/continue, ...)
is kept whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
LIB = "MemorizationIndex/MemorizationIndexLib"


class Target(NamedTuple):
    source: str
    tests: tuple[str, ...]
    conftest: bool = True  # False: the tests use no conftest fixture (pytest --noconftest)


# module name -> its source file and fast tests
MODULES: dict[str, Target] = {
    "verification": Target(
        f"{LIB}/search/verification.py",
        (
            "Testing/engine/test_verification_parts.py",
            "Testing/engine/test_verification.py",
            "Testing/engine/test_verification_gate.py",
            # builds a bank first (11 s a run); gating the null is build.py's, not this module's
            "--deselect=Testing/engine/test_verification_gate.py::"
            "test_the_bank_keeps_its_gate_and_scoring_applies_it",
        ),
    ),
    "geometry": Target(f"{LIB}/geometry.py", ("Testing/engine/test_geometry.py",), False),
    "null": Target(f"{LIB}/calibration/null.py", ("Testing/engine/test_calibration.py",), False),
    "combination": Target(
        f"{LIB}/calibration/combination.py",
        (
            "Testing/engine/test_combination.py",
            "Testing/engine/test_architecture.py::test_combining_scores_loads_neither_the_search_nor_torch",
        ),
        False,
    ),
    "neighbours": Target(
        f"{LIB}/search/neighbours.py", ("Testing/engine/test_matching.py",), False
    ),
    "whitening": Target(f"{LIB}/search/whitening.py", ("Testing/engine/test_whitening.py",), False),
    "slicing": Target(
        f"{LIB}/scans/slicing.py",
        (
            "Testing/engine/test_slicing.py",
            "Testing/engine/test_scans.py",
            "Testing/engine/test_dicom_geometry.py",
        ),
        False,
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


def write_config(work: Path, target: Target, timeout: float) -> Path:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ([] if target.conftest else ["--noconftest"]) + list(target.tests)
    config = work / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.source}"\n'
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


def skip_outside(session: Path, lines: tuple[int, int]) -> int:
    """Mark every mutant that does not start on lines[0]..lines[1] as skipped (a scoped run)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    skipped = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            if not lines[0] <= item.mutations[0].start_pos[0] <= lines[1]:
                db.set_result(
                    item.job_id,
                    WorkResult(output="out of scope", worker_outcome=WorkerOutcome.SKIPPED),
                )
                skipped += 1
    return skipped


def reopen_survivors(session: Path) -> int:
    """Drop the results of the surviving mutants, so that `exec` runs just those again."""
    from cosmic_ray.work_db import WorkDB, WorkResultStorage, use_db
    from cosmic_ray.work_item import TestOutcome

    with use_db(str(session), WorkDB.Mode.open) as db, db._session_maker.begin() as sql:
        query = sql.query(WorkResultStorage).filter(
            WorkResultStorage.test_outcome == TestOutcome.SURVIVED
        )
        count = query.count()
        query.delete()
    return count


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def run_module(
    name: str, timeout: float, out: Path, rerun: bool = False, lines: tuple[int, int] | None = None
) -> dict:
    target = MODULES[name]
    started = time.perf_counter()
    kept, kept_hash = out / f"{name}.sqlite", out / f"{name}.sha256"
    work = Path(tempfile.mkdtemp(prefix=f"mutation-{name}-"))
    try:
        scratch_copy(work)
        config = write_config(work, target, timeout)
        session = work / "session.sqlite"
        env_path = os.environ.get("PYTHONPATH", "")
        # the mutated copy, not the installed package, is what the tests import
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(work / "MemorizationIndex"), env_path) if p
        )
        skipped = scoped = 0
        if rerun:
            if not kept.exists() or kept_hash.read_text().strip() != source_hash(
                work / target.source
            ):
                raise SystemExit(f"{name}: no session of the current source in {out}; run it whole")
            shutil.copy2(kept, session)
            to_run = reopen_survivors(session)
        else:
            cosmic_ray("init", str(config), str(session), cwd=work)
            skipped = skip_redundant_binary_operators(session)
            if lines is not None:
                scoped = skip_outside(session, lines)
            to_run = None
        ran_from = time.perf_counter()
        cosmic_ray("exec", str(config), str(session), cwd=work)
        ran = time.perf_counter() - ran_from
        os.environ["PYTHONPATH"] = env_path
        summary = summarise(session, work / target.source)
        summary.update(
            module=target.source,
            tests=list(target.tests),
            skipped_binary=skipped,
            out_of_scope=scoped,
            lines=list(lines) if lines else None,
            rerun_survivors=rerun,
        )
        if to_run is None:
            to_run = summary["mutants"] + summary["incompetent"]
        summary["mutants_run"] = to_run
        summary["seconds"] = round(time.perf_counter() - started, 1)
        summary["seconds_per_mutant"] = round(ran / to_run, 2) if to_run else None
        shutil.copy2(session, kept)
        kept_hash.write_text(source_hash(work / target.source) + "\n")
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_summary(name: str, s: dict) -> None:
    share = "n/a" if s["killed_share"] is None else f"{100 * s['killed_share']:.1f} %"
    print(
        f"\n== {name} ({s['module']}): {s['killed']} of {s['mutants']} mutants killed ({share}); "
        f"{s['incompetent']} incompetent, {s['skipped_binary']} redundant operator swaps "
        f"skipped, {s['out_of_scope']} out of scope, {s['pending']} not run; "
        f"{s['mutants_run']} run in {s['seconds']} s ({s['seconds_per_mutant']} s per mutant)"
    )
    for v in s["survivors"]:
        print(f"   survived line {v['line']:>4} {v['operator']} #{v['occurrence']}: {v['code']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated names")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    parser.add_argument("--out", default="mutation-output", help="folder for the JSON summary")
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="run only the survivors of the session kept in --out again",
    )
    parser.add_argument("--lines", help="A-B: only mutants starting on these source lines")
    args = parser.parse_args(argv)
    lines = tuple(int(x) for x in args.lines.split("-")) if args.lines else None
    names = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {sorted(MODULES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        results[name] = run_module(name, args.timeout, out, args.rerun_survivors, lines)
        print_summary(name, results[name])
        summary_file = out / "mutation.json"
        previous = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        summary_file.write_text(json.dumps({**previous, **results}, indent=2), encoding="utf-8")
    print("\nkilled share per module:")
    for name, s in results.items():
        share = "n/a" if s["killed_share"] is None else f"{100 * s['killed_share']:.1f} %"
        print(f"  {name:<13} {share:>8}  ({s['killed']}/{s['mutants']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
