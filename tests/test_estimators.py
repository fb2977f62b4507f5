"""Robust E / F / H estimation on synthetic pairs with noise and outliers (exact ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry import epipolar
from geomvision.geometry.epipolar import symmetric_epipolar_distance
from geomvision.geometry.homography import homography_transfer_errors_sq
from geomvision.geometry.rigid import Rigid3d, angle_between_vectors_deg, rotation_angle_deg, rotvec_to_matrix
from geomvision.robust.estimators import (
    estimate_essential,
    estimate_fundamental,
    estimate_homography,
    refine_fundamental_irls,
    refine_relative_pose,
)
from geomvision.robust.ransac import LocalOptimizationOptions, RansacOptions
from geomvision.synthetic import two_view_correspondences

OPTS = RansacOptions(max_error_px=1.5)


def _precision_recall(mask, truth):
    tp = np.count_nonzero(mask & truth)
    return tp / max(np.count_nonzero(mask), 1), tp / np.count_nonzero(truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_essential_noise_and_30pct_outliers(seed):
    d = two_view_correspondences(400, noise_px=0.5, outlier_ratio=0.3, rng=seed)
    res = estimate_essential(d.x1_px, d.x2_px, d.K, d.K, OPTS, rng=seed)
    assert res.success, res.reason
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.95 and recall >= 0.95
    assert rotation_angle_deg(res.cam2_from_cam1.rotation, d.cam2_from_cam1.rotation) < 0.5
    assert angle_between_vectors_deg(res.cam2_from_cam1.translation, d.cam2_from_cam1.translation) < 2.0
    # Inliers are triangulated in front of both cameras; the model is the pose's E.
    assert res.cheirality_mask.sum() >= 0.95 * res.inlier_mask.sum()
    assert not np.any(res.cheirality_mask & ~res.inlier_mask)
    assert np.linalg.svd(res.model, compute_uv=False)[2] < 1e-12


def test_essential_60pct_outliers_and_different_K():
    d = two_view_correspondences(600, noise_px=0.5, outlier_ratio=0.6, rng=5)
    # Image 2 resampled with another focal / principal point: x2' = A x2, K2 = A K.
    A = np.array([[1.2, 0.0, 15.0], [0.0, 1.2, -8.0], [0.0, 0.0, 1.0]])
    x2 = d.x2_px * 1.2 + [15.0, -8.0]
    res = estimate_essential(d.x1_px, x2, d.K, A @ d.K, RansacOptions(max_error_px=2.0), rng=0)
    assert res.success
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.95 and recall >= 0.95
    assert rotation_angle_deg(res.cam2_from_cam1.rotation, d.cam2_from_cam1.rotation) < 0.5
    assert angle_between_vectors_deg(res.cam2_from_cam1.translation, d.cam2_from_cam1.translation) < 2.0


def test_essential_noise_free_exact():
    d = two_view_correspondences(100, rng=4)
    res = estimate_essential(d.x1_px, d.x2_px, d.K, d.K, RansacOptions(max_error_px=1e-3), rng=0)
    assert res.success and res.inlier_mask.all()
    assert rotation_angle_deg(res.cam2_from_cam1.rotation, d.cam2_from_cam1.rotation) < 1e-6
    assert angle_between_vectors_deg(res.cam2_from_cam1.translation, d.cam2_from_cam1.translation) < 1e-6


def test_refine_relative_pose_reduces_error():
    d = two_view_correspondences(300, noise_px=0.5, rng=8)
    true = d.cam2_from_cam1
    start = Rigid3d(
        rotvec_to_matrix(np.radians([1.0, -0.5, 0.7])) @ true.rotation, true.translation + [0.05, 0.0, 0.0]
    )
    refined = refine_relative_pose(start, d.x1_px, d.x2_px, d.K, d.K)
    assert rotation_angle_deg(refined.rotation, true.rotation) < 0.2
    assert angle_between_vectors_deg(refined.translation, true.translation) < 1.0
    assert np.linalg.norm(refined.translation) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_fundamental_noise_and_30pct_outliers(seed):
    d = two_view_correspondences(400, noise_px=0.5, outlier_ratio=0.3, rng=seed)
    res = estimate_fundamental(d.x1_px, d.x2_px, OPTS, rng=seed)
    assert res.success, res.reason
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.95 and recall >= 0.95
    assert np.linalg.matrix_rank(res.model, tol=1e-9) == 2
    # The estimated F explains the true (noise-free) geometry: noise-free points of the true inliers are
    # close to its epipolar lines. Regenerate the same scene without noise (same seed, same draws).
    clean = two_view_correspondences(400, noise_px=0.0, outlier_ratio=0.3, rng=seed)
    dist = symmetric_epipolar_distance(
        res.model, clean.x1_px[clean.inlier_mask], clean.x2_px[clean.inlier_mask]
    )
    assert np.median(dist) < 0.5


def test_homography_planar_scene():
    d = two_view_correspondences(300, noise_px=0.5, outlier_ratio=0.3, planar=True, rng=1)
    res = estimate_homography(d.x1_px, d.x2_px, RansacOptions(max_error_px=2.5), rng=0)
    assert res.success
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.95 and recall >= 0.95
    clean = two_view_correspondences(300, noise_px=0.0, outlier_ratio=0.3, planar=True, rng=1)
    err = homography_transfer_errors_sq(
        res.model, clean.x1_px[clean.inlier_mask], clean.x2_px[clean.inlier_mask]
    )
    assert np.sqrt(np.median(err)) < 0.5
    assert np.mean(res.model[2, :2] @ d.x1_px[res.inlier_mask].T + res.model[2, 2]) > 0


@pytest.mark.parametrize("fn", ["E", "F", "H"])
def test_bad_input_raises(fn):
    d = two_view_correspondences(30, rng=0)
    call = {
        "E": lambda a, b: estimate_essential(a, b, d.K, d.K),
        "F": lambda a, b: estimate_fundamental(a, b),
        "H": lambda a, b: estimate_homography(a, b),
    }[fn]
    with pytest.raises(InputError, match="matching"):
        call(d.x1_px, d.x2_px[:-1])
    with pytest.raises(InputError, match="matching"):
        call(d.x1_px[:, :1], d.x2_px[:, :1])
    with pytest.raises(InputError, match="at least"):
        call(d.x1_px[:3], d.x2_px[:3])
    bad = d.x1_px.copy()
    bad[4, 0] = np.nan
    with pytest.raises(InputError, match="row 4"):
        call(bad, d.x2_px)


def test_bad_K_raises():
    d = two_view_correspondences(30, rng=0)
    with pytest.raises(InputError, match="K2"):
        estimate_essential(d.x1_px, d.x2_px, d.K, np.eye(4))
    with pytest.raises(InputError, match="K1"):
        estimate_essential(d.x1_px, d.x2_px, np.zeros((3, 3)), d.K)


def test_degenerate_input_is_a_value():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 500, 50)
    line = np.c_[t, 0.3 * t + 20]
    other = rng.uniform(0, 500, (50, 2))
    d = two_view_correspondences(30, rng=0)
    for res in (
        estimate_essential(line, other, d.K, d.K),
        estimate_fundamental(other, line),
        estimate_homography(line, other),
    ):
        assert not res.success and "collinear" in res.reason
        assert res.inlier_mask.shape == (50,) and not res.inlier_mask.any()
    same = np.tile([[100.0, 200.0]], (20, 1))
    res = estimate_fundamental(same, other[:20])
    assert not res.success and "coincide" in res.reason


def test_unrelated_points_fail_with_inlier_count():
    rng = np.random.default_rng(1)
    x1 = rng.uniform(0, 640, (60, 2))
    x2 = rng.uniform(0, 480, (60, 2))
    d = two_view_correspondences(10, rng=0)
    opts = RansacOptions(max_error_px=0.5, min_num_inliers=30, max_iterations=500)
    for res in (
        estimate_essential(x1, x2, d.K, d.K, opts, rng=0),
        estimate_fundamental(x1, x2, opts, rng=0),
        estimate_homography(x1, x2, opts, rng=0),
    ):
        assert not res.success
        assert res.reason.endswith("< 30")


def test_fundamental_irls_polish_improves_epipolar_fit():
    d = two_view_correspondences(300, noise_px=0.5, outlier_ratio=0.2, rng=11)
    clean = two_view_correspondences(300, noise_px=0.0, outlier_ratio=0.2, rng=11)
    truth = clean.inlier_mask

    def true_error(F):
        return np.mean(symmetric_epipolar_distance(F, clean.x1_px[truth], clean.x2_px[truth]))

    raw = estimate_fundamental(d.x1_px, d.x2_px, OPTS, refine=False, rng=0)
    polished = estimate_fundamental(d.x1_px, d.x2_px, OPTS, refine=True, rng=0)
    assert raw.success and polished.success
    assert true_error(polished.model) <= true_error(raw.model) + 1e-9
    assert np.linalg.matrix_rank(polished.model, tol=1e-9) == 2
    # The polish keeps an exact model exact.
    F_true = clean.fundamental / np.linalg.norm(clean.fundamental)
    F = refine_fundamental_irls(F_true, clean.x1_px[truth], clean.x2_px[truth], 1.0)
    assert min(np.linalg.norm(F - F_true), np.linalg.norm(F + F_true)) < 1e-8


def test_pure_rotation_is_rejected_by_cheirality():
    d = two_view_correspondences(200, noise_px=0.5, pure_rotation=True, rng=3)
    res = estimate_essential(d.x1_px, d.x2_px, d.K, d.K, OPTS, rng=0)
    assert not res.success
    assert "pure rotation" in res.reason
    assert res.inlier_mask.sum() > 150  # every match fits some E: the failure comes from cheirality


def test_oriented_epipolar_constraint():
    """The true F satisfies the oriented constraint on true correspondences; mirroring one point of a
    sample through the epipole of image 2 (a match "behind" the camera) is rejected."""
    from geomvision.geometry.epipolar import fundamental_from_essential
    from geomvision.geometry.rigid import skew
    from geomvision.robust.estimators import _oriented_consistent

    d = two_view_correspondences(50, noise_px=0.0, rng=5)
    pose = d.cam2_from_cam1
    F = fundamental_from_essential(skew(pose.translation) @ pose.rotation, d.K, d.K)
    x1, x2 = d.x1_px[:7][None], d.x2_px[:7][None]
    assert _oriented_consistent(F[None], x1, x2).all()
    assert _oriented_consistent(-F[None], x1, x2).all()  # F is defined up to sign
    # x2 -> 2 e2 - x2 keeps x2 on its epipolar line but flips the side of the epipole.
    e2 = np.linalg.svd(F.T)[2][-1]
    e2 = e2[:2] / e2[2]
    flipped = x2.copy()
    flipped[0, 3] = 2 * e2 - x2[0, 3]
    assert not _oriented_consistent(F[None], x1, flipped).any()


def test_fundamental_60pct_outliers():
    """Hard case of the benchmark: 60 % outliers; the oriented pre-check and the bail-out only drop
    hypotheses, the answer is still exact to the noise level."""
    d = two_view_correspondences(500, noise_px=0.5, outlier_ratio=0.6, rng=4)
    res = estimate_fundamental(d.x1_px, d.x2_px, RansacOptions(max_error_px=1.0), rng=0)
    assert res.success, res.reason
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.95 and recall >= 0.9
    clean = two_view_correspondences(500, noise_px=0.0, outlier_ratio=0.6, rng=4)
    dist = symmetric_epipolar_distance(
        res.model, clean.x1_px[clean.inlier_mask], clean.x2_px[clean.inlier_mask]
    )
    assert np.median(dist) < 0.5


def test_essential_fit_batch_oriented_filter_keeps_true_model():
    """Five-point solutions failing the oriented epipolar constraint on their own sample are dropped, never
    the true one of an all-inlier sample (its points are in front of both cameras)."""
    from geomvision.robust.estimators import EssentialEstimator

    d = two_view_correspondences(200, rng=7)
    est = EssentialEstimator(d.x1_px, d.x2_px, d.K, d.K)
    samples = np.random.default_rng(0).integers(0, 200, (300, 5))
    samples = samples[np.all(np.sort(samples, axis=1)[:, 1:] != np.sort(samples, axis=1)[:, :-1], axis=1)]
    kept = est.fit_batch(samples)
    E_all, _ = epipolar.essential_5point_hypotheses(est.xn1[samples], est.xn2[samples])
    assert 0 < len(kept) < len(E_all)  # some solutions of every kind of sample are impossible
    E_true = epipolar.essential_from_pose(d.cam2_from_cam1)
    E_true /= np.linalg.norm(E_true)
    err = np.minimum(np.linalg.norm(kept - E_true, axis=(1, 2)), np.linalg.norm(kept + E_true, axis=(1, 2)))
    assert np.count_nonzero(err < 1e-6) == len(samples)  # one true solution kept per (noise-free) sample


def test_fundamental_easy_pair_takes_the_eight_point_path():
    """At 10 % outliers the 24 eight-point samples suffice (no seven-point RANSAC; their best raw
    hypothesis alone falls short of the confidence here, the polish's first fit makes up for it); the
    polished F is rank 2, unit norm and exact to the noise. Without polish (plain seven-point RANSAC,
    no local optimisation) F is rank 2 and unit norm too."""
    from geomvision.robust import estimators

    d = two_view_correspondences(400, noise_px=0.5, outlier_ratio=0.1, rng=21)
    res = estimate_fundamental(d.x1_px, d.x2_px, RansacOptions(max_error_px=1.0), rng=0)
    assert res.success and res.num_iterations == estimators._QUICK_SAMPLES
    assert np.linalg.matrix_rank(res.model, tol=1e-9) == 2
    assert np.linalg.norm(res.model) == pytest.approx(1.0)
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.97 and recall >= 0.95
    clean = two_view_correspondences(400, noise_px=0.0, outlier_ratio=0.1, rng=21)
    truth = clean.inlier_mask
    dist = symmetric_epipolar_distance(res.model, clean.x1_px[truth], clean.x2_px[truth])
    assert np.median(dist) < 0.3
    bare = RansacOptions(max_error_px=1.0, lo=LocalOptimizationOptions(enabled=False), final_refit=False)
    raw = estimate_fundamental(d.x1_px, d.x2_px, bare, refine=False, rng=0)
    assert raw.success and np.linalg.matrix_rank(raw.model, tol=1e-9) == 2
    assert np.linalg.norm(raw.model) == pytest.approx(1.0)


def test_fundamental_hard_pair_falls_back_to_seven_point():
    """At 60 % outliers eight-point samples cannot reach the confidence: seven-point RANSAC takes over."""
    from geomvision.robust import estimators

    d = two_view_correspondences(500, noise_px=0.5, outlier_ratio=0.6, rng=22)
    res = estimate_fundamental(d.x1_px, d.x2_px, RansacOptions(max_error_px=1.0), rng=0)
    assert res.success and res.num_iterations > estimators._QUICK_SAMPLES
    precision, recall = _precision_recall(res.inlier_mask, d.inlier_mask)
    assert precision >= 0.95 and recall >= 0.9


def test_fundamental_estimator_scores_normalised_models_in_pixels():
    """The estimator's models live in Hartley-normalised coordinates; their Sampson distances are the
    pixel Sampson distances of the de-normalised F (to ~1e-9 relative), for a single model and a batch,
    and to_pixels / to_normalized invert each other."""
    from geomvision.robust.estimators import FundamentalEstimator

    d = two_view_correspondences(300, noise_px=1.0, outlier_ratio=0.2, rng=31)
    K_inv = np.linalg.inv(d.K)
    F_px = K_inv.T @ epipolar.essential_from_pose(d.cam2_from_cam1) @ K_inv
    F_px /= np.linalg.norm(F_px)
    est = FundamentalEstimator(d.x1_px, d.x2_px)
    Fn = est.to_normalized(F_px)
    np.testing.assert_allclose(est.to_pixels(Fn), F_px, atol=1e-12)
    expected = epipolar.sampson_distance_sq(F_px, d.x1_px, d.x2_px)
    r, den = est.sampson(Fn)
    np.testing.assert_allclose(r, expected, rtol=1e-9)
    other = est.to_normalized(F_px + 1e-3 * np.arange(9).reshape(3, 3))
    batch = est.residuals_sq_batch(np.stack([Fn, other]))
    np.testing.assert_allclose(batch[0], expected, rtol=1e-9)
    np.testing.assert_allclose(batch[1], est.residuals_sq(other), rtol=1e-12)
    assert np.all(den > 0)
