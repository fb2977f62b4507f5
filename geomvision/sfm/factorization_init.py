"""Initialise a reconstruction by factorization of a window of frames (instead of a two-view seed).

Steps (each a small function):
    1. choose a window of images sharing many complete tracks (greedy: start from the best-connected pair,
       add the image that keeps the most tracks visible in every chosen image);
    2. normalise those observations with the intrinsics (``Camera.unproject``: ``K^-1 x``, undistorted);
    3. factorize the complete ``(2F, P)`` measurement matrix: projective (Sturm-Triggs, H&Z 18.4) followed by
       the metric upgrade for known calibration (absolute dual quadric, H&Z 19.3); if that fails, a
       weak-perspective Tomasi-Kanade factorization (depth ``1 / s_f``, the Necker member with the smaller
       perspective error). Tracks with large reprojection errors are dropped and the window refactorized;
    4. triangulate every track seen at least twice in the window (``triangulate_nview``, H&Z 12.2) with the
       metric poses, keep points in front of the cameras with small reprojection error;
    5. optionally polish the seed with a short bundle adjustment (fixed intrinsics, robust loss).

The result is a :class:`~geomvision.scene.Reconstruction` with ``cam_from_world`` poses for the window images
and 3D points linked to their keypoints: the incremental mapper continues from it (``init_reconstruction``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from geomvision.errors import InputError, check_positive
from geomvision.geometry import factorization as fz
from geomvision.geometry.rigid import Rigid3d
from geomvision.geometry.triangulation import triangulate_nview
from geomvision.scene import Camera, ImageInfo, Reconstruction, Track, View
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FactorizationInitOptions:
    """Options of :func:`initialize_by_factorization`.

    Attributes:
        max_window_size: most images factorized together.
        min_window_size: fewest images (3 are needed for the metric upgrade).
        min_complete_tracks: stop growing the window when fewer tracks would be seen in all its images.
        method: "auto" (projective + metric upgrade, weak perspective if that fails), "projective" or
            "weak_perspective".
        max_reprojection_error_px: tracks / observations above this are rejected.
        outlier_rounds: refactorizations after dropping the worst tracks.
        min_triangulation_angle_deg: points seen under a smaller angle are not added.
        bundle_adjust: polish poses and points with a short bundle adjustment.
        projective: the Sturm-Triggs projective factorization (iteration cap, tolerance).
        bundle_adjustment: the polishing bundle adjustment (fixed intrinsics, Huber loss at 1 px).
    """

    max_window_size: int = 8
    min_window_size: int = 3
    min_complete_tracks: int = 40
    method: Literal["auto", "projective", "weak_perspective"] = "auto"
    max_reprojection_error_px: float = 4.0
    outlier_rounds: int = 3
    min_triangulation_angle_deg: float = 1.0
    bundle_adjust: bool = True
    projective: fz.ProjectiveFactorizationOptions = field(
        default_factory=lambda: fz.ProjectiveFactorizationOptions(max_iterations=500)
    )
    bundle_adjustment: BundleAdjustmentOptions = field(
        default_factory=lambda: BundleAdjustmentOptions(
            intrinsics="fixed", loss="huber", loss_scale_px=1.0, max_iterations=50
        )
    )

    def __post_init__(self) -> None:
        if self.min_window_size < 3 or self.max_window_size < self.min_window_size:
            raise InputError(
                "window sizes must satisfy 3 <= min <= max, "
                f"got {self.min_window_size}, {self.max_window_size}"
            )
        if self.method not in ("auto", "projective", "weak_perspective"):
            raise InputError(f"unknown factorization method {self.method!r}")
        check_positive("max_reprojection_error_px", self.max_reprojection_error_px)


@dataclass
class InitResult:
    """Outcome of :func:`initialize_by_factorization`.

    Attributes:
        success: False with ``reason`` when no usable window / factorization was found.
        reason: empty on success.
        reconstruction: the seed model (None on failure).
        image_ids: the window's image ids (registered in the seed).
        method: "projective" or "weak_perspective".
        num_complete_tracks: tracks used by the factorization (after outlier rejection).
        factorization_rms_px: RMS reprojection error of the factorization over the complete tracks.
    """

    success: bool
    reason: str
    reconstruction: Reconstruction | None = None
    image_ids: list[int] = field(default_factory=list)
    method: str = ""
    num_complete_tracks: int = 0
    factorization_rms_px: float = float("nan")


def _visibility(tracks: list[Track], image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(T, I) bool visibility and (T, I) keypoint index (-1 where unseen) over ``image_ids`` columns."""
    column = {image_id: c for c, image_id in enumerate(image_ids)}
    lengths = np.array([len(t) for t in tracks], dtype=np.int64)
    track_of = np.repeat(np.arange(len(tracks)), lengths)
    elements = np.array([e for t in tracks for e in t.elements], dtype=np.int64).reshape(-1, 2)
    known = np.array([i in column for i in elements[:, 0].tolist()], dtype=bool)
    cols = np.array([column.get(i, -1) for i in elements[:, 0].tolist()], dtype=np.int64)
    keypoints = np.full((len(tracks), len(image_ids)), -1, dtype=np.int64)
    keypoints[track_of[known], cols[known]] = elements[known, 1]
    return keypoints >= 0, keypoints


def select_window(
    visible: np.ndarray, *, max_size: int, min_size: int, min_complete: int
) -> tuple[list[int], np.ndarray]:
    """Greedy window of columns with many tracks visible in all of them.

    Starts from the column pair sharing the most tracks, then repeatedly adds the column that keeps the most
    complete tracks, while at least ``min_complete`` remain and the window is below ``max_size``.

    Args:
        visible: (T, I) bool track visibility.

    Returns:
        (chosen column indices in increasing order, (T,) bool mask of the tracks complete in the window);
        fewer than ``min_size`` columns when no such window exists.
    """
    V = visible.astype(np.float64)
    shared = V.T @ V
    np.fill_diagonal(shared, -1)
    a, b = np.unravel_index(np.argmax(shared), shared.shape)
    chosen = [int(a), int(b)]
    complete = visible[:, a] & visible[:, b]
    while len(chosen) < max_size:
        counts = visible[complete].sum(axis=0).astype(np.int64)
        counts[chosen] = -1
        best = int(np.argmax(counts))
        if counts[best] < min_complete and len(chosen) >= min_size:
            break
        if counts[best] <= 0:
            break
        chosen.append(best)
        complete = complete & visible[:, best]
    return sorted(chosen), complete


def initialize_by_factorization(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    tracks: list[Track],
    options: FactorizationInitOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> InitResult:
    """Build a seed reconstruction from a window of images by factorization (see module docstring).

    Args:
        cameras: camera_id -> intrinsics (treated as known: the metric upgrade needs K).
        images: image_id -> ImageInfo (keypoints in pixels).
        tracks: multi-view tracks (``sfm.tracks.build_tracks``), elements (image_id, keypoint_index).
        options: :class:`FactorizationInitOptions`.
        rng: unused by the deterministic pipeline; accepted for the stage signature.

    Returns:
        InitResult; ``success=False`` with a reason when no window has enough complete tracks or the
        factorization cannot be upgraded to a metric model.

    Raises:
        InputError: images referring to unknown cameras, or tracks referring to unknown images/keypoints.
    """
    del rng  # the stage is deterministic
    options = options or FactorizationInitOptions()
    _check_inputs(cameras, images, tracks)
    image_ids = sorted(images)
    if len(image_ids) < options.min_window_size or not tracks:
        return InitResult(False, f"{len(image_ids)} images and {len(tracks)} tracks: nothing to factorize")
    visible, keypoints = _visibility(tracks, image_ids)
    cols, complete = select_window(
        visible,
        max_size=options.max_window_size,
        min_size=options.min_window_size,
        min_complete=options.min_complete_tracks,
    )
    if len(cols) < options.min_window_size or complete.sum() < 8:
        return InitResult(
            False,
            f"no window of {options.min_window_size} images shares >= 8 complete tracks "
            f"(best: {len(cols)} images, {int(complete.sum())} tracks)",
        )
    window = [image_ids[c] for c in cols]
    normalised, pixels = _window_observations(cameras, images, window, keypoints[:, cols])
    factor = _factorize_window(cameras, images, window, normalised, pixels, complete, options)
    if factor is None or not factor[0]:
        reason = "factorization failed" if factor is None else factor[1]
        return InitResult(False, reason, image_ids=window)
    _, _, rotations, translations, used, method, rms_px = factor
    members = [(rotations, translations)]
    if method == "weak_perspective" and options.bundle_adjust:
        # The depth-reversal twin fits the (nearly affine) data almost equally well; only the perspective
        # refinement tells them apart, so both are polished and the one with the lower error is kept.
        necker = np.diag([1.0, 1.0, -1.0])
        members.append((necker @ rotations @ necker, translations))
    best_rec, best_err = None, np.inf
    for R, t in members:
        rec = _build_reconstruction(
            cameras, images, tracks, window, R, t, keypoints[:, cols], normalised, options
        )
        if len(rec.points3D) < 8:
            continue
        if options.bundle_adjust:
            _polish(rec, options)
        err = rec.mean_reprojection_error_px() if rec.points3D else np.inf
        if best_rec is None or err < best_err or len(rec.points3D) > 2 * len(best_rec.points3D):
            best_rec, best_err = rec, err
    if best_rec is None:
        return InitResult(False, "fewer than 8 points triangulated in the window", image_ids=window)
    rec = best_rec
    logger.info(
        "factorization init: %d images %s, %s, %d complete tracks, rms %.3f px, %d points",
        len(window),
        window,
        method,
        int(used.sum()),
        rms_px,
        len(rec.points3D),
    )
    return InitResult(True, "", rec, window, method, int(used.sum()), rms_px)


def _check_inputs(cameras, images, tracks) -> None:
    for image_id, info in images.items():
        if info.camera_id not in cameras:
            raise InputError(f"image {image_id} ({info.name}) refers to unknown camera {info.camera_id}")
    for t, track in enumerate(tracks):
        for image_id, kp in track.elements:
            if image_id not in images:
                raise InputError(f"track {t} refers to unknown image {image_id}")
            if not 0 <= kp < len(images[image_id].keypoints_px):
                raise InputError(f"track {t}: keypoint {kp} out of range for image {image_id}")


def _window_observations(cameras, images, window, kp_idx) -> tuple[np.ndarray, np.ndarray]:
    """(T, F, 2) normalised coordinates and pixels of each track in each window image (NaN where unseen)."""
    T, F = kp_idx.shape
    normalised = np.full((T, F, 2), np.nan)
    pixels = np.full((T, F, 2), np.nan)
    for f, image_id in enumerate(window):
        info = images[image_id]
        seen = kp_idx[:, f] >= 0
        px = np.asarray(info.keypoints_px, dtype=np.float64)[kp_idx[seen, f]]
        pixels[seen, f] = px
        normalised[seen, f] = cameras[info.camera_id].unproject(px)
    return normalised, pixels


def _to_W(x: np.ndarray) -> np.ndarray:
    """(P, F, 2) -> (2F, P) measurement matrix."""
    return x.transpose(1, 2, 0).reshape(-1, x.shape[0])


def _errors_px(cameras, images, window, R, t, X, pixels) -> np.ndarray:
    """(P, F) reprojection errors in pixels (inf behind the camera)."""
    errors = np.full(pixels.shape[:2], np.inf)
    for f, image_id in enumerate(window):
        cam = cameras[images[image_id].camera_id]
        in_cam = X @ R[f].T + t[f]
        front = in_cam[:, 2] > 1e-9
        if front.any():
            errors[front, f] = np.linalg.norm(cam.project(in_cam[front]) - pixels[front, f], axis=1)
    return errors


def _factorize_window(cameras, images, window, normalised, pixels, complete, options):
    """Reject outlier tracks on the projective fit, then pick the best metric model.

    Returns:
        (ok, reason, rotations (F,3,3), translations (F,3), used (T,) bool, method, rms_px), or None.
    """
    focal = np.array([np.mean(cameras[images[i].camera_id].focal_xy) for i in window])
    used = _reject_outlier_tracks(normalised, complete, focal, options)
    if used.sum() < 8:
        return (
            False,
            f"{int(used.sum())} complete tracks left after outlier rejection",
            None,
            None,
            used,
            "",
            np.nan,
        )
    idx = np.flatnonzero(used)
    W = _to_W(normalised[idx])
    best = None
    for R, t, X, method in _metric_candidates(W, options):
        err = _errors_px(cameras, images, window, R, t, X, pixels[idx])
        rms = float(np.sqrt(np.mean(err**2))) if np.all(np.isfinite(err)) else np.inf
        logger.debug("factorization init: %s model rms %.3f px", method, rms)
        if best is None or rms < best[6]:
            best = (True, "", R, t, used, method, rms)
    if best is None:
        return (
            False,
            "no metric model (projective upgrade and weak perspective failed)",
            None,
            None,
            used,
            "",
            np.nan,
        )
    return best


def _reject_outlier_tracks(normalised, complete, focal, options) -> np.ndarray:
    """Iteratively trim complete tracks whose projective (rank-4) fit error exceeds the pixel threshold.

    Outliers pull the SVD towards themselves, so each round removes at most the worst 10 % of the tracks
    (and only those above ``max(threshold, 2.5 x median)``) before refitting.
    """
    used = complete.copy()
    for round_ in range(options.outlier_rounds):
        idx = np.flatnonzero(used)
        if len(idx) < 8:
            break
        W = _to_W(normalised[idx])
        try:
            proj = fz.factorize_projective(W, options.projective)
        except (InputError, np.linalg.LinAlgError):
            break
        err = _projective_errors_px(W, proj, focal).max(axis=1)
        limit = max(options.max_reprojection_error_px, 2.5 * float(np.median(err)))
        bad = np.flatnonzero(~(err <= limit))
        if len(bad) == 0:
            break
        bad = bad[np.argsort(-err[bad])][: max(1, len(idx) // 10)]
        used[idx[bad]] = False
        logger.debug("factorization init round %d: dropped %d of %d tracks", round_, len(bad), len(idx))
    return used


def _projective_errors_px(W: np.ndarray, proj: fz.ProjectiveFactorization, focal: np.ndarray) -> np.ndarray:
    """(P, F) projective fit errors, converted from normalised coordinates to pixels by each focal."""
    x = np.einsum("fab,pb->fpa", proj.cameras, proj.points)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = x[..., :2] / x[..., 2:3]
    obs = W.reshape(len(focal), 2, -1).transpose(0, 2, 1)
    err = np.linalg.norm(xy - obs, axis=-1) * focal[:, None]
    return np.where(np.isfinite(err), err, np.inf).T


def _metric_candidates(W: np.ndarray, options: FactorizationInitOptions):
    """Metric models of a complete normalised window: yields (R (F,3,3), t (F,3), X (P,3), method)."""
    if options.method in ("auto", "projective"):
        try:
            proj = fz.factorize_projective(W, options.projective)
            metric = fz.upgrade_projective_to_metric(proj.cameras, proj.points, W)
        except (InputError, np.linalg.LinAlgError) as exc:
            logger.debug("projective factorization failed: %s", exc)
            metric = None
        if metric is not None and metric.success:
            yield metric.rotations, metric.translations, metric.points, "projective"
    if options.method in ("auto", "weak_perspective"):
        try:
            affine = fz.factorize_affine(W, camera="weak_perspective")
        except (InputError, np.linalg.LinAlgError) as exc:
            logger.debug("weak-perspective factorization failed: %s", exc)
            return
        if affine.success:
            yield _weak_perspective_poses(affine, W)


def _weak_perspective_poses(affine: fz.AffineFactorization, W: np.ndarray):
    """Perspective poses from weak perspective: ``x ~ s R[:2] X + t``  ->  ``t_cam = (t / s, 1 / s)``.

    The shape is centred (Tomasi-Kanade), so ``1 / s_f`` is the depth of the centroid. Both members of the
    depth-reversal pair are scored with the perspective reprojection error; the better one is returned.
    """
    best = None
    necker = np.diag([1.0, 1.0, -1.0])
    for flip in (False, True):
        R = necker @ affine.rotations @ necker if flip else affine.rotations
        X = affine.points @ necker if flip else affine.points
        s = affine.scales
        t = np.concatenate([affine.translations / s[:, None], 1.0 / s[:, None]], axis=1)
        in_cam = np.einsum("fij,pj->fpi", R, X) + t[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = in_cam[..., :2] / in_cam[..., 2:]
        obs = W.reshape(len(R), 2, -1).transpose(0, 2, 1)
        err = float(np.nanmean(np.sum((proj - obs) ** 2, axis=-1)))
        if in_cam[..., 2].min() <= 0:
            err = np.inf
        if best is None or err < best[0]:
            best = (err, R, t, X)
    return best[1], best[2], best[3], "weak_perspective"


def _build_reconstruction(
    cameras, images, tracks, window, R, t, kp_idx, normalised, options
) -> Reconstruction:
    """Seed model: window images posed, tracks seen >= 2 times in the window triangulated and checked."""
    rec = Reconstruction()
    for cam in cameras.values():
        rec.add_camera(Camera(cam.camera_id, cam.model, cam.width, cam.height, cam.params.copy()))
    for image_id, info in images.items():
        rec.add_view(View(image_id, info.name, info.camera_id, keypoints_px=info.keypoints_px))
    for f, image_id in enumerate(window):
        rec.views[image_id].cam_from_world = Rigid3d(R[f], t[f])
    seen = kp_idx >= 0
    candidates = np.flatnonzero(seen.sum(axis=1) >= 2)
    if len(candidates) == 0:
        return rec
    track_rows, frames = np.nonzero(seen[candidates])
    projections = np.concatenate([R, t[:, :, None]], axis=2)[frames]
    point_index = track_rows
    X = triangulate_nview(
        projections, normalised[candidates][track_rows, frames], point_index, len(candidates)
    )
    ok = _point_quality(cameras, images, window, R, t, X, kp_idx[candidates], options)
    for row in np.flatnonzero(ok):
        obs = [(window[f], int(kp_idx[candidates[row], f])) for f in np.flatnonzero(seen[candidates[row]])]
        rec.add_point3D(X[row], obs, color=_color(images, obs[0]))
    return rec


def _point_quality(cameras, images, window, R, t, X, kp_idx, options) -> np.ndarray:
    """(N,) keep mask: finite, in front of every observing camera, small error, enough parallax."""
    seen = kp_idx >= 0
    finite = np.all(np.isfinite(X), axis=1)
    Xs = np.where(finite[:, None], X, 0.0)
    pixels = np.full(kp_idx.shape + (2,), np.nan)
    for f, image_id in enumerate(window):
        rows = seen[:, f]
        pixels[rows, f] = np.asarray(images[image_id].keypoints_px, dtype=np.float64)[kp_idx[rows, f]]
    err = _errors_px(cameras, images, window, R, t, Xs, pixels)
    good_err = np.all(~seen | (err <= options.max_reprojection_error_px), axis=1)
    centers = -np.einsum("fji,fj->fi", R, t)
    rays = Xs[:, None, :] - centers[None]
    rays /= np.maximum(np.linalg.norm(rays, axis=-1, keepdims=True), 1e-300)
    # Largest angle between observing rays: max over pairs via the extreme dot products.
    cos = np.einsum("pfi,pgi->pfg", rays, rays)
    both = seen[:, :, None] & seen[:, None, :]
    min_cos = np.where(both, cos, 1.0).min(axis=(1, 2))
    angle_ok = np.degrees(np.arccos(np.clip(min_cos, -1.0, 1.0))) >= options.min_triangulation_angle_deg
    return finite & good_err & angle_ok


def _color(images, observation) -> np.ndarray | None:
    image_id, kp = observation
    colors = images[image_id].colors
    return None if colors is None else np.asarray(colors[kp], dtype=np.uint8)


def _polish(rec: Reconstruction, options: FactorizationInitOptions) -> None:
    """Short robust bundle adjustment of the seed (fixed intrinsics), then drop observations still off."""
    result = bundle_adjust(rec, options.bundle_adjustment)
    if not result.success:
        logger.warning(
            "factorization init: bundle adjustment failed (%s); keeping the raw seed", result.reason
        )
        return
    errors = rec.reprojection_errors_px()
    bad = errors["errors_px"] > options.max_reprojection_error_px
    for o in np.flatnonzero(bad):
        pid = int(errors["point_ids"][errors["obs_point"][o]])
        if pid in rec.points3D:
            rec.delete_observation(pid, int(errors["obs_image_id"][o]), int(errors["obs_keypoint"][o]))
