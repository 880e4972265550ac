"""Errors the CLI maps to exit codes (2: bad usage/config/input, 3: runtime failure)."""


class UsageError(Exception):
    """Bad usage, config or input: the run stops before any work, exit code 2.

    The message is one line that names the offending file or key.
    """
