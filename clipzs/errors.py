"""The errors clipzs raises, each with a message a user can act on.

The library raises these and never prints or exits; the CLI turns them into a one-line message on stderr
and the exit status named by ``exit_code``.
"""

from __future__ import annotations

EXIT_OK = 0
"""Every input was scored."""
EXIT_FAILURE = 1
"""An unexpected failure (a bug): please report it."""
EXIT_USAGE = 2
"""A usage error: bad option, no images found, unknown model, unusable classifier or weights."""
EXIT_SKIPPED = 3
"""Some inputs could not be read and were skipped; all the others were scored and written."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C: 128 + SIGINT, as the shell reports for other tools."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away (``| head``): 128 + SIGPIPE, as the shell reports for other tools."""
EXIT_TERMINATED = 143
"""The resident server was stopped (SIGTERM) while it ran the command: 128 + SIGTERM."""


class ClipzsError(Exception):
    """Base class of every error clipzs raises on purpose."""

    exit_code: int = EXIT_USAGE


class UsageError(ClipzsError):
    """The user asked for something that cannot be done as asked (bad labels, templates, options)."""


class ModelError(ClipzsError):
    """A model, its config or its weights cannot be found or loaded."""


class ClassifierError(ClipzsError):
    """A classifier file is unreadable, of an unknown format, or made for another model."""


class ImageError(ClipzsError):
    """One input cannot be read as an image; the message is the reason, for that input alone."""


class ClipzsWarning(UserWarning):
    """Something the user should know that did not stop the run; the CLI prints it as one line."""


class CacheWarning(ClipzsWarning):
    """A cache could not be used or was repaired; the results are the same, only slower to get."""
