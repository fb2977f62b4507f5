"""Principal-point refinement, only where the images observe it.

The default principal point is the image centre; real cameras (and cropped or rescaled photos) are
often several pixels off, which biases every rotation by about ``offset / f`` radians (Strecha's sets:
8 px at f = 1380 px, enough to cut AUC@2 from 0.97 to 0.83). A shift of the principal point is,
to first order, the same as a small rotation of every camera, so bundle adjustment can only tell
them apart through the second-order (perspective) terms: with a wide field of view, many points
and varied viewing directions it can; on a narrow-field ring it cannot, and a freed principal point
then drifts along the ridge of the cost instead of converging.

Hence the test, before any adjustment: the marginal standard deviation of the principal point under
the current model, from the Gauss-Newton normal equations of bundle adjustment (poses, focal,
distortion and principal point free; the points eliminated by the Schur complement; the similarity
gauge handled by the pseudo-inverse, to which the principal point is invariant), scaled by the
residuals' standard deviation. On large models a random subset of the points is used and the
deviation is scaled by sqrt(subset / all). The principal point is refined (one bundle adjustment
with it free) only when it is *observable*: its angular standard deviation ``std / f`` is below
``max_std_deg``; and the refined model is kept only when the shift is *significant* (at least
``min_significance`` standard deviations; otherwise the image centre is as good and has fewer
unknowns) and plausible (below ``max_shift`` of the image size).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.spatial.transform import Rotation

from geomvision.errors import check_at_least, check_positive
from geomvision.geometry.camera_models import PRINCIPAL_POINT_INDICES
from geomvision.runtime.rng import as_rng
from geomvision.scene.reconstruction import Reconstruction
from geomvision.sfm.ba.model import evaluate, gauge_translation_axis
from geomvision.sfm.bundle_adjustment import (
    BundleAdjustmentOptions,
    bundle_adjust,
    problem_from_reconstruction,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PrincipalPointOptions:
    """Options of :func:`refine_principal_point`.

    Attributes:
        min_registered_images: models with fewer registered images are left alone.
        max_std_deg: the principal point is observable when its standard deviation, as an angle
            (``std_px / f``), is below this.
        min_significance: the refined shift must be at least this many standard deviations.
        max_shift: a refined principal point further than this fraction of ``max(width, height)`` from
            where it started is implausible; the model is kept as it was.
        max_points: points used for the standard deviation (a random subset above this).
        ba: options of the adjustment (``refine_principal_point`` is forced on).
    """

    min_registered_images: int = 5
    max_std_deg: float = 0.1
    min_significance: float = 3.0
    max_shift: float = 0.05
    max_points: int = 4000
    ba: BundleAdjustmentOptions = field(default_factory=lambda: BundleAdjustmentOptions(loss="soft_l1"))

    def __post_init__(self) -> None:
        check_at_least("min_registered_images", self.min_registered_images, 2)
        check_positive("max_std_deg", self.max_std_deg)
        check_at_least("min_significance", self.min_significance, 0)
        check_positive("max_shift", self.max_shift)
        check_at_least("max_points", self.max_points, 10)


@dataclass
class PrincipalPointResult:
    """Outcome of :func:`refine_principal_point`.

    Attributes:
        success: the principal point was observable, significantly off and refined (model updated).
        reason: why not, otherwise.
        std_px_by_camera: camera_id -> (std_x, std_y) of the principal point before refinement.
        shift_px_by_camera: camera_id -> (dx, dy) of the refined principal point (when refined).
        report: JSON-ready summary.
    """

    success: bool
    reason: str
    std_px_by_camera: dict[int, tuple[float, float]] = field(default_factory=dict)
    shift_px_by_camera: dict[int, tuple[float, float]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def _principal_points(rec: Reconstruction) -> dict[int, np.ndarray]:
    return {c: np.array(cam.principal_point) for c, cam in rec.cameras.items()}


def principal_point_std_px(
    rec: Reconstruction, *, max_points: int | None = None, rng: np.random.Generator | int | None = None
) -> dict[int, np.ndarray]:
    """Marginal standard deviation (px) of each camera's principal point under the model ``rec``.

    Gauss-Newton covariance of bundle adjustment with poses, focal, distortion and principal point free:
    the points are eliminated (Schur complement, 3x3 blocks), the reduced camera matrix is
    pseudo-inverted (the 7-dof similarity gauge lies in its null space and does not move intrinsics)
    and scaled by the residual variance.

    Args:
        rec: the model.
        max_points: use a random subset of at most this many points and scale the deviation by
            ``sqrt(subset / all)`` (the information grows with the number of points); None: all.
        rng: seed of the subset.

    Returns:
        camera_id -> (2,) standard deviations of (cx, cy); inf where the matrix is singular there.
    """
    options = BundleAdjustmentOptions(refine_principal_point=True, gauge="none")
    problem, ids = problem_from_reconstruction(rec, options)
    scale = 1.0
    num_points = len(problem.points)
    if max_points is not None and num_points > max_points:
        chosen = np.sort(as_rng(rng).choice(num_points, size=max_points, replace=False))
        problem = problem.with_points(chosen)
        scale = float(np.sqrt(max_points / num_points))
    lay = problem.layout
    ev = evaluate(problem, "linear", 1.0, jacobians=True)
    m, n = problem.num_observations, lay.n_free_points
    cols = lay.image_cols[problem.obs_image]  # (M, D)
    d = cols.shape[1]
    rows = np.broadcast_to(np.arange(2 * m).reshape(m, 2, 1), (m, 2, d))
    cam_cols = np.broadcast_to(cols[:, None, :], (m, 2, d))
    ok = cam_cols >= 0
    J_cam = sp.csr_matrix((ev.J_cam[ok], (rows[ok], cam_cols[ok])), shape=(2 * m, lay.n_cam))
    point_cols = 3 * lay.point_col[problem.obs_point][:, None, None] + np.arange(3)[None, None, :]
    J_point = sp.csr_matrix(
        (
            np.ascontiguousarray(ev.J_point).reshape(-1),
            (np.repeat(np.arange(2 * m), 3), np.broadcast_to(point_cols, (m, 2, 3)).reshape(-1)),
        ),
        shape=(2 * m, 3 * n),
    )
    # V = J_point^T J_point is block diagonal (one 3x3 block per point)
    blocks = np.einsum("mri,mrj->mij", ev.J_point, ev.J_point)
    V = np.zeros((n, 3, 3))
    np.add.at(V, lay.point_col[problem.obs_point], blocks)
    V_inv = np.linalg.pinv(V, hermitian=True)
    block_rows = np.repeat(3 * np.arange(n), 9) + np.tile(np.repeat(np.arange(3), 3), n)
    block_cols = np.repeat(3 * np.arange(n), 9) + np.tile(np.tile(np.arange(3), 3), n)
    V_inv = sp.csr_matrix((V_inv.reshape(-1), (block_rows, block_cols)), shape=(3 * n, 3 * n))
    W = (J_cam.T @ J_point).tocsr()
    S = (J_cam.T @ J_cam).toarray() - (W @ V_inv @ W.T).toarray()
    pp_cols = np.array(
        [
            lay.intr_cols[g, list(PRINCIPAL_POINT_INDICES[model])]
            for g, model in enumerate(problem.camera_models)
        ]
    )  # (G, 2)
    variance = _gauge_fixed_variances(problem, S, pp_cols.ravel())
    if variance is None:  # more than the gauge is singular: the pseudo-inverse, as the docstring says
        variance = np.diag(np.linalg.pinv(S, rcond=1e-12, hermitian=True))[pp_cols.ravel()]
    variance = variance.reshape(pp_cols.shape)
    dof = max(1, 2 * m - lay.n_cam - 3 * n)
    sigma = float(np.sqrt(np.sum(ev.residuals**2) / dof))
    out = {}
    for g, c in enumerate(ids["camera_ids"]):
        out[int(c)] = np.where(variance[g] > 0, scale * sigma * np.sqrt(np.abs(variance[g])), np.inf)
    return out


def _gauge_fixed_variances(problem, S: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Diagonal entries ``cols`` of the pseudo-inverse of the reduced camera matrix ``S``, by a Cholesky
    factorisation with the similarity gauge held instead of an eigendecomposition.

    The gauge is held as bundle adjustment holds it (:func:`~geomvision.sfm.ba.model.gauge_translation_axis`:
    the first image's pose and one translation coordinate of the second). The intrinsics do not move under
    the similarity, so their covariance is the same for every gauge choice, the pseudo-inverse's included
    (the same numbers to ~1e-9 relative on the models we checked); a factorisation is ~n^3 / 3 flops where
    the symmetric eigendecomposition behind ``pinv`` took ~9 n^3 (27 s of the 54 s stage at 300 images,
    n = 1802). Returns None when the held system is not positive definite (some pose or intrinsic is not
    observed at all), for the caller's pseudo-inverse.
    """
    lay = problem.layout
    if len(problem.rotvecs) < 2 or np.any(lay.pose_cols[:2] < 0):
        return None
    R = Rotation.from_rotvec(problem.rotvecs[:2]).as_matrix()
    axis = gauge_translation_axis(R[0], problem.translations[0], R[1], problem.translations[1])
    held = np.append(lay.pose_cols[0], lay.pose_cols[1, 3 + axis])
    keep = np.setdiff1d(np.arange(len(S)), held)
    position = np.full(len(S), -1)
    position[keep] = np.arange(len(keep))
    if np.any(position[cols] < 0):
        return None
    try:
        factor = scipy.linalg.cho_factor(S[np.ix_(keep, keep)], lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return None
    unit = np.zeros((len(keep), len(cols)))
    unit[position[cols], np.arange(len(cols))] = 1.0
    variance = np.einsum("ij,ij->j", unit, scipy.linalg.cho_solve(factor, unit))
    if not np.all(np.isfinite(variance) & (variance > 0)):
        return None
    return variance


def refine_principal_point(
    reconstruction: Reconstruction,
    options: PrincipalPointOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> PrincipalPointResult:
    """Refine the principal point in bundle adjustment where it is observable and significantly off.

    Args:
        reconstruction: a mapped model; updated in place only when ``success``.
        options: see :class:`PrincipalPointOptions`.
        rng: seed of the point subset of the standard deviation.

    Returns:
        :class:`PrincipalPointResult`.
    """
    options = options or PrincipalPointOptions()
    rng = as_rng(rng)
    t_start = time.perf_counter()
    result = PrincipalPointResult(False, "")

    def done() -> PrincipalPointResult:
        result.report = {
            "success": result.success,
            "reason": result.reason,
            "std_px": {str(c): list(v) for c, v in result.std_px_by_camera.items()},
            "shift_px": {str(c): list(v) for c, v in result.shift_px_by_camera.items()},
            "time_s": time.perf_counter() - t_start,
        }
        logger.info("principal point: %s", "refined" if result.success else result.reason)
        return result

    if reconstruction.num_registered < options.min_registered_images:
        result.reason = f"{reconstruction.num_registered} registered images < {options.min_registered_images}"
        return done()
    std = principal_point_std_px(reconstruction, max_points=options.max_points, rng=rng)
    result.std_px_by_camera = {c: (float(s[0]), float(s[1])) for c, s in std.items()}
    worst = max(std, key=lambda c: np.max(std[c]) / reconstruction.cameras[c].focal_xy[0])
    worst_deg = float(np.degrees(np.max(std[worst]) / reconstruction.cameras[worst].focal_xy[0]))
    if not worst_deg < options.max_std_deg:
        result.reason = f"not observable: camera {worst} principal point std {worst_deg:.3f} deg >= {options.max_std_deg} deg"
        return done()
    start = _principal_points(reconstruction)
    ba = replace(options.ba, refine_principal_point=True, intrinsics="shared")
    saved = _snapshot(reconstruction)  # cheaper than a deep copy: BA changes only these
    out = bundle_adjust(reconstruction, ba)
    refined = _principal_points(reconstruction)
    shifts = {c: refined[c] - start[c] for c in std}
    result.shift_px_by_camera = {c: (float(s[0]), float(s[1])) for c, s in shifts.items()}
    significance = max(float(np.max(np.abs(shifts[c]) / std[c])) for c in std)
    worst_shift = max(
        float(np.linalg.norm(shifts[c]))
        / max(reconstruction.cameras[c].width, reconstruction.cameras[c].height)
        for c in std
    )
    if not out.success:
        result.reason = f"bundle adjustment failed: {out.reason}"
    elif significance < options.min_significance:
        result.reason = f"shift not significant: {significance:.1f} std < {options.min_significance}"
    elif worst_shift > options.max_shift:
        result.reason = f"implausible shift of {worst_shift:.3f} x the image size (> {options.max_shift})"
    else:
        result.success = True
    if not result.success:
        _restore(reconstruction, saved)
    return done()


def _snapshot(rec: Reconstruction) -> tuple:
    return (
        {c: cam.params.copy() for c, cam in rec.cameras.items()},
        {i: v.cam_from_world for i, v in rec.views.items()},
        {p: (pt.xyz.copy(), pt.error) for p, pt in rec.points3D.items()},
    )


def _restore(rec: Reconstruction, saved: tuple) -> None:
    params, poses, points = saved
    for c, value in params.items():
        rec.cameras[c].params = value
    for i, pose in poses.items():
        rec.views[i].cam_from_world = pose
    for p, (xyz, error) in points.items():
        rec.points3D[p].xyz, rec.points3D[p].error = xyz, error
