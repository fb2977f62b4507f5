"""geometry.focal and sfm.calibration: focal lengths from fundamental matrices against exact synthetic answers."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.camera_models import default_params
from geomvision.geometry.epipolar import fundamental_from_essential
from geomvision.geometry.focal import bougnoux_focal_lengths, essential_singular_gap
from geomvision.geometry.rigid import rotation_angle_deg
from geomvision.scene.camera import Camera
from geomvision.scene.types import Features, TwoViewGeometry
from geomvision.sfm.calibration import (
    EssentialReestimationOptions,
    SelfCalibrationOptions,
    ViewGraphCalibrationOptions,
    calibrate_view_graph,
    reestimate_essentials,
    self_calibrate,
    trusted_focal_estimates,
)
from geomvision.sfm.two_view import TwoViewOptions, verify_pair
from geomvision.synthetic import intrinsics_matrix, two_view_correspondences

W, H = 640, 480


def _camera(camera_id: int, focal_px: float, model: str = "SIMPLE_RADIAL") -> Camera:
    return Camera(camera_id, model, W, H, default_params(model, W, H, focal_px))


def _verified_pairs(num_pairs: int, focal_px: float, noise_px: float, seed: int = 0):
    """Pairs (2k+1, 2k+2) of one camera, verified with unknown intrinsics (F), and their keypoints."""
    two_view, features = {}, {}
    for k in range(num_pairs):
        corr = two_view_correspondences(
            300, focal_px=focal_px, noise_px=noise_px, outlier_ratio=0.2, rng=seed + k
        )
        i, j = 2 * k + 1, 2 * k + 2
        m = np.stack([np.arange(300), np.arange(300)], axis=1)
        two_view[(i, j)] = verify_pair(corr.x1_px, corr.x2_px, m, None, None, image_ids=(i, j), rng=k)
        features[i], features[j] = (
            Features(corr.x1_px, np.zeros((300, 8), np.float32)),
            Features(corr.x2_px, np.zeros((300, 8), np.float32)),
        )
    return two_view, features


def test_bougnoux_exact_for_two_different_focal_lengths():
    corr = two_view_correspondences(50, rng=3)
    K1 = intrinsics_matrix(700.0, W, H)
    K2 = intrinsics_matrix(1150.0, W, H)
    K2[:2, 2] += (12.0, -7.0)  # a principal point off the centre, given to the formula
    F = fundamental_from_essential(corr.essential, K1, K2)
    f1, f2 = bougnoux_focal_lengths(F, K1[:2, 2], K2[:2, 2])
    assert f1 == pytest.approx(700.0, rel=1e-9) and f2 == pytest.approx(1150.0, rel=1e-9)
    # batched, and the scale and sign of F do not matter
    f1s, f2s = bougnoux_focal_lengths(np.stack([F, -3.0 * F]), K1[:2, 2], K2[:2, 2])
    np.testing.assert_allclose(f1s, 700.0, rtol=1e-9)
    np.testing.assert_allclose(f2s, 1150.0, rtol=1e-9)


def test_singular_gap_is_zero_only_at_the_true_focal():
    corr = two_view_correspondences(50, focal_px=900.0, rng=4)
    F = corr.fundamental
    gaps = [
        float(essential_singular_gap(F, intrinsics_matrix(f, W, H), intrinsics_matrix(f, W, H)))
        for f in (900.0, 600.0, 1400.0)
    ]
    assert gaps[0] < 1e-12 and gaps[1] > 0.01 and gaps[2] > 0.01


@pytest.mark.parametrize("prior_px", [225.0, 3600.0])  # 4x below and above the true 900 px
def test_shared_focal_recovered_from_a_prior_4x_off(prior_px):
    two_view, _ = _verified_pairs(6, 900.0, noise_px=0.0)
    cameras = {1: _camera(1, prior_px)}
    result = calibrate_view_graph(cameras, {i: 1 for i in range(1, 13)}, two_view)
    assert result.success, result.reason
    assert result.focal_px_by_camera[1] == pytest.approx(900.0, rel=0.01)
    assert result.cameras[1].params[0] == pytest.approx(result.focal_px_by_camera[1])
    np.testing.assert_array_equal(result.cameras[1].params[1:], cameras[1].params[1:])  # pp, k kept
    assert result.num_agreeing_by_camera[1] == 6 and not result.pairs_dropped
    assert result.report["cameras"]["1"]["prior_px"] == prior_px


def test_shared_focal_with_noise_within_a_few_percent():
    two_view, _ = _verified_pairs(8, 1100.0, noise_px=0.7, seed=10)
    result = calibrate_view_graph({1: _camera(1, 400.0)}, {i: 1 for i in range(1, 17)}, two_view)
    assert result.success
    assert result.focal_px_by_camera[1] == pytest.approx(1100.0, rel=0.04)
    assert result.spread_by_camera[1] < 0.1


def _exact_pair(i, j, K_i, K_j, seed):
    corr = two_view_correspondences(20, rng=seed)
    F = fundamental_from_essential(corr.essential, K_i, K_j)
    return TwoViewGeometry(i, j, "uncalibrated", np.zeros((100, 2), np.int64), F=F)


def test_per_camera_focal_lengths_jointly_and_a_wrong_pair_dropped():
    truth = {1: 700.0, 2: 1100.0, 3: 900.0}
    camera_of_image = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}
    K = {i: intrinsics_matrix(truth[c], W, H) for i, c in camera_of_image.items()}
    pairs = [(i, j) for i in range(1, 7) for j in range(i + 1, 7)]
    two_view = {p: _exact_pair(*p, K[p[0]], K[p[1]], seed=n) for n, p in enumerate(pairs)}
    # one pair with a fundamental matrix of another scene (a wrong F that slipped through verification)
    wrong = _exact_pair(1, 5, intrinsics_matrix(300.0, W, H), intrinsics_matrix(2500.0, W, H), seed=99)
    two_view[(1, 5)] = wrong
    cameras = {1: _camera(1, 1900.0), 2: _camera(2, 400.0), 3: _camera(3, 3000.0, model="PINHOLE")}
    result = calibrate_view_graph(cameras, camera_of_image, two_view)
    assert result.success
    for c, f in truth.items():
        assert result.focal_px_by_camera[c] == pytest.approx(f, rel=0.01), c
        assert result.trusted_by_camera[c]
    assert result.cameras[3].model == "PINHOLE" and result.cameras[3].focal_xy == pytest.approx(
        (900.0, 900.0), rel=0.01
    )
    assert list(result.pairs_dropped) == [(1, 5)]


def test_too_few_pairs_keep_the_prior():
    two_view, _ = _verified_pairs(2, 900.0, noise_px=0.0)
    cameras = {1: _camera(1, 300.0)}
    result = calibrate_view_graph(cameras, {i: 1 for i in range(1, 5)}, two_view)  # needs 3 agreeing pairs
    assert not result.success and "2 of 2 pairs agree" in result.reason
    assert result.cameras[1] is cameras[1] and result.focal_px_by_camera[1] == 300.0
    assert result.estimate_px_by_camera[1] == pytest.approx(900.0, rel=0.01)  # estimated, not trusted
    relaxed = calibrate_view_graph(
        cameras, {i: 1 for i in range(1, 5)}, two_view, ViewGraphCalibrationOptions(min_agreeing_pairs=2)
    )
    assert relaxed.success and relaxed.focal_px_by_camera[1] == pytest.approx(900.0, rel=0.01)


def test_no_usable_pair_is_a_failure_value_and_bad_input_raises():
    cameras = {1: _camera(1, 500.0)}
    result = calibrate_view_graph(
        cameras, {1: 1, 2: 1}, {(1, 2): TwoViewGeometry(1, 2, "rejected", success=False)}
    )
    assert not result.success and "no verified pair" in result.reason
    with pytest.raises(InputError, match="image 3"):
        calibrate_view_graph(cameras, {1: 1, 2: 1}, {(1, 3): TwoViewGeometry(1, 3, "uncalibrated")})
    with pytest.raises(InputError, match="grid_size"):
        ViewGraphCalibrationOptions(grid_size=1)


def test_reestimated_essentials_give_the_true_poses():
    two_view, features = _verified_pairs(4, 900.0, noise_px=0.3, seed=20)
    camera_of_image = {i: 1 for i in range(1, 9)}
    wrong = {1: _camera(1, 250.0)}
    result = calibrate_view_graph(wrong, camera_of_image, two_view)
    redone = reestimate_essentials(
        two_view,
        features,
        result.cameras,
        camera_of_image,
        EssentialReestimationOptions(two_view=TwoViewOptions()),
        rng=0,
    )
    assert len(redone.two_view_geometries) == 4 and not redone.pairs_dropped
    assert redone.report["num_reverified"] == 0  # E = K^T F K held on every pair: no RANSAC needed
    for k, ((i, j), g) in enumerate(sorted(redone.two_view_geometries.items())):
        truth = two_view_correspondences(300, focal_px=900.0, noise_px=0.3, outlier_ratio=0.2, rng=20 + k)
        assert g.config == "calibrated"
        assert rotation_angle_deg(g.cam2_from_cam1.rotation, truth.cam2_from_cam1.rotation) < 0.5
        assert g.num_inliers >= 0.9 * two_view[(i, j)].num_inliers


@pytest.mark.parametrize(("exif_px", "kept"), [(950.0, True), (1800.0, False)])
def test_stage_keeps_an_agreeing_exif_focal_and_replaces_a_wrong_one(exif_px, kept):
    two_view, features = _verified_pairs(4, 900.0, noise_px=0.3, seed=30)
    cameras = {1: _camera(1, exif_px)}
    options = SelfCalibrationOptions(view_graph=ViewGraphCalibrationOptions(min_agreeing_pairs=2))
    result = self_calibrate(
        cameras, {i: 1 for i in range(1, 9)}, two_view, features, options, exif_camera_ids={1}, rng=0
    )
    expected = exif_px if kept else 900.0
    assert result.cameras[1].focal_xy[0] == pytest.approx(expected, rel=0.02)
    assert result.report["cameras_changed"] == ([] if kept else [1])
    assert len(result.two_view_geometries) == 4


def test_disabled_stage_keeps_the_prior_but_reports_the_estimate():
    two_view, features = _verified_pairs(4, 900.0, noise_px=0.3, seed=30)
    cameras = {1: _camera(1, 300.0)}
    result = self_calibrate(
        cameras, {i: 1 for i in range(1, 9)}, two_view, features, SelfCalibrationOptions(enabled=False)
    )
    assert result.cameras[1] is cameras[1] and result.two_view_geometries == two_view
    assert trusted_focal_estimates(result.report)[1] == pytest.approx(900.0, rel=0.03)
