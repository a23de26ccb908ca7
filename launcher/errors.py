"""The one exception type users see: a message that names the file, what was expected and the fix."""


class LauncherError(Exception):
    """A failure explained to the user; the CLI prints the message (no traceback) and exits 1."""

    exit_code = 1


class UnitBusyError(LauncherError):
    """Another process holds the lock of this root or unit."""

    exit_code = 3
