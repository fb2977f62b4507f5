"""Keep freed heap memory for reuse instead of handing it back to the kernel after every large array.

Bundle adjustment and the mapper's per-observation work allocate and free many multi-megabyte numpy
temporaries (a (2, 8, M) Jacobian is 22 MB at M = 174k observations). glibc's malloc serves blocks above
its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with fresh ``mmap`` calls, and trims the heap
top once more than twice that is free, so each such temporary is faulted in page by page again on first
touch. On the 100-image street scene's last global BA that was most of the Jacobian evaluation:
``evaluate`` 45 ms -> 16 ms and ``project_with_jacobians`` 18 ms -> 5 ms CPU per call once blocks up to
256 MiB come from the heap and up to 512 MiB of free heap is kept (same numbers, fewer page faults).
Peak memory is unchanged to first order (the memory was in use at the peak anyway); the process only
returns it to the kernel later.

The setting is process-wide, so it is applied once, by :func:`retain_freed_memory`, from the entry points
of the heavy stages (mapping, bundle adjustment). It does nothing outside glibc, and nothing when
``GEOMVISION_MALLOC_TUNING=0`` is set in the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

__all__ = ["retain_freed_memory"]

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 512 << 20
TOP_PAD_BYTES = 64 << 20

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (see the module docstring).

    Returns:
        True when the thresholds are (now or already) raised; False on other C libraries, when
        ``mallopt`` refuses, or when ``GEOMVISION_MALLOC_TUNING=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("GEOMVISION_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return _applied
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, TOP_PAD_BYTES),
        )
    )
    _applied = ok
    logger.debug("malloc thresholds %s", "raised" if ok else "left as they were (mallopt refused)")
    return _applied
