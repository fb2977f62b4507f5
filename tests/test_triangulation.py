"""Triangulation against exact synthetic answers."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry import triangulation as tri
from geomvision.geometry.rigid import Rigid3d
from geomvision.synthetic import add_pixel_noise, project_points, random_scene, two_view_correspondences


@pytest.fixture(scope="module")
def scene():
    return random_scene(300, 6, layout="ring", rng=7)


def observation_arrays(scene, cams_from_world=None):
    cams = scene.cams_from_world if cams_from_world is None else cams_from_world
    P = np.stack([scene.K @ c.matrix() for c in cams])
    cam_idx, pt_idx = np.nonzero(scene.visible)
    return P[cam_idx], scene.observations_px[cam_idx, pt_idx], pt_idx


def test_dlt_two_view_exact(scene):
    P = scene.projection_matrices()
    both = scene.visible[0] & scene.visible[1]
    X = tri.triangulate_dlt(P[0], P[1], scene.observations_px[0, both], scene.observations_px[1, both])
    assert X.shape == (both.sum(), 3)
    np.testing.assert_allclose(X, scene.points_in_world[both], atol=1e-8)


def test_dlt_normalized_coordinates_two_view_correspondences():
    data = two_view_correspondences(100, rng=3)
    K_inv = np.linalg.inv(data.K)
    xn1 = data.x1_px @ K_inv[:2, :2].T + K_inv[:2, 2]
    xn2 = data.x2_px @ K_inv[:2, :2].T + K_inv[:2, 2]
    P1 = np.hstack([np.eye(3), np.zeros((3, 1))])
    X = tri.triangulate_dlt(P1, data.cam2_from_cam1.matrix(), xn1, xn2)
    np.testing.assert_allclose(X, data.points_in_cam1, atol=1e-8)


def test_dlt_small_baseline_precision(scene):
    # Camera 2 is camera 1 moved 1 cm sideways, ~4 units from the points: 0.15 degree rays.
    cam1 = scene.cams_from_world[0]
    cam2 = Rigid3d(cam1.rotation, cam1.translation + [0.01, 0.0, 0.0])
    P1, P2 = scene.K @ cam1.matrix(), scene.K @ cam2.matrix()
    x2 = project_points(scene.K, cam2, scene.points_in_world)[0]
    X = tri.triangulate_dlt(P1, P2, scene.observations_px[0], x2)
    np.testing.assert_allclose(X, scene.points_in_world, atol=1e-8)


def test_smallest_eigenvectors_agree_with_eigh(rng):
    """The fast adjugate inverse iteration must return eigh's answer, also where it falls back."""
    n = 400
    Q = np.linalg.qr(rng.normal(size=(n, 4, 4)))[0]
    lam = np.sort(rng.uniform(0.1, 1.0, size=(n, 4)), axis=1)
    lam[:100, 0] = 0.0  # exactly singular (noise-free data)
    lam[100:200, 0] = 1e-6 * lam[100:200, 1]  # well separated
    lam[200:300, 0] = 0.9 * lam[200:300, 1]  # slow convergence -> eigh fallback
    lam[300:, 0] = lam[300:, 1]  # repeated smallest eigenvalue: any vector of the eigenspace is right
    M = np.einsum("nij,nj,nkj->nik", Q, lam, Q)
    v = tri._smallest_eigenvectors(M)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    residual = np.einsum("nij,nj->ni", M, v) - lam[:, :1] * v
    assert np.abs(residual).max() < 1e-10
    ref = np.linalg.eigh(M[:300])[1][:, :, 0]
    np.testing.assert_allclose(np.abs(np.sum(ref * v[:300], axis=1)), 1.0, atol=1e-12)


def test_nview_exact_and_world_frame_invariant(scene):
    P, x, idx = observation_arrays(scene)
    X = tri.triangulate_nview(P, x, idx, scene.num_points)
    np.testing.assert_allclose(X, scene.points_in_world, atol=1e-8)
    # A far-away world origin (geo-referenced style) must not ruin the conditioning.
    offset = np.array([2e5, -1e5, 5e4])
    shifted = [Rigid3d(c.rotation, c.translation - c.rotation @ offset) for c in scene.cams_from_world]
    P2, x2, idx2 = observation_arrays(scene, shifted)
    X2 = tri.triangulate_nview(P2, x2, idx2, scene.num_points)
    np.testing.assert_allclose(X2 - offset, scene.points_in_world, atol=1e-7)


def test_nview_order_independent(scene, rng):
    P, x, idx = observation_arrays(scene)
    perm = rng.permutation(len(idx))
    X = tri.triangulate_nview(P[perm], x[perm], idx[perm], scene.num_points)
    np.testing.assert_allclose(X, scene.points_in_world, atol=1e-8)


def test_nview_with_two_views_matches_dlt(scene):
    P = scene.projection_matrices()
    both = np.flatnonzero(scene.visible[0] & scene.visible[1])
    n = len(both)
    projections = np.concatenate([np.repeat(P[:1], n, 0), np.repeat(P[1:2], n, 0)])
    x = np.concatenate([scene.observations_px[0, both], scene.observations_px[1, both]])
    idx = np.concatenate([np.arange(n), np.arange(n)])
    noisy = add_pixel_noise(x, 1.0, rng=1)
    X_nview = tri.triangulate_nview(projections, noisy, idx, n)
    X_dlt = tri.triangulate_dlt(P[0], P[1], noisy[:n], noisy[n:])
    np.testing.assert_allclose(X_nview, X_dlt, atol=1e-9)


def test_nview_noise_improves_with_more_views():
    scene = random_scene(400, 12, layout="sphere", rng=11)
    P, x, idx = observation_arrays(scene)
    noisy = add_pixel_noise(x, 0.5, rng=2)
    X = tri.triangulate_nview(P, noisy, idx, scene.num_points)
    err = np.linalg.norm(X - scene.points_in_world, axis=1)
    # cameras ~4 units away, f = 800: 0.5 px is ~2.5e-3 units of lateral error per view
    assert np.median(err) < 3e-3
    reproj = np.concatenate(
        [tri.reprojection_errors_px(P[k], X[idx[k]][None], noisy[k][None]) for k in range(20)]
    )
    assert np.all(reproj < 3.0)


def test_midpoint_exact_and_two_ray_midpoint(scene):
    centers = scene.camera_centers()
    cam_idx, pt_idx = np.nonzero(scene.visible)
    directions = (scene.points_in_world[pt_idx] - centers[cam_idx]) * 2.5  # length does not matter
    X = tri.triangulate_midpoint(centers[cam_idx], directions, pt_idx, scene.num_points)
    np.testing.assert_allclose(X, scene.points_in_world, atol=1e-10)
    # Two skew rays: x axis at z=0 and y axis at z=2 -> midpoint of the common perpendicular (0,0,1).
    X = tri.triangulate_midpoint(
        np.array([[5.0, 0.0, 0.0], [0.0, -3.0, 2.0]]), np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), [0, 0], 1
    )
    np.testing.assert_allclose(X, [[0.0, 0.0, 1.0]], atol=1e-12)


def test_parallel_rays_give_nan():
    X = tri.triangulate_midpoint(
        np.array([[0.0, 0, 0], [1.0, 0, 0]]), np.array([[0, 0, 1.0], [0, 0, 1.0]]), [0, 0], 1
    )
    assert np.all(np.isnan(X))
    # DLT: the same pixel in two cameras that only translate sideways is a point at infinity
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    P1 = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
    P2 = K @ np.hstack([np.eye(3), [[-1.0], [0.0], [0.0]]])
    X = tri.triangulate_dlt(P1, P2, np.array([[300.0, 200.0]]), np.array([[300.0, 200.0]]))
    assert np.all(np.isnan(X))


def test_triangulation_angle_and_depths():
    c1, c2 = np.zeros(3), np.array([2.0, 0.0, 0.0])
    points = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1e6], [0.0, 0.0, 2.0]])
    angles = tri.triangulation_angle_deg(c1, c2, points)
    np.testing.assert_allclose(angles[0], 90.0, atol=1e-12)
    assert angles[1] < 1e-3
    np.testing.assert_allclose(angles[2], 45.0, atol=1e-12)
    R = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # camera z axis = -world x
    t = np.array([0.0, 0.0, 5.0])
    np.testing.assert_allclose(tri.depths_in_camera(R, t, points), [4.0, 4.0, 5.0], atol=1e-12)


def test_cheirality_mask():
    data = two_view_correspondences(50, rng=5)
    R2, t2 = data.cam2_from_cam1.rotation, data.cam2_from_cam1.translation
    Rs, ts = np.stack([np.eye(3), R2]), np.stack([np.zeros(3), t2])
    assert tri.cheirality_mask(Rs, ts, data.points_in_cam1).all()
    flipped = -data.points_in_cam1  # behind camera 1
    assert not tri.cheirality_mask(Rs, ts, flipped).any()
    mixed = data.points_in_cam1.copy()
    mixed[::2] *= -1
    mixed[1] = np.nan
    expected = np.ones(50, dtype=bool)
    expected[::2] = False
    expected[1] = False
    np.testing.assert_array_equal(tri.cheirality_mask(Rs, ts, mixed), expected)
    assert not tri.cheirality_mask(np.eye(3), np.zeros(3), data.points_in_cam1, min_depth=100.0).any()


def test_reprojection_errors_px(scene):
    P = scene.projection_matrices()[0]
    x = scene.observations_px[0]
    np.testing.assert_allclose(tri.reprojection_errors_px(P, scene.points_in_world, x), 0.0, atol=1e-9)
    shifted = x + np.array([3.0, 4.0])
    np.testing.assert_allclose(tri.reprojection_errors_px(P, scene.points_in_world, shifted), 5.0, atol=1e-9)


def test_bad_input_raises():
    P = np.hstack([np.eye(3), np.zeros((3, 1))])
    x = np.zeros((3, 2))
    with pytest.raises(InputError, match="shape"):
        tri.triangulate_dlt(P[:, :3], P, x, x)
    with pytest.raises(InputError, match="same length"):
        tri.triangulate_dlt(P, P, x, x[:2])
    with pytest.raises(InputError, match="NaN"):
        tri.triangulate_dlt(P, P, np.array([[0.0, np.nan]]), np.zeros((1, 2)))
    with pytest.raises(InputError, match="rank"):
        tri.triangulate_dlt(np.zeros((3, 4)), P, x, x)
    with pytest.raises(InputError, match="fewer than 2"):
        tri.triangulate_nview(np.stack([P, P, P]), x, np.array([0, 0, 1]), 2)
    with pytest.raises(InputError, match="point_index"):
        tri.triangulate_nview(np.stack([P, P, P]), x, np.array([0, 0, 5]), 2)
    with pytest.raises(InputError, match="integer"):
        tri.triangulate_nview(np.stack([P, P, P]), x, np.array([0.0, 0.0, 1.0]), 2)
    with pytest.raises(InputError, match="zero vector"):
        tri.triangulate_midpoint(np.zeros((2, 3)), np.array([[0, 0, 1.0], [0, 0, 0]]), [0, 0], 1)
    with pytest.raises(InputError, match="inf"):
        tri.reprojection_errors_px(P, np.array([[0, 0, np.inf]]), np.zeros((1, 2)))
    with pytest.raises(InputError):
        tri.cheirality_mask(np.stack([np.eye(3)] * 2), np.zeros((3, 3)), np.zeros((1, 3)))
    assert tri.triangulate_dlt(P, P, np.zeros((0, 2)), np.zeros((0, 2))).shape == (0, 3)
