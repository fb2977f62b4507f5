"""Matrix factorization for multi-view geometry.

Affine (Tomasi-Kanade), missing data (VarPro / ALS) and projective (Sturm-Triggs) factorizations.

Measurement matrix convention used throughout: ``W`` is ``(2F, P)`` float64 for F frames and P points;
rows ``2f`` and ``2f + 1`` hold the x and y image coordinates of every point in frame ``f``; a missing
observation is NaN in both rows. Coordinates are whatever the caller chose (pixels, or normalised
image coordinates ``K^-1 x`` for calibrated cameras); errors are reported in the same unit.

Models:
    * affine camera (H&Z 6.3.4, 18.2): ``x_fp = M_f X_p + t_f`` with ``M_f`` (2, 3), ``t_f`` (2,);
      a complete ``W`` minus its row means has rank 3 (Tomasi & Kanade 1992; H&Z 18.2 algorithm 18.1).
    * orthographic / weak-perspective (scaled orthographic) cameras: ``M_f = s_f R_f[:2]`` with orthonormal
      rows; obtained from the affine solution by the metric upgrade ``M -> M Q`` where ``Q Q^T`` solves
      the linear orthonormality constraints.
    * projective camera (H&Z 18.4): ``lambda_fp [x_fp; 1] = P_f X_p`` with projective depths ``lambda``;
      the rescaled measurement matrix has rank 4 (Sturm & Triggs 1996).

Missing data is handled by Levenberg-Marquardt on the variable-projection (VarPro) reduced problem
(Ruhe & Wedin 1980; Okatani & Deguchi 2007; Hong & Fitzgibbon, "Secrets of Matrix Factorization", ICCV 2015):
the points are eliminated in closed form for every candidate set of cameras, so the optimiser only sees the
``2F x 4`` camera matrix, which is what makes it converge to the best optimum from random starts. Plain
alternating least squares (ALS) is provided as a baseline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import least_squares

from geomvision.errors import InputError
from geomvision.geometry.rigid import project_to_so3
from geomvision.runtime.rng import as_rng

logger = logging.getLogger(__name__)

AffineCamera = Literal["affine", "orthographic", "weak_perspective"]

# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def measurement_matrix(
    frame_index: np.ndarray,
    point_index: np.ndarray,
    xy: np.ndarray,
    num_frames: int | None = None,
    num_points: int | None = None,
) -> np.ndarray:
    """Scatter observations into a ``(2F, P)`` measurement matrix with NaN for missing entries.

    Args:
        frame_index: (M,) int frame of each observation.
        point_index: (M,) int point of each observation.
        xy: (M, 2) image coordinates.
        num_frames, num_points: sizes; default to ``max(index) + 1``.

    Returns:
        (2F, P) float64 matrix ``W``.
    """
    frame_index = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    point_index = np.asarray(point_index, dtype=np.int64).reshape(-1)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not len(frame_index) == len(point_index) == len(xy):
        raise InputError(
            f"measurement_matrix: {len(frame_index)} frame ids, {len(point_index)} point ids, "
            f"{len(xy)} coordinates"
        )
    F = int(frame_index.max()) + 1 if num_frames is None else int(num_frames)
    P = int(point_index.max()) + 1 if num_points is None else int(num_points)
    W = np.full((2 * F, P), np.nan)
    W[2 * frame_index, point_index] = xy[:, 0]
    W[2 * frame_index + 1, point_index] = xy[:, 1]
    return W


def _check_measurements(
    W: np.ndarray, *, allow_missing: bool, min_frames: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``W``; returns (W float64, visibility mask (F, P) bool)."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] % 2 != 0:
        raise InputError(f"measurement matrix must be (2F, P), got shape {W.shape}")
    if np.isinf(W).any():
        raise InputError(f"measurement matrix contains {int(np.isinf(W).sum())} infinite entries")
    F, P = W.shape[0] // 2, W.shape[1]
    nan = np.isnan(W)
    if (nan[0::2] != nan[1::2]).any():
        raise InputError(f"{int((nan[0::2] != nan[1::2]).sum())} observations have only one of x/y missing")
    mask = ~nan[0::2]
    if not allow_missing and not mask.all():
        raise InputError(
            f"measurement matrix has {int((~mask).sum())} missing observations (NaN); complete data needed"
        )
    if F < min_frames:
        raise InputError(f"need at least {min_frames} frames, got {F}")
    if P < 4:
        raise InputError(f"need at least 4 points, got {P}")
    per_frame = mask.sum(axis=1)
    per_point = mask.sum(axis=0)
    if per_point.min() < 2:
        raise InputError(
            f"point {int(per_point.argmin())} has {int(per_point.min())} observations, need >= 2"
        )
    if per_frame.min() < 4:
        raise InputError(f"frame {int(per_frame.argmin())} sees {int(per_frame.min())} points, need >= 4")
    if mask.sum() * 2 < 8 * F + 3 * P - 12:
        raise InputError(
            f"{int(mask.sum())} observations cannot determine {F} affine cameras and {P} points "
            f"({8 * F + 3 * P - 12} unknowns)"
        )
    return W, mask


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AffineFactorization:
    """Affine (or metric orthographic / weak-perspective) factorization ``x_fp = M_f X_p + t_f``.

    Attributes:
        success: False when the metric upgrade or the optimiser failed (see ``reason``).
        reason: empty on success.
        motion: (F, 2, 3) camera rows ``M_f``.
        translations: (F, 2) image translations ``t_f``.
        points: (P, 3) shape ``X_p`` (in the metric frame when ``rotations`` is set).
        rotations: (F, 3, 3) ``cam_from_world`` rotations (rows completed by a cross product), or None
            for the plain affine variant. The orthographic depth-reversal (Necker) ambiguity remains.
        scales: (F,) weak-perspective scales ``s_f`` (``M_f = s_f R_f[:2]``), or None.
        rms: sqrt(mean over observations of the squared 2D error), in the unit of ``W``.
        cost: 0.5 * sum of squared residuals over observed entries.
        iterations: optimiser iterations (0 for the closed-form complete-data case).
        converged: whether a convergence test (not the iteration / time cap) stopped the optimiser.
        time_s: wall time.
    """

    success: bool
    reason: str
    motion: np.ndarray
    translations: np.ndarray
    points: np.ndarray
    rotations: np.ndarray | None = None
    scales: np.ndarray | None = None
    rms: float = float("nan")
    cost: float = float("nan")
    iterations: int = 0
    converged: bool = True
    time_s: float = 0.0

    def reproject(self) -> np.ndarray:
        """(2F, P) predicted measurement matrix."""
        return _affine_predict(self.motion, self.translations, self.points)


@dataclass(frozen=True, kw_only=True)
class ProjectiveFactorization:
    """Projective factorization ``lambda_fp [x_fp; 1] = P_f X_p``.

    Attributes:
        success, reason: outcome.
        cameras: (F, 3, 4) projective cameras in the unit of ``W``.
        points: (P, 4) homogeneous points.
        depths: (F, P) projective depths of the final iteration.
        rms: sqrt(mean squared 2D reprojection error) in the unit of ``W``.
        iterations: depth/factorization iterations.
        converged: relative change of the depths fell below the tolerance.
    """

    success: bool
    reason: str
    cameras: np.ndarray
    points: np.ndarray
    depths: np.ndarray
    rms: float = float("nan")
    iterations: int = 0
    converged: bool = False


@dataclass(frozen=True, kw_only=True)
class MetricUpgrade:
    """Euclidean reconstruction (up to a similarity) from projective cameras with known calibration.

    Attributes:
        success, reason: outcome.
        rotations: (F, 3, 3) ``cam_from_world`` rotations.
        translations: (F, 3) ``cam_from_world`` translations.
        points: (P, 3) points in world.
        world_from_projective: (4, 4) homography ``H`` with ``P_f H ~ [R_f | t_f]`` (``X_metric ~ H^-1 X``).
        rms: reprojection RMS of the metric model (unit of the input, normally normalised coordinates).
        fraction_in_front: share of (frame, point) pairs with positive depth (cheirality).
    """

    success: bool
    reason: str
    rotations: np.ndarray
    translations: np.ndarray
    points: np.ndarray
    world_from_projective: np.ndarray
    rms: float = float("nan")
    fraction_in_front: float = float("nan")


# --------------------------------------------------------------------------------------------------
# Complete-data affine factorization (Tomasi-Kanade) and metric upgrade
# --------------------------------------------------------------------------------------------------


def _affine_predict(motion: np.ndarray, translations: np.ndarray, points: np.ndarray) -> np.ndarray:
    F = len(motion)
    return motion.reshape(2 * F, 3) @ points.T + translations.reshape(2 * F, 1)


def _rms_2d(W: np.ndarray, predicted: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(rms of 2D errors over observations, 0.5 * sum of squares) over observed entries."""
    r = np.where(np.repeat(mask, 2, axis=0), W - predicted, 0.0)
    ss = float(np.sum(r * r))
    return float(np.sqrt(ss / max(int(mask.sum()), 1))), 0.5 * ss


def factorize_affine(W: np.ndarray, *, camera: AffineCamera = "orthographic") -> AffineFactorization:
    """Tomasi-Kanade factorization of a complete measurement matrix (H&Z 18.2, algorithm 18.1).

    Centres each row, takes the rank-3 SVD ``W - t = U3 S3 V3^T`` and splits it as ``M = U3 S3^(1/2)``,
    ``X = S3^(1/2) V3^T``. This is the maximum-likelihood affine reconstruction under isotropic Gaussian
    image noise. For ``camera="orthographic"`` or ``"weak_perspective"`` the result is upgraded to metric
    by :func:`metric_upgrade_affine`.

    Args:
        W: (2F, P) complete measurement matrix (no NaN), F >= 2 (>= 3 for a metric upgrade), P >= 4.
        camera: "affine" (no upgrade), "orthographic" (unit-norm rows) or "weak_perspective"
            (per-frame scale).

    Returns:
        AffineFactorization.

    Raises:
        InputError: missing data, too few frames/points, non-finite values, or rank < 3 after centring.
    """
    start = time.perf_counter()
    W, mask = _check_measurements(W, allow_missing=False, min_frames=2 if camera == "affine" else 3)
    F = W.shape[0] // 2
    t = W.mean(axis=1)
    U, S, Vt = np.linalg.svd(W - t[:, None], full_matrices=False)
    if S[2] <= 1e-12 * max(S[0], 1e-300):
        raise InputError(
            f"centred measurement matrix has rank < 3 (singular values {S[:4]}); scene is planar/degenerate"
        )
    sq = np.sqrt(S[:3])
    motion = (U[:, :3] * sq).reshape(F, 2, 3)
    points = Vt[:3].T * sq
    result = _finish_affine(W, mask, motion, t.reshape(F, 2), points, camera, 0, True, start)
    return result


def _finish_affine(
    W, mask, motion, translations, points, camera, iterations, converged, start
) -> AffineFactorization:
    rotations = scales = None
    success, reason = True, ""
    if camera != "affine":
        up = metric_upgrade_affine(motion, points, camera=camera)
        if up[0] is None:
            success, reason = False, up[4]
        else:
            motion, points, rotations, scales = up[:4]
    rms, cost = _rms_2d(W, _affine_predict(motion, translations, points), mask)
    return AffineFactorization(
        success=success,
        reason=reason,
        motion=motion,
        translations=translations,
        points=points,
        rotations=rotations,
        scales=scales,
        rms=rms,
        cost=cost,
        iterations=iterations,
        converged=converged,
        time_s=time.perf_counter() - start,
    )


def _sym_coeffs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coefficients c with ``a^T L b = c . l`` for a symmetric 3x3 L.

    l stores (L00, L01, L02, L11, L12, L22).

    Args:
        a, b: (N, 3). Returns (N, 6).
    """
    return np.stack(
        [
            a[:, 0] * b[:, 0],
            a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0],
            a[:, 0] * b[:, 2] + a[:, 2] * b[:, 0],
            a[:, 1] * b[:, 1],
            a[:, 1] * b[:, 2] + a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 2],
        ],
        axis=1,
    )


def metric_upgrade_affine(
    motion: np.ndarray, points: np.ndarray, *, camera: AffineCamera = "orthographic"
) -> tuple:
    """Upgrade an affine factorization to orthographic / weak-perspective cameras.

    Solves the linear orthonormality constraints on the symmetric ``L = Q Q^T`` (per frame, rows a, b of
    ``M_f``: ``a^T L b = 0`` and ``a^T L a = b^T L b`` (= 1 for orthographic)), takes the nearest
    positive-semidefinite ``L`` by eigenvalue clipping, and applies ``M -> M Q``, ``X -> Q^-1 X``.
    The world frame is then rotated so that frame 0 has the identity rotation.

    Args:
        motion: (F, 2, 3) affine camera rows; points: (P, 3).
        camera: "orthographic" or "weak_perspective".

    Returns:
        ``(motion (F,2,3), points (P,3), rotations (F,3,3), scales (F,), "")`` on success, or
        ``(None, None, None, None, reason)`` when ``L`` is not positive definite.
    """
    a, b = motion[:, 0], motion[:, 1]
    caa, cbb, cab = _sym_coeffs(a, a), _sym_coeffs(b, b), _sym_coeffs(a, b)
    if camera == "orthographic":
        A = np.vstack([caa, cbb, cab])
        rhs = np.concatenate([np.ones(len(a)), np.ones(len(a)), np.zeros(len(a))])
        l = np.linalg.lstsq(A, rhs, rcond=None)[0]
    elif camera == "weak_perspective":
        # Homogeneous constraints; the null vector is fixed up to scale, then normalised to mean scale 1.
        A = np.vstack([caa - cbb, cab])
        l = np.linalg.svd(A)[2][-1]
        if np.mean(caa @ l) < 0:
            l = -l
        l = l / max(np.mean(caa @ l + cbb @ l) / 2, 1e-300)
    else:
        raise InputError(f"unknown camera model {camera!r}; expected 'orthographic' or 'weak_perspective'")
    L = np.array([[l[0], l[1], l[2]], [l[1], l[3], l[4]], [l[2], l[4], l[5]]])
    evals, evecs = np.linalg.eigh(L)
    if evals[0] <= 1e-9 * max(evals[-1], 1e-300):
        # Eigen-clipping to the PSD cone would make Q singular: no metric interpretation of this motion.
        return None, None, None, None, f"metric upgrade: Q Q^T not positive definite (eigenvalues {evals})"
    Q = evecs * np.sqrt(evals)
    if np.linalg.det(Q) < 0:
        Q[:, 2] = -Q[:, 2]  # choose the right-handed member of the reflection pair
    m = motion @ Q
    scales = 0.5 * (np.linalg.norm(m[:, 0], axis=1) + np.linalg.norm(m[:, 1], axis=1))
    rows = _nearest_orthonormal_rows(m)
    rotations = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)
    # Gauge: rotate the world so frame 0 is the identity (the shape rotates the other way).
    R0 = rotations[0]
    rotations = rotations @ R0.T
    m = m @ R0.T
    pts = np.linalg.solve(Q, points.T).T @ R0.T
    return m, pts, rotations, scales, ""


def _nearest_orthonormal_rows(m: np.ndarray) -> np.ndarray:
    """(F, 2, 3) -> nearest (F, 2, 3) with orthonormal rows (polar factor via batched SVD)."""
    U, _, Vt = np.linalg.svd(m, full_matrices=False)
    return U @ Vt


# --------------------------------------------------------------------------------------------------
# Missing data: VarPro + Levenberg-Marquardt, and ALS baseline
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MissingDataOptions:
    """Options of :func:`factorize_affine_missing`.

    Attributes:
        method: "varpro" (damped Newton / LM on the variable-projection problem) or "als".
        max_iterations: iteration cap (one LM iteration = one linear solve, accepted or not).
        function_tolerance: stop when the relative cost decrease of an accepted step is below this.
        gradient_tolerance: stop when the max-abs gradient of the reduced cost is below this times
            sqrt(cost).
        initial_damping: initial LM damping relative to the mean diagonal of ``J^T J`` (the reduced normal
            matrix gets ``+ lambda I``); large values make the first steps short and gradient-like.
        time_limit_s: optional wall-clock cap.
        camera: metric upgrade applied to the optimum ("affine" = none).
        jacobian: "kaufman" (Ruhe-Wedin RW2 / Wiberg approximation) or "full" (Golub-Pereyra Gauss-Newton).
        warm_start_rank: VarPro with a random start only: first minimise a rank-k relaxation of the affine
            model (k >= 4 camera columns, see ``relaxation``) from the start, then start the affine problem
            from affine cameras derived from its solution (see :func:`_rank_k_warm_start`). A decreasing
            tuple (e.g. ``(6, 5)``) is a rank continuation. None starts the affine problem directly. On the
            Oxford dinosaur tracks this raised the share of random starts that reach the best affine optimum
            (benchmarks/results/factorization.md).
        relaxation: "affine": ``W ~ U X^T + t 1^T`` with a (k - 1)-dimensional shape (translation kept);
            "unconstrained": ``W ~ B C^T`` with B (2F, k).
        affine_candidates: with the affine relaxation, the affine problem is solved from up to this many
            3-dimensional subspaces of the relaxed shape (:func:`_affine_candidates`), stopping when two
            reach the same cost; the lowest cost is kept. 1 = only the best rank-3 approximation.
        agree_rtol: relative cost difference under which two candidates count as the same optimum.
        warm_start_min_share: run the warm start only when at least this share of the tracks has more than
            k scalar observations (the others carry no information in the relaxation and are left out of it).
            On all dinosaur tracks (46 % two-view tracks) the warm start lowered the success rate.
        core_min_views: VarPro with a random start only: when some tracks are seen in fewer views, first
            solve (warm start included) the affine problem on the tracks seen in >= this many views, then
            start the problem with every track from those cameras (the short tracks' points are eliminated
            for the fixed cameras, then everything is refined jointly). Skipped when that core leaves a frame
            with fewer than 12 points. None solves all tracks at once.
    """

    method: Literal["varpro", "als"] = "varpro"
    max_iterations: int = 2000
    function_tolerance: float = 1e-12
    gradient_tolerance: float = 1e-12
    initial_damping: float = 1e4
    time_limit_s: float | None = None
    camera: AffineCamera = "affine"
    jacobian: Literal["kaufman", "full"] = "kaufman"
    warm_start_rank: int | tuple[int, ...] | None = 5
    relaxation: Literal["affine", "unconstrained"] = "affine"
    warm_start_min_share: float = 0.9
    core_min_views: int | None = 6
    affine_candidates: int = 3
    agree_rtol: float = 1e-6


_POINT_CHUNK = 512
# A core stage whose tracks leave a frame with fewer points did not converge on the dinosaur (>= 8-view tracks:
# 6 points in the sparsest frame); the >= 6-view core has 32.
_CORE_MIN_POINTS_PER_FRAME = 12


class _Problem:
    """Observed entries of ``W ~ Ut [X; 1]`` with ``Ut = [U | t]`` (2F, 4); work vectorised over points.

    With ``affine=False`` the model is the unconstrained rank-4 factorization ``W ~ Ut X^T`` (``U = Ut``,
    4-vector points, no translation), used to warm-start the affine problem.
    """

    def __init__(self, W: np.ndarray, mask: np.ndarray, *, affine: bool = True) -> None:
        self.affine = affine
        self.F, self.P = mask.shape
        self.row_mask = np.repeat(mask, 2, axis=0)  # (2F, P) bool
        self.m = self.row_mask.astype(np.float64)
        self.W0 = np.where(self.row_mask, W, 0.0)
        self.obs_row, self.obs_point = np.nonzero(self.row_mask)  # (M,) scalar observations
        self.num_obs2d = int(mask.sum())

    def split(self, Ut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(U (2F, r), t (2F,)): affine ``Ut = [U | t]`` (r = 3, or more for a relaxation), else ``U = Ut``."""
        if self.affine:
            return Ut[:, :-1], Ut[:, -1]
        return Ut, np.zeros(len(Ut))

    def point_vectors(self, X: np.ndarray) -> np.ndarray:
        """(P, 4) ``[X_p; 1]`` (affine) or ``X_p`` (rank 4): what multiplies a camera row ``Ut_i``."""
        return np.concatenate([X, np.ones((self.P, 1))], axis=1) if self.affine else X

    def retract(self, Ut: np.ndarray) -> np.ndarray:
        """Gauge-fixing retraction (see :func:`_retract`); rank 4: an orthonormal basis of span(Ut)."""
        return _retract(Ut) if self.affine else np.linalg.qr(Ut)[0]

    def solve_points(self, Ut: np.ndarray) -> np.ndarray:
        """Closed-form points for cameras ``Ut``: (P, r), one r x r normal system per point (batched)."""
        U, t = self.split(Ut)
        r = U.shape[1]
        H = np.einsum("ip,ia,ib->pab", self.m, U, U)
        rhs = (self.m * (self.W0 - t[:, None])).T @ U
        # A tiny ridge keeps the batched solve defined for points that are nearly unconstrained early on.
        ridge = 1e-12 * np.trace(H, axis1=1, axis2=2)[:, None, None] * np.eye(r) + 1e-300 * np.eye(r)
        return np.linalg.solve(H + ridge, rhs[:, :, None])[:, :, 0], H + ridge

    def residuals(self, Ut: np.ndarray, X: np.ndarray) -> np.ndarray:
        """(2F, P) residuals ``W - U X - t`` (zero where missing)."""
        return self.m * (self.W0 - Ut @ self.point_vectors(X).T)

    def cost(self, Ut: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        X, H = self.solve_points(Ut)
        R = self.residuals(Ut, X)
        return 0.5 * float(np.sum(R * R)), X, H, R

    def varpro_normal_equations(
        self, Ut: np.ndarray, X: np.ndarray, H: np.ndarray, R: np.ndarray, *, full: bool = False
    ):
        """Gauss-Newton system of the reduced problem with the Kaufman Jacobian ``J = -P_perp G`` (RW2).

        For the scalar observation (i, p), ``dr_ip / dUt_ka = -v_pa (delta_ik - m_kp U_i^T H_p^-1 U_k)`` with
        ``v_p = [X_p; 1]``: the camera-row derivative of the fixed-point model, projected onto the orthogonal
        complement of the column space of ``U`` restricted to the point's observed rows. Because that
        projector is idempotent, ``J^T J`` is assembled without forming J:
        ``sum_p (v_p v_p^T) kron (diag(m_p) - diag(m_p) U H_p^-1 U^T diag(m_p))``, and ``J^T r = -R V``
        (the residual already lies in the projector's range).

        Returns:
            (JtJ (8F, 8F), Jtr (8F,)), parameter (k, a) at index ``4 k + a``.
        """
        n_rows = 2 * self.F
        U, _ = self.split(Ut)
        v = self.point_vectors(X)  # (P, 4)
        k = v.shape[1]  # camera columns: 4 for the affine model, more for a relaxation
        vv = (v[:, :, None] * v[:, None, :]).reshape(self.P, k * k)
        diag_part = (self.m @ vv).reshape(n_rows, k, k)  # sum_p m_kp v_p v_p^T
        # H_p = L_p L_p^T, so U L_p^-T times its transpose is U H_p^-1 U^T (factoring inv(H_p) instead fails
        # numerically for points that are nearly unconstrained early in a relaxation).
        chol = np.linalg.inv(np.linalg.cholesky(H)).transpose(0, 2, 1)
        cross = np.zeros((k * k, n_rows * n_rows))
        for lo in range(0, self.P, _POINT_CHUNK):  # chunks bound the (chunk, 2F, 2F) temporary
            hi = min(lo + _POINT_CHUNK, self.P)
            Y = np.matmul(U[None], chol[lo:hi]) * self.m[:, lo:hi].T[:, :, None]  # (chunk, 2F, 3)
            C = np.matmul(Y, Y.transpose(0, 2, 1))  # (chunk, 2F, 2F) = diag(m) U H^-1 U^T diag(m)
            cross += vv[lo:hi].T @ C.reshape(hi - lo, n_rows * n_rows)
        JtJ = -cross.reshape(k, k, n_rows, n_rows).transpose(2, 0, 3, 1)
        idx = np.arange(n_rows)
        JtJ[idx, :, idx, :] += diag_part
        if full:
            r = U.shape[1]
            JtJ[:, :r, :, :r] += self._golub_pereyra_term(R, np.linalg.inv(H))
        Jtr = -(R @ v)
        return JtJ.reshape(k * n_rows, k * n_rows), Jtr.reshape(-1)

    def _golub_pereyra_term(self, R: np.ndarray, Hinv: np.ndarray) -> np.ndarray:
        """``J2^T J2`` of the second Golub-Pereyra Jacobian term, (2F, 3, 2F, 3).

        The full VarPro Jacobian adds ``J2 = -(U_p^+)^T (dU_p)^T r_p`` per point. J2 lies in the column space
        of ``U_p`` while the Kaufman part and the residual are orthogonal to it, so the cross terms vanish and
        ``J2^T J2 = sum_p (r_p r_p^T) kron H_p^-1`` (camera rows only; t does not enter ``U_p``).
        """
        n_rows, r = 2 * self.F, Hinv.shape[1]
        out = np.zeros((n_rows * n_rows, r * r))
        for lo in range(0, self.P, _POINT_CHUNK):
            hi = min(lo + _POINT_CHUNK, self.P)
            rr = (R[:, None, lo:hi] * R[None, :, lo:hi]).reshape(n_rows * n_rows, hi - lo)
            out += rr @ Hinv[lo:hi].reshape(hi - lo, r * r)
        return out.reshape(n_rows, n_rows, r, r).transpose(0, 2, 1, 3)

    def varpro_normal_equations_explicit(self, Ut, X, H, R):
        """Reference version forming J explicitly (M x 8F); used by the tests to check the fast assembly."""
        U, _ = self.split(Ut)
        i, p = self.obs_row, self.obs_point
        Hinv = np.linalg.inv(H)
        L = np.einsum("oa,oab->ob", U[i], Hinv[p])  # (M, 3)
        D = (L @ U.T) * self.row_mask[:, p].T  # (M, 2F)
        D[np.arange(len(i)), i] -= 1.0
        v = self.point_vectors(X)[p]  # (M, 4)
        J = (D[:, :, None] * v[:, None, :]).reshape(len(i), -1)
        r = R[i, p]
        return J.T @ J, J.T @ r

    def als_update_cameras(self, X: np.ndarray) -> np.ndarray:
        """Closed-form camera rows for fixed points: one 4x4 system per row of ``W`` (batched)."""
        v = self.point_vectors(X)
        G = np.einsum("ip,pa,pb->iab", self.m, v, v)
        rhs = self.W0 @ v
        eye = np.eye(G.shape[1])
        ridge = 1e-12 * np.trace(G, axis1=1, axis2=2)[:, None, None] * eye + 1e-300 * eye
        return np.linalg.solve(G + ridge, rhs[:, :, None])[:, :, 0]


def _retract(Ut: np.ndarray) -> np.ndarray:
    """Remove the gauge from the cameras without changing the reduced cost.

    ``U -> U A`` and ``t -> t + U b`` are absorbed by the eliminated points, so U is replaced by an
    orthonormal basis of its column space and t by its component orthogonal to it (keeps the problem well
    conditioned).
    """
    Q, _ = np.linalg.qr(Ut[:, :-1])
    t = Ut[:, -1] - Q @ (Q.T @ Ut[:, -1])
    return np.concatenate([Q, t[:, None]], axis=1)


def factorize_affine_missing(
    W: np.ndarray,
    options: MissingDataOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    init_cameras: np.ndarray | None = None,
) -> AffineFactorization:
    """Affine factorization with missing entries, minimising the reprojection error over observed entries.

    ``min over M, t, X of sum_{(f,p) observed} ||x_fp - M_f X_p - t_f||^2`` (the affine model, i.e.
    rank 3 plus a mean: a rank-4 factorization ``W ~ [M | t] [X; 1]`` whose last point row is fixed to ones).

    Args:
        W: (2F, P) measurement matrix, NaN where missing. Every point needs >= 2 observations, every
            frame >= 4.
        options: :class:`MissingDataOptions`.
        rng: seeds the random starting cameras (entries ~ N(0, 1) in the frame of the data centred per row
            and scaled to unit RMS) when ``init_cameras`` is None.
        init_cameras: optional (2F, 4) starting ``[M | t]`` in the unit of ``W``; starts the affine
            problem directly (no rank-k warm start).

    Returns:
        AffineFactorization (``converged`` False when the iteration or time cap stopped the run).

    Raises:
        InputError: malformed or too sparse ``W``.
    """
    options = options or MissingDataOptions()
    start = time.perf_counter()
    W, mask = _check_measurements(W, allow_missing=True, min_frames=2 if options.camera == "affine" else 3)
    if options.method not in ("varpro", "als"):
        raise InputError(f"unknown missing-data method {options.method!r}; expected 'varpro' or 'als'")
    F = mask.shape[0]
    # Work on data centred and scaled to unit RMS so damping and tolerances are unit-free.
    centre = np.nanmean(W, axis=1, keepdims=True)
    scale = float(np.sqrt(np.nanmean((W - centre) ** 2))) or 1.0
    W_scaled = (W - centre) / scale
    scaled = _Problem(W_scaled, mask)
    iterations = 0
    if init_cameras is None:
        # Random start: N(0, 1) entries in the normalised frame.
        gen = as_rng(rng)
        Ut = gen.standard_normal((2 * F, 4))
        ranks = _warm_start_ranks(options.warm_start_rank)
        if options.method == "als":
            Ut, affine_iterations, converged = _als(scaled, _retract(Ut), options, start)
        else:
            core = _core_tracks(mask, options.core_min_views)
            W_core, mask_core = (W_scaled, mask) if core is None else (W_scaled[:, core], mask[:, core])
            candidates = [Ut]
            if ranks:
                # The affine start's columns plus k - 4 more random ones (same generator).
                extra = gen.standard_normal((2 * F, ranks[0] - 4))
                candidates, iterations = _rank_k_warm_start(
                    W_core, mask_core, Ut, extra, ranks, options, start
                )
            core_problem = scaled if core is None else _Problem(W_core, mask_core)
            Ut, affine_iterations, converged = _best_candidate(core_problem, candidates, options, start)
            if core is not None:
                # The well-observed tracks were solved first; their cameras start the problem with every track.
                logger.info(
                    "core stage: %d of %d tracks, %d iterations",
                    int(core.sum()),
                    len(core),
                    iterations + affine_iterations,
                )
                iterations += affine_iterations
                Ut, affine_iterations, converged = _varpro_lm(scaled, _retract(Ut), options, start)
    else:
        Ut = np.asarray(init_cameras, dtype=np.float64).reshape(2 * F, 4)
        # Caller's cameras are in the unit of W: map them into the normalised frame.
        Ut = np.concatenate([Ut[:, :3] / scale, (Ut[:, 3:] - centre) / scale], axis=1)
        solver = _varpro_lm if options.method == "varpro" else _als
        Ut, affine_iterations, converged = solver(scaled, _retract(Ut), options, start)
    X, _ = scaled.solve_points(Ut)
    motion = (Ut[:, :3] * scale).reshape(F, 2, 3)
    translations = (Ut[:, 3] * scale + centre[:, 0]).reshape(F, 2)
    return _finish_affine(
        W, mask, motion, translations, X, options.camera, iterations + affine_iterations, converged, start
    )


def _best_candidate(
    prob: _Problem, candidates: list[np.ndarray], options: MissingDataOptions, start: float
) -> tuple[np.ndarray, int, bool]:
    """Solve the affine problem from each candidate start in turn; keep the lowest cost.

    Stops as soon as two candidates reach the same cost (within ``options.agree_rtol``): the same optimum
    from two different starts (the RUSSO rule of Hong & Fitzgibbon 2015, applied within one random start).

    Returns:
        (Ut (2F, 4) of the lowest cost, total iterations, whether that run converged).
    """
    best, iterations, costs = None, 0, []
    for Ut0 in candidates:
        Ut, its, converged = _varpro_lm(prob, _retract(Ut0), options, start)
        iterations += its
        cost = prob.cost(Ut)[0]
        # An exact fit (RMS below 1e-10 of the normalised data) cannot be improved on, and relative agreement
        # of two near-zero costs is meaningless.
        exact = cost <= 1e-20 * prob.num_obs2d
        agree = exact or any(abs(cost - c) <= options.agree_rtol * c for c in costs)
        costs.append(cost)
        if best is None or cost < best[0]:
            best = (cost, Ut, converged)
        if agree:
            break
    logger.debug("affine candidates: costs %s", costs)
    return best[1], iterations, best[2]


def _core_tracks(mask: np.ndarray, min_views: int | None) -> np.ndarray | None:
    """(P,) bool tracks seen in >= ``min_views`` views, or None when that is all tracks or too few per frame."""
    if min_views is None:
        return None
    core = mask.sum(axis=0) >= min_views
    if core.all() or core.sum() < 4 or mask[:, core].sum(axis=1).min() < _CORE_MIN_POINTS_PER_FRAME:
        return None
    return core


def _warm_start_ranks(value: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """Validated, strictly decreasing tuple of relaxation ranks (empty: no warm start)."""
    if value is None:
        return ()
    ranks = (int(value),) if np.isscalar(value) else tuple(int(k) for k in value)
    if not ranks or min(ranks) < 4 or any(a <= b for a, b in zip(ranks, ranks[1:], strict=False)):
        raise InputError(
            f"warm_start_rank must be >= 4, a decreasing tuple of such ranks, or None; got {value}"
        )
    return ranks


def _rank_k_warm_start(
    W_scaled: np.ndarray,
    mask: np.ndarray,
    Ut: np.ndarray,
    extra: np.ndarray,
    ranks: tuple[int, ...],
    options: MissingDataOptions,
    start: float,
) -> tuple[np.ndarray, int]:
    """Minimise relaxed rank-k problems for k in ``ranks`` from a random start and map to affine cameras.

    The affine model is a rank-4 model ``[U | t] [X; 1]`` with 3-dimensional shape. Two relaxations with
    more freedom (over-parameterisation smooths the landscape; fewer bad local minima on the dinosaur tracks):

    * ``"affine"``: ``W ~ U_k X^T + t 1^T`` with a (k - 1)-dimensional shape and the translation kept; it is
      mapped to the affine model by keeping the leading 3 shape directions (:func:`_reduce_affine_rank`).
    * ``"unconstrained"``: ``W ~ B C^T`` with B (2F, k), mapped by :func:`_affine_from_rank_k`, which has to
      recover the translation from points that no longer have a unit coordinate (the affine problem then
      starts far from the relaxed optimum).

    With several ranks (a continuation, e.g. 6, 5) each solution is truncated to the next rank and refined
    there before the affine problem starts.

    Args:
        W_scaled: (2F, P) normalised measurements; mask: (F, P) visibility; Ut: (2F, 4) random affine start;
        extra: (2F, ranks[0] - 4) random columns completing it; ranks: decreasing relaxation ranks (>= 4).

    Returns:
        ((2F, 4) affine starting cameras in the normalised frame, relaxation iterations); the start unchanged
        (0 iterations) when the well-determined tracks leave a frame with fewer than k points.
    """
    affine = options.relaxation == "affine"
    if affine:
        B = np.concatenate([Ut[:, :3], extra, Ut[:, 3:]], axis=1)
    else:
        B = np.concatenate([Ut, extra], axis=1)
    iterations = 0
    C = None
    for level, k in enumerate(ranks):
        # A track with no more scalar observations than point unknowns (k - 1 affine, k unconstrained) fits
        # the relaxed model exactly for any cameras (and makes its point system singular): it carries no
        # information there, so it is left out.
        keep = 2 * mask.sum(axis=0) > (k - 1 if affine else k)
        if (
            keep.mean() < options.warm_start_min_share
            or keep.sum() < 2 * k
            or mask[:, keep].sum(axis=1).min() < k
        ):
            logger.info(
                "rank-%d warm start skipped: only %.0f%% of the tracks are long enough", k, 100 * keep.mean()
            )
            break
        if level > 0:
            B = _reduce_affine_rank(B, C, k) if affine else _truncate_rank(B, C, k)
        relaxed = _Problem(W_scaled[:, keep], mask[:, keep], affine=affine)
        B, its, _ = _varpro_lm(relaxed, relaxed.retract(B), options, start)
        iterations += its
        _, C, _, _ = relaxed.cost(B)
    if C is None:
        return [Ut], 0
    if not affine:
        return [_affine_from_rank_k(B, C)], iterations
    return _affine_candidates(B, C, options.affine_candidates), iterations


def _shape_directions(Ut: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal shape directions of ``U X^T + t 1^T``: ((2F, r) columns by decreasing energy, (2F,) t').

    The mean point moves into the translation (``t' = t + U mean(X)``); the left singular vectors of ``U L``
    with ``L L^T`` the points' covariance, scaled by the singular values, are the principal directions of
    the centred product over all points (its best rank-j approximations keep the first j).

    Args:
        Ut: (2F, r + 1) cameras ``[U | t]``; X: (P, r) points.
    """
    U, t = Ut[:, :-1], Ut[:, -1]
    mean = X.mean(axis=0)
    centred = X - mean
    L = np.linalg.cholesky(centred.T @ centred / len(X) + 1e-12 * np.eye(X.shape[1]))
    left, S, _ = np.linalg.svd(U @ L, full_matrices=False)
    return left * S, t + U @ mean


def _reduce_affine_rank(Ut: np.ndarray, X: np.ndarray, k: int) -> np.ndarray:
    """(2F, k) cameras ``[U' | t']`` of the best (k - 1)-dimensional-shape approximation of ``U X^T + t 1^T``."""
    directions, t = _shape_directions(Ut, X)
    return np.concatenate([directions[:, : k - 1], t[:, None]], axis=1)


def _affine_candidates(Ut: np.ndarray, X: np.ndarray, count: int) -> list[np.ndarray]:
    """Affine starts ``[U3 | t']`` (2F, 4) from a relaxed solution with an r-dimensional shape (r >= 4).

    Candidate 0 keeps the 3 leading shape directions (the best rank-3 approximation); candidate j >= 1
    swaps direction 3 - j for direction 3. Which 3-dimensional subspace of the relaxed shape leads to the
    best affine optimum is not decided by the energy alone: on the dinosaur tracks each of candidates 0-2
    reached the best optimum from some random starts where the others did not; dropping the leading
    direction never did (7 starts checked), so at most 3 candidates are made.
    """
    directions, t = _shape_directions(Ut, X)
    subsets = [[0, 1, 2], [0, 1, 3], [0, 2, 3]][: max(1, min(count, 3))]
    return [np.concatenate([directions[:, keep], t[:, None]], axis=1) for keep in subsets]


def _truncate_rank(B: np.ndarray, C: np.ndarray, k: int) -> np.ndarray:
    """(2F, k) cameras of the best rank-k approximation of the complete product ``B C^T``.

    ``B C^T = (B L)(C L^-T)^T`` with ``L L^T = C^T C / P``, so the leading k left singular vectors of ``B L``
    (scaled by their singular values) span the best rank-k approximation of the product.
    """
    L = np.linalg.cholesky(C.T @ C / len(C) + 1e-12 * np.eye(C.shape[1]))
    U, S, _ = np.linalg.svd(B @ L, full_matrices=False)
    return U[:, :k] * S[:k]


def _affine_from_rank_k(B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Affine cameras ``[U | t]`` (2F, 4) closest to a rank-k factorization ``B C^T`` (k >= 4).

    Any ``A`` in GL(k) gives the same product ``(B A^-T)(C A)^T``. Choose the last column ``a`` of ``A`` so
    that ``C a`` is closest to the all-ones vector (least squares); the other columns (a basis of the
    complement of ``a``) are gauge. Then ``B A^-T = [B' | t]`` with points ``[X' | ~1]``, and the best
    rank-3 approximation of ``B' X'^T`` (over all points, via the SVD of ``B' chol(X'^T X' / P)``) gives
    ``U``. For k = 4 this is only a change of basis.

    Args:
        B: (2F, k) cameras; C: (P, k) points.

    Returns:
        (2F, 4) affine cameras ``[U | t]``.
    """
    k = B.shape[1]
    a = np.linalg.lstsq(C, np.ones(len(C)), rcond=None)[0]
    complement = np.linalg.svd(a[None, :])[2][1:].T  # (k, k - 1) orthonormal basis of a's complement
    A = np.concatenate([complement, a[:, None]], axis=1)
    B_new = B @ np.linalg.inv(A).T
    X_new = C @ complement
    L = np.linalg.cholesky(X_new.T @ X_new / len(X_new) + 1e-12 * np.eye(k - 1))
    U, S, _ = np.linalg.svd(B_new[:, : k - 1] @ L, full_matrices=False)
    return np.concatenate([U[:, :3] * S[:3], B_new[:, k - 1 :]], axis=1)


def factorize_affine_missing_restarts(
    W: np.ndarray,
    options: MissingDataOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    max_starts: int = 20,
    agree_rtol: float = 1e-6,
) -> tuple[AffineFactorization, list[float]]:
    """Random restarts until the best cost has been reached twice (RUSSO, Hong & Fitzgibbon 2015, sec. 5).

    A single start of :func:`factorize_affine_missing` may stop in a local minimum; reaching the same lowest
    cost from two independent starts is strong evidence that it is the global optimum.

    Args:
        W: (2F, P) measurement matrix (NaN = missing).
        options: per-start options.
        rng: seeds the starting cameras.
        max_starts: give up after this many starts (the best result is still returned).
        agree_rtol: relative cost difference under which two optima count as the same.

    Returns:
        (best result, costs of every start in order); ``best.converged`` is False when no optimum was
        reached twice within ``max_starts``.
    """
    from dataclasses import replace

    gen = as_rng(rng)
    best: AffineFactorization | None = None
    hits = 0
    costs: list[float] = []
    start = time.perf_counter()
    for _ in range(max_starts):
        result = factorize_affine_missing(W, options, rng=gen)
        costs.append(result.cost)
        if best is None or result.cost < best.cost * (1 - agree_rtol):
            best, hits = result, 1
        elif result.cost <= best.cost * (1 + agree_rtol):
            hits += 1
        if hits >= 2:
            return replace(best, time_s=time.perf_counter() - start), costs
    return replace(best, converged=False, time_s=time.perf_counter() - start), costs


def _varpro_lm(prob: _Problem, Ut: np.ndarray, options: MissingDataOptions, start: float):
    """Levenberg-Marquardt on the reduced (points-eliminated) cost; returns (Ut, iterations, converged).

    The damping starts large relative to the curvature scale (mean diagonal of ``J^T J``), so the first steps
    are short gradient-like moves, and changes by a factor of 10 per accepted / rejected step. (In our tests
    a smooth gain-ratio schedule reached the best optimum from fewer random starts.)
    """
    cost, X, H, R = prob.cost(Ut)
    n = Ut.size
    full = options.jacobian == "full"
    JtJ, Jtr = prob.varpro_normal_equations(Ut, X, H, R, full=full)
    curvature = max(float(np.mean(np.diag(JtJ))), 1e-300)
    lam = options.initial_damping * curvature
    for it in range(1, options.max_iterations + 1):
        if np.max(np.abs(Jtr)) < options.gradient_tolerance * max(cost, 1e-300) ** 0.5:
            return Ut, it - 1, True
        if options.time_limit_s is not None and time.perf_counter() - start > options.time_limit_s:
            return Ut, it - 1, False
        try:
            step = np.linalg.solve(JtJ + lam * np.eye(n), -Jtr)
        except np.linalg.LinAlgError:
            lam *= 10.0
            continue
        candidate = prob.retract(Ut + step.reshape(Ut.shape))
        new_cost, X_new, H_new, R_new = prob.cost(candidate)
        if new_cost < cost:
            decrease = (cost - new_cost) / max(cost, 1e-300)
            Ut, cost, X, H, R = candidate, new_cost, X_new, H_new, R_new
            lam = max(lam / 10.0, 1e-15 * curvature)
            if decrease < options.function_tolerance:
                return Ut, it, True
            JtJ, Jtr = prob.varpro_normal_equations(Ut, X, H, R, full=full)
        else:
            lam *= 10.0
            if lam > 1e16 * curvature:
                return Ut, it, True  # no descent direction left: a (numerically) stationary point
    return Ut, options.max_iterations, False


def _als(prob: _Problem, Ut: np.ndarray, options: MissingDataOptions, start: float):
    """Alternating least squares baseline; returns (Ut, iterations, converged)."""
    cost = np.inf
    for it in range(1, options.max_iterations + 1):
        if options.time_limit_s is not None and time.perf_counter() - start > options.time_limit_s:
            return Ut, it - 1, False
        X, _ = prob.solve_points(Ut)
        Ut = prob.retract(prob.als_update_cameras(X))
        R = prob.residuals(Ut, prob.solve_points(Ut)[0])
        new_cost = 0.5 * float(np.sum(R * R))
        if cost - new_cost <= options.function_tolerance * max(cost, 1e-300) and np.isfinite(cost):
            return Ut, it, True
        cost = new_cost
    return Ut, options.max_iterations, False


# --------------------------------------------------------------------------------------------------
# Projective factorization (Sturm-Triggs) and metric upgrade with known calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProjectiveFactorizationOptions:
    """Options of :func:`factorize_projective`.

    Attributes:
        max_iterations: depth re-estimation / rank-4 SVD iterations.
        tolerance: stop when the relative change of the balanced depths is below this.
        balance_passes: alternating row/column normalisation passes per iteration (Sturm & Triggs 1996).
    """

    max_iterations: int = 2000
    tolerance: float = 1e-13
    balance_passes: int = 2


def _hartley_normalisation(W: np.ndarray) -> np.ndarray:
    """(3, 3) similarity moving all coordinates to centroid 0 and mean distance sqrt(2) (H&Z 4.4.4)."""
    x, y = W[0::2].ravel(), W[1::2].ravel()
    cx, cy = x.mean(), y.mean()
    d = np.mean(np.hypot(x - cx, y - cy))
    s = np.sqrt(2.0) / max(d, 1e-300)
    return np.array([[s, 0, -s * cx], [0, s, -s * cy], [0, 0, 1.0]])


def _balance(depths: np.ndarray, sq_norms: np.ndarray, passes: int) -> np.ndarray:
    """Rescale depths so the rescaled measurement matrix has unit-norm columns and frame row-triplets."""
    for _ in range(passes):
        depths = depths / np.sqrt(np.sum(depths**2 * sq_norms, axis=0, keepdims=True))
        depths = depths / np.sqrt(np.sum(depths**2 * sq_norms, axis=1, keepdims=True))
    return depths


def factorize_projective(
    W: np.ndarray,
    options: ProjectiveFactorizationOptions | None = None,
    *,
    init_depths: np.ndarray | None = None,
) -> ProjectiveFactorization:
    """Sturm-Triggs iterative projective factorization of a complete measurement matrix (H&Z 18.4).

    Iterates: balance the projective depths, take the rank-4 SVD of the rescaled measurement matrix
    ``[lambda_fp x_fp]`` (3F, P), re-estimate each depth as the least-squares scale of ``x_fp`` onto
    ``P_f X_p`` (the iterative variant of Triggs 1996 / Mahamud & Hebert 2000). Coordinates
    are Hartley-normalised internally and the cameras are returned in the input's unit.

    Args:
        W: (2F, P) complete measurement matrix, F >= 2, P >= 4 (>= 5 for a non-trivial rank-4 fit).
        options: :class:`ProjectiveFactorizationOptions`.
        init_depths: optional (F, P) starting depths (default ones: the affine approximation).

    Returns:
        ProjectiveFactorization.

    Raises:
        InputError: missing data, too few frames/points, non-finite values.
    """
    options = options or ProjectiveFactorizationOptions()
    W, _ = _check_measurements(W, allow_missing=False)
    F, P = W.shape[0] // 2, W.shape[1]
    T = _hartley_normalisation(W)
    xh = np.stack([W[0::2], W[1::2], np.ones((F, P))], axis=1)  # (F, 3, P)
    xh = np.einsum("ab,fbp->fap", T, xh)
    sq_norms = np.sum(xh**2, axis=1)  # (F, P)
    depths = np.ones((F, P)) if init_depths is None else np.asarray(init_depths, dtype=np.float64).copy()
    converged = False
    it = 0
    for it in range(1, options.max_iterations + 1):  # noqa: B007 (it is reported)
        depths = _balance(depths, sq_norms, options.balance_passes)
        M = (depths[:, None, :] * xh).reshape(3 * F, P)
        U, S, Vt = np.linalg.svd(M, full_matrices=False)
        cams = (U[:, :4] * S[:4]).reshape(F, 3, 4)
        pts = Vt[:4]
        # Least-squares depth of each point along its viewing ray: lambda = x . (P X) / |x|^2 (using only the
        # third coordinate would reproduce the current depths, a fixed point that never moves).
        new_depths = np.einsum("fap,fap->fp", xh, np.einsum("fab,bp->fap", cams, pts)) / sq_norms
        change = np.linalg.norm(new_depths - depths) / max(np.linalg.norm(depths), 1e-300)
        depths = new_depths
        if change < options.tolerance:
            converged = True
            break
    cams = np.einsum("ab,fbc->fac", np.linalg.inv(T), cams)
    points = pts.T.copy()
    rms = _projective_rms(W, cams, points)
    success = bool(np.isfinite(rms))
    return ProjectiveFactorization(
        success=success,
        reason="" if success else "non-finite reprojection",
        cameras=cams,
        points=points,
        depths=depths,
        rms=rms,
        iterations=it,
        converged=converged,
    )


def _projective_rms(W: np.ndarray, cameras: np.ndarray, points_h: np.ndarray) -> float:
    proj = np.einsum("fab,pb->fpa", cameras, points_h)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = proj[..., :2] / proj[..., 2:3]
    obs = np.stack([W[0::2], W[1::2]], axis=-1)
    err2 = np.sum((xy - obs) ** 2, axis=-1)
    valid = ~np.isnan(obs[..., 0])
    return float(np.sqrt(np.mean(err2[valid])))


def _omega_constraints(cams: np.ndarray) -> np.ndarray:
    """Linear constraints on the 10 entries of the absolute dual quadric for K = I (H&Z 19.3).

    ``w_f = P_f Omega P_f^T`` must be proportional to the identity: w11 = w22, w11 = w33, w12 = w13 = w23 = 0.

    Returns:
        (5F, 10) matrix acting on the upper triangle of Omega (row-major).
    """
    iu = np.triu_indices(4)

    # d w_ab / d Omega_cd (c <= d): P_ac P_bd + P_ad P_bc for c != d, P_ac P_bc for c == d.
    def coeff(a: int, b: int) -> np.ndarray:
        c, d = iu
        val = cams[:, a, c] * cams[:, b, d] + cams[:, a, d] * cams[:, b, c]
        return np.where(c == d, 0.5 * val, val)

    rows = [coeff(0, 0) - coeff(1, 1), coeff(0, 0) - coeff(2, 2), coeff(0, 1), coeff(0, 2), coeff(1, 2)]
    return np.concatenate(rows, axis=0)


def upgrade_projective_to_metric(
    cameras: np.ndarray, points_h: np.ndarray, W: np.ndarray | None = None, *, refine: bool = True
) -> MetricUpgrade:
    """Euclidean upgrade of a projective reconstruction whose cameras are calibrated (``K = I``).

    Pass cameras in normalised image coordinates (``K^-1 P_f``). The absolute dual quadric ``Omega*`` is
    estimated linearly from ``P_f Omega* P_f^T ~ I`` (H&Z 19.3, 5 equations per camera), made rank-3 PSD by
    eigenvalue clipping, factored as ``Omega* = H3 H3^T``, and (``refine=True``) ``H3`` is refined by
    nonlinear least squares on the normalised residuals ``w_f / trace(w_f) - I / 3``. The 4x4
    ``H = [H3 | h4]`` (any ``h4`` outside the span of ``H3`` fixes the origin) maps metric to projective
    coordinates. Each ``P_f H = [A_f | b_f]`` is split into ``s_f R_f`` and ``t_f``; cheirality picks the
    sign of the world.

    Args:
        cameras: (F, 3, 4) projective cameras (normalised coordinates), F >= 3.
        points_h: (P, 4) homogeneous points.
        W: optional (2F, P) normalised measurements for the reported RMS.
        refine: run the nonlinear refinement of ``H3``.

    Returns:
        MetricUpgrade (success False when ``Omega*`` has no rank-3 PSD interpretation or most points end
        up behind the cameras).
    """
    cams = np.asarray(cameras, dtype=np.float64)
    pts = np.asarray(points_h, dtype=np.float64)
    F = len(cams)
    if cams.ndim != 3 or cams.shape[1:] != (3, 4) or F < 3:
        raise InputError(f"need (F >= 3, 3, 4) cameras for a metric upgrade, got {cams.shape}")
    cams = cams / np.linalg.norm(cams, axis=(1, 2), keepdims=True)
    A = _omega_constraints(cams)
    omega_vec = np.linalg.svd(A)[2][-1]
    Om = np.zeros((4, 4))
    Om[np.triu_indices(4)] = omega_vec
    Om = Om + np.triu(Om, 1).T
    evals, evecs = np.linalg.eigh(Om)
    if np.sum(evals > 0) < np.sum(evals < 0):
        evals, evecs = -evals[::-1], evecs[:, ::-1]
    # Keep the three largest (positive) eigenvalues: the nearest rank-3 PSD quadric.
    order = np.argsort(evals)[::-1]
    top = evals[order[:3]]
    fail = MetricUpgrade(
        success=False,
        reason="",
        rotations=np.zeros((F, 3, 3)),
        translations=np.zeros((F, 3)),
        points=np.zeros((len(pts), 3)),
        world_from_projective=np.eye(4),
    )
    if top[2] <= 0:
        top = np.maximum(top, 1e-6 * top[0])
        if top[0] <= 0:
            return _replace(fail, reason=f"absolute dual quadric has no positive eigenvalues ({evals})")
    H3 = evecs[:, order[:3]] * np.sqrt(top)
    if refine:
        H3 = _refine_h3(cams, H3)
    h4 = np.linalg.svd(H3.T)[2][-1]  # orthogonal complement of span(H3)
    H = np.concatenate([H3, h4[:, None]], axis=1)
    return _decompose_metric(cams, pts, H, W, fail)


def _replace(result: MetricUpgrade, **changes) -> MetricUpgrade:
    from dataclasses import replace

    return replace(result, **changes)


def _refine_h3(cams: np.ndarray, H3: np.ndarray) -> np.ndarray:
    """Nonlinear refinement of ``Omega* = H3 H3^T`` so every ``P_f Omega* P_f^T`` is closest to ``c I``."""
    iu = np.triu_indices(3)

    def residuals(h: np.ndarray) -> np.ndarray:
        PH = cams @ h.reshape(4, 3)  # (F, 3, 3)
        w = PH @ PH.transpose(0, 2, 1)
        w = w / np.trace(w, axis1=1, axis2=2)[:, None, None]
        return (w - np.eye(3) / 3.0)[:, iu[0], iu[1]].ravel()

    scale = np.linalg.norm(H3)
    sol = least_squares(residuals, (H3 / scale).ravel(), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return sol.x.reshape(4, 3)


def _decompose_metric(cams, pts, H, W, fail) -> MetricUpgrade:
    PH = cams @ H  # (F, 3, 4)
    Af, bf = PH[:, :, :3], PH[:, :, 3]
    det = np.linalg.det(Af)
    if np.any(np.abs(det) < 1e-300):
        return _replace(fail, reason="metric upgrade produced a singular camera")
    s = np.sign(det) * np.abs(det) ** (1.0 / 3.0)
    R = np.stack([project_to_so3(a) for a in Af / s[:, None, None]])
    t = bf / s[:, None]
    Xh = np.linalg.solve(H, pts.T).T
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[:, :3] / Xh[:, 3:4]
    if not np.all(np.isfinite(X)):
        return _replace(fail, reason="points at infinity after the metric upgrade")
    depth = np.einsum("fij,pj->fp", R[:, 2:3], X)[:, :] + t[:, 2:3]
    if np.mean(depth > 0) < 0.5:
        # The reflected world X -> -X, t -> -t reprojects identically with positive depths.
        X, t, depth = -X, -t, -depth
    front = float(np.mean(depth > 0))
    # Gauge: frame 0 at the origin with identity rotation, unit mean distance to the points (similarity).
    R0, t0 = R[0], t[0]
    X = X @ R0.T + t0
    t = t - np.einsum("fij,j->fi", R @ R0.T, t0)
    R = R @ R0.T
    scale = np.mean(np.linalg.norm(X, axis=1))
    X, t = X / scale, t / scale
    rms = float("nan")
    if W is not None:
        cam_mats = np.concatenate([R, t[:, :, None]], axis=2)
        rms = _projective_rms(
            np.asarray(W, dtype=np.float64), cam_mats, np.concatenate([X, np.ones((len(X), 1))], 1)
        )
    ok = front > 0.9
    return MetricUpgrade(
        success=ok,
        reason="" if ok else f"only {front:.0%} of the points lie in front of the cameras",
        rotations=R,
        translations=t,
        points=X,
        world_from_projective=H,
        rms=rms,
        fraction_in_front=front,
    )
