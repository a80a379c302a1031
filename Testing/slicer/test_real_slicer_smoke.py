"""The real-Slicer smoke script cannot run here (no Slicer application); check what can be
checked without it: it parses, it is the one the README documents, every panel widget,
widget method and logic method it uses exists, every step runs through the step runner
(smoke_steps.py) with a deadline, and the runner, run with stand-in steps in a real
process, reports a failing step, skips what needs it, and names a hung step and ends the
process (status 2) instead of hanging."""

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "Testing" / "slicer" / "real_slicer_smoke.py"
STEPS = ROOT / "Testing" / "slicer" / "smoke_steps.py"
MODULE_FILE = ROOT / "MemorizationIndex" / "MemorizationIndex.py"
UI_FILE = ROOT / "MemorizationIndex" / "Resources" / "UI" / "MemorizationIndex.ui"


def smoke_tree():
    return ast.parse(SMOKE.read_text(encoding="utf-8"))


def attributes_of(tree, owner):
    """Names used as <owner>.<name> and <owner>.ui.<name> in the script."""
    direct, ui = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == owner:
                direct.add(node.attr)
            if (
                isinstance(value, ast.Attribute)
                and value.attr == "ui"
                and isinstance(value.value, ast.Name)
                and value.value.id == owner
            ):
                ui.add(node.attr)
    return direct, ui


def test_the_readme_documents_the_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--python-script Testing/slicer/real_slicer_smoke.py" in readme
    assert "--no-main-window" in readme and "--additional-module-paths MemorizationIndex" in readme


def test_every_widget_and_method_the_script_uses_exists():
    tree = smoke_tree()
    direct, ui = attributes_of(tree, "widget")
    ui_names = {w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")}
    assert ui and ui <= ui_names, ui - ui_names
    module = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    widget_class = next(
        n for n in module.body if isinstance(n, ast.ClassDef) and n.name.endswith("Widget")
    )
    widget_members = {n.name for n in widget_class.body if isinstance(n, ast.FunctionDef)}
    widget_members |= {"ui", "logic", "_parameterNode", "_parameterNodeGuiTag"}
    assert direct <= widget_members, direct - widget_members
    logic_calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "logic"
    }
    logic_attributes = {"ensureDependencies", "missingDependencies"}
    for name in logic_calls - logic_attributes:
        assert callable(getattr(MemorizationIndexSceneLogic, name, None)), name


def test_every_check_the_issue_asks_for_is_there():
    names = [
        d.args[0].value
        for node in ast.walk(smoke_tree())
        if isinstance(node, ast.FunctionDef)
        for d in node.decorator_list
        if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "check"
    ]
    text = " ".join(names).lower()
    for topic in (
        "loads with no warning",
        "connectors",
        "dependency",
        "child process",
        "cancel",
        "failing child",
        "table row",
        "overlay",
        "side by side",
        "plot",
        "self-test",
    ):
        assert topic in text, topic


# ---- every step under a deadline -------------------------------------------------------------


def function_defs(tree):
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def step_decorator(function):
    """The check(...) or step(...) decorator of a function, or None."""
    for d in function.decorator_list:
        if isinstance(d, ast.Call) and getattr(d.func, "id", "") in ("check", "step"):
            return d
    return None


def test_every_step_of_the_script_runs_through_the_runner_with_a_deadline():
    tree = smoke_tree()
    functions = function_defs(tree)
    run_checks = functions["runChecks"]
    body = run_checks.body[1:]  # after the docstring
    assert body
    ran = []
    for statement in body:
        assert isinstance(statement, (ast.Expr, ast.Assign)), ast.dump(statement)
        call = statement.value
        assert isinstance(call, ast.Call), ast.unparse(statement)
        assert ast.unparse(call.func) == "runner.run", ast.unparse(statement)
        # nothing is computed outside the runner: the arguments are names only
        assert all(isinstance(a, ast.Name) for a in call.args), ast.unparse(statement)
        for keyword in call.keywords:
            assert keyword.arg == "needs", ast.unparse(statement)
            assert all(isinstance(e, ast.Name) for e in keyword.value.elts)
        name = call.args[0].id
        decorator = step_decorator(functions[name])
        assert decorator is not None, f"{name} has no deadline"
        deadline = decorator.args[1] if len(decorator.args) > 1 else None
        assert isinstance(deadline, ast.Constant) and deadline.value > 0, name
        ran.append(name)
    # every step and check the script defines runs, once
    marked = [name for name, f in functions.items() if step_decorator(f) is not None]
    assert sorted(ran) == sorted(marked)
    assert len([n for n in marked if step_decorator(functions[n]).func.id == "check"]) == 10
    for name in ("answerDialogs", "ensureLayoutManager", "writeTrainingSet", "makeWorkFolder"):
        assert name in ran, name
    assert "removeWorkFolder" in ran and "pollFromEventLoop" in ran


def test_main_hands_everything_and_slicer_exit_to_the_runner():
    tree = smoke_tree()
    main = function_defs(tree)["main"]
    calls = [ast.unparse(n.func) for n in ast.walk(main) if isinstance(n, ast.Call)]
    assert sorted(calls) == ["StepRunner", "os.environ.get", "runner.execute"], calls
    runner = next(
        n for n in ast.walk(main) if isinstance(n, ast.Call) and ast.unparse(n.func) == "StepRunner"
    )
    keywords = {k.arg: ast.unparse(k.value) for k in runner.keywords}
    assert keywords["exit"] == "slicer.util.exit"
    assert keywords["checkCount"] == "10"
    assert "output" in keywords and "overallDeadline" in keywords and "exitDeadline" in keywords
    # at module level the script only defines things and calls main() last; a missing
    # runner still ends Slicer
    top_calls = [n for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert [ast.unparse(n) for n in top_calls] == ["main()"] and tree.body[-1] is top_calls[0]
    guard = next(n for n in tree.body if isinstance(n, ast.Try))
    assert "smoke_steps" in ast.unparse(guard.body)
    assert "slicer.util.exit(1)" in ast.unparse(guard.handlers[0])


def test_the_runner_calls_exit_in_a_finally():
    tree = ast.parse(STEPS.read_text(encoding="utf-8"))
    runner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StepRunner")
    execute = function_defs(runner)["execute"]
    finals = [
        ast.unparse(statement)
        for node in ast.walk(execute)
        if isinstance(node, ast.Try)
        for statement in node.finalbody
    ]
    assert "self.exit(status)" in finals, finals


DRIVER = textwrap.dedent(
    """
    import re
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, sys.argv[3])
    from smoke_steps import CHECK, StepRunner, step

    scenario, output = sys.argv[1], sys.argv[2]
    marker = Path(output).with_name("after-ran")


    @step("passes", 5, kind=CHECK)
    def passes():
        return 41


    @step("fails", 5, kind=CHECK)
    def fails(value):
        raise AssertionError(f"wrong value {value}")


    @step("needs what failed", 5, kind=CHECK)
    def needsFailed(value):
        raise RuntimeError("must not run")


    @step("sleeps", 1)
    def sleeps():
        time.sleep(3600)


    @step("spins in Python", 1)
    def spins():
        while True:
            pass


    @step("holds the GIL in C", 1)
    def holdsTheGil():
        re.match(r"(a+)+$", "a" * 64 + "b")  # backtracks in C for ages, never lets go


    @step("waits in a nested event loop", 1)
    def nestedLoop(runner):
        while True:  # a stand-in for a modal dialog, whose Qt timer calls runner.poll
            time.sleep(0.02)
            runner.poll()


    @step("slow", 100)
    def slow():
        time.sleep(3600)


    @step("after", 5, kind=CHECK)
    def after():
        marker.write_text("ran")


    def unmarked():
        pass


    def standInExit(status):
        print(f"EXIT CALLED {status}", flush=True)
        if scenario == "exit-hangs":
            time.sleep(3600)  # the application never ends
        sys.exit(status)


    def body(runner):
        value = runner.run(passes)
        if scenario == "pass":
            runner.run(after)
        elif scenario == "fail":
            missing = runner.run(fails, value)
            runner.run(needsFailed, missing)
            runner.run(after)
        elif scenario == "hang":
            missing = runner.run(fails, value)
            runner.run(needsFailed, missing)
            runner.run(sleeps)
            runner.run(after)
        elif scenario == "spin":
            runner.run(spins)
            runner.run(after)
        elif scenario == "gil":
            runner.run(holdsTheGil)
            runner.run(after)
        elif scenario == "poll":
            runner.run(nestedLoop, runner)
            runner.run(after)
        elif scenario == "overall":
            runner.run(slow)
            runner.run(after)
        elif scenario == "raise":
            raise KeyError("a bug between two steps")
        elif scenario == "unmarked":
            runner.run(unmarked)
        elif scenario == "exit-hangs":
            pass


    StepRunner(
        exit=standInExit,
        output=output,
        overallDeadline=1 if scenario == "overall" else 600,
        exitDeadline=1,
        grace=1,
        pollInterval=0.05,
        checkCount=2 if scenario in ("pass", "spin", "gil", "poll", "overall") else None,
        extra=lambda: {"dialogs": [["question", "install?", ""]]},
        watchdogThread=scenario != "poll",
    ).execute(body)
    print("the driver went on after exit", flush=True)
    """
)


def run_driver(tmp_path, scenario):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    output = tmp_path / "results.json"
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, str(driver), scenario, str(output), str(STEPS.parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    results = json.loads(output.read_text(encoding="utf-8")) if output.is_file() else None
    return process, seconds, results


def statuses(results):
    return {r["step"]: r["status"] for r in results["results"]}


def test_a_hung_step_is_named_and_ends_the_process_with_status_2(tmp_path):
    process, seconds, results = run_driver(tmp_path, "hang")
    out = process.stdout
    assert process.returncode == 2, (process.returncode, out, process.stderr)
    assert seconds < 10, seconds  # 1 s deadline, not the hour the step sleeps
    assert "HUNG  sleeps after 1 s (its deadline is 1 s)" in out, out
    assert "--- thread MainThread ---" in out and "time.sleep(3600)" in out  # its stack
    assert "PASS  passes" in out and "FAIL  fails" in out and "SKIP  needs what failed" in out
    assert "SUMMARY  1 of 3 checks passed, 1 failed, 1 skipped; 0 of 1 other steps" in out
    assert "HUNG: sleeps; exit status 2" in out
    # the results file records pass, fail, skip and the hang; nothing after the hang ran
    assert statuses(results) == {
        "passes": "passed",
        "fails": "failed",
        "needs what failed": "skipped",
        "sleeps": "hung",
    }
    assert results["status"] == 2 and results["hung"] == "sleeps"
    assert "AssertionError('wrong value 41')" in results["results"][1]["error"]
    assert "'fails'" in results["results"][2]["reason"]
    assert results["dialogs"] == [["question", "install?", ""]]
    assert "START after" not in out and not (tmp_path / "after-ran").exists()
    assert "EXIT CALLED" not in out  # the stuck main thread never gets there: os._exit(2)


def test_a_step_spinning_in_python_is_reported_as_hung(tmp_path):
    process, seconds, results = run_driver(tmp_path, "spin")
    assert process.returncode == 2, (process.stdout, process.stderr)
    assert seconds < 10, seconds
    assert "HUNG  spins in Python after 1 s" in process.stdout
    assert "SUMMARY  1 of 2 checks passed, 1 not run" in process.stdout
    assert statuses(results) == {"passes": "passed", "spins in Python": "hung"}
    assert not (tmp_path / "after-ran").exists()


def test_a_hang_in_a_nested_event_loop_is_caught_by_poll_without_the_watchdog(tmp_path):
    """The smoke script's Qt timer calls runner.poll inside a modal dialog's event loop,
    where PythonQt keeps the GIL and the watchdog thread cannot run."""
    process, seconds, results = run_driver(tmp_path, "poll")
    assert process.returncode == 2, (process.stdout, process.stderr)
    assert seconds < 10, seconds
    assert "HUNG  waits in a nested event loop after 1 s" in process.stdout
    assert "runner.poll()" in process.stdout  # the main thread's own stack
    assert statuses(results)["waits in a nested event loop"] == "hung"


def test_the_whole_script_has_a_deadline_too(tmp_path):
    process, seconds, results = run_driver(tmp_path, "overall")
    assert process.returncode == 2, (process.stdout, process.stderr)
    assert seconds < 10, seconds
    assert "HUNG  slow after 1 s (the whole script's deadline of 1 s has passed)" in (
        process.stdout
    )
    assert statuses(results) == {"passes": "passed", "slow": "hung"}


def test_a_c_call_that_holds_the_gil_meets_faulthandler_last_resort(tmp_path):
    """No Python thread runs then; faulthandler's C thread dumps the stacks and ends the
    process (its fixed status 1) a grace period after the deadline; the START line and the
    results file, where the step is still running, name it."""
    process, seconds, results = run_driver(tmp_path, "gil")
    assert process.returncode == 1, (process.stdout, process.stderr)
    assert seconds < 15, seconds
    assert "Timeout (0:00:02)!" in process.stderr, process.stderr
    assert "holdsTheGil" in process.stderr  # the stuck frame
    assert process.stdout.rstrip().endswith("START holds the GIL in C (deadline 1 s)")
    assert statuses(results) == {"passes": "passed", "holds the GIL in C": "running"}


def test_all_steps_passing_exits_0_through_the_exit_function(tmp_path):
    process, seconds, results = run_driver(tmp_path, "pass")
    out = process.stdout
    assert process.returncode == 0, (out, process.stderr)
    assert "SUMMARY  2 of 2 checks passed; 0 of 0 other steps passed; exit status 0" in out
    assert "EXIT CALLED 0" in out and "the driver went on" not in out
    assert statuses(results) == {"passes": "passed", "after": "passed"}
    assert results["status"] == 0 and results["hung"] is None
    assert all(r["deadline"] == 5 and r["seconds"] >= 0 for r in results["results"])


def test_a_failing_step_exits_1_and_the_exit_function_is_still_called(tmp_path):
    process, seconds, results = run_driver(tmp_path, "fail")
    out = process.stdout
    assert process.returncode == 1, (out, process.stderr)
    assert "FAIL  fails" in out and "AssertionError: wrong value 41" in out  # the traceback
    assert "SKIP  needs what failed: needs the result of 'fails', which did not pass" in out
    assert "PASS  after" in out  # the steps that do not need it go on
    assert "SUMMARY  2 of 4 checks passed, 1 failed, 1 skipped" in out
    assert "EXIT CALLED 1" in out
    assert statuses(results) == {
        "passes": "passed",
        "fails": "failed",
        "needs what failed": "skipped",
        "after": "passed",
    }
    assert results["status"] == 1


def test_a_bug_between_steps_or_a_step_without_deadline_still_exits_1(tmp_path):
    process, _, results = run_driver(tmp_path, "raise")
    assert process.returncode == 1, (process.stdout, process.stderr)
    assert "FAIL  the smoke script: KeyError('a bug between two steps')" in process.stdout
    assert "EXIT CALLED 1" in process.stdout
    assert statuses(results)["the smoke script"] == "failed"
    process, _, results = run_driver(tmp_path, "unmarked")
    assert process.returncode == 1, (process.stdout, process.stderr)
    assert "FAIL  unmarked: unmarked has no deadline" in process.stdout
    assert "EXIT CALLED 1" in process.stdout


def test_an_application_that_does_not_end_after_exit_is_reported(tmp_path):
    process, seconds, results = run_driver(tmp_path, "exit-hangs")
    assert process.returncode == 2, (process.stdout, process.stderr)
    assert seconds < 10, seconds
    assert "EXIT CALLED 0" in process.stdout
    assert "HUNG  the application exits after 1 s" in process.stdout
    assert results["hung"] == "the application exits"


# ---- the smoke script itself, in a stand-in Slicer -------------------------------------------

FAKE_SLICER = textwrap.dedent(
    """
    import runpy
    import sys
    import time
    import types

    script, scenario = sys.argv[1], sys.argv[2]
    if scenario == "hang":  # deadlines of 2 s instead of minutes
        sys.path.insert(0, sys.argv[3])
        import smoke_steps

        original = smoke_steps.step

        def shortStep(name, deadline, kind=smoke_steps.SETUP):
            return original(name, min(deadline, 2), kind)

        smoke_steps.step = shortStep


    class QTimer:
        def setInterval(self, milliseconds):
            pass

        def connect(self, signal, slot):
            assert signal == "timeout()" and callable(slot)

        def start(self):
            pass


    def exit(status):
        print(f"slicer.util.exit({status})", flush=True)
        sys.exit(status)


    def getModuleWidget(name):
        if scenario == "hang":
            time.sleep(3600)  # the stand-in step that hangs
        raise RuntimeError(f"no {name} widget in this stand-in Slicer")


    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(exit=exit, getModuleWidget=getModuleWidget)
    slicer.modules = types.SimpleNamespace()
    slicer.app = types.SimpleNamespace()
    sys.modules.update(qt=qt, slicer=slicer, vtk=types.ModuleType("vtk"))
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")
    """
)


def run_smoke_script(tmp_path, scenario):
    """Run real_slicer_smoke.py itself with stand-in slicer, qt and vtk modules, from
    another folder (the script finds smoke_steps.py beside itself)."""
    driver = tmp_path / "fake_slicer.py"
    driver.write_text(FAKE_SLICER, encoding="utf-8")
    output = tmp_path / "smoke.json"
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, str(driver), str(SMOKE), scenario, str(STEPS.parent)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "MEMORIZATION_INDEX_SMOKE_OUTPUT": str(output)},
    )
    seconds = time.monotonic() - started
    return process, seconds, json.loads(output.read_text(encoding="utf-8"))


def test_the_smoke_script_in_a_slicer_without_the_module_runs_every_step_and_exits_1(tmp_path):
    process, _, results = run_smoke_script(tmp_path, "nothing loaded")
    out = process.stdout
    assert process.returncode == 1, (out, process.stderr)
    assert "slicer.util.exit(1)" in out
    found = statuses(results)
    checks = [r["step"] for r in results["results"] if r["kind"] == "check"]
    assert len(checks) == 10 and checks[0].startswith("1. ") and checks[-1].startswith("10. ")
    assert found[checks[0]] == "failed" and found[checks[1]] == "failed"  # module, panel
    assert [found[c] for c in checks[2:9]] == ["skipped"] * 7  # they need the panel
    assert found[checks[9]] == "failed"  # the self-test cannot import the module
    assert "needs the result of '2. the panel builds" in out
    setup = {r["step"]: r["status"] for r in results["results"] if r["kind"] == "setup"}
    assert setup == {
        "answer the module's dialogs (questions with Cancel)": "passed",
        "poll the deadlines from Slicer's event loop too": "passed",
        "slice views: the main window's layout manager, or one made here": "failed",
        "make a temporary work folder": "passed",
        "write the training set (6 NIfTI volumes)": "passed",
        "remove the temporary work folder": "passed",
    }
    assert "SUMMARY  0 of 10 checks passed, 3 failed, 7 skipped; 5 of 6 other steps" in out
    assert results["status"] == 1 and results["dialogs"] == []


def test_a_smoke_script_run_whose_stand_in_step_hangs_names_it_and_exits_2(tmp_path):
    process, seconds, results = run_smoke_script(tmp_path, "hang")
    out = process.stdout
    assert process.returncode == 2, (out, process.stderr)
    assert seconds < 30, seconds
    panel = "2. the panel builds and its parameter-node connectors bind both ways"
    assert f"HUNG  {panel} after 2 s (its deadline is 2 s)" in out, out
    assert "time.sleep(3600)" in out and "checkPanel" in out  # the stuck stack
    assert f"HUNG: {panel}; exit status 2" in out
    assert "slicer.util.exit" not in out  # Slicer's exit cannot work: os._exit(2)
    found = statuses(results)
    assert found[panel] == "hung" and results["hung"] == panel and results["status"] == 2
    assert list(found)[-1] == panel  # nothing after it ran
    assert not any(s.startswith("3. ") for s in found)
