"""Heavy work in a child process: the runner Slicer polls, and the child's entry point.

Building a bank and scoring run in a separate Python (Slicer's own, `PythonSlicer`, or the
interpreter running this code outside Slicer), as MONAIAuto3DSeg runs its inference, so
Slicer's window stays responsive and torch's memory goes away with the child. The child
prints one JSON object per line on stdout:

    {"event": "progress", "stage": "Encoding training scans", "done": 3, "total": 10}
    {"event": "result", ...}                                  on success, then exit code 0
    {"event": "error", "type": "InputError", "message": "...", "traceback": "..."}   exit 1
    {"event": "cancelled"}                                    after SIGTERM, exit code 3

and its log (warnings, tracebacks, anything else printed) on stderr. `ChildProcess` starts
it, reads both streams on threads, and hands everything over in `poll()`, which never
blocks: the module's panel calls it from a qt.QTimer, the console API in a loop (`wait`).
Nothing here imports qt or slicer, so the runner is tested as it is.

Stopping reaches the whole process tree. Inside Slicer the child is the launcher
PythonSlicer, which starts python-real as its own child and forwards no signal, so the
child leads a process group of its own and Cancel signals the group (Windows: ends the
tree). A child still running when this process exits is stopped with it, and the worker
stops by itself when the process that started it is gone (a crash of Slicer).

Run the child by hand (what the runner starts):

    PythonSlicer MemorizationIndex/MemorizationIndexSlicer/process.py TASK.json
"""

from __future__ import annotations

import _thread
import atexit
import collections
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
EXIT_ERROR = 1
EXIT_CANCELLED = 3
LOG_TAIL_LINES = 200
PARENT_PID_VARIABLE = "MEMORIZATION_INDEX_PARENT_PID"
PARENT_CHECK_SECONDS = 1.0
MODULE_DIR = Path(__file__).resolve().parents[1]  # holds MemorizationIndexLib and this package


def formatProgress(stage, done, total):
    """'Encoding training scans: 2 of 10' (whole numbers: the engine's counts may be
    fractional, a volume part-way through the encoder); just the stage when total is 0."""
    if not total:
        return str(stage)
    done = max(0, min(int(math.floor(float(done) + 1e-9)), int(total)))
    return f"{stage}: {done} of {int(total)}"


def pythonExecutable():
    """The Python that runs the child: this interpreter when it is one (a plain Python, or
    PythonSlicer's), else, inside the Slicer application (whose executable is not a
    Python), Slicer's launcher PythonSlicer, which Slicer puts on PATH (as
    slicer.util._executePythonModule finds it)."""
    if "python" in os.path.basename(sys.executable).lower():
        return sys.executable
    found = shutil.which("PythonSlicer")
    if not found:
        raise RuntimeError("Slicer's Python launcher PythonSlicer was not found on PATH.")
    return found


def workerCommand(taskFile, python=None):
    """The command line that runs one task file in a child process."""
    return [python or pythonExecutable(), str(Path(__file__).resolve()), str(taskFile)]


class ChildProcess:
    """One child process: start it, poll() it without blocking, cancel() it.

    onProgress(stage, done, total) and onLog(line) are called from poll(), on the caller's
    thread. After the end, `state` is SUCCEEDED, FAILED or CANCELLED; `result` holds the
    child's result message, `error` its error message (or one made from the exit code of
    a crash), `logTail()` the last lines it wrote.
    """

    def __init__(self, command, env=None, cwd=None, onProgress=None, onLog=None, killAfter=5.0):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.onProgress = onProgress
        self.onLog = onLog
        self.killAfter = float(killAfter)
        self.state = None
        self.progress = ("", 0, 0)
        self.result = None
        self.error = None
        self.returncode = None
        self._log = collections.deque(maxlen=LOG_TAIL_LINES)
        self._queue = queue.Queue()
        self._proc = None
        self._cancelledAt = None
        self._exitedAt = None
        self._killed = False
        self._openStreams = 0

    # ---- start ------------------------------------------------------------------------------
    def start(self):
        """Start the child in a process group of its own (POSIX: a new session; Windows: a
        new process group), so that Cancel reaches everything it starts: inside Slicer the
        child is the launcher PythonSlicer, which runs python-real as its own child and
        forwards no signal to it."""
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONIOENCODING"] = "utf-8"
        env[PARENT_PID_VARIABLE] = str(os.getpid())  # the worker stops when we are gone
        options = {}
        if os.name == "nt":  # no console window (as slicer.util.launchConsoleProcess does)
            options["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(
                subprocess, "CREATE_NEW_PROCESS_GROUP", 0
            )
        else:
            options["start_new_session"] = True
        self._proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **options,
        )
        self.state = RUNNING
        _running.add(self)
        self._openStreams = 2
        for name, stream in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()
        return self

    def _read(self, name, stream):
        try:
            for line in stream:
                self._queue.put((name, line.rstrip("\r\n")))
        finally:
            self._queue.put((name, None))

    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    def isRunning(self):
        return self.state == RUNNING

    # ---- poll -------------------------------------------------------------------------------
    def poll(self):
        """Take what the child wrote so far; return the state (RUNNING until it ended).

        The child has ended when its process has exited and its output is read to the end,
        or, when something it started still holds the pipes open, `killAfter` seconds after
        it exited (its process group is then killed): poll never waits on the pipes alone.
        """
        if self.state != RUNNING:
            return self.state
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._openStreams -= 1
            elif name == "stdout":
                self._stdoutLine(line)
            else:
                self._logLine(line)
        now = time.monotonic()
        if self._cancelledAt is not None and not self._killed:
            if now - self._cancelledAt > self.killAfter:
                self._killTree()
        if self._proc.poll() is None:
            return self.state
        if self._exitedAt is None:
            self._exitedAt = now
        if self._openStreams > 0:
            if now - self._exitedAt <= self.killAfter:
                return self.state
            # The child exited, but a process it started still holds the pipes open (a
            # launcher killed on its own leaves its python-real running): end that too.
            self._killTree()
            self._logLine("(the worker process exited; what it started was stopped)")
        self.returncode = self._proc.returncode
        self._finish()
        return self.state

    def _stdoutLine(self, line):
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or "event" not in message:
            self._logLine(line)
            return
        event = message["event"]
        if event == "progress":
            self.progress = (
                str(message.get("stage", "")),
                message.get("done", 0),
                message.get("total", 0),
            )
            if self.onProgress is not None:
                self.onProgress(*self.progress)
        elif event == "result":
            self.result = message
        elif event == "error":
            self.error = message
        elif event == "log":
            self._logLine(str(message.get("message", "")))

    def _logLine(self, line):
        self._log.append(line)
        if self.onLog is not None:
            self.onLog(line)

    def _finish(self):
        code = self.returncode
        _running.discard(self)
        if code == 0 and self.error is None and self.result is not None:
            # Also after a Cancel that came too late: the child had begun putting its
            # output in place (and so finished it); saying "cancelled" would be untrue.
            self.state = SUCCEEDED
        elif self._cancelledAt is not None:
            self.state = CANCELLED
        else:
            self.state = FAILED
            if self.error is None:
                self.error = {"type": "", "message": self._crashMessage(code)}

    def _crashMessage(self, code):
        if code == 0:
            return "The worker process ended without reporting a result."
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            text = f"The worker process was killed ({name})"
            if -code == getattr(signal, "SIGKILL", 9):
                text += "; it may have run out of memory"
            return text + "."
        return f"The worker process stopped unexpectedly (exit code {code})."

    # ---- cancel and wait --------------------------------------------------------------------
    @property
    def cancelRequested(self):
        return self._cancelledAt is not None

    def cancel(self):
        """Ask the child and everything it started to stop: SIGTERM to its process group
        (the engine cleans up); poll() kills the group when it has not ended `killAfter`
        seconds later. Windows has no such signal: the process tree is ended at once (the
        Job's clean-up then removes what it left half-written)."""
        if self.state != RUNNING or self._cancelledAt is not None:
            return
        self._cancelledAt = time.monotonic()
        if os.name == "nt":
            self._killTree()
        else:
            self._signalGroup(signal.SIGTERM)

    def _signalGroup(self, signum):
        try:
            os.killpg(self._proc.pid, signum)  # the child leads its own group (start)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is gone already

    def _killTree(self):
        """End the child and everything it started, now."""
        self._killed = True
        if os.name == "nt":
            subprocess.run(
                ["taskkill", "/PID", str(self._proc.pid), "/T", "/F"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
                check=False,
            )
            if self._proc.poll() is None:
                self._proc.kill()
        else:
            self._signalGroup(signal.SIGKILL)

    def stop(self, timeout=None):
        """Cancel and wait until the child has ended (killed after `killAfter` seconds, or
        `timeout`): for closing the panel or the application, when nobody polls any more."""
        self.cancel()
        self.wait(self.killAfter + 2.0 if timeout is None else timeout)
        if self.state == RUNNING:
            self._killTree()
            self.wait(2.0)
        return self.state

    def wait(self, timeout=None, interval=0.05, cancel=None):
        """poll() until the child ends (or `timeout` seconds); `cancel()` returning True
        cancels it. Returns the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == RUNNING:
            if cancel is not None and cancel():
                self.cancel()
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
        return self.state

    def logTail(self, lines=40):
        return "\n".join(list(self._log)[-lines:])

    def errorMessage(self):
        return (self.error or {}).get("message", "")

    def errorDetails(self):
        """The child's traceback (if it sent one) and the tail of its log, for a dialog."""
        parts = []
        trace = (self.error or {}).get("traceback")
        if trace:
            parts.append(trace.rstrip())
        tail = self.logTail()
        if tail:
            parts.append("Log of the worker process (last lines):\n" + tail)
        return "\n\n".join(parts)


class WorkerError(RuntimeError):
    """A child process failed in a way the engine has no exception class for (a crash)."""


class Job:
    """A task in a child process plus what the caller does with its result.

    `finish(child)` runs once, in the caller's process, when the child succeeded (loading
    the results into the scene); `cleanup()` runs once whatever the outcome (removing
    temporary files, and what a killed child left half-written). poll() and wait() return
    the state; `value` is finish's return value, `exception` what failed.
    """

    def __init__(self, title, child, finish=None, cleanup=None):
        self.title = title
        self.child = child
        self._finishCallback = finish
        self._cleanupCallback = cleanup
        self.state = RUNNING
        self.value = None
        self.exception = None

    @property
    def progress(self):
        return self.child.progress

    def statusText(self):
        return formatProgress(*self.progress) if self.progress[0] else self.title

    def poll(self):
        if self.state != RUNNING:
            return self.state
        childState = self.child.poll()
        if childState == RUNNING:
            return RUNNING
        try:
            if childState == SUCCEEDED and self._finishCallback is not None:
                self.value = self._finishCallback(self.child)
            elif childState == CANCELLED:
                self.exception = _engineOr(
                    "CancelledError", "Stopped at the user's request; nothing was written."
                )
            elif childState == FAILED:
                self.exception = self._failure()
        except Exception as exc:  # loading the results failed
            self.exception = exc
            childState = FAILED
        finally:
            if self._cleanupCallback is not None:
                self._cleanupCallback()
        self.state = childState
        return self.state

    def _failure(self):
        error = self.child.error or {}
        message = error.get("message") or "The worker process failed."
        exc = _engineOr(error.get("type", ""), message, default=WorkerError)
        exc.workerLog = self.child.errorDetails()
        return exc

    def cancel(self):
        self.child.cancel()

    def stop(self, timeout=None):
        """Stop the child and clean up now, without loading what it made (the panel or
        the application is closing). Returns the state."""
        self._finishCallback = None
        self.child.stop(timeout)
        return self.poll()

    def wait(self, progress=None, cancel=None, interval=0.05):
        """Block until the job ends. Returns finish's value; raises what failed (the engine's
        own exception class where the child reported one, CancelledError on cancel)."""
        previous = self.child.onProgress
        if progress is not None:
            self.child.onProgress = progress
        try:
            while self.poll() == RUNNING:
                if cancel is not None and cancel():
                    self.cancel()
                time.sleep(interval)
        finally:
            self.child.onProgress = previous
        if self.exception is not None:
            raise self.exception
        return self.value


# Children still running when this process exits (Slicer closing, a console script ending)
# are stopped with it: they would otherwise go on, and might write their output later.
_running = weakref.WeakSet()


@atexit.register
def _stopRunningChildren():
    for child in list(_running):
        try:
            child.stop(timeout=3.0)
        except Exception:  # exiting: nothing else to do
            pass


def _engineOr(typeName, message, default=None):
    """The engine's exception class of that name with the message, else `default` (or a
    WorkerError)."""
    try:
        from MemorizationIndexSlicer import engine

        exc = engine.engineError(typeName, message)
    except ImportError:
        exc = None
    return exc if exc is not None else (default or WorkerError)(message)


# ---- the child's side -----------------------------------------------------------------------
class _Emitter:
    """JSON lines on the real stdout; progress at most every 0.1 s (stage changes and the
    last step always)."""

    def __init__(self, stream):
        self.stream = stream
        self.lastStage = None
        self.lastTime = 0.0

    def send(self, event, **fields):
        self.stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.stream.flush()

    def progress(self, stage, done, total):
        now = time.monotonic()
        if stage == self.lastStage and now - self.lastTime < 0.1 and done < total:
            return
        self.lastStage, self.lastTime = stage, now
        self.send("progress", stage=str(stage), done=float(done), total=int(total or 0))


class _Cancelled(BaseException):
    """Raised by the SIGTERM handler, wherever the child is."""


def _watchParent(parentPid, onGone):
    """Call onGone() once the process that started this child has ended (Slicer closed or
    crashed without stopping it): the work's only reader is gone."""
    if not parentPid:
        return
    from MemorizationIndexSlicer import engine

    def watch():
        while engine.processAlive(int(parentPid)):
            time.sleep(PARENT_CHECK_SECONDS)
        onGone()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def childMain(argv=None):
    """Run one task file (JSON, see engine.py); report on stdout as described above."""
    import traceback

    from MemorizationIndexSlicer import engine

    argv = sys.argv[1:] if argv is None else argv
    emitter = _Emitter(sys.stdout)
    sys.stdout = sys.stderr  # anything else printed goes to the log, not the JSON stream
    cancelled = threading.Event()

    def stopRequested():
        # Once an output is being put in place the task runs to its end (atomic.py).
        return cancelled.is_set() and not engine.commitStarted()

    def onTerminate(signum, frame):
        if not cancelled.is_set():
            cancelled.set()
            if stopRequested():
                raise _Cancelled()

    def onParentGone():
        cancelled.set()
        if stopRequested():
            _thread.interrupt_main()  # KeyboardInterrupt in the main thread: stop there

    signal.signal(signal.SIGTERM, onTerminate)
    _watchParent(os.environ.get(PARENT_PID_VARIABLE), onParentGone)
    try:
        task = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        value = engine.runTask(task, progress=emitter.progress, cancel=stopRequested)
        emitter.send("result", **value)
        return 0
    except _Cancelled:
        emitter.send("cancelled")
        return EXIT_CANCELLED
    except BaseException as exc:  # everything reaches the parent as a message
        if stopRequested() or type(exc).__name__ == "CancelledError":
            emitter.send("cancelled")
            return EXIT_CANCELLED
        message = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError):
            message = "Out of memory. Use a smaller batch size or image size, or a larger machine."
        trace = traceback.format_exc()
        print(trace, file=sys.stderr)
        emitter.send("error", type=type(exc).__name__, message=message, traceback=trace)
        return EXIT_ERROR


if __name__ == "__main__":
    # Run as a script: put the module folder (MemorizationIndexLib and this package) first
    # on the path, in place of this file's own folder.
    sys.path[0] = str(MODULE_DIR)
    from MemorizationIndexSlicer.process import childMain as _childMain

    sys.exit(_childMain())
