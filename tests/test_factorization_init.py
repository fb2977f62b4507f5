"""Tests for sfm.factorization_init on synthetic ring sequences with known poses."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.rigid import rotation_angle_deg, umeyama_alignment
from geomvision.scene import Camera, ImageInfo, Track
from geomvision.sfm.factorization_init import (
    FactorizationInitOptions,
    initialize_by_factorization,
    select_window,
)
from geomvision.synthetic import look_at


def _ring_scene(
    rng,
    *,
    num_images=16,
    num_points=400,
    step_deg=7.5,
    radius=0.5,
    noise_px=0.3,
    outliers=0.0,
    distortion=False,
):
    """templeRing-like: cameras on a ring looking at a ~0.1 m object; tracks over 4..12 consecutive images."""
    if distortion:
        camera = Camera(1, "SIMPLE_RADIAL", 640, 480, np.array([1520.0, 320.0, 240.0, -0.05]))
    else:
        camera = Camera.pinhole(1, 1520.4, 1525.9, 302.3, 246.9, 640, 480)
    angles = np.radians(step_deg) * np.arange(num_images)
    centers = np.stack([radius * np.cos(angles), radius * np.sin(angles), 0.15 * np.ones(num_images)], axis=1)
    poses = [look_at(c, np.zeros(3)) for c in centers]
    points = rng.uniform(-0.05, 0.05, (num_points, 3))
    start = rng.integers(0, num_images, num_points)
    length = rng.integers(4, 13, num_points)
    keypoints = {i: [] for i in range(1, num_images + 1)}
    tracks = []
    for p in range(num_points):
        frames = [f for f in range(start[p], min(start[p] + length[p], num_images))]
        if len(frames) < 2:
            continue
        elements = []
        for f in frames:
            px = camera.project(poses[f].apply(points[p][None]))[0] + rng.normal(0, noise_px, 2)
            if rng.random() < outliers:
                px = rng.uniform([0, 0], [640, 480])
            keypoints[f + 1].append(px)
            elements.append((f + 1, len(keypoints[f + 1]) - 1))
        tracks.append(Track(elements))
    images = {
        i: ImageInfo(f"img{i:03d}.png", 1, np.array(kp).reshape(-1, 2), np.full((len(kp), 3), 7, np.uint8))
        for i, kp in keypoints.items()
    }
    return {1: camera}, images, tracks, poses


def _pose_errors(result, poses):
    rec = result.reconstruction
    ids = rec.registered_image_ids
    R_est = np.stack([rec.views[i].cam_from_world.rotation for i in ids])
    R_true = np.stack([poses[i - 1].rotation for i in ids])
    rel_est = R_est @ R_est[0].T
    rel_true = R_true @ R_true[0].T
    rot_err = rotation_angle_deg(rel_est, rel_true).max()
    c_est = np.stack([rec.views[i].cam_from_world.center for i in ids])
    c_true = np.stack([poses[i - 1].center for i in ids])
    sim = umeyama_alignment(c_est, c_true)
    centre_err = np.linalg.norm(sim.apply(c_est) - c_true, axis=1).max() / np.ptp(c_true, axis=0).max()
    return rot_err, centre_err


@pytest.mark.parametrize("method", ["projective", "weak_perspective"])
def test_noise_free_ring_is_recovered(rng, method):
    cameras, images, tracks, poses = _ring_scene(rng, noise_px=0.0)
    options = FactorizationInitOptions(method=method, bundle_adjust=False)
    result = initialize_by_factorization(cameras, images, tracks, options, rng=0)
    assert result.success, result.reason
    assert result.method == method
    assert 3 <= len(result.image_ids) <= 8
    rec = result.reconstruction
    assert rec.num_registered == len(result.image_ids)
    rot_err, centre_err = _pose_errors(result, poses)
    if method == "projective":
        # Perspective model: exact up to a similarity.
        assert result.factorization_rms_px < 1e-6
        assert rot_err < 1e-6 and centre_err < 1e-6
        assert rec.mean_reprojection_error_px() < 1e-6
    else:
        # Weak perspective only approximates the 0.1 m object seen from 0.5 m: a starting point for BA.
        assert rot_err < 5.0 and centre_err < 0.2
    assert len(rec.points3D) > 100


def test_noisy_ring_with_outliers_and_bundle_adjustment(rng):
    cameras, images, tracks, poses = _ring_scene(rng, noise_px=0.5, outliers=0.03)
    result = initialize_by_factorization(cameras, images, tracks, FactorizationInitOptions(), rng=0)
    assert result.success, result.reason
    assert result.method == "projective"
    rot_err, centre_err = _pose_errors(result, poses)
    assert rot_err < 0.5 and centre_err < 0.02
    rec = result.reconstruction
    errors = rec.reprojection_errors_px()["errors_px"]
    assert errors.max() <= 4.0 and np.median(errors) < 1.0
    # Every point's track refers to its keypoints (the mapper relies on the back links).
    for pid, point in list(rec.points3D.items())[:50]:
        for image_id, kp in point.track:
            assert rec.views[image_id].point3D_ids[kp] == pid


def test_distorted_camera_is_undistorted_before_factorization(rng):
    cameras, images, tracks, poses = _ring_scene(rng, noise_px=0.0, distortion=True)
    result = initialize_by_factorization(
        cameras, images, tracks, FactorizationInitOptions(bundle_adjust=False)
    )
    assert result.success, result.reason
    rot_err, centre_err = _pose_errors(result, poses)
    assert rot_err < 1e-4 and centre_err < 1e-4


def test_select_window_prefers_frames_sharing_complete_tracks():
    visible = np.zeros((100, 6), dtype=bool)
    visible[:60, 1:4] = True  # 60 tracks complete over images 1..3
    visible[60:, 4:6] = True  # 40 tracks over 4..5 only
    cols, complete = select_window(visible, max_size=5, min_size=3, min_complete=10)
    assert cols == [1, 2, 3]
    assert complete.sum() == 60


def test_too_few_shared_tracks_fails_as_a_value(rng):
    cameras, images, tracks, _ = _ring_scene(rng, num_images=6, num_points=400)
    short = [Track(t.elements[:2]) for t in tracks]  # every track seen twice: no 3-image window
    result = initialize_by_factorization(cameras, images, short, FactorizationInitOptions())
    assert not result.success and "complete tracks" in result.reason
    assert result.reconstruction is None


def test_bad_input_raises(rng):
    cameras, images, tracks, _ = _ring_scene(rng, num_images=6, num_points=50)
    with pytest.raises(InputError, match="unknown image"):
        initialize_by_factorization(cameras, images, [Track([(99, 0), (1, 0)])])
    with pytest.raises(InputError, match="out of range"):
        initialize_by_factorization(cameras, images, [Track([(1, 10**6), (2, 0)])])
    with pytest.raises(InputError, match="window sizes"):
        FactorizationInitOptions(min_window_size=2)


def test_weak_perspective_fallback_resolves_the_depth_reversal_by_bundle_adjustment():
    # Both depth-reversal twins fit this nearly affine window equally well (checked: 29.4 vs 29.1 px^2);
    # polishing both and keeping the better one picks the right twin.
    cameras, images, tracks, poses = _ring_scene(np.random.default_rng(12345), noise_px=0.5, outliers=0.03)
    options = FactorizationInitOptions(method="weak_perspective")
    result = initialize_by_factorization(cameras, images, tracks, options)
    assert result.success and result.method == "weak_perspective"
    rot_err, centre_err = _pose_errors(result, poses)
    assert rot_err < 0.5 and centre_err < 0.02
