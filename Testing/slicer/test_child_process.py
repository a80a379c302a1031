"""Build and score in a child process: the runner, progress, Cancel and failures, for real.

The runner (MemorizationIndexSlicer.process.ChildProcess) is plain Python: the panel only
connects a QTimer to its poll(). Here it runs small scripts that stand in for a child that
crashes, is killed or ignores SIGTERM, and the real child (process.py running the engine)
on small data from a slicer-core scene.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types

import pytest
from MemorizationIndexLib.errors import CancelledError, InputError
from MemorizationIndexSlicer import logic as logic_module
from MemorizationIndexSlicer import process
from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic
from MemorizationIndexSlicer.process import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    ChildProcess,
    Job,
    WorkerError,
    formatProgress,
    workerCommand,
)
from slicer_test_helpers import (
    add_volume,
    synthetic_with_copy,
    tiny_bank_settings,
    tiny_encoder_config,
)


def script(body):
    return [sys.executable, "-c", textwrap.dedent(body)]


def progress_line(stage, done, total):
    return json.dumps({"event": "progress", "stage": stage, "done": done, "total": total})


def run_until_done(child, timeout=60.0):
    deadline = time.monotonic() + timeout
    while child.poll() == RUNNING:
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.02)
    return child.state


# ---- the runner on stand-in children ------------------------------------------------------------


def test_progress_log_and_result_arrive_through_poll():
    seen = []
    child = ChildProcess(
        script(
            f"""
            import sys
            print({progress_line("Encoding", 0, 3)!r}, flush=True)
            print("a plain line on stdout goes to the log", flush=True)
            print("a warning on stderr", file=sys.stderr, flush=True)
            print({progress_line("Encoding", 2.3333333, 3)!r}, flush=True)
            print('{{"event": "result", "bank": "/x"}}', flush=True)
            """
        ),
        onProgress=lambda *p: seen.append(p),
    )
    child.start()
    assert run_until_done(child) == SUCCEEDED
    assert seen == [("Encoding", 0, 3), ("Encoding", 2.3333333, 3)]
    assert child.result == {"event": "result", "bank": "/x"}
    assert child.returncode == 0
    assert "a plain line on stdout goes to the log" in child.logTail()
    assert "a warning on stderr" in child.logTail()
    # The panel's status line: whole numbers.
    assert formatProgress(*child.progress) == "Encoding: 2 of 3"


def test_progress_text_is_whole_numbers():
    assert formatProgress("Encoding training scans", 2.3333333, 10) == (
        "Encoding training scans: 2 of 10"
    )
    assert formatProgress("Verifying", 9.5, 10) == "Verifying: 9 of 10"
    assert formatProgress("Verifying", 10.0, 10) == "Verifying: 10 of 10"
    assert formatProgress("Loading", 0, 0) == "Loading"


def test_poll_never_waits_for_the_child():
    child = ChildProcess(script("import time; time.sleep(30)")).start()
    try:
        started = time.monotonic()
        for _ in range(20):
            assert child.poll() == RUNNING
        assert time.monotonic() - started < 1.0
    finally:
        child.cancel()
        run_until_done(child)


def test_a_crash_reports_its_exit_code_and_log():
    child = ChildProcess(
        script(
            f"""
            import os, sys
            print({progress_line("Encoding", 1, 4)!r}, flush=True)
            print("Traceback: something broke in a library", file=sys.stderr, flush=True)
            os._exit(7)
            """
        )
    ).start()
    assert run_until_done(child) == FAILED
    assert "exit code 7" in child.errorMessage()
    assert "something broke" in child.errorDetails()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_child_killed_by_the_system_suggests_memory():
    child = ChildProcess(script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")).start()
    assert run_until_done(child) == FAILED
    assert "SIGKILL" in child.errorMessage() and "out of memory" in child.errorMessage()


def test_an_error_message_from_the_child_becomes_the_engines_exception():
    child = ChildProcess(
        script(
            """
            import json, sys
            print(json.dumps({"event": "error", "type": "InputError",
                              "message": "nothing readable in /data", "traceback": "TB"}))
            sys.exit(1)
            """
        )
    ).start()
    job = Job("Scoring", child)
    with pytest.raises(InputError, match="nothing readable in /data") as raised:
        job.wait()
    assert job.state == FAILED
    assert "TB" in raised.value.workerLog


def test_a_crash_without_a_message_raises_a_worker_error():
    job = Job("Scoring", ChildProcess(script("import os; os._exit(3)")).start())
    with pytest.raises(WorkerError, match="exit code 3"):
        job.wait()


def test_cancel_ends_a_child_that_stops_on_sigterm():
    child = ChildProcess(script("import time; time.sleep(60)")).start()
    time.sleep(0.2)
    child.cancel()
    assert run_until_done(child, timeout=10) == CANCELLED


@pytest.mark.skipif(sys.platform == "win32", reason="terminate is already a kill there")
def test_cancel_kills_a_child_that_ignores_sigterm():
    child = ChildProcess(
        script(
            f"""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print({progress_line("Busy", 0, 1)!r}, flush=True)
            time.sleep(60)
            """
        ),
        killAfter=0.5,
    ).start()
    while child.poll() == RUNNING and not child.progress[0]:
        time.sleep(0.02)
    started = time.monotonic()
    child.cancel()
    assert run_until_done(child, timeout=10) == CANCELLED
    assert child.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


# ---- the real child on small data ----------------------------------------------------------


def test_the_child_runs_from_its_own_file(monkeypatch, tmp_path):
    command = workerCommand("task.json")
    assert command[0] == sys.executable  # a Python (here, or PythonSlicer's) runs it itself
    assert command[1].endswith("MemorizationIndexSlicer/process.py")
    # Inside the Slicer application sys.executable is SlicerApp-real: PythonSlicer from PATH.
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setattr(process.sys, "executable", "/opt/Slicer/bin/SlicerApp-real")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert process.pythonExecutable() == str(launcher)


def test_build_streams_progress_and_loads_the_bank(bank_build):
    """The session's bank (conftest.bank_build) was started in a child and polled."""
    job, stages = bank_build.job, bank_build.stages
    assert job.state == SUCCEEDED
    assert bank_build.polls > 5  # the caller's loop ran while the child worked
    assert len(job.value.volumes) == 3 and job.value.path == str(bank_build.folder)
    assert (bank_build.folder / "manifest.json").is_file()
    assert stages and all(isinstance(total, int) for _, _, total in stages)
    assert any(total > 0 and done <= total for _, done, total in stages)
    assert len({stage for stage, _, _ in stages}) >= 2
    assert not list(bank_build.folder.parent.glob(".bank.partial-*"))


def test_cancelling_a_build_leaves_no_bank(training_set, scene_and_app, tmp_path):
    scene, app = scene_and_app
    logic = MemorizationIndexSceneLogic(scene, app)
    job = logic.startBuildBank(
        training_set.folder,
        tmp_path / "bank",
        settings=tiny_bank_settings(),
        encoderConfig=tiny_encoder_config(),
        device="cpu",
    )
    work_dir = logic_module.Path(job.child.command[2]).parent
    while job.poll() == RUNNING and not job.progress[0]:
        time.sleep(0.02)
    job.cancel()
    while job.poll() == RUNNING:
        time.sleep(0.02)
    assert job.state == CANCELLED
    assert isinstance(job.exception, CancelledError)
    assert logic.bank is None
    assert not (tmp_path / "bank").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written bank under any name
    assert not work_dir.exists()  # the task file's folder is gone too


def test_console_cancel_raises_cancelled(training_set, scene_and_app, tmp_path):
    scene, app = scene_and_app
    logic = MemorizationIndexSceneLogic(scene, app)
    seen = []
    with pytest.raises(CancelledError):
        logic.buildBank(
            training_set.folder,
            tmp_path / "bank",
            settings=tiny_bank_settings(),
            encoderConfig=tiny_encoder_config(),
            device="cpu",
            progress=lambda *p: seen.append(p),
            cancel=lambda: bool(seen),
        )
    assert not (tmp_path / "bank").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_child_leaves_nothing_half_written(scene_and_app, tmp_path, monkeypatch):
    """A child that does not stop on SIGTERM is killed mid-write; what it had started (the
    atomic writer's temporary folder) is removed, another live run's folder is not."""
    scene, app = scene_and_app
    before = tmp_path / f".bank.partial-{socket.gethostname()}-{os.getpid()}-running"
    before.mkdir()
    stubborn = f"""
        import pathlib, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        partial = pathlib.Path({str(tmp_path)!r}) / ".bank.partial-abc123"
        partial.mkdir()
        (partial / "features_layer1.npy").write_bytes(b"half")
        print({progress_line("Encoding training scans", 0, 3)!r}, flush=True)
        time.sleep(60)
        """
    monkeypatch.setattr(logic_module, "workerCommand", lambda task, python=None: script(stubborn))
    logic = MemorizationIndexSceneLogic(scene, app)
    job = logic.startBuildBank("train", tmp_path / "bank")
    job.child.killAfter = 0.3
    while job.poll() == RUNNING and not job.progress[0]:
        time.sleep(0.02)
    job.cancel()
    with pytest.raises(CancelledError):
        job.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [before.name]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_child_killed_mid_swap_gets_the_old_bank_back(scene_and_app, tmp_path, monkeypatch):
    """Without a one-step exchange the engine moves the old bank aside before renaming the
    new one in; a child killed between the two renames leaves it aside. The job's clean-up
    runs the engine's recovery, which puts it back."""
    scene, app = scene_and_app
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "manifest.json").write_text("the old bank")
    stubborn = f"""
        import os, pathlib, signal, socket, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bank = pathlib.Path({str(bank)!r})
        aside = bank.parent / f".bank.old-{{socket.gethostname()}}-{{os.getpid()}}-xyz"
        aside.mkdir()
        os.replace(bank, aside / "bank")
        print({progress_line("Saving the bank", 0, 1)!r}, flush=True)
        time.sleep(60)
        """
    monkeypatch.setattr(logic_module, "workerCommand", lambda task, python=None: script(stubborn))
    job = MemorizationIndexSceneLogic(scene, app).startBuildBank("train", bank)
    job.child.killAfter = 0.3
    while job.poll() == RUNNING and not job.progress[0]:
        time.sleep(0.02)
    assert not bank.exists()  # moved aside by the child
    job.cancel()
    with pytest.raises(CancelledError):
        job.wait()
    assert (bank / "manifest.json").read_text(encoding="utf-8") == "the old bank"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_a_failing_child_reports_the_engines_error_and_log(logic, scene_and_app, tmp_path):
    folder = tmp_path / "synthetic"
    folder.mkdir()
    (folder / "broken.nii.gz").write_bytes(b"not an image at all")
    job = logic.startScoreFolder(folder, device="cpu")
    with pytest.raises(InputError, match="None of the synthetic scans could be used") as raised:
        job.wait()
    assert job.state == FAILED
    assert "broken.nii.gz" in str(raised.value)
    assert "Traceback" in raised.value.workerLog  # the child's traceback for the dialog
    assert logic.result is None


def test_score_runs_in_the_child_and_loads_the_results_here(
    logic, scene_and_app, training_set, tmp_path
):
    scene, _ = scene_and_app
    node = add_volume(scene, synthetic_with_copy(training_set, flip=True), "synth-01")
    stages = []
    job = logic.startScoreVolumes(
        [node],
        device="cpu",
        reportFolder=tmp_path / "report",
        onProgress=lambda *p: stages.append(p),
    )
    result = job.wait()
    assert job.state == SUCCEEDED and result is logic.result
    assert result.volumes[0]["volume"] == "synth-01" and result.volumes[0]["flagged"]
    assert logic.syntheticNodeForRow(result.slices[0]) is node
    assert logic.sliceTableNode().GetNumberOfRows() == len(result.slices)
    assert {stage for stage, _, _ in stages} >= {"Scoring synthetic slices"}
    # The child also wrote the engine's report, in one step, next to nothing half-written.
    assert (tmp_path / "report" / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# ---- Cancel reaches the whole process tree (PythonSlicer starts python-real as its child) ----


def stand_in_launcher(tmp_path):
    """An executable that behaves as Slicer's PythonSlicer (a CTK launcher): it runs the
    Python command it was given as its own child, passes its output through, waits for it
    and forwards no signal (SIGTERM ends the launcher alone)."""
    launcher = tmp_path / "launcher" / "PythonSlicer"
    launcher.parent.mkdir()
    launcher.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys\n"
        "sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))\n",
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    return launcher


def children_of(pid):
    """Process ids whose parent is pid (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def gone(pid):
    """The process has ended (a zombie counts as ended: it runs nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")


@needs_proc
def test_cancel_ends_the_worker_a_launcher_started(training_set, scene_and_app, tmp_path):
    """Through a launcher that forwards no signal, as PythonSlicer: the worker (the
    launcher's child) is gone within 5 s of Cancel and no bank is written."""
    scene, app = scene_and_app
    logic = MemorizationIndexSceneLogic(scene, app)
    logic.pythonExecutable = str(stand_in_launcher(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    job = logic.startBuildBank(
        training_set.folder,
        out / "bank",
        settings=tiny_bank_settings(),
        encoderConfig=tiny_encoder_config(),
        device="cpu",
    )
    launcher_pid = job.child.pid
    while job.poll() == RUNNING and not job.progress[0]:
        time.sleep(0.02)
    assert job.state == RUNNING, "the build ended before it could be cancelled"
    (worker,) = children_of(launcher_pid)  # python-real's stand-in, encoding now
    job.cancel()
    cancelled_at = time.monotonic()
    while not gone(worker):
        job.poll()
        assert time.monotonic() - cancelled_at < 5.0, "the launcher's child is still running"
        time.sleep(0.02)
    while job.poll() == RUNNING:
        assert time.monotonic() - cancelled_at < 10.0, "the job did not end"
        time.sleep(0.02)
    assert job.state == CANCELLED and isinstance(job.exception, CancelledError)
    time.sleep(1.0)  # a surviving worker would write its bank about now
    assert list(out.iterdir()) == []
    assert logic.bank is None


@needs_proc
def test_a_launcher_that_dies_alone_does_not_leave_poll_waiting(tmp_path):
    """The launcher ends while the process it started still holds the pipes: poll() does
    not wait on the pipes for ever; it ends that process and reports the failure."""
    child = ChildProcess(
        script(
            """
            import subprocess, sys
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            sys.exit(0)
            """
        ),
        killAfter=0.5,
    ).start()
    started = time.monotonic()
    deadline = started + 10
    orphans = []
    while child.poll() == RUNNING:
        orphans = orphans or children_of(child.pid)
        assert time.monotonic() < deadline, "poll() waited on the pipes"
        time.sleep(0.02)
    assert child.state == FAILED
    assert "ended without reporting a result" in child.errorMessage()
    for pid in orphans:
        deadline = time.monotonic() + 5
        while not gone(pid):
            assert time.monotonic() < deadline, "what the launcher started still runs"
            time.sleep(0.02)


def test_stop_ends_a_child_that_ignores_sigterm_and_cleans_up(scene_and_app, tmp_path, monkeypatch):
    """Closing the panel (Job.stop): nobody polls afterwards, so stop() itself waits, kills
    and runs the clean-up; finish (loading results) is not run."""
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('{"event": "progress", "stage": "Busy", "done": 0, "total": 1}', flush=True)
        time.sleep(60)
        """
    monkeypatch.setattr(logic_module, "workerCommand", lambda task, python=None: script(stubborn))
    scene, app = scene_and_app
    job = MemorizationIndexSceneLogic(scene, app).startBuildBank("train", tmp_path / "bank")
    work_dir = logic_module.Path(job.child.cwd or ".")  # unused; the task folder is below
    job.child.killAfter = 0.3
    while job.poll() == RUNNING and not job.progress[0]:
        time.sleep(0.02)
    started = time.monotonic()
    assert job.stop(timeout=1.0) == CANCELLED
    assert time.monotonic() - started < 5
    assert job.child.returncode == -signal.SIGKILL
    assert job.value is None and not (tmp_path / "bank").exists()
    assert work_dir.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_the_child_leads_its_own_process_group():
    child = ChildProcess(
        script("import os, time; print(os.getpgid(0), flush=True); time.sleep(30)")
    )
    child.start()
    try:
        while not child.logTail():
            child.poll()
            time.sleep(0.02)
        assert int(child.logTail()) == child.pid != os.getpgid(0)
    finally:
        child.cancel()
        run_until_done(child)


def test_on_windows_cancel_ends_the_process_tree(monkeypatch):
    """Windows has no SIGTERM for a process group: Cancel runs taskkill over the tree."""
    ran = []
    monkeypatch.setattr(process.os, "name", "nt", raising=False)
    monkeypatch.setattr(process.subprocess, "run", lambda command, **kw: ran.append(command))
    child = ChildProcess(["worker"])
    killed = []
    child._proc = types.SimpleNamespace(pid=4321, poll=lambda: None, kill=lambda: killed.append(1))
    child.state = RUNNING
    child.cancel()
    assert ran == [["taskkill", "/PID", "4321", "/T", "/F"]]
    assert killed == [1]  # and the child itself, should taskkill have missed it


# ---- the worker's side: a late Cancel, and a parent that is gone ------------------------------


def worker_script(run_task_body):
    """The real worker entry point (process.childMain) with engine.runTask replaced."""
    body = textwrap.indent(textwrap.dedent(run_task_body).strip(), "    ")
    return "\n".join(
        [
            "import sys",
            f"sys.path.insert(0, {str(process.MODULE_DIR)!r})",
            "from MemorizationIndexSlicer import engine, process",
            "",
            "def runTask(task, progress=None, cancel=None):",
            body,
            "",
            "engine.runTask = runTask",
            "open('task.json', 'w').write('{}')",
            "sys.exit(process.childMain(['task.json']))",
        ]
    )


def run_worker(body, tmp_path, env=None, timeout=30):
    completed = subprocess.run(
        [sys.executable, "-c", worker_script(body)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    events = [json.loads(line)["event"] for line in completed.stdout.splitlines()]
    return completed.returncode, events, completed.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_sigterm_before_the_output_is_committed_stops_the_worker(tmp_path):
    code, events, log = run_worker(
        """
        import os, signal
        from MemorizationIndexLib.atomic import atomic_directory
        with atomic_directory("bank", "bank") as folder:
            (folder / "features.npy").write_bytes(b"x")
            os.kill(os.getpid(), signal.SIGTERM)  # Cancel while the bank is being written
        return {"bank": "bank"}
        """,
        tmp_path,
    )
    assert (code, events) == (process.EXIT_CANCELLED, ["cancelled"]), log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_sigterm_while_the_output_is_committed_lets_the_worker_finish(tmp_path):
    """Once the finished bank is being swapped in, Cancel is too late: the worker finishes
    and says so (result, exit 0), so the panel does not report "cancelled" for a bank that
    was in fact replaced."""
    code, events, log = run_worker(
        """
        import os, signal
        from MemorizationIndexLib import atomic
        hit = []

        def fault(where):
            if where == "swapped":
                hit.append(where)
                os.kill(os.getpid(), signal.SIGTERM)  # Cancel during the swap

        atomic._fault_point = fault
        (pathlib := __import__("pathlib")).Path("bank").mkdir()
        atomic.write_marker(pathlib.Path("bank"), "bank")
        with atomic.atomic_directory("bank", "bank") as folder:
            (folder / "features.npy").write_bytes(b"new")
        assert hit and not cancel()  # the request is noted but no longer stops the task
        return {"bank": "bank"}
        """,
        tmp_path,
    )
    assert (code, events) == (0, ["result"]), log
    assert (tmp_path / "bank" / "features.npy").read_bytes() == b"new"


def test_the_worker_stops_when_the_process_that_started_it_is_gone(tmp_path):
    """Slicer crashed or was killed: no panel will ever cancel or read the worker, so it
    stops by itself within seconds (cancelled, nothing written)."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = dict(os.environ, **{process.PARENT_PID_VARIABLE: str(parent.pid)})
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            worker_script(
                """
                import pathlib, time
                pathlib.Path("started").touch()
                while not cancel():  # long work; stopped by an interrupt or at a check
                    time.sleep(0.05)
                raise __import__("MemorizationIndexLib").CancelledError("stopped")
                """
            ),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and worker.poll() is None, worker.stderr.read()
            time.sleep(0.02)
        time.sleep(1.5)
        assert worker.poll() is None  # the parent is alive: the worker goes on
        parent.kill()
        parent.wait()
        out, err = worker.communicate(timeout=5 + process.PARENT_CHECK_SECONDS)
    finally:
        parent.kill()
        worker.kill()
    assert worker.returncode == process.EXIT_CANCELLED, err
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["cancelled"]


def test_the_worker_gets_the_openmp_switch_and_this_process_does_not(monkeypatch):
    monkeypatch.delenv("KMP_DUPLICATE_LIB_OK", raising=False)
    from MemorizationIndexSlicer import engine

    environment = engine.childEnvironment()
    assert environment["KMP_DUPLICATE_LIB_OK"] == "TRUE"
    assert "KMP_DUPLICATE_LIB_OK" not in os.environ
    monkeypatch.setenv("KMP_DUPLICATE_LIB_OK", "FALSE")  # the user's own choice stands
    assert engine.childEnvironment()["KMP_DUPLICATE_LIB_OK"] == "FALSE"
