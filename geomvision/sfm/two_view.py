"""Geometric verification of putative matches: E / F / H with RANSAC and model selection.

The decision follows COLMAP's two-view geometry estimation:

* calibrated pair (both intrinsics known or assumed): estimate F (8/7-point), then E (5-point) by a
  RANSAC over F's inliers only (``guided_essential``; every E-consistent match is F-consistent, and
  this spares E's costlier samples on weak pairs). E is trusted when it keeps at least
  ``min_E_F_inlier_ratio`` of F's inliers; otherwise the intrinsics are doubted and F is used
  (with ``check_calibration`` off, E is used whenever it has enough inliers);
* a homography is estimated as well; when H explains more than ``max_H_inlier_ratio`` of the
  epipolar inliers the pair is ``planar`` (a dominant plane) or ``panoramic`` (the camera only
  rotated: ``K2^-1 H K1`` is a rotation that transfers the H inliers);
* a pair with fewer than ``min_num_inliers`` verified inliers is ``rejected`` with its reason.

Distorted cameras are handled by mapping keypoints to ideal pinhole pixels
(``K @ camera.unproject(px)``), so all thresholds stay in pixels (H&Z ch. 9-11 for the models).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from geomvision.errors import InputError, check_at_least, check_range
from geomvision.geometry import epipolar
from geomvision.geometry.homography import homography_transfer_errors_sq
from geomvision.geometry.rigid import Rigid3d, project_to_so3
from geomvision.geometry.triangulation import triangulate_dlt, triangulation_angle_deg
from geomvision.progress import ProgressCallback
from geomvision.robust.estimators import (
    TwoViewEstimate,
    estimate_essential,
    estimate_fundamental,
    estimate_homography,
)
from geomvision.robust.ransac import RansacOptions
from geomvision.runtime.cache import hash_arrays
from geomvision.runtime.rng import as_rng
from geomvision.runtime.runner import Shared, Stage, StageRunner, derive_seed
from geomvision.scene.camera import Camera
from geomvision.scene.types import Features, Matches, TwoViewGeometry

logger = logging.getLogger(__name__)

CameraLike = Camera | np.ndarray | None


@dataclass(frozen=True, kw_only=True)
class TwoViewOptions:
    """Options of :func:`verify_pair` / :func:`verify_pairs`.

    Attributes:
        min_num_inliers: fewer verified inliers -> rejected (also the floor of RANSAC's own
            ``min_num_inliers`` for this pair).
        min_inlier_ratio: fewer inliers / putative matches -> rejected (also the floor of RANSAC's
            ``min_inlier_ratio``: a pair below it is rejected anyway, so RANSAC need not sample longer).
        min_E_F_inlier_ratio: E inliers / F inliers needed to trust the intrinsics.
        max_H_inlier_ratio: H inliers / E-or-F inliers above this -> planar or panoramic.
        check_calibration: doubt the intrinsics of calibrated pairs (COLMAP): use F when E keeps fewer
            than ``min_E_F_inlier_ratio`` of F's inliers.
        guided_essential: estimate F first on calibrated pairs too and run the E RANSAC only on F's
            inliers (see :func:`_essential_within_fundamental_inliers`); off: E RANSAC on all matches.
        estimate_homography: run the H model selection at all.
        panoramic_max_error_px: the pure-rotation homography must transfer H inliers this well
            (median) for ``panoramic``.
        homography_min_share: the H RANSAC samples until it would have found, with the requested
            confidence, a homography holding this share of the epipolar inliers, and no longer.
            Shares above it (and so every ``planar`` / ``panoramic`` decision at
            ``max_H_inlier_ratio``) are found reliably; smaller ones may be undercounted, which only
            makes the initial-pair score (``1 - homography share``) a little more optimistic there.
        ransac: the E / F / H RANSAC (threshold: Sampson distance for E/F, transfer error for H, in
            pixels; confidence and iteration caps).
    """

    min_num_inliers: int = 15
    min_inlier_ratio: float = 0.0
    min_E_F_inlier_ratio: float = 0.95
    max_H_inlier_ratio: float = 0.8
    check_calibration: bool = True
    estimate_homography: bool = True
    panoramic_max_error_px: float = 2.0
    homography_min_share: float = 0.5
    guided_essential: bool = True
    ransac: RansacOptions = field(default_factory=lambda: RansacOptions(max_error_px=2.0))

    def __post_init__(self) -> None:
        check_at_least("min_num_inliers", self.min_num_inliers, 5)
        check_range("homography_min_share", self.homography_min_share, 0, 1, low_open=True)


# --- helpers -------------------------------------------------------------------------------------------


def _intrinsics(camera: CameraLike, name: str) -> tuple[np.ndarray | None, Camera | None]:
    """(K, distorted Camera or None) of a camera given as Camera, (3, 3) K or None (unknown)."""
    if camera is None:
        return None, None
    if isinstance(camera, Camera):
        distorted = camera if np.any(camera.distortion != 0) else None
        return camera.K, distorted
    K = np.asarray(camera, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"{name} must be a Camera or a (3, 3) K, got shape {K.shape}")
    return K, None


def _median_triangulation_angle_deg(pose: Rigid3d, xn1: np.ndarray, xn2: np.ndarray) -> float:
    """Median ray angle over points triangulated in front of both cameras (nan if none)."""
    if len(xn1) == 0 or np.linalg.norm(pose.translation) < 1e-12:
        return float("nan") if len(xn1) == 0 else 0.0
    P1 = np.hstack([np.eye(3), np.zeros((3, 1))])
    X = triangulate_dlt(P1, pose.matrix(), xn1, xn2)
    ok = np.all(np.isfinite(X), axis=1)
    ok[ok] &= (X[ok, 2] > 0) & (X[ok] @ pose.rotation[2] + pose.translation[2] > 0)
    if not np.any(ok):
        return float("nan")
    return float(np.median(triangulation_angle_deg(np.zeros(3), pose.center, X[ok])))


def _panoramic_rotation(H: np.ndarray, K1: np.ndarray, K2: np.ndarray, x1, x2, max_error_px: float):
    """Rotation R with H ~ K2 R K1^-1 if it transfers the points within ``max_error_px`` (median)."""
    M = np.linalg.inv(K2) @ H @ K1
    M /= np.cbrt(np.linalg.det(M))
    R = project_to_so3(M)
    H_rot = K2 @ R @ np.linalg.inv(K1)
    err = np.sqrt(homography_transfer_errors_sq(H_rot, x1, x2) / 2.0)
    return R if np.median(err) <= max_error_px else None


def _normalized(x: np.ndarray, K: np.ndarray) -> np.ndarray:
    return (x - K[:2, 2]) @ np.linalg.inv(K[:2, :2]).T


def _pose_from_homography(H: np.ndarray, K1: np.ndarray, K2: np.ndarray, x1: np.ndarray, x2: np.ndarray):
    """Relative pose from a plane-induced homography (H&Z 13.1; up to 4 decompositions, Faugeras-Lustman)
    picked by cheirality of the (inlier) points. Returns (pose with unit translation, front mask) or
    (None, None) when no decomposition puts points in front."""
    import cv2

    Hn = np.linalg.inv(K2) @ H @ K1
    _, rotations, translations, _ = cv2.decomposeHomographyMat(Hn, np.eye(3))
    xn1, xn2 = _normalized(x1, K1), _normalized(x2, K2)
    best, best_mask = None, None
    for R, t in zip(rotations, translations, strict=True):
        t = t.reshape(3)
        norm = np.linalg.norm(t)
        if norm < 1e-12:
            continue
        pose = Rigid3d(project_to_so3(R), t / norm)
        front = epipolar.cheirality_mask(pose, xn1, xn2)
        if best_mask is None or front.sum() > best_mask.sum():
            best, best_mask = pose, front
    if best_mask is None or not best_mask.any():
        return None, None
    return best, best_mask


def _essential_within_fundamental_inliers(
    x1, x2, K1, K2, est_F, ransac: RansacOptions, options: TwoViewOptions, rng
) -> TwoViewEstimate | None:
    """E by 5-point RANSAC on the inliers of the pair's fundamental matrix only (masks over all matches).

    Every correspondence consistent with an essential matrix E is consistent with the fundamental matrix
    ``K2^-T E K1^-1``, and an F sample (8- or 7-point) costs a sixth or less of a 5-point E sample. So
    F (also the model of the calibration check) scouts the pair: without an F there is no E, and the E search
    runs where its inlier ratio is high, i.e. with far fewer samples than on all matches. On pairs whose
    best model holds 10-20 % of the matches (repeated structure, wide baselines) the E RANSAC on all
    matches runs to ``max_iterations``; this is what made verification dominate the end-to-end time.
    E inliers outside F's inlier set are not recovered; they would be F outliers at the same threshold.
    """
    if est_F is None or not est_F.success:
        return None
    support = np.flatnonzero(est_F.inlier_mask)
    if len(support) < max(options.min_num_inliers, 5):
        return None
    # The min_num_inliers stopping floor of verify_pair, now over the F inliers.
    floor = max(options.ransac.min_inlier_ratio, options.min_num_inliers / len(support))
    within = replace(ransac, min_inlier_ratio=min(1.0, floor))
    est = estimate_essential(x1[support], x2[support], K1, K2, within, rng=rng)

    def spread(mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        full = np.zeros(len(x1), dtype=bool)
        full[support] = mask
        return full

    return replace(est, inlier_mask=spread(est.inlier_mask), cheirality_mask=spread(est.cheirality_mask))


def _rejected(i: int, j: int, n: int, reason: str) -> TwoViewGeometry:
    return TwoViewGeometry(i, j, "rejected", num_putative=n, success=False, reason=reason)


# --- one pair ------------------------------------------------------------------------------------------


def verify_pair(
    keypoints_1_px: np.ndarray,
    keypoints_2_px: np.ndarray,
    matches: np.ndarray,
    camera_1: CameraLike = None,
    camera_2: CameraLike = None,
    options: TwoViewOptions | None = None,
    *,
    image_ids: tuple[int, int] = (1, 2),
    rng: np.random.Generator | int | None = None,
) -> TwoViewGeometry:
    """Verify one pair's putative matches.

    Args:
        keypoints_1_px, keypoints_2_px: (N1, 2), (N2, 2) keypoints (OpenCV pixels).
        matches: (M, 2) int indices into (keypoints_1, keypoints_2).
        camera_1, camera_2: Camera, (3, 3) K, or None when the intrinsics are unknown (then F / H).
        options: verification options.
        image_ids: (i, j) stored in the result.
        rng: seed or generator of the RANSAC samples.

    Returns:
        TwoViewGeometry with config calibrated / uncalibrated / planar / panoramic (``success``) or
        rejected (``success=False`` and ``reason``); inlier matches index the input keypoints.
    """
    options = options or TwoViewOptions()
    rng = as_rng(rng)
    i, j = image_ids
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    n = len(matches)
    if n and (
        matches.min() < 0
        or matches[:, 0].max() >= len(keypoints_1_px)
        or matches[:, 1].max() >= len(keypoints_2_px)
    ):
        raise InputError(
            f"pair ({i}, {j}): match indices out of range of {len(keypoints_1_px)}/"
            f"{len(keypoints_2_px)} keypoints"
        )
    if n < options.min_num_inliers:
        return _rejected(i, j, n, f"{n} putative matches < {options.min_num_inliers}")
    K1, cam1 = _intrinsics(camera_1, "camera_1")
    K2, cam2 = _intrinsics(camera_2, "camera_2")
    # Only distorted cameras are kept (``_intrinsics``): pinhole pixels are already ideal.
    x1 = np.asarray(keypoints_1_px, np.float64)[matches[:, 0]]
    x2 = np.asarray(keypoints_2_px, np.float64)[matches[:, 1]]
    x1 = x1 if cam1 is None else cam1.ideal_pixels(x1)
    x2 = x2 if cam2 is None else cam2.ideal_pixels(x2)
    # A model with fewer than min_num_inliers inliers (or below min_inlier_ratio) is rejected anyway,
    # so RANSAC may stop once a model with that many inliers would have been sampled with the
    # requested confidence (H&Z 4.7.1 with the inlier ratio floored at min_num_inliers / n). Without
    # this floor a non-overlapping pair, whose best model has few inliers, samples up to max_iterations.
    ransac = replace(
        options.ransac,
        min_num_inliers=max(options.ransac.min_num_inliers, options.min_num_inliers),
        min_inlier_ratio=max(
            options.ransac.min_inlier_ratio, options.min_inlier_ratio, options.min_num_inliers / n
        ),
    )
    calibrated = K1 is not None and K2 is not None

    est_F = None
    if not calibrated or options.check_calibration or options.guided_essential:
        est_F = estimate_fundamental(x1, x2, ransac, rng=rng)
    est_E = None
    if calibrated:
        if options.guided_essential:
            est_E = _essential_within_fundamental_inliers(x1, x2, K1, K2, est_F, ransac, options, rng)
        else:
            est_E = estimate_essential(x1, x2, K1, K2, ransac, rng=rng)
    failure_reasons = [e.reason for e in (est_E, est_F) if e is not None and e.reason]
    if calibrated and not options.check_calibration:
        est_F = None  # the trusted intrinsics are not doubted: F was only the scout
    n_E = est_E.num_inliers if est_E is not None and est_E.success else 0
    n_F = est_F.num_inliers if est_F is not None and est_F.success else 0

    use_E = n_E > 0 and (est_F is None or n_E >= options.min_E_F_inlier_ratio * n_F)
    if use_E:
        config, best, n_best = "calibrated", est_E, n_E
    elif n_F > 0:
        config, best, n_best = "uncalibrated", est_F, n_F
    else:
        reasons = failure_reasons
        return _rejected(i, j, n, "; ".join(reasons) or "no epipolar model")

    est_H = None
    if options.estimate_homography and n >= 4:
        # Only H supports near n_best matter (planar / panoramic tests, initial-pair score), so the
        # H search stops at the iteration count that finds such a homography (H&Z 4.7.1): on a
        # general scene, where H explains a minority, this is ~10x fewer samples than its own ratio.
        h_floor = min(1.0, options.homography_min_share * n_best / n)
        est_H = estimate_homography(
            x1, x2, replace(ransac, min_inlier_ratio=max(ransac.min_inlier_ratio, h_floor)), rng=rng
        )
    n_H = est_H.num_inliers if est_H is not None and est_H.success else 0
    mask = best.inlier_mask
    pose = best.cam2_from_cam1 if use_E else None
    if use_E and best.cheirality_mask is not None:
        mask = mask & best.cheirality_mask
    if n_H > options.max_H_inlier_ratio * n_best:
        config = "planar"
        h_mask = est_H.inlier_mask
        if calibrated:
            R = _panoramic_rotation(
                est_H.model, K1, K2, x1[h_mask], x2[h_mask], options.panoramic_max_error_px
            )
            if R is not None:
                config, pose, mask = "panoramic", Rigid3d(R, np.zeros(3)), h_mask
            else:
                # E has a two-fold ambiguity for (near-)planar scenes; the homography does not.
                h_pose, front = _pose_from_homography(est_H.model, K1, K2, x1[h_mask], x2[h_mask])
                if h_pose is not None:
                    pose = h_pose
                    if not use_E:
                        mask = h_mask.copy()
                        mask[h_mask] = front
        elif not use_E:
            mask = h_mask  # no reliable epipolar geometry: H inliers are the evidence
    num_inliers = int(np.count_nonzero(mask))
    if num_inliers < options.min_num_inliers:
        return _rejected(i, j, n, f"{num_inliers} inliers < {options.min_num_inliers}")
    if num_inliers < options.min_inlier_ratio * n:
        return _rejected(i, j, n, f"inlier ratio {num_inliers / n:.2f} < {options.min_inlier_ratio}")

    angle = float("nan")
    if pose is not None:
        xn1, xn2 = _normalized(x1[mask], K1), _normalized(x2[mask], K2)
        angle = 0.0 if config == "panoramic" else _median_triangulation_angle_deg(pose, xn1, xn2)
    F = est_F.model if est_F is not None and est_F.success else None
    if F is None and use_E:
        F = epipolar.fundamental_from_essential(est_E.model, K1, K2)
    return TwoViewGeometry(
        image_i=i,
        image_j=j,
        config=config,
        inlier_matches=matches[mask],
        F=F,
        E=est_E.model if use_E else None,
        H=est_H.model if n_H else None,
        cam2_from_cam1=pose,
        num_putative=n,
        num_homography_inliers=n_H,
        median_triangulation_angle_deg=angle,
        success=True,
        reason="",
    )


# --- many pairs ----------------------------------------------------------------------------------------

#: Bump when verification's output changes (invalidates cache entries).
_CACHE_VERSION = 1


def verify_pair_task(pair: tuple, options: TwoViewOptions) -> TwoViewGeometry:
    """Per-pair task of the stage runner.

    Args:
        pair: ``(i, j, keypoints_i, keypoints_j, matches (M, 2), camera_i, camera_j, seed)``; the seed
            derives from (run seed, i, j), never from the order pairs are scheduled in. Keypoints come
            from the client as :class:`~geomvision.runtime.runner.Shared` values (sent to the workers
            once per image).
        options: verification options.
    """
    i, j, kp1, kp2, matches, cam1, cam2, seed = pair
    return verify_pair(kp1, kp2, matches, cam1, cam2, options, image_ids=(i, j), rng=seed)


class TwoViewGeometryCodec:
    """Cache codec of :class:`TwoViewGeometry`: matrices as arrays, scalars in the JSON header."""

    def encode(self, g: TwoViewGeometry) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {"inlier_matches": np.asarray(g.inlier_matches, dtype=np.int64).reshape(-1, 2)}
        for name in ("F", "E", "H"):
            if getattr(g, name) is not None:
                arrays[name] = np.asarray(getattr(g, name), dtype=np.float64)
        if g.cam2_from_cam1 is not None:
            arrays["rotation"] = g.cam2_from_cam1.rotation
            arrays["translation"] = g.cam2_from_cam1.translation
        meta = {
            "image_i": int(g.image_i),
            "image_j": int(g.image_j),
            "config": g.config,
            "num_putative": int(g.num_putative),
            "num_homography_inliers": int(g.num_homography_inliers),
            "median_triangulation_angle_deg": float(g.median_triangulation_angle_deg),
            "success": bool(g.success),
            "reason": g.reason,
        }
        return arrays, meta

    def decode(self, arrays, meta: dict) -> TwoViewGeometry:
        pose = None
        if "rotation" in arrays:
            pose = Rigid3d(arrays["rotation"], arrays["translation"])
        return TwoViewGeometry(
            inlier_matches=arrays["inlier_matches"],
            F=arrays.get("F"),
            E=arrays.get("E"),
            H=arrays.get("H"),
            cam2_from_cam1=pose,
            **meta,
        )


#: Verification on the stage runner.
TWO_VIEW_STAGE = Stage(
    name="two_view", task=verify_pair_task, version=_CACHE_VERSION, codec=TwoViewGeometryCodec()
)


def _camera_key(camera: CameraLike) -> tuple:
    if camera is None:
        return ("unknown",)
    if isinstance(camera, Camera):
        return (camera.model, camera.width, camera.height, hash_arrays(np.asarray(camera.params, np.float64)))
    return ("K", hash_arrays(np.asarray(camera, np.float64)))


def verify_pairs(
    features: Mapping[int, Features],
    matches: Mapping[tuple[int, int], Matches | np.ndarray],
    cameras: Mapping[int, CameraLike] | None,
    options: TwoViewOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    runner: StageRunner | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> dict[tuple[int, int], TwoViewGeometry]:
    """Verify every matched pair, reusing cached pairs.

    Args:
        features: image_id -> Features.
        matches: (i, j) -> Matches (or (M, 2) index array).
        cameras: image_id -> Camera or (3, 3) K; missing / None entries mean unknown intrinsics.
        options: verification options.
        rng: seed (a Generator gives one draw); pair (i, j) uses :func:`derive_seed` (seed, i, j), so
            results do not depend on the backend or the scheduling.
        runner: where the per-pair work runs (``geomvision.runtime.runner``); default: in this process.
        cache_dir: folder of per-pair cache entries (None: the runner's own cache, if any).
        progress: ``progress(done, total, message)`` callback.

    Returns:
        (i, j) -> TwoViewGeometry for every input pair (rejected ones included, ``success=False``).
    """
    options = options or TwoViewOptions()
    cameras = cameras or {}
    seed = int(rng.integers(2**63)) if isinstance(rng, np.random.Generator) else int(rng or 0)
    runner = runner or StageRunner()
    if cache_dir is not None:
        runner = runner.with_cache(cache_dir)
    pairs = sorted(matches)
    indices = {}
    for i, j in pairs:
        if i not in features or j not in features:
            raise InputError(f"pair ({i}, {j}) refers to an image without features")
        m = matches[(i, j)]
        indices[(i, j)] = np.asarray(m.indices if isinstance(m, Matches) else m, dtype=np.int64).reshape(
            -1, 2
        )
    images = sorted({k for p in pairs for k in p})
    image_keys = {k: (hash_arrays(features[k].keypoints_px), _camera_key(cameras.get(k))) for k in images}
    keypoints = {k: Shared(key=("keypoints", k), value=features[k].keypoints_px) for k in images}

    def pair_input(p: tuple[int, int]) -> tuple:
        i, j = p
        return (
            i,
            j,
            keypoints[i],
            keypoints[j],
            indices[p],
            cameras.get(i),
            cameras.get(j),
            derive_seed(seed, i, j),
        )

    results = runner.map(
        TWO_VIEW_STAGE,
        pairs,
        inputs=pair_input,
        context=options,
        options_key=asdict(options),
        item_key=lambda p: hash_arrays(
            p, image_keys[p[0]], image_keys[p[1]], indices[p], derive_seed(seed, *p)
        ),
        label=lambda p: f"{p[0]}-{p[1]}",
        progress=progress,
    )
    n_ok = sum(t.success for t in results)
    logger.info("verified %d of %d pairs", n_ok, len(pairs))
    return dict(zip(pairs, results, strict=True))
