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
from collections.abc import Iterator

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
    with _signals_end_the_command():
        return _run_command(args)


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
#: Libraries whose event-loop threads run beside the command (Dask's client and scheduler).
_BACKGROUND_LIBRARIES = ("distributed", "tornado", "asyncio")


@contextlib.contextmanager
def _signals_end_the_command() -> Iterator[None]:
    """SIGTERM/SIGHUP end the command like Ctrl-C does: clean-up, report.json, one line, exit 128+n.

    While the command runs, the handlers raise ``KeyboardInterrupt`` (SIGINT) or ``Terminated``, and
    ``sys.unraisablehook`` is ours, for two races with destructors (both seen in the tests):

    - a signal that strikes inside a ``__del__`` raises there, where Python prints "Exception ignored"
      and drops the exception, and the command would run on (a SIGTERM could end in exit 0). The hook
      sends the signal again, so it is raised at the next instruction instead;
    - after the interrupt, objects it left half built (a ``ZipFile`` cut short in ``np.load``) fail in
      their destructors. That is a consequence of the interrupt, not news, so it is not printed.

    The handlers and the hook are put back afterwards (``main`` may run in-process).
    """
    interrupted = False
    previous_hook = sys.unraisablehook

    def handler(signum, frame):
        nonlocal interrupted
        interrupted = True
        _quiet_background_loggers()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def unraisable_hook(unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt):
            with contextlib.suppress(ValueError, OSError):
                signal.raise_signal(getattr(exc, "signum", signal.SIGINT))
        elif not interrupted:
            previous_hook(unraisable)

    previous = {}
    for signum in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave signals alone
            previous[signum] = signal.getsignal(signum)
            # SIGINT keeps an inherited SIG_IGN (a job started with '&' in a script).
            if signum != signal.SIGINT or previous[signum] is signal.default_int_handler:
                signal.signal(signum, handler)
    sys.unraisablehook = unraisable_hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, old)


def _background_loggers() -> list[str]:
    """The background libraries' loggers that have a level of their own (Dask sets several)."""
    names = set(_BACKGROUND_LIBRARIES)
    for name in list(logging.root.manager.loggerDict):
        if name.split(".", 1)[0] in _BACKGROUND_LIBRARIES:
            names.add(name)
    return sorted(names)


def _quiet_background_loggers() -> None:
    """Silence the background libraries once a signal ends the command, for the rest of the process.

    Their threads meet the interruption too: Dask's event loop then logs errors about callbacks and
    connections cut short (seen: a NameError in ``distributed.utils.sync``'s cancel callback). These
    are consequences of the interrupt, not news, and would come out above the one line the CLI
    promises. Set in the handler, before the exception unwinds into their code; not undone when
    ``main`` returns, because the event-loop thread outlives it and logs again at exit.
    """
    for name in _background_loggers():
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _ignore_further_signals() -> None:
    for signum in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_IGN)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
