"""Deadlines for the steps of the real-Slicer smoke script (real_slicer_smoke.py).

Plain Python: it imports neither slicer nor qt, so the tests run it with stand-in steps.

Slicer runs a ``--python-script`` in its main (GUI) thread and, without ``--testing``, stays
open after the script ends unless the script calls ``slicer.util.exit``; one step that never
returns (a modal dialog, a wait on a child that never ends) would keep it open for ever.
StepRunner runs every step under a deadline:

* ``run(function, *args)`` runs one step (a function marked with ``step(name, deadline)``),
  prints ``START``, then ``PASS`` or ``FAIL``, and records it. A step given the result of
  an earlier step that did not pass (a ``Missing``) is not run: it is recorded ``SKIP``,
  naming that step.
* ``poll()`` checks the running step's deadline and the whole script's; a watchdog thread
  calls it, and so does a Qt timer of the smoke script. Past a deadline it prints
  ``HUNG  <step> after N s``, the Python stack of every thread and the summary, writes the
  results file with the step recorded as hung, and ends the process with ``os._exit(2)``
  (``slicer.util.exit`` only asks Slicer's event loop to quit, which a stuck main thread
  never reaches).
* Last resort: Slicer's PythonQt keeps Python's lock (the GIL) while the main thread is in
  C++, so a C++ call that never returns stops every Python thread. For that case
  ``faulthandler`` (a C thread) is armed ``grace`` seconds after each deadline: it prints
  ``Timeout (h:mm:ss)!`` and every thread's stack and ends the process with its fixed status
  1; the step's ``START`` line and the results file, where the step is "running", name it.
* ``execute(body)`` runs the body, prints one summary line, writes the results and calls
  the exit function (``slicer.util.exit`` in Slicer) in a ``finally``: 0 when every step
  passed, 1 when one failed or was skipped. A hung step ends the process with 2 instead.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_PASSED, EXIT_FAILED, EXIT_HUNG = 0, 1, 2
PASSED, FAILED, SKIPPED, HUNG, RUNNING = "passed", "failed", "skipped", "hung", "running"
CHECK, SETUP = "check", "setup"


def step(name, deadline, kind=SETUP):
    """Mark a function as a step: its name, its deadline in seconds, check or setup."""

    def mark(function):
        function.stepName = name
        function.stepDeadline = float(deadline)
        function.stepKind = kind
        return function

    return mark


class Missing:
    """The result of a step that did not pass; a later step given it is skipped."""

    def __init__(self, stepName):
        self.stepName = stepName

    def __bool__(self):
        return False

    def __repr__(self):
        return f"Missing({self.stepName!r})"


def printLine(line):
    print(line, flush=True)


def flushC():
    """Flush C's stdio buffers (Slicer prints Python's output through std::cout): os._exit
    and faulthandler's _exit would drop what is still buffered there."""
    try:
        import ctypes

        libc = ctypes.CDLL("ucrtbase") if sys.platform == "win32" else ctypes.CDLL(None)
        libc.fflush(None)
    except Exception:
        pass


def inThread(function, timeout):
    """Run function in a helper thread and wait at most timeout s: a write to a full pipe or
    a stuck file system must not keep the hang report from ending the process."""
    helper = threading.Thread(target=function, name="smoke-report", daemon=True)
    helper.start()
    helper.join(timeout)


class StepRunner:
    """Runs the smoke script's steps, each under its deadline; see the module docstring.

    exit: called once with the status in execute's finally (slicer.util.exit in Slicer).
    output: the results file (JSON), written when each step starts and at the end.
    overallDeadline: seconds for the whole body; exitDeadline: seconds for the application
    to end after exit was called. grace: seconds after a deadline before faulthandler's last
    resort ends the process (None: never). extra: returns more entries for the results file.
    """

    def __init__(
        self,
        exit,
        output=None,
        overallDeadline=7200.0,
        exitDeadline=120.0,
        grace=60.0,
        pollInterval=0.5,
        checkCount=None,
        extra=None,
        write=printLine,
        watchdogThread=True,
    ):
        self.exit = exit
        self.output = Path(output) if output else None
        self.overallDeadline = float(overallDeadline)
        self.exitDeadline = float(exitDeadline)
        self.grace = grace
        self.pollInterval = pollInterval
        self.checkCount = checkCount
        self.extra = extra
        self.write = write
        self.watchdogThread = watchdogThread
        self.results = []
        self._lock = threading.RLock()
        self._hangLock = threading.Lock()
        self._hung = False
        self._current = None  # (name, kind, started, deadline) of the running step
        self._overallEnd = None
        self._started = None
        self._outputError = None

    # ---- the steps ---------------------------------------------------------------------------

    def start(self):
        """Start the clock of the overall deadline and the watchdog thread."""
        self._started = time.monotonic()
        self._overallEnd = self._started + self.overallDeadline
        if self.watchdogThread:
            threading.Thread(target=self._watch, name="smoke-watchdog", daemon=True).start()

    def run(self, function, *args, needs=()):
        """Run one step under its deadline; return its value, or a Missing when it failed,
        was skipped or has no deadline."""
        name = getattr(function, "stepName", getattr(function, "__name__", repr(function)))
        kind = getattr(function, "stepKind", SETUP)
        deadline = getattr(function, "stepDeadline", None)
        if deadline is None:
            error = f"{name} has no deadline (mark it with smoke_steps.step)"
            self._record(name, kind, FAILED, None, 0.0, error=error)
            self.write(f"FAIL  {name}: {error}")
            return Missing(name)
        missing = [a for a in (*args, *needs) if isinstance(a, Missing)]
        if missing:
            reason = f"needs the result of {missing[0].stepName!r}, which did not pass"
            self._record(name, kind, SKIPPED, deadline, 0.0, reason=reason)
            self.write(f"SKIP  {name}: {reason}")
            return Missing(name)
        self.write(f"START {name} (deadline {deadline:g} s)")
        flushC()
        entry = self._begin(name, kind, deadline)
        started = time.monotonic()
        try:
            value = function(*args)
        except Exception as exc:
            seconds = time.monotonic() - started
            self._end(entry, FAILED, seconds, error=repr(exc))
            self.write(f"FAIL  {name} ({seconds:.1f} s): {exc}\n{traceback.format_exc()}")
            return Missing(name)
        except BaseException:
            self._end(entry, FAILED, time.monotonic() - started, error="interrupted")
            raise
        seconds = time.monotonic() - started
        self._end(entry, PASSED, seconds)
        self.write(f"PASS  {name} ({seconds:.1f} s)")
        return value

    def execute(self, body):
        """Run body(self), print the summary, write the results and call exit(status) in a
        finally, whatever happened; return the status."""
        status = EXIT_FAILED
        try:
            try:
                self.start()
                body(self)
            except BaseException as exc:  # a bug between the steps: report it, still exit
                self._record("the smoke script", SETUP, FAILED, None, 0.0, error=repr(exc))
                self.write(f"FAIL  the smoke script: {exc!r}\n{traceback.format_exc()}")
            status = self._finish()
        finally:
            self._beginExit()
            self.exit(status)
        return status

    # ---- deadlines -----------------------------------------------------------------------------

    def poll(self):
        """Check the deadlines; past one, report the hang and end the process (status 2).
        Safe to call from any thread: the watchdog thread and the smoke script's Qt timer."""
        current, now = self._current, time.monotonic()
        if current is not None:
            name, kind, started, deadline = current
            if now - started > deadline:
                reason = f"its deadline is {deadline:g} s"
                self._hang(current, name, kind, now - started, deadline, reason)
                return
        if self._overallEnd is not None and now > self._overallEnd:
            name, kind, started, deadline = current or ("between two steps", SETUP, now, None)
            reason = f"the whole script's deadline of {self.overallDeadline:g} s has passed"
            self._hang(current, name, kind, now - started, deadline, reason)

    def _watch(self):
        while True:
            time.sleep(self.pollInterval)
            self.poll()

    def _arm(self, seconds):
        """faulthandler's last resort: it runs in a C thread, which needs no GIL."""
        if self.grace is None:
            return
        try:
            stderr = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        except Exception:
            stderr = 2
        try:
            faulthandler.dump_traceback_later(seconds + self.grace, exit=True, file=stderr)
        except Exception as exc:
            self.write(f"      (no faulthandler last resort: {exc!r})")

    def _disarm(self):
        if self.grace is not None:
            faulthandler.cancel_dump_traceback_later()

    def _hang(self, current, name, kind, elapsed, deadline, reason):
        with self._hangLock:
            if self._hung:
                return
            self._hung = True
        locked = self._lock.acquire(timeout=5)  # keep the main thread from going on
        if locked and self._current is not current:  # the step ended just now: no hang
            self._hung = False
            self._lock.release()
            return
        entry = next(
            (r for r in self.results if r["step"] == name and r["status"] == RUNNING), None
        )
        if entry is None:
            entry = {"step": name, "kind": kind, "deadline": deadline}
            self.results.append(entry)
        entry.update(status=HUNG, passed=False, seconds=round(elapsed, 3), reason=reason)
        summary = self.summary(EXIT_HUNG)
        text = (
            f"HUNG  {name} after {elapsed:.0f} s ({reason})\n"
            f"Python stacks of all threads:\n{self._stacks()}{summary}\n"
        )
        inThread(lambda: self._emergencyWrite(text), timeout=10)
        payload = self._payload(EXIT_HUNG, summary)
        inThread(lambda: self._writeOutput(payload), timeout=10)
        if locked:
            self._lock.release()
        os._exit(EXIT_HUNG)

    def _stacks(self):
        names = {t.ident: t.name for t in threading.enumerate()}
        main = threading.main_thread().ident
        me = threading.get_ident()
        parts = []
        frames = sorted(sys._current_frames().items(), key=lambda item: item[0] != main)
        for ident, frame in frames:
            if ident == me and ident != main:
                continue  # the watchdog itself
            stack = "".join(traceback.format_stack(frame))
            parts.append(f"--- thread {names.get(ident, ident)} ---\n{stack}")
        return "".join(parts)

    @staticmethod
    def _emergencyWrite(text):
        """Write straight to file descriptor 1: from another thread Slicer's redirected
        sys.stdout only queues a Qt signal for the main thread, which is stuck."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        flushC()
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(1, data) :]

    # ---- records -------------------------------------------------------------------------------

    def _record(self, name, kind, status, deadline, seconds, **details):
        entry = {
            "step": name,
            "kind": kind,
            "status": status,
            "passed": status == PASSED,
            "seconds": round(seconds, 3),
            "deadline": deadline,
            **details,
        }
        with self._lock:
            self.results.append(entry)
        return entry

    def _begin(self, name, kind, deadline):
        with self._lock:
            entry = self._record(name, kind, RUNNING, deadline, 0.0)
            self._current = (name, kind, time.monotonic(), deadline)
            payload = self._payload(None, None)
        remaining = self._overallEnd - time.monotonic() if self._overallEnd else deadline
        self._arm(max(0.0, min(deadline, remaining)))
        self._writeOutput(payload)  # a step that hangs the process shows as "running"
        return entry

    def _end(self, entry, status, seconds, **details):
        self._disarm()
        with self._lock:
            self._current = None
            entry.update(status=status, passed=status == PASSED, seconds=round(seconds, 3))
            entry.update(details)

    def _finish(self):
        """Summary line and results file, under their own deadline."""
        with self._lock:
            self._current = ("report the results", SETUP, time.monotonic(), 60.0)
        self._arm(60.0)
        try:
            status = self.status()
            summary = self.summary(status)
            self.write(summary)
            if not self._writeOutput(self._payload(status, summary)):
                self.write(f"FAIL  could not write {self.output}: {self._outputError}")
                status = max(status, EXIT_FAILED)
            return status
        finally:
            self._disarm()
            with self._lock:
                self._current = None

    def _beginExit(self):
        """The application's own exit, after exit(status), also has a deadline."""
        with self._lock:
            self._overallEnd = None
            self._current = ("the application exits", SETUP, time.monotonic(), self.exitDeadline)
        self._arm(self.exitDeadline)

    def status(self):
        statuses = [r["status"] for r in self.results]
        if HUNG in statuses:
            return EXIT_HUNG
        checks = [r for r in self.results if r["kind"] == CHECK]
        if any(s != PASSED for s in statuses):
            return EXIT_FAILED
        if self.checkCount is not None and len(checks) < self.checkCount:
            return EXIT_FAILED
        return EXIT_PASSED

    def summary(self, status):
        checks = [r for r in self.results if r["kind"] == CHECK]
        setup = [r for r in self.results if r["kind"] != CHECK]
        total = max(self.checkCount or 0, len(checks))

        def count(entries, status):
            return sum(r["status"] == status for r in entries)

        line = f"SUMMARY  {count(checks, PASSED)} of {total} checks passed"
        for label, value in (
            ("failed", count(checks, FAILED)),
            ("skipped", count(checks, SKIPPED)),
            ("hung", count(checks, HUNG)),
            ("not run", total - len(checks)),
        ):
            if value:
                line += f", {value} {label}"
        line += f"; {count(setup, PASSED)} of {len(setup)} other steps passed"
        hung = [r["step"] for r in self.results if r["status"] == HUNG]
        if hung:
            line += f"; HUNG: {hung[0]}"
        return line + f"; exit status {status}"

    def _payload(self, status, summary):
        payload = {
            "status": status,
            "summary": summary,
            "hung": next((r["step"] for r in self.results if r["status"] == HUNG), None),
            "results": [dict(r) for r in self.results],
        }
        if self.extra is not None:
            try:
                payload.update(self.extra())
            except Exception as exc:
                payload["extraError"] = repr(exc)
        return payload

    def _writeOutput(self, payload):
        """Write the results file (atomically); return False when it could not be written."""
        if self.output is None:
            return True
        try:
            partial = self.output.with_name(self.output.name + ".partial")
            partial.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
            os.replace(partial, self.output)
        except Exception as exc:
            self._outputError = repr(exc)
            return False
        return True
