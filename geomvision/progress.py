"""Progress reporting: stages accept ``progress(done, total, message)`` callbacks; the CLI makes bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressCallback = Callable[[int, int, str], None]


def null_progress(done: int, total: int, message: str = "") -> None:
    """A callback that ignores everything (the library default)."""


def report(progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, message)


@contextmanager
def tqdm_progress(description: str, *, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A progress callback drawing a tqdm bar on stderr (used by the CLI only)."""
    if not enabled:
        yield null_progress
        return
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="", leave=False, dynamic_ncols=True)
    try:

        def callback(done: int, total: int, message: str = "") -> None:
            bar.total = total
            bar.n = done
            if message:
                bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        yield callback
    finally:
        bar.close()
