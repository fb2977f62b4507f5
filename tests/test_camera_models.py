"""Camera models: projection, Newton undistortion, analytic Jacobians vs central differences."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry import camera_models as cm

PARAMS = {
    "SIMPLE_PINHOLE": np.array([800.0, 320.0, 240.0]),
    "PINHOLE": np.array([800.0, 780.0, 320.0, 240.0]),
    "SIMPLE_RADIAL": np.array([800.0, 320.0, 240.0, -0.08]),
    "RADIAL": np.array([800.0, 320.0, 240.0, -0.1, 0.02]),
    "OPENCV": np.array([800.0, 780.0, 320.0, 240.0, -0.1, 0.02, 0.001, -0.002]),
}


def _points(rng, n=200):
    return np.column_stack([rng.uniform(-0.5, 0.5, (n, 2)), np.ones(n)]) * rng.uniform(1.0, 10.0, (n, 1))


@pytest.mark.parametrize("model", sorted(PARAMS))
def test_project_unproject_round_trip(model, rng):
    X = _points(rng)
    px = cm.project(model, PARAMS[model], X)
    xn = cm.unproject(model, PARAMS[model], px)
    np.testing.assert_allclose(xn, X[:, :2] / X[:, 2:], atol=1e-10, rtol=0)


def test_pinhole_projection_exact():
    px = cm.project("PINHOLE", PARAMS["PINHOLE"], np.array([[1.0, -2.0, 4.0]]))
    np.testing.assert_allclose(px, [[800.0 * 0.25 + 320.0, 780.0 * -0.5 + 240.0]])


def test_radial_matches_closed_form():
    f, cx, cy, k1, k2 = PARAMS["RADIAL"]
    X = np.array([[0.3, -0.2, 2.0]])
    u, v = 0.15, -0.1
    r2 = u * u + v * v
    d = 1 + k1 * r2 + k2 * r2 * r2
    np.testing.assert_allclose(cm.project("RADIAL", PARAMS["RADIAL"], X), [[f * d * u + cx, f * d * v + cy]])


@pytest.mark.parametrize("model", sorted(PARAMS))
def test_jacobians_match_finite_differences(model, rng):
    X = _points(rng, 20)
    params = PARAMS[model]
    px, J_point, J_params = cm.project_with_jacobians(model, params, X)
    np.testing.assert_allclose(px, cm.project(model, params, X), atol=1e-12)
    h = 1e-6
    for k in range(3):
        d = np.zeros(3)
        d[k] = h
        fd = (cm.project(model, params, X + d) - cm.project(model, params, X - d)) / (2 * h)
        np.testing.assert_allclose(J_point[:, :, k], fd, rtol=1e-6, atol=1e-5)
    for k in range(len(params)):
        step = h * max(1.0, abs(params[k]))
        d = np.zeros(len(params))
        d[k] = step
        fd = (cm.project(model, params + d, X) - cm.project(model, params - d, X)) / (2 * step)
        np.testing.assert_allclose(J_params[:, :, k], fd, rtol=1e-6, atol=1e-5)


def test_per_point_params_broadcast(rng):
    X = _points(rng, 5)
    per_point = np.tile(PARAMS["OPENCV"], (5, 1))
    per_point[:, 0] += np.arange(5)
    expected = np.vstack([cm.project("OPENCV", per_point[i], X[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(cm.project("OPENCV", per_point, X), expected)


def test_defaults_and_K():
    assert cm.default_focal_px(640, 480) == pytest.approx(768.0)
    assert cm.default_focal_px(6000, 4000, exif_focal_mm=24.0, sensor_width_mm=36.0) == pytest.approx(4000.0)
    p = cm.default_params("OPENCV", 640, 480, 500.0)
    np.testing.assert_array_equal(p, [500, 500, 319.5, 239.5, 0, 0, 0, 0])
    K = cm.params_to_K("SIMPLE_RADIAL", cm.default_params("SIMPLE_RADIAL", 640, 480, 500.0))
    np.testing.assert_array_equal(K, [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])


def test_bad_input():
    with pytest.raises(InputError, match="FISHEYE"):
        cm.project("FISHEYE", np.zeros(3), np.ones((1, 3)))
    with pytest.raises(InputError, match="takes 4 params, got 3"):
        cm.project("PINHOLE", np.zeros(3), np.ones((1, 3)))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        cm.project("PINHOLE", np.ones(4), np.ones((2, 2)))
