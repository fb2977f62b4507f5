"""Mapper triangulation: new tracks, continuation, filtering, angles (exact synthetic answers)."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import mapper_inputs

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.geometry.triangulation import triangulation_angle_deg
from geomvision.scene import Track
from geomvision.sfm.mapper_state import MapperState, TrackTable, max_triangulation_angle_deg
from geomvision.sfm.tracks import build_tracks
from geomvision.sfm.triangulate import (
    TriangulationOptions,
    continue_tracks,
    filter_points,
    move_points,
    retriangulate,
    triangulate_tracks,
)
from geomvision.synthetic import random_scene


def _state(scene, noise_px=0.0, rng=0):
    cameras, images, geoms, kp_index = mapper_inputs(scene, noise_px=noise_px, rng=rng)
    tracks = build_tracks({p: g.inlier_matches for p, g in geoms.items()})
    return MapperState(cameras, images, TrackTable.from_tracks(tracks, images)), kp_index


def _triangulated_state(scene):
    """A state with every image registered at its true pose and every track triangulated."""
    state, kp_index = _state(scene)
    for c in range(len(scene.cams_from_world)):
        state.set_pose(c + 1, scene.cams_from_world[c])
    triangulate_tracks(state, None, TriangulationOptions())
    return state, kp_index


def _point_of_track(state, kp_index):
    """Ground-truth point index of each track (via its first observation)."""
    first = state.table.track_offsets[:-1]
    img, kp = state.table.obs_image[first] - 1, state.table.obs_kp[first]
    lookup = {(c, int(k)): p for c in range(kp_index.shape[0]) for p, k in enumerate(kp_index[c]) if k >= 0}
    return np.array([lookup[(int(i), int(k))] for i, k in zip(img, kp, strict=True)])


def test_max_triangulation_angle_exact_for_rays_on_an_arc():
    point = np.zeros(3)
    angles = np.deg2rad([0.0, 10.0, 25.0, 40.0])
    centers = np.stack([np.sin(angles), np.zeros(4), -np.cos(angles)], axis=1) * 5
    out = max_triangulation_angle_deg(centers, np.tile(point, (4, 1)), np.zeros(4, dtype=np.int64), 1)
    np.testing.assert_allclose(out, [40.0], atol=1e-9)
    # Two groups, second with a single ray gets 0.
    out2 = max_triangulation_angle_deg(centers[:3], np.zeros((3, 3)), np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(out2, [10.0, 0.0], atol=1e-9)


def test_triangulate_tracks_recovers_exact_points_with_true_poses():
    scene = random_scene(120, 4, rng=3)
    state, kp_index = _state(scene)
    for c in range(3):  # images 1..3 registered at their true poses
        state.set_pose(c + 1, scene.cams_from_world[c])
    stats = triangulate_tracks(state, None, TriangulationOptions())
    gt = _point_of_track(state, kp_index)
    seen_twice = (scene.visible[:3].sum(axis=0) >= 2)[gt]
    assert stats.num_created == int(seen_twice.sum()) > 100
    np.testing.assert_allclose(
        state.track_xyz[state.track_has_point], scene.points_in_world[gt[state.track_has_point]], atol=1e-8
    )
    # Observations in the unregistered image 4 are not used.
    assert not state.obs_active[state.table.obs_image == 4].any()
    assert state.mean_reprojection_error_px() < 1e-6


def test_triangulate_tracks_leaves_tracks_below_min_observations():
    """With ``min_observations=3`` exactly the tracks seen by >= 3 registered images get points (the
    global mapper's two-view tracks, which its filtering would delete, are never triangulated)."""
    scene = random_scene(150, 4, rng=5)
    state, kp_index = _state(scene)
    for c in range(2):
        state.set_pose(c + 1, scene.cams_from_world[c])
    stats = triangulate_tracks(state, None, TriangulationOptions(), min_observations=3)
    assert stats.num_candidates == stats.num_created == 0
    state.set_pose(3, scene.cams_from_world[2])
    stats = triangulate_tracks(state, None, TriangulationOptions(), min_observations=3)
    gt = _point_of_track(state, kp_index)
    seen = scene.visible[:3].sum(axis=0)[gt]
    assert stats.num_created == int((seen == 3).sum()) > 100
    assert (seen[state.track_has_point] == 3).all()
    np.testing.assert_allclose(
        state.track_xyz[state.track_has_point], scene.points_in_world[gt[state.track_has_point]], atol=1e-8
    )
    # the default minimum (2) brings in the tracks seen by two of the three
    assert retriangulate(state, TriangulationOptions()).num_created == int((seen == 2).sum())


def test_outlier_observation_is_left_out_and_continued_tracks_join_within_threshold():
    scene = random_scene(80, 4, rng=5)
    state, _ = _state(scene)
    # Corrupt one keypoint of image 3 by 30 px.
    rows3 = state.table.image_obs[3]
    lengths = np.diff(state.table.track_offsets)
    first_image = state.table.obs_image[state.table.track_offsets[:-1]]
    # a track seen by images 1, 2 and 3 (and maybe 4): its other two views still make the point
    bad_row = rows3[
        (lengths[state.table.obs_track[rows3]] >= 3) & (first_image[state.table.obs_track[rows3]] == 1)
    ][0]
    state.images[3].keypoints_px[state.table.obs_kp[bad_row]] += 30.0
    state.update_normalized()
    for c in range(3):
        state.set_pose(c + 1, scene.cams_from_world[c])
    triangulate_tracks(state, None, TriangulationOptions(max_error_px=2.0))
    bad_track = state.table.obs_track[bad_row]
    assert state.track_has_point[bad_track]  # the other views still make the point
    assert not state.obs_active[bad_row]
    assert state.mean_reprojection_error_px() < 1e-6
    # Registering image 4 and continuing: all its observations of existing points join (exact data).
    state.set_pose(4, scene.cams_from_world[3])
    rows4 = state.table.image_obs[4]
    expected = int(state.track_has_point[state.table.obs_track[rows4]].sum())
    added = continue_tracks(state, None, 2.0)
    assert added == expected > 0
    assert state.obs_active[rows4][state.track_has_point[state.table.obs_track[rows4]]].all()


def test_small_angle_tracks_are_not_triangulated():
    scene = random_scene(60, 3, layout="sequence", rng=1)
    state, kp_index = _state(scene)
    state.set_pose(1, scene.cams_from_world[0])
    state.set_pose(2, scene.cams_from_world[1])
    gt = _point_of_track(state, kp_index)
    both = scene.visible[0] & scene.visible[1]
    angles = triangulation_angle_deg(
        scene.cams_from_world[0].center, scene.cams_from_world[1].center, scene.points_in_world
    )
    threshold = float(np.median(angles[both]))
    stats = triangulate_tracks(state, None, TriangulationOptions(min_tri_angle_deg=threshold))
    expected = both & (angles >= threshold)
    assert stats.num_candidates == int(both.sum())
    assert stats.num_created == int(expected.sum())
    np.testing.assert_array_equal(np.sort(gt[state.track_has_point]), np.flatnonzero(expected))


def test_filter_points_removes_bad_observations_and_short_tracks():
    state, _ = _triangulated_state(random_scene(60, 3, rng=2))
    n_points = state.num_points
    # Move one point far off: all its observations exceed the threshold -> the point is deleted.
    victim = state.point_ids()[0]
    state.track_xyz[victim] += np.array([0.5, 0.0, 0.0])
    stats = filter_points(state, None, max_error_px=4.0, min_tri_angle_deg=0.0)
    assert not state.track_has_point[victim]
    assert state.num_points == n_points - 1
    assert stats.num_filtered_points == 1 and stats.num_filtered_observations >= 2
    # Every point fails a 170-degree minimum angle.
    filter_points(state, None, max_error_px=4.0, min_tri_angle_deg=170.0)
    assert state.num_points == 0 and not state.obs_active.any()


def test_retriangulate_brings_back_deleted_points():
    state, _ = _triangulated_state(random_scene(60, 3, rng=4))
    n = state.num_points
    state.delete_points(state.point_ids()[:10])
    stats = retriangulate(state, TriangulationOptions())
    assert stats.num_created == 10 and state.num_points == n


def test_move_points_follows_moved_cameras_exactly():
    scene = random_scene(80, 4, rng=5)
    state, kp_index = _triangulated_state(scene)
    points, active = state.point_ids(), state.obs_active.copy()
    # Every camera and point moved by one similarity (a changed gauge): the points must follow it.
    scale, shift = 2.0, np.array([0.3, -0.2, 1.0])
    for c in range(4):
        pose = scene.cams_from_world[c]
        state.set_pose(
            c + 1, Rigid3d(pose.rotation, scale * pose.translation - pose.rotation @ shift * scale)
        )
    move_points(state, points)
    gt = _point_of_track(state, kp_index)[points]
    np.testing.assert_allclose(
        state.track_xyz[points], scale * scene.points_in_world[gt] + scale * shift, atol=1e-8
    )
    assert np.array_equal(state.obs_active, active)  # observations are kept as they were
    assert state.mean_reprojection_error_px() < 1e-6


def test_track_table_rejects_unknown_keypoint():
    scene = random_scene(20, 2, rng=0)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.0)
    with pytest.raises(InputError, match="out of range"):
        TrackTable.from_tracks([Track([(1, 0), (2, 10_000)])], images)
    with pytest.raises(InputError):
        TriangulationOptions(max_error_px=0.0)
