"""BAL reader/writer: convention conversion keeps the BAL cost, round trip, malformed files, real files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError
from geomvision.io.bal import BALProblem, bal_to_reconstruction, read_bal, write_bal
from geomvision.sfm.ba.bal import bal_to_ba_problem
from geomvision.sfm.ba.model import evaluate
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, adjust_problem

TINY = """2 3 4
0 0 10.5 -3.25
1 0 -4.0 2.0
0 1 1.0 1.0
1 2 0.5 -0.5
0.01
-0.02
0.03
0.1
0.2
-5.0
500.0
-0.01
0.001
-0.01
0.02
0.0
-0.3
0.1
-6.0
600.0
0.0
0.0
0.1
0.2
0.3
-0.4
0.5
-0.1
0.0
0.0
0.2
"""


def _bal_residuals(path):
    """Residuals of the raw file with the BAL README formula (camera looks down -z, +y up)."""
    tokens = open(path).read().split()
    n_cam, n_pt, n_obs = (int(t) for t in tokens[:3])
    obs = np.array(tokens[3 : 3 + 4 * n_obs], float).reshape(-1, 4)
    params = np.array(tokens[3 + 4 * n_obs :], float)
    cams = params[: 9 * n_cam].reshape(-1, 9)
    pts = params[9 * n_cam :].reshape(-1, 3)
    c, p = obs[:, 0].astype(int), obs[:, 1].astype(int)
    P = Rotation.from_rotvec(cams[c, :3]).apply(pts[p]) + cams[c, 3:6]
    q = -P[:, :2] / P[:, 2:]
    r2 = (q**2).sum(1)
    px = cams[c, 6:7] * (1 + cams[c, 7:8] * r2[:, None] + cams[c, 8:9] * r2[:, None] ** 2) * q
    return px - obs[:, 2:]


def test_conversion_preserves_bal_cost(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    bal = read_bal(path)
    assert (bal.num_cameras, bal.num_points, bal.num_observations) == (2, 3, 4)
    np.testing.assert_array_equal(bal.intrinsics[:, 1:3], 0.0)
    ours = evaluate(bal_to_ba_problem(bal), jacobians=False).residuals
    expected = _bal_residuals(path) * np.array([1.0, -1.0])  # y axis flipped
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-9)


def test_round_trip(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    bal = read_bal(path)
    write_bal(tmp_path / "out.txt", bal)
    again = read_bal(tmp_path / "out.txt")
    for name in ("rotvecs", "translations", "intrinsics", "points", "obs_px"):
        np.testing.assert_allclose(getattr(again, name), getattr(bal, name), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(again.obs_camera, bal.obs_camera)
    np.testing.assert_allclose(_bal_residuals(tmp_path / "out.txt"), _bal_residuals(path), atol=1e-9)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.replace("2 3 4\n", "2 3\n", 1), "line 1: expected header"),
        (lambda s: s.replace("1 2 0.5 -0.5", "1 7 0.5 -0.5"), "line 5: point index 7 outside"),
        (lambda s: s.replace("1 0 -4.0 2.0", "3 0 -4.0 2.0"), "line 3: camera index 3 outside"),
        (lambda s: s.replace("0 1 1.0 1.0", "0 1 1.0 nan"), "line 4: non-finite"),
        (lambda s: s.replace("0 1 1.0 1.0", "0 1 1.0 abc"), "line 4: not a number: 'abc'"),
        (lambda s: s.replace("0 1 1.0 1.0", "0 1 1.0"), "line 4: expected 4 values"),
        (lambda s: "\n".join(s.splitlines()[:-3]), "truncated"),
        (lambda s: s + "1.0\n", "line 33: unexpected data"),
        (lambda s: s.replace("500.0", "-500.0"), "non-positive focal length -500"),
        (lambda s: "", "line 1"),
    ],
)
def test_malformed_files(tmp_path, mutate, message):
    path = tmp_path / "bad.txt"
    path.write_text(mutate(TINY))
    with pytest.raises(InputError, match=message):
        read_bal(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read BAL file"):
        read_bal(tmp_path / "nope.txt")


def test_points_behind_camera_warn(tmp_path, caplog):
    path = tmp_path / "behind.txt"
    path.write_text(TINY.replace("-5.0\n500.0", "5.0\n500.0"))
    read_bal(path)
    assert "behind the camera" in caplog.text


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("dubrovnik-1-1-pre.txt", (1, 1, 1)),
        ("dubrovnik-3-7-pre.txt", (3, 7, 19)),
        ("dubrovnik-3-7-18-pre.txt", (3, 7, 18)),
    ],
)
def test_gtsam_tiny_problems(name, counts):
    path = shared_dataset("bal_dubrovnik_tiny_gtsam") / name
    bal = read_bal(path)
    assert (bal.num_cameras, bal.num_points, bal.num_observations) == counts
    ours = evaluate(bal_to_ba_problem(bal), jacobians=False).residuals
    np.testing.assert_allclose(ours, _bal_residuals(path) * [1.0, -1.0], rtol=1e-10, atol=1e-8)
    rec = bal_to_reconstruction(bal)
    assert rec.num_observations == counts[2]
    np.testing.assert_allclose(
        rec.mean_reprojection_error_px(), np.linalg.norm(ours, axis=1).mean(), rtol=1e-10
    )


def test_dubrovnik_adjusts_to_subpixel():
    bal = read_bal(shared_dataset("bal_dubrovnik_tiny_gtsam") / "dubrovnik-3-7-pre.txt")
    problem = bal_to_ba_problem(bal)
    result = adjust_problem(problem, BundleAdjustmentOptions(backend="schur", function_tolerance=1e-10))
    assert result.success
    assert result.initial_mean_reprojection_error_px > 5.0
    assert result.mean_reprojection_error_px < 1.0


def test_write_rejects_principal_point(tmp_path):
    bal = BALProblem(
        np.zeros((1, 3)),
        np.zeros((1, 3)),
        np.array([[500.0, 1.0, 0, 0, 0]]),
        np.ones((1, 3)),
        np.zeros(1, int),
        np.zeros(1, int),
        np.zeros((1, 2)),
    )
    with pytest.raises(InputError, match="cx, cy"):
        write_bal(tmp_path / "x.txt", bal)


def test_cli_prints_one_json_line(tmp_path, capsys):
    import json

    from geomvision.cli import main

    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    out = tmp_path / "adjusted.txt"
    assert main(["bundle-adjust", str(path), "--backend", "scipy", "--loss", "huber", "-o", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["final_cost"] <= record["initial_cost"]
    assert {"initial_cost", "final_cost", "mean_reprojection_error_px", "iterations", "time_s"} <= set(record)
    assert read_bal(out).num_observations == 4
    assert main(["bundle-adjust", str(tmp_path / "missing.txt")]) == 2
