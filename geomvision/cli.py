"""``geomvision`` command line: sub-commands live in ``geomvision/commands/``.

Errors from bad input are printed as one line on stderr with a non-zero exit code, never a traceback
(set ``GEOMVISION_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys

from geomvision import __version__
from geomvision.errors import GeomVisionError, InputError, Terminated

EXIT_INPUT_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERNAL_ERROR = 3


def _command_modules():
    import geomvision.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"geomvision.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geomvision", description="Structure from motion in Python.")
    parser.add_argument("--version", action="version", version=f"geomvision {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_INPUT_ERROR
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    previous = _raise_on_termination()
    try:
        return _run_command(args)
    finally:
        _restore_handlers(previous)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        name = getattr(exc, "signal_name", "SIGINT")
        _ignore_further_signals()  # a second Ctrl-C during clean-up must not print a traceback
        print(
            f"geomvision: interrupted ({name}); finished stages are cached, rerun to resume", file=sys.stderr
        )
        return 128 + int(signum)
    except (
        InputError,
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as exc:
        if os.environ.get("GEOMVISION_DEBUG"):
            raise
        print(f"geomvision: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except (GeomVisionError, OSError, MemoryError) as exc:
        if os.environ.get("GEOMVISION_DEBUG"):
            raise
        print(f"geomvision: failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: still one line, and how to get the traceback
        if os.environ.get("GEOMVISION_DEBUG"):
            raise
        print(
            f"geomvision: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with GEOMVISION_DEBUG=1 for the traceback; cached stages are kept)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_on_termination() -> dict[int, object]:
    """SIGTERM/SIGHUP end the command like Ctrl-C does: clean-up, report.json, one line, exit 128+n.

    Returns the previous handlers, which :func:`_restore_handlers` puts back (``main`` may run in-process).
    """

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    for signum in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave signals alone
            previous[signum] = signal.getsignal(signum)
            if signum != signal.SIGINT:
                signal.signal(signum, handler)
    return previous


def _ignore_further_signals() -> None:
    for signum in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_IGN)


def _restore_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signum, handler)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
