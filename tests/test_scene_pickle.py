"""Reconstruction pickles its points as arrays (worker -> main transfer of cluster models): exact round trip."""

from __future__ import annotations

import copy
import pickle

import numpy as np

from geomvision.geometry.rigid import Rigid3d
from geomvision.scene import Camera, Reconstruction, View


def _model() -> Reconstruction:
    rng = np.random.default_rng(3)
    rec = Reconstruction()
    rec.add_camera(Camera(1, "SIMPLE_RADIAL", 640, 480, np.array([700.0, 319.5, 239.5, 0.01])))
    for i in (2, 5, 9):
        rec.add_view(
            View(i, f"{i}.png", 1, Rigid3d(np.eye(3), rng.normal(size=3)), rng.uniform(0, 600, (50, 2)))
        )
    rec.add_view(View(11, "11.png", 1, None, rng.uniform(0, 600, (20, 2))))  # unregistered
    for k in range(40):
        images = [2, 5, 9][: 2 + k % 2]
        rec.add_point3D(rng.normal(size=3), [(i, k) for i in images], rng.integers(0, 255, 3), 0.1 * k)
    rec.delete_point3D(7)  # ids with a gap; next id stays 41
    return rec


def test_pickle_round_trip_is_exact():
    rec = _model()
    back = pickle.loads(pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL))
    assert list(back.points3D) == list(rec.points3D) and back.next_point3D_id == rec.next_point3D_id == 41
    for pid, point in rec.points3D.items():
        other = back.points3D[pid]
        np.testing.assert_array_equal(other.xyz, point.xyz)
        np.testing.assert_array_equal(other.color, point.color)
        assert other.color.dtype == np.uint8 and other.xyz.shape == (3,)
        assert other.error == point.error and other.track == point.track
        assert all(type(i) is int and type(kp) is int for i, kp in other.track)
    for image_id, view in rec.views.items():
        np.testing.assert_array_equal(back.views[image_id].point3D_ids, view.point3D_ids)
        np.testing.assert_array_equal(back.views[image_id].keypoints_px, view.keypoints_px)
    assert back.views[11].cam_from_world is None
    np.testing.assert_array_equal(back.cameras[1].params, rec.cameras[1].params)
    assert back.summary() == rec.summary()


def test_unpickled_points_are_independent_and_editable():
    back = pickle.loads(pickle.dumps(_model()))
    back.points3D[1].xyz[:] = 0.0  # rows of one array: editing one point leaves the others
    assert np.all(back.points3D[2].xyz != 0.0)
    back.add_observation(2, 11, 3)
    assert back.points3D[2].track[-1] == (11, 3) and back.views[11].point3D_ids[3] == 2
    moved = copy.deepcopy(back)
    moved.points3D[2].xyz[:] = 5.0
    assert np.all(back.points3D[2].xyz != 5.0)


def test_empty_model_round_trips():
    rec = Reconstruction()
    back = pickle.loads(pickle.dumps(rec))
    assert back.points3D == {} and back.views == {} and back.next_point3D_id == 1


def test_bulk_point_addition_matches_one_by_one():
    one_by_one, bulk = _model(), _model()
    rng = np.random.default_rng(4)
    xyz = rng.normal(size=(3, 3))
    colors = rng.integers(0, 255, (3, 3)).astype(np.uint8)
    tracks = [[(2, 40), (5, 40)], [(5, 41), (9, 41), (2, 41)], [(9, 42), (2, 43)]]
    expected = [one_by_one.add_point3D(x, t, c) for x, t, c in zip(xyz, tracks, colors, strict=True)]
    ids = bulk.add_points3D(xyz, np.array([e for t in tracks for e in t]), np.array([2, 3, 2]), colors)
    assert ids.tolist() == expected == [41, 42, 43] and bulk.next_point3D_id == 44
    for pid in expected:
        np.testing.assert_array_equal(bulk.points3D[pid].xyz, one_by_one.points3D[pid].xyz)
        np.testing.assert_array_equal(bulk.points3D[pid].color, one_by_one.points3D[pid].color)
        assert bulk.points3D[pid].track == one_by_one.points3D[pid].track
    for i in (2, 5, 9):
        np.testing.assert_array_equal(bulk.views[i].point3D_ids, one_by_one.views[i].point3D_ids)
