"""Process helpers for the tests that interrupt runs or check workers die with their parent (Linux /proc)."""

from __future__ import annotations

import signal
from pathlib import Path


def descendant_pids(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we read
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def default_sigint() -> None:
    """``preexec_fn`` of a child that must stop on Ctrl-C: SIGINT back to its default action.

    A suite started in the background (``cmd &`` in a non-interactive shell, ``nohup``) inherits SIGINT
    ignored; ``exec`` keeps it ignored and Python then installs no KeyboardInterrupt handler, so the child
    would run on through a Ctrl-C and an interrupt test would fail for a reason outside the code.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finished_features(out: Path) -> list[Path]:
    """The feature files written to the end. pathlib's ``*`` also matches the hidden temporary file
    (``.name.XXXX.npz``) that an atomic write renames into place, which an interrupt then removes."""
    return [p for p in (out / "cache" / "features").glob("*.npz") if not p.name.startswith(".")]
