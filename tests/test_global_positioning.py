"""Global positioning (BATA cost): solver maths against a scipy reference, and the stage on synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import scene_rays

from geomvision.errors import InputError
from geomvision.geometry.global_positioning import BataProblem, bata_positions, bata_positions_reference
from geomvision.geometry.rigid import umeyama_alignment
from geomvision.sfm.global_positioning import (
    GlobalPositioningOptions,
    position_globally,
    select_positioning_tracks,
)
from geomvision.synthetic import random_scene


def _centre_errors(centers: dict[int, np.ndarray], scene) -> np.ndarray:
    ids = sorted(centers)
    est = np.array([centers[i] for i in ids])
    gt = np.array([scene.cams_from_world[i - 1].center for i in ids])
    return np.linalg.norm(umeyama_alignment(est, gt).apply(est) - gt, axis=1)


def test_exact_rays_give_exact_centres_and_points_from_a_random_start():
    scene = random_scene(200, 10, layout="sphere", rng=2)
    rotations, obs_image, obs_track, rays = scene_rays(scene)
    converge = GlobalPositioningOptions(max_iterations=300, function_tolerance=1e-12)  # to the exact answer
    result = position_globally(rotations, obs_image, obs_track, rays, converge, rng=4)
    assert result.success and result.obs_inlier.all()
    assert _centre_errors(result.centers, scene).max() < 1e-5  # scene radius 1, cameras ~4.6 away
    ids = sorted(result.centers)
    est = np.array([result.centers[i] for i in ids])
    gt_from_est = umeyama_alignment(est, np.array([scene.cams_from_world[i - 1].center for i in ids]))
    used = np.flatnonzero(np.isfinite(result.points[:, 0]))
    assert len(used) == 200  # every point is seen by >= 3 of the 10 cameras
    point_errors = np.linalg.norm(
        gt_from_est.apply(result.points[used]) - scene.points_in_world[used], axis=1
    )
    assert point_errors.max() < 1e-5
    assert result.report["iterations"] < 300  # converged, not capped


def test_noise_and_outlier_observations():
    scene = random_scene(400, 12, rng=5)
    rotations, obs_image, obs_track, rays = scene_rays(scene, noise_px=0.5, seed=1)
    # 5 % of the observations point somewhere else entirely (wrong matches).
    rng = np.random.default_rng(2)
    bad = rng.random(len(rays)) < 0.05
    rays[bad] = np.column_stack([rng.uniform(-0.4, 0.4, (bad.sum(), 2)), np.ones(bad.sum())])
    result = position_globally(rotations, obs_image, obs_track, rays, GlobalPositioningOptions(), rng=0)
    assert result.success
    # Huber (as GLOMAP) still feels gross outliers a little: ~0.5 % of the camera distance (0.0007 without
    # them); bundle adjustment removes the rest.
    assert np.median(_centre_errors(result.centers, scene)) < 0.03
    flagged = ~result.obs_inlier
    took_part = np.isfinite(result.points[obs_track, 0])
    assert flagged[bad & took_part].mean() > 0.8  # most wrong observations are found
    assert flagged[~bad & took_part].mean() < 0.02  # and few right ones are lost


def _random_start_problem(scene, noise_px: float, *, seed: int, start_seed: int) -> BataProblem:
    """The scene's world-frame rays (true rotations) with centres and points drawn in [-3, 3]^3; the
    first camera (the gauge) at the origin."""
    _, obs_image, obs_track, rays_cam = scene_rays(scene, noise_px=noise_px, seed=seed)
    rot = np.stack([p.rotation for p in scene.cams_from_world])
    rays = np.einsum("kji,kj->ki", rot[obs_image - 1], rays_cam)
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    rng = np.random.default_rng(start_seed)
    num_cams, num_points = len(scene.cams_from_world), len(scene.points_in_world)
    centers0, points0 = rng.uniform(-3, 3, (num_cams, 3)), rng.uniform(-3, 3, (num_points, 3))
    centers0[0] = 0
    return BataProblem(rays, obs_image - 1, obs_track, centers0, points0)


def test_fast_solver_agrees_with_the_scipy_reference():
    problem = _random_start_problem(random_scene(30, 5, layout="sphere", rng=7), 1.0, seed=3, start_seed=0)
    fast = bata_positions(problem, loss="linear", function_tolerance=1e-14, max_iterations=300)
    ref = bata_positions_reference(problem, max_iterations=2000)
    # The cost is invariant to scaling every position by a and every scale by 1/a (the gauge camera
    # sits at the origin), so the two minima agree up to that one factor.
    a = np.sum(fast[0] * ref[0]) / np.sum(ref[0] ** 2)
    assert a > 0.1
    np.testing.assert_allclose(fast[0], a * ref[0], atol=1e-5 * a)
    np.testing.assert_allclose(fast[1], a * ref[1], atol=1e-5 * a)
    np.testing.assert_allclose(fast[2], ref[2] / a, rtol=1e-5)


def test_sparse_reduced_system_gives_the_dense_solution(monkeypatch):
    import geomvision.geometry.global_positioning as gp

    scene = random_scene(200, 12, layout="sequence", rng=2)
    problem = _random_start_problem(scene, 0.5, seed=1, start_seed=4)
    dense = bata_positions(problem, max_iterations=30)
    monkeypatch.setattr(gp, "_DENSE_MAX_UNKNOWNS", 0)
    monkeypatch.setattr(gp, "_DENSE_FILL", 2.0)  # never dense
    sparse = bata_positions(problem, max_iterations=30)
    assert sparse[3] == dense[3]  # the same iterations
    for a, b in zip(sparse[:3], dense[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_track_selection_prefers_long_tracks_per_image():
    # Image 1 sees tracks 0..3 (lengths 4, 3, 3, 2); image 2 sees 0 and 3; image 3 sees 0, 1, 2; image 4 sees 0.
    obs_image = np.array([1, 2, 3, 4, 1, 3, 5, 1, 3, 6, 1, 2])
    obs_track = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    keep = select_positioning_tracks(obs_image, obs_track, min_track_length=3, max_points_per_image=1)
    assert keep.tolist() == [0, 1, 2]  # track 1 is image 5's best, track 2 image 6's; track 3 is too short
    keep = select_positioning_tracks(obs_image, obs_track, min_track_length=2, max_points_per_image=0)
    assert keep.tolist() == [0, 1, 2, 3]


def test_too_little_input_fails_as_a_value_and_bad_input_raises():
    rotations = {1: np.eye(3), 2: np.eye(3)}
    result = position_globally(
        rotations, np.array([1, 2]), np.array([0, 0]), np.array([[0, 0, 1.0], [0.1, 0, 1.0]])
    )
    assert not result.success and "length >= 3" in result.reason
    with pytest.raises(InputError, match="rays_in_cam"):
        position_globally(rotations, np.array([1, 2]), np.array([0, 0]), np.zeros((3, 3)))
    with pytest.raises(InputError, match="loss"):
        GlobalPositioningOptions(loss="tukey")
    rays, obs = np.tile([[0, 0, 1.0]], (2, 1)), np.array([0, 1])
    with pytest.raises(InputError, match=r"obs_camera out of range \[0, 1\)"):
        BataProblem(rays, obs, np.zeros(2), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(InputError, match="gauge_camera 2 out of range"):
        BataProblem(rays, obs, np.zeros(2), np.zeros((2, 3)), np.zeros((1, 3)), gauge_camera=2)


def test_given_centres_start_the_points_where_their_rays_meet():
    scene = random_scene(200, 10, layout="sphere", rng=2)
    rotations, obs_image, obs_track, rays = scene_rays(scene, noise_px=0.5, seed=3)
    # Centres off by 2 % of the scene radius (an earlier model); every image has one.
    jitter = np.random.default_rng(5).normal(scale=0.02, size=(10, 3))
    given = {i + 1: pose.center + jitter[i] for i, pose in enumerate(scene.cams_from_world)}
    options = GlobalPositioningOptions(max_iterations=50, start="random")
    warm = position_globally(rotations, obs_image, obs_track, rays, options, initial_centers=given, rng=4)
    cold = position_globally(rotations, obs_image, obs_track, rays, options, rng=4)
    averaged = position_globally(
        rotations, obs_image, obs_track, rays, GlobalPositioningOptions(max_iterations=50), rng=4
    )
    assert warm.success and cold.success and averaged.success
    assert _centre_errors(warm.centers, scene).max() < 0.01
    # Points start where their rays meet: 3 iterations (14 with random points, 50 = the cap from a
    # random start, which stops at a cost 3e4 times higher).
    assert warm.report["iterations"] <= 5
    assert warm.report["final_cost"] < 1e-3 < cold.report["final_cost"]
    # The default start (translation averaging of the tracks' directions) is as good as given centres.
    assert averaged.report["translation_averaging"]["num_images"] == 10
    assert averaged.report["iterations"] <= 5 and averaged.report["final_cost"] < 1e-3
    assert _centre_errors(averaged.centers, scene).max() < 0.01
