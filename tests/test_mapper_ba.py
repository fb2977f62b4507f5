"""Mapper bundle adjustment adapter: gauge fixing, constant images, focal refinement (exact data)."""

from __future__ import annotations

import numpy as np
from mapper_fixtures import mapper_inputs

from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix
from geomvision.sfm.ba.model import gauge_translation_axis
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions
from geomvision.sfm.mapper_ba import adjust_bundle
from geomvision.sfm.mapper_state import MapperState, TrackTable
from geomvision.sfm.tracks import build_tracks
from geomvision.sfm.triangulate import TriangulationOptions, triangulate_tracks
from geomvision.synthetic import random_scene


def _exact_state(scene, **kwargs):
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.0, **kwargs)
    tracks = build_tracks({p: g.inlier_matches for p, g in geoms.items()})
    state = MapperState(cameras, images, TrackTable.from_tracks(tracks, images))
    for c in range(scene.num_cameras):
        state.set_pose(c + 1, scene.cams_from_world[c])
    triangulate_tracks(state, None, TriangulationOptions())
    return state


def _perturb(pose: Rigid3d, rng, deg=0.5, dist=0.05) -> Rigid3d:
    R = rotvec_to_matrix(rng.normal(size=3) * np.deg2rad(deg)) @ pose.rotation
    return Rigid3d(R, pose.translation + rng.normal(size=3) * dist)


def test_all_free_problem_fixes_the_gauge_and_converges_to_zero_error():
    scene = random_scene(150, 5, rng=4)
    state = _exact_state(scene)
    first, second = state.registration_order[:2]
    rng = np.random.default_rng(0)
    for i in state.registered_image_ids[2:]:
        state.set_pose(i, _perturb(state.pose(i), rng))
    second_t = state.translations[second].copy()
    first_pose = state.pose(first).matrix().copy()
    stats = adjust_bundle(
        state, state.registered_image_ids, BundleAdjustmentOptions(loss="linear", max_iterations=100)
    )
    assert stats.num_fixed_images == 0 and stats.num_points == 150
    np.testing.assert_array_equal(state.pose(first).matrix(), first_pose)  # 6 DOF held
    # The 7th DOF (scale about the first centre) is held by the one gauge rule of both BA bridges.
    k = gauge_translation_axis(first_pose[:, :3], first_pose[:, 3], state.rotations[second], second_t)
    assert state.translations[second][k] == second_t[k]
    assert state.mean_reprojection_error_px() < 1e-6
    for c in range(5):  # the gauge equals the ground-truth frame, so poses come back exactly
        np.testing.assert_allclose(state.pose(c + 1).matrix(), scene.cams_from_world[c].matrix(), atol=1e-6)


def test_constant_images_stay_put_and_focal_is_recovered():
    scene = random_scene(200, 6, rng=5)
    state = _exact_state(scene, model="SIMPLE_RADIAL")
    state.cameras[1].params = np.array([840.0, 319.5, 239.5, 0.0])  # 5 % off; the truth is 800, k = 0
    state.update_normalized()
    before = {i: state.pose(i).matrix().copy() for i in (1, 2)}
    stats = adjust_bundle(
        state,
        [3, 4, 5, 6],
        BundleAdjustmentOptions(loss="linear", max_iterations=100),
        refine_camera_ids={1},
        fixed_image_ids={1, 2},
        point_tracks=state.point_ids(),
    )
    assert stats.num_fixed_images == 2
    for i in (1, 2):
        np.testing.assert_array_equal(state.pose(i).matrix(), before[i])
    np.testing.assert_allclose(state.cameras[1].params, [800.0, 319.5, 239.5, 0.0], atol=1e-5)
    assert state.mean_reprojection_error_px() < 1e-6
