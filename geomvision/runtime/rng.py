"""The one meaning of ``rng`` in geomvision: a Generator, an int seed, or None = seed 0.

Every function with a random choice takes ``rng: np.random.Generator | int | None`` and turns it into a
Generator with :func:`as_rng`. ``None`` is the fixed seed 0, not fresh entropy, so that a call without a
seed gives the same answer every time (default runs are reproducible); pass a Generator to share one
stream across calls, or ``np.random.default_rng()`` for fresh entropy.
"""

from __future__ import annotations

import numpy as np

from geomvision.errors import InputError

RngLike = np.random.Generator | int | None

#: The seed ``rng=None`` stands for.
DEFAULT_SEED = 0


def as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from ``rng``: the Generator itself, ``default_rng(seed)`` for an int, seed 0 for None.

    Raises:
        InputError: ``rng`` is of another type (a bool, a float, a legacy ``RandomState``, ...).
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng(DEFAULT_SEED)
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise InputError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
