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
from geomvision.geometry.epipolar import project_to_essential, recover_poses, sampson_distance_sq
from geomvision.geometry.rigid import Rigid3d, project_to_so3, rotation_angle
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


def _pair_cameras(
    pair: Pair, images: Mapping[int, ImageInfo], cameras: Mapping[int, Camera]
) -> tuple[Camera, Camera]:
    """The cameras of the pair's two images; InputError when an image or its camera is unknown."""
    for image_id in pair:
        if image_id not in images or images[image_id].camera_id not in cameras:
            raise InputError(f"pair {pair}: image {image_id} or its camera is unknown")
    return cameras[images[pair[0]].camera_id], cameras[images[pair[1]].camera_id]


# Correspondences per batch of the light path: large enough that the per-call overhead vanishes, small
# enough that its arrays (~0.5 kB a correspondence) are reused from the heap instead of being faulted in
# afresh (street 1000, 1.44M correspondences in one batch: 2.3 s in a fresh process, 1.4 s warm).
_LIGHT_BATCH = 100_000


def _light_poses(candidates: list[tuple], options: RelativePoseOptions) -> list[tuple | None]:
    """(E, pose, inlier mask) of each candidate from its essential matrix, or None when it holds too few
    inliers; many pairs' correspondences in one array, so the work is a few numpy passes per batch of
    pairs, not a few per pair.

    Args:
        candidates: (E (3, 3), x1 (N_i, 2), x2 (N_i, 2), K1, K2) per pair, ideal pixels.
        options: ``ransac.max_error_px`` (Sampson distance), ``light_min_ratio``, ``min_num_inliers``.
    """
    results: list[tuple | None] = []
    start, size = 0, 0
    for k, candidate in enumerate(candidates):
        size += len(candidate[1])
        if size >= _LIGHT_BATCH or k == len(candidates) - 1:
            results.extend(_light_pose_batch(candidates[start : k + 1], options))
            start, size = k + 1, 0
    return results


def _light_pose_batch(candidates: list[tuple], options: RelativePoseOptions) -> list[tuple | None]:
    """:func:`_light_poses` of one batch of pairs."""
    E = np.stack([c[0] for c in candidates])
    K1 = np.stack([c[3] for c in candidates])
    K2 = np.stack([c[4] for c in candidates])
    sizes = np.array([len(c[1]) for c in candidates])
    pair = np.repeat(np.arange(len(candidates)), sizes)
    x1 = np.concatenate([c[1] for c in candidates])
    x2 = np.concatenate([c[2] for c in candidates])
    F_E = np.swapaxes(np.linalg.inv(K2), 1, 2) @ E @ np.linalg.inv(K1)
    inliers = sampson_distance_sq(F_E, x1, x2, pair=pair) <= options.ransac.max_error_px**2
    needed = np.maximum(options.light_min_ratio * sizes, options.min_num_inliers)
    enough = np.bincount(pair[inliers], minlength=len(candidates)) >= needed
    rows = np.flatnonzero(inliers & enough[pair])
    # normalised coordinates (K^-1 x) of those inliers, each with its pair's K
    xn1 = (x1[rows] - K1[:, :2, 2][pair[rows]]) / K1[:, [0, 1], [0, 1]][pair[rows]]
    xn2 = (x2[rows] - K2[:, :2, 2][pair[rows]]) / K2[:, [0, 1], [0, 1]][pair[rows]]
    rotations, translations, front = recover_poses(E, xn1, xn2, pair[rows])
    mask = np.zeros(len(pair), dtype=bool)
    mask[rows[front]] = True
    enough &= np.bincount(pair[mask], minlength=len(candidates)) >= needed
    bounds = np.r_[0, np.cumsum(sizes)]
    return [
        (E[k], Rigid3d(rotations[k], translations[k]), mask[bounds[k] : bounds[k + 1]]) if enough[k] else None
        for k in range(len(candidates))
    ]


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
    # First every pair's correspondences and its essential matrix for the light path, then the light
    # path for all of them at once, then RANSAC where it failed (in pair order, so the samples drawn
    # do not depend on the batching).
    work = []  # (pair, x1, x2, K1, K2, index among the light candidates or -1)
    candidates = []
    ideal: dict[int, np.ndarray] = {}  # image id -> (K, 2) ideal pixels of its keypoints
    for pair in sorted(pairs):
        if pair not in two_view_geometries:
            raise InputError(f"pair {pair} is not among the verified pairs")
        g = two_view_geometries[pair]
        if not g.success or len(g.inlier_matches) < options.min_num_inliers:
            continue
        i, j = pair
        cam_i, cam_j = _pair_cameras(pair, images, cameras)
        counts["num_pairs"] += 1
        if g.config == "panoramic":  # a pure rotation has no essential matrix: its stale pose goes
            counts["num_failed"] += 1
            out[pair] = replace(g, cam2_from_cam1=None)
            continue
        for image_id, cam in ((i, cam_i), (j, cam_j)):
            if image_id not in ideal:  # each image's keypoints undistorted once, not once per pair
                ideal[image_id] = cam.ideal_pixels(images[image_id].keypoints_px)
        x1 = ideal[i][g.inlier_matches[:, 0]]
        x2 = ideal[j][g.inlier_matches[:, 1]]
        K1, K2 = cam_i.K, cam_j.K
        E = None
        if g.config != "planar" and g.F is not None:
            E = project_to_essential(K2.T @ g.F @ K1)
        elif g.config == "planar" and g.E is not None and options.planar_from_essential:
            E = g.E
        work.append((pair, x1, x2, K1, K2, len(candidates) if E is not None else -1))
        if E is not None:
            candidates.append((E, x1, x2, K1, K2))
    light_results = _light_poses(candidates, options)
    for pair, x1, x2, K1, K2, light_index in work:
        g = two_view_geometries[pair]
        light = light_results[light_index] if light_index >= 0 else None
        if light is not None:
            E, pose, mask = light
            counts["num_light"] += 1
            counts["num_light_planar"] += g.config == "planar"
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
    decomposed: list[tuple[Pair, int]] = []  # (pair, number of its decompositions)
    all_rotations: list[np.ndarray] = []
    for pair in pairs:
        if pair not in two_view_geometries:
            raise InputError(f"pair {pair} is not among the verified pairs")
        g = two_view_geometries[pair]
        if g.H is None:
            continue
        K1, K2 = (cam.K for cam in _pair_cameras(pair, images, cameras))
        _, rotations, _, _ = cv2.decomposeHomographyMat(np.linalg.inv(K2) @ g.H @ K1, np.eye(3))
        decomposed.append((pair, len(rotations)))
        all_rotations.extend(rotations)
    projected = project_to_so3(np.array(all_rotations)) if all_rotations else np.zeros((0, 3, 3))
    out: dict[Pair, list[np.ndarray]] = {}
    start = 0
    for pair, count in decomposed:
        group = projected[start : start + count]
        start += count
        # angle between every two decompositions of the pair (at most 4), in one call
        angles = rotation_angle(np.swapaxes(group, 1, 2)[:, None] @ group[None])
        kept: list[int] = []
        for k in range(count):
            if all(angles[r, k] > 1e-6 for r in kept):
                kept.append(k)
        out[pair] = [group[k] for k in kept]
    return out
