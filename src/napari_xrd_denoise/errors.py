"""User-facing errors.

Every problem caused by the user's input (a file, a dataset, a parameter) is raised as an
:class:`XRDError` with a one-line message that names the file, dataset or parameter. The CLI turns it
into that line on stderr and exit code 2; the GUI shows it as a notification.
"""

from __future__ import annotations


class XRDError(ValueError):
    """A problem with the user's input, explained in one line."""


class InputFileError(XRDError):
    """A file cannot be read as detector data."""


class ConfigError(XRDError):
    """A configuration value is invalid; the message names the parameter."""


class Cancelled(RuntimeError):
    """Raised internally when the user asked a long operation to stop."""
