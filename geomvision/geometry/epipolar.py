"""Epipolar geometry: fundamental and essential matrices, minimal solvers, pose decomposition, errors.

Conventions: ``x2_h^T F x1_h = 0`` for corresponding pixels ``x1`` (image 1) and ``x2`` (image 2), and
``E = [t]_x R`` for ``cam2_from_cam1 = (R, t)`` acting on normalised (``K^-1``) coordinates. Pixels follow
the OpenCV origin. Every solver is vectorised over points; the minimal solvers also have ``*_batch``
forms vectorised over many minimal samples at once, which is what RANSAC calls
(``fundamental_7point_hypotheses`` returns only the real seven-point solutions, from precomputed rows).
Cheirality uses closed-form midpoint depths of the two rays (no DLT triangulation).

References: Hartley & Zisserman (H&Z), 2nd ed.: 11.1-11.2 (eight-point with normalisation),
11.1.2 (seven-point), 9.6 (essential matrix and its decomposition), 11.4.3 (Sampson distance).
Five-point: Nistér 2004 (hidden-variable degree-10 polynomial, real roots only by Sturm sequences and
safeguarded Halley iterations), with the action-matrix form of Stewénius, Engels & Nistér 2006 as the fallback for
numerically degenerate samples (``essential_5point_hypotheses`` returns only the real solutions).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.linalg import lapack as _lapack

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, skew

__all__ = [
    "hartley_normalization",
    "epipolar_rows",
    "fundamental_8point",
    "fundamental_7point",
    "fundamental_8point_hypotheses",
    "project_to_rank2",
    "fundamental_7point_batch",
    "fundamental_7point_from_rows",
    "fundamental_7point_hypotheses",
    "essential_8point",
    "essential_8point_unchecked",
    "fundamental_8point_unchecked",
    "essential_5point",
    "essential_5point_batch",
    "essential_5point_hypotheses",
    "project_to_essential",
    "essential_from_fundamental",
    "fundamental_from_essential",
    "essential_from_pose",
    "decompose_essential",
    "recover_pose",
    "recover_poses",
    "cheirality_mask",
    "sampson_distance_sq",
    "symmetric_epipolar_distance",
]


# ----------------------------------------------------------------------------------------------------
# input checks and normalisation
# ----------------------------------------------------------------------------------------------------
def _check_pair(x1, x2, min_points: int, *, exact: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x1.shape[1] != 2 or x1.shape != x2.shape:
        raise InputError(f"need matching (N, 2) point arrays, got {x1.shape} and {x2.shape}")
    n = len(x1)
    if exact is not None and n != exact:
        raise InputError(f"need exactly {exact} correspondences, got {n}")
    if n < min_points:
        raise InputError(f"need at least {min_points} correspondences, got {n}")
    if not (np.all(np.isfinite(x1)) and np.all(np.isfinite(x2))):
        raise InputError("point arrays contain NaN or inf")
    return x1, x2


def _check_matrix(M, name: str) -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    if M.shape[-2:] != (3, 3):
        raise InputError(f"{name} must be (..., 3, 3), got {M.shape}")
    if not np.all(np.isfinite(M)):
        raise InputError(f"{name} contains NaN or inf")
    return M


def _homogeneous(x: np.ndarray) -> np.ndarray:
    out = np.ones(x.shape[:-1] + (3,))
    out[..., :2] = x
    return out


def hartley_normalization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity taking points to zero centroid and mean distance sqrt(2) (H&Z 4.4.4).

    Args:
        x: (N, 2) points.

    Returns:
        (xn (N, 2), T (3, 3)) with ``xn_h = T @ x_h``.
    """
    centroid = x.mean(axis=0)
    centred = x - centroid
    mean_dist = float(np.sqrt(np.einsum("ij,ij->i", centred, centred)).mean())
    scale = np.sqrt(2.0) / mean_dist if mean_dist > 1e-300 else 1.0
    T = np.array([[scale, 0.0, -scale * centroid[0]], [0.0, scale, -scale * centroid[1]], [0.0, 0.0, 1.0]])
    centred *= scale
    return centred, T


def epipolar_rows(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Rows of the linear system ``A f = 0`` for row-major ``f = vec(F)`` (H&Z eq. 11.3); (..., N, 9)."""
    x1h = _homogeneous(x1)
    x2h = _homogeneous(x2)
    return (x2h[..., :, None] * x1h[..., None, :]).reshape(x1.shape[:-1] + (9,))


# ----------------------------------------------------------------------------------------------------
# fundamental matrix
# ----------------------------------------------------------------------------------------------------
def project_to_rank2(F: np.ndarray) -> np.ndarray:
    """Closest rank-2 matrix in Frobenius norm (H&Z 11.1.1) of F (..., 3, 3): its smallest singular
    value set to zero."""
    if F.shape == (3, 3):
        # One matrix (the estimators' refits and polish): LAPACK directly, numpy.linalg's wrapper costs
        # more than the 3x3 SVD itself.
        U, S, Vt, info = _lapack.dgesdd(F)
        if info == 0:
            S[2] = 0.0
            return (U * S) @ Vt
    U, S, Vt = np.linalg.svd(F)
    S[..., 2] = 0.0
    return (U * S[..., None, :]) @ Vt


def _normalize_frobenius(M: np.ndarray) -> np.ndarray:
    return M / np.linalg.norm(M, axis=(-2, -1), keepdims=True)


def fundamental_8point(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Normalised eight-point algorithm (H&Z Algorithm 11.1), least squares for N > 8.

    Args:
        x1, x2: (N, 2) corresponding points (pixels), N >= 8.

    Returns:
        (3, 3) rank-2 fundamental matrix with unit Frobenius norm.
    """
    x1, x2 = _check_pair(x1, x2, 8)
    return fundamental_8point_unchecked(x1, x2)


def fundamental_8point_unchecked(
    x1: np.ndarray, x2: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """:func:`fundamental_8point` without input validation, for inner loops (LO-RANSAC refits).

    ``weights`` (N,) >= 0 multiply the squared algebraic residuals (weighted least squares).
    """
    xn1, T1 = hartley_normalization(x1)
    xn2, T2 = hartley_normalization(x2)
    # Smallest eigenvector of the 9x9 normal matrix A^T A: cheaper than the SVD of A (N, 9) and well
    # conditioned after Hartley normalisation.
    A = epipolar_rows(xn1, xn2)
    if weights is not None:
        A = A * np.sqrt(weights / weights.max())[:, None]
    _, vecs = np.linalg.eigh(A.T @ A)
    Fn = project_to_rank2(vecs[:, 0].reshape(3, 3))
    return _normalize_frobenius(T2.T @ Fn @ T1)


_CUBIC_PHASES = (2.0 * np.pi / 3.0) * np.arange(3)
#: fixed generic orthogonal change of basis for the seven-point null-space solve (see ``_null_space_7``);
#: any rotation does, a seeded one keeps results reproducible.
_NULL_BASIS = np.linalg.qr(np.random.default_rng(7).standard_normal((9, 9)))[0]
#: its first seven and last two columns: the null space is ``_NULL_TAIL - _NULL_HEAD @ (A1^-1 A2)``.
_NULL_HEAD = np.ascontiguousarray(_NULL_BASIS[:, :7])
_NULL_TAIL = np.ascontiguousarray(_NULL_BASIS[:, 7:])
#: a null-space solve whose coefficients exceed this is ill-conditioned and redone by QR.
_NULL_MAX_COEFF = 1e6
#: diagonal shift of the eight-point blocks (see ``fundamental_8point_hypotheses``); rows of
#: Hartley-normalised points have entries of order 1.
_EIGHT_POINT_SHIFT = 1e-13 * np.eye(8)


def _solve_blocks(lead: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched ``lead^-1 rhs`` and a (B,) flag of the blocks that were solvable with finite results.

    An exactly singular block (degenerate sample) fails the whole batched solve: only then are the
    determinants computed to find such blocks and replace them by the identity. Real matches contain
    duplicated correspondences (SIFT keeps one keypoint per dominant orientation: about 10 % of a
    templeRing pair's matches), so a batch of 64 seven-point samples often holds such a block.
    """
    with np.errstate(all="ignore"):
        try:
            G = np.linalg.solve(lead, rhs)
            ok = np.ones(len(lead), dtype=bool)
        except np.linalg.LinAlgError:
            ok = np.abs(np.linalg.det(lead)) > 1e-300
            G = np.linalg.solve(np.where(ok[:, None, None], lead, np.eye(lead.shape[-1])), rhs)
    return G, ok & np.all(np.isfinite(G), axis=(1, 2))


def _null_space_7(A: np.ndarray) -> np.ndarray:
    """(B, 7, 9) rank-7 systems -> (B, 9, 2) spanning their null spaces.

    In the rotated unknowns ``g = P^T f`` (P = ``_NULL_BASIS``) the null space is ``[-A1^-1 A2; I]`` with
    ``A P = [A1 | A2]``: one batched LU solve of 7x7 systems, about 4x cheaper than the complete QR of
    every 9x7 transpose. The generic rotation P matters: in the original unknowns, forward motion
    (``F[2, 1] = F[2, 2] = 0``) would make A1 singular. Samples whose A1 is (nearly) singular anyway are
    redone with QR, so degenerate samples behave exactly as before.
    """
    Ap = A @ _NULL_BASIS
    with np.errstate(all="ignore"):  # near-singular blocks give huge / NaN values, redone below
        try:
            G = np.linalg.solve(Ap[:, :, :7], Ap[:, :, 7:])
            regular = True
        except np.linalg.LinAlgError:  # an exactly singular block (repeated correspondence)
            G, regular = _solve_blocks(Ap[:, :, :7], Ap[:, :, 7:])
        bad = ~((np.abs(G.reshape(len(A), 14)).max(axis=1) <= _NULL_MAX_COEFF) & regular)  # NaN too
        N = _NULL_TAIL - _NULL_HEAD @ G
    if bad.any():
        Q, _ = np.linalg.qr(np.swapaxes(A[bad], 1, 2), mode="complete")  # last 2 columns: null space
        N[bad] = Q[:, :, 7:]
    return N


def _null_space_5(A: np.ndarray) -> np.ndarray:
    """(B, 5, 9) rank-5 systems -> (B, 4, 9) orthonormal rows spanning their null spaces.

    Same rotated-basis LU solve as :func:`_null_space_7` (5x5 blocks, 4 right-hand sides), then modified
    Gram-Schmidt on the 4 vectors: together about 2x cheaper than the complete QR of every 9x5 transpose.
    (Orthonormality matters: the five-point elimination is markedly less accurate on a skewed basis.)
    Samples whose block is (nearly) singular are redone by QR.
    """
    Ap = A @ _NULL_BASIS
    B = len(A)
    N = np.empty((B, 4, 9))
    N[:, :, 5:] = np.eye(4)
    with np.errstate(all="ignore"):
        G, ok = _solve_blocks(Ap[:, :, :5], Ap[:, :, 5:])
        N[:, :, :5] = -np.swapaxes(G, 1, 2)
        bad = ~(ok & (np.abs(G).max(axis=(1, 2)) <= _NULL_MAX_COEFF))
        N = N @ _NULL_BASIS.T
        for i in range(4):
            for j in range(i):
                N[:, i] -= np.einsum("bk,bk->b", N[:, i], N[:, j])[:, None] * N[:, j]
            N[:, i] /= np.sqrt(np.einsum("bk,bk->b", N[:, i], N[:, i]))[:, None]
    if bad.any():
        Q, _ = np.linalg.qr(np.swapaxes(A[bad], 1, 2), mode="complete")
        N[bad] = np.swapaxes(Q[:, :, 5:], 1, 2)
    return N


def _det3(M: np.ndarray) -> np.ndarray:
    """Determinants of a stack (..., 3, 3) by cofactor expansion (LAPACK's per-matrix LU costs ~10x more)."""
    a, b, c = M[..., 0, 0], M[..., 0, 1], M[..., 0, 2]
    d, e, f = M[..., 1, 0], M[..., 1, 1], M[..., 1, 2]
    g, h, i = M[..., 2, 0], M[..., 2, 1], M[..., 2, 2]
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def fundamental_7point_batch(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seven-point algorithm (H&Z 11.1.2) for a batch of samples.

    The two-dimensional null space ``F = a F1 + (1 - a) F2`` is restricted by ``det F = 0``, a cubic in
    ``a`` with one or three real roots. Points should be pre-normalised (Hartley) by the caller.

    Args:
        x1, x2: (B, 7, 2) samples.

    Returns:
        (F (B, 3, 3, 3) unit-norm candidates, valid (B, 3) bool: which candidates are real roots).
    """
    return fundamental_7point_from_rows(epipolar_rows(x1, x2))


def fundamental_7point_from_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fundamental_7point_batch` from the (B, 7, 9) epipolar rows of the samples (see
    :func:`epipolar_rows`), for callers that precompute the rows of all points once."""
    F2, D, roots, valid = _seven_point_pencil(A)
    F = F2[:, None] + roots[:, :, None, None] * D[:, None]
    return _normalize_frobenius(F), valid


def fundamental_7point_hypotheses(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The real seven-point solutions only, for RANSAC: no (B, 3, 3, 3) array of candidates.

    Args:
        A: (B, 7, 9) epipolar rows of the samples (see :func:`epipolar_rows`).

    Returns:
        (F (M, 3, 3) solutions, not normalised; sample (M,) index of the sample each one solves).
    """
    F2, D, roots, valid = _seven_point_pencil(A)
    sample, k = np.nonzero(valid)
    return F2[sample] + roots[sample, k, None, None] * D[sample], sample


def fundamental_8point_hypotheses(A: np.ndarray) -> np.ndarray:
    """Linear eight-point solutions of a batch of exactly determined samples, for RANSAC.

    Each sample's F spans the null space of its 8x9 system, found like :func:`_null_space_7`'s (one
    batched LU solve in a fixed rotated basis). Samples whose system is (nearly) singular, e.g. a
    correspondence repeated in the sample, give no hypothesis. The rank-2 constraint is not enforced: a
    hypothesis is only scored, and the least-squares refits after RANSAC are rank 2.

    Args:
        A: (B, 8, 9) epipolar rows of the samples (see :func:`epipolar_rows`).

    Returns:
        (M, 3, 3) F, M <= B, one per regular sample (not normalised).
    """
    Ap = A @ _NULL_BASIS
    # A tiny diagonal shift makes exactly singular blocks (a correspondence repeated in the sample,
    # frequent with SIFT's one-keypoint-per-orientation duplicates) solvable with huge coefficients, so
    # that they are dropped below instead of failing the whole batched solve; on regular blocks it
    # changes the solution by ~1e-13 relative to their conditioning, far below what scoring can see.
    lead = Ap[:, :, :8] + _EIGHT_POINT_SHIFT
    with np.errstate(all="ignore"):
        try:
            g = np.linalg.solve(lead, Ap[:, :, 8:])[:, :, 0]
        except np.linalg.LinAlgError:  # -shift an eigenvalue of a block: practically never
            g, regular = _solve_blocks(lead, Ap[:, :, 8:])
            g = g[regular, :, 0]
        g = g[np.maximum.reduce(np.abs(g), axis=1) <= _NULL_MAX_COEFF]  # also drops NaN
    return (_NULL_BASIS[:, 8] - g @ _NULL_BASIS[:, :8].T).reshape(-1, 3, 3)


def _seven_point_pencil(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Null-space pencil ``F2 + a D`` (B, 3, 3) each and the real roots ``a`` (B, 3) of its determinant
    cubic with their validity (B, 3) (H&Z 11.1.2)."""
    N = _null_space_7(A)
    B = len(A)
    F1 = N[:, :, 0].reshape(B, 3, 3)
    F2 = N[:, :, 1].reshape(B, 3, 3)
    D = F1 - F2
    # det(F2 + a D) = c0 + c1 a + c2 a^2 + c3 a^3; c1, c2 from its values at a = +-1.
    c0, c3, fp, fm = _det3(np.stack([F2, D, F2 + D, F2 - D]))
    c2 = 0.5 * (fp + fm) - c0
    c1 = 0.5 * (fp - fm) - c3
    roots, valid = _cubic_real_roots(c3, c2, c1, c0)
    return F2, D, roots, valid


def _cubic_real_roots(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Real roots of ``a t^3 + b t^2 + c t + d`` per batch element, closed form.

    Cardano's formula when the discriminant is positive (one real root), Viète's trigonometric form
    otherwise (three real roots); a Newton step on the monic cubic then restores the precision lost in
    the closed form. Vectorised over the batch (an eigenvalue solve of B companion matrices costs
    several times more in NumPy). Elements with a vanishing leading coefficient are invalid.

    Returns:
        (roots (B, 3), valid (B, 3) bool); with one real root only column 0 is valid.
    """
    with np.errstate(all="ignore"):  # a = 0 gives inf / NaN, flagged invalid below
        ok = np.abs(a) > 1e-12 * (np.abs(b) + np.abs(c) + np.abs(d))
        inv_a = 1.0 / a
        p2, p1, p0 = b * inv_a, c * inv_a, d * inv_a
        shift = p2 * (1.0 / 3.0)
        # Depressed cubic y^3 + P y + Q = 0 with t = y - p2 / 3; disc = (Q / 2)^2 + (P / 3)^3.
        P3 = (p1 - p2 * shift) * (1.0 / 3.0)
        half_Q = ((2.0 * shift * shift - p1) * shift + p0) * 0.5
        disc = half_Q * half_Q + P3 * P3 * P3
        one = disc > 0.0
        # One real root (Cardano) ...
        sq = np.sqrt(np.maximum(disc, 0.0))
        y_one = np.cbrt(sq - half_Q) - np.cbrt(sq + half_Q)
        # ... or three (Viete): y_k = 2 m cos(acos(-Q / (2 m^3)) / 3 - 2 pi k / 3), m = sqrt(-P / 3).
        m = np.sqrt(np.maximum(-P3, 0.0))
        phi = np.arccos(np.minimum(np.maximum(-half_Q / (m * m * m), -1.0), 1.0)) * (1.0 / 3.0)
        y = (2.0 * m)[:, None] * np.cos(phi[:, None] - _CUBIC_PHASES)
        y[:, 0] = np.where(one, y_one, y[:, 0])
        t = y - shift[:, None]
        # One Newton step on the monic cubic restores the precision lost in the closed form (it squares
        # the relative error; a second step changed nothing measurable). A step that is not finite (a
        # double root: zero derivative) is not taken.
        p2c, p1c = p2[:, None], p1[:, None]
        stepped = t - (((t + p2c) * t + p1c) * t + p0[:, None]) / ((3.0 * t + 2.0 * p2c) * t + p1c)
        t = np.where(np.isfinite(stepped), stepped, t)
    valid = np.isfinite(t)
    valid &= ok[:, None]
    valid[:, 1:] &= ~one[:, None]
    return np.where(valid, t, 0.0), valid


def fundamental_7point(x1: np.ndarray, x2: np.ndarray) -> list[np.ndarray]:
    """Seven-point algorithm (H&Z 11.1.2): 1 or 3 fundamental matrices through exactly 7 correspondences.

    Args:
        x1, x2: (7, 2) corresponding points (pixels).

    Returns:
        List of (3, 3) rank-2 unit-norm fundamental matrices (empty for degenerate input).
    """
    x1, x2 = _check_pair(x1, x2, 7, exact=7)
    xn1, T1 = hartley_normalization(x1)
    xn2, T2 = hartley_normalization(x2)
    F, valid = fundamental_7point_batch(xn1[None], xn2[None])
    F = _normalize_frobenius(T2.T @ F[0] @ T1)
    return [F[i] for i in np.flatnonzero(valid[0])]


# ----------------------------------------------------------------------------------------------------
# essential matrix
# ----------------------------------------------------------------------------------------------------
def project_to_essential(M: np.ndarray) -> np.ndarray:
    """Closest essential matrix (singular values (1, 1, 0)) in Frobenius norm (H&Z Result 9.18)."""
    U, _, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64))
    return (U * np.array([1.0, 1.0, 0.0])) @ Vt / np.sqrt(2.0)


def essential_8point(xn1: np.ndarray, xn2: np.ndarray) -> np.ndarray:
    """Essential matrix from N >= 8 normalised correspondences: linear eight-point + manifold projection.

    Args:
        xn1, xn2: (N, 2) normalised image coordinates (``K^-1 x``, z = 1).

    Returns:
        (3, 3) essential matrix with singular values (1, 1, 0) / sqrt(2) (unit Frobenius norm).
    """
    return project_to_essential(fundamental_8point(xn1, xn2))


def essential_8point_unchecked(xn1: np.ndarray, xn2: np.ndarray) -> np.ndarray:
    """:func:`essential_8point` without input validation, for inner loops."""
    return project_to_essential(fundamental_8point_unchecked(xn1, xn2))


def essential_from_fundamental(F: np.ndarray, K1: np.ndarray, K2: np.ndarray) -> np.ndarray:
    """``E = K2^T F K1`` (H&Z eq. 9.12); works on stacks (..., 3, 3)."""
    F = _check_matrix(F, "F")
    return np.swapaxes(_check_matrix(K2, "K2"), -1, -2) @ F @ _check_matrix(K1, "K1")


def fundamental_from_essential(E: np.ndarray, K1: np.ndarray, K2: np.ndarray) -> np.ndarray:
    """``F = K2^-T E K1^-1``; works on stacks (..., 3, 3)."""
    E = _check_matrix(E, "E")
    K1_inv = np.linalg.inv(_check_matrix(K1, "K1"))
    K2_inv = np.linalg.inv(_check_matrix(K2, "K2"))
    return np.swapaxes(K2_inv, -1, -2) @ E @ K1_inv


def essential_from_pose(cam2_from_cam1: Rigid3d) -> np.ndarray:
    """``E = [t]_x R`` for ``cam2_from_cam1 = (R, t)`` (H&Z Result 9.17)."""
    return skew(cam2_from_cam1.translation) @ cam2_from_cam1.rotation


# --- five-point solver: polynomial bookkeeping, built once at import ---------------------------------
def _exponents(max_degree: int) -> list[tuple[int, int, int]]:
    return [
        e for d in range(max_degree + 1) for e in itertools.product(range(d + 1), repeat=3) if sum(e) == d
    ]


# Linear polynomials in (x, y, z): coefficients on [x, y, z, 1].
_EXP1 = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)]
_EXP2 = _exponents(2)  # 10 monomials of degree <= 2
# Degree-3 monomials first (the 10 eliminated by Gauss-Jordan), then the 10 of degree <= 2, which form
# the monomial basis of the quotient ring (the problem has 10 solutions, Nistér 2004).
_EXP3 = [e for e in _exponents(3) if sum(e) == 3] + [e for e in _exponents(2)]


def _product_tensor(exp_a: list, exp_b: list, exp_out: list) -> np.ndarray:
    """One-hot (len(a) * len(b), len(out)) map multiplying coefficient vectors."""
    index = {e: i for i, e in enumerate(exp_out)}
    T = np.zeros((len(exp_a), len(exp_b), len(exp_out)))
    for i, ea in enumerate(exp_a):
        for j, eb in enumerate(exp_b):
            T[i, j, index[tuple(np.add(ea, eb))]] = 1.0
    return T.reshape(len(exp_a) * len(exp_b), len(exp_out))


_T11 = _product_tensor(_EXP1, _EXP1, _EXP2)  # (16, 10)
_T21 = _product_tensor(_EXP2, _EXP1, _EXP3)  # (40, 20)


def _action_matrix_pattern() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Action matrix of multiplication by x on the basis ``_EXP3[10:]``.

    Returns ``(S, L, idx)``: ``M = S @ (-G) + L`` where ``G`` (10, 10) expresses the degree-3 monomials in
    the basis (rows of the Gauss-Jordan-reduced system), and ``idx`` = basis positions of x, y, z, 1.
    """
    basis = _EXP3[10:]
    deg3 = {e: i for i, e in enumerate(_EXP3[:10])}
    pos = {e: i for i, e in enumerate(basis)}
    S = np.zeros((10, 10))
    L = np.zeros((10, 10))
    for i, b in enumerate(basis):
        xb = (b[0] + 1, b[1], b[2])
        if xb in deg3:
            S[i, deg3[xb]] = 1.0
        else:
            L[i, pos[xb]] = 1.0
    idx = [pos[(1, 0, 0)], pos[(0, 1, 0)], pos[(0, 0, 1)], pos[(0, 0, 0)]]
    return S, L, idx


_ACT_S, _ACT_L, _ACT_IDX = _action_matrix_pattern()


def _poly_mul11(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of linear polys (..., 4) x (..., 4) -> (..., 10)."""
    prod = a[..., :, None] * b[..., None, :]
    return prod.reshape(prod.shape[:-2] + (16,)) @ _T11


def _poly_mul21(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of a quadratic (..., 10) and a linear (..., 4) poly -> cubic (..., 20)."""
    prod = a[..., :, None] * b[..., None, :]
    return prod.reshape(prod.shape[:-2] + (40,)) @ _T21


def _five_point_system(xn1: np.ndarray, xn2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Null-space basis (B, 4, 9) (rows X, Y, Z, W) and the ten cubic constraints (B, 10, 20) on the
    monomials ``_EXP3`` of ``E = x X + y Y + z Z + W``: ``det E = 0`` and ``2 E E^T E - tr(E E^T) E = 0``
    (H&Z 9.6, Result 9.18's trace identity)."""
    B = xn1.shape[0]
    A = epipolar_rows(xn1, xn2)  # (B, 5, 9)
    basis = _null_space_5(A)  # (B, 4, 9): X, Y, Z, W
    # E as a (3, 3) matrix of linear polynomials in [x, y, z, 1].
    Ep = np.ascontiguousarray(np.moveaxis(basis, 1, -1)).reshape(B, 3, 3, 4)

    # E E^T: entry (i, j) is the bilinear form sum_k Ep[i, k] (x) Ep[j, k], one stacked (12, 3) x (3, 12)
    # product per sample, mapped to the 10 quadratic monomials.
    L = np.swapaxes(Ep, 2, 3).reshape(B, 12, 3)  # rows (i, a), columns k
    # (Stacked products with at least 9 rows each: a (B, 3, 3, 16) @ (16, 10) product is 3 B BLAS calls,
    # one (9 B, 16) GEMM is large enough for OpenBLAS threads, many times slower on a busy machine.)
    EEt = (L @ np.swapaxes(L, 1, 2)).reshape(B, 3, 4, 3, 4).transpose(0, 1, 3, 2, 4).reshape(B, 9, 16) @ _T11
    EEt = EEt.reshape(B, 3, 3, 10)
    trace = EEt[:, 0, 0] + EEt[:, 1, 1] + EEt[:, 2, 2]  # (B, 10)
    # 2 E E^T E - tr(E E^T) E: nine cubic constraints. (E E^T E)(i, j) = sum_k EEt[i, k] (x) Ep[k, j] is again
    # one stacked product; both terms are summed as (quadratic x linear) coefficient products before the
    # single map to cubic monomials.
    # 2 E E^T E - tr E = sum_k (2 EEt[i, k] - delta_ik tr) (x) Ep[k, j]: the trace folds into the left factor.
    EEt2 = 2.0 * EEt
    EEt2[:, [0, 1, 2], [0, 1, 2]] -= trace[:, None, :]
    L2 = np.swapaxes(EEt2, 2, 3).reshape(B, 30, 3)  # rows (i, m), columns k
    # One column j at a time, the product's rows (i, m) x columns a are already in the (m, a) order of
    # the monomial map: no transposed copy.
    C = np.empty((B, 3, 3, 20))
    for j in range(3):
        C[:, :, j] = (L2 @ Ep[:, :, j, :]).reshape(B, 3, 40) @ _T21
    # det E = row0 . (row1 x row2): the cross product from the outer products of rows 1 and 2.
    O = Ep[:, 1, :, None, :, None] * Ep[:, 2, None, :, None, :]  # (B, 3, 3, 4, 4)
    cross = (O[:, [1, 2, 0], [2, 0, 1]] - O[:, [2, 0, 1], [1, 2, 0]]).reshape(B, 3, 16) @ _T11  # (B, 3, 10)
    det = np.matmul(np.swapaxes(cross, 1, 2), Ep[:, 0]).reshape(B, 40) @ _T21  # (B, 20)
    return basis, np.concatenate([det[:, None, :], C.reshape(B, 9, 20)], axis=1)


def _five_point_action(M20: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stewénius et al. (2006) action-matrix solutions: (xyz (B, 10, 3), valid (B, 10)).

    Gauss-Jordan elimination of the 10 degree-3 monomials; the 10x10 action matrix of multiplication by
    ``x`` on the quotient-ring basis {x^2, xy, ..., 1}; its eigenvectors are the basis monomials at the
    (up to 10) solutions. The reference path, and the fallback of :func:`_five_point_sturm`.
    """
    G, ok = _solve_blocks(M20[:, :, :10], M20[:, :, 10:])
    action = _ACT_S @ (-G) + _ACT_L  # (B, 10, 10)
    action = np.where(ok[:, None, None], action, np.eye(10))
    w, V = np.linalg.eig(action)  # columns of V: basis monomials at each solution
    ix, iy, iz, i1 = _ACT_IDX
    one = V[:, i1, :]
    good_one = np.abs(one) > 1e-12 * np.max(np.abs(V), axis=1)
    one = np.where(good_one, one, 1.0)
    xyz = np.stack([(V[:, i, :] / one).real for i in (ix, iy, iz)], axis=-1)
    real = np.abs(w.imag) <= 1e-6 * (1.0 + np.abs(w.real))
    return xyz, real & good_one & ok[:, None]


# --- Nistér's hidden-variable form: a degree-10 polynomial in z whose real roots Sturm sequences find --
#: (e, f) monomial pairs (x, y, z exponents) whose rows after Nistér's Gauss-Jordan step give
#: ``row(e) - z row(f)`` free of every eliminated monomial (Nistér 2004, Sec. 3.2.3).
_NISTER_PAIRS = (((2, 0, 1), (2, 0, 0)), ((0, 2, 1), (0, 2, 0)), ((1, 1, 1), (1, 1, 0)))
_NISTER_ELIM = [(3, 0, 0), (0, 3, 0), (2, 1, 0), (1, 2, 0)] + [m for pair in _NISTER_PAIRS for m in pair]
#: the ten monomials left: x z^c, y z^c (c <= 2) and z^c (c <= 3), so each such row is
#: ``x k_x(z) + y k_y(z) + k_1(z)`` with polynomial coefficients in the hidden variable z.
_NISTER_REST = [(1, 0, c) for c in range(3)] + [(0, 1, c) for c in range(3)] + [(0, 0, c) for c in range(4)]
_NISTER_COLS = np.array([_EXP3.index(e) for e in _NISTER_ELIM + _NISTER_REST])
_NISTER_ROWS = np.array([[_NISTER_ELIM.index(e), _NISTER_ELIM.index(f)] for e, f in _NISTER_PAIRS])
#: a Sturm-chain polynomial whose leading coefficient is below this fraction of its largest one has
#: (numerically) dropped degree: the sample is solved by the action matrix instead.
_STURM_LEAD_TOL = 1e-9
#: the bracketed Halley iterations on the degree-10 polynomial stop at this relative step (the next
#: iterate is then exact to rounding; ill-conditioned roots are polished by ``_refine_solutions``).
_NEWTON_RTOL = 1e-9
#: roots still moving after this many Halley / bisection steps send their sample to the action matrix.
_NEWTON_MAX_ITER = 20
#: roots located on the polynomial less precisely than this (relative) are refined on the equations.
_REFINE_RTOL = 1e-11
#: ... and so are those whose back-substitution rows are this close to parallel.
_REFINE_MIN_SINE = 1e-2
#: batches smaller than this are solved by the action matrix (equal cost at about 128-160 samples of
#: real matches: the root iterations have a fixed cost of ~2 ms of NumPy calls).
_STURM_MIN_BATCH = 160
#: root bound beyond which the powers of z lose range: such samples use the action matrix.
_STURM_MAX_BOUND = 1e20


def _conv_map(n_a: int, n_b: int) -> np.ndarray:
    """One-hot (n_a * n_b, n_a + n_b - 1) map multiplying univariate coefficient vectors (low to high)."""
    T = np.zeros((n_a, n_b, n_a + n_b - 1))
    for i in range(n_a):
        for j in range(n_b):
            T[i, j, i + j] = 1.0
    return T.reshape(n_a * n_b, -1)


_CONV55 = _conv_map(5, 5)
_CONV59 = _conv_map(5, 9)


def _pmul(a: np.ndarray, b: np.ndarray, conv: np.ndarray) -> np.ndarray:
    """Products of univariate polynomials (..., n_a) x (..., n_b), low-to-high coefficients."""
    prod = a[..., :, None] * b[..., None, :]
    return prod.reshape(prod.shape[:-2] + (-1,)) @ conv


def _hidden_z_matrix(M20: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nistér's 3x3 matrix of polynomials in z (B, 3, 3, 5) (low to high degree) annihilating
    ``(x, y, 1)`` at every solution, and a (B,) flag of samples whose elimination succeeded."""
    H, ok = _solve_blocks(M20[:, :, _NISTER_COLS[:10]], M20[:, :, _NISTER_COLS[10:]])
    He, Hf = H[:, _NISTER_ROWS[:, 0]], H[:, _NISTER_ROWS[:, 1]]  # (B, 3, 10) each
    P = np.zeros(H.shape[:1] + (3, 3, 5))
    # row(e) - z row(f): the coefficients of row(f) move up one degree.
    for col, (s, n) in enumerate(((0, 3), (3, 3), (6, 4))):
        P[:, :, col, :n] = He[:, :, s : s + n]
        P[:, :, col, 1 : n + 1] -= Hf[:, :, s : s + n]
    return P, ok


def _det_poly(P: np.ndarray) -> np.ndarray:
    """Determinant (B, 11) of a (B, 3, 3, 5) polynomial matrix whose first two columns have degree <= 3."""
    r0, r1, r2 = P[:, 0], P[:, 1], P[:, 2]
    i, j = [1, 2, 0], [2, 0, 1]
    cof = _pmul(r1[:, i], r2[:, j], _CONV55) - _pmul(r1[:, j], r2[:, i], _CONV55)  # (B, 3, 9)
    return _pmul(r0, cof, _CONV59).sum(axis=1)[:, :11]


def _sturm_chain(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sturm sequence of degree-10 polynomials (B, 11), low to high: (S (B, 11, 11) with row k the
    degree-(10 - k) member, low to high and scaled to unit max-norm; ok (B,) the chain is generic)."""
    B = len(p)
    S = np.zeros((B, 11, 11))
    hi = [p[:, ::-1], (p[:, 1:] * np.arange(1.0, 11.0))[:, ::-1]]  # high-to-low p, p'
    ok = np.ones(B, dtype=bool)
    for _ in range(2, 11):
        a_poly, b_poly = hi[-2], hi[-1]
        with np.errstate(all="ignore"):
            # Remainder of a_poly (degree d + 1) by b_poly (degree d): two steps of long division.
            q1 = a_poly[:, :1] / b_poly[:, :1]
            c = a_poly[:, 1:].copy()
            c[:, :-1] -= q1 * b_poly[:, 1:]
            q0 = c[:, :1] / b_poly[:, :1]
            rem = q0 * b_poly[:, 1:] - c[:, 1:]  # the Sturm member is minus the remainder
            rem /= np.abs(rem).max(axis=1, keepdims=True)
        ok &= np.abs(rem[:, 0]) > _STURM_LEAD_TOL  # (also False for NaN)
        rem[~ok] = 1.0
        hi.append(rem)
    for k, poly in enumerate(hi):
        scaled = poly / np.abs(poly).max(axis=1, keepdims=True) if k < 2 else poly
        S[:, k, : 11 - k] = scaled[:, ::-1]
    return S, ok


def _powers_rows(x: np.ndarray, n: int = 11) -> np.ndarray:
    """(n, K) powers ``x^0 .. x^(n-1)``, one contiguous row each (a row loop of n multiplications is
    ~10x faster than cumprod / vander along a short axis)."""
    pw = np.empty((n, len(x)))
    pw[0] = 1.0
    if n > 1:
        pw[1] = x
    for j in range(2, n):
        np.multiply(pw[j - 1], x, out=pw[j])
    return pw


def _powers(x: np.ndarray, n: int = 11) -> np.ndarray:
    """(K, n) powers ``x^0 .. x^(n-1)`` (a transposed view of :func:`_powers_rows`)."""
    return _powers_rows(x, n).T


def _sign_changes(S: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sign changes (K,) of the Sturm sequences S (K, 11, 11) at the points x (K,)."""
    positive = np.einsum("kij,kj->ki", S, _powers(x)) > 0.0
    return np.count_nonzero(positive[:, 1:] != positive[:, :-1], axis=1)


def _poly_value_slope(c: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, derivatives and rounding-error bounds (K,) of polynomials c (K, 11) (low to high) at x (K,).

    The bound ``16 eps sum |c_j x^j|`` is the size below which a computed value is rounding noise.
    """
    pw = _powers(x)
    f = np.einsum("kj,kj->k", c, pw)
    noise = (16.0 * np.finfo(float).eps) * np.einsum("kj,kj->k", np.abs(c), np.abs(pw))
    df = np.einsum("kj,kj->k", c[:, 1:] * _DEGREES, pw[:, :10])
    return f, df, noise


def _poly_halley(
    cd: np.ndarray, abs_c: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, Halley steps and rounding-error bounds (K,) of polynomials at x (K,).

    Args:
        cd: (3, 11, K) coefficients (low to high) of the polynomials and of their first and second
            derivatives (zero-padded); abs_c: (11, K) absolute coefficients.

    Halley's step ``f / f' / (1 - f f'' / (2 f'^2))`` converges cubically (Newton's step where the
    correction is not small); the bound ``16 eps sum |c_j x^j|`` is the size of rounding noise in f.
    """
    pw = _powers_rows(x)
    f, df, d2f = np.einsum("ijk,jk->ik", cd, pw)
    noise = (16.0 * np.finfo(float).eps) * np.einsum("jk,jk->k", abs_c, np.abs(pw))
    newton = f / df
    corr = 1.0 - 0.5 * newton * d2f / df
    step = np.where((corr > 0.5) & (corr < 2.0), newton / corr, newton)
    return f, step, noise


_DEGREES = np.arange(1.0, 11.0)
_DEGREES2 = np.arange(2.0, 11.0) * np.arange(1.0, 10.0)
#: Sturm counts of every sample are first evaluated on this fixed grid (uniform in ``u = asinh(z)``),
#: one GEMM for the whole batch; it isolates most roots, bisection isolates the rest.
_GRID_U = np.linspace(-8.0, 8.0, 65)
_GRID_POWERS = np.ascontiguousarray(_powers(np.sinh(_GRID_U)).T)  # (11, G)


def _real_roots_sturm(p: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All distinct real roots of degree-10 polynomials, vectorised over the batch.

    The Sturm sequence counts the roots below any point (Sturm's theorem): counts on a fixed grid in
    ``u = asinh(z)`` bracket every root, bisection of the count isolates those sharing a grid cell, and
    safeguarded Halley iterations on the polynomial polish them.

    Args:
        p: (B, 11) coefficients, low to high.
        ok: (B,) samples to solve; the others get no roots.

    Returns:
        (roots (K,), sample (K,) index of each root's polynomial, failed (B,) samples whose roots could
        not be isolated or polished reliably; their roots are not returned).
    """
    B = len(p)
    lead = np.abs(p[:, 10])
    with np.errstate(all="ignore"):
        bound = 1.0 + (np.abs(p[:, :10]).max(axis=1) / lead)  # Cauchy's bound on |roots|
    usable = (lead > _STURM_LEAD_TOL * np.abs(p).max(axis=1)) & (bound < _STURM_MAX_BOUND)
    S, chain_ok = _sturm_chain(np.where(usable[:, None], p, 1.0))
    failed = ok & ~(usable & chain_ok)
    ok = ok & ~failed
    # Sign changes at -inf and +inf from the leading coefficients (degrees 10, 9, ..., 0).
    lead_sign = S[:, np.arange(11), 10 - np.arange(11)] > 0.0
    at_minus = lead_sign ^ (np.arange(11) % 2 == 1)
    v_minus = np.count_nonzero(at_minus[:, 1:] != at_minus[:, :-1], axis=1)
    v_plus = np.count_nonzero(lead_sign[:, 1:] != lead_sign[:, :-1], axis=1)
    count = np.where(ok, v_minus - v_plus, 0)
    # Roots <= each grid point, with the root bound (at least the grid's end) on both sides.
    # Stacked matmul (one small GEMM per sample): a single (11 B, 11) x (11, G) GEMM is large enough for
    # OpenBLAS to use threads, which on a busy machine made it 30x slower.
    values = np.matmul(S, _GRID_POWERS)  # (B, 11, G)
    positive = values > 0.0
    G = len(_GRID_U)
    n_grid = np.empty((B, G + 2), dtype=np.int64)
    n_grid[:, 0] = 0
    n_grid[:, 1:-1] = v_minus[:, None] - np.count_nonzero(positive[:, 1:] != positive[:, :-1], axis=1)
    n_grid[:, -1] = count
    # Roots per grid cell (between consecutive points; cell 0 starts at -inf). Rounding can make the
    # counts non-monotone: such samples go to the action matrix.
    per_cell = np.diff(n_grid, axis=1)  # (B, G + 1)
    monotone = np.all(per_cell >= 0, axis=1)
    failed |= ok & ~monotone
    per_cell[~(ok & monotone)] = 0
    # One entry per root, in ascending order per sample: its sample and the cell that holds it.
    sample, cell = np.divmod(np.repeat(np.arange(per_cell.size), per_cell.ravel()), G + 1)
    sizes = per_cell.ravel()[per_cell.ravel() > 0]
    n_lo, n_hi = n_grid[sample, cell], n_grid[sample, cell + 1]
    k = n_lo + np.arange(len(sample)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # 0-based root rank
    u_end = np.maximum(np.arcsinh(np.where(ok, bound, 1.0)), _GRID_U[-1] + 1.0)[sample]
    u_grid = np.concatenate([[0.0], _GRID_U, [0.0]])
    lo = np.where(cell == 0, -u_end, u_grid[cell])
    hi = np.where(cell == G, u_end, u_grid[cell + 1])
    # p (scaled) at the grid points: a secant step between the bracket's ends starts the iterations closer than
    # the midpoint (NaN at the root bound, where the midpoint is used).
    p_grid = np.full((B, G + 2), np.nan)
    p_grid[:, 1:-1] = values[:, 0]
    p_lo, p_hi = p_grid[sample, cell], p_grid[sample, cell + 1]
    active = np.flatnonzero(n_hi - n_lo != 1)
    p_lo[active] = np.nan
    S_active = S[sample[active]]
    for _ in range(64):
        if len(active) == 0:
            break
        mid = 0.5 * (lo[active] + hi[active])
        n_mid = v_minus[sample[active]] - _sign_changes(S_active, np.sinh(mid))
        right = n_mid >= k[active] + 1  # root k lies at or below mid
        hi[active] = np.where(right, mid, hi[active])
        n_hi[active] = np.where(right, n_mid, n_hi[active])
        lo[active] = np.where(right, lo[active], mid)
        n_lo[active] = np.where(right, n_lo[active], n_mid)
        still = (n_lo[active] != k[active]) | (n_hi[active] != k[active] + 1)
        active, S_active = active[still], S_active[still]
    bad_root = np.zeros(len(k), dtype=bool)
    bad_root[active] = True
    x_lo, x_hi = np.sinh(lo), np.sinh(hi)
    with np.errstate(all="ignore"):
        start = x_lo - p_lo * (x_hi - x_lo) / (p_hi - p_lo)
    start = np.where(np.isfinite(start), start, _log_midpoint(x_lo, x_hi))
    roots = _polish_bracketed(p[sample], x_lo, x_hi, start, bad_root)
    bad_root |= ~np.isfinite(roots)
    failed[sample[bad_root]] = True
    keep = ~failed[sample]
    return roots[keep], sample[keep], failed


def _polish_bracketed(
    c: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray, skip: np.ndarray
) -> np.ndarray:
    """Safeguarded Halley iterations from x (K,) on the polynomials c (K, 11), each with one simple root in
    its bracket [lo, hi]: a step that leaves the bracket or shrinks less than half the previous one
    (Numerical Recipes' rtsafe rule) is replaced by a bisection in ``asinh`` scale. (K,) roots; NaN where
    not converged.

    The working set is compacted only once half of it has converged: gathering every array each
    iteration cost more than iterating on a few converged roots.
    """
    x = x.copy()
    with np.errstate(all="ignore"):
        idx = np.flatnonzero(~skip)
        c = c[idx]
        f_lo = _poly_value_slope(c, lo[idx])[0] > 0.0
        lo, hi, xw = lo[idx], hi[idx], x[idx]
        dx_old = np.abs(hi - lo)
        # Row layout (coefficient index first): contiguous rows for the per-iteration products.
        cd = np.zeros((3, 11, len(idx)))
        cd[0] = c.T
        cd[1, :10] = (c[:, 1:] * _DEGREES).T
        cd[2, :9] = (c[:, 2:] * _DEGREES2).T
        abs_c = np.abs(cd[0])
        live = np.ones(len(idx), dtype=bool)
        for _ in range(_NEWTON_MAX_ITER):
            if not live.any():
                break
            f, step, noise = _poly_halley(cd, abs_c, xw)
            same = (f > 0.0) == f_lo
            lo = np.where(same, xw, lo)
            hi = np.where(same, hi, xw)
            new = xw - step
            accept = (new >= lo) & (new <= hi) & (np.abs(2.0 * step) <= dx_old)
            new = np.where(accept, new, _log_midpoint(lo, hi))
            # Converged: a tiny step, or a value that is rounding noise (an ill-conditioned root cannot be
            # located more precisely on this polynomial; the refinement on the equations takes over).
            done = (np.abs(new - xw) <= _NEWTON_RTOL * (np.abs(xw) + _NEWTON_RTOL)) | (np.abs(f) <= noise)
            new = np.where(live, new, xw)  # converged roots stay where they are
            dx_old = np.abs(new - xw)
            xw = new
            live &= ~done
            if np.count_nonzero(live) < len(live) // 2:
                x[idx] = xw
                keep = np.flatnonzero(live)
                idx, xw, lo, hi, dx_old, f_lo = (
                    idx[keep],
                    xw[keep],
                    lo[keep],
                    hi[keep],
                    dx_old[keep],
                    f_lo[keep],
                )
                cd, abs_c, live = cd[:, :, keep], abs_c[:, keep], live[keep]
        x[idx] = np.where(live, np.nan, xw)  # not converged: reported as failed
    return x


def _log_midpoint(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Midpoints of the brackets in ``u = asinh(z)``: bisection halves wide brackets in log scale (a
    Newton step from far outside the roots of a degree-10 polynomial only shrinks z by 10 %)."""
    return np.sinh(0.5 * (np.arcsinh(lo) + np.arcsinh(hi)))


def _back_substitute(P: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) (K,) from roots z (K,) of det P: ``(x, y, 1)`` spans the null space of P(z) (K, 3, 3, 5),
    the largest cross product of two of its rows (the best conditioned pair), and that pair's sine (K,):
    near zero when P(z) is close to rank 1 and (x, y) are ill-determined."""
    Mz = P[..., 0] + np.einsum("kijd,kd->kij", P[..., 1:], _powers(z, 5)[:, 1:])
    cands = np.stack(
        [_cross3(Mz[:, 0], Mz[:, 1]), _cross3(Mz[:, 0], Mz[:, 2]), _cross3(Mz[:, 1], Mz[:, 2])], 1
    )
    norms_sq = np.einsum("kci,kci->kc", cands, cands)
    best = np.argmax(norms_sq, axis=1)
    rows_sq = np.einsum("kij,kij->ki", Mz, Mz)
    pair_sq = rows_sq[:, [0, 0, 1]] * rows_sq[:, [1, 2, 2]]
    v = cands[np.arange(len(z)), best]
    with np.errstate(all="ignore"):
        sine = np.sqrt(norms_sq[np.arange(len(z)), best] / pair_sq[np.arange(len(z)), best])
        return v[:, 0] / v[:, 2], v[:, 1] / v[:, 2], sine


def _cross3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross products of (K, 3) arrays, written out (``np.cross`` has a large fixed cost)."""
    return np.stack(
        [
            a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
            a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0],
        ],
        axis=1,
    )


def _five_point_sturm(M20: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real solutions by Nistér's degree-10 polynomial: (xyz (K, 3), sample (K,), failed (B,)).

    ``failed`` marks samples whose polynomial or Sturm chain is numerically degenerate (their solutions
    are left to :func:`_five_point_action`); degenerate samples whose elimination itself fails are
    neither solved nor failed (they have no solution in either method).
    """
    P, ok = _hidden_z_matrix(M20)
    p = _det_poly(np.where(ok[:, None, None, None], P, 0.0))
    z, sample, failed = _real_roots_sturm(p, ok)
    x, y, sine = _back_substitute(P[sample], z)
    xyz = np.stack([x, y, z], axis=1)
    # Roots whose rounding-error bound on the polynomial exceeds _REFINE_RTOL are refined on the original
    # equations (a few percent of them; refining all would cost as much as the root finding).
    _, slope, noise = _poly_value_slope(p[sample], z)
    with np.errstate(all="ignore"):
        weak = ~(noise <= _REFINE_RTOL * np.abs(slope) * (np.abs(z) + 1e-3)) | ~(sine > _REFINE_MIN_SINE)
    if weak.any():
        xyz[weak] = _refine_solutions(M20[sample[weak]], xyz[weak])
    return xyz, sample, failed


_EXP3_ARR = np.array(_EXP3)  # (20, 3) exponents of x, y, z
_EXP3_DOWN = np.maximum(_EXP3_ARR - 1, 0)


def _equation_residuals(
    M: np.ndarray, xyz: np.ndarray, jacobian: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Residuals (K, 10) of the ten cubic constraints M (K, 10, 20) at xyz (K, 3), and the Jacobian
    (K, 10, 3) when asked."""
    pw = np.ones(xyz.shape + (4,))
    pw[..., 1] = xyz
    pw[..., 2] = xyz * xyz
    pw[..., 3] = pw[..., 2] * xyz
    e0, e1, e2 = _EXP3_ARR.T
    px, py, pz = pw[:, 0, e0], pw[:, 1, e1], pw[:, 2, e2]  # (K, 20) each
    r = np.einsum("kij,kj->ki", M, px * py * pz)
    if not jacobian:
        return r, None
    d0, d1, d2 = _EXP3_DOWN.T
    dmono = np.stack(
        [e0 * pw[:, 0, d0] * py * pz, e1 * px * pw[:, 1, d1] * pz, e2 * px * py * pw[:, 2, d2]], -1
    )
    return r, M @ dmono


def _refine_solutions(M: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """One Gauss-Newton step of the solutions xyz (K, 3) on their ten cubic constraints M (K, 10, 20),
    kept where it lowers the residual. The degree-10 polynomial loses precision on ill-conditioned
    samples (Stewénius et al. 2006); one step on the original equations restores it."""
    with np.errstate(all="ignore"):
        r, J = _equation_residuals(M, xyz, True)
        JtJ = np.swapaxes(J, 1, 2) @ J  # (K, 3, 3), symmetric
        g = np.einsum("kiv,ki->kv", J, r)
        a0, a1, a2 = JtJ[:, 0], JtJ[:, 1], JtJ[:, 2]
        c0, c1, c2 = _cross3(a1, a2), _cross3(a2, a0), _cross3(a0, a1)  # inverse = [c0 c1 c2] / det
        det = np.einsum("ki,ki->k", a0, c0)
        step = (c0 * g[:, :1] + c1 * g[:, 1:2] + c2 * g[:, 2:]) / det[:, None]
        new = xyz - step
        r_new = _equation_residuals(M, new, False)[0]
        better = np.isfinite(new).all(axis=1) & (
            np.einsum("ki,ki->k", r_new, r_new) < np.einsum("ki,ki->k", r, r)
        )
    return np.where(better[:, None], new, xyz)


def essential_5point_hypotheses(xn1: np.ndarray, xn2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The real five-point solutions of a batch of samples, for RANSAC: no (B, 10, 3, 3) candidates.

    Nistér (2004): the 4-dimensional null space ``E = x X + y Y + z Z + W`` of the five epipolar
    constraints; the ten cubic constraints ``det E = 0`` and ``2 E E^T E - tr(E E^T) E = 0``; Gauss-Jordan
    elimination and the hidden-variable 3x3 matrix in z, whose determinant is a degree-10 polynomial.
    Only its real roots are computed (Sturm sequences on a grid, bisection, safeguarded Halley
    iterations, one Gauss-Newton step on the original equations for ill-conditioned roots): 1.6-1.7x
    cheaper per sample on batches of 256 or more than the eigen-decomposition of the 10x10 action matrix
    (Stewénius et al. 2006), which finds all ten complex solutions. Samples whose polynomial is
    numerically degenerate, and batches under ``_STURM_MIN_BATCH`` samples, use that action matrix.

    Args:
        xn1, xn2: (B, 5, 2) normalised image coordinates.

    Returns:
        (E (M, 3, 3) unit-Frobenius solutions, sample (M,) index of the sample each one solves), ordered
        by sample.
    """
    basis, M20 = _five_point_system(xn1, xn2)
    if len(M20) < _STURM_MIN_BATCH:
        # The Sturm path's ~2 ms of fixed NumPy-call overhead outweighs its per-sample gain on small
        # batches (RANSAC's first ones): the action matrix gives the same solutions there.
        failed = np.ones(len(M20), dtype=bool)
        xyz, sample = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    else:
        xyz, sample, failed = _five_point_sturm(M20)
    if failed.any():
        fb = np.flatnonzero(failed)
        xyz_fb, valid_fb = _five_point_action(M20[fb])
        s_fb, r_fb = np.nonzero(valid_fb)
        xyz = np.concatenate([xyz, xyz_fb[s_fb, r_fb]])
        sample = np.concatenate([sample, fb[s_fb]])
        order = np.argsort(sample, kind="stable")
        xyz, sample = xyz[order], sample[order]
    E = np.einsum("kj,kjn->kn", xyz, basis[sample, :3]) + basis[sample, 3]
    norms = np.sqrt(np.einsum("kn,kn->k", E, E))
    good = np.isfinite(norms) & (norms > 0)
    return (E[good] / norms[good, None]).reshape(-1, 3, 3), sample[good]


def essential_5point_batch(xn1: np.ndarray, xn2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Five-point relative pose (Nistér 2004) for a batch of minimal samples, in fixed-size arrays.

    See :func:`essential_5point_hypotheses` for the method; the real solutions of sample b fill the
    first slots of row b.

    Args:
        xn1, xn2: (B, 5, 2) normalised image coordinates.

    Returns:
        (E (B, 10, 3, 3) unit-Frobenius candidates, valid (B, 10) bool for the real solutions).
    """
    B = xn1.shape[0]
    E_h, sample = essential_5point_hypotheses(xn1, xn2)
    counts = np.bincount(sample, minlength=B)
    slot = np.arange(len(sample)) - np.repeat(np.cumsum(counts) - counts, counts)
    E = np.zeros((B, 10, 3, 3))
    valid = np.zeros((B, 10), dtype=bool)
    E[sample, slot] = E_h
    valid[sample, slot] = True
    return E, valid


def essential_5point(xn1: np.ndarray, xn2: np.ndarray) -> list[np.ndarray]:
    """All real essential matrices (up to 10) through exactly 5 normalised correspondences.

    Args:
        xn1, xn2: (5, 2) normalised image coordinates (``K^-1 x``).

    Returns:
        List of (3, 3) unit-Frobenius-norm essential matrices.
    """
    xn1, xn2 = _check_pair(xn1, xn2, 5, exact=5)
    E, valid = essential_5point_batch(xn1[None], xn2[None])
    return [E[0, i] for i in np.flatnonzero(valid[0])]


# ----------------------------------------------------------------------------------------------------
# pose from E
# ----------------------------------------------------------------------------------------------------
_W = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _essential_factors(E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``R1 = U W V^T``, ``R2 = U W^T V^T`` and the unit ``t = u3`` of each essential matrix (..., 3, 3)."""
    U, _, Vt = np.linalg.svd(E)
    # E is defined up to sign, so flipping U or V keeps it valid and makes both proper rotations.
    U = np.where(np.linalg.det(U)[..., None, None] < 0, -U, U)
    Vt = np.where(np.linalg.det(Vt)[..., None, None] < 0, -Vt, Vt)
    t = U[..., :, 2]
    return U @ _W @ Vt, U @ _W.T @ Vt, t / np.linalg.norm(t, axis=-1, keepdims=True)


def decompose_essential(E: np.ndarray) -> list[Rigid3d]:
    """The four ``cam2_from_cam1`` candidates ``(U W V^T, ±u3)``, ``(U W^T V^T, ±u3)`` (H&Z Result 9.19).

    Translations have unit norm; exactly one candidate puts the points in front of both cameras.
    """
    E = _check_matrix(E, "E")
    if E.shape != (3, 3):
        raise InputError(f"E must be (3, 3), got {E.shape}")
    R1, R2, t = _essential_factors(E)
    return [Rigid3d(R1, t), Rigid3d(R1, -t), Rigid3d(R2, t), Rigid3d(R2, -t)]


def cheirality_mask(
    cam2_from_cam1: Rigid3d, xn1: np.ndarray, xn2: np.ndarray, *, max_depth: float = 1000.0
) -> np.ndarray:
    """(N,) True where the triangulated point lies in front of both cameras (H&Z 9.6.3).

    Points are triangulated by the two-ray midpoint method (closed form, see :func:`_ray_depths`).

    Args:
        cam2_from_cam1: relative pose; ``max_depth`` is in units of its translation.
        xn1, xn2: (N, 2) normalised coordinates.
        max_depth: points farther than this count as at infinity (not in front), as in COLMAP, so
            that near-parallel rays do not vote.
    """
    pos, _ = _front_masks(cam2_from_cam1.rotation, cam2_from_cam1.translation, xn1, xn2, max_depth)
    return pos


def _ray_depths(
    R: np.ndarray, t: np.ndarray, xn1: np.ndarray, xn2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Depths ``(z1, z2)`` (N,) of the midpoint triangulation of the rays ``f1 = (xn1, 1)``, ``f2 = (xn2, 1)``.

    ``z1, z2`` minimise ``|z1 R f1 + t - z2 f2|^2`` (closest points of the two rays, expressed in camera 2),
    a 2x2 linear system solved in closed form for all points at once; z1 and z2 are the depths in camera
    1 and 2 because both rays have unit z. Parallel rays give infinite (or NaN) depths. Same cheirality
    decision as a DLT triangulation for any point not at infinity, at a fraction of the cost. ``R`` (3, 3)
    and ``t`` (3,) are one pose, or (N, 3, 3) and (N, 3) one per correspondence.
    """
    if R.ndim == 2:  # one pose: a GEMM
        u = xn1 @ R[:, :2].T + R[:, 2]  # R f1, (N, 3)
    else:
        u = np.einsum("nij,nj->ni", R[:, :, :2], xn1) + R[:, :, 2]
    a = np.einsum("ij,ij->i", u, u)
    b = u[:, 0] * xn2[:, 0] + u[:, 1] * xn2[:, 1] + u[:, 2]
    c = xn2[:, 0] ** 2 + xn2[:, 1] ** 2 + 1.0
    d = u @ t if t.ndim == 1 else np.einsum("nj,nj->n", u, t)
    e = xn2[:, 0] * t[..., 0] + xn2[:, 1] * t[..., 1] + t[..., 2]
    det = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b * e - c * d) / det, (b * d - a * e) / -det


def _front_masks(
    R: np.ndarray, t: np.ndarray, xn1: np.ndarray, xn2: np.ndarray, max_depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cheirality masks of ``(R, t)`` and ``(R, -t)`` from a single triangulation (shapes: _ray_depths).

    Negating t negates both midpoint depths, so the depths of the ``-t`` candidate are the negated
    depths of the ``t`` candidate.
    """
    z1, z2 = _ray_depths(R, t, np.asarray(xn1, dtype=np.float64), np.asarray(xn2, dtype=np.float64))
    lim = max_depth * np.linalg.norm(t, axis=-1)
    # NaN / inf depths (parallel rays) fail both comparisons below.
    near = (np.abs(z1) < lim) & (np.abs(z2) < lim)
    pos = near & (z1 > 0) & (z2 > 0)
    neg = near & (z1 < 0) & (z2 < 0)
    return pos, neg


def recover_pose(
    E: np.ndarray, xn1: np.ndarray, xn2: np.ndarray, *, max_depth: float = 1000.0
) -> tuple[Rigid3d, np.ndarray]:
    """Pick the decomposition of ``E`` that puts most points in front of both cameras (cheirality).

    Points are triangulated with the midpoint method (:func:`cheirality_mask`); two triangulations
    cover the four candidates of :func:`decompose_essential` (H&Z Result 9.19).

    Args:
        E: (3, 3) essential matrix.
        xn1, xn2: (N, 2) normalised coordinates of (ideally inlier) correspondences, N >= 1.
        max_depth: see :func:`cheirality_mask` (in baselines).

    Returns:
        (cam2_from_cam1 with unit translation, (N,) bool mask of points in front of both cameras).
    """
    xn1, xn2 = _check_pair(xn1, xn2, 1)
    R1, R2, t = _essential_factors(_check_matrix(E, "E"))
    best: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
    for R in (R1, R2):
        pos, neg = _front_masks(R, t, xn1, xn2, max_depth)
        for t_sign, mask in ((t, pos), (-t, neg)):
            count = int(np.count_nonzero(mask))
            if best is None or count > best[0]:  # ties: the first candidate, as recover_poses
                best = (count, R, t_sign, mask)
    return Rigid3d(best[1], best[2]), best[3]


def recover_poses(
    E: np.ndarray, xn1: np.ndarray, xn2: np.ndarray, pair: np.ndarray, *, max_depth: float = 1000.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`recover_pose` of many pairs at once: the correspondences of all pairs in one array.

    Args:
        E: (P, 3, 3) essential matrix of each pair.
        xn1, xn2: (N, 2) normalised coordinates of the correspondences of every pair.
        pair: (N,) pair index in [0, P) of each correspondence.
        max_depth: see :func:`cheirality_mask` (in baselines).

    Returns:
        (rotations (P, 3, 3), unit translations (P, 3), (N,) bool mask of correspondences in front of
        both cameras of their pair's chosen pose). Ties go to the first of ``(R1, t), (R1, -t), (R2, t),
        (R2, -t)``, as in :func:`recover_pose`.
    """
    num_pairs = len(E)
    R1, R2, t = _essential_factors(np.asarray(E, dtype=np.float64))
    masks = []
    for R in (R1, R2):
        masks.extend(_front_masks(R[pair], t[pair], xn1, xn2, max_depth))
    counts = np.stack([np.bincount(pair[m], minlength=num_pairs) for m in masks])  # (4, P)
    best = np.argmax(counts, axis=0)  # the first of equal counts
    rotations = np.where((best < 2)[:, None, None], R1, R2)
    translations = np.where((best % 2 == 0)[:, None], t, -t)
    return rotations, translations, np.stack(masks)[best[pair], np.arange(len(pair))]


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def _lines(
    F: np.ndarray, x1: np.ndarray, x2: np.ndarray, pair: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epipolar lines ``F x1`` (..., 3, N), ``F^T x2`` (..., 3, N) and ``x2^T F x1`` (..., N).

    With ``pair`` (N,), correspondence k uses ``F[pair[k]]`` of the stack: (3, N), (3, N), (N,).
    """
    x1h = _homogeneous(x1).T  # (3, N)
    x2h = _homogeneous(x2).T
    if pair is None:
        Fx1 = F @ x1h
        Ftx2 = np.swapaxes(F, -1, -2) @ x2h
    else:
        F_k = F[pair]
        Fx1 = np.einsum("kij,jk->ik", F_k, x1h)
        Ftx2 = np.einsum("kji,jk->ik", F_k, x2h)
    algebraic = np.sum(x2h * Fx1, axis=-2)
    return Fx1, Ftx2, algebraic


def sampson_distance_sq(
    F: np.ndarray, x1: np.ndarray, x2: np.ndarray, *, pair: np.ndarray | None = None
) -> np.ndarray:
    """Squared Sampson distance (H&Z eq. 11.9), first-order geometric error in the units of x.

    Args:
        F: (3, 3) or a stack (M, 3, 3) of fundamental (or essential, with normalised points) matrices.
        x1, x2: (N, 2) corresponding points.
        pair: (N,) index into the stack ``F`` of each correspondence (the correspondences of many pairs
            at once); None: every matrix scores every correspondence.

    Returns:
        (N,) or (M, N) squared distances ((N,) with ``pair``); inf where the gradient vanishes (point on
        both epipoles).
    """
    F = _check_matrix(F, "F")
    x1, x2 = _check_pair(x1, x2, 0)
    Fx1, Ftx2, algebraic = _lines(F, x1, x2, pair)
    den = Fx1[..., 0, :] ** 2 + Fx1[..., 1, :] ** 2 + Ftx2[..., 0, :] ** 2 + Ftx2[..., 1, :] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, algebraic**2 / den, np.inf)


def symmetric_epipolar_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Mean of the two point-to-epipolar-line distances ``(d(x2, F x1) + d(x1, F^T x2)) / 2``.

    The symmetric epipolar error of H&Z eq. 11.10 is the sum of the squares of these two distances.

    Args:
        F: (3, 3) or (M, 3, 3).
        x1, x2: (N, 2) corresponding points (pixels).

    Returns:
        (N,) or (M, N) distances in the units of x.
    """
    F = _check_matrix(F, "F")
    x1, x2 = _check_pair(x1, x2, 0)
    Fx1, Ftx2, algebraic = _lines(F, x1, x2)
    n2 = np.hypot(Fx1[..., 0, :], Fx1[..., 1, :])
    n1 = np.hypot(Ftx2[..., 0, :], Ftx2[..., 1, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 0.5 * np.abs(algebraic) * (1.0 / n2 + 1.0 / n1)
    return np.where(np.isfinite(d), d, np.inf)
