"""Tests for geometry.factorization: exact synthetic affine / projective recovery, missing data, errors."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry import factorization as fz
from geomvision.geometry.rigid import rotation_angle_deg, rotvec_to_matrix
from geomvision.io.tracks import load_dinosaur_tracks

NECKER = np.diag([1.0, 1.0, -1.0])


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    """One BLAS thread: the solvers make thousands of tiny solves, which threads slow down 20x on a loaded
    machine (0.4 s vs 10 s for one missing-data run on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with the scientific stack
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _rotations(rng, num_frames, spread=0.5):
    return np.stack([rotvec_to_matrix(rng.standard_normal(3) * spread) for _ in range(num_frames)])


def _affine_scene(rng, num_frames=12, num_points=60, *, scales=None):
    """Weak-perspective measurements ``s_f R_f[:2] X + t_f`` in pixel-like units."""
    points = rng.standard_normal((num_points, 3)) * 50.0
    rotations = _rotations(rng, num_frames)
    s = np.ones(num_frames) if scales is None else scales
    translations = rng.uniform(100, 500, (num_frames, 2))
    W = np.concatenate(
        [s[f] * rotations[f, :2] @ points.T + translations[f][:, None] for f in range(num_frames)]
    )
    return W, rotations, points


def _band_mask(rng, num_frames, num_points, min_len, max_len):
    """Tracks over consecutive frames (wrapping), like a turntable sequence."""
    start = rng.integers(0, num_frames, num_points)
    length = rng.integers(min_len, max_len + 1, num_points)
    frames = (start[None, :] + np.arange(num_frames)[:, None] - 0) % num_frames
    offset = (np.arange(num_frames)[:, None] - start[None, :]) % num_frames
    del frames
    return offset < length[None, :]


def _hide(W, mask):
    W = W.copy()
    W[np.repeat(~mask, 2, axis=0)] = np.nan
    return W


def _random_partial_problem(rng, *, frames, points, rank, noise, keep, camera_cols, affine=True):
    """A noisy rank-``rank`` measurement matrix with ~``keep`` of its entries observed (the first three
    frames complete), its ``_Problem`` and random (2 frames, camera_cols) cameras."""
    W = rng.standard_normal((2 * frames, rank)) @ rng.standard_normal((rank, points))
    W += noise * rng.standard_normal((2 * frames, points))
    mask = rng.random((frames, points)) < keep
    mask[:3] = True
    W, mask = fz._check_measurements(_hide(W, mask), allow_missing=True)
    return fz._Problem(W, mask, affine=affine), rng.standard_normal((2 * frames, camera_cols))


def _necker_rotation_error_deg(estimated, truth):
    """Max rotation error relative to frame 0, allowing the orthographic depth reversal."""
    rel = truth @ truth[0].T
    direct = rotation_angle_deg(estimated, rel).max()
    reversed_ = rotation_angle_deg(estimated, NECKER @ rel @ NECKER).max()
    return min(direct, reversed_)


# ------------------------------------------------------------------------------------------------
# complete data


def test_measurement_matrix_scatters_and_marks_missing():
    W = fz.measurement_matrix([0, 1, 1], [2, 0, 2], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert W.shape == (4, 3)
    np.testing.assert_array_equal(W[:, 2], [1.0, 2.0, 5.0, 6.0])
    np.testing.assert_array_equal(W[2:, 0], [3.0, 4.0])
    assert np.isnan(W[:2, 0]).all() and np.isnan(W[:, 1]).all()


@pytest.mark.parametrize("camera", ["affine", "orthographic"])
def test_tomasi_kanade_exact_on_orthographic_scene(rng, camera):
    W, rotations, points = _affine_scene(rng)
    result = fz.factorize_affine(W, camera=camera)
    assert result.success, result.reason
    assert result.rms < 1e-9
    np.testing.assert_allclose(result.reproject(), W, atol=1e-9)
    if camera == "orthographic":
        assert _necker_rotation_error_deg(result.rotations, rotations) < 1e-8
        np.testing.assert_allclose(result.scales, 1.0, atol=1e-10)
        # Metric shape: pairwise distances match the truth (up to the reflection, which keeps distances).
        d_true = np.linalg.norm(points[:, None] - points[None], axis=-1)
        d_est = np.linalg.norm(result.points[:, None] - result.points[None], axis=-1)
        np.testing.assert_allclose(d_est, d_true, atol=1e-8)
    else:
        assert result.rotations is None


def test_weak_perspective_recovers_relative_scales_and_rotations(rng):
    scales = rng.uniform(0.5, 1.5, 10)
    W, rotations, _ = _affine_scene(rng, num_frames=10, scales=scales)
    result = fz.factorize_affine(W, camera="weak_perspective")
    assert result.success and result.rms < 1e-9
    np.testing.assert_allclose(result.scales / result.scales[0], scales / scales[0], rtol=1e-9)
    assert _necker_rotation_error_deg(result.rotations, rotations) < 1e-8
    for R in result.rotations:
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)


def test_metric_upgrade_fails_cleanly_on_non_metric_affine_cameras(rng):
    # Random affine cameras with no orthonormal interpretation: L = Q Q^T is indefinite.
    M = rng.standard_normal((6, 2, 3))
    M[:, 1] *= 10.0 ** np.arange(6)[:, None]
    X = rng.standard_normal((20, 3))
    W = np.concatenate([m @ X.T for m in M])
    result = fz.factorize_affine(W, camera="orthographic")
    assert result.rms < 1e-6 * np.abs(W).max()
    assert not result.success and "positive definite" in result.reason


# ------------------------------------------------------------------------------------------------
# missing data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_varpro_recovers_exact_affine_structure_with_65_percent_missing(seed):
    rng = np.random.default_rng(seed)
    W, _, _ = _affine_scene(rng, num_frames=20, num_points=100)
    mask = _band_mask(rng, 20, 100, 4, 10)
    assert 0.5 < 1 - mask.mean() < 0.75
    Wm = _hide(W, mask)
    result = fz.factorize_affine_missing(Wm, fz.MissingDataOptions(method="varpro"), rng=seed + 10)
    assert result.converged
    assert result.rms < 1e-9
    # The completed matrix matches the hidden entries as well (the rank-4 model is identifiable here).
    np.testing.assert_allclose(result.reproject(), W, atol=1e-6)


def test_varpro_is_insensitive_to_the_start_while_als_stalls(rng):
    W, _, _ = _affine_scene(rng, num_frames=20, num_points=100)
    Wm = _hide(W, _band_mask(rng, 20, 100, 4, 10))
    options = fz.MissingDataOptions(max_iterations=200)
    varpro = [fz.factorize_affine_missing(Wm, options, rng=s).rms for s in range(3)]
    als = [
        fz.factorize_affine_missing(Wm, fz.MissingDataOptions(method="als", max_iterations=200), rng=s).rms
        for s in range(3)
    ]
    assert max(varpro) < 1e-9
    assert min(als) >= 0.0 and np.isfinite(als).all()
    assert sum(r < 1e-9 for r in als) <= sum(r < 1e-9 for r in varpro)


def test_fast_normal_equations_match_the_explicit_jacobian(rng):
    problem, cameras = _random_partial_problem(
        rng, frames=6, points=30, rank=3, noise=0.1, keep=0.7, camera_cols=4
    )
    _, X, H, R = problem.cost(cameras)
    fast = problem.varpro_normal_equations(cameras, X, H, R)
    explicit = problem.varpro_normal_equations_explicit(cameras, X, H, R)
    np.testing.assert_allclose(fast[0], explicit[0], atol=1e-9 * np.abs(explicit[0]).max())
    np.testing.assert_allclose(fast[1], explicit[1], atol=1e-9 * np.abs(explicit[1]).max())
    # The Kaufman gradient is the true gradient of the reduced cost: check against finite differences.
    eps = 1e-6
    numeric = np.zeros(cameras.size)
    for k in range(cameras.size):
        d = np.zeros(cameras.size)
        d[k] = eps
        numeric[k] = (
            problem.cost(cameras + d.reshape(12, 4))[0] - problem.cost(cameras - d.reshape(12, 4))[0]
        ) / (2 * eps)
    np.testing.assert_allclose(fast[1], numeric, rtol=1e-5, atol=1e-6 * np.abs(numeric).max())


def test_missing_data_with_noise_reaches_noise_level_and_metric_rotations(rng):
    W, rotations, _ = _affine_scene(rng, num_frames=20, num_points=150)
    Wm = _hide(W + rng.normal(0, 0.5, W.shape), _band_mask(rng, 20, 150, 5, 12))
    result = fz.factorize_affine_missing(Wm, fz.MissingDataOptions(camera="orthographic"), rng=3)
    assert result.success, result.reason
    # 0.5 px per coordinate noise: the fit error is below the noise (parameters absorb some of it).
    assert 0.3 < result.rms < 0.5 * np.sqrt(2)
    assert _necker_rotation_error_deg(result.rotations, rotations) < 1.0


def test_als_converges_on_complete_data(rng):
    W, _, _ = _affine_scene(rng, num_frames=8, num_points=40)
    result = fz.factorize_affine_missing(W, fz.MissingDataOptions(method="als", max_iterations=500), rng=0)
    assert result.rms < 1e-8


# ------------------------------------------------------------------------------------------------
# projective


def _perspective_scene(rng, num_frames=8, num_points=60, distance=4.0):
    points = rng.uniform(-1, 1, (num_points, 3))
    rotations = np.stack(
        [
            rotvec_to_matrix(np.array([0.05, 0.12 * f, 0.0]) + rng.standard_normal(3) * 0.05)
            for f in range(num_frames)
        ]
    )
    translations = np.array([0.0, 0.0, distance]) + rng.standard_normal((num_frames, 3)) * 0.2
    in_cam = np.einsum("fij,pj->fpi", rotations, points) + translations[:, None]
    assert in_cam[..., 2].min() > 0.5
    xn = in_cam[..., :2] / in_cam[..., 2:]
    W = np.concatenate([xn[f].T for f in range(num_frames)])
    return W, rotations, translations, points


def test_projective_factorization_exact_and_metric_upgrade_recovers_rotations(rng):
    W, rotations, translations, points = _perspective_scene(rng)
    proj = fz.factorize_projective(W)
    assert proj.converged and proj.rms < 1e-10
    metric = fz.upgrade_projective_to_metric(proj.cameras, proj.points, W)
    assert metric.success, metric.reason
    assert metric.rms < 1e-8
    assert metric.fraction_in_front == 1.0
    assert rotation_angle_deg(metric.rotations, rotations @ rotations[0].T).max() < 1e-6
    # Up to a similarity the centres agree: compare normalised centre-to-centre distances.
    centres_true = -np.einsum("fji,fj->fi", rotations, translations)
    centres_est = -np.einsum("fji,fj->fi", metric.rotations, metric.translations)
    d_true = np.linalg.norm(centres_true[:, None] - centres_true[None], axis=-1)
    d_est = np.linalg.norm(centres_est[:, None] - centres_est[None], axis=-1)
    np.testing.assert_allclose(d_est / d_est[0, 1], d_true / d_true[0, 1], rtol=1e-6)


def test_projective_factorization_in_pixels_with_strong_perspective(rng):
    W, *_ = _perspective_scene(rng, num_frames=6, num_points=40, distance=2.5)
    K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    Wpx = W.copy()
    Wpx[0::2] = K[0, 0] * W[0::2] + K[0, 2]
    Wpx[1::2] = K[1, 1] * W[1::2] + K[1, 2]
    proj = fz.factorize_projective(Wpx)
    assert proj.rms < 1e-8  # pixels
    normalised = np.einsum("ab,fbc->fac", np.linalg.inv(K), proj.cameras)
    metric = fz.upgrade_projective_to_metric(normalised, proj.points, W)
    assert metric.success and metric.rms < 1e-9


def test_projective_with_noise_is_graceful(rng):
    W, rotations, _, _ = _perspective_scene(rng, num_frames=10, num_points=80)
    Wn = W + rng.normal(0, 1e-3, W.shape)  # ~1 px at f = 1000
    proj = fz.factorize_projective(Wn, fz.ProjectiveFactorizationOptions(max_iterations=300))
    assert proj.rms < 2e-3
    metric = fz.upgrade_projective_to_metric(proj.cameras, proj.points, Wn)
    assert metric.success
    assert rotation_angle_deg(metric.rotations, rotations @ rotations[0].T).max() < 2.0


# ------------------------------------------------------------------------------------------------
# input errors


def test_input_errors_name_the_problem(rng):
    W, _, _ = _affine_scene(rng, num_frames=4, num_points=10)
    with pytest.raises(InputError, match="frames"):
        fz.factorize_affine(W[:4], camera="orthographic")  # 2 frames, metric needs 3
    with pytest.raises(InputError, match="at least 4 points"):
        fz.factorize_affine(W[:, :3])
    bad = W.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="only one of x/y"):
        fz.factorize_affine_missing(bad)
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="missing observations"):
        fz.factorize_affine(bad)
    sparse = _hide(W, np.eye(4, 10, dtype=bool) | np.eye(4, 10, 4, dtype=bool))
    with pytest.raises(InputError, match="observations, need >= 2"):
        fz.factorize_affine_missing(sparse)
    with pytest.raises(InputError, match="shape"):
        fz.factorize_affine(W[:5])
    with pytest.raises(InputError, match="infinite"):
        fz.factorize_projective(np.where(W > 300, np.inf, W))


def test_rank_deficient_input_raises(rng):
    planar_line = np.outer(rng.standard_normal(8), rng.standard_normal(10)) + 5.0  # rank 1 after centring
    with pytest.raises(InputError, match="rank < 3"):
        fz.factorize_affine(planar_line)


def test_too_few_observations_for_the_unknowns(rng):
    W, _, _ = _affine_scene(rng, num_frames=10, num_points=6)
    mask = np.zeros((10, 6), dtype=bool)
    mask[:, :] = np.eye(10, 6, dtype=bool) | np.eye(10, 6, -1, dtype=bool) | np.eye(10, 6, -4, dtype=bool)
    mask[:, 0] |= True
    with pytest.raises(InputError):
        fz.factorize_affine_missing(_hide(W, mask))


def test_full_golub_pereyra_normal_matrix_matches_finite_differences(rng):
    problem, cameras = _random_partial_problem(
        rng, frames=5, points=25, rank=3, noise=0.3, keep=0.7, camera_cols=4
    )

    def residuals(u):
        R = problem.cost(u.reshape(10, 4))[3]
        return R[problem.obs_row, problem.obs_point]

    eps = 1e-6
    J = np.stack(
        [
            (residuals(cameras.ravel() + eps * e) - residuals(cameras.ravel() - eps * e)) / (2 * eps)
            for e in np.eye(40)
        ],
        axis=1,
    )
    _, X, H, R = problem.cost(cameras)
    JtJ, _ = problem.varpro_normal_equations(cameras, X, H, R, full=True)
    np.testing.assert_allclose(JtJ, J.T @ J, atol=1e-7 * np.abs(JtJ).max())
    W_noise_free, _, _ = _affine_scene(rng, num_frames=10, num_points=60)
    Wm = _hide(W_noise_free, _band_mask(rng, 10, 60, 4, 8))
    result = fz.factorize_affine_missing(Wm, fz.MissingDataOptions(jacobian="full"), rng=1)
    assert result.rms < 1e-9


def test_restarts_stop_when_the_best_optimum_repeats(rng):
    W, _, _ = _affine_scene(rng, num_frames=12, num_points=80)
    Wm = _hide(W + rng.normal(0, 0.2, W.shape), _band_mask(rng, 12, 80, 4, 9))
    best, costs = fz.factorize_affine_missing_restarts(Wm, rng=4, max_starts=6)
    assert best.converged
    assert 2 <= len(costs) <= 6
    assert best.cost == pytest.approx(min(costs))
    assert sum(c <= best.cost * (1 + 1e-6) for c in costs) == 2


@pytest.mark.parametrize(
    ("affine", "shape_dims"),
    [
        (False, 5),  # the unconstrained rank-k relaxation (warm start): 5-vector points
        (True, 4),  # the affine relaxation [U | t] with a 4-dimensional shape (5-column cameras)
    ],
)
def test_relaxation_normal_equations_match_the_explicit_jacobian(rng, affine, shape_dims):
    # Both relaxations use the same fast normal-equation assembly as the affine solver.
    problem, cameras = _random_partial_problem(
        rng, frames=6, points=30, rank=4, noise=0.1, keep=0.8, camera_cols=5, affine=affine
    )
    _, X, H, R = problem.cost(cameras)
    assert X.shape == (30, shape_dims)
    fast = problem.varpro_normal_equations(cameras, X, H, R)
    explicit = problem.varpro_normal_equations_explicit(cameras, X, H, R)
    np.testing.assert_allclose(fast[0], explicit[0], atol=1e-9 * np.abs(explicit[0]).max())
    np.testing.assert_allclose(fast[1], explicit[1], atol=1e-9 * np.abs(explicit[1]).max())


def test_affine_from_rank_k_is_exact_for_an_affine_product(rng):
    # An exact affine factorization written in a scrambled rank-5 basis (one spare zero dimension) maps back
    # to affine cameras with zero cost on complete data.
    F, P = 8, 40
    W, _, _ = _affine_scene(rng, num_frames=F, num_points=P)
    Wc = W - W.mean(axis=1, keepdims=True)
    U = rng.standard_normal((2 * F, 3))
    X = np.linalg.lstsq(U, Wc, rcond=None)[0].T
    Wexact = U @ X.T + 5.0  # the 5.0 translation makes the 4th model column necessary
    B = np.concatenate([U, np.full((2 * F, 1), 5.0), rng.standard_normal((2 * F, 1))], axis=1)
    C = np.concatenate([X, np.ones((P, 1)), np.zeros((P, 1))], axis=1)
    G = rng.standard_normal((5, 5))
    cameras = fz._affine_from_rank_k(B @ G, C @ np.linalg.inv(G).T)
    problem = fz._Problem(Wexact, np.ones((F, P), bool))
    cost = problem.cost(cameras)[0]
    assert cost < 1e-18 * np.sum(Wexact**2)


def test_init_cameras_are_in_the_unit_of_the_measurements(rng):
    # Ground-truth cameras in pixels start at the optimum: the solver only lets its damping decay.
    F, P = 10, 50
    points = rng.standard_normal((P, 3)) * 50.0
    motion = rng.standard_normal((F, 2, 3))
    translations = rng.uniform(100, 500, (F, 2))
    W = motion.reshape(2 * F, 3) @ points.T + translations.reshape(2 * F, 1)
    Wm = _hide(W, _band_mask(rng, F, P, 4, 8))
    init = np.concatenate([motion.reshape(2 * F, 3), translations.reshape(2 * F, 1)], axis=1)
    result = fz.factorize_affine_missing(Wm, init_cameras=init)
    assert result.rms < 1e-8
    assert result.iterations < 20  # damping decay only (a random start needs more than 50)


def test_warm_start_rank_below_four_is_rejected(rng):
    W, _, _ = _affine_scene(rng, num_frames=6, num_points=20)
    with pytest.raises(InputError, match="warm_start_rank"):
        fz.factorize_affine_missing(W, fz.MissingDataOptions(warm_start_rank=3), rng=0)


def test_warm_start_leaves_out_tracks_too_short_for_the_relaxation(rng):
    # Two-view tracks (4 numbers) cannot constrain a 5-vector point of the rank-5 relaxation; they are left
    # out of the warm start but kept in the affine problem, which still recovers the exact structure.
    W, _, _ = _affine_scene(rng, num_frames=12, num_points=120)
    mask = _band_mask(rng, 12, 120, 2, 8)
    assert (mask.sum(axis=0) == 2).sum() > 5
    forced = fz.MissingDataOptions(warm_start_min_share=0.0, core_min_views=None)
    result = fz.factorize_affine_missing(_hide(W, mask), forced, rng=2)
    assert result.converged
    assert result.rms < 1e-8
    # Without the core stage and under 90 % long tracks the warm start is skipped: same run as without it.
    no_core = fz.MissingDataOptions(core_min_views=None)
    skipped = fz.factorize_affine_missing(_hide(W, mask), no_core, rng=2)
    direct = fz.factorize_affine_missing(
        _hide(W, mask), fz.MissingDataOptions(warm_start_rank=None, core_min_views=None), rng=2
    )
    assert skipped.iterations == direct.iterations and skipped.cost == direct.cost


def test_load_dinosaur_tracks_reads_the_oxford_file():
    from conftest import shared_dataset

    W, lengths = load_dinosaur_tracks(shared_dataset("oxford_dinosaur") / "pts.txt")
    # README: 4983 tracks over 36 frames, 2..21 views each, 16432 observations, 2300 two-view tracks.
    assert W.shape == (72, 4983)
    assert lengths.sum() == 16432 and lengths.min() == 2 and lengths.max() == 21
    assert int(np.sum(lengths == 2)) == 2300
    np.testing.assert_array_equal(np.sum(~np.isnan(W[0::2]), axis=0), lengths)
    # First line of pts.txt: views 0 and 1 at (405.60, 20.31) and (409.71, 24.43).
    np.testing.assert_allclose(W[0:4, 0], [405.60, 20.31, 409.71, 24.43])


def test_load_dinosaur_tracks_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dinosaur_tracks(tmp_path / "none.txt")
    bad = tmp_path / "pts.txt"
    bad.write_text("0 0 0 2 0 1.0 2.0 1 3.0\n")
    with pytest.raises(InputError, match=":1: malformed"):
        load_dinosaur_tracks(bad)


def test_affine_candidates_keep_the_translation_and_the_leading_shape(rng):
    # An exact affine product written with a 4-dimensional shape (a small spare direction, scrambled basis,
    # points off-centre): candidate 0 keeps the 3 leading directions and fits the data exactly; the other
    # candidates swap one leading direction for the spare one and do not.
    F, P = 8, 40
    W, _, _ = _affine_scene(rng, num_frames=F, num_points=P)
    U = rng.standard_normal((2 * F, 3))
    X = np.linalg.lstsq(U, W - W.mean(axis=1, keepdims=True), rcond=None)[0].T
    Wexact = U @ X.T + 5.0
    U4 = np.concatenate([U, 1e-3 * rng.standard_normal((2 * F, 1))], axis=1)
    X4 = np.concatenate([X, rng.standard_normal((P, 1))], axis=1) + 3.0
    G = rng.standard_normal((4, 4))
    relaxed = np.concatenate([U4 @ G, (5.0 - U4 @ np.full(4, 3.0))[:, None]], axis=1)
    candidates = fz._affine_candidates(relaxed, X4 @ np.linalg.inv(G).T, 3)
    assert len(candidates) == 3 and all(c.shape == (2 * F, 4) for c in candidates)
    problem = fz._Problem(Wexact, np.ones((F, P), bool))
    costs = [problem.cost(fz._retract(c))[0] for c in candidates]
    assert costs[0] < 1e-6 * np.sum((Wexact - 5.0) ** 2)
    assert min(costs[1:]) > 1e-3 * np.sum((Wexact - 5.0) ** 2)
    assert len(fz._affine_candidates(relaxed, X4, 1)) == 1


def test_best_candidate_stops_when_two_candidates_agree(rng):
    F, P = 8, 40
    motion = rng.standard_normal((2 * F, 3))
    t = rng.standard_normal(2 * F)
    points = rng.standard_normal((P, 3))
    W = motion @ points.T + t[:, None] + 0.01 * rng.standard_normal((2 * F, P))
    mask = _band_mask(rng, F, P, 4, 7)
    W, mask = fz._check_measurements(_hide(W, mask), allow_missing=True)
    problem = fz._Problem(W, mask)
    truth = np.concatenate([motion, t[:, None]], axis=1)

    def candidates():
        yield truth + 0.01 * rng.standard_normal(truth.shape)
        yield truth + 0.01 * rng.standard_normal(truth.shape)
        raise AssertionError("a third candidate was solved after two agreed")

    Ut, iterations, converged = fz._best_candidate(problem, candidates(), fz.MissingDataOptions(), 0.0)
    assert converged and iterations > 0
    assert problem.cost(Ut)[0] < 0.5 * np.sum(0.02**2 * np.repeat(mask, 2, axis=0))


def test_rank_continuation_and_its_validation(rng):
    W, _, _ = _affine_scene(rng, num_frames=12, num_points=80)
    Wm = _hide(W, _band_mask(rng, 12, 80, 4, 9))
    result = fz.factorize_affine_missing(Wm, fz.MissingDataOptions(warm_start_rank=(6, 5)), rng=3)
    assert result.converged and result.rms < 1e-8
    unconstrained = fz.MissingDataOptions(warm_start_rank=(6, 5), relaxation="unconstrained")
    assert fz.factorize_affine_missing(Wm, unconstrained, rng=3).rms < 1e-8
    for bad in [(5, 6), (5, 5), (6, 3), ()]:
        with pytest.raises(InputError, match="warm_start_rank"):
            fz.factorize_affine_missing(Wm, fz.MissingDataOptions(warm_start_rank=bad), rng=0)


def test_core_stage_solves_long_tracks_first_and_then_all(rng):
    # Two-view tracks make up a third of the data; the >= 6-view core sees >= 12 points in every frame.
    F, P = 12, 300
    W, _, _ = _affine_scene(rng, num_frames=F, num_points=P)
    mask = _band_mask(rng, F, P, 2, 9)
    mask[:, :100] = _band_mask(rng, F, 100, 2, 2)
    core = fz._core_tracks(mask, 6)
    assert core is not None and 0 < core.sum() < P
    assert fz._core_tracks(mask, None) is None and fz._core_tracks(mask, 2) is None
    result = fz.factorize_affine_missing(_hide(W, mask), rng=1)
    assert result.converged and result.rms < 1e-8
    np.testing.assert_allclose(result.reproject(), W, atol=1e-5)
