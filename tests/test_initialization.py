"""Initial pair ranking and two-view reconstruction on synthetic scenes with exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import mapper_inputs

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotation_angle_deg
from geomvision.scene import TwoViewGeometry
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions
from geomvision.sfm.initialization import (
    InitializationOptions,
    initialize_reconstruction,
    rank_initial_pairs,
    reconstruct_pair,
)
from geomvision.sfm.mapper_ba import adjust_bundle
from geomvision.sfm.mapper_state import MapperState, TrackTable
from geomvision.sfm.tracks import build_tracks
from geomvision.synthetic import SyntheticScene, project_points, random_scene


def _adjust(state, image_ids, fixed):
    adjust_bundle(
        state, image_ids, BundleAdjustmentOptions(loss="soft_l1", max_iterations=50), fixed_image_ids={fixed}
    )


def _state(cameras, images, geoms):
    tracks = build_tracks({p: g.inlier_matches for p, g in geoms.items()})
    return MapperState(cameras, images, TrackTable.from_tracks(tracks, images))


def _geometry(i, j, n, angle, n_h=0):
    return TwoViewGeometry(
        i,
        j,
        "calibrated",
        np.zeros((n, 2), np.int64),
        num_homography_inliers=n_h,
        median_triangulation_angle_deg=angle,
    )


def test_rank_initial_pairs_skips_low_parallax_and_planar_pairs_and_scores_exactly():
    geoms = {
        (1, 2): _geometry(1, 2, 200, 2.0),  # most inliers but too little parallax
        (1, 3): _geometry(1, 3, 150, 10.0, n_h=135),  # 90% homography inliers: skipped
        (2, 3): _geometry(2, 3, 100, 10.0, n_h=20),
        (3, 4): _geometry(3, 4, 120, float("nan")),  # unknown angle: allowed, checked after triangulation
        (4, 5): _geometry(4, 5, 30, 20.0),  # too few inliers
    }
    ranked = rank_initial_pairs(geoms, InitializationOptions(min_num_inliers=50))
    assert [(c.image_id1, c.image_id2) for c in ranked] == [(3, 4), (2, 3)]
    # degrees among usable pairs (>= 50 inliers): 1:2, 2:2, 3:3, 4:1 -> max 3
    assert ranked[0].score == pytest.approx(120 * 1.0 * (0.5 + 0.5 * 1 / 3))
    assert ranked[1].score == pytest.approx(100 * 0.8 * (0.5 + 0.5 * 2 / 3))
    excluded = rank_initial_pairs(
        geoms, InitializationOptions(), excluded_pairs={(3, 4)}, allowed_image_ids={2, 3, 4}
    )
    assert [(c.image_id1, c.image_id2) for c in excluded] == [(2, 3)]
    with pytest.raises(InputError):
        InitializationOptions(min_tri_angle_deg=95.0)


def test_two_view_reconstruction_matches_ground_truth_with_reestimated_essential():
    scene = random_scene(300, 6, rng=7)  # cameras 0 and 1 are 60 degrees apart around the cloud
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.5, rng=1, with_pose=False, pairs=[(0, 1)])
    state = _state(cameras, images, geoms)
    res = reconstruct_pair(
        state, geoms[(1, 2)], InitializationOptions(), adjust=_adjust, rng=np.random.default_rng(0)
    )
    assert res.success, res.reason
    assert res.num_points >= 290
    assert 50.0 < res.median_tri_angle_deg < 70.0
    truth = scene.cams_from_world[1] @ scene.cams_from_world[0].inverse()
    est = state.pose(2) @ state.pose(1).inverse()
    # Two views only: the rotation/translation trade-off leaves ~0.1 deg at 0.5 px noise.
    assert rotation_angle_deg(truth.rotation, est.rotation) < 0.25
    direction = np.dot(
        truth.translation / np.linalg.norm(truth.translation),
        est.translation / np.linalg.norm(est.translation),
    )
    assert np.degrees(np.arccos(min(1.0, direction))) < 0.5
    # Each point has 4 measurements and 3 unknowns: the residual keeps ~1/4 of the noise power.
    assert 0.15 < state.mean_reprojection_error_px() < 0.45
    np.testing.assert_allclose(
        state.pose(1).matrix(), Rigid3d().matrix(), atol=0
    )  # gauge: first camera fixed


def _with_near_duplicate_camera(scene: SyntheticScene, baseline: float) -> SyntheticScene:
    """Append a camera next to camera 0 (shifted sideways by ``baseline``): almost no parallax."""
    cam0 = scene.cams_from_world[0]
    dup = Rigid3d(cam0.rotation, cam0.translation - np.array([baseline, 0.0, 0.0]))
    px, depth = project_points(scene.K, dup, scene.points_in_world)
    visible = (
        (depth > 0)
        & (px[:, 0] >= -0.5)
        & (px[:, 0] < scene.width - 0.5)
        & (px[:, 1] >= -0.5)
        & (px[:, 1] < scene.height - 0.5)
    )
    return SyntheticScene(
        scene.points_in_world,
        [*scene.cams_from_world, dup],
        scene.K,
        scene.width,
        scene.height,
        np.concatenate([scene.observations_px, px[None]]),
        np.concatenate([scene.visible, visible[None]]),
    )


def test_low_parallax_pair_is_not_chosen_even_when_its_angle_is_unknown():
    scene = _with_near_duplicate_camera(random_scene(150, 5, layout="sequence", rng=11), baseline=0.01)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.3, rng=2)
    dup_pair = (1, 6)
    for pair, g in geoms.items():
        g.median_triangulation_angle_deg = float("nan")  # as after F-only verification: no parallax estimate
        if pair != dup_pair:  # every other pair verified fewer matches: the duplicate pair ranks first
            g.inlier_matches = g.inlier_matches[: int(0.8 * len(g.inlier_matches))]
    ranked = rank_initial_pairs(geoms, InitializationOptions())
    assert (ranked[0].image_id1, ranked[0].image_id2) == dup_pair  # most inliers: tried first
    state = _state(cameras, images, geoms)
    res = initialize_reconstruction(
        state, geoms, InitializationOptions(), adjust=_adjust, rng=np.random.default_rng(0)
    )
    assert res.success, res.reason
    assert res.attempts[0]["pair"] == list(dup_pair) and not res.attempts[0]["success"]
    # every point's ray angle is far below 1.5 deg, so none survives (or their median is too small)
    assert (
        "two-view points" in res.attempts[0]["reason"] or "triangulation angle" in res.attempts[0]["reason"]
    )
    assert res.image_ids != dup_pair
    assert res.median_tri_angle_deg >= 4.0
    assert sorted(state.registered_image_ids) == sorted(res.image_ids)


def test_initialization_fails_cleanly_without_candidates():
    scene = random_scene(40, 3, rng=0)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.0)
    state = _state(cameras, images, geoms)
    res = initialize_reconstruction(
        state, geoms, InitializationOptions(min_num_inliers=500), rng=np.random.default_rng(0)
    )
    assert not res.success and "no image pair" in res.reason
    assert state.num_registered == 0
