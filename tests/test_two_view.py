"""sfm.two_view: model selection (E / F / H planar / panoramic), poses against exact synthetic answers,
distortion, rejection reasons, parallel determinism, and real GT epipolar geometry (templeRing)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset

from geomvision.errors import InputError
from geomvision.features.extract import ExtractionOptions, extract_features
from geomvision.features.match import MatchingOptions, match_pairs
from geomvision.geometry.epipolar import fundamental_from_essential, sampson_distance_sq
from geomvision.geometry.rigid import Rigid3d, angle_between_vectors_deg, rotation_angle_deg, skew
from geomvision.robust.ransac import RansacOptions
from geomvision.runtime.runner import open_runner
from geomvision.scene.camera import Camera
from geomvision.scene.types import Features, Matches
from geomvision.sfm.two_view import TwoViewOptions, verify_pair, verify_pairs
from geomvision.synthetic import two_view_correspondences


def _as_pair(corr):
    n = len(corr.x1_px)
    return corr.x1_px, corr.x2_px, np.stack([np.arange(n), np.arange(n)], axis=1)


def _pose_errors_deg(est: Rigid3d, gt: Rigid3d) -> tuple[float, float]:
    return (
        float(rotation_angle_deg(est.rotation, gt.rotation)),
        float(angle_between_vectors_deg(est.translation, gt.translation)),
    )


def test_calibrated_recovers_pose_and_inliers():
    corr = two_view_correspondences(300, noise_px=0.3, outlier_ratio=0.3, rng=1)
    kp1, kp2, m = _as_pair(corr)
    tvg = verify_pair(kp1, kp2, m, corr.K, corr.K, image_ids=(3, 7), rng=0)
    assert tvg.success and tvg.config == "calibrated" and (tvg.image_i, tvg.image_j) == (3, 7)
    rot_err, t_err = _pose_errors_deg(tvg.cam2_from_cam1, corr.cam2_from_cam1)
    assert rot_err < 0.2 and t_err < 2.0
    found = np.zeros(len(m), bool)
    found[tvg.inlier_matches[:, 0]] = True
    # All true outliers rejected; nearly all true inliers kept.
    assert not np.any(found & ~corr.inlier_mask)
    assert np.count_nonzero(found & corr.inlier_mask) >= 0.97 * corr.inlier_mask.sum()
    assert 1.0 < tvg.median_triangulation_angle_deg < 30.0
    assert tvg.num_putative == 300


def test_uncalibrated_uses_fundamental():
    corr = two_view_correspondences(300, noise_px=0.3, outlier_ratio=0.2, rng=2)
    kp1, kp2, m = _as_pair(corr)
    tvg = verify_pair(kp1, kp2, m, None, None, rng=0)
    assert tvg.config == "uncalibrated" and tvg.cam2_from_cam1 is None and tvg.E is None
    inl = tvg.inlier_matches[:, 0]
    gt_err = np.sqrt(sampson_distance_sq(corr.fundamental, kp1[inl], kp2[inl]))
    assert np.all(gt_err < 2.0)


def test_pure_rotation_is_panoramic():
    corr = two_view_correspondences(300, noise_px=0.3, outlier_ratio=0.2, pure_rotation=True, rng=3)
    kp1, kp2, m = _as_pair(corr)
    tvg = verify_pair(kp1, kp2, m, corr.K, corr.K, rng=0)
    assert tvg.config == "panoramic"
    assert rotation_angle_deg(tvg.cam2_from_cam1.rotation, corr.cam2_from_cam1.rotation) < 0.2
    assert tvg.median_triangulation_angle_deg == 0.0
    assert tvg.num_inliers >= 0.95 * corr.inlier_mask.sum()


def test_planar_scene_is_planar():
    corr = two_view_correspondences(300, noise_px=0.3, outlier_ratio=0.2, planar=True, rng=4)
    kp1, kp2, m = _as_pair(corr)
    tvg = verify_pair(kp1, kp2, m, corr.K, corr.K, rng=0)
    assert tvg.config == "planar" and tvg.H is not None
    assert tvg.num_homography_inliers >= 0.95 * corr.inlier_mask.sum()
    rot_err, _ = _pose_errors_deg(tvg.cam2_from_cam1, corr.cam2_from_cam1)
    assert rot_err < 0.5


def test_distorted_camera_is_undistorted():
    corr = two_view_correspondences(300, noise_px=0.0, rng=5)
    K = corr.K
    cam = Camera(1, "OPENCV", 640, 480, [K[0, 0], K[1, 1], K[0, 2], K[1, 2], -0.25, 0.05, 0.001, -0.001])
    x1 = cam.project(corr.points_in_cam1)
    x2 = cam.project(corr.cam2_from_cam1.apply(corr.points_in_cam1))
    m = np.stack([np.arange(300), np.arange(300)], axis=1)
    tvg = verify_pair(x1, x2, m, cam, cam, TwoViewOptions(ransac=RansacOptions(max_error_px=1.0)), rng=0)
    assert tvg.config == "calibrated" and tvg.num_inliers == 300
    rot_err, t_err = _pose_errors_deg(tvg.cam2_from_cam1, corr.cam2_from_cam1)
    assert rot_err < 1e-3 and t_err < 1e-2
    # Ignoring the distortion loses some of these (exact) correspondences.
    naive = verify_pair(x1, x2, m, K, K, TwoViewOptions(ransac=RansacOptions(max_error_px=1.0)), rng=0)
    assert naive.num_inliers < 300


def test_rejections_and_bad_input():
    corr = two_view_correspondences(10, rng=6)
    kp1, kp2, m = _as_pair(corr)
    tvg = verify_pair(kp1, kp2, m, corr.K, corr.K, rng=0)
    assert not tvg.success and tvg.config == "rejected" and tvg.reason == "10 putative matches < 15"
    # Unrelated points: any model explains only a few of them by chance.
    rng = np.random.default_rng(0)
    noise = rng.random((60, 2)) * [640, 480], rng.random((60, 2)) * [640, 480]
    m = np.stack([np.arange(60), np.arange(60)], axis=1)
    tvg = verify_pair(*noise, m, corr.K, corr.K, rng=0)
    assert not tvg.success and "inliers" in tvg.reason
    corr = two_view_correspondences(100, noise_px=0.3, outlier_ratio=0.5, rng=7)
    kp1, kp2, m = _as_pair(corr)
    assert verify_pair(kp1, kp2, m, corr.K, corr.K, rng=0).success
    strict = verify_pair(kp1, kp2, m, corr.K, corr.K, TwoViewOptions(min_inlier_ratio=0.7), rng=0)
    assert not strict.success and strict.reason.startswith("inlier ratio")
    with pytest.raises(InputError, match="out of range"):
        verify_pair(kp1, kp2, m + 1, corr.K, corr.K)
    with pytest.raises(InputError, match="min_num_inliers"):
        TwoViewOptions(min_num_inliers=3)


def test_verify_pairs_parallel_is_deterministic():
    feats, matches, cams = {}, {}, {}
    for k in range(1, 5):
        corr = two_view_correspondences(150, noise_px=0.5, outlier_ratio=0.3, rng=10 + k)
        feats[2 * k - 1] = Features(corr.x1_px, np.zeros((150, 128), np.float32))
        feats[2 * k] = Features(corr.x2_px, np.zeros((150, 128), np.float32))
        matches[(2 * k - 1, 2 * k)] = Matches(2 * k - 1, 2 * k, np.stack([np.arange(150)] * 2, axis=1))
        cams[2 * k - 1] = cams[2 * k] = corr.K
    del cams[8]  # unknown intrinsics -> uncalibrated
    serial = verify_pairs(feats, matches, cams, TwoViewOptions(), rng=42)
    with open_runner("processes", 2) as runner:
        threaded = verify_pairs(feats, matches, cams, TwoViewOptions(), rng=42, runner=runner)
    assert list(serial) == sorted(matches)
    for p in serial:
        np.testing.assert_array_equal(serial[p].inlier_matches, threaded[p].inlier_matches)
    assert serial[(7, 8)].config == "uncalibrated"
    assert all(serial[p].config == "calibrated" for p in [(1, 2), (3, 4), (5, 6)])


@pytest.mark.needs_shared
def test_templering_verified_pairs_match_gt_epipolar_geometry():
    from geomvision.evaluation import read_middlebury_par

    root = shared_dataset("middlebury_templeRing")
    gt = read_middlebury_par(root / "templeR_par.txt")
    names = [f"templeR{k:04d}.png" for k in range(1, 5)]
    opts = ExtractionOptions(max_num_features=4000)
    feats = extract_features([root / n for n in names], opts)
    features = {k + 1: f for k, f in enumerate(feats)}
    pairs = [(1, 2), (2, 3), (3, 4), (1, 3)]
    matches = match_pairs(features, pairs, MatchingOptions())
    cams = {k + 1: gt[n].K for k, n in enumerate(names)}
    tvgs = verify_pairs(features, matches, cams, TwoViewOptions(), rng=0)
    for (i, j), tvg in tvgs.items():
        gi, gj = gt[names[i - 1]], gt[names[j - 1]]
        rel = gj.cam_from_world @ gi.cam_from_world.inverse()
        F = fundamental_from_essential(skew(rel.translation) @ rel.rotation, gi.K, gj.K)
        x1 = features[i].keypoints_px[tvg.inlier_matches[:, 0]]
        x2 = features[j].keypoints_px[tvg.inlier_matches[:, 1]]
        err = np.sqrt(sampson_distance_sq(F, x1, x2))
        assert tvg.success and tvg.num_inliers >= 50, (i, j, tvg.reason)
        assert np.mean(err < 2.0) >= 0.98, (i, j)
        rot_err, t_err = _pose_errors_deg(tvg.cam2_from_cam1, rel)
        assert rot_err < 1.0 and t_err < 5.0, (i, j, rot_err, t_err)


def _unrelated_matches(n: int, seed: int):
    """Keypoints of a pair with nothing in common: n uniform random points per 640x480 image matched
    index to index, and a plausible K. Returns (kp1, kp2, K, matches)."""
    rng = np.random.default_rng(seed)
    kp1 = rng.uniform([0, 0], [640, 480], size=(n, 2))
    kp2 = rng.uniform([0, 0], [640, 480], size=(n, 2))
    K = np.array([[700.0, 0, 320], [0, 700, 240], [0, 0, 1]])
    return kp1, kp2, K, np.column_stack([np.arange(n), np.arange(n)])


def test_non_overlapping_pair_stops_at_min_num_inliers_floor(monkeypatch):
    """Random (non-overlapping) matches are rejected after the samples that would find a model with
    min_num_inliers inliers at the requested confidence, not after max_iterations."""
    import geomvision.sfm.two_view as tv
    from geomvision.robust.ransac import required_iterations

    iterations = {}
    for name in ("estimate_essential", "estimate_fundamental"):

        def wrapped(*args, _f=getattr(tv, name), _name=name, **kwargs):
            est = _f(*args, **kwargs)
            iterations[_name] = est.num_iterations
            return est

        monkeypatch.setattr(tv, name, wrapped)
    n = 40
    kp1, kp2, K, matches = _unrelated_matches(n, seed=3)
    # E on all matches (guided_essential off): both RANSACs stop at the floor.
    options = TwoViewOptions(guided_essential=False)
    tvg = verify_pair(kp1, kp2, matches, K, K, options, rng=0)
    assert not tvg.success and "inliers" in tvg.reason
    ratio = options.min_num_inliers / n
    for name, s in (("estimate_essential", 5), ("estimate_fundamental", 7)):
        bound = required_iterations(ratio, s, options.ransac.confidence)
        # The adaptive loop overshoots its target by at most one grown batch (32 * batch_size).
        assert iterations[name] <= bound + 32 * options.ransac.batch_size, (name, iterations[name], bound)
    # Guided (default): F finds no model, so the (costlier) E search does not run at all.
    iterations.clear()
    tvg = verify_pair(kp1, kp2, matches, K, K, TwoViewOptions(), rng=0)
    assert not tvg.success and "estimate_essential" not in iterations
    bound = required_iterations(ratio, 7, options.ransac.confidence)
    assert iterations["estimate_fundamental"] <= bound + 32 * options.ransac.batch_size


def test_rejection_keeps_the_scout_reason_with_trusted_intrinsics():
    """Random matches, trusted K (no calibration check): F finds no model, so E is never run, and the
    rejection still says why (F's reason), not a generic 'no epipolar model'."""
    kp1, kp2, K, matches = _unrelated_matches(40, seed=5)
    tvg = verify_pair(kp1, kp2, matches, K, K, TwoViewOptions(check_calibration=False), rng=0)
    assert not tvg.success and "inliers" in tvg.reason
