"""Absolute camera pose (PnP) from 2D-3D correspondences: P3P inside our LO-RANSAC, then LM refinement.

Minimal hypotheses come from OpenCV's P3P solvers (``cv2.solveP3P``, AP3P by default: Ke & Roumeliotis
2017, up to 4 poses per sample); local optimisation refits with EPnP + Levenberg-Marquardt on the
inliers; every hypothesis of a batch is scored at once on the pixel reprojection error, points behind the
camera counting as outliers (H&Z 6.2 for the camera model, 7.2 for the reprojection error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.robust.ransac import RansacOptions, ransac

__all__ = ["AbsolutePoseResult", "AbsolutePoseEstimator", "estimate_absolute_pose", "refine_absolute_pose"]

logger = logging.getLogger(__name__)

#: points closer than this to the camera plane (in world units along +z) are treated as behind it.
_MIN_DEPTH = 1e-9


@dataclass(frozen=True)
class AbsolutePoseResult:
    """Outcome of :func:`estimate_absolute_pose`.

    Attributes:
        success: a pose with at least ``options.min_num_inliers`` inliers was found.
        reason: empty on success, else a one-line explanation (e.g. ``"9 inliers < 15"``).
        cam_from_world: the pose (``x_cam = R x_world + t``), None when no model was found.
        inlier_mask: (N,) bool, reprojection error <= ``options.max_error_px`` and positive depth.
        num_iterations: RANSAC samples drawn.
        mean_reprojection_error_px: over the inliers (nan without inliers).
    """

    success: bool
    reason: str
    cam_from_world: Rigid3d | None
    inlier_mask: np.ndarray
    num_iterations: int
    mean_reprojection_error_px: float = float("nan")

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inlier_mask))


def _check_inputs(points_in_world, pixels, K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(points_in_world, dtype=np.float64)
    x = np.asarray(pixels, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 3:
        raise InputError(f"points_in_world must be (N, 3), got {X.shape}")
    if x.ndim != 2 or x.shape[1] != 2 or len(x) != len(X):
        raise InputError(f"pixels must be (N, 2) with N = {len(X)}, got {x.shape}")
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"K must be a finite (3, 3) intrinsics with positive focals, got {K.tolist()}")
    bad = ~(np.isfinite(X).all(axis=1) & np.isfinite(x).all(axis=1))
    if bad.any():
        first = int(np.argmax(bad))
        raise InputError(f"{int(bad.sum())} correspondences contain NaN or inf (first at row {first})")
    return X, x, K


def _pose_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    return np.hstack([R, np.asarray(tvec, dtype=np.float64).reshape(3, 1)])


class AbsolutePoseEstimator:
    """RANSAC estimator (``robust.ransac.Estimator``) for ``cam_from_world`` as a (3, 4) ``[R | t]``.

    Args:
        points_in_world: (N, 3); pixels: (N, 2); K: (3, 3).
        p3p_flag: ``cv2.SOLVEPNP_AP3P`` or ``cv2.SOLVEPNP_P3P``.
    """

    sample_size = 3

    def __init__(self, points_in_world: np.ndarray, pixels: np.ndarray, K: np.ndarray, p3p_flag: int):
        self.X = np.ascontiguousarray(points_in_world)
        self.x = np.ascontiguousarray(pixels)
        self.K = K
        self.flag = p3p_flag

    def fit(self, sample_idx: np.ndarray) -> list[np.ndarray]:
        try:
            n, rvecs, tvecs = cv2.solveP3P(
                self.X[sample_idx], self.x[sample_idx], self.K, None, flags=self.flag
            )
        except cv2.error:  # collinear / coincident samples
            return []
        return [_pose_matrix(rvecs[i], tvecs[i]) for i in range(int(n))]

    def fit_batch(self, samples: np.ndarray) -> np.ndarray:
        # OpenCV solves one sample per call; only the scoring is batched.
        models = [m for sample in samples for m in self.fit(sample)]
        return np.stack(models) if models else np.zeros((0, 3, 4))

    def residuals_sq_batch(self, models: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """(M, 3, 4) poses -> (M, N) squared reprojection errors in px^2 (inf behind the camera)."""
        X = self.X if index is None else self.X[index]
        x = self.x if index is None else self.x[index]
        Xc = models[:, :, :3] @ X.T + models[:, :, 3:]  # (M, 3, N)
        proj = self.K @ Xc
        z = proj[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            err = (proj[:, 0] / z - x[:, 0]) ** 2 + (proj[:, 1] / z - x[:, 1]) ** 2
        return np.where((Xc[:, 2] > _MIN_DEPTH) & np.isfinite(err), err, np.inf)

    def residuals_sq(self, model: np.ndarray) -> np.ndarray:
        return self.residuals_sq_batch(np.asarray(model)[None])[0]

    def refit(self, inlier_idx: np.ndarray) -> list[np.ndarray]:
        if len(inlier_idx) < 6:  # EPnP is unreliable below 6 points
            return []
        X, x = self.X[inlier_idx], self.x[inlier_idx]
        try:
            ok, rvec, tvec = cv2.solvePnP(X, x, self.K, None, flags=cv2.SOLVEPNP_EPNP)
            if not ok:
                return []
            rvec, tvec = cv2.solvePnPRefineLM(X, x, self.K, None, rvec, tvec)
        except cv2.error:
            return []
        return [_pose_matrix(rvec, tvec)]


def refine_absolute_pose(
    points_in_world: np.ndarray,
    pixels: np.ndarray,
    K: np.ndarray,
    cam_from_world: Rigid3d,
    *,
    max_iterations: int = 30,
) -> Rigid3d:
    """Levenberg-Marquardt on the pixel reprojection error (``cv2.solvePnPRefineLM``), inliers only.

    Args:
        points_in_world: (N, 3), N >= 3; pixels: (N, 2); K: (3, 3).
        cam_from_world: initial pose.
        max_iterations: LM iterations.

    Returns:
        The refined ``cam_from_world``.
    """
    X, x, K = _check_inputs(points_in_world, pixels, K)
    if len(X) < 3:
        raise InputError(f"refine_absolute_pose needs at least 3 correspondences, got {len(X)}")
    rvec, _ = cv2.Rodrigues(cam_from_world.rotation)
    tvec = cam_from_world.translation.reshape(3, 1).copy()
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, max_iterations, 1e-10)
    rvec, tvec = cv2.solvePnPRefineLM(X, x, K, None, rvec, tvec, criteria)
    return Rigid3d.from_matrix(_pose_matrix(rvec, tvec))


def estimate_absolute_pose(
    points_in_world: np.ndarray,
    pixels: np.ndarray,
    K: np.ndarray,
    options: RansacOptions | None = None,
    *,
    p3p_flag: int = cv2.SOLVEPNP_AP3P,
    refine: bool = True,
    rng: np.random.Generator | int | None = None,
) -> AbsolutePoseResult:
    """Robust PnP: ``cam_from_world`` from 3D points and their pixel observations.

    Args:
        points_in_world: (N, 3) points in the world frame, N >= 4.
        pixels: (N, 2) undistorted observations (OpenCV origin).
        K: (3, 3) pinhole intrinsics.
        options: RANSAC options; ``max_error_px`` bounds the reprojection error.
        p3p_flag: OpenCV minimal solver, ``cv2.SOLVEPNP_AP3P`` (default) or ``cv2.SOLVEPNP_P3P``.
        refine: Levenberg-Marquardt polish on the inliers after RANSAC.
        rng: seed or generator.

    Returns:
        :class:`AbsolutePoseResult`; ``success=False`` with a reason for too few inliers or degenerate data.

    Raises:
        InputError: wrong shapes, NaN/inf, invalid K, fewer than 4 correspondences.
    """
    options = options or RansacOptions()
    X, x, K = _check_inputs(points_in_world, pixels, K)
    n = len(X)
    if n < 4:
        raise InputError(f"estimate_absolute_pose needs at least 4 correspondences, got {n}")
    spread = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    if spread[1] <= 1e-9 * max(spread[0], 1e-300):
        return AbsolutePoseResult(
            False, "degenerate input: 3D points are coincident or collinear", None, np.zeros(n, dtype=bool), 0
        )
    est = AbsolutePoseEstimator(X, x, K, p3p_flag)
    res = ransac(est, n, options, rng=rng)
    if res.model is None:
        return AbsolutePoseResult(False, res.reason, None, res.inlier_mask, res.num_iterations)
    model, mask = res.model, res.inlier_mask
    t_sq = options.max_error_px**2
    if refine and mask.sum() >= 4:
        # Refine, then re-select inliers once: the LM optimum may admit a few more correct matches.
        for _ in range(2):
            pose = refine_absolute_pose(X[mask], x[mask], K, Rigid3d.from_matrix(model))
            r = est.residuals_sq(pose.matrix())
            if np.minimum(r, t_sq).sum() > np.minimum(est.residuals_sq(model), t_sq).sum():
                break
            model, mask = pose.matrix(), r <= t_sq
    r = est.residuals_sq(model)
    mean_err = float(np.sqrt(r[mask]).mean()) if mask.any() else float("nan")
    pose = Rigid3d.from_matrix(model)
    n_in = int(mask.sum())
    if n_in < options.min_num_inliers:
        return AbsolutePoseResult(
            False, f"{n_in} inliers < {options.min_num_inliers}", pose, mask, res.num_iterations, mean_err
        )
    return AbsolutePoseResult(True, "", pose, mask, res.num_iterations, mean_err)
