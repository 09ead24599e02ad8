"""The CLI's one error type, apart from the entry point so that every command module can raise it."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2. The message names the flag or
    file that was wrong and, where it helps, the values that would be right."""
