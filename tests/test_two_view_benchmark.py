"""Smoke test of benchmarks/two_view.py with tiny settings (the real run is by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_two_view_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("two_view_bench", REPO / "benchmarks" / "two_view.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "two_view.md"
    assert bench.main(["--trials", "2", "--num-points", "150", "--skip-real", "--output", str(out)]) == 0
    text = out.read_text()
    assert text.count("| ours E (5-pt LO) |") == 2 and text.count("| cv2 F MAGSAC++ |") == 2
    # Ours recovers the synthetic pose in both trials at both outlier ratios (success column = 100.0).
    for line in text.splitlines():
        if line.startswith("| ours E (5-pt LO) |"):
            assert line.split("|")[4].strip() == "100.0"
