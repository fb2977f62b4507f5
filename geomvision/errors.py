"""Exception types shared by every layer.

Expected geometric failure is returned as a value (``success=False, reason=...``);
these exceptions are for bad input and unrecoverable conditions only.
"""

from __future__ import annotations

from collections.abc import Collection


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


def check_positive(name: str, value: float) -> None:
    """Raise :class:`InputError` ``"<name> must be > 0, got <value>"`` unless ``value > 0`` (NaN fails)."""
    if not value > 0:
        raise InputError(f"{name} must be > 0, got {value}")


def check_at_least(name: str, value: float, low: float) -> None:
    """Raise :class:`InputError` ``"<name> must be >= <low>, got <value>"`` unless ``value >= low`` (NaN fails)."""
    if not value >= low:
        raise InputError(f"{name} must be >= {low}, got {value}")


def check_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Raise :class:`InputError` unless ``value`` lies in the interval from ``low`` to ``high`` (NaN fails).

    The bounds are included unless ``low_open``/``high_open``; the message names the interval the usual
    way, e.g. ``"min_inlier_ratio must be in [0, 1], got 1.5"`` or ``"... must be in (0, 180], got 0"``.
    """
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise InputError(f"{name} must be in {interval}, got {value}")


def check_choice(what: str, value: object, choices: Collection[object]) -> None:
    """Raise :class:`InputError` ``"unknown <what> <value!r>; expected one of <choices>"`` unless ``value`` is in ``choices``.

    ``what`` names the kind of value (``"feature method"``, ``"camera model"``); ``choices`` is shown as given.
    """
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; expected one of {choices}")


def check_fields_at_least(options: object, **low_by_field: float) -> None:
    """:func:`check_at_least` on each named attribute of ``options``, in the order given.

    For an options class's ``__post_init__``: ``check_fields_at_least(self, min_iterations=0, batch_size=1)``
    raises ``"batch_size must be >= 1, got 0"`` for ``batch_size=0``.
    """
    for name, low in low_by_field.items():
        check_at_least(name, getattr(options, name), low)
