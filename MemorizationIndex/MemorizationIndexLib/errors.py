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
