"""Atomic file output: write to a temporary file in the same folder, fsync, then rename.

A reader (or a rerun after SIGKILL) therefore sees either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(
    path: str | os.PathLike, suffix: str | None = None, *, durable: bool = True
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Use for writers that need a file name (Open3D, numpy). The temp file keeps ``path``'s suffix
    (or ``suffix``) so format detection by extension still works.

    ``durable=False`` skips the fsync: the rename is still atomic for a killed process (the data is in
    the page cache), only a power loss could leave a damaged file. For cache entries whose readers
    treat a damaged file as a miss; an fsync per file (~5 ms) cost more than matching a small pair.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the output the permissions a plain open() would have.
    os.chmod(tmp, 0o666 & ~_current_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_folder(folder: Path, write: Callable[[Path], Any], *, tmp: Path, old: Path) -> None:
    """Have ``write`` fill the folder ``tmp``, then swap it in for ``folder`` (via ``old``).

    Each file is atomic on its own; the swap makes the whole folder atomic too: a kill leaves either
    the old ``folder``, or none plus the hidden ``tmp``/``old`` folders, which the next call (or the
    caller's own clean-up) removes. ``write`` gets ``tmp``, which may or may not exist yet.
    """
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
