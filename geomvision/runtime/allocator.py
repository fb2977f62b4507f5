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

__all__ = ["release_free_memory", "retain_freed_memory", "set_malloc_thresholds"]

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 512 << 20
TOP_PAD_BYTES = 64 << 20

_applied: bool | None = None


def set_malloc_thresholds(
    *, mmap_threshold_bytes: int, trim_threshold_bytes: int, top_pad_bytes: int | None = None
) -> bool:
    """Set glibc's ``mallopt`` thresholds for this process (the one place that calls ``mallopt``).

    Args:
        mmap_threshold_bytes: blocks below this come from the heap instead of a fresh ``mmap``.
        trim_threshold_bytes: free memory at the heap top kept rather than returned to the kernel.
        top_pad_bytes: extra memory requested with each heap growth; None leaves glibc's default.

    Returns:
        True when every threshold was set; False outside glibc or when ``mallopt`` refuses one.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = [(_M_MMAP_THRESHOLD, mmap_threshold_bytes), (_M_TRIM_THRESHOLD, trim_threshold_bytes)]
    if top_pad_bytes is not None:
        settings.append((_M_TOP_PAD, top_pad_bytes))
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        logger.debug("mallopt refused the malloc thresholds; keeping the defaults")
    return ok


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
    if os.environ.get("GEOMVISION_MALLOC_TUNING", "1") == "0":
        return _applied
    _applied = set_malloc_thresholds(
        mmap_threshold_bytes=MMAP_THRESHOLD_BYTES,
        trim_threshold_bytes=TRIM_THRESHOLD_BYTES,
        top_pad_bytes=TOP_PAD_BYTES,
    )
    logger.debug("malloc thresholds %s", "raised" if _applied else "left as they were")
    return _applied


def release_free_memory() -> bool:
    """Hand the free pages of glibc's heap back to the kernel now (``malloc_trim(0)``).

    With :func:`retain_freed_memory`'s thresholds the heap keeps up to 512 MiB free at its top, and freed
    blocks between live ones stay resident; after a large structure is dropped (the merge's input models)
    this returns them, so that what is allocated next is counted once. Later allocations reuse the heap as
    before.

    Returns:
        True when ``malloc_trim`` ran (and returned memory); False elsewhere or when nothing was returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
