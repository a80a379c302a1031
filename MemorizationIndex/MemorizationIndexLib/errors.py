"""Error types the engine raises for problems a user can fix.

Every message names the file or setting at fault, so the CLI and the Slicer
module can show it as is. Programming errors stay ordinary exceptions.
"""


class MemorizationIndexError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class InputError(MemorizationIndexError):
    """A scan or folder that cannot be used (unreadable, empty, 2D, ...)."""


class CheckpointError(MemorizationIndexError):
    """An encoder checkpoint that cannot be loaded as MRI-CORE weights."""


class BankError(MemorizationIndexError):
    """A feature bank that is missing, damaged or built with other settings."""


class SettingsError(MemorizationIndexError):
    """An option value outside what the engine supports."""


class CancelledError(MemorizationIndexError):
    """Raised inside long work when the caller asked to stop."""


def unreachable_reason(path) -> str:
    """' (permission denied ...)' when a path only looks missing because it cannot be reached.

    os.path.exists says False for a file inside a folder we may not open; telling the user
    it "does not exist" sends them looking in the wrong place.
    """
    import os

    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        if not os.access(path, os.R_OK):
            return ": permission denied"
        return ""
    folder = os.path.dirname(path)
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return ""
        folder = parent
    if folder and not os.access(folder, os.R_OK | os.X_OK):
        return f" or cannot be reached (no permission to open {folder})"
    return ""
