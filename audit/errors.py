"""Errors the CLI maps to exit codes (2: bad usage/config/input, 3: runtime failure)."""


class UsageError(Exception):
    """Bad usage, config or input: the run stops before any work, exit code 2.

    The message is one line that names the offending file or key.
    """


class Terminated(BaseException):
    """The run was asked to stop (SIGTERM from a scheduler's timeout): raised in the main
    thread, it unwinds the run keeping every completed output; the CLI exits with 143.

    A ``BaseException`` so that no ``except Exception`` on the way swallows it. ``stage``
    names the stage it interrupted (set by the pipeline); ``signal_name`` the signal received.
    """

    def __init__(self, signal_name: str = "SIGTERM"):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.stage: str | None = None
