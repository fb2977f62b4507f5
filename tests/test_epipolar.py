"""Epipolar solvers against exact synthetic answers (noise-free correspondences)."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry import epipolar as ep
from geomvision.geometry.rigid import (
    Rigid3d,
    angle_between_vectors_deg,
    rotation_angle_deg,
    rotvec_to_matrix,
    skew,
)
from geomvision.synthetic import two_view_correspondences


def _normalized(d):
    K_inv = np.linalg.inv(d.K)
    return d.x1_px @ K_inv[:2, :2].T + K_inv[:2, 2], d.x2_px @ K_inv[:2, :2].T + K_inv[:2, 2]


def _same_up_to_scale(A, B):
    A = A / np.linalg.norm(A)
    B = B / np.linalg.norm(B)
    return min(np.linalg.norm(A - B), np.linalg.norm(A + B))


def _true_F(d):
    K_inv = np.linalg.inv(d.K)
    E = skew(d.cam2_from_cam1.translation) @ d.cam2_from_cam1.rotation
    return K_inv.T @ E @ K_inv


@pytest.fixture
def exact():
    return two_view_correspondences(60, rng=3)


def test_fundamental_8point_exact(exact):
    F = ep.fundamental_8point(exact.x1_px, exact.x2_px)
    assert np.linalg.matrix_rank(F, tol=1e-10) == 2
    assert _same_up_to_scale(F, _true_F(exact)) < 1e-8
    assert np.max(ep.symmetric_epipolar_distance(F, exact.x1_px, exact.x2_px)) < 1e-6
    assert np.max(ep.sampson_distance_sq(F, exact.x1_px, exact.x2_px)) < 1e-12


def test_essential_8point_exact_pose(exact):
    xn1, xn2 = _normalized(exact)
    E = ep.essential_8point(xn1, xn2)
    s = np.linalg.svd(E, compute_uv=False)
    np.testing.assert_allclose(s, [1 / np.sqrt(2), 1 / np.sqrt(2), 0], atol=1e-10)
    pose, mask = ep.recover_pose(E, xn1, xn2)
    assert mask.all()
    true = exact.cam2_from_cam1
    assert rotation_angle_deg(pose.rotation, true.rotation) < 1e-6
    assert angle_between_vectors_deg(pose.translation, true.translation) < 1e-6
    assert np.linalg.norm(pose.translation) == pytest.approx(1.0)


def test_recover_poses_many_pairs_at_once_match_one_by_one():
    """The batched pose recovery gives each pair its true pose, and the masks of recover_pose."""
    pairs = [two_view_correspondences(40 + 7 * k, rng=10 + k) for k in range(4)]
    xn = [_normalized(d) for d in pairs]
    E = np.stack([ep.essential_from_pose(d.cam2_from_cam1) for d in pairs])
    xn1 = np.concatenate([x[0] for x in xn])
    xn2 = np.concatenate([x[1] for x in xn])
    xn2[::5] = -xn2[::5]  # some correspondences behind a camera, so the masks are not all True
    pair = np.repeat(np.arange(len(pairs)), [len(x[0]) for x in xn])
    rotations, translations, mask = ep.recover_poses(E, xn1, xn2, pair)
    for k, d in enumerate(pairs):
        pose, front = ep.recover_pose(E[k], xn1[pair == k], xn2[pair == k])
        np.testing.assert_array_equal(mask[pair == k], front)
        assert 0 < front.sum() < len(front)
        assert rotation_angle_deg(rotations[k], d.cam2_from_cam1.rotation) < 1e-8
        assert angle_between_vectors_deg(translations[k], d.cam2_from_cam1.translation) < 1e-8
        np.testing.assert_allclose(rotations[k], pose.rotation, atol=1e-12)
        np.testing.assert_allclose(translations[k], pose.translation, atol=1e-12)
    # each correspondence scored by its own pair's matrix, as sampson_distance_sq one pair at a time
    F = np.stack([_true_F(d) for d in pairs])
    x1 = np.concatenate([d.x1_px for d in pairs])
    x2 = np.concatenate([d.x2_px for d in pairs]) + 0.5
    paired = ep.sampson_distance_sq(F, x1, x2, pair=pair)
    for k in range(len(pairs)):
        np.testing.assert_allclose(
            paired[pair == k], ep.sampson_distance_sq(F[k], x1[pair == k], x2[pair == k])
        )


def test_fundamental_7point_contains_truth(exact):
    Fs = ep.fundamental_7point(exact.x1_px[:7], exact.x2_px[:7])
    assert len(Fs) in (1, 3)
    assert min(_same_up_to_scale(F, _true_F(exact)) for F in Fs) < 1e-7
    for F in Fs:
        assert abs(np.linalg.det(F / np.linalg.norm(F))) < 1e-10


def test_essential_5point_contains_truth(exact):
    xn1, xn2 = _normalized(exact)
    E_true = skew(exact.cam2_from_cam1.translation) @ exact.cam2_from_cam1.rotation
    for start in range(0, 50, 5):
        Es = ep.essential_5point(xn1[start : start + 5], xn2[start : start + 5])
        assert 1 <= len(Es) <= 10
        assert min(_same_up_to_scale(E, E_true) for E in Es) < 1e-7
        h1 = np.c_[xn1[start : start + 5], np.ones(5)]
        h2 = np.c_[xn2[start : start + 5], np.ones(5)]
        for E in Es:  # every returned solution satisfies the five constraints and the trace identity
            assert np.max(np.abs(np.sum(h2 * (h1 @ E.T), axis=1))) < 1e-9
            assert np.max(np.abs(2 * E @ E.T @ E - np.trace(E @ E.T) * E)) < 1e-8


def test_essential_5point_batch_many_random_poses():
    rng = np.random.default_rng(0)
    B = 100
    X = rng.uniform(-1, 1, (B, 5, 3)) + [0, 0, 5]
    R = rotvec_to_matrix(rng.normal(0, 0.3, (B, 3)))
    t = rng.normal(0, 1, (B, 3))
    X2 = np.einsum("bij,bnj->bni", R, X) + t[:, None]
    E, valid = ep.essential_5point_batch(X[..., :2] / X[..., 2:], X2[..., :2] / X2[..., 2:])
    assert E.shape == (B, 10, 3, 3) and valid.shape == (B, 10)
    E_true = skew(t) @ R
    E_true /= np.linalg.norm(E_true, axis=(1, 2), keepdims=True)
    err = np.minimum(
        np.linalg.norm(E - E_true[:, None], axis=(2, 3)), np.linalg.norm(E + E_true[:, None], axis=(2, 3))
    )
    err = np.where(valid, err, np.inf).min(axis=1)
    assert np.all(err < 1e-6)


def test_decompose_essential_four_candidates_one_in_front(exact):
    xn1, xn2 = _normalized(exact)
    E = ep.essential_from_pose(exact.cam2_from_cam1)
    cands = ep.decompose_essential(E)
    assert len(cands) == 4
    front = [ep.cheirality_mask(c, xn1, xn2).sum() for c in cands]
    assert sorted(front) == [0, 0, 0, len(xn1)]
    best = cands[int(np.argmax(front))]
    assert rotation_angle_deg(best.rotation, exact.cam2_from_cam1.rotation) < 1e-7
    for c in cands:
        assert _same_up_to_scale(ep.essential_from_pose(c), E) < 1e-10


def test_essential_fundamental_round_trip():
    K1 = np.array([[800.0, 0, 320], [0, 810, 240], [0, 0, 1]])
    K2 = np.array([[600.0, 0, 300], [0, 600, 200], [0, 0, 1]])
    E = ep.essential_from_pose(Rigid3d.from_rotvec([0.1, -0.2, 0.05], [1.0, 0.2, -0.1]))
    F = ep.fundamental_from_essential(E, K1, K2)
    np.testing.assert_allclose(ep.essential_from_fundamental(F, K1, K2), E, atol=1e-12)


def test_distances_exact_for_horizontal_epipolar_lines():
    # Pure translation along x with K = I: F = [t]_x, epipolar lines y2 = y1.
    F = skew([1.0, 0.0, 0.0])
    x1 = np.array([[0.3, 0.2], [-1.0, 5.0]])
    d = np.array([0.1, -2.0])
    x2 = x1 + np.c_[[7.0, -3.0], d]  # move along the line, then off it by d
    np.testing.assert_allclose(ep.symmetric_epipolar_distance(F, x1, x2), np.abs(d), atol=1e-12)
    np.testing.assert_allclose(ep.sampson_distance_sq(F, x1, x2), d**2 / 2, atol=1e-12)
    # Stacks of F give (M, N).
    assert ep.sampson_distance_sq(np.stack([F, 2 * F]), x1, x2).shape == (2, 2)


def test_bad_input_raises(exact):
    x1, x2 = exact.x1_px, exact.x2_px
    with pytest.raises(InputError, match="at least 8"):
        ep.fundamental_8point(x1[:7], x2[:7])
    with pytest.raises(InputError, match="exactly 7"):
        ep.fundamental_7point(x1[:8], x2[:8])
    with pytest.raises(InputError, match="exactly 5"):
        ep.essential_5point(x1[:4], x2[:4])
    with pytest.raises(InputError, match="matching"):
        ep.fundamental_8point(x1, x2[:-1])
    with pytest.raises(InputError, match="matching"):
        ep.fundamental_8point(np.c_[x1, x1[:, :1]], x2)
    bad = x1.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ep.fundamental_8point(bad, x2)
    with pytest.raises(InputError, match="E must be"):
        ep.decompose_essential(np.eye(4))


def test_cubic_real_roots_closed_form_matches_known_roots():
    # Three real roots (1, -2, 0.5), one real root (t^3 + t + 10 = (t + 2)(t^2 - 2t + 5)), a scaled
    # triple-ish case and a vanishing leading coefficient (invalid).
    a = np.array([2.0, 1.0, 1e-3, 0.0])
    b = np.array([2.0 * 0.5, 0.0, -3e-3, 1.0])
    c = np.array([2.0 * -2.5, 1.0, 3e-3 - 1e-9, 1.0])
    d = np.array([2.0 * 1.0, 10.0, -1e-3, 1.0])
    roots, valid = ep._cubic_real_roots(a, b, c, d)
    np.testing.assert_allclose(np.sort(roots[0][valid[0]]), [-2.0, 0.5, 1.0], atol=1e-12)
    assert valid[1].tolist() == [True, False, False]
    np.testing.assert_allclose(roots[1, 0], -2.0, atol=1e-12)
    assert not valid[3].any()
    # Random cubics: every root returned satisfies the polynomial and the real-root count matches numpy.
    rng = np.random.default_rng(3)
    a, b, c, d = rng.normal(size=(4, 500))
    roots, valid = ep._cubic_real_roots(a, b, c, d)
    for i in range(500):
        ref = np.roots([a[i], b[i], c[i], d[i]])
        ref_real = np.sort(ref[np.abs(ref.imag) < 1e-7].real)
        np.testing.assert_allclose(np.sort(roots[i][valid[i]]), ref_real, rtol=1e-7, atol=1e-9)


def test_seven_point_hypotheses_match_batch_and_contain_truth():
    """The lean RANSAC path returns exactly the real solutions of the batched solver, for every sample."""
    d = two_view_correspondences(70, rng=11)
    xn1, T1 = ep.hartley_normalization(d.x1_px)
    xn2, T2 = ep.hartley_normalization(d.x2_px)
    samples = np.arange(70).reshape(10, 7)
    F_batch, valid = ep.fundamental_7point_batch(xn1[samples], xn2[samples])
    F_hyp, sample = ep.fundamental_7point_hypotheses(ep.epipolar_rows(xn1, xn2)[samples])
    b, k = np.nonzero(valid)
    np.testing.assert_array_equal(sample, b)
    for F, G in zip(F_hyp, F_batch[b, k], strict=True):
        assert _same_up_to_scale(F, G) < 1e-9
    # Every sample is noise-free: one of its solutions is the true F (in normalised coordinates).
    F_true_n = np.linalg.inv(T2).T @ _true_F(d) @ np.linalg.inv(T1)
    for i in range(10):
        assert min(_same_up_to_scale(F, F_true_n) for F in F_hyp[sample == i]) < 1e-7


def test_seven_point_null_space_singular_sample_falls_back_to_qr():
    """A sample with a repeated correspondence (rank-deficient rows) fails the batched LU solve; the QR
    fallback still returns a null space, and the well-posed samples of the batch keep exact answers."""
    d = two_view_correspondences(14, rng=12)
    xn1, _ = ep.hartley_normalization(d.x1_px)
    xn2, _ = ep.hartley_normalization(d.x2_px)
    samples = np.array([np.arange(7), [7, 8, 9, 10, 11, 12, 12]])
    A = ep.epipolar_rows(xn1, xn2)[samples]
    N = ep._null_space_7(A)
    assert np.all(np.isfinite(N))
    # Columns are null vectors of every system, the good sample's exactly.
    assert np.abs(A[0] @ N[0]).max() < 1e-9 * np.abs(N[0]).max()
    assert np.abs(A[1] @ N[1]).max() < 1e-9


def test_seven_point_pure_forward_motion():
    """Forward motion with R = I gives F = [t]_x with a zero last row (F[2, 1] = F[2, 2] = 0): a pencil
    the rotated-basis null-space solve must handle like any other."""
    rng = np.random.default_rng(13)
    X = np.c_[rng.uniform(-1, 1, (7, 2)), rng.uniform(3, 6, 7)]
    t = np.array([0.0, 0.0, -1.0])  # camera 2 one unit ahead along the optical axis
    x1 = X[:, :2] / X[:, 2:]
    X2 = X + t
    x2 = X2[:, :2] / X2[:, 2:]
    Fs = ep.fundamental_7point(x1, x2)
    assert min(_same_up_to_scale(F, skew(t)) for F in Fs) < 1e-8


def test_det3_matches_lapack():
    M = np.random.default_rng(0).standard_normal((4, 5, 3, 3))
    np.testing.assert_allclose(ep._det3(M), np.linalg.det(M), rtol=1e-12, atol=1e-12)


def test_midpoint_cheirality_matches_dlt_triangulation():
    """The closed-form midpoint depths decide front / behind exactly like a DLT triangulation."""
    from geomvision.geometry.triangulation import triangulate_dlt

    d = two_view_correspondences(200, noise_px=0.5, rng=14)
    xn1, xn2 = _normalized(d)
    for pose in ep.decompose_essential(ep.essential_from_pose(d.cam2_from_cam1)):
        X = triangulate_dlt(np.hstack([np.eye(3), np.zeros((3, 1))]), pose.matrix(), xn1, xn2)
        dlt_front = (X[:, 2] > 0) & (X @ pose.rotation[2] + pose.translation[2] > 0)
        np.testing.assert_array_equal(ep.cheirality_mask(pose, xn1, xn2), dlt_front)
    # Parallel rays (a point at infinity) are never "in front".
    pose = d.cam2_from_cam1
    far = np.array([[0.1, 0.2]])
    far2 = (np.c_[far, [1.0]] @ pose.rotation.T)[:, :2] / (far @ pose.rotation[2, :2] + pose.rotation[2, 2])
    assert not ep.cheirality_mask(pose, far, far2).any()


def _random_pose_samples(B, seed):
    """B five-point samples of random poses, all points in front of both cameras."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (B, 5, 3)) + [0, 0, 5]
    R = rotvec_to_matrix(rng.normal(0, 0.3, (B, 3)))
    t = rng.normal(0, 1, (B, 3))
    X2 = np.einsum("bij,bnj->bni", R, X) + t[:, None]
    front = np.all(X2[..., 2] > 0, axis=1)
    return X[..., :2] / X[..., 2:], X2[..., :2] / X2[..., 2:], R, t, front


def _five_point_by_action_matrix(xn1, xn2):
    """Reference: every real solution from the eigenvectors of the 10x10 action matrix."""
    basis, M20 = ep._five_point_system(xn1, xn2)
    xyz, valid = ep._five_point_action(M20)
    E = np.einsum("bsk,bkn->bsn", xyz, basis[:, :3]) + basis[:, None, 3]
    return E / np.linalg.norm(E, axis=2, keepdims=True), valid


@pytest.mark.parametrize("generic", [False, True])
def test_five_point_sturm_solutions_match_action_matrix(generic):
    B = 600
    if generic:  # arbitrary point pairs (outlier samples): solutions exist but match no pose
        rng = np.random.default_rng(11)
        xn1, xn2 = rng.uniform(-1, 1, (B, 5, 2)), rng.uniform(-1, 1, (B, 5, 2))
    else:
        xn1, xn2 = _random_pose_samples(B, 4)[:2]
    E, sample = ep.essential_5point_hypotheses(xn1, xn2)
    E_ref, valid_ref = _five_point_by_action_matrix(xn1, xn2)
    # Same number of real solutions in every sample (Sturm counts are exact where eig calls them real).
    assert np.array_equal(np.bincount(sample, minlength=B), valid_ref.sum(axis=1))
    worst = np.zeros(B)
    for b in np.flatnonzero(valid_ref.sum(axis=1)):
        A, N = E_ref[b][valid_ref[b]], E[sample == b].reshape(-1, 9)
        d = np.minimum(
            np.linalg.norm(A[:, None] - N[None], axis=2), np.linalg.norm(A[:, None] + N[None], axis=2)
        )
        worst[b] = d.min(axis=1).max()  # every reference solution has a match
    assert np.mean(worst < 1e-8) >= 0.99
    assert worst.max() < 1e-4  # the rare exceptions are ill-conditioned samples, not different roots


def test_essential_5point_hypotheses_layout_and_truth():
    xn1, xn2, R, t, _ = _random_pose_samples(200, 5)
    E_h, sample = ep.essential_5point_hypotheses(xn1, xn2)
    assert E_h.shape == (len(sample), 3, 3) and np.all(np.diff(sample) >= 0)
    np.testing.assert_allclose(np.linalg.norm(E_h, axis=(1, 2)), 1.0, atol=1e-12)
    E_b, valid = ep.essential_5point_batch(xn1, xn2)
    np.testing.assert_array_equal(valid.sum(axis=1), np.bincount(sample, minlength=200))
    np.testing.assert_array_equal(E_b[valid], E_h)  # same solutions, first slots of each row
    E_true = skew(t) @ R
    E_true /= np.linalg.norm(E_true, axis=(1, 2), keepdims=True)
    err = np.minimum(
        np.linalg.norm(E_h - E_true[sample], axis=(1, 2)), np.linalg.norm(E_h + E_true[sample], axis=(1, 2))
    )
    best = np.full(200, np.inf)
    np.minimum.at(best, sample, err)
    assert np.all(best < 1e-9)


def test_real_roots_sturm_known_roots():
    roots = np.array([-250.0, -3.0, -0.5, 0.001, 0.002, 2.0])
    # Times two positive quadratics (z^2 + 1)(z^2 + 0.5 z + 4): 6 real and 4 complex roots.
    poly = np.polynomial.polynomial.polyfromroots(roots)
    poly = np.polynomial.polynomial.polymul(poly, [1.0, 0.0, 1.0])
    poly = np.polynomial.polynomial.polymul(poly, [4.0, 0.5, 1.0])
    assert len(poly) == 11
    p = np.stack([poly, -3.0 * poly, np.polynomial.polynomial.polyfromroots(np.arange(1.0, 11.0))])
    found, sample, failed = ep._real_roots_sturm(p, np.ones(3, dtype=bool))
    assert not failed.any()
    np.testing.assert_allclose(found[sample == 0], roots, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found[sample == 1], roots, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found[sample == 2], np.arange(1.0, 11.0), rtol=1e-8)


def test_real_roots_sturm_flags_degenerate_polynomials():
    p = np.zeros((3, 11))
    p[0, :4] = [1.0, -2.0, 0.5, 1.0]  # leading coefficient zero: degree dropped
    p[1] = np.polynomial.polynomial.polyfromroots(np.arange(1.0, 11.0)) * 1e-25  # tiny leading coefficient
    p[1, 0] = 1.0  # ... next to a unit one: roots out of range of the powers
    close = np.array([1.0, 1.0 + 1e-5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    p[2] = np.polynomial.polynomial.polyfromroots(close)
    found, sample, failed = ep._real_roots_sturm(p, np.ones(3, dtype=bool))
    assert failed[0] and failed[1] and not failed[2]  # flagged samples go to the action matrix
    assert np.all(sample == 2)
    np.testing.assert_allclose(found, close, rtol=1e-7)  # two roots 1e-5 apart are both isolated
    _, sample, failed = ep._real_roots_sturm(p, np.array([False, False, True]))
    assert not failed[:2].any()  # samples not asked for are neither solved nor failed


def test_null_space_5_orthonormal_and_singular_fallback():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((50, 5, 9))
    A[7] = 0.0
    A[7, :, 0] = rng.standard_normal(5)  # rank 1: its 5x5 block is singular, redone by QR
    N = ep._null_space_5(A)
    assert N.shape == (50, 4, 9)
    np.testing.assert_allclose(N @ np.swapaxes(N, 1, 2), np.broadcast_to(np.eye(4), (50, 4, 4)), atol=1e-12)
    good = np.arange(50) != 7
    np.testing.assert_allclose(A[good] @ np.swapaxes(N[good], 1, 2), 0.0, atol=1e-12)
    assert np.all(np.isfinite(N[7]))  # the degenerate sample gets QR's orthonormal vectors, not NaN


def test_eight_point_hypotheses_exact_and_repeated_correspondence():
    """Noise-free eight-point samples give the true F; a sample repeating a correspondence neither fails
    the batch nor yields a non-solution (it is dropped or solves its own rows)."""
    d = two_view_correspondences(80, rng=14)
    xn1, T1 = ep.hartley_normalization(d.x1_px)
    xn2, T2 = ep.hartley_normalization(d.x2_px)
    rows = ep.epipolar_rows(xn1, xn2)
    samples = np.arange(80).reshape(10, 8)
    F = ep.fundamental_8point_hypotheses(rows[samples])
    F_true_n = np.linalg.inv(T2).T @ _true_F(d) @ np.linalg.inv(T1)
    assert len(F) == 10 and max(_same_up_to_scale(f, F_true_n) for f in F) < 1e-8
    samples[3, 7] = samples[3, 6]  # exactly singular 8x8 block after the rotation
    F = ep.fundamental_8point_hypotheses(rows[samples])
    assert 9 <= len(F) <= 10
    exact = [_same_up_to_scale(f, F_true_n) < 1e-8 for f in F]
    assert sum(exact) >= 9
    for f in F:
        residual = rows[samples].reshape(-1, 9) @ (f.ravel() / np.linalg.norm(f))
        assert np.isfinite(residual).all()


def test_null_space_7_keeps_regular_samples_when_one_is_singular():
    """One exactly singular block (repeated correspondence) in a batch: the other samples are solved by
    the batched LU path and stay exact."""
    d = two_view_correspondences(70, rng=15)
    xn1, _ = ep.hartley_normalization(d.x1_px)
    xn2, _ = ep.hartley_normalization(d.x2_px)
    samples = np.arange(70).reshape(10, 7)
    samples[4, 6] = samples[4, 5]
    A = ep.epipolar_rows(xn1, xn2)[samples]
    N = ep._null_space_7(A)
    assert np.isfinite(N).all()
    for b in range(10):
        assert np.abs(A[b] @ N[b]).max() < 1e-9 * max(np.abs(N[b]).max(), 1.0)
