"""Metric upgrade of a projective reconstruction by autocalibration (absolute dual quadric).

Hartley & Zisserman (2nd ed.), ch. 19: the absolute dual quadric ``Q*`` (4x4, symmetric, rank 3,
positive semi-definite in a metric frame) projects to the dual image of the absolute conic of every view,
``w*_i ~ P_i Q* P_i^T = K_i K_i^T`` (eq. 19.6). With cameras whose intrinsics have zero skew, unit aspect
ratio and a principal point near the image centre, each view gives four linear equations on the ten entries
of ``Q*`` after the pixels are normalised so that the principal point guess is the origin (H&Z 19.3.2,
table 19.1): ``w*_12 = w*_13 = w*_23 = 0`` and ``w*_11 = w*_22``. The linear estimate is made rank 3 and then
refined nonlinearly with one shared K (focal, principal point; zero skew, unit aspect) and the plane at
infinity as unknowns, minimising the normalised algebraic residual ``K K^T / |K K^T| - P Q* P^T / |P Q* P^T|``
(H&Z 19.3.3). The upgrading homography ``H`` (``Q* = H diag(1, 1, 1, 0) H^T``) takes the cameras to a
metric frame, ``P_i H ~ K [R_i | t_i]`` (H&Z 19.1, result 19.2), and points by ``X_metric = H^-1 X``.

The remaining metric ambiguity (a similarity) is harmless, except its mirror part: ``Q*`` is the same for a
reflected frame, so the sign is chosen where the points lie in front of the cameras (cheirality, H&Z 21).

Pure numpy / scipy maths; the reader of the Oxford dinosaur's ``dino_Ps.mat`` that uses it is
``geomvision.evaluation.read_projective_cameras_metric``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from geomvision.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "AutocalibrationOptions",
    "AutocalibrationResult",
    "autocalibrate_cameras",
    "linear_absolute_dual_quadric",
    "upgrading_homography",
    "decompose_projection",
]


@dataclass(frozen=True, kw_only=True)
class AutocalibrationOptions:
    """Options of ``autocalibrate_cameras``."""

    refine: bool = True
    """Refine the linear absolute dual quadric nonlinearly with one shared K (focal, principal point)."""
    principal_point_weight: float = 1.0
    """Weight of the linear equations ``w*_13 = w*_23 = 0`` (principal point at the image centre) against
    those of zero skew and unit aspect (weight 1): the principal point is only known roughly (H&Z 19.3.2)."""
    max_iterations: int = 200
    """Most function evaluations of the nonlinear refinement, per free parameter."""

    def __post_init__(self) -> None:
        if not (self.principal_point_weight > 0.0 and np.isfinite(self.principal_point_weight)):
            raise ValueError(
                f"principal_point_weight must be a positive number, got {self.principal_point_weight}"
            )
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")


@dataclass(frozen=True, kw_only=True)
class AutocalibrationResult:
    """Metric cameras of a projective reconstruction.

    Attributes:
        success: False when the quadric is degenerate (fewer than 3 views, not rank 3 / not semi-definite).
        reason: why it failed ("" on success).
        world_from_projective: H (4, 4): metric cameras ``P_i H``, metric points ``H^-1 X``.
        absolute_dual_quadric: Q* (4, 4) in the input (projective) frame, scaled to unit Frobenius norm.
        K: (N, 3, 3) per-camera intrinsics from the RQ decomposition of ``P_i H`` (pixels).
        K_shared: (3, 3) the shared K of the nonlinear refinement (zero skew, unit aspect), pixels.
        cam_from_world_R: (N, 3, 3) rotations (det +1) of ``P_i H ~ K_i [R_i | t_i]``.
        cam_from_world_t: (N, 3) translations, metric frame (scale arbitrary).
        residual: RMS over the views of the differences to the shared K (skew / f, fx / fy - 1,
            principal point offset / f, log focal ratio): 0 for exact cameras.
    """

    success: bool
    reason: str = ""
    world_from_projective: np.ndarray = field(default_factory=lambda: np.eye(4))
    absolute_dual_quadric: np.ndarray = field(default_factory=lambda: np.zeros((4, 4)))
    K: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    K_shared: np.ndarray = field(default_factory=lambda: np.eye(3))
    cam_from_world_R: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    cam_from_world_t: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    residual: float = float("nan")


# --------------------------------------------------------------------------------------------------
# maths
# --------------------------------------------------------------------------------------------------
_SYM_INDEX = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]


def _quadric_from_vector(q: np.ndarray) -> np.ndarray:
    Q = np.zeros((4, 4))
    for k, (a, b) in enumerate(_SYM_INDEX):
        Q[a, b] = Q[b, a] = q[k]
    return Q


def _row(P: np.ndarray, a: int, b: int) -> np.ndarray:
    """Coefficients of ``(P Q P^T)[a, b]`` in the ten unknowns of the symmetric Q."""
    row = np.empty(10)
    for k, (i, j) in enumerate(_SYM_INDEX):
        row[k] = P[a, i] * P[b, j] + (P[a, j] * P[b, i] if i != j else 0.0)
    return row


def _normalised_cameras(P: np.ndarray, image_size_wh: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``T^-1 P_i`` with unit Frobenius norm, T = pixels from a frame where the image centre is 0, scale w+h."""
    w, h = image_size_wh
    s = float(w + h)
    T = np.array([[s, 0.0, (w - 1) / 2.0], [0.0, s, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
    Pn = np.linalg.solve(T, P)  # (N, 3, 4): T^-1 P_i for each i (broadcast)
    Pn /= np.linalg.norm(Pn, axis=(1, 2), keepdims=True)
    return Pn, T


def linear_absolute_dual_quadric(
    P_normalised: np.ndarray, *, principal_point_weight: float = 0.1
) -> np.ndarray:
    """Linear estimate of Q* from cameras in normalised pixels (principal point guess at the origin).

    Args:
        P_normalised: (N, 3, 4) cameras, pixels mapped by ``T^-1`` so that the principal point guess is 0 and
            the focal length is of order 1.
        principal_point_weight: weight of the principal point equations (skew and aspect have weight 1).

    Returns:
        (4, 4) symmetric Q*, rank 3 (the smallest-magnitude eigenvalue set to 0), positive semi-definite when a
        candidate is, unit Frobenius norm.
    """
    P_normalised = np.asarray(P_normalised, dtype=float)
    if P_normalised.ndim != 3 or P_normalised.shape[1:] != (3, 4):
        raise InputError(f"cameras must be (N, 3, 4), got shape {P_normalised.shape}")
    if len(P_normalised) < 3:
        raise InputError(f"need at least 3 cameras for autocalibration, got {len(P_normalised)}")
    rows = []
    for P in P_normalised:
        rows.append(_row(P, 0, 1))  # zero skew (with the principal point at 0)
        rows.append(_row(P, 0, 0) - _row(P, 1, 1))  # unit aspect ratio
        rows.append(principal_point_weight * _row(P, 0, 2))
        rows.append(principal_point_weight * _row(P, 1, 2))
    A = np.asarray(rows)
    _, _, vt = np.linalg.svd(A)
    # The least-squares null vector need not be rank 3 / semi-definite: with few or special motions (a
    # turntable's single axis) the null space is nearly two-dimensional. Candidates are then the members of
    # the pencil of the two smallest singular vectors with det = 0 (H&Z 19.3.2, the rank-3 constraint, a
    # quartic in the pencil parameter); the semi-definite one with the smallest algebraic residual wins.
    Q1, Q2 = _quadric_from_vector(vt[-1]), _quadric_from_vector(vt[-2])
    samples = np.linspace(-2.0, 2.0, 5)
    quartic = np.polyfit(samples, [np.linalg.det(Q2 + a * Q1) for a in samples], 4)
    candidates = [Q1] + [Q2 + r.real * Q1 for r in np.roots(quartic) if abs(r.imag) < 1e-9 * (1 + abs(r))]
    best, best_cost = None, np.inf
    for Q in candidates:
        values, vectors = np.linalg.eigh(Q / np.linalg.norm(Q))
        values[np.argmin(np.abs(values))] = 0.0
        if values.max() <= 0:
            values = -values  # the sign of Q* is free: make it positive semi-definite when it is
        Q = (vectors * values) @ vectors.T
        H, reason = upgrading_homography(Q)
        if reason:
            continue
        # Judge a candidate by what it is for: the intrinsics it gives (a near-rank-1 quadric fits the
        # algebraic equations well but gives a focal length of a fraction of a pixel).
        cost = float(np.sqrt(np.mean(_intrinsics_residuals(P_normalised, H, principal_point_weight) ** 2)))
        if cost < best_cost:
            best, best_cost = Q, cost
    if best is None:
        return _quadric_from_vector(vt[-1]) / np.linalg.norm(vt[-1])
    Q = best
    return Q / np.linalg.norm(Q)


def _intrinsics_residuals(
    P_normalised: np.ndarray, H: np.ndarray, principal_point_weight: float, shared: np.ndarray | None = None
) -> np.ndarray:
    """Per view: skew / f, fx / fy - 1, weighted principal point / f, and log(f / f_shared) when ``shared``.

    ``shared`` = (f, cx, cy) of one K for all views (normalised pixels); None measures against the principal
    point guess 0 and leaves the focal free.
    """
    out = []
    for P in P_normalised:
        K = decompose_projection(P @ H)[0]
        f = 0.5 * (K[0, 0] + K[1, 1])
        cx, cy = (0.0, 0.0) if shared is None else shared[1:]
        row = [K[0, 1] / f, K[0, 0] / K[1, 1] - 1.0]
        row += [principal_point_weight * (K[0, 2] - cx) / f, principal_point_weight * (K[1, 2] - cy) / f]
        if shared is not None:
            row.append(np.log(f / shared[0]))
        out.append(row)
    return np.asarray(out).ravel()


def upgrading_homography(Q: np.ndarray) -> tuple[np.ndarray, str]:
    """H with ``Q* = H diag(1, 1, 1, 0) H^T`` (H&Z result 19.2), or (identity, reason) when Q* is not PSD rank 3.

    Args:
        Q: (4, 4) symmetric absolute dual quadric.

    Returns:
        ``(H, reason)``: H (4, 4), invertible; ``reason`` is "" on success.
    """
    values, vectors = np.linalg.eigh(0.5 * (Q + Q.T))
    order = np.argsort(-values)  # three positive eigenvalues first, the ~0 one last
    values, vectors = values[order], vectors[:, order]
    if values[2] <= 1e-9 * values[0]:
        return np.eye(
            4
        ), f"quadric is not positive semi-definite of rank 3 (eigenvalues {np.round(values, 9)})"
    scale = np.sqrt(np.r_[values[:3], 1.0])
    return vectors * scale, ""


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RQ decomposition ``P ~ K [R | t]`` with positive K diagonal, ``det R = +1``, ``K[2, 2] = 1`` (H&Z 6.2.4).

    The overall sign of P is chosen so that ``det R = +1``.

    Returns:
        ``(K (3, 3), R (3, 3), t (3,))``.
    """
    P = np.asarray(P, dtype=float)
    if np.linalg.det(P[:, :3]) < 0:
        P = -P
    # RQ of M via QR of the flipped transpose.
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ P[:, :3]).T)
    K = flip @ r.T @ flip
    R = flip @ q.T
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R
    t = np.linalg.solve(K, P[:, 3])
    scale = K[2, 2]
    return K / scale, R, t  # det R = +1 by the sign flip above; t = (s K)^-1 (s K t) needs no rescale


def _shared_K(f: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def _refine(
    Pn: np.ndarray, Q0: np.ndarray, K0: np.ndarray, principal_point_weight: float, max_nfev: int
) -> np.ndarray:
    """Nonlinear refinement of Q* (rank 3, PSD by construction) with one shared K, normalised pixels.

    Minimises the differences between each view's K (RQ of ``P_i H``) and the shared zero-skew, unit-aspect
    K (H&Z 19.3.3, here on K itself rather than on the algebraic ``K K^T`` residual, which degenerate
    near-rank-1 quadrics also fit); the principal point is tied to the image centre with
    ``principal_point_weight``.
    """
    # Q* with null vector (p, 1) (the plane at infinity): [[M, -M p], [-p^T M, p^T M p]], M = L L^T.
    values, vectors = np.linalg.eigh(Q0)
    plane = vectors[:, np.argmin(np.abs(values))]
    p0 = plane[:3] / plane[3]
    L0 = np.linalg.cholesky(Q0[:3, :3] + 1e-12 * np.eye(3))
    tril = np.tril_indices(3)

    def quadric(x: np.ndarray) -> np.ndarray:
        L = np.zeros((3, 3))
        L[tril] = x[3:9]
        M = L @ L.T
        Mp = M @ x[9:12]
        return np.block([[M, -Mp[:, None]], [-Mp[None, :], np.array([[x[9:12] @ Mp]])]])

    def fun(x: np.ndarray) -> np.ndarray:
        H, reason = upgrading_homography(quadric(x))
        if reason:
            return np.full(5 * len(Pn) + 2, 1e3)
        res = _intrinsics_residuals(Pn, H, 1.0, shared=x[:3])
        pp_prior = principal_point_weight * x[1:3] / x[0]  # the principal point near the image centre
        return np.r_[res, pp_prior]

    x0 = np.r_[K0[0, 0], K0[0, 2], K0[1, 2], L0[tril], p0]
    sol = least_squares(fun, x0, method="trf", max_nfev=max_nfev * len(x0), x_scale="jac")
    Q = quadric(sol.x)
    return Q / np.linalg.norm(Q)


def _mean_depth_sign(P_metric: np.ndarray, points: np.ndarray | None) -> float:
    """Mean sign of the depths of homogeneous points (M, 4) in cameras with det M > 0 (H&Z 6.2.3)."""
    if points is None or len(points) == 0:
        return 1.0
    signs = []
    for P in P_metric:
        sign_det = np.sign(np.linalg.det(P[:, :3]))
        w = points @ P[2]
        signs.append(sign_det * np.sign(w) * np.sign(points[:, 3]))
    return float(np.mean(signs))


def autocalibrate_cameras(
    projection_matrices: np.ndarray,
    image_size_wh: tuple[float, float],
    options: AutocalibrationOptions | None = None,
    *,
    points_homogeneous: np.ndarray | None = None,
) -> AutocalibrationResult:
    """Upgrade projective cameras that share one K (zero skew, unit aspect) to metric ones.

    Args:
        projection_matrices: (N, 3, 4) projective cameras ``x_px ~ P_i X`` (N >= 3), one projective frame.
        image_size_wh: (w, h) pixels; the principal point guess is the image centre ((w-1)/2, (h-1)/2).
        options: see ``AutocalibrationOptions``.
        points_homogeneous: (M, 4) points of the same projective frame, used only to pick the mirror sign
            (points in front of the cameras); None keeps the sign of the eigen-decomposition.

    Returns:
        ``AutocalibrationResult``; ``success=False`` with a reason when the quadric is degenerate.
    """
    options = options or AutocalibrationOptions()
    P = np.asarray(projection_matrices, dtype=float)
    if P.ndim != 3 or P.shape[1:] != (3, 4) or not np.all(np.isfinite(P)):
        raise InputError(f"projection_matrices must be finite (N, 3, 4), got shape {P.shape}")
    if len(P) < 3:
        raise InputError(f"need at least 3 cameras for autocalibration, got {len(P)}")
    w, h = image_size_wh
    if not (w > 0 and h > 0):
        raise InputError(f"image_size_wh must be positive, got {image_size_wh}")
    Pn, T = _normalised_cameras(P, (w, h))
    Q = linear_absolute_dual_quadric(Pn, principal_point_weight=options.principal_point_weight)
    H, reason = upgrading_homography(Q)
    if reason:
        return AutocalibrationResult(
            success=False, reason=f"linear estimate: {reason}", absolute_dual_quadric=Q
        )
    Ks = np.array([decompose_projection(Pi @ H)[0] for Pi in Pn])
    K0 = _shared_K(
        float(np.median(0.5 * (Ks[:, 0, 0] + Ks[:, 1, 1]))),
        float(np.median(Ks[:, 0, 2])),
        float(np.median(Ks[:, 1, 2])),
    )
    if options.refine:
        Q = _refine(Pn, Q, K0, options.principal_point_weight, options.max_iterations)
        H, reason = upgrading_homography(Q)
        if reason:
            return AutocalibrationResult(success=False, reason=f"refined: {reason}", absolute_dual_quadric=Q)
    # H acts on the normalised cameras T^-1 P_i; the same H upgrades the pixel cameras P_i = T (T^-1 P_i),
    # up to the per-view scale of the normalisation.
    if points_homogeneous is not None and _mean_depth_sign(P @ H, np.asarray(points_homogeneous, float)) < 0:
        H = H @ np.diag([1.0, 1.0, -1.0, 1.0])  # the mirror frame: same Q*, points in front
    decomposed = [decompose_projection(Pi @ H) for Pi in P]
    K = np.array([d[0] for d in decomposed])
    R = np.array([d[1] for d in decomposed])
    t = np.array([d[2] for d in decomposed])
    K_shared = _shared_K(
        float(np.median(0.5 * (K[:, 0, 0] + K[:, 1, 1]))),
        float(np.median(K[:, 0, 2])),
        float(np.median(K[:, 1, 2])),
    )
    shared_n = np.linalg.solve(T, K_shared)
    shared_n = np.r_[shared_n[0, 0], shared_n[0, 2], shared_n[1, 2]]
    residual = float(np.sqrt(np.mean(_intrinsics_residuals(Pn, H, 1.0, shared=shared_n) ** 2)))
    logger.info(
        "autocalibration: %d views, shared focal %.1f px, principal point (%.1f, %.1f), residual %.2e",
        len(P),
        K_shared[0, 0],
        K_shared[0, 2],
        K_shared[1, 2],
        residual,
    )
    return AutocalibrationResult(
        success=True,
        world_from_projective=H,
        absolute_dual_quadric=Q,
        K=K,
        K_shared=K_shared,
        cam_from_world_R=R,
        cam_from_world_t=t,
        residual=residual,
    )
