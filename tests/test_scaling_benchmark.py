"""benchmarks/scaling.py: a cached scene is reused only when the generator that rendered it is unchanged."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _scaling_module():
    sys.path.insert(0, str(REPO / "benchmarks"))  # scaling.py imports its sibling ``common``
    try:
        spec = importlib.util.spec_from_file_location("scaling_bench", REPO / "benchmarks" / "scaling.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_scene_cache_is_rendered_again_when_the_generator_changed(tmp_path):
    # A 1000-image street left in the work folder by an older generator (plain photo crops) was reused
    # silently: 8767 of its 11 401 verified pairs linked images with no common surface.
    bench = _scaling_module()
    folder, meta = bench.make_scene(tmp_path, 2, 96, 72)
    stamp = folder / "generator.sha256"
    assert meta["num_images"] == 2 and len(list((folder / "images").glob("*.jpg"))) == 2
    assert stamp.read_text().strip() == bench.generator_fingerprint()
    marker = folder / "marker"
    marker.write_text("kept while the generator is unchanged")
    bench.make_scene(tmp_path, 2, 96, 72)
    assert marker.is_file()  # reused
    stamp.write_text("0" * 64 + "\n")  # rendered by another generator
    _, meta = bench.make_scene(tmp_path, 2, 96, 72)
    assert not marker.exists() and stamp.read_text().strip() == bench.generator_fingerprint()
    assert meta["num_images"] == 2
    stamp.unlink()  # a scene from before the stamp existed is not trusted either
    marker.write_text("x")
    bench.make_scene(tmp_path, 2, 96, 72)
    assert not marker.exists() and stamp.is_file()
