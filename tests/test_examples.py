"""Smoke tests: every example script runs to the end and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_two_view_geometry_example(tmp_path):
    out = run_example("two_view_geometry.py", "-o", str(tmp_path / "lines.png"), cwd=tmp_path)
    inliers = int(re.search(r"(\d+) inliers", out).group(1))
    rotation = float(re.search(r"relative rotation ([\d.]+) deg", out).group(1))
    assert inliers > 200
    # images 0004/0005 of fountain-P11: ground-truth relative rotation is about 15 deg
    assert 10 < rotation < 20
    assert (tmp_path / "lines.png").stat().st_size > 10_000


def test_step_by_step_example(tmp_path):
    out = run_example(
        "step_by_step_reconstruction.py", "--num-images", "3", "-o", str(tmp_path / "o"), cwd=tmp_path
    )
    registered = re.search(r"model: (\d+)/(\d+) images", out)
    assert registered.group(1) == registered.group(2) == "3"
    error = float(re.search(r"mean reprojection error ([\d.]+) px", out).group(1))
    assert error < 1.0
    assert (tmp_path / "o" / "sparse" / "0" / "images.txt").is_file()
    assert (tmp_path / "o" / "view_graph.png").is_file()


def test_bundle_adjust_example(tmp_path):
    out = run_example("bundle_adjust_bal.py", cwd=tmp_path)
    rms = [float(v) for v in re.findall(r"RMS residual ([\d.]+) px", out)]
    assert len(rms) == 2
    # 0.5 px noise per coordinate: the optimum's RMS sits near (slightly below) the noise level
    assert all(0.35 < r < 0.65 for r in rms)


def test_factorization_example_synthetic(tmp_path):
    # a missing --pts file makes the example fall back to its synthetic turntable (0.5 px noise per coordinate)
    out = run_example(
        "factorize_tracks.py", "--pts", str(tmp_path / "none.txt"), "--starts", "1", cwd=tmp_path
    )
    assert "synthetic turntable" in out
    rms = [float(v) for v in re.findall(r"RMS[^0-9]*([\d.e+-]+)", out)]
    # 2D RMS of the optimum: at most sqrt(2) * 0.5 px, a bit less after fitting the model's degrees of freedom
    assert rms and 0.3 < min(rms) < 0.72, out


@pytest.mark.slow
def test_factorization_example_dinosaur(tmp_path):
    out = run_example("factorize_tracks.py", "--starts", "2", cwd=tmp_path)
    assert re.search(r"RMS", out), out


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_usage_docstring(script):
    text = (EXAMPLES / script).read_text()
    assert text.lstrip().startswith('"""') and "python examples/" in text
