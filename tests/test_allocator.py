"""runtime.allocator: glibc malloc keeps freed heap memory (thresholds raised once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from geomvision.runtime import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_thresholds_raised_once_and_arrays_unaffected():
    first = allocator.retain_freed_memory()
    assert allocator.retain_freed_memory() is first  # once per process
    a = np.arange(3_000_000, dtype=np.float64)  # above glibc's default mmap threshold
    b = a * 2.0
    del a
    np.testing.assert_array_equal(b[:3], [0.0, 2.0, 4.0])


def test_environment_switch_turns_it_off():
    code = "from geomvision.runtime.allocator import retain_freed_memory; print(retain_freed_memory())"
    env = {**os.environ, "GEOMVISION_MALLOC_TUNING": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_returns_freed_heap_pages():
    blocks = [np.ones(1000) for _ in range(50_000)]  # 400 MB of 8 KB blocks from the heap
    del blocks
    assert allocator.release_free_memory() is True


def test_cyclic_gc_paused_restores_the_collector_and_nests():
    import gc

    from geomvision.runtime.collector import cyclic_gc_paused

    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block leaves it off for the outer one
    assert gc.isenabled()

    @cyclic_gc_paused()
    def fails():
        assert not gc.isenabled()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fails()
    assert gc.isenabled()  # back on after an exception too

    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()
