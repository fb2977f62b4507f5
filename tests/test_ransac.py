"""Generic RANSAC: exact answers on a line-fitting estimator, adaptive stopping, failures as values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.robust.ransac import (
    BailoutOptions,
    LocalOptimizationOptions,
    RansacOptions,
    msac_scores,
    ransac,
    required_iterations,
)


class LineEstimator:
    """2D line ``a x + b y + c = 0`` (unit normal); residual = squared point-line distance.

    Deliberately implements only the required protocol plus ``refit`` (no batch methods), so the
    generic per-sample path of ``ransac`` is exercised.
    """

    sample_size = 2

    def __init__(self, pts: np.ndarray):
        self.pts = pts
        self.fit_calls = 0

    def fit(self, idx):
        self.fit_calls += 1
        p, q = self.pts[idx]
        d = q - p
        if np.linalg.norm(d) < 1e-12:
            return []
        n = np.array([-d[1], d[0]]) / np.linalg.norm(d)
        return [np.array([n[0], n[1], -n @ p])]

    def residuals_sq(self, model):
        return (self.pts @ model[:2] + model[2]) ** 2

    def refit(self, idx):
        pts = self.pts[idx]
        c = pts.mean(axis=0)
        _, _, Vt = np.linalg.svd(pts - c)
        n = Vt[1]
        return [np.array([n[0], n[1], -n @ c])]


class BatchLineEstimator(LineEstimator):
    """Same model with the optional batched interface."""

    def fit_batch(self, samples):
        p, q = self.pts[samples[:, 0]], self.pts[samples[:, 1]]
        d = q - p
        norm = np.linalg.norm(d, axis=1)
        ok = norm > 1e-12
        n = np.stack([-d[ok, 1], d[ok, 0]], axis=1) / norm[ok, None]
        return np.concatenate([n, -np.sum(n * p[ok], axis=1, keepdims=True)], axis=1)

    def residuals_sq_batch(self, models, index=None):
        pts = self.pts if index is None else self.pts[index]
        return (models[:, :2] @ pts.T + models[:, 2:]) ** 2


def line_data(rng, n=400, outlier_ratio=0.5, noise=0.01):
    """Points on y = 0.5 x + 1 (x in [-10, 10]) with Gaussian noise, plus uniform outliers."""
    x = rng.uniform(-10, 10, n)
    pts = np.stack([x, 0.5 * x + 1.0], axis=1)
    normal = np.array([-0.5, 1.0]) / np.hypot(0.5, 1.0)
    pts += rng.normal(0, noise, (n, 1)) * normal
    out = rng.random(n) < outlier_ratio
    pts[out] = rng.uniform(-10, 10, (out.sum(), 2))
    # Outliers that happen to lie near the line are inliers by definition.
    dist = np.abs((pts - [0.0, 1.0]) @ normal)
    return pts, ~out | (dist < 0.05)


def _line_error(model):
    a, b, c = model / np.sign(model[1])
    return abs(-a / b - 0.5), abs(-c / b - 1.0)


@pytest.mark.parametrize("cls", [LineEstimator, BatchLineEstimator])
def test_line_ransac_recovers_line_and_inliers(cls, rng):
    pts, truth = line_data(rng)
    est = cls(pts)
    res = ransac(est, len(pts), RansacOptions(max_error_px=0.05, min_num_inliers=10), rng=1)
    assert res.success and res.reason == ""
    slope_err, icpt_err = _line_error(res.model)
    assert slope_err < 2e-3 and icpt_err < 5e-3
    precision = (res.inlier_mask & truth).sum() / res.inlier_mask.sum()
    recall = (res.inlier_mask & truth).sum() / truth.sum()
    assert precision >= 0.97 and recall >= 0.97
    assert res.num_inliers == res.inlier_mask.sum()
    assert res.score == pytest.approx(msac_scores(est.residuals_sq(res.model), 0.05**2))
    # The residuals handed to callers are those of the returned model.
    np.testing.assert_allclose(res.residuals_sq, est.residuals_sq(res.model), rtol=1e-12, atol=1e-15)


def test_noise_free_exact_and_adaptive_stop(rng):
    x = rng.uniform(-10, 10, 100)
    pts = np.stack([x, 0.5 * x + 1.0], axis=1)
    res = ransac(
        BatchLineEstimator(pts), 100, RansacOptions(max_error_px=1e-6, min_iterations=0, batch_size=4)
    )
    assert res.success and res.inlier_mask.all()
    assert max(_line_error(res.model)) < 1e-10
    # All inliers: one batch of samples suffices (required_iterations(1.0, ...) == 0).
    assert res.num_iterations == 4


def test_required_iterations_formula():
    # H&Z table 4.3: s = 2, 50 % outliers, p = 0.99 -> 17 samples.
    assert math.ceil(required_iterations(0.5, 2, 0.99)) == 17
    # s = 8, 50 % outliers, p = 0.99 -> 1177 samples.
    assert math.ceil(required_iterations(0.5, 8, 0.99)) == 1177
    assert required_iterations(0.0, 5, 0.99) == math.inf
    assert required_iterations(1.0, 5, 0.99) == 0.0


def test_seed_reproducible(rng):
    pts, _ = line_data(rng)
    opts = RansacOptions(max_error_px=0.05)
    a = ransac(BatchLineEstimator(pts), len(pts), opts, rng=7)
    b = ransac(BatchLineEstimator(pts), len(pts), opts, rng=7)
    np.testing.assert_array_equal(a.model, b.model)
    assert a.num_iterations == b.num_iterations


def test_more_outliers_need_more_samples(rng):
    few, _ = line_data(np.random.default_rng(3), outlier_ratio=0.2)
    many, _ = line_data(np.random.default_rng(3), outlier_ratio=0.8)
    opts = RansacOptions(
        max_error_px=0.05, batch_size=1, min_iterations=1, lo=LocalOptimizationOptions(enabled=False)
    )
    n_few = ransac(LineEstimator(few), len(few), opts, rng=0).num_iterations
    n_many = ransac(LineEstimator(many), len(many), opts, rng=0).num_iterations
    assert n_many > 3 * n_few


def test_max_iterations_respected(rng):
    pts = rng.uniform(-10, 10, (200, 2))  # no line at all
    est = LineEstimator(pts)
    res = ransac(est, 200, RansacOptions(max_error_px=1e-3, max_iterations=50, min_num_inliers=20), rng=0)
    assert res.num_iterations == 50
    assert est.fit_calls == 50
    assert not res.success
    assert res.reason == f"{res.num_inliers} inliers < 20"


def test_no_model_is_a_value_not_an_exception():
    pts = np.zeros((10, 2))  # every sample degenerate: fit returns []
    res = ransac(LineEstimator(pts), 10, RansacOptions(max_iterations=20), rng=0)
    assert not res.success and res.model is None
    assert "no model" in res.reason
    assert res.inlier_mask.shape == (10,) and not res.inlier_mask.any()


def test_bad_input_raises():
    with pytest.raises(InputError, match="at least 2"):
        ransac(LineEstimator(np.zeros((1, 2))), 1)
    with pytest.raises(InputError, match="max_error_px"):
        RansacOptions(max_error_px=0.0)
    with pytest.raises(InputError, match="confidence"):
        RansacOptions(confidence=1.0)
    with pytest.raises(InputError, match="max_iterations"):
        RansacOptions(max_iterations=0)


def test_bailout_keeps_result(rng):
    """The bail-out test only skips hypotheses; with and without it the line is found."""
    pts, truth = line_data(rng, n=2000, outlier_ratio=0.6)
    for subset in (0, 64):
        res = ransac(
            BatchLineEstimator(pts),
            len(pts),
            RansacOptions(max_error_px=0.05, bailout=BailoutOptions(subset=subset)),
            rng=2,
        )
        assert res.success
        assert max(_line_error(res.model)) < 5e-3
        assert (res.inlier_mask & truth).sum() / truth.sum() > 0.97


def test_msac_scores_truncate_and_nan():
    r = np.array([[0.0, 0.5, 4.0, np.nan, np.inf]])
    np.testing.assert_allclose(msac_scores(r, 1.0), [0.0 + 0.5 + 1.0 + 1.0 + 1.0])


def test_large_batches_do_not_overshoot_the_adaptive_target(rng):
    """Batches grow with the samples still needed but never past a quarter of them: a hard problem stops
    within one batch_size of the adaptive sample count of its final inlier ratio."""
    pts, _ = line_data(rng, n=2000, outlier_ratio=0.9)
    opts = RansacOptions(max_error_px=0.05, max_iterations=100_000)
    res = ransac(BatchLineEstimator(pts), len(pts), opts, rng=3)
    assert res.success and max(_line_error(res.model)) < 1e-2
    needed = required_iterations(res.num_inliers / len(pts), 2, opts.confidence)
    assert res.num_iterations <= max(needed, opts.min_iterations) * 1.25 + opts.batch_size


def test_polish_follows_defers_local_optimisation_on_easy_data(rng):
    """With polish_follows, a hypothesis whose own inlier ratio already allows stopping is returned raw
    (the caller polishes it); on hard data local optimisation still runs in the loop, and a deferred one
    runs at the end when the options ask for a final refit."""
    easy, _ = line_data(rng, n=400, outlier_ratio=0.1)
    opts = RansacOptions(max_error_px=0.05, final_refit=False)
    raw = ransac(BatchLineEstimator(easy), len(easy), opts, rng=4, polish_follows=True)
    assert raw.success and not raw.locally_optimized
    assert raw.num_iterations == opts.min_iterations
    # The raw model is one of the minimal-sample hypotheses: exactly through two of the points.
    assert np.count_nonzero(raw.residuals_sq < 1e-20) >= 2
    lo = ransac(BatchLineEstimator(easy), len(easy), opts, rng=4)
    assert lo.locally_optimized and lo.num_inliers >= raw.num_inliers
    refit_opts = RansacOptions(max_error_px=0.05)
    refit = ransac(BatchLineEstimator(easy), len(easy), refit_opts, rng=4, polish_follows=True)
    assert refit.locally_optimized and max(_line_error(refit.model)) < 2e-3
    # On hard data a new best hypothesis's own ratio does not allow stopping: it is refit in the loop.
    hard, _ = line_data(rng, n=2000, outlier_ratio=0.9)
    est = BatchLineEstimator(hard)
    calls = []
    est.refit = lambda idx: calls.append(len(idx)) or BatchLineEstimator.refit(est, idx)
    res = ransac(est, len(hard), opts, rng=5, polish_follows=True)
    assert res.success and len(calls) > 0


def test_bailout_one_pass_and_sequential_agree(rng, monkeypatch):
    """Small batches are scored on the whole bail-out subset in one call, long ones stage by stage: the
    same line either way."""
    import geomvision.robust.ransac as ransac_module

    pts, truth = line_data(rng, n=2000, outlier_ratio=0.7)
    results = []
    for budget in (ransac_module._ONE_PASS_RESIDUALS, 0):
        monkeypatch.setattr(ransac_module, "_ONE_PASS_RESIDUALS", budget)
        res = ransac(BatchLineEstimator(pts), len(pts), RansacOptions(max_error_px=0.05), rng=6)
        assert res.success and max(_line_error(res.model)) < 5e-3
        assert (res.inlier_mask & truth).sum() / truth.sum() > 0.97
        results.append(res.num_inliers)
    assert abs(results[0] - results[1]) <= 0.01 * len(pts)
