"""Exception types shared by every layer.

Expected geometric failure is returned as a value (``success=False, reason=...``);
these exceptions are for bad input and unrecoverable conditions only.
"""

from __future__ import annotations


class GeomVisionError(Exception):
    """Base class for all geomvision errors."""


class InputError(GeomVisionError, ValueError):
    """Input that cannot be processed (wrong shape, NaN, missing file, malformed format).

    The message is one line and names the offending value, so the CLI can print it as-is.
    """


class ReconstructionError(GeomVisionError):
    """The pipeline ran but could not produce a model (e.g. no initial pair found)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal other than Ctrl-C (SIGTERM, SIGHUP).

    A ``KeyboardInterrupt`` so that every ``except KeyboardInterrupt`` clean-up runs for it too; the CLI
    raises it from its signal handler and exits ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(self.signal_name)
