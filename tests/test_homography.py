"""Normalised DLT homography against exact synthetic planes."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry import homography as hom
from geomvision.synthetic import add_pixel_noise, two_view_correspondences


def true_homography(data):
    """H = K (R - t n^T / d) K^-1 for the plane n.X = d in camera 1 (H&Z 13.1), from the points."""
    X = data.points_in_cam1
    centroid = X.mean(axis=0)
    _, _, Vt = np.linalg.svd(X - centroid)
    n = Vt[-1]
    d = n @ centroid
    R, t = data.cam2_from_cam1.rotation, data.cam2_from_cam1.translation
    H = data.K @ (R + np.outer(t, n) / d) @ np.linalg.inv(data.K)
    return H / np.linalg.norm(H)


def same_up_to_scale(H1, H2, atol):
    H1, H2 = H1 / np.linalg.norm(H1), H2 / np.linalg.norm(H2)
    return min(np.abs(H1 - H2).max(), np.abs(H1 + H2).max()) < atol


@pytest.fixture(scope="module")
def planar():
    return two_view_correspondences(150, planar=True, rng=21)


def test_dlt_exact_on_noise_free_plane(planar):
    H = hom.homography_dlt(planar.x1_px, planar.x2_px)
    assert abs(np.linalg.norm(H) - 1.0) < 1e-12
    assert same_up_to_scale(H, true_homography(planar), 1e-9)
    err = hom.homography_transfer_errors_sq(H, planar.x1_px, planar.x2_px)
    assert err.max() < 1e-16  # px^2
    # sign convention: points map to positive w
    assert np.all(planar.x1_px @ H[2, :2] + H[2, 2] > 0)


def test_minimal_four_points_exact(planar):
    H = hom.homography_dlt(planar.x1_px[:4], planar.x2_px[:4])
    assert np.sqrt(hom.homography_transfer_errors_sq(H, planar.x1_px, planar.x2_px)).max() < 1e-6
    assert hom.homography_orientation_consistent(planar.x1_px[:4], planar.x2_px[:4])


def test_known_transform_and_transfer_error():
    # Pure translation by (3, 4): forward and backward errors are both 5 px -> 50 px^2.
    x1 = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50.0, 20.0]])
    H = hom.homography_dlt(x1, x1 + [3.0, 4.0])
    np.testing.assert_allclose(H / H[2, 2], [[1, 0, 3], [0, 1, 4], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(hom.homography_transfer_errors_sq(H, x1, x1), 50.0, atol=1e-9)
    np.testing.assert_allclose(hom.apply_homography(H, x1), x1 + [3.0, 4.0], atol=1e-12)


def test_noisy_estimate_is_close(planar):
    x2 = add_pixel_noise(planar.x2_px, 0.5, rng=3)
    H = hom.homography_dlt(planar.x1_px, x2)
    err = np.sqrt(hom.homography_transfer_errors_sq(H, planar.x1_px, planar.x2_px))
    assert np.median(err) < 0.5  # fitting 150 points averages the noise down


def test_hartley_normalization():
    x = np.random.default_rng(0).uniform(0, 1000, size=(30, 2))
    xn, T = hom.hartley_normalization(x)
    np.testing.assert_allclose(xn.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.mean(np.linalg.norm(xn, axis=1)), np.sqrt(2.0), atol=1e-12)
    np.testing.assert_allclose(np.c_[x, np.ones(30)] @ T.T, np.c_[xn, np.ones(30)], atol=1e-12)


def test_degenerate_configurations():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]) * 100
    three_collinear = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 3.0]]) * 100
    assert hom.homography_sample_is_degenerate(three_collinear, square)
    assert hom.homography_sample_is_degenerate(square, three_collinear)
    assert not hom.homography_sample_is_degenerate(square, square + 5)
    with pytest.raises(InputError, match="collinear"):
        hom.homography_dlt(three_collinear, square)
    line = np.c_[np.arange(10.0), 2 * np.arange(10.0)]
    assert hom.homography_sample_is_degenerate(line, line)
    with pytest.raises(InputError, match="collinear"):
        hom.homography_dlt(line, line)
    with pytest.raises(InputError):
        hom.homography_dlt(np.ones((5, 2)), np.ones((5, 2)))
    # A folded sample (one point swapped across the diagonal) is not a real plane view.
    folded = square[[0, 1, 3, 2]]
    assert not hom.homography_orientation_consistent(square, folded)
    assert hom.homography_orientation_consistent(square, square[:, ::-1])  # mirror: consistent, det < 0


def test_bad_input():
    x = np.zeros((5, 2))
    with pytest.raises(InputError, match=">= 4"):
        hom.homography_dlt(x[:3], x[:3])
    with pytest.raises(InputError, match="same length"):
        hom.homography_dlt(x, x[:4])
    with pytest.raises(InputError, match="shape"):
        hom.homography_dlt(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(InputError, match="NaN"):
        hom.homography_dlt(np.full((5, 2), np.nan), x)
    with pytest.raises(InputError, match="singular"):
        hom.homography_transfer_errors_sq(np.zeros((3, 3)) + np.eye(3) * [1, 1, 0], x, x)
    with pytest.raises(InputError, match="3, 3"):
        hom.homography_transfer_errors_sq(np.eye(4), x, x)


def test_minimal_and_large_samples_precise_over_many_scenes():
    """Both null-vector paths (SVD for small N, A^T A for large N) stay exact on noise-free planes."""
    for seed in range(20):
        data = two_view_correspondences(60, planar=True, rng=seed)
        for n in (4, 10, 60):
            H = hom.homography_dlt(data.x1_px[:n], data.x2_px[:n])
            err_px = np.sqrt(hom.homography_transfer_errors_sq(H, data.x1_px, data.x2_px))
            assert err_px.max() < (1e-5 if n == 4 else 1e-8), (seed, n, err_px.max())
