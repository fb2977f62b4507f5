"""View-graph focal calibration: focal lengths from the verified pairs' fundamental matrices.

Used before mapping when the intrinsics are not known (no ``--intrinsics``, no EXIF focal), by the
incremental and the global mapper alike.

Method (one unknown focal ``f_c`` per camera; square pixels, zero skew, principal point fixed at the
camera's current value, the image centre by default):

1. Every verified pair with a fundamental matrix ``F`` and enough inliers contributes the residual
   ``r = (s1 - s2) / (s1 + s2)`` of the singular values of ``K2^T F K1``
   (:func:`geomvision.geometry.focal.essential_singular_gap`): zero exactly when the focal lengths
   turn ``F`` into an essential matrix (Hartley 1992). GLOMAP's view-graph calibration minimises a
   residual of this kind over all pairs jointly; a single pair is often ill-conditioned (coplanar
   optical axes, the usual turntable set-up), the sum over many pairs much less so.
2. Start: per camera the median of Bougnoux's closed-form focal lengths over its pairs (where the
   formula is defined), clipped to ``[min_focal_ratio, max_focal_ratio]`` x the prior; then a grid
   search over ``log f_c`` per camera (coordinate descent over cameras; one step for a shared
   camera) on the robust (Cauchy) sum of residuals, which cannot be trapped by a bad start.
3. Robust joint refinement of all ``log f_c`` (``scipy.optimize.least_squares``, Cauchy loss);
   pairs whose residual stays above ``max_pair_residual`` are dropped and the fit is repeated.
4. Trust per camera: each remaining pair touching the camera gives its own focal (grid minimum with
   the other camera fixed); the camera's estimate is trusted when at least ``min_agreeing_pairs``
   and ``min_agreeing_fraction`` of them lie within ``max_pair_focal_deviation`` of it, and it is not
   at a bound of the search range. Otherwise the camera keeps its prior.

:func:`reestimate_essentials` then re-estimates each pair's E and pose under the calibrated
intrinsics (``K2^T F K1`` on the essential manifold; the full verification of
:func:`geomvision.sfm.two_view.verify_pair` where that does not hold), and drops pairs whose support
collapses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from geomvision.errors import InputError, check_at_least, check_positive, check_range
from geomvision.geometry.camera_models import FOCAL_INDICES
from geomvision.geometry.epipolar import project_to_essential, recover_pose, sampson_distance_sq
from geomvision.geometry.focal import bougnoux_focal_lengths, essential_singular_gap
from geomvision.geometry.rigid import Rigid3d
from geomvision.geometry.triangulation import triangulate_dlt, triangulation_angle_deg
from geomvision.io.images import read_exif_focal_px
from geomvision.progress import ProgressCallback, report
from geomvision.runtime.runner import StageRunner
from geomvision.scene.camera import Camera
from geomvision.scene.reconstruction import Reconstruction
from geomvision.scene.types import Features, Matches, TwoViewGeometry
from geomvision.sfm.principal_point import PrincipalPointOptions, refine_principal_point
from geomvision.sfm.two_view import TwoViewOptions, verify_pairs

logger = logging.getLogger(__name__)

Pair = tuple[int, int]

#: re-verifications up to this many pairs run in this process (results do not depend on where they run).
_MAX_PAIRS_IN_PROCESS = 16

#: configurations whose F is a real epipolar geometry (planar / panoramic pairs have none).
_EPIPOLAR_CONFIGS = ("calibrated", "uncalibrated")


@dataclass(frozen=True, kw_only=True)
class ViewGraphCalibrationOptions:
    """Options of :func:`calibrate_view_graph`.

    Attributes:
        min_num_inliers: pairs with fewer verified inliers do not take part.
        min_focal_ratio, max_focal_ratio: search range of each focal, relative to its prior.
        grid_size: log-spaced focal candidates of the grid search over that range.
        num_sweeps: coordinate-descent sweeps of the grid search (cameras not shared by all images).
        loss_scale: scale of the Cauchy loss on the singular-value gap (a gap of this size counts as an
            inlier-sized residual).
        max_pair_residual: a pair whose gap stays above this at the solution is dropped (its F does not
            fit the common focal lengths) and the fit is repeated without it.
        max_pair_focal_deviation: a pair agrees with its camera's estimate when its own focal lies within
            this relative deviation.
        min_agreeing_pairs: agreeing pairs a camera needs for its estimate to be used.
        min_agreeing_fraction: and this fraction of its pairs must agree.
    """

    min_num_inliers: int = 30
    min_focal_ratio: float = 0.2
    max_focal_ratio: float = 5.0
    grid_size: int = 161
    num_sweeps: int = 3
    loss_scale: float = 0.02
    max_pair_residual: float = 0.15
    max_pair_focal_deviation: float = 0.1
    min_agreeing_pairs: int = 3
    min_agreeing_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.min_num_inliers < 7:
            raise InputError(
                f"min_num_inliers must be >= 7 (a fundamental matrix), got {self.min_num_inliers}"
            )
        if not 0 < self.min_focal_ratio < 1 < self.max_focal_ratio:
            raise InputError(
                f"need 0 < min_focal_ratio < 1 < max_focal_ratio, got {self.min_focal_ratio}, "
                f"{self.max_focal_ratio}"
            )
        check_at_least("grid_size", self.grid_size, 3)
        check_at_least("num_sweeps", self.num_sweeps, 1)
        check_positive("loss_scale", self.loss_scale)
        check_range("max_pair_residual", self.max_pair_residual, 0, 1, low_open=True)
        check_positive("max_pair_focal_deviation", self.max_pair_focal_deviation)
        check_at_least("min_agreeing_pairs", self.min_agreeing_pairs, 1)
        check_range("min_agreeing_fraction", self.min_agreeing_fraction, 0, 1)


@dataclass
class ViewGraphCalibrationResult:
    """Outcome of :func:`calibrate_view_graph`.

    Attributes:
        success: at least one camera's focal was estimated and trusted.
        reason: why not, when ``success`` is False (empty otherwise).
        cameras: camera_id -> Camera, the same dict shape as the input; the focal is replaced (fx and fy
            scaled alike) where the estimate is trusted, every other parameter is kept.
        focal_px_by_camera: camera_id -> the focal now in ``cameras`` (the prior where not trusted).
        estimate_px_by_camera: camera_id -> the estimate itself (also where not trusted; NaN if none).
        prior_px_by_camera: camera_id -> the input focal.
        trusted_by_camera: camera_id -> whether the estimate replaced the prior.
        spread_by_camera: camera_id -> robust relative spread (1.4826 MAD of log focal) of the per-pair
            focal estimates around the camera's estimate.
        num_pairs_by_camera: camera_id -> pairs used; num_agreeing_by_camera: of which agree.
        pairs_dropped: pair -> reason, pairs whose F does not fit the solution.
        report: per-step counts and timings (JSON-ready).
    """

    success: bool
    reason: str
    cameras: dict[int, Camera]
    focal_px_by_camera: dict[int, float] = field(default_factory=dict)
    estimate_px_by_camera: dict[int, float] = field(default_factory=dict)
    prior_px_by_camera: dict[int, float] = field(default_factory=dict)
    trusted_by_camera: dict[int, bool] = field(default_factory=dict)
    spread_by_camera: dict[int, float] = field(default_factory=dict)
    num_pairs_by_camera: dict[int, int] = field(default_factory=dict)
    num_agreeing_by_camera: dict[int, int] = field(default_factory=dict)
    pairs_dropped: dict[Pair, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def _prior_focal(camera: Camera) -> float:
    fx, fy = camera.focal_xy
    return float(np.sqrt(fx * fy))


def with_focal(camera: Camera, focal_px: float) -> Camera:
    """A copy of ``camera`` whose focal length(s) are scaled to ``focal_px`` (fx / fy kept)."""
    params = camera.params.copy()
    scale = focal_px / _prior_focal(camera)
    idx = list(FOCAL_INDICES[camera.model])
    params[idx] = params[idx] * scale
    return Camera(camera.camera_id, camera.model, camera.width, camera.height, params)


class _Problem:
    """The pairs' normalised F and the cameras they connect, as arrays (the residual is vectorised)."""

    def __init__(self, F_norm: np.ndarray, cam_a: np.ndarray, cam_b: np.ndarray, num_cameras: int, free):
        self.F_norm, self.cam_a, self.cam_b, self.num_cameras = F_norm, cam_a, cam_b, num_cameras
        self.free = np.asarray(free, dtype=bool)

    def free_cameras(self, keep: np.ndarray) -> np.ndarray:
        cams = np.unique(np.concatenate([self.cam_a[keep], self.cam_b[keep]]))
        return cams[self.free[cams]]

    def gaps(
        self, log_ratio_a: np.ndarray, log_ratio_b: np.ndarray, F: np.ndarray | None = None
    ) -> np.ndarray:
        """Singular-value gaps for focal ratios (broadcast against the pairs' F)."""
        F = self.F_norm if F is None else F
        s_a, s_b = np.exp(log_ratio_a), np.exp(log_ratio_b)
        shape = np.broadcast_shapes(np.shape(s_a), np.shape(s_b), F.shape[:-2])
        Da = np.zeros(shape + (3, 3))
        Db = np.zeros(shape + (3, 3))
        Da[..., 0, 0] = Da[..., 1, 1] = s_a
        Db[..., 0, 0] = Db[..., 1, 1] = s_b
        Da[..., 2, 2] = Db[..., 2, 2] = 1.0
        return essential_singular_gap(F, Da, Db)

    def residuals(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return self.gaps(x[self.cam_a[keep]], x[self.cam_b[keep]], self.F_norm[keep])


def _cauchy(r: np.ndarray, scale: float) -> np.ndarray:
    return np.log1p((r / scale) ** 2)


def calibrate_view_graph(
    cameras: Mapping[int, Camera],
    camera_of_image: Mapping[int, int],
    two_view_geometries: Mapping[Pair, TwoViewGeometry],
    options: ViewGraphCalibrationOptions | None = None,
    *,
    fixed_camera_ids: Collection[int] = (),
    rng: np.random.Generator | int | None = None,
    progress: ProgressCallback | None = None,
) -> ViewGraphCalibrationResult:
    """Estimate each camera's focal length from the fundamental matrices of the verified pairs.

    Args:
        cameras: camera_id -> Camera with the prior intrinsics (focal and principal point, pixels).
        camera_of_image: image_id -> camera_id.
        two_view_geometries: (i, j) -> TwoViewGeometry; pairs that are rejected, planar / panoramic,
            without ``F`` or with fewer than ``options.min_num_inliers`` inliers are skipped. ``F``
            maps pixels of image i to epipolar lines of image j.
        options: see :class:`ViewGraphCalibrationOptions`.
        fixed_camera_ids: cameras whose focal is known: they constrain the others but keep their own.
        rng: unused (the method is deterministic); accepted for the stage signature.
        progress: ``progress(done, total, message)`` over the steps.

    Returns:
        :class:`ViewGraphCalibrationResult`; ``success=False`` with a reason (and the prior cameras)
        when no camera could be calibrated.

    Raises:
        InputError: a pair refers to an image without a camera, or a camera id is unknown.
    """
    del rng  # deterministic: grid search + least squares
    options = options or ViewGraphCalibrationOptions()
    t_start = time.perf_counter()
    camera_ids = sorted(cameras)
    index_of = {c: k for k, c in enumerate(camera_ids)}
    priors = np.array([_prior_focal(cameras[c]) for c in camera_ids])
    result = ViewGraphCalibrationResult(
        success=False,
        reason="",
        cameras=dict(cameras),
        prior_px_by_camera={c: float(f) for c, f in zip(camera_ids, priors, strict=True)},
        focal_px_by_camera={c: float(f) for c, f in zip(camera_ids, priors, strict=True)},
    )

    pairs, F_list, cam_a, cam_b = [], [], [], []
    for pair, g in sorted(two_view_geometries.items()):
        i, j = pair
        for image in (i, j):
            if image not in camera_of_image or camera_of_image[image] not in index_of:
                raise InputError(f"pair {pair}: image {image} has no camera in the cameras given")
        if not g.success or g.F is None or g.config not in _EPIPOLAR_CONFIGS:
            continue
        if g.num_inliers < options.min_num_inliers:
            continue
        ca, cb = camera_of_image[i], camera_of_image[j]
        Ka, Kb = cameras[ca].K, cameras[cb].K
        Ka[0, 1] = Kb[0, 1] = 0.0
        # Work in coordinates centred on the principal points and scaled by the priors, so the unknowns
        # are focal ratios near 1 and F is well conditioned.
        Ka[0, 0] = Ka[1, 1] = priors[index_of[ca]]
        Kb[0, 0] = Kb[1, 1] = priors[index_of[cb]]
        F_n = Kb.T @ np.asarray(g.F, dtype=np.float64) @ Ka
        norm = np.linalg.norm(F_n)
        if not np.isfinite(norm) or norm == 0:
            continue
        pairs.append(pair)
        F_list.append(F_n / norm)
        cam_a.append(index_of[ca])
        cam_b.append(index_of[cb])
    num_steps = 4
    report(progress, 1, num_steps, "pairs")
    result.report = {"num_pairs_used": len(pairs), "num_cameras": len(camera_ids)}
    if not pairs:
        result.reason = f"no verified pair with F and >= {options.min_num_inliers} inliers"
        result.report["reason"] = result.reason
        return result
    free = np.array([c not in set(fixed_camera_ids) for c in camera_ids])
    problem = _Problem(np.array(F_list), np.array(cam_a), np.array(cam_b), len(camera_ids), free)
    lo, hi = np.log(options.min_focal_ratio), np.log(options.max_focal_ratio)
    grid = np.linspace(lo, hi, options.grid_size)

    # 1. Bougnoux start (median per camera over pairs where the formula is defined).
    f_a, f_b = bougnoux_focal_lengths(problem.F_norm, np.zeros(2), np.zeros(2))  # ratios: K = prior
    x0 = np.zeros(len(camera_ids))
    num_bougnoux = np.zeros(len(camera_ids), dtype=int)
    for k in np.flatnonzero(free):
        values = np.concatenate([f_a[problem.cam_a == k], f_b[problem.cam_b == k]])
        values = values[np.isfinite(values) & (values > 0)]
        num_bougnoux[k] = len(values)
        if len(values):
            x0[k] = np.clip(np.log(np.median(values)), lo, hi)
    # 2. Grid search (coordinate descent over cameras), robust to a bad start.
    x = _grid_descent(problem, x0, grid, np.ones(len(pairs), dtype=bool), options)
    report(progress, 2, num_steps, "grid search")
    # 3. Robust joint refinement; drop pairs that do not fit and refit.
    keep = np.ones(len(pairs), dtype=bool)
    x = _refine(problem, x, keep, lo, hi, options)
    residuals = problem.residuals(x, np.ones(len(pairs), dtype=bool))
    keep = residuals <= options.max_pair_residual
    if not keep.all() and keep.any():
        x = _refine(problem, _grid_descent(problem, x, grid, keep, options), keep, lo, hi, options)
        residuals = problem.residuals(x, np.ones(len(pairs), dtype=bool))
    for k in np.flatnonzero(~keep):
        result.pairs_dropped[pairs[k]] = (
            f"focal disagreement: singular-value gap {residuals[k]:.3f} > {options.max_pair_residual}"
        )
    report(progress, 3, num_steps, "refinement")
    # 4. Per-camera trust from per-pair focal estimates.
    per_pair = _per_pair_estimates(problem, x, grid, keep)
    trusted_any = False
    reasons = []
    for k, c in enumerate(camera_ids):
        if not free[k]:
            result.trusted_by_camera[c] = False
            result.estimate_px_by_camera[c] = float("nan")
            result.num_pairs_by_camera[c] = int(
                np.count_nonzero(keep & ((problem.cam_a == k) | (problem.cam_b == k)))
            )
            result.num_agreeing_by_camera[c] = 0
            result.spread_by_camera[c] = float("nan")
            continue
        touching = keep & ((problem.cam_a == k) | (problem.cam_b == k))
        estimates = per_pair[touching, k]
        deviation = np.abs(estimates - x[k])
        agreeing = int(np.count_nonzero(deviation <= np.log1p(options.max_pair_focal_deviation)))
        n = int(np.count_nonzero(touching))
        spread = float(1.4826 * np.median(deviation)) if n else float("nan")
        at_bound = x[k] <= lo + 1e-3 or x[k] >= hi - 1e-3
        estimate = float(priors[k] * np.exp(x[k])) if n else float("nan")
        trusted = (
            n > 0
            and not at_bound
            and agreeing >= options.min_agreeing_pairs
            and agreeing >= options.min_agreeing_fraction * n
        )
        result.estimate_px_by_camera[c] = estimate
        result.trusted_by_camera[c] = trusted
        result.spread_by_camera[c] = spread
        result.num_pairs_by_camera[c] = n
        result.num_agreeing_by_camera[c] = agreeing
        if trusted:
            trusted_any = True
            result.cameras[c] = with_focal(cameras[c], estimate)
            result.focal_px_by_camera[c] = estimate
        else:
            why = (
                "no pair"
                if n == 0
                else f"estimate at the search bound ({estimate:.1f} px)"
                if at_bound
                else f"{agreeing} of {n} pairs agree"
            )
            reasons.append(f"camera {c}: {why}")
            logger.info("calibration: camera %d keeps its prior focal %.1f px (%s)", c, priors[k], why)
    report(progress, 4, num_steps, "trust")
    result.success = trusted_any
    result.reason = "" if trusted_any else "; ".join(reasons)
    gaps_kept = residuals[keep]
    result.report.update(
        {
            "success": result.success,
            "reason": result.reason,
            "num_pairs_dropped": len(result.pairs_dropped),
            "num_pairs_bougnoux_defined": int(np.count_nonzero(np.isfinite(f_a) & np.isfinite(f_b))),
            "median_gap": float(np.median(gaps_kept)) if len(gaps_kept) else float("nan"),
            "cameras": {
                str(c): {
                    "prior_px": result.prior_px_by_camera[c],
                    "estimate_px": result.estimate_px_by_camera[c],
                    "focal_px": result.focal_px_by_camera[c],
                    "trusted": result.trusted_by_camera[c],
                    "spread": result.spread_by_camera[c],
                    "num_pairs": result.num_pairs_by_camera[c],
                    "num_agreeing": result.num_agreeing_by_camera[c],
                    "num_bougnoux": int(num_bougnoux[k]),
                }
                for k, c in enumerate(camera_ids)
            },
            "time_s": time.perf_counter() - t_start,
        }
    )
    logger.info(
        "calibration: %d pairs, %d dropped, focal %s",
        len(pairs),
        len(result.pairs_dropped),
        {c: round(f, 1) for c, f in result.focal_px_by_camera.items()},
    )
    return result


def _grid_descent(
    problem: _Problem, x: np.ndarray, grid: np.ndarray, keep: np.ndarray, options: ViewGraphCalibrationOptions
) -> np.ndarray:
    """Per camera, the grid value minimising the robust cost of its pairs with the others fixed."""
    x = x.copy()
    cams = problem.free_cameras(keep)
    sweeps = 1 if len(cams) == 1 else options.num_sweeps
    for _ in range(sweeps):
        for k in cams:
            touching = keep & ((problem.cam_a == k) | (problem.cam_b == k))
            if not touching.any():
                continue
            F = problem.F_norm[touching]
            a, b = problem.cam_a[touching], problem.cam_b[touching]
            xa = np.where(a == k, grid[:, None], x[a][None, :])  # (G, P)
            xb = np.where(b == k, grid[:, None], x[b][None, :])
            cost = _cauchy(problem.gaps(xa, xb, F[None]), options.loss_scale).sum(axis=1)
            x[k] = grid[int(np.argmin(cost))]
    return x


def _refine(
    problem: _Problem,
    x: np.ndarray,
    keep: np.ndarray,
    lo: float,
    hi: float,
    options: ViewGraphCalibrationOptions,
) -> np.ndarray:
    """Joint robust least squares over the log focal ratios of the cameras the kept pairs touch."""
    cams = problem.free_cameras(keep)
    if len(cams) == 0:
        return x
    x_all = x.copy()

    def fun(v: np.ndarray) -> np.ndarray:
        x_all[cams] = v
        return problem.residuals(x_all, keep)

    start = np.clip(x[cams], lo + 1e-6, hi - 1e-6)
    solution = least_squares(
        fun, start, bounds=(lo, hi), loss="cauchy", f_scale=options.loss_scale, x_scale=1.0, diff_step=1e-6
    )
    out = x.copy()
    out[cams] = solution.x
    return out


def _per_pair_estimates(problem: _Problem, x: np.ndarray, grid: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(P, C) log focal ratio of camera c from pair p alone (others at ``x``); NaN where p misses c.

    A pair within one camera varies both its ends together; otherwise only camera c's end moves.
    """
    est = np.full((len(problem.cam_a), problem.num_cameras), np.nan)
    step = grid[1] - grid[0]
    fine = np.linspace(-step, step, 21)
    for side in ("a", "b"):
        cams = problem.cam_a if side == "a" else problem.cam_b
        other = problem.cam_b if side == "a" else problem.cam_a
        for p in np.flatnonzero(keep):
            k = cams[p]
            if side == "b" and problem.cam_a[p] == k:
                continue  # same camera: done on side a
            same = other[p] == k
            values = grid
            for _ in range(2):  # coarse grid, then a fine one around its minimum
                xo = values if same else np.full_like(values, x[other[p]])
                xa, xb = (values, xo) if side == "a" else (xo, values)
                g = problem.gaps(xa, xb, problem.F_norm[p])
                best = values[int(np.argmin(g))]
                values = best + fine
            est[p, k] = best
    return est


@dataclass(frozen=True, kw_only=True)
class EssentialReestimationOptions:
    """Options of :func:`reestimate_essentials`.

    Attributes:
        min_support_ratio: a pair keeps at most this share of its previous inliers -> dropped as
            "support collapsed".
        drop_uncalibrated: drop pairs whose E under the calibrated intrinsics keeps too few of F's
            inliers (they disagree with the calibration); off: keep them as "uncalibrated" (F only).
        reverify_uncalibrated: epipolar pairs whose ``K2^T F K1`` does not hold their inliers get the full
            re-verification (five-point RANSAC); off (default): they stay "uncalibrated" with their F
            (measured AUC@2 with / without: fountain 0.958 / 0.957, entry 0.957 / 0.959, castle
            0.851 / 0.840, for most of the stage's time).
        two_view: options of the re-verification (None: ``TwoViewOptions()``; the pipeline passes the
            verification's own options).
    """

    min_support_ratio: float = 0.5
    drop_uncalibrated: bool = False
    reverify_uncalibrated: bool = False
    two_view: TwoViewOptions | None = None

    def __post_init__(self) -> None:
        check_range("min_support_ratio", self.min_support_ratio, 0, 1)


@dataclass
class EssentialReestimationResult:
    """Outcome of :func:`reestimate_essentials`.

    Attributes:
        two_view_geometries: (i, j) -> re-verified TwoViewGeometry for the pairs kept.
        pairs_dropped: (i, j) -> reason.
        report: counts (JSON-ready).
    """

    two_view_geometries: dict[Pair, TwoViewGeometry]
    pairs_dropped: dict[Pair, str]
    report: dict[str, Any]


def _median_angle_deg(pose: Rigid3d, xn1: np.ndarray, xn2: np.ndarray) -> float:
    """Median triangulation angle of the points in front of both cameras (NaN if none)."""
    X = triangulate_dlt(np.hstack([np.eye(3), np.zeros((3, 1))]), pose.matrix(), xn1, xn2)
    ok = np.all(np.isfinite(X), axis=1)
    ok[ok] &= (X[ok, 2] > 0) & (X[ok] @ pose.rotation[2] + pose.translation[2] > 0)
    if not np.any(ok):
        return float("nan")
    return float(np.median(triangulation_angle_deg(np.zeros(3), pose.center, X[ok])))


def _essential_from_fundamental(
    g: TwoViewGeometry,
    x1: np.ndarray,
    x2: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    two_view: TwoViewOptions,
) -> TwoViewGeometry | None:
    """The pair under new intrinsics without RANSAC: ``E = K2^T F K1`` on the essential manifold.

    Returns the updated geometry, or None when that E keeps fewer than ``min_E_F_inlier_ratio`` of the
    inliers (then the pair needs the full re-verification).
    """
    E = project_to_essential(K2.T @ g.F @ K1)
    F_E = np.linalg.inv(K2).T @ E @ np.linalg.inv(K1)
    inliers = sampson_distance_sq(F_E, x1, x2) <= two_view.ransac.max_error_px**2
    if np.count_nonzero(inliers) < max(two_view.min_E_F_inlier_ratio * len(x1), two_view.min_num_inliers):
        return None
    xn1 = (x1 - K1[:2, 2]) / np.diag(K1)[:2]
    xn2 = (x2 - K2[:2, 2]) / np.diag(K2)[:2]
    pose, front = recover_pose(E, xn1[inliers], xn2[inliers])
    mask = inliers.copy()
    mask[inliers] = front
    if np.count_nonzero(mask) < max(two_view.min_E_F_inlier_ratio * len(x1), two_view.min_num_inliers):
        return None
    return replace(
        g,
        config="calibrated",
        inlier_matches=g.inlier_matches[mask],
        E=E,
        cam2_from_cam1=pose,
        median_triangulation_angle_deg=_median_angle_deg(pose, xn1[mask], xn2[mask]),
    )


def reestimate_essentials(
    two_view_geometries: Mapping[Pair, TwoViewGeometry],
    features: Mapping[int, Features],
    cameras: Mapping[int, Camera],
    camera_of_image: Mapping[int, int],
    options: EssentialReestimationOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    runner: StageRunner | None = None,
    progress: ProgressCallback | None = None,
) -> EssentialReestimationResult:
    """Re-estimate each successful pair's essential matrix and pose under the (calibrated) intrinsics.

    Epipolar pairs (calibrated / uncalibrated) first take ``E = K2^T F K1`` projected to the essential
    manifold (H&Z result 9.18), its inliers among the pair's inliers and the pose by cheirality: no
    RANSAC, microseconds per pair. Pairs where that E keeps fewer than ``min_E_F_inlier_ratio`` of
    the inliers become "uncalibrated" (or, with ``reverify_uncalibrated``, are verified again);
    planar / panoramic pairs and cameras with distortion are verified again by
    :func:`geomvision.sfm.two_view.verify_pairs` on their inlier matches with the new cameras (E by
    five-point RANSAC within F's inliers, the planar / panoramic tests). Rejected pairs and pairs
    keeping fewer than ``min_support_ratio`` of their inliers are dropped.

    Args:
        two_view_geometries: (i, j) -> TwoViewGeometry from verification (rejected ones are skipped).
        features: image_id -> Features (the keypoints the inlier matches index).
        cameras: camera_id -> calibrated Camera.
        camera_of_image: image_id -> camera_id.
        options: see :class:`EssentialReestimationOptions`.
        rng: seed of the RANSAC samples of the full re-verification.
        runner: where the full re-verification runs (None: in this process).
        progress: ``progress(done, total, message)``.

    Returns:
        :class:`EssentialReestimationResult`.
    """
    options = options or EssentialReestimationOptions()
    two_view = options.two_view or TwoViewOptions()
    previous = {pair: g for pair, g in two_view_geometries.items() if g.success}
    cameras_by_image = {}
    for pair in previous:
        for image in pair:
            if image not in camera_of_image or camera_of_image[image] not in cameras:
                raise InputError(f"pair {pair}: image {image} has no camera in the cameras given")
            cameras_by_image[image] = cameras[camera_of_image[image]]
    redone: dict[Pair, TwoViewGeometry] = {}
    full: dict[Pair, Matches] = {}
    for pair, g in previous.items():
        i, j = pair
        cam_i, cam_j = cameras_by_image[i], cameras_by_image[j]
        light = None
        if (
            g.config in _EPIPOLAR_CONFIGS
            and g.F is not None
            and not (cam_i.distortion.any() or cam_j.distortion.any())
        ):
            x1 = features[i].keypoints_px[g.inlier_matches[:, 0]]
            x2 = features[j].keypoints_px[g.inlier_matches[:, 1]]
            light = _essential_from_fundamental(g, x1, x2, cam_i.K, cam_j.K, two_view)
            if light is None and not options.reverify_uncalibrated:
                # E does not hold F's inliers under the new K: keep the pair's F and matches, no pose
                light = replace(g, config="uncalibrated", E=None, cam2_from_cam1=None)
        if light is None:
            full[pair] = Matches(i, j, g.inlier_matches)
        else:
            redone[pair] = light
    if full:
        if len(full) <= _MAX_PAIRS_IN_PROCESS:  # a few pairs: cheaper here than shipping keypoints to a pool
            runner = runner.in_process() if runner is not None else None
        redone.update(
            verify_pairs(
                features, full, cameras_by_image, two_view, rng=rng, runner=runner, progress=progress
            )
        )
    kept: dict[Pair, TwoViewGeometry] = {}
    dropped: dict[Pair, str] = {}
    configs: dict[str, int] = {}
    for pair in sorted(redone):
        g = redone[pair]
        before = previous[pair].num_inliers
        if not g.success:
            dropped[pair] = f"rejected after calibration: {g.reason}"
        elif g.num_inliers < options.min_support_ratio * before:
            dropped[pair] = f"support collapsed: {g.num_inliers} of {before} inliers"
        elif options.drop_uncalibrated and g.config == "uncalibrated":
            dropped[pair] = "E under the calibrated intrinsics disagrees with F"
        else:
            # The re-verification saw only the old inliers: keep the original putative count.
            kept[pair] = replace(g, num_putative=previous[pair].num_putative)
            configs[g.config] = configs.get(g.config, 0) + 1
    logger.info(
        "re-estimated E: %d pairs kept, %d dropped (%d re-verified)", len(kept), len(dropped), len(full)
    )
    return EssentialReestimationResult(
        kept,
        dropped,
        {
            "num_pairs": len(previous),
            "num_kept": len(kept),
            "num_dropped": len(dropped),
            "num_reverified": len(full),
            "configs": configs,
        },
    )


# --- the pipeline stage ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SelfCalibrationOptions:
    """Options of :func:`self_calibrate` (the pipeline's calibration stage, run when no ``intrinsics``).

    Attributes:
        enabled: run the stage at all (off: the mapper starts from the prior focal lengths).
        max_exif_deviation: a camera whose focal came from EXIF keeps it unless the trusted estimate
            differs by more than this relative deviation (EXIF of a cropped or digitally zoomed photo
            is wrong; a correct one is more precise than the estimate).
        view_graph: options of :func:`calibrate_view_graph`.
        essentials: options of :func:`reestimate_essentials` (its ``two_view`` defaults to the
            verification's options).
        refine_principal_point: after mapping, refine the principal point of each model where it is
            observable (:func:`geomvision.sfm.principal_point.refine_principal_point`).
        principal_point: options of that refinement.
    """

    enabled: bool = True
    max_exif_deviation: float = 0.2
    view_graph: ViewGraphCalibrationOptions = field(default_factory=ViewGraphCalibrationOptions)
    essentials: EssentialReestimationOptions = field(default_factory=EssentialReestimationOptions)
    refine_principal_point: bool = True
    principal_point: PrincipalPointOptions = field(default_factory=PrincipalPointOptions)

    def __post_init__(self) -> None:
        check_at_least("max_exif_deviation", self.max_exif_deviation, 0)


@dataclass
class SelfCalibrationResult:
    """Outcome of :func:`self_calibrate`.

    Attributes:
        cameras: camera_id -> Camera to start mapping from.
        two_view_geometries: the verified pairs to map with (re-estimated when a focal changed).
        calibration: the view-graph calibration (None when the stage did not run).
        report: JSON-ready summary for ``report.json["calibration"]``.
    """

    cameras: dict[int, Camera]
    two_view_geometries: dict[Pair, TwoViewGeometry]
    calibration: ViewGraphCalibrationResult | None
    report: dict[str, Any]


def self_calibrate(
    cameras: Mapping[int, Camera],
    camera_of_image: Mapping[int, int],
    verified: Mapping[Pair, TwoViewGeometry],
    features: Mapping[int, Features],
    options: SelfCalibrationOptions | None = None,
    *,
    exif_camera_ids: Collection[int] = (),
    two_view_options: TwoViewOptions | None = None,
    rng: np.random.Generator | int | None = None,
    runner: StageRunner | None = None,
    progress: ProgressCallback | None = None,
) -> SelfCalibrationResult:
    """Calibrate focal lengths from the view graph, then re-estimate the pairs' essential matrices.

    Args:
        cameras: camera_id -> prior Camera (EXIF focal or the default prior).
        camera_of_image: image_id -> camera_id.
        verified: (i, j) -> successful TwoViewGeometry (verified with the prior cameras).
        features: image_id -> Features the inlier matches index.
        options: see :class:`SelfCalibrationOptions`.
        exif_camera_ids: cameras whose prior focal came from EXIF.
        two_view_options: verification options for the re-estimation (default: ``options.essentials``).
        rng: seed of the re-estimation's RANSAC.
        runner: where the per-pair re-estimation runs (None: in this process).
        progress: ``progress(done, total, message)`` of the re-estimation.

    Returns:
        :class:`SelfCalibrationResult`; the inputs unchanged when nothing was calibrated.
    """
    options = options or SelfCalibrationOptions()
    t_start = time.perf_counter()
    calibration = calibrate_view_graph(cameras, camera_of_image, verified, options.view_graph)
    if not options.enabled:  # estimated all the same (milliseconds): the trust check compares with it
        report_off = {"ran": False, "reason": "disabled", "view_graph": calibration.report}
        return SelfCalibrationResult(dict(cameras), dict(verified), calibration, report_off)
    out_cameras = dict(cameras)
    changed = []
    for c, trusted in calibration.trusted_by_camera.items():
        if not trusted:
            continue
        estimate, prior = calibration.estimate_px_by_camera[c], calibration.prior_px_by_camera[c]
        if c in exif_camera_ids and abs(estimate / prior - 1.0) <= options.max_exif_deviation:
            continue  # EXIF agrees: keep the more precise value
        out_cameras[c] = calibration.cameras[c]
        changed.append(c)
    report_out: dict[str, Any] = {
        "ran": True,
        "view_graph": calibration.report,
        "cameras_changed": changed,
        "exif_camera_ids": sorted(exif_camera_ids),
    }
    pairs = dict(verified)
    if changed:
        essentials = options.essentials
        if essentials.two_view is None and two_view_options is not None:
            essentials = replace(essentials, two_view=two_view_options)
        redone = reestimate_essentials(
            verified,
            features,
            out_cameras,
            camera_of_image,
            essentials,
            rng=rng,
            runner=runner,
            progress=progress,
        )
        pairs = redone.two_view_geometries
        report_out["essentials"] = redone.report
        report_out["pairs_dropped"] = {f"{i}-{j}": why for (i, j), why in redone.pairs_dropped.items()}
    report_out["time_s"] = time.perf_counter() - t_start
    return SelfCalibrationResult(out_cameras, pairs, calibration, report_out)


def exif_focal_camera_ids(paths_by_image: Mapping[int, Any], camera_of_image: Mapping[int, int]) -> set[int]:
    """Cameras whose images carry an EXIF focal length (read from the image files)."""
    return {camera_of_image[i] for i, path in paths_by_image.items() if read_exif_focal_px(path) is not None}


def refine_principal_points(
    reconstructions: list[Reconstruction],
    options: SelfCalibrationOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> dict[str, Any]:
    """Refine each model's principal point where observable (in place); returns the report per model."""
    options = options or SelfCalibrationOptions()
    if not options.refine_principal_point:
        return {"ran": False}
    out: dict[str, Any] = {"ran": True, "models": []}
    for rec in reconstructions:
        result = refine_principal_point(rec, options.principal_point, rng=rng)
        out["models"].append(result.report)
    return out


def trusted_focal_estimates(calibration_report: Mapping[str, Any] | None) -> dict[int, float]:
    """camera_id -> trusted view-graph focal estimate, read from :func:`self_calibrate`'s report."""
    cameras = ((calibration_report or {}).get("view_graph") or {}).get("cameras", {})
    return {int(c): float(v["estimate_px"]) for c, v in cameras.items() if v.get("trusted")}
