"""Whether a process is still running, asked in a way that is safe on every system.

POSIX answers `kill(pid, 0)`: no signal is sent, only the existence check. On Windows
`os.kill(pid, 0)` is not a check at all: signal 0 is CTRL_C_EVENT, which Python sends to
every process sharing the console. There the process is opened for a query and its exit
code read (STILL_ACTIVE while it runs), through kernel32.
"""

from __future__ import annotations

import os

STILL_ACTIVE = 259
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87  # no process has that id


def process_alive(pid: int) -> bool:
    """True while a process with this id exists (on this machine)."""
    pid = int(pid)
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        return windows_process_alive(pid, kernel32, ctypes.get_last_error)
    return posix_process_alive(pid)


def posix_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def windows_process_alive(pid: int, kernel32, last_error) -> bool:
    """The Windows check, on kernel32 (ctypes.WinDLL, or a stand-in in tests) and its
    last-error reader (ctypes.get_last_error)."""
    import ctypes

    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        # Access denied means the process exists (a protected or another user's process);
        # an invalid parameter means no process has this id.
        return last_error() == ERROR_ACCESS_DENIED
    try:
        code = ctypes.c_ulong(0)
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # it exists (we hold a handle); its state is unknown
        return code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
