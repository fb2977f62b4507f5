"""Robust PnP against exact synthetic poses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotation_angle_deg, rotvec_to_matrix
from geomvision.robust.absolute_pose import estimate_absolute_pose, refine_absolute_pose
from geomvision.robust.ransac import RansacOptions
from geomvision.synthetic import random_scene


def _data(seed, n=300, noise_px=0.0, outlier_ratio=0.0):
    scene = random_scene(n, 2, rng=seed)
    rng = np.random.default_rng(seed)
    vis = scene.visible[1]
    X = scene.points_in_world[vis]
    x = scene.observations_px[1][vis] + rng.normal(0, noise_px, (vis.sum(), 2))
    out = rng.random(len(X)) < outlier_ratio
    x[out] = rng.uniform([0, 0], [scene.width, scene.height], (out.sum(), 2))
    return scene, X, x, ~out


def _center_error(pose, true):
    return np.linalg.norm(pose.center - true.center)


@pytest.mark.parametrize("flag", [cv2.SOLVEPNP_AP3P, cv2.SOLVEPNP_P3P])
def test_noise_free_exact(flag):
    scene, X, x, _ = _data(0)
    res = estimate_absolute_pose(X, x, scene.K, RansacOptions(max_error_px=1e-3), p3p_flag=flag, rng=0)
    assert res.success and res.inlier_mask.all()
    true = scene.cams_from_world[1]
    assert rotation_angle_deg(res.cam_from_world.rotation, true.rotation) < 1e-6
    assert _center_error(res.cam_from_world, true) < 1e-7
    assert res.mean_reprojection_error_px < 1e-5


@pytest.mark.parametrize("seed", [1, 2])
def test_noise_and_40pct_outliers(seed):
    scene, X, x, truth = _data(seed, n=400, noise_px=0.5, outlier_ratio=0.4)
    res = estimate_absolute_pose(X, x, scene.K, RansacOptions(max_error_px=2.0), rng=seed)
    assert res.success, res.reason
    tp = np.count_nonzero(res.inlier_mask & truth)
    assert tp / res.inlier_mask.sum() >= 0.95 and tp / truth.sum() >= 0.95
    true = scene.cams_from_world[1]
    assert rotation_angle_deg(res.cam_from_world.rotation, true.rotation) < 0.2
    # Camera ~4.5 units from a unit-radius cloud: centre within 1 % of that distance.
    assert _center_error(res.cam_from_world, true) < 0.02 * np.linalg.norm(true.center)
    assert 0.4 < res.mean_reprojection_error_px < 1.0  # ~ E|N(0, 0.5^2 I_2)| = 0.63 px


def test_refine_absolute_pose_from_perturbed_start():
    scene, X, x, _ = _data(3, noise_px=0.3)
    true = scene.cams_from_world[1]
    start = Rigid3d(rotvec_to_matrix(np.radians([2.0, -1.0, 1.5])) @ true.rotation, true.translation + 0.1)
    refined = refine_absolute_pose(X, x, scene.K, start)
    assert rotation_angle_deg(refined.rotation, true.rotation) < 0.1
    assert _center_error(refined, true) < 0.02


def test_bad_input_raises():
    scene, X, x, _ = _data(0, n=50)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        estimate_absolute_pose(X[:, :2], x, scene.K)
    with pytest.raises(InputError, match="pixels"):
        estimate_absolute_pose(X, x[:-1], scene.K)
    with pytest.raises(InputError, match="K"):
        estimate_absolute_pose(X, x, np.eye(2))
    with pytest.raises(InputError, match="at least 4"):
        estimate_absolute_pose(X[:3], x[:3], scene.K)
    bad = X.copy()
    bad[2, 2] = np.inf
    with pytest.raises(InputError, match="row 2"):
        estimate_absolute_pose(bad, x, scene.K)


def test_degenerate_and_too_few_inliers_are_values():
    scene, X, x, _ = _data(0, n=60)
    t = np.linspace(0, 1, len(X))[:, None]
    line = t * [1.0, 2.0, 3.0]
    res = estimate_absolute_pose(line, x, scene.K)
    assert not res.success and "collinear" in res.reason and res.cam_from_world is None
    rng = np.random.default_rng(0)
    junk = rng.uniform([0, 0], [640, 480], x.shape)
    res = estimate_absolute_pose(X, junk, scene.K, RansacOptions(max_error_px=1.0, max_iterations=300), rng=0)
    assert not res.success and res.reason.endswith("inliers < 15")
