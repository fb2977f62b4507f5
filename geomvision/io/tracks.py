"""Readers of 2D feature-track files (measurement matrices for the factorization methods).

The maths in :mod:`geomvision.geometry.factorization` reads no files; this is where its inputs come from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.factorization import measurement_matrix


def load_dinosaur_tracks(path: str | Path, num_frames: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """Read the Oxford dinosaur tracks file ``pts.txt`` (one track a line: ``X Y Z n v_1 x_1 y_1 ...``).

    The leading ``X Y Z`` (a reconstruction in another frame) is ignored; ``v_i`` are 0-based frame
    indices and ``(x_i, y_i)`` pixels (x = column, y = row, origin top-left). Shared by the factorization example and
    benchmark; select a subset with ``W[:, lengths >= k]``.

    Args:
        path: the ``pts.txt`` file.
        num_frames: F, the number of frames (36 for the dinosaur turntable).

    Returns:
        (2F, P) measurement matrix ``W`` (NaN = missing) with one column per track in file order, and
        the (P,) int number of views of each track.

    Raises:
        InputError: the file is missing or a line is malformed.
    """
    path = Path(path)
    frames, points, xy, lengths = [], [], [], []
    try:
        with open(path) as fh:
            for number, line in enumerate(fh, start=1):
                values = line.split()
                if not values:
                    continue
                try:
                    n = int(values[3])
                    obs = np.asarray(values[4 : 4 + 3 * n], dtype=np.float64).reshape(n, 3)
                except (IndexError, ValueError) as exc:
                    raise InputError(f"{path}:{number}: malformed track line {line.strip()[:80]!r}") from exc
                frames.append(obs[:, 0].astype(np.int64))
                points.append(np.full(n, len(lengths)))
                xy.append(obs[:, 1:])
                lengths.append(n)
    except FileNotFoundError as exc:
        raise InputError(f"tracks file {path} does not exist") from exc
    if not lengths:
        raise InputError(f"{path}: no tracks")
    W = measurement_matrix(
        np.concatenate(frames), np.concatenate(points), np.concatenate(xy), num_frames=num_frames
    )
    return W, np.asarray(lengths)
