"""Robust two-view estimators: essential matrix, fundamental matrix and homography with RANSAC.

Each estimator plugs the minimal solver of ``geometry/`` into the generic :func:`robust.ransac.ransac`:

================  ====================  =====================  ==============================
model             minimal (hypotheses)  local optimisation     residual (pixels^2)
================  ====================  =====================  ==============================
essential E       5-point (batched)     8-point + manifold     Sampson, via F = K2^-T E K1^-1
fundamental F     8-point, then 7-point normalised 8-point     Sampson
homography H      4-point DLT (batched) normalised DLT         mean of the two transfer errors
================  ====================  =====================  ==============================

Thresholds are always in pixels: the essential estimator solves in normalised coordinates but scores
with the equivalent pixel-space fundamental matrix, so ``max_error_px`` means the same for E and F and
unequal focal lengths are handled exactly.

Seven-point and five-point hypotheses that violate the oriented epipolar constraint on their own sample
(Chum, Werner & Matas 2004) are dropped before scoring: at 60 % outliers that removes about 90 % of the
F hypotheses of contaminated samples, and about 85 % of the E solutions of random samples (for E the
constraint is the cheap necessary part of cheirality: such a solution puts a sample point behind a
camera whichever of its four decompositions is taken).

After RANSAC both epipolar models are polished with a Cauchy loss whose scale and window follow the
noise level measured on the inliers (MAD of the Sampson residuals): E by Levenberg-Marquardt over
(R, |t| = 1) (the pose chosen by cheirality with ``epipolar.recover_pose``), F by Sampson-reweighted
eight-point (IRLS). Points just beyond the hard threshold then still contribute, which is what gives
MAGSAC-like accuracy; ``benchmarks/two_view.py`` measures it against OpenCV.

F on an easy pair (most real pairs) costs a fraction of the general case: 24 linear eight-point
samples (one LU solve each, no cubic) are drawn first, scored on 128 random points, and the best raw
hypothesis goes straight to the IRLS polish, whose first fit doubles as local optimisation
(``_eight_point_round``); seven-point LO-RANSAC (``ransac(..., polish_follows=True)``, then the
polish) runs only when the eight-point samples cannot reach the confidence. F is estimated, scored and
polished in Hartley-normalised coordinates throughout (the pixel Sampson distance follows from them
exactly, ``_scaled_line_selector``) and de-normalised once at the end. The arrays live in a stacked
(6, N) / (9, N) row layout: NumPy is several times faster along a long last axis, and at a few hundred
points the estimation is bound by the number of array calls, not by arithmetic.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.linalg import lapack as _lapack

from geomvision.errors import InputError
from geomvision.geometry import epipolar, homography
from geomvision.geometry.rigid import Rigid3d, skew
from geomvision.robust.ransac import (
    RansacOptions,
    RansacResult,
    RobustFit,
    draw_samples,
    msac_scores,
    ransac,
    required_iterations,
)
from geomvision.runtime.rng import as_rng

__all__ = [
    "TwoViewEstimate",
    "estimate_essential",
    "estimate_fundamental",
    "estimate_homography",
    "EssentialEstimator",
    "FundamentalEstimator",
    "HomographyEstimator",
    "refine_relative_pose",
    "refine_fundamental_irls",
]

logger = logging.getLogger(__name__)

#: inliers used to pick among the four decompositions of E (cheirality vote).
_POSE_VOTE_POINTS = 100
#: an essential matrix whose inliers are less than this fraction in front of both cameras is rejected.
_MIN_FRONT_RATIO = 0.75
#: maximum refine / re-select rounds of the essential-matrix polish.
_REFINE_ROUNDS = 3
#: a further polish round runs only if more than this fraction of the polished points changed.
_POLISH_RESELECT_FRACTION = 0.01
#: the polish uses a Cauchy loss of scale _POLISH_SCALE * sigma on the points within
#: max(threshold, _POLISH_WINDOW * sigma), sigma being the noise level estimated from the inliers.
_POLISH_WINDOW = 4.0
_POLISH_SCALE = 3.0
#: ... estimated from at most about this many residuals.
_NOISE_SAMPLE = 1024
#: eight-point samples drawn before the fundamental-matrix RANSAC falls back to seven-point samples ...
_QUICK_SAMPLES = 24
#: ... scored on at most about this many random points (all of them up to twice as many).
_QUICK_SCORE_POINTS = 128
#: reweighting rounds of the fundamental-matrix polish (``refine_fundamental_irls``'s default) ...
_IRLS_ITERATIONS = 4
#: ... but fits after the eight-point round: the raw hypothesis's least-squares fit and two robust rounds.
#: A third robust round lowered the templeRing translation median from 1.42 to 1.31 deg (MAGSAC++: 4.23)
#: for ~10 % more time per call, which put F at the 3x-OpenCV-RANSAC time budget instead of within it;
#: ``refine_fundamental_irls`` polishes further on request.
_EIGHT_POINT_POLISH_FITS = 3
#: ... which stop once successive least-squares vectors (unit, normalised coordinates) agree to this:
#: 1 - |cos| (an angle of about 1.4e-5 rad).
_IRLS_STEP_TOL = 1e-10
#: Levenberg-Marquardt stops once an accepted step lowers the cost by less than this fraction (a pose
#: change far below the noise; waiting for a rejected step costs several extra evaluations).
_LM_RTOL = 1e-6
#: residuals computed per chunk of models in the Sampson scoring (cache-sized temporaries).
_SAMPSON_CHUNK = 16384
#: floating-point state of the Sampson evaluations (a point on both epipoles gives 0 / 0): entered once
#: per scoring call or polish, not per evaluation (each ``np.errstate`` costs about a microsecond).
_QUIET = {"divide": "ignore", "invalid": "ignore"}


@dataclass(frozen=True)
class _Polish:
    """Robust-loss settings of the final polish, adapted to the measured noise of the inliers.

    The noise std is estimated as 1.4826 * median |r| of the inliers (MAD of the 1-D Sampson residuals),
    so that the soft window follows the data: real matches with 0.2 px noise are polished with a tight
    loss, synthetic 0.5 px noise with a wider one, whatever inlier threshold the caller chose.
    """

    window_px: float
    scale_px: float

    @classmethod
    def from_residuals(cls, r_sq: np.ndarray, thr: float) -> _Polish:
        # A median needs no more than ~1000 values (its relative standard error is then ~4 %): larger
        # sets are thinned by a fixed stride first.
        r_sq = r_sq[:: 1 + len(r_sq) // _NOISE_SAMPLE]
        inl = r_sq[r_sq <= thr**2]
        # Upper median by partition (np.median's generic machinery costs more than the selection here).
        k = len(inl) // 2
        sigma = 1.4826 * math.sqrt(float(np.partition(inl, k)[k])) if len(inl) else thr / 2.0
        sigma = min(max(sigma, 1e-3 * thr), thr)
        return cls(max(thr, _POLISH_WINDOW * sigma), _POLISH_SCALE * sigma)

    def near(self, r_sq: np.ndarray) -> np.ndarray:
        return np.flatnonzero(r_sq <= self.window_px**2)

    def sampson_weights(self, r_sq: np.ndarray, den: np.ndarray) -> np.ndarray:
        """(N,) weights of the epipolar rows in a reweighted eight-point fit: the Cauchy weight over the
        Sampson denominator ``den`` (which turns the algebraic error into the Sampson distance) inside
        the window, 0 outside it (and for undefined residuals)."""
        w = r_sq * (1.0 / self.scale_px**2)
        w += 1.0
        w *= den
        np.divide(1.0, w, out=w)  # den = 0: inf, a point on both epipoles (callers set _QUIET)
        return np.where(r_sq <= self.window_px**2, w, 0.0)  # NaN residuals (0 / 0) are outside

    def cost(self, r_sq: np.ndarray) -> float:
        """Truncated Cauchy cost of squared residuals: what the polish minimises, over all points."""
        s_sq = self.scale_px**2
        return float(s_sq * np.add.reduce(np.log1p(np.minimum(r_sq, self.window_px**2) / s_sq)))


@dataclass(frozen=True)
class TwoViewEstimate(RobustFit):
    """Result of a robust two-view estimation: the :class:`~geomvision.robust.ransac.RobustFit` fields, then two.

    ``success`` means a model with enough inliers (and, for E, a pose with points in front) was found;
    ``model`` is the (3, 3) E, F or H (pixel coordinates for F and H); ``score`` is in px^2.

    Attributes:
        cam2_from_cam1: relative pose with unit translation (essential only).
        cheirality_mask: (N,) bool inliers triangulated in front of both cameras (essential only).
    """

    cam2_from_cam1: Rigid3d | None = None
    cheirality_mask: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------
def _check_correspondences(x1, x2, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x1.shape[1] != 2 or x1.shape != x2.shape:
        raise InputError(f"x1_px and x2_px must be matching (N, 2) arrays, got {x1.shape} and {x2.shape}")
    if len(x1) < min_points:
        raise InputError(f"need at least {min_points} correspondences, got {len(x1)}")
    if math.isfinite(float(x1.sum()) + float(x2.sum())):  # NaN / inf propagate through the sums
        return x1, x2
    bad = ~(np.isfinite(x1).all(axis=1) & np.isfinite(x2).all(axis=1))
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} correspondences contain NaN or inf (first at row {int(np.argmax(bad))})"
        )
    return x1, x2


def _check_K(K, name: str) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"{name} must be (3, 3), got {K.shape}")
    if not np.all(np.isfinite(K)):
        raise InputError(f"{name} contains NaN or inf: {K.tolist()}")
    if not (np.allclose(K[2], [0.0, 0.0, 1.0]) and K[1, 0] == 0 and K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(
            f"{name} must be upper triangular with positive focals and last row (0, 0, 1), got {K.tolist()}"
        )
    return K


def _stacked_homogeneous(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """(N, 2), (N, 2) -> (6, N): rows ``u1, v1, 1, u2, v2, 1``; ``[:3]`` and ``[3:]`` are the (3, N)
    homogeneous points of image 1 and 2.

    The hot loops work on this row layout: NumPy reduces and broadcasts along a long contiguous last
    axis several times faster than over the short rows of (N, 2) arrays (a column mean of (2000, 4)
    costs 6x the row mean of its (4, 2000) transpose).
    """
    xh = np.empty((6, len(x1)))
    xh[0:2] = x1.T
    xh[3:5] = x2.T
    xh[2::3] = 1.0
    return xh


def _spread_degeneracy(scatter: np.ndarray, extent: float, name: str) -> str:
    """Reason string when the points coincide or lie on one line (no two-view model is defined), else ''.

    Args:
        scatter: (2, 2) scatter matrix of the centred points; extent: their largest absolute coordinate.
    """
    # Singular values of the centred points from the scatter matrix [[a, b], [b, c]], eigenvalues in
    # closed form: same test as an (N, 2) SVD at a fraction of the cost.
    (a, b), (_, c) = scatter.tolist()
    half_gap = math.hypot(0.5 * (a - c), b)
    sv = (math.sqrt(max(0.5 * (a + c) + half_gap, 0.0)), math.sqrt(max(0.5 * (a + c) - half_gap, 0.0)))
    scale = max(extent, 1.0)
    if sv[0] <= 1e-9 * scale:
        return f"degenerate input: all points in {name} coincide"
    if sv[1] <= 1e-6 * sv[0]:
        return f"degenerate input: all points in {name} are collinear"
    return ""


def _centred(xh: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(6, N) stacked points with each image's centroid subtracted (rows 2 and 5 stay 1), and the
    centroid ``[u1, v1, 0, u2, v2, 0]``."""
    centroid = np.add.reduce(xh, axis=1) / xh.shape[1]
    centroid[2::3] = 0.0
    return xh - centroid[:, None], centroid.tolist()


def _degeneracy_reason(scatter: np.ndarray, centroid: list[float]) -> str:
    """:func:`_spread_degeneracy` of image 1 then image 2, else ''.

    Args:
        scatter: (6, 6) ``C @ C.T`` of the :func:`_centred` stacked points C; centroid: their centroid
            (its magnitude sets the scale of "coincide").
    """
    scale1, scale2 = max(map(abs, centroid[0:2])), max(map(abs, centroid[3:5]))
    return _spread_degeneracy(scatter[0:2, 0:2], scale1, "image 1") or _spread_degeneracy(
        scatter[3:5, 3:5], scale2, "image 2"
    )


def _pair_degeneracy(x1: np.ndarray, x2: np.ndarray) -> str:
    """First :func:`_spread_degeneracy` reason of image 1 then image 2, else '' (shared input gate)."""
    c, centroid = _centred(_stacked_homogeneous(x1, x2))
    return _degeneracy_reason(c @ c.T, centroid)


def _hartley_rows(xh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Isotropic normalisation (H&Z 4.4.4) of both images of the (6, N) stacked points at once.

    Each image's points are centred and scaled to an RMS distance of sqrt(2) (H&Z scale the mean
    distance; the RMS comes free from the scatter matrix that the degeneracy test needs anyway, and
    conditions the linear systems as well).

    Returns:
        (qh (6, N) normalised stacked points, T1, T2 (3, 3) with ``qh[:3] = T1 @ xh[:3]``,
        ``qh[3:] = T2 @ xh[3:]``, the scatter (6, 6) of the centred pixels and their centroid, for
        :func:`_degeneracy_reason`).
    """
    qh, c = _centred(xh)
    scatter = qh @ qh.T
    n = xh.shape[1]
    s1, s2 = (
        math.sqrt(2.0 * n / ms) if ms > 1e-300 else 1.0
        for ms in (scatter[0, 0] + scatter[1, 1], scatter[3, 3] + scatter[4, 4])
    )
    qh *= np.array([s1, s1, 1.0, s2, s2, 1.0])[:, None]
    T1 = np.array([[s1, 0.0, -s1 * c[0]], [0.0, s1, -s1 * c[1]], [0.0, 0.0, 1.0]])
    T2 = np.array([[s2, 0.0, -s2 * c[3]], [0.0, s2, -s2 * c[4]], [0.0, 0.0, 1.0]])
    return qh, T1, T2, scatter, c


def _denormalizer(T1: np.ndarray, T2: np.ndarray) -> np.ndarray:
    """(9, 9) D with ``vec(T2^T Fn T1) = D @ vec(Fn)`` (row-major vec): ``kron(T2^T, T1^T)``, which
    de-normalises a stack of hypotheses with one GEMM."""
    return np.multiply.outer(T2.T, T1.T).transpose(0, 2, 1, 3).reshape(9, 9)


def _epipolar_rows_T(qh: np.ndarray) -> np.ndarray:
    """(9, N) epipolar rows ``x2 (x) x1`` (row-major vec(F), H&Z eq. 11.3) of the (6, N) stacked points."""
    return (qh[3:, None, :] * qh[None, :3, :]).reshape(9, qh.shape[1])


def _homogeneous_T(x: np.ndarray) -> np.ndarray:
    """(N, 2) -> (3, N) homogeneous columns."""
    return np.vstack([x.T, np.ones(len(x))])


def _line_selector() -> np.ndarray:
    """(24, 9) Q with ``(Q @ vec(F)).reshape(4, 6) = [[F[0], 0], [F[1], 0], [0, F[:, 0]], [0, F[:, 1]]]``
    (row-major vec): applied to the stacked points, the first two components of ``F x1`` and of
    ``F^T x2``, all the Sampson denominator needs."""
    Q = np.zeros((4, 6, 9))
    for j in range(3):
        Q[0, j, j] = Q[1, j, 3 + j] = 1.0  # F[0, j], F[1, j]
        Q[2, 3 + j, 3 * j] = Q[3, 3 + j, 3 * j + 1] = 1.0  # F[j, 0], F[j, 1]
    return Q.reshape(24, 9)


_LINE_SELECTOR = _line_selector()


def _sampson_sq(
    F: np.ndarray,
    xh: np.ndarray,
    rows: np.ndarray,
    index: np.ndarray | None = None,
    selector: np.ndarray = _LINE_SELECTOR,
) -> np.ndarray:
    """Squared Sampson distances for a stack of F (M, 3, 3) -> (M, N).

    Unchecked twin of :func:`epipolar.sampson_distance_sq` for the RANSAC hot loop, on the (6, N)
    stacked points (:func:`_stacked_homogeneous`) and their (9, N) epipolar rows
    (:func:`_epipolar_rows_T` of ``xh``): the algebraic errors of all models are one GEMM with the rows,
    the denominators one GEMM with the points. ``index`` selects a subset of the points. ``selector``
    (24, 9) maps vec(F) to the rows of the denominator's line components (``_LINE_SELECTOR`` for pixel
    points; :func:`_scaled_line_selector` gives pixel distances from Hartley-normalised points and F).
    Models are processed in chunks of about ``_SAMPSON_CHUNK`` residuals (cache-sized temporaries).
    """
    if index is not None:
        xh, rows = xh[:, index], rows[:, index]
    M, n = len(F), xh.shape[1]
    f = F.reshape(M, 9)
    out = np.empty((M, n))
    step = max(1, _SAMPSON_CHUNK // max(n, 1))
    for s in range(0, M, step):
        fc = f[s : s + step]
        alg = fc @ rows
        alg *= alg
        lines = ((fc @ selector.T).reshape(-1, 6) @ xh).reshape(len(fc), 4, n)
        lines *= lines
        # 0/0 (a point on both epipoles) gives NaN, which the MSAC scoring treats as an outlier; callers
        # silence the warning (_QUIET).
        np.divide(alg, np.add.reduce(lines, axis=1), out=out[s : s + step])
    return out


def _sampson_single(
    F: np.ndarray, xh: np.ndarray, rows: np.ndarray, selector: np.ndarray = _LINE_SELECTOR
) -> tuple[np.ndarray, np.ndarray]:
    """Squared Sampson distances (N,) of one (3, 3) F (or its (9,) vec) and their denominators (N,)
    (the IRLS weights need both); see :func:`_sampson_sq`."""
    f = F.ravel()
    alg = f @ rows
    lines = (selector @ f).reshape(4, 6) @ xh
    lines *= lines
    den = np.add.reduce(lines, axis=0)
    alg *= alg
    alg /= den  # 0 / 0 (a point on both epipoles) is NaN: callers silence the warning (_QUIET)
    return alg, den


def _scaled_line_selector(s1: float, s2: float) -> np.ndarray:
    """(24, 9) line selector for Hartley-normalised points and F, giving Sampson distances in pixels.

    With ``q = T x`` (T = s [I | -s c]) and ``Fn = T2^-T F T1^-1`` the algebraic error is unchanged,
    ``q2^T Fn q1 = x2^T F x1``, and the first two components of the pixel lines are scaled copies of
    the normalised ones: ``(F x1)[:2] = s2 (Fn q1)[:2]``, ``(F^T x2)[:2] = s1 (Fn^T q2)[:2]``. Scaling the
    selector's rows accordingly lets F be scored without ever de-normalising a hypothesis.
    """
    return _LINE_SELECTOR * np.repeat([s2, s2, s1, s1], 6)[:, None]


def _fundamental_from_rows(rows_T: np.ndarray, denormalize: np.ndarray | None = None) -> np.ndarray:
    """Rank-2, unit-norm F from precomputed epipolar rows of Hartley-normalised points (H&Z Alg. 11.1).

    The estimators normalise all N points once and keep their (9, N) rows, so a least-squares refit on
    any subset is one 9x9 normal matrix and its smallest eigenvector: no per-refit normalisation. The
    global normalisation conditions a subset of the same images as well as its own would.

    Args:
        rows_T: (9, K) rows ``x2n (x) x1n`` (one column per point) of the subset.
        denormalize: (9, 9) :func:`_denormalizer` of the normalising similarities, or None to keep F in
            the normalised coordinates.

    Returns:
        (3, 3) F (pixels, or normalised coordinates for ``denormalize=None``).
    """
    F = epipolar.project_to_rank2(_smallest_eigenvector(rows_T @ rows_T.T).reshape(3, 3))
    if denormalize is not None:
        F = (denormalize @ F.ravel()).reshape(3, 3)
    return F / math.sqrt(float(np.vdot(F, F)))


def _smallest_eigenvector(normal: np.ndarray) -> np.ndarray:
    """(9,) unit eigenvector of the smallest eigenvalue of a symmetric (9, 9) normal matrix.

    LAPACK is called directly: numpy.linalg's wrappers cost more than the 9x9 decomposition itself, and
    this runs several times per RANSAC call. dsyevr computes the smallest eigenpair only.
    """
    _, vecs, _, _, info = _lapack.dsyevr(normal, range="I", il=1, iu=1)
    if info != 0:
        return np.linalg.eigh(normal)[1][:, 0]
    return vecs[:, 0]


class EssentialEstimator:
    """Five-point essential-matrix hypotheses scored by the pixel Sampson error.

    Args:
        x1_px, x2_px: (N, 2) pixels; K1, K2: (3, 3) intrinsics of image 1 and 2.
    """

    sample_size = 5

    def __init__(self, x1_px: np.ndarray, x2_px: np.ndarray, K1: np.ndarray, K2: np.ndarray):
        self.K1_inv = np.linalg.inv(K1)
        self.K2_inv = np.linalg.inv(K2)
        self.xh = _stacked_homogeneous(x1_px, x2_px)
        self.px_rows = _epipolar_rows_T(self.xh)
        self.xn1 = (self.K1_inv @ self.xh[:3])[:2].T
        self.xn2 = (self.K2_inv @ self.xh[3:])[:2].T
        qh, T1, T2, _, _ = _hartley_rows(_stacked_homogeneous(self.xn1, self.xn2))
        self.rows_T = _epipolar_rows_T(qh)
        self._denormalize = _denormalizer(T1, T2)

    def to_fundamental(self, E: np.ndarray) -> np.ndarray:
        return self.K2_inv.T @ E @ self.K1_inv

    def fit_batch(self, samples: np.ndarray) -> np.ndarray:
        x1, x2 = self.xn1[samples], self.xn2[samples]
        E, b = epipolar.essential_5point_hypotheses(x1, x2)
        # A solution whose own sample violates the oriented epipolar constraint puts some of its points
        # behind a camera in every decomposition: it cannot come from an all-inlier sample.
        return E[_oriented_consistent(E, x1[b], x2[b])]

    def fit(self, sample_idx: np.ndarray) -> list[np.ndarray]:
        return list(self.fit_batch(np.asarray(sample_idx)[None]))

    def residuals_sq_batch(self, models: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        if index is None and len(models) == 1:
            return self.residuals_sq(models[0])[None]
        with np.errstate(**_QUIET):
            return _sampson_sq(self.to_fundamental(models), self.xh, self.px_rows, index)

    def residuals_sq(self, model: np.ndarray) -> np.ndarray:
        with np.errstate(**_QUIET):
            return _sampson_single(self.to_fundamental(np.asarray(model)), self.xh, self.px_rows)[0]

    def refit(self, inlier_idx: np.ndarray) -> list[np.ndarray]:
        if len(inlier_idx) < 8:
            return []
        M = _fundamental_from_rows(self.rows_T[:, inlier_idx], self._denormalize)
        # Closest essential matrix (H&Z Result 9.18), LAPACK called directly as in the refit itself.
        U, _, Vt, info = _lapack.dgesdd(M)
        if info != 0:
            return [epipolar.project_to_essential(M)]
        return [(U[:, :2] @ Vt[:2]) / math.sqrt(2.0)]


def _cross_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross products of (..., 3) vectors, written out (``np.cross`` spends ~20 us on axis handling)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _oriented_consistent(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Oriented epipolar constraint (Chum, Werner & Matas 2004) on the points of each minimal sample.

    Points in front of both cameras satisfy ``e2 x x2 ~+ F x1``: the two lines agree in orientation, so
    ``(e2 x x2) . (F x1)`` has the same sign for all true correspondences. A hypothesis whose own sample
    mixes signs cannot come from an all-inlier sample and is dropped before scoring; with many outliers
    this removes a good part of the hypotheses at a cost far below their Sampson scoring.

    Args:
        F: (M, 3, 3) hypotheses; x1, x2: (M, K, 2) the sample points each hypothesis was fitted to
            (any coordinates related to pixels by positive similarities, e.g. Hartley-normalised).

    Returns:
        (M,) bool.
    """
    # Left epipole e2 (e2^T F = 0): the cross product of the first two columns of F. Where those are
    # (nearly) parallel the epipole is ill-defined from them and the hypothesis is kept (never rejected
    # on an unreliable test).
    c0, c1 = F[:, :, 0], F[:, :, 1]
    e = _cross_rows(c0, c1)  # (M, 3)
    # |c0 x c1|^2 = |c0|^2 |c1|^2 sin^2(angle): scale-free test of (near) parallel columns.
    reliable = np.einsum("ij,ij->i", e, e) > 1e-12 * np.einsum("ij,ij->i", c0, c0) * np.einsum(
        "ij,ij->i", c1, c1
    )
    u, v = x2[..., 0], x2[..., 1]
    e0, e1, e2 = e[:, :1], e[:, 1:2], e[:, 2:]
    Fx1 = F[:, :, :2] @ np.swapaxes(x1, -1, -2) + F[:, :, 2:]  # (M, 3, K) epipolar lines in image 2
    s = (e1 - e2 * v) * Fx1[:, 0] + (e2 * u - e0) * Fx1[:, 1] + (e0 * v - e1 * u) * Fx1[:, 2]
    return ~reliable | np.all(s > 0, axis=1) | np.all(s < 0, axis=1)


class FundamentalEstimator:
    """Seven-point (or linear eight-point) fundamental-matrix hypotheses on Hartley-normalised points,
    scored by the Sampson distance in pixels.

    The models this estimator fits, scores and refits are F in the Hartley-normalised coordinates
    (``Fn = T2^-T F T1^-1``): the pixel Sampson distance is computed from them directly
    (:func:`_scaled_line_selector`), so no hypothesis is de-normalised; :meth:`to_pixels` and
    :meth:`to_normalized` convert. :meth:`fit_batch` takes seven-point samples (RANSAC's, ``sample_size``)
    or linear eight-point ones (one solution each, ``_eight_point_round``). Seven-point hypotheses
    violating the oriented epipolar constraint on their own sample are dropped
    (:func:`_oriented_consistent`). Points are kept in the stacked (6, N) row layout
    (:func:`_stacked_homogeneous`), normalised in ``qh``.
    """

    sample_size = 7

    def __init__(self, x1_px: np.ndarray, x2_px: np.ndarray):
        self.x1, self.x2 = x1_px, x2_px
        self.qh, self.T1, self.T2, self._scatter, self._centroid = _hartley_rows(
            _stacked_homogeneous(x1_px, x2_px)
        )
        self.rows_T = _epipolar_rows_T(self.qh)
        self.rows = self.rows_T.T  # (N, 9) view: minimal samples gather their rows from it
        self.line_selector = _scaled_line_selector(self.T1[0, 0], self.T2[0, 0])

    def degeneracy(self) -> str:
        """:func:`_degeneracy_reason` of the input points ('' when both images are spread in 2-D)."""
        return _degeneracy_reason(self._scatter, self._centroid)

    def to_pixels(self, Fn: np.ndarray) -> np.ndarray:
        """(3, 3) unit-norm pixel F ``T2^T Fn T1`` of a normalised-coordinate model."""
        F = self.T2.T @ Fn.reshape(3, 3) @ self.T1
        return F / math.sqrt(float(np.vdot(F, F)))

    def to_normalized(self, F: np.ndarray) -> np.ndarray:
        """(3, 3) unit-norm normalised-coordinate model ``T2^-T F T1^-1`` of a pixel F."""
        Fn = np.linalg.solve(self.T2.T, np.linalg.solve(self.T1.T, np.asarray(F, dtype=float).T).T)
        return Fn / math.sqrt(float(np.vdot(Fn, Fn)))

    def fit_batch(self, samples: np.ndarray) -> np.ndarray:
        """(M, 3, 3) normalised-coordinate hypotheses of (B, 7) or (B, 8) samples, not scaled to unit
        norm: the Sampson distance is scale-invariant, and the refits and the polish return unit F."""
        if samples.shape[1] == 8:
            return epipolar.fundamental_8point_hypotheses(self.rows[samples])
        Fn, b = epipolar.fundamental_7point_hypotheses(self.rows[samples])
        q = self.qh[:, samples[b]]  # (6, M, 7): one gather for both images
        x1, x2 = q[0:2].transpose(1, 2, 0), q[3:5].transpose(1, 2, 0)
        return Fn[_oriented_consistent(Fn, x1, x2)]

    def fit(self, sample_idx: np.ndarray) -> list[np.ndarray]:
        return list(self.fit_batch(np.asarray(sample_idx)[None]))

    def residuals_sq_batch(self, models: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        with np.errstate(**_QUIET):
            if index is None and len(models) == 1:
                return self.sampson(models[0])[0][None]
            return _sampson_sq(models, self.qh, self.rows_T, index, self.line_selector)

    def residuals_sq(self, model: np.ndarray) -> np.ndarray:
        with np.errstate(**_QUIET):
            return self.sampson(np.asarray(model))[0]

    def sampson(self, Fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Squared pixel Sampson distances (N,) of a normalised model (any scale) and their denominators;
        unchecked (callers set ``_QUIET``)."""
        return _sampson_single(Fn, self.qh, self.rows_T, self.line_selector)

    def refit(self, inlier_idx: np.ndarray) -> list[np.ndarray]:
        if len(inlier_idx) < 8:
            return []
        return [_fundamental_from_rows(self.rows_T[:, inlier_idx])]


_TRIPLES = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])


class HomographyEstimator:
    """Four-point homography hypotheses (batched DLT, H&Z 4.1) scored by the mean squared transfer error.

    The residual is ``(d(x2, H x1)^2 + d(x1, H^-1 x2)^2) / 2`` (half of H&Z's symmetric transfer error,
    :func:`geometry.homography.homography_transfer_errors_sq`) so that it is in px^2 per image.
    """

    sample_size = 4

    def __init__(self, x1_px: np.ndarray, x2_px: np.ndarray):
        self.x1, self.x2 = x1_px, x2_px
        self.xn1, self.T1 = epipolar.hartley_normalization(x1_px)
        self.xn2, self.T2 = epipolar.hartley_normalization(x2_px)
        self.x1h = _homogeneous_T(x1_px)
        self.x2h = _homogeneous_T(x2_px)

    def _non_degenerate(self, samples: np.ndarray) -> np.ndarray:
        """(B,) True for samples without three (nearly) collinear points and with consistent orientation.

        For a plane in front of both cameras every triple keeps (or every triple flips) its orientation.
        """
        signs = []
        for xn in (self.xn1, self.xn2):
            pts = np.concatenate([xn[samples], np.ones(samples.shape + (1,))], axis=-1)  # (B, 4, 3)
            dets = np.linalg.det(pts[:, _TRIPLES])  # (B, 4)
            signs.append(dets)
        d1, d2 = signs
        ok = (np.abs(d1).min(axis=1) > 1e-3) & (np.abs(d2).min(axis=1) > 1e-3)
        ratio_sign = np.sign(d1 * d2)
        return ok & np.all(ratio_sign == ratio_sign[:, :1], axis=1)

    def fit_batch(self, samples: np.ndarray) -> np.ndarray:
        samples = samples[self._non_degenerate(samples)]
        if len(samples) == 0:
            return np.zeros((0, 3, 3))
        x1 = self.xn1[samples]
        x2 = self.xn2[samples]
        B = len(samples)
        xh = np.concatenate([x1, np.ones((B, 4, 1))], axis=-1)
        zeros = np.zeros((B, 4, 3))
        row1 = np.concatenate([zeros, -xh, x2[..., 1:2] * xh], axis=-1)
        row2 = np.concatenate([xh, zeros, -x2[..., 0:1] * xh], axis=-1)
        A = np.stack([row1, row2], axis=2).reshape(B, 8, 9)
        _, _, Vt = np.linalg.svd(A, full_matrices=True)
        Hn = Vt[:, -1].reshape(B, 3, 3)
        H = np.linalg.inv(self.T2) @ Hn @ self.T1
        return H / np.linalg.norm(H, axis=(-2, -1), keepdims=True)

    def fit(self, sample_idx: np.ndarray) -> list[np.ndarray]:
        return list(self.fit_batch(np.asarray(sample_idx)[None]))

    def residuals_sq_batch(self, models: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        x1h, x2h = (self.x1h, self.x2h) if index is None else (self.x1h[:, index], self.x2h[:, index])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            fwd = models @ x1h
            fwd = fwd[:, :2] / fwd[:, 2:3]
            inv = np.linalg.pinv(models)  # pinv: a singular hypothesis gives inf residuals, not an exception
            bwd = inv @ x2h
            bwd = bwd[:, :2] / bwd[:, 2:3]
            err = 0.5 * (np.sum((fwd - x2h[:2]) ** 2, axis=1) + np.sum((bwd - x1h[:2]) ** 2, axis=1))
        return np.where(np.isfinite(err), err, np.inf)

    def residuals_sq(self, model: np.ndarray) -> np.ndarray:
        return self.residuals_sq_batch(np.asarray(model)[None])[0]

    def refit(self, inlier_idx: np.ndarray) -> list[np.ndarray]:
        try:
            return [homography.homography_dlt(self.x1[inlier_idx], self.x2[inlier_idx])]
        except InputError:  # degenerate inlier set: keep the current model
            return []


# ----------------------------------------------------------------------------------------------------
# public estimation functions
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _options_before_polish(options: RansacOptions) -> RansacOptions:
    """RANSAC options when the robust polish follows: the polish supersedes the final least-squares refit.
    Cached: options are frozen (hashable), and a replace (with its validation) costs ~10 us.

    The local optimisations in the loop keep their full schedule: their inlier count sets the adaptive
    sample count, and a shorter schedule that stops short of the final inlier set made RANSAC draw up to
    twice the samples at 60 % outliers.
    """
    return replace(options, final_refit=False)


def _failure(reason: str, n: int, result: RansacResult | None = None) -> TwoViewEstimate:
    if result is None:
        return TwoViewEstimate(False, reason, None, np.zeros(n, dtype=bool), 0, float("inf"))
    return TwoViewEstimate(
        False, reason, result.model, result.inlier_mask, result.num_iterations, result.score
    )


def _rodrigues(rotvecs: np.ndarray) -> np.ndarray:
    """(M, 3) rotation vectors -> (M, 3, 3) matrices; lean version of ``rigid.rotvec_to_matrix`` for the
    LM inner loop (series expansion below 1e-8 rad keeps it exact near zero)."""
    theta = np.linalg.norm(rotvecs, axis=1)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(theta) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(theta)) / safe**2)
    W = skew(rotvecs)
    return np.eye(3) + a[:, None, None] * W + b[:, None, None] * (W @ W)


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane orthogonal to the unit vector t.

    Closed form (two cross products with the axis least aligned with t, written out: ``np.cross`` costs
    tens of microseconds of axis bookkeeping) instead of an SVD: it is called on every LM step.
    """
    tx, ty, tz = float(t[0]), float(t[1]), float(t[2])
    k = int(np.argmin(np.abs(t)))
    # b1 = t x e_k for the axis e_k least aligned with t.
    b1 = (0.0, tz, -ty) if k == 0 else ((-tz, 0.0, tx) if k == 1 else (ty, -tx, 0.0))
    n1 = math.sqrt(b1[0] ** 2 + b1[1] ** 2 + b1[2] ** 2)
    b1 = (b1[0] / n1, b1[1] / n1, b1[2] / n1)
    b2 = (ty * b1[2] - tz * b1[1], tz * b1[0] - tx * b1[2], tx * b1[1] - ty * b1[0])
    return np.array([[b1[0], b2[0]], [b1[1], b2[1]], [b1[2], b2[2]]])


def _rotvec_matrix(w: np.ndarray) -> np.ndarray:
    """(3,) rotation vector -> (3, 3) matrix (Rodrigues), scalar arithmetic for the LM update step."""
    theta = math.sqrt(float(w @ w))
    if theta < 1e-8:
        a, b = 1.0 - theta**2 / 6.0, 0.5 - theta**2 / 24.0
    else:
        a, b = math.sin(theta) / theta, (1.0 - math.cos(theta)) / theta**2
    W = skew(w)
    return np.eye(3) + a * W + b * (W @ W)


def refine_relative_pose(
    cam2_from_cam1: Rigid3d,
    x1_px: np.ndarray,
    x2_px: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    *,
    max_iterations: int = 10,
    loss_scale_px: float | None = None,
) -> Rigid3d:
    """Levenberg-Marquardt on the pixel Sampson error over (R, t) with ``|t| = 1`` (5 parameters).

    Each iteration re-linearises at the current pose: a left rotation-vector update for R and a step in
    the 2D tangent plane of the unit sphere at t. Residuals and the forward-difference Jacobian are one
    batched evaluation of 6 poses (cheaper than scipy's generic driver for this 5-parameter problem).
    Without ``loss_scale_px`` the cost is the plain sum of squares (pass inliers only); with it, the
    Cauchy loss ``s^2 log(1 + (r / s)^2)`` (iteratively reweighted), which lets points a little beyond
    the inlier threshold contribute with a reduced weight (in the spirit of MAGSAC's sigma-consensus).

    Args:
        cam2_from_cam1: initial pose (translation direction used, norm ignored).
        x1_px, x2_px: (N, 2) inlier pixels, N >= 5.
        K1, K2: (3, 3) intrinsics.
        max_iterations: maximum LM iterations.
        loss_scale_px: Cauchy scale s in pixels, or None for least squares.

    Returns:
        Refined pose with unit translation (the initial one if no step lowers the cost).
    """
    K1_inv, K2_inv = np.linalg.inv(K1), np.linalg.inv(K2)
    x1h, x2h = _homogeneous_T(x1_px), _homogeneous_T(x2_px)
    step = 1e-7
    perturb = np.vstack([np.zeros(5), step * np.eye(5)])  # base pose + one forward step per parameter
    # The rotation perturbations are the same at every iteration: their matrices are computed once.
    dR = _rodrigues(perturb[:, :3])
    t_steps = perturb[:, 3:]

    def evaluate(R: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(6, N) signed Sampson distances in px at (R, t) and at its 5 forward steps."""
        t_new = t + t_steps @ _tangent_basis(t).T
        t_new /= np.sqrt(np.einsum("ij,ij->i", t_new, t_new))[:, None]
        F = (K2_inv.T @ skew(t_new)) @ (dR @ (R @ K1_inv))
        m, n = len(F), x1h.shape[1]
        # 2-D GEMMs: NumPy's stacked (M, 3, 3) @ (3, N) matmul is not BLAS and several times slower.
        Fx1 = (F.reshape(3 * m, 3) @ x1h).reshape(m, 3, n)
        Ftx2 = (np.swapaxes(F[:, :, :2], -1, -2).reshape(2 * m, 3) @ x2h).reshape(m, 2, n)
        alg = Fx1[:, 0] * x2h[0] + Fx1[:, 1] * x2h[1] + Fx1[:, 2]
        den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
        return alg / np.sqrt(np.maximum(den, 1e-300))

    def apply(R: np.ndarray, t: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t_new = t + _tangent_basis(t) @ delta[3:]
        return _rotvec_matrix(delta[:3]) @ R, t_new / math.sqrt(float(t_new @ t_new))

    R = cam2_from_cam1.rotation
    t = cam2_from_cam1.translation / np.linalg.norm(cam2_from_cam1.translation)

    def robust(r: np.ndarray) -> tuple[float, np.ndarray]:
        """Cost and IRLS weights of the residuals."""
        if loss_scale_px is None:
            return float(r @ r), np.ones_like(r)
        z = (r / loss_scale_px) ** 2
        return float(loss_scale_px**2 * np.log1p(z).sum()), 1.0 / (1.0 + z)

    rows = evaluate(R, t)
    r, J = rows[0], ((rows[1:] - rows[0]) / step).T
    cost, w = robust(r)
    damping = 1e-4
    for _ in range(max_iterations):
        H = J.T @ (w[:, None] * J)
        g = J.T @ (w * r)
        try:
            delta = np.linalg.solve(H + damping * np.diag(np.diag(H) + 1e-12), -g)
        except np.linalg.LinAlgError:
            break
        R_new, t_new = apply(R, t, delta)
        rows = evaluate(R_new, t_new)
        r_new = rows[0]
        cost_new, w_new = robust(r_new)
        if not np.isfinite(cost_new) or cost_new >= cost:
            damping *= 10.0
            if damping > 1e8:
                break
            continue
        converged = cost - cost_new <= _LM_RTOL * cost
        R, t, r, J, cost, w = R_new, t_new, r_new, ((rows[1:] - r_new) / step).T, cost_new, w_new
        damping = max(damping / 10.0, 1e-10)
        if converged:
            break
    return Rigid3d(R, t)


def estimate_essential(
    x1_px: np.ndarray,
    x2_px: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    options: RansacOptions | None = None,
    *,
    refine: bool = True,
    rng: np.random.Generator | int | None = None,
) -> TwoViewEstimate:
    """Essential matrix and relative pose of a calibrated pair with 5-point LO-RANSAC.

    Args:
        x1_px, x2_px: (N, 2) matched pixels in image 1 and 2 (OpenCV origin), N >= 5.
        K1, K2: (3, 3) intrinsics of image 1 and 2.
        options: RANSAC options; ``max_error_px`` bounds the Sampson distance in pixels.
        refine: polish (R, t) by Levenberg-Marquardt on the Sampson error of the inliers.
        rng: seed or generator.

    Returns:
        :class:`TwoViewEstimate` with E (normalised coordinates, unit Frobenius norm, ``E = [t]_x R``
        after refinement), ``cam2_from_cam1`` (unit translation) and the cheirality mask.

    Raises:
        InputError: wrong shapes, NaN/inf, fewer than 5 correspondences, invalid K.
    """
    options = options or RansacOptions()
    x1, x2 = _check_correspondences(x1_px, x2_px, EssentialEstimator.sample_size)
    K1, K2 = _check_K(K1, "K1"), _check_K(K2, "K2")
    n = len(x1)
    if reason := _pair_degeneracy(x1, x2):
        return _failure(reason, n)
    est = EssentialEstimator(x1, x2, K1, K2)
    res = ransac(est, n, _options_before_polish(options) if refine else options, rng=rng)
    if not res.success:
        return _failure(res.reason, n, res)
    E, mask, score = res.model, res.inlier_mask, res.score
    idx = np.flatnonzero(mask)
    # The cheirality vote needs few points: an evenly spread subset keeps triangulation cheap.
    vote = idx[:: max(1, len(idx) // _POSE_VOTE_POINTS)]
    pose, _ = epipolar.recover_pose(E, est.xn1[vote], est.xn2[vote])
    # Polish with a Cauchy loss on every point within a noise-adapted window, then re-select and
    # polish again while the truncated robust cost drops. Soft weights let correct matches just beyond
    # the hard threshold count, which is where MAGSAC-style estimators gain their accuracy.
    thr = options.max_error_px
    r = est.residuals_sq(E)
    polish = _Polish.from_residuals(r, thr)
    cost = polish.cost(r)
    near = polish.near(r)
    for _ in range(_REFINE_ROUNDS if refine else 0):
        if len(near) < 6:
            break
        refined = refine_relative_pose(pose, x1[near], x2[near], K1, K2, loss_scale_px=polish.scale_px)
        E_ref = epipolar.essential_from_pose(refined)
        E_ref /= np.linalg.norm(E_ref)
        r_ref = est.residuals_sq(E_ref)
        cost_ref = polish.cost(r_ref)
        if not cost_ref < cost:
            break
        E, pose, r, cost = E_ref, refined, r_ref, cost_ref
        new_near = polish.near(r)
        # (Nearly) the same points: another round converges to (nearly) the same optimum. A handful of
        # points entering or leaving the soft window among hundreds moves the pose far below the noise.
        changed = len(np.setxor1d(new_near, near, assume_unique=True))
        if changed <= _POLISH_RESELECT_FRACTION * len(near):
            break
        near = new_near
    mask = r <= thr**2
    score = float(msac_scores(r, thr**2))
    idx = np.flatnonzero(mask)
    front = epipolar.cheirality_mask(pose, est.xn1[idx], est.xn2[idx])
    cheirality = np.zeros(n, dtype=bool)
    cheirality[idx[front]] = True
    n_front = int(front.sum())
    reason = ""
    if n_front < options.min_num_inliers:
        reason = f"{n_front} inliers in front of both cameras < {options.min_num_inliers}"
    elif n_front < _MIN_FRONT_RATIO * len(idx):
        # Under pure rotation (or a baseline lost in the noise) E fits every match but the translation is
        # arbitrary: the triangulated points fall in front / behind at random instead of all in front.
        reason = (
            f"only {n_front} of {len(idx)} inliers in front of both cameras "
            f"(< {100 * _MIN_FRONT_RATIO:.0f} %): pure rotation or too small a baseline"
        )
    if reason:
        return TwoViewEstimate(False, reason, E, mask, res.num_iterations, score, pose, cheirality)
    return TwoViewEstimate(True, "", E, mask, res.num_iterations, score, pose, cheirality)


def estimate_fundamental(
    x1_px: np.ndarray,
    x2_px: np.ndarray,
    options: RansacOptions | None = None,
    *,
    refine: bool = True,
    rng: np.random.Generator | int | None = None,
) -> TwoViewEstimate:
    """Fundamental matrix of an uncalibrated pair: linear eight-point samples first (enough on most real
    pairs, see ``_eight_point_round``), 7-point LO-RANSAC (8-point refits) when they are not, then the
    IRLS polish.

    Args:
        x1_px, x2_px: (N, 2) matched pixels, N >= 7 (>= 8 for local optimisation).
        options: RANSAC options; ``max_error_px`` bounds the Sampson distance in pixels.
        refine: polish F with :func:`refine_fundamental_irls` after RANSAC; False gives plain 7-point
            LO-RANSAC (no eight-point round, whose samples rely on the polish).
        rng: seed or generator.

    Returns:
        :class:`TwoViewEstimate` with the rank-2, unit-norm F (``x2^T F x1 = 0``, pixel coordinates).

    Raises:
        InputError: wrong shapes, NaN/inf or fewer than 7 correspondences.
    """
    options = options or RansacOptions()
    x1, x2 = _check_correspondences(x1_px, x2_px, FundamentalEstimator.sample_size)
    n = len(x1)
    est = FundamentalEstimator(x1, x2)
    if reason := est.degeneracy():
        return _failure(reason, n)
    rng = as_rng(rng)
    quick = _eight_point_round(est, n, options, rng) if refine else None
    if quick is not None:
        Fn, r, num_samples = quick
    else:
        res = ransac(
            est, n, _options_before_polish(options) if refine else options, rng=rng, polish_follows=refine
        )
        if not res.success:
            return _failure(res.reason, n, res)
        Fn, r, num_samples = res.model, res.residuals_sq, res.num_iterations
        if refine:
            Fn, (r, _) = _irls_polish(
                Fn, est, options.max_error_px, _IRLS_ITERATIONS, raw=not res.locally_optimized
            )
        elif r is None:
            r = est.residuals_sq(Fn)
    F = est.to_pixels(Fn)
    mask = r <= options.max_error_px**2
    score = float(msac_scores(r, options.max_error_px**2))
    n_in = int(np.count_nonzero(mask))
    if n_in < options.min_num_inliers:
        return TwoViewEstimate(
            False, f"{n_in} inliers < {options.min_num_inliers}", F, mask, num_samples, score
        )
    return TwoViewEstimate(True, "", F, mask, num_samples, score)


def _eight_point_round(
    est: FundamentalEstimator, n: int, options: RansacOptions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The cheap first attempt at F: a few linear eight-point samples, the best one polished.

    An eight-point sample costs a fifth of a seven-point one (one LU solve, no cubic, one hypothesis
    instead of up to three) but needs a higher inlier ratio: ``_QUICK_SAMPLES`` (24) of them reach the
    confidence 0.999 only above about 83 % inliers, which real pairs of a sequence usually have. The
    hypotheses are scored on at most ``_QUICK_SCORE_POINTS`` random points (the best one only needs to
    be found, not measured) and the best goes straight to the IRLS polish (``_EIGHT_POINT_POLISH_FITS``
    fits). When the raw hypothesis's inlier ratio falls short of the confidence, the polish's first fit
    plays the part of LO-RANSAC's local optimisation and its inlier ratio decides; if that falls short
    too, this returns None and seven-point RANSAC runs as usual (one fit wasted on a hard pair).

    Returns:
        (polished normalised F (3, 3), its squared Sampson distances (N,), samples drawn), or None.
    """
    count = min(_QUICK_SAMPLES, options.min_iterations, options.max_iterations)
    if n < 8 or count <= 0:
        return None
    models = est.fit_batch(draw_samples(rng, n, 8, count))
    if not len(models):
        return None
    thr_sq = options.max_error_px**2

    def samples_needed(r_sq: np.ndarray) -> float:
        return required_iterations(np.count_nonzero(r_sq <= thr_sq) / n, 8, options.confidence)

    with np.errstate(**_QUIET):
        index = rng.integers(0, n, size=_QUICK_SCORE_POINTS) if n > 2 * _QUICK_SCORE_POINTS else None
        scores = msac_scores(_sampson_sq(models, est.qh, est.rows_T, index, est.line_selector), thr_sq)
        Fn = models[int(np.argmin(scores))]
        sampson = est.sampson(Fn)
    raw = samples_needed(sampson[0]) <= count
    if not raw:
        # Not enough as it stands: one least-squares round (the polish's first) as local optimisation.
        Fn, sampson = _irls_polish(Fn, est, options.max_error_px, 1, sampson, raw=True)
        if samples_needed(sampson[0]) > count:
            return None
    fits = _EIGHT_POINT_POLISH_FITS - (not raw)
    Fn, sampson = _irls_polish(Fn, est, options.max_error_px, fits, sampson, raw=raw)
    return Fn, sampson[0], count


def refine_fundamental_irls(
    F: np.ndarray,
    x1_px: np.ndarray,
    x2_px: np.ndarray,
    max_error_px: float,
    *,
    iterations: int = _IRLS_ITERATIONS,
    estimator: FundamentalEstimator | None = None,
) -> np.ndarray:
    """Polish F by iteratively reweighted normalised eight-point (Sampson-weighted, Cauchy loss).

    Each round weights the epipolar rows of the points within the noise-adapted window (see
    ``_Polish``) by ``w_i / den_i``: ``1 / den_i`` turns the algebraic error into the Sampson distance
    (H&Z 11.4.3, Torr & Murray's reweighting) and ``w_i`` is the Cauchy weight.

    Args:
        F: (3, 3) initial fundamental matrix (pixels).
        x1_px, x2_px: (N, 2) all correspondences.
        max_error_px: inlier threshold of the estimation.
        iterations: reweighting rounds.
        estimator: reuse a :class:`FundamentalEstimator` built on the same points.

    Returns:
        (3, 3) rank-2 unit-norm F (pixels).
    """
    est = estimator or FundamentalEstimator(x1_px, x2_px)
    return est.to_pixels(_irls_polish(est.to_normalized(F), est, max_error_px, iterations)[0])


def _irls_polish(
    Fn: np.ndarray,
    est: FundamentalEstimator,
    max_error_px: float,
    iterations: int,
    sampson: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    raw: bool = False,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """:func:`refine_fundamental_irls` on an estimator's normalised model ``Fn`` (3, 3); ``sampson`` its
    :meth:`FundamentalEstimator.sampson` (squared distances and denominators, (N,) each) if known.
    Returns the polished rank-2 unit-norm Fn and its ``sampson``.

    The window and loss scale come from Fn's residuals. ``raw``: Fn is an unrefined minimal-sample
    hypothesis (RANSAC deferred its local optimisation to this polish): its residuals overstate the
    noise, so the first fit replaces it whatever it costs and the noise is measured again on that fit's
    residuals. After that a round is kept only if it lowers the truncated Cauchy cost (without that test
    the synthetic benchmark's translation errors grew by ~4 %), and rounds stop once the least-squares
    solution no longer moves (``_IRLS_STEP_TOL``) or fewer than 8 points remain in the window.

    The rounds work on the least-squares vectors themselves; the rank-2 constraint is imposed once, on
    the result (as the normalised eight-point algorithm does): projecting every round cost a fifth of
    the polish and did not change the benchmark's accuracy.
    """
    with np.errstate(**_QUIET):
        r, den = est.sampson(Fn) if sampson is None else sampson
        polish = _Polish.from_residuals(r, max_error_px)
        cost = math.inf if raw else polish.cost(r)
        v = Fn.ravel()
        v_prev = None
        for _ in range(iterations):
            weights = polish.sampson_weights(r, den)
            if np.count_nonzero(weights) < 8:
                break
            v_new = _smallest_eigenvector((est.rows_T * weights) @ est.rows_T.T)
            r_new, den_new = est.sampson(v_new)
            if raw:
                v, r, den = v_new, r_new, den_new
                polish, raw = _Polish.from_residuals(r, max_error_px), False
                cost, v_prev = polish.cost(r), v
                continue
            cost_new = polish.cost(r_new)
            if not cost_new < cost:
                break
            v, r, den, cost = v_new, r_new, den_new, cost_new
            if v_prev is not None and 1.0 - abs(float(v @ v_prev)) < _IRLS_STEP_TOL:
                break
            v_prev = v
        Fn = epipolar.project_to_rank2(v.reshape(3, 3))
        Fn /= math.sqrt(float(np.vdot(Fn, Fn)))
        return Fn, est.sampson(Fn)


def estimate_homography(
    x1_px: np.ndarray,
    x2_px: np.ndarray,
    options: RansacOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> TwoViewEstimate:
    """Homography ``x2 ~ H x1`` with 4-point LO-RANSAC (normalised DLT refits).

    Args:
        x1_px, x2_px: (N, 2) matched pixels, N >= 4.
        options: RANSAC options; ``max_error_px`` bounds the RMS of the two transfer distances.
        rng: seed or generator.

    Returns:
        :class:`TwoViewEstimate` with the unit-norm H in pixel coordinates.

    Raises:
        InputError: wrong shapes, NaN/inf or fewer than 4 correspondences.
    """
    options = options or RansacOptions()
    x1, x2 = _check_correspondences(x1_px, x2_px, HomographyEstimator.sample_size)
    n = len(x1)
    if reason := _pair_degeneracy(x1, x2):
        return _failure(reason, n)
    res = ransac(HomographyEstimator(x1, x2), n, options, rng=rng)
    if not res.success:
        return _failure(res.reason, n, res)
    H = res.model
    # Same sign convention as homography_dlt: points map to positive w.
    if np.mean(H[2, :2] @ x1[res.inlier_mask].T + H[2, 2]) < 0:
        H = -H
    return TwoViewEstimate(True, "", H, res.inlier_mask, res.num_iterations, res.score)
