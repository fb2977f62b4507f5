"""Next-best-view scoring and PnP registration against exact synthetic poses."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import mapper_inputs

from geomvision.errors import InputError
from geomvision.geometry.rigid import rotation_angle_deg
from geomvision.sfm.mapper_state import MapperState, TrackTable
from geomvision.sfm.registration import (
    RegistrationOptions,
    pyramid_score,
    rank_next_images,
    register_image,
    visible_point_rows,
)
from geomvision.sfm.tracks import build_tracks
from geomvision.sfm.triangulate import TriangulationOptions, triangulate_tracks
from geomvision.synthetic import random_scene


def _state_with_points(scene, registered, noise_px=0.0, rng=0):
    cameras, images, geoms, kp_index = mapper_inputs(scene, noise_px=noise_px, rng=rng)
    tracks = build_tracks({p: g.inlier_matches for p, g in geoms.items()})
    state = MapperState(cameras, images, TrackTable.from_tracks(tracks, images))
    for c in registered:
        state.set_pose(c + 1, scene.cams_from_world[c])
    triangulate_tracks(state, None, TriangulationOptions())
    return state, kp_index


def test_pyramid_score_rewards_spread_points():
    # One point per cell of the 8x8 grid: every cell at every level is occupied.
    u = (np.arange(8) + 0.5) * 80.0 - 0.5
    v = (np.arange(8) + 0.5) * 60.0 - 0.5
    spread = np.stack(np.meshgrid(u, v), axis=-1).reshape(-1, 2)
    assert pyramid_score(spread, 640, 480, 3) == 2 * 4 + 4 * 16 + 8 * 64
    clustered = np.full((64, 2), 10.0)  # same count, one corner
    assert pyramid_score(clustered, 640, 480, 3) == 2 + 4 + 8
    assert pyramid_score(np.zeros((0, 2)), 640, 480, 3) == 0


def test_rank_next_images_prefers_the_image_seeing_more_spread_points():
    scene = random_scene(200, 5, rng=2)
    state, _ = _state_with_points(scene, registered=[0, 1])
    ranked = rank_next_images(state, [1, 2, 3, 4, 5], RegistrationOptions())
    ids = [r[0] for r in ranked]
    assert 1 not in ids and 2 not in ids  # registered already
    scores = [r[1] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for image_id, _, num_visible in ranked:
        assert num_visible == len(visible_point_rows(state, image_id))


def test_register_image_recovers_the_true_pose_with_outliers():
    scene = random_scene(200, 4, rng=6)
    state, _ = _state_with_points(scene, registered=[0, 1], noise_px=0.3, rng=1)
    # Corrupt 20 % of image 3's keypoints that see triangulated points.
    rows = visible_point_rows(state, 3)
    gen = np.random.default_rng(0)
    bad = gen.choice(rows, size=len(rows) // 5, replace=False)
    state.images[3].keypoints_px[state.table.obs_kp[bad]] += gen.uniform(30, 80, size=(len(bad), 2))
    state.update_normalized()
    result = register_image(state, 3, RegistrationOptions(), rng=np.random.default_rng(0))
    assert result.success, result.reason
    truth = scene.cams_from_world[2]
    assert rotation_angle_deg(truth.rotation, result.cam_from_world.rotation) < 0.1
    assert np.linalg.norm(truth.center - result.cam_from_world.center) < 0.01
    assert not np.isin(bad, result.inlier_rows).any()
    assert result.num_inliers == len(result.inlier_rows) >= len(rows) - len(bad) - 3


def test_register_image_failure_reasons():
    scene = random_scene(40, 3, rng=1)
    state, _ = _state_with_points(scene, registered=[0, 1])
    res = register_image(state, 3, RegistrationOptions(min_num_inliers=100), rng=np.random.default_rng(0))
    assert not res.success and "2D-3D correspondences" in res.reason
    # Scramble every keypoint of image 3: no consistent pose.
    rows = visible_point_rows(state, 3)
    gen = np.random.default_rng(1)
    state.images[3].keypoints_px[state.table.obs_kp[rows]] = gen.uniform(0, 480, size=(len(rows), 2))
    state.update_normalized()
    res = register_image(state, 3, RegistrationOptions(min_num_inliers=10), rng=np.random.default_rng(0))
    assert not res.success and res.cam_from_world is None
    with pytest.raises(InputError):
        RegistrationOptions(min_num_inliers=3)
