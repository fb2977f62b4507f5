"""Relative poses of verified pairs from their inliers under given intrinsics (synthetic exact answers)."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import mapper_inputs
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError
from geomvision.geometry import epipolar
from geomvision.geometry.rigid import Rigid3d, rotation_angle_deg
from geomvision.scene import Camera, ImageInfo, TwoViewGeometry
from geomvision.sfm.relative_poses import (
    RelativePoseOptions,
    estimate_relative_poses,
    homography_rotation_candidates,
)
from geomvision.synthetic import random_scene


@pytest.fixture(scope="module")
def scene_inputs():
    scene = random_scene(300, 6, rng=4)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.1, rng=2)
    return scene, cameras, images, geoms


def _true_relative(scene, i, j):
    return scene.cams_from_world[j - 1] @ scene.cams_from_world[i - 1].inverse()


def test_unposed_pairs_get_the_true_rotation_and_wrong_matches_are_left_out(scene_inputs):
    scene, cameras, images, geoms = scene_inputs
    K = cameras[1].K
    unposed = {}
    gen = np.random.default_rng(0)
    for (i, j), g in list(geoms.items())[:6]:
        rel = _true_relative(scene, i, j)
        F = epipolar.fundamental_from_essential(epipolar.essential_from_pose(rel), K, K)
        # 10 % wrong matches (random keypoints of the two images) among the inliers
        num_bad = len(g.inlier_matches) // 10
        bad = np.stack(
            [
                gen.integers(0, len(images[i].keypoints_px), num_bad),
                gen.integers(0, len(images[j].keypoints_px), num_bad),
            ],
            axis=1,
        )
        matches = np.vstack([g.inlier_matches, bad])
        unposed[(i, j)] = TwoViewGeometry(i, j, "uncalibrated", matches, F=F)
    result = estimate_relative_poses(unposed, images, cameras, rng=0)
    assert result.report["num_pairs"] == 6 and result.report["num_failed"] == 0
    # F is exact but 10 % of the inliers are wrong: E from F holds < 95 %, so RANSAC poses them
    assert result.report["num_ransac"] == 6
    for (i, j), g in result.two_view_geometries.items():
        assert g.config == "calibrated"
        assert (
            rotation_angle_deg(g.cam2_from_cam1.rotation, _true_relative(scene, i, j).rotation) < 0.1
        )  # 2 views, 0.1 px noise
        t_true = _true_relative(scene, i, j).translation
        cos = g.cam2_from_cam1.translation @ t_true / np.linalg.norm(t_true)
        assert cos > np.cos(np.deg2rad(1.0))
        # the kept inliers are the true ones (a random wrong match may fall near its epipolar line)
        assert (
            len(geoms[(i, j)].inlier_matches) * 0.97
            <= len(g.inlier_matches)
            <= len(geoms[(i, j)].inlier_matches) * 1.05
        )


def test_exact_fundamental_gives_the_light_pose_and_a_wrong_focal_fails_as_a_value(scene_inputs):
    scene, cameras, images, geoms = scene_inputs
    K = cameras[1].K
    (i, j), g = next(iter(geoms.items()))
    rel = _true_relative(scene, i, j)
    F = epipolar.fundamental_from_essential(epipolar.essential_from_pose(rel), K, K)
    pair = {(i, j): TwoViewGeometry(i, j, "uncalibrated", g.inlier_matches, F=F)}
    result = estimate_relative_poses(pair, images, cameras, rng=0)
    assert result.report["num_light"] == 1
    assert rotation_angle_deg(result.two_view_geometries[(i, j)].cam2_from_cam1.rotation, rel.rotation) < 0.05
    # A pair whose inliers are all noise keeps no pose (and is still returned, without one).
    noise = np.random.default_rng(1)
    junk = np.stack([noise.integers(0, 300, 60), noise.integers(0, 300, 60)], axis=1)
    result = estimate_relative_poses(
        {(i, j): TwoViewGeometry(i, j, "uncalibrated", junk)}, images, cameras, RelativePoseOptions(), rng=0
    )
    assert result.report["num_failed"] == 1 and result.two_view_geometries[(i, j)].cam2_from_cam1 is None
    with pytest.raises(InputError, match="not among"):
        estimate_relative_poses(pair, images, cameras, pairs=[(1, 99)])
    with pytest.raises(InputError, match="min_support_ratio"):
        RelativePoseOptions(min_support_ratio=1.5)


def test_light_poses_in_small_batches_match_one_batch(scene_inputs, monkeypatch):
    """The light path gives every pair the same pose and inliers however its pairs are batched; each
    exact pair gets its true rotation."""
    import geomvision.sfm.relative_poses as rp

    scene, cameras, images, geoms = scene_inputs
    K = cameras[1].K
    pairs = {}
    for (i, j), g in geoms.items():
        F = epipolar.fundamental_from_essential(
            epipolar.essential_from_pose(_true_relative(scene, i, j)), K, K
        )
        pairs[(i, j)] = TwoViewGeometry(i, j, "uncalibrated", g.inlier_matches, F=F)
    one = estimate_relative_poses(pairs, images, cameras, rng=0)
    monkeypatch.setattr(rp, "_LIGHT_BATCH", 50)  # about one pair per batch
    many = estimate_relative_poses(pairs, images, cameras, rng=0)
    assert one.report == many.report and one.report["num_light"] == len(pairs) >= 10
    for p, g in one.two_view_geometries.items():
        h = many.two_view_geometries[p]
        np.testing.assert_array_equal(g.inlier_matches, h.inlier_matches)
        np.testing.assert_allclose(g.cam2_from_cam1.rotation, h.cam2_from_cam1.rotation, atol=1e-12)
        assert rotation_angle_deg(g.cam2_from_cam1.rotation, _true_relative(scene, *p).rotation) < 0.05


def test_light_pose_also_serves_a_camera_with_distortion(scene_inputs):
    """F on the ideal pixels + a radial camera: E from F holds the (undistorted) inliers, no RANSAC."""
    scene, cameras, images, geoms = scene_inputs
    K = cameras[1].K
    radial = Camera(
        1, "SIMPLE_RADIAL", scene.width, scene.height, np.array([K[0, 0], K[0, 2], K[1, 2], 0.05])
    )
    # Keypoints as the radial camera sees them (up to 7 px from the ideal ones): distort the scene's.
    distorted = {}
    for image_id, info in images.items():
        rays = np.column_stack([(info.keypoints_px - K[:2, 2]) / K[0, 0], np.ones(len(info.keypoints_px))])
        distorted[image_id] = ImageInfo(info.name, 1, radial.project(rays))
    (i, j), g = next(iter(geoms.items()))
    rel = _true_relative(scene, i, j)
    F = epipolar.fundamental_from_essential(epipolar.essential_from_pose(rel), K, K)
    pair = {(i, j): TwoViewGeometry(i, j, "uncalibrated", g.inlier_matches, F=F)}
    result = estimate_relative_poses(pair, distorted, {1: radial}, rng=0)
    assert result.report["num_light"] == 1 and result.report["num_ransac"] == 0
    posed = result.two_view_geometries[(i, j)]
    assert rotation_angle_deg(posed.cam2_from_cam1.rotation, rel.rotation) < 0.05
    assert len(posed.inlier_matches) >= 0.95 * len(g.inlier_matches)


def test_homography_candidates_hold_the_true_rotation_and_its_twin():
    camera = Camera(1, "PINHOLE", 640, 480, np.array([700.0, 720.0, 320.0, 240.0]))
    K = camera.K
    images = {i: ImageInfo(f"{i}.png", 1, np.zeros((0, 2))) for i in (1, 2, 3)}
    R = Rotation.from_rotvec([0.05, -0.3, 0.02]).as_matrix()
    t = np.array([1.0, 0.1, -0.2])
    normal, distance = np.array([0.1, -0.2, -1.0]) / np.linalg.norm([0.1, -0.2, -1.0]), 5.0
    # The plane n^T X = d in camera 1 induces x2 ~ K (R + t n^T / d) K^-1 x1 (H&Z 13.1).
    H = K @ (R + np.outer(t, normal) / distance) @ np.linalg.inv(K)
    pairs = {
        (1, 2): TwoViewGeometry(1, 2, "planar", np.zeros((0, 2), np.int64), H=3.0 * H),
        (1, 3): TwoViewGeometry(1, 3, "calibrated", np.zeros((0, 2), np.int64)),
    }
    out = homography_rotation_candidates(pairs, images, {1: camera}, [(1, 2), (1, 3)])
    assert set(out) == {(1, 2)}  # no homography, no candidates
    rotations = out[(1, 2)]
    assert len(rotations) == 2
    errors = sorted(float(rotation_angle_deg(r, R)) for r in rotations)
    assert errors[0] < 1e-6 and errors[1] > 5.0  # the twin decomposition is another rotation
    with pytest.raises(InputError, match="not among"):
        homography_rotation_candidates(pairs, images, {1: camera}, [(2, 3)])


def test_planar_pair_is_posed_from_its_verified_essential_matrix(scene_inputs):
    scene, cameras, images, geoms = scene_inputs
    (i, j), g = next(iter(geoms.items()))
    rel = _true_relative(scene, i, j)
    E = epipolar.essential_from_pose(rel)
    pair = {(i, j): TwoViewGeometry(i, j, "planar", g.inlier_matches, E=E, cam2_from_cam1=None)}
    result = estimate_relative_poses(pair, images, cameras, pairs=[(i, j)], rng=0)
    assert result.report["num_light_planar"] == 1 and result.report["num_ransac"] == 0
    posed = result.two_view_geometries[(i, j)]
    assert posed.config == "calibrated"
    assert rotation_angle_deg(posed.cam2_from_cam1.rotation, rel.rotation) < 1e-6
    # A stale E (the rotation 10 deg off) holds too few inliers: RANSAC poses the pair instead.
    turn = Rotation.from_rotvec([0.0, np.deg2rad(10.0), 0.0]).as_matrix()
    wrong = epipolar.essential_from_pose(Rigid3d(turn @ rel.rotation, rel.translation))
    pair = {(i, j): TwoViewGeometry(i, j, "planar", g.inlier_matches, E=wrong)}
    result = estimate_relative_poses(pair, images, cameras, pairs=[(i, j)], rng=0)
    assert result.report["num_light_planar"] == 0 and result.report["num_ransac"] == 1
    off = estimate_relative_poses(
        {(i, j): TwoViewGeometry(i, j, "planar", g.inlier_matches, E=E)},
        images,
        cameras,
        RelativePoseOptions(planar_from_essential=False),
        pairs=[(i, j)],
        rng=0,
    )
    assert off.report["num_ransac"] == 1 and off.report["num_light"] == 0
