"""Relative poses of verified pairs under given intrinsics, from their inlier matches only.

The global mapper needs a relative rotation on every pair it averages. Verification leaves a pair
without one when its essential matrix kept fewer than ``min_E_F_inlier_ratio`` (0.95) of the
fundamental matrix's inliers (COLMAP's "uncalibrated" pairs: on castle-P19 with the true K, 109 of
165 pairs), and after the focal length moved every pose of that camera is stale. GLOMAP estimates
the relative pose of every pair again from its inliers with the current intrinsics; so does this stage:

1. ``E = K2^T F K1`` projected onto the essential manifold (H&Z result 9.18), its inliers among the
   pair's inliers and the pose by cheirality: no sampling, microseconds a pair; kept when it holds
   ``light_min_ratio`` of the inliers (for a planar pair, whose F is ill-posed, the E its verification
   estimated, under the same test: ``planar_from_essential``). Verification
   estimated F on ideal pixels of the cameras it had; when the distortion has been refined since, F
   describes the current ideal pixels only approximately, and the inlier count, taken on the current
   ideal pixels, decides whether it still holds (templeRing, focal refined 768 -> 1543 px with a
   radial term: 97 of 335 pairs posed this way instead of by RANSAC, the re-posing 10 -> 5 s);
2. otherwise five-point LO-RANSAC on the pair's inliers (undistorted to ideal pinhole pixels), where
   the inlier ratio is high and few samples are drawn; kept when the pose holds
   ``min_support_ratio`` of the inliers.

A kept pair gets config ``calibrated``, the pose, E and the inliers of that pose; the others keep
their matches and F without a pose (rotation averaging skips them), as do panoramic pairs (a pure
rotation has no essential matrix).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from geomvision.errors import InputError, check_at_least, check_range
from geomvision.geometry.epipolar import project_to_essential, recover_pose, sampson_distance_sq
from geomvision.geometry.rigid import project_to_so3, rotation_angle
from geomvision.robust.estimators import estimate_essential
from geomvision.robust.ransac import RansacOptions
from geomvision.runtime.rng import as_rng
from geomvision.scene import Camera, ImageInfo, TwoViewGeometry

logger = logging.getLogger(__name__)

__all__ = [
    "RelativePoseOptions",
    "RelativePoseResult",
    "estimate_relative_poses",
    "homography_rotation_candidates",
]

Pair = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class RelativePoseOptions:
    """Options of :func:`estimate_relative_poses`.

    Attributes:
        light_min_ratio: the essential matrix from F must hold this share of the pair's inliers.
        min_support_ratio: the RANSAC pose must hold this share of the pair's inliers (lower than
            verification's 0.95: rotation averaging drops the pairs that disagree).
        min_num_inliers: and at least this many.
        planar_from_essential: pose a planar pair from the essential matrix its verification estimated
            (five-point RANSAC on all its matches) when that still holds ``light_min_ratio`` of its
            inliers under the given intrinsics, instead of by a new RANSAC. On a planar pair every
            five-point pose is one of the two that fit the plane either way; the global mapper's rotation
            averaging chooses between them with the homography's decompositions. Synthetic 300-image
            street (1011 of 1045 planar pairs posed this way): re-posing 5.6 -> 0.9 s, image rotations
            after rotation averaging p90 0.88 -> 0.77 deg.
        ransac: the five-point RANSAC (``max_error_px``: Sampson distance in ideal pixels).
    """

    light_min_ratio: float = 0.95
    min_support_ratio: float = 0.5
    min_num_inliers: int = 15
    planar_from_essential: bool = True
    ransac: RansacOptions = field(default_factory=lambda: RansacOptions(max_error_px=2.0))

    def __post_init__(self) -> None:
        check_range("light_min_ratio", self.light_min_ratio, 0, 1)
        check_range("min_support_ratio", self.min_support_ratio, 0, 1)
        check_at_least("min_num_inliers", self.min_num_inliers, 5)


@dataclass
class RelativePoseResult:
    """Outcome of :func:`estimate_relative_poses`.

    Attributes:
        two_view_geometries: every input pair: the ones posed again with their new pose and inliers,
            the others as they came (those that failed lose their stale pose).
        report: counts (JSON-ready): pairs posed by the light path and by RANSAC, pairs that failed.
    """

    two_view_geometries: dict[Pair, TwoViewGeometry]
    report: dict[str, Any]


def _normalized(x_px: np.ndarray, K: np.ndarray) -> np.ndarray:
    return (x_px - K[:2, 2]) / np.diag(K)[:2]


def _light_pose(E: np.ndarray, x1, x2, K1, K2, options: RelativePoseOptions):
    """(E, pose, inlier mask) from an essential matrix, or None when it holds too few inliers."""
    F_E = np.linalg.inv(K2).T @ E @ np.linalg.inv(K1)
    inliers = sampson_distance_sq(F_E, x1, x2) <= options.ransac.max_error_px**2
    needed = max(options.light_min_ratio * len(x1), options.min_num_inliers)
    if np.count_nonzero(inliers) < needed:
        return None
    pose, front = recover_pose(E, _normalized(x1[inliers], K1), _normalized(x2[inliers], K2))
    mask = inliers.copy()
    mask[inliers] = front
    if np.count_nonzero(mask) < needed:
        return None
    return E, pose, mask


def estimate_relative_poses(
    two_view_geometries: Mapping[Pair, TwoViewGeometry],
    images: Mapping[int, ImageInfo],
    cameras: Mapping[int, Camera],
    options: RelativePoseOptions | None = None,
    *,
    pairs: Collection[Pair] | None = None,
    rng: np.random.Generator | int | None = None,
) -> RelativePoseResult:
    """Estimate the relative pose of ``pairs`` (default: the successful pairs without one) again.

    Args:
        two_view_geometries: (i, j) -> TwoViewGeometry with inlier matches (and F for the light path).
        images: image_id -> ImageInfo (keypoints the matches index, camera id).
        cameras: camera_id -> Camera (the intrinsics to use).
        options: see :class:`RelativePoseOptions`.
        pairs: the pairs to pose; None: every successful pair without ``cam2_from_cam1``.
        rng: seed or generator of the RANSAC samples.

    Returns:
        :class:`RelativePoseResult`.

    Raises:
        InputError: a pair to pose that is not in ``two_view_geometries``, or an image / camera missing.
    """
    options = options or RelativePoseOptions()
    rng = as_rng(rng)
    if pairs is None:
        pairs = [p for p, g in two_view_geometries.items() if g.success and g.cam2_from_cam1 is None]
    out = dict(two_view_geometries)
    counts = {"num_pairs": 0, "num_light": 0, "num_light_planar": 0, "num_ransac": 0, "num_failed": 0}
    for pair in sorted(pairs):
        if pair not in two_view_geometries:
            raise InputError(f"pair {pair} is not among the verified pairs")
        g = two_view_geometries[pair]
        if not g.success or len(g.inlier_matches) < options.min_num_inliers:
            continue
        i, j = pair
        for image_id in pair:
            if image_id not in images or images[image_id].camera_id not in cameras:
                raise InputError(f"pair {pair}: image {image_id} or its camera is unknown")
        cam_i, cam_j = cameras[images[i].camera_id], cameras[images[j].camera_id]
        counts["num_pairs"] += 1
        x1 = cam_i.ideal_pixels(images[i].keypoints_px[g.inlier_matches[:, 0]])
        x2 = cam_j.ideal_pixels(images[j].keypoints_px[g.inlier_matches[:, 1]])
        K1, K2 = cam_i.K, cam_j.K
        if g.config == "panoramic":  # a pure rotation has no essential matrix: its stale pose goes
            counts["num_failed"] += 1
            out[pair] = replace(g, cam2_from_cam1=None)
            continue
        light = None
        if g.config != "planar" and g.F is not None:
            light = _light_pose(project_to_essential(K2.T @ g.F @ K1), x1, x2, K1, K2, options)
        elif g.config == "planar" and g.E is not None and options.planar_from_essential:
            light = _light_pose(g.E, x1, x2, K1, K2, options)
            counts["num_light_planar"] += light is not None
        if light is not None:
            E, pose, mask = light
            counts["num_light"] += 1
        else:
            est = estimate_essential(x1, x2, K1, K2, options.ransac, rng=rng)
            mask = est.inlier_mask & est.cheirality_mask if est.success else None
            needed = max(options.min_support_ratio * len(x1), options.min_num_inliers)
            if mask is None or np.count_nonzero(mask) < needed:
                counts["num_failed"] += 1
                out[pair] = replace(g, config="uncalibrated", E=None, cam2_from_cam1=None)
                continue
            E, pose = est.model, est.cam2_from_cam1
            counts["num_ransac"] += 1
        out[pair] = replace(
            g, config="calibrated", inlier_matches=g.inlier_matches[mask], E=E, cam2_from_cam1=pose
        )
    logger.info(
        "relative poses of %d pairs: %d from F, %d by RANSAC, %d failed",
        counts["num_pairs"],
        counts["num_light"],
        counts["num_ransac"],
        counts["num_failed"],
    )
    return RelativePoseResult(out, counts)


def homography_rotation_candidates(
    two_view_geometries: Mapping[Pair, TwoViewGeometry],
    images: Mapping[int, ImageInfo],
    cameras: Mapping[int, Camera],
    pairs: Collection[Pair],
) -> dict[Pair, list[np.ndarray]]:
    """The distinct rotations of each pair's plane-induced homography decompositions.

    A homography induced by a plane has two physically distinct decompositions (Faugeras & Lustman;
    Malis & Vargas), and for a planar pair the essential matrix has the same two-fold ambiguity, so the
    pose verification or five-point RANSAC settled on may be the wrong one (synthetic 300-image street:
    192 of 1045 planar pairs' five-point rotations > 3 deg off, while the better of the two
    decompositions is > 3 deg off on 25). Rotation averaging chooses among them by consistency with the
    other pairs (:func:`geomvision.sfm.rotation_averaging.average_rotations`).

    Args:
        two_view_geometries: (i, j) -> TwoViewGeometry; pairs without ``H`` give no candidates.
        images: image_id -> ImageInfo (camera ids).
        cameras: camera_id -> Camera (the ``K`` the homography is decomposed with).
        pairs: the pairs to decompose.

    Returns:
        (i, j) -> list of (3, 3) ``cam2_from_cam1`` rotations (at most 2), for pairs with a homography.

    Raises:
        InputError: a pair not in ``two_view_geometries``, or an image / camera missing.
    """
    out: dict[Pair, list[np.ndarray]] = {}
    for pair in pairs:
        if pair not in two_view_geometries:
            raise InputError(f"pair {pair} is not among the verified pairs")
        g = two_view_geometries[pair]
        if g.H is None:
            continue
        for image_id in pair:
            if image_id not in images or images[image_id].camera_id not in cameras:
                raise InputError(f"pair {pair}: image {image_id} or its camera is unknown")
        K1 = cameras[images[pair[0]].camera_id].K
        K2 = cameras[images[pair[1]].camera_id].K
        _, rotations, _, _ = cv2.decomposeHomographyMat(np.linalg.inv(K2) @ g.H @ K1, np.eye(3))
        distinct: list[np.ndarray] = []
        for rotation in rotations:
            rotation = project_to_so3(rotation)
            if all(rotation_angle(r.T @ rotation) > 1e-6 for r in distinct):
                distinct.append(rotation)
        out[pair] = distinct
    return out
