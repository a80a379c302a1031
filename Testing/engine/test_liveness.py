"""process_alive: the leftover-folder owner check and the worker's parent check.

On Windows `os.kill(pid, 0)` is no existence check (signal 0 is CTRL_C_EVENT, sent to the
whole console), so that path asks kernel32; it is run here on a stand-in kernel32 that
answers as Windows documents, and must never call os.kill.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
from MemorizationIndexLib import liveness
from MemorizationIndexLib.liveness import (
    ERROR_ACCESS_DENIED,
    ERROR_INVALID_PARAMETER,
    STILL_ACTIVE,
    process_alive,
    windows_process_alive,
)


def ended_pid():
    """The id of a process that has ended and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name == "nt", reason="the POSIX path")
def test_posix_path_tells_a_live_process_from_an_ended_one():
    assert process_alive(os.getpid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not process_alive(sleeper.pid)
    assert not process_alive(ended_pid())
    assert not process_alive(0) and not process_alive(-5)


@pytest.mark.skipif(os.name == "nt", reason="the POSIX path")
def test_posix_path_counts_another_users_process_as_alive(monkeypatch):
    def denied(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(liveness.os, "kill", denied)
    assert process_alive(1)


class Kernel32:
    """kernel32 as Windows answers: OpenProcess gives 0 and sets the last error when it
    fails; GetExitCodeProcess writes STILL_ACTIVE while the process runs."""

    def __init__(self, processes, denied=()):
        self.processes = processes  # pid -> exit code (STILL_ACTIVE while running)
        self.denied = set(denied)
        self.last_error = 0
        self.open_handles = set()
        self.calls = []

    def OpenProcess(self, access, inherit, pid):  # noqa: N802 (the Win32 name)
        self.calls.append(("OpenProcess", access, pid))
        if pid in self.denied:
            self.last_error = ERROR_ACCESS_DENIED
            return 0
        if pid not in self.processes:
            self.last_error = ERROR_INVALID_PARAMETER
            return 0
        handle = 1000 + pid
        self.open_handles.add(handle)
        return handle

    def GetExitCodeProcess(self, handle, code_pointer):  # noqa: N802
        code_pointer._obj.value = self.processes[handle - 1000]
        return 1

    def CloseHandle(self, handle):  # noqa: N802
        self.open_handles.remove(handle)
        return 1


def test_windows_path_asks_kernel32_and_never_sends_a_signal(monkeypatch):
    def no_signals(pid, sig):
        raise AssertionError("os.kill on Windows sends CTRL_C_EVENT to the console")

    monkeypatch.setattr(os, "kill", no_signals)
    kernel32 = Kernel32({10: STILL_ACTIVE, 11: 0, 12: 3}, denied={13})

    def alive(pid):
        return windows_process_alive(pid, kernel32, lambda: kernel32.last_error)

    assert alive(10)  # running
    assert not alive(11) and not alive(12)  # exited (its handle still open somewhere)
    assert not alive(99)  # no such process
    assert alive(13)  # a protected process: it exists
    assert kernel32.open_handles == set()  # every handle opened was closed
    access = {call[1] for call in kernel32.calls}
    assert access == {liveness.PROCESS_QUERY_LIMITED_INFORMATION}


def test_windows_path_is_taken_on_windows(monkeypatch):
    """process_alive picks the kernel32 path when os.name is "nt"."""
    kernel32 = Kernel32({42: STILL_ACTIVE})
    monkeypatch.setattr(liveness.os, "name", "nt")
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel32.last_error, raising=False)
    monkeypatch.setattr(liveness, "posix_process_alive", None)  # must not be called
    assert process_alive(42)
    assert not process_alive(43)


def test_the_leftover_of_an_ended_run_goes_and_a_live_runs_stays(tmp_path):
    """atomic.py's clean-up asks the same check about the process named in the folder."""
    import socket

    from MemorizationIndexLib.atomic import recover_output

    host = socket.gethostname()
    dead = tmp_path / f".bank.partial-{host}-{ended_pid()}-abc"
    live = tmp_path / f".bank.partial-{host}-{os.getpid()}-def"
    dead.mkdir()
    live.mkdir()
    recover_output(tmp_path / "bank")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
