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
deviation is scaled by sqrt(subset / all).

A model of more than ``max_images`` registered images is tested on a connected subset of that many images
(grown from the image observing the most points, each time adding the image sharing the most points with
the subset): a principal point shared by every image of a camera needs hundreds of images, not thousands,
and the whole-model test formed a dense matrix of (6 x images)^2 entries and a bundle adjustment of the
whole model (2000 street images: 417 s and 3.5 GB more than mapping, to find a 0.07 px shift not
significant). The subset's deviation is larger than the whole model's (fewer observations), so the test is
conservative. Only a shift significant on the subset is refined in one bundle adjustment of the whole model
(starting from the subset's intrinsics) and checked again there.

The principal point is refined (one bundle adjustment with it free) only when it is *observable*: its
angular standard deviation ``std / f`` is below ``max_std_deg``; and the refined model is kept only when the shift is *significant* (at least
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
from geomvision.scene.reconstruction import Reconstruction, View
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
        max_images: models with more registered images are tested on a connected subset of this many
            images; only a significant shift there is refined on the whole model.
        ba: options of the adjustment (``refine_principal_point`` is forced on).
    """

    min_registered_images: int = 5
    max_std_deg: float = 0.1
    min_significance: float = 3.0
    max_shift: float = 0.05
    max_points: int = 4000
    max_images: int = 300
    ba: BundleAdjustmentOptions = field(default_factory=lambda: BundleAdjustmentOptions(loss="soft_l1"))

    def __post_init__(self) -> None:
        check_at_least("min_registered_images", self.min_registered_images, 2)
        check_positive("max_std_deg", self.max_std_deg)
        check_at_least("min_significance", self.min_significance, 0)
        check_positive("max_shift", self.max_shift)
        check_at_least("max_points", self.max_points, 10)
        check_at_least("max_images", self.max_images, self.min_registered_images)


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
            **result.report,
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
    subset = reconstruction.num_registered > options.max_images
    model = reconstruction
    if subset:
        model = sub_reconstruction(reconstruction, covisible_image_subset(reconstruction, options.max_images))
        result.report["subset_images"] = model.num_registered
        result.report["subset_points"] = len(model.points3D)
    std = principal_point_std_px(model, max_points=options.max_points, rng=rng)
    result.std_px_by_camera = {c: (float(s[0]), float(s[1])) for c, s in std.items()}
    worst = max(std, key=lambda c: np.max(std[c]) / model.cameras[c].focal_xy[0])
    worst_deg = float(np.degrees(np.max(std[worst]) / model.cameras[worst].focal_xy[0]))
    if not worst_deg < options.max_std_deg:
        result.reason = f"not observable: camera {worst} principal point std {worst_deg:.3f} deg >= {options.max_std_deg} deg"
        return done()
    start = _principal_points(reconstruction)
    ba = replace(options.ba, refine_principal_point=True, intrinsics="shared")
    out = bundle_adjust(model, ba) if subset else None  # the subset's own refinement (model is a copy)
    if out is not None:
        result.report["subset_shift_px"] = {
            str(c): (model.cameras[c].principal_point - start[c]).tolist() for c in std
        }
        reason = _rejection(model, start, std, out, options)
        if reason:  # not significant (or not plausible) on the subset: the whole model is left alone
            result.reason = f"on {model.num_registered} of {reconstruction.num_registered} images: {reason}"
            result.shift_px_by_camera = _shifts(model, start, std)
            return done()
    saved = _snapshot(reconstruction)  # cheaper than a deep copy: BA changes only these
    if subset:  # the whole model starts from the subset's intrinsics
        for c in std:
            reconstruction.cameras[c].params = model.cameras[c].params.copy()
        del model
    out = bundle_adjust(reconstruction, ba)
    result.shift_px_by_camera = _shifts(reconstruction, start, std)
    result.reason = _rejection(reconstruction, start, std, out, options)
    result.success = not result.reason
    if not result.success:
        _restore(reconstruction, saved)
    return done()


def _shifts(rec: Reconstruction, start: dict[int, np.ndarray], std: dict) -> dict[int, tuple[float, float]]:
    return {c: tuple(float(v) for v in rec.cameras[c].principal_point - start[c]) for c in std}


def _rejection(rec: Reconstruction, start: dict[int, np.ndarray], std: dict, out, options) -> str:
    """Why the refined principal points of ``rec`` are not kept ("" when they are)."""
    shifts = {c: np.asarray(rec.cameras[c].principal_point) - start[c] for c in std}
    significance = max(float(np.max(np.abs(shifts[c]) / std[c])) for c in std)
    worst_shift = max(
        float(np.linalg.norm(shifts[c])) / max(rec.cameras[c].width, rec.cameras[c].height) for c in std
    )
    if not out.success:
        return f"bundle adjustment failed: {out.reason}"
    if significance < options.min_significance:
        return f"shift not significant: {significance:.1f} std < {options.min_significance}"
    if worst_shift > options.max_shift:
        return f"implausible shift of {worst_shift:.3f} x the image size (> {options.max_shift})"
    return ""


def covisible_image_subset(rec: Reconstruction, max_images: int) -> list[int]:
    """Up to ``max_images`` registered images, connected by shared points, grown greedily.

    The subset starts with the image observing the most points; each step adds the image sharing the most
    points with the images chosen so far (ties: the lower image id), until ``max_images`` or until no
    registered image shares a point with the subset.

    Returns:
        the chosen image ids, in the order they were added.
    """
    image_ids = np.array(rec.registered_image_ids, dtype=np.int64)
    rows, cols = [], []
    for row, image_id in enumerate(image_ids.tolist()):
        ids = rec.views[image_id].point3D_ids
        ids = np.unique(ids[ids >= 0])
        rows.append(np.full(len(ids), row, dtype=np.int64))
        cols.append(ids)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    _, cols = np.unique(cols, return_inverse=True)
    incidence = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(image_ids), int(cols.max()) + 1)
    )
    covisible = (incidence @ incidence.T).toarray()  # (n, n) shared points; diagonal: points per image
    first = int(np.argmax(np.diag(covisible)))
    np.fill_diagonal(covisible, 0)
    chosen = [first]
    taken = np.zeros(len(image_ids), dtype=bool)
    taken[first] = True
    score = covisible[first].astype(np.float64)
    while len(chosen) < min(max_images, len(image_ids)):
        candidates = np.where(taken, -1.0, score)
        best = int(np.argmax(candidates))
        if candidates[best] <= 0:
            break
        chosen.append(best)
        taken[best] = True
        score += covisible[best]
    return image_ids[chosen].tolist()


def sub_reconstruction(rec: Reconstruction, image_ids: list[int]) -> Reconstruction:
    """A copy of ``rec`` restricted to ``image_ids``: their cameras (copied), poses and keypoints (shared,
    read-only), and the points observed by at least two of them, with those observations only."""
    sub = Reconstruction()
    for image_id in image_ids:
        view = rec.views[image_id]
        if view.camera_id not in sub.cameras:
            camera = rec.cameras[view.camera_id]
            sub.add_camera(replace(camera, params=camera.params.copy()))
        sub.add_view(View(image_id, view.name, view.camera_id, view.cam_from_world, view.keypoints_px))
    pids, images, keypoints = [], [], []
    for image_id in image_ids:
        ids = rec.views[image_id].point3D_ids
        kps = np.flatnonzero(ids >= 0)
        pids.append(ids[kps])
        images.append(np.full(len(kps), image_id, dtype=np.int64))
        keypoints.append(kps)
    pids, images, keypoints = np.concatenate(pids), np.concatenate(images), np.concatenate(keypoints)
    order = np.lexsort((images, pids))
    pids, images, keypoints = pids[order], images[order], keypoints[order]
    starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]]) if len(pids) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(pids)].astype(np.int64)
    image_list, kp_list = images.tolist(), keypoints.tolist()
    for s, e, pid in zip(starts.tolist(), ends.tolist(), pids[starts].tolist(), strict=True):
        if e - s < 2:
            continue
        point = rec.points3D[pid]
        sub.add_point3D(
            point.xyz.copy(), list(zip(image_list[s:e], kp_list[s:e], strict=True)), point.color, point.error
        )
    return sub


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
