"""Epipolar geometry: fundamental and essential matrices, minimal solvers, pose decomposition, errors.

Conventions: ``x2_h^T F x1_h = 0`` for corresponding pixels ``x1`` (image 1) and ``x2`` (image 2), and
``E = [t]_x R`` for ``cam2_from_cam1 = (R, t)`` acting on normalised (``K^-1``) coordinates. Pixels follow
the OpenCV origin. Every solver is vectorised over points; the minimal solvers also have ``*_batch``
forms vectorised over many minimal samples at once, which is what RANSAC calls
(``fundamental_7point_hypotheses`` returns only the real seven-point solutions, from precomputed rows).
Cheirality uses closed-form midpoint depths of the two rays (no DLT triangulation).

References: Hartley & Zisserman (H&Z), 2nd ed.: 11.1-11.2 (eight-point with normalisation),
11.1.2 (seven-point), 9.6 (essential matrix and its decomposition), 11.4.3 (Sampson distance).
Five-point: Nistér 2004, in the Gröbner-basis / action-matrix form of Stewénius, Engels & Nistér 2006.
"""

from __future__ import annotations

import itertools

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, skew

__all__ = [
    "hartley_normalization",
    "epipolar_rows",
    "fundamental_8point",
    "fundamental_7point",
    "fundamental_7point_batch",
    "fundamental_7point_from_rows",
    "fundamental_7point_hypotheses",
    "essential_8point",
    "essential_8point_unchecked",
    "fundamental_8point_unchecked",
    "essential_5point",
    "essential_5point_batch",
    "project_to_essential",
    "essential_from_fundamental",
    "fundamental_from_essential",
    "essential_from_pose",
    "decompose_essential",
    "recover_pose",
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
def _enforce_rank2(F: np.ndarray) -> np.ndarray:
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
    Fn = _enforce_rank2(vecs[:, 0].reshape(3, 3))
    return _normalize_frobenius(T2.T @ Fn @ T1)


_CUBIC_PHASES = (2.0 * np.pi / 3.0) * np.arange(3)
#: fixed generic orthogonal change of basis for the seven-point null-space solve (see ``_null_space_7``);
#: any rotation does, a seeded one keeps results reproducible.
_NULL_BASIS = np.linalg.qr(np.random.default_rng(7).standard_normal((9, 9)))[0]
#: a null-space solve whose coefficients exceed this is ill-conditioned and redone by QR.
_NULL_MAX_COEFF = 1e6


def _null_space_7(A: np.ndarray) -> np.ndarray:
    """(B, 7, 9) rank-7 systems -> (B, 9, 2) spanning their null spaces.

    In the rotated unknowns ``g = P^T f`` (P = ``_NULL_BASIS``) the null space is ``[-A1^-1 A2; I]`` with
    ``A P = [A1 | A2]``: one batched LU solve of 7x7 systems, about 4x cheaper than the complete QR of
    every 9x7 transpose. The generic rotation P matters: in the original unknowns, forward motion
    (``F[2, 1] = F[2, 2] = 0``) would make A1 singular. Samples whose A1 is (nearly) singular anyway are
    redone with QR, so degenerate samples behave exactly as before.
    """
    Ap = A @ _NULL_BASIS
    B = len(A)
    N = np.empty((B, 9, 2))
    N[:, 7:] = np.eye(2)
    with np.errstate(all="ignore"):  # near-singular blocks give huge / NaN values, redone below
        try:
            N[:, :7] = -np.linalg.solve(Ap[:, :, :7], Ap[:, :, 7:])
            bad = ~(np.abs(N[:, :7]).max(axis=(1, 2)) <= _NULL_MAX_COEFF)  # also catches NaN
        except np.linalg.LinAlgError:  # an exactly singular block fails the whole batched call
            bad = np.ones(B, dtype=bool)
        N = _NULL_BASIS @ N
    if bad.any():
        Q, _ = np.linalg.qr(np.swapaxes(A[bad], 1, 2), mode="complete")  # last 2 columns: null space
        N[bad] = Q[:, :, 7:]
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
    coeffs = np.abs(np.stack([a, b, c, d]))
    ok = coeffs[0] > 1e-12 * (coeffs.max(axis=0) + 1e-300)
    a_safe = np.where(ok, a, 1.0)
    p2, p1, p0 = b / a_safe, c / a_safe, d / a_safe
    shift = p2 / 3.0
    # Depressed cubic y^3 + P y + Q = 0 with t = y - p2 / 3.
    P = p1 - p2 * shift
    Q = (2.0 * shift * shift - p1) * shift + p0
    disc = (0.5 * Q) ** 2 + (P / 3.0) ** 3
    one = disc > 0.0
    sq = np.sqrt(np.where(one, disc, 0.0))
    y_one = np.cbrt(-0.5 * Q + sq) + np.cbrt(-0.5 * Q - sq)
    P_neg = np.where(one, -1.0, np.minimum(P, -1e-300))  # P <= 0 whenever disc <= 0
    r = 2.0 * np.sqrt(-P_neg / 3.0)
    phi = np.arccos(np.clip(1.5 * Q / P_neg * np.sqrt(-3.0 / P_neg), -1.0, 1.0)) / 3.0
    y = r[:, None] * np.cos(phi[:, None] - _CUBIC_PHASES)
    y[one, 0] = y_one[one]
    t = y - shift[:, None]
    # One Newton step on the monic cubic restores the precision lost in the closed form (it squares the
    # relative error; a second step changed nothing measurable).
    f = ((t + p2[:, None]) * t + p1[:, None]) * t + p0[:, None]
    df = (3.0 * t + 2.0 * p2[:, None]) * t + p1[:, None]
    step = np.divide(f, df, out=np.zeros_like(f), where=df != 0.0)
    t -= np.where(np.isfinite(step), step, 0.0)
    valid = ok[:, None] & np.isfinite(t)
    valid[one, 1:] = False
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


def essential_5point_batch(xn1: np.ndarray, xn2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Five-point relative pose (Nistér 2004; Stewénius et al. 2006) for a batch of minimal samples.

    Steps per sample: the 4-dimensional null space ``E = x X + y Y + z Z + W`` of the five epipolar
    constraints; the ten cubic constraints ``det E = 0`` and ``2 E E^T E - tr(E E^T) E = 0`` (H&Z 9.6,
    Result 9.18's trace identity) in the 20 monomials of degree <= 3; Gauss-Jordan elimination of the
    10 degree-3 monomials; the 10x10 action matrix of multiplication by ``x`` on the quotient-ring basis
    {x^2, xy, ..., 1}; its eigenvectors are the basis monomials evaluated at the (up to 10) solutions.

    Args:
        xn1, xn2: (B, 5, 2) normalised image coordinates.

    Returns:
        (E (B, 10, 3, 3) unit-Frobenius candidates, valid (B, 10) bool for the real solutions).
    """
    B = xn1.shape[0]
    A = epipolar_rows(xn1, xn2)  # (B, 5, 9)
    # Null space of A: the last 4 columns of the complete QR of A^T (4x cheaper than a batched SVD).
    Q, _ = np.linalg.qr(np.swapaxes(A, 1, 2), mode="complete")
    basis = np.swapaxes(Q[:, :, 5:9], 1, 2)  # (B, 4, 9): X, Y, Z, W
    # E as a (3, 3) matrix of linear polynomials in [x, y, z, 1].
    Ep = np.moveaxis(basis, 1, -1).reshape(B, 3, 3, 4)

    # E E^T (quadratic entries) and its trace.
    EEt = _poly_mul11(Ep[:, :, None, :, :], Ep[:, None, :, :, :]).sum(axis=3)  # (B, 3, 3, 10)
    trace = EEt[:, 0, 0] + EEt[:, 1, 1] + EEt[:, 2, 2]  # (B, 10)
    # 2 E E^T E - tr(E E^T) E: nine cubic constraints.
    # The product map is linear: summing the (i, k) x (k, j) coefficient products over k before mapping
    # them to monomials does a third of the work of mapping every term.
    prod = (EEt[:, :, :, None, :, None] * Ep[:, None, :, :, None, :]).sum(axis=2)  # (B, 3, 3, 10, 4)
    EEtE = prod.reshape(B, 3, 3, 40) @ _T21  # (B, 3, 3, 20)
    trE = _poly_mul21(trace[:, None, None, :], Ep)  # (B, 3, 3, 20)
    C = (2.0 * EEtE - trE).reshape(B, 9, 20)
    # det E = row0 . (row1 x row2).
    r1, r2 = Ep[:, 1], Ep[:, 2]
    cross = np.stack(
        [
            _poly_mul11(r1[:, 1], r2[:, 2]) - _poly_mul11(r1[:, 2], r2[:, 1]),
            _poly_mul11(r1[:, 2], r2[:, 0]) - _poly_mul11(r1[:, 0], r2[:, 2]),
            _poly_mul11(r1[:, 0], r2[:, 1]) - _poly_mul11(r1[:, 1], r2[:, 0]),
        ],
        axis=1,
    )  # (B, 3, 10)
    det = (cross[:, :, :, None] * Ep[:, 0, :, None, :]).sum(axis=1).reshape(B, 40) @ _T21  # (B, 20)
    M20 = np.concatenate([det[:, None, :], C], axis=1)  # (B, 10, 20)

    # Gauss-Jordan: degree-3 monomials = -G @ basis monomials. Singular blocks (degenerate samples)
    # are replaced by identity and flagged invalid.
    lead = M20[:, :, :10]
    try:
        # An exactly singular block (degenerate sample) fails the whole batched solve: only then are the
        # determinants computed to find and replace such blocks.
        G = np.linalg.solve(lead, M20[:, :, 10:])
        cond_ok = np.ones(B, dtype=bool)
    except np.linalg.LinAlgError:
        cond_ok = np.abs(np.linalg.det(lead)) > 1e-300
        lead = np.where(cond_ok[:, None, None], lead, np.eye(10))
        G = np.linalg.solve(lead, M20[:, :, 10:])
    action = _ACT_S @ (-G) + _ACT_L  # (B, 10, 10)
    ok_finite = np.all(np.isfinite(action), axis=(1, 2)) & cond_ok
    action = np.where(ok_finite[:, None, None], action, np.eye(10))
    w, V = np.linalg.eig(action)  # columns of V: basis monomials at each solution
    ix, iy, iz, i1 = _ACT_IDX
    one = V[:, i1, :]
    good_one = np.abs(one) > 1e-12 * np.max(np.abs(V), axis=1)
    one = np.where(good_one, one, 1.0)
    x = (V[:, ix, :] / one).real
    y = (V[:, iy, :] / one).real
    z = (V[:, iz, :] / one).real
    real = np.abs(w.imag) <= 1e-6 * (1.0 + np.abs(w.real))
    valid = real & good_one & ok_finite[:, None]
    coeffs = np.stack([x, y, z, np.ones_like(x)], axis=-1)  # (B, 10, 4)
    E = np.einsum("bsk,bkn->bsn", coeffs, basis).reshape(B, 10, 3, 3)
    norms = np.linalg.norm(E, axis=(-2, -1), keepdims=True)
    valid &= np.isfinite(norms[..., 0, 0]) & (norms[..., 0, 0] > 0)
    E = E / np.where(norms > 0, norms, 1.0)
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


def decompose_essential(E: np.ndarray) -> list[Rigid3d]:
    """The four ``cam2_from_cam1`` candidates ``(U W V^T, ±u3)``, ``(U W^T V^T, ±u3)`` (H&Z Result 9.19).

    Translations have unit norm; exactly one candidate puts the points in front of both cameras.
    """
    E = _check_matrix(E, "E")
    if E.shape != (3, 3):
        raise InputError(f"E must be (3, 3), got {E.shape}")
    U, _, Vt = np.linalg.svd(E)
    # E is defined up to sign, so flipping U or V keeps it valid and makes both proper rotations.
    if np.linalg.det(U) < 0:
        U = -U
    if np.linalg.det(Vt) < 0:
        Vt = -Vt
    R1 = U @ _W @ Vt
    R2 = U @ _W.T @ Vt
    t = U[:, 2] / np.linalg.norm(U[:, 2])
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
    return _front_masks(cam2_from_cam1, xn1, xn2, max_depth)[0]


def _ray_depths(pose: Rigid3d, xn1: np.ndarray, xn2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depths ``(z1, z2)`` (N,) of the midpoint triangulation of the rays ``f1 = (xn1, 1)``, ``f2 = (xn2, 1)``.

    ``z1, z2`` minimise ``|z1 R f1 + t - z2 f2|^2`` (closest points of the two rays, expressed in camera 2),
    a 2x2 linear system solved in closed form for all points at once; z1 and z2 are the depths in camera
    1 and 2 because both rays have unit z. Parallel rays give infinite (or NaN) depths. Same cheirality
    decision as a DLT triangulation for any point not at infinity, at a fraction of the cost.
    """
    R, t = pose.rotation, pose.translation
    u = xn1 @ R[:, :2].T + R[:, 2]  # R f1, (N, 3)
    a = np.einsum("ij,ij->i", u, u)
    b = u[:, 0] * xn2[:, 0] + u[:, 1] * xn2[:, 1] + u[:, 2]
    c = xn2[:, 0] ** 2 + xn2[:, 1] ** 2 + 1.0
    d = u @ t
    e = xn2[:, 0] * t[0] + xn2[:, 1] * t[1] + t[2]
    det = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b * e - c * d) / det, (b * d - a * e) / -det


def _front_masks(
    pose: Rigid3d, xn1: np.ndarray, xn2: np.ndarray, max_depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cheirality masks of ``(R, t)`` and ``(R, -t)`` from a single triangulation.

    Negating t negates both midpoint depths, so the depths of the ``-t`` candidate are the negated
    depths of the ``t`` candidate.
    """
    z1, z2 = _ray_depths(pose, np.asarray(xn1, dtype=np.float64), np.asarray(xn2, dtype=np.float64))
    lim = max_depth * np.linalg.norm(pose.translation)
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
    candidates = decompose_essential(E)
    best: tuple[int, Rigid3d, np.ndarray] | None = None
    for i in (0, 2):  # (R1, +-t) and (R2, +-t)
        pos, neg = _front_masks(candidates[i], xn1, xn2, max_depth)
        for pose, mask in ((candidates[i], pos), (candidates[i + 1], neg)):
            count = int(np.count_nonzero(mask))
            if best is None or count > best[0]:
                best = (count, pose, mask)
    return best[1], best[2]


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def _lines(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epipolar lines ``F x1`` (..., 3, N), ``F^T x2`` (..., 3, N) and ``x2^T F x1`` (..., N)."""
    x1h = _homogeneous(x1).T  # (3, N)
    x2h = _homogeneous(x2).T
    Fx1 = F @ x1h
    Ftx2 = np.swapaxes(F, -1, -2) @ x2h
    algebraic = np.sum(x2h * Fx1, axis=-2)
    return Fx1, Ftx2, algebraic


def sampson_distance_sq(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Squared Sampson distance (H&Z eq. 11.9), first-order geometric error in the units of x.

    Args:
        F: (3, 3) or a stack (M, 3, 3) of fundamental (or essential, with normalised points) matrices.
        x1, x2: (N, 2) corresponding points.

    Returns:
        (N,) or (M, N) squared distances; inf where the gradient vanishes (point on both epipoles).
    """
    F = _check_matrix(F, "F")
    x1, x2 = _check_pair(x1, x2, 0)
    Fx1, Ftx2, algebraic = _lines(F, x1, x2)
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
