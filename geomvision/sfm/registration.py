"""Next-best-view selection and image registration (PnP RANSAC + pose refinement) for the mapper.

Next-best-view follows COLMAP's mapper (Schönberger & Frahm, "Structure-from-Motion Revisited",
CVPR 2016, section 4.2): an unregistered image is scored by how many already triangulated points it
sees *and* how evenly they cover the image, measured with a visibility pyramid — at level ``l`` the
image is cut into ``2^l x 2^l`` cells and every occupied cell adds ``2^l`` to the score, so points
spread over the image beat the same number of points in one corner (a well-spread 2D-3D set gives a
better-conditioned pose).

Registration solves the absolute pose from the 2D-3D correspondences with RANSAC
(:func:`geomvision.robust.absolute_pose.estimate_absolute_pose`, H&Z 7.1 / P3P), then refines the pose
on the inliers by minimising reprojection error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from geomvision.errors import InputError, check_at_least, check_range
from geomvision.geometry.rigid import Rigid3d
from geomvision.robust.absolute_pose import estimate_absolute_pose
from geomvision.robust.ransac import RansacOptions
from geomvision.sfm.mapper_state import MapperState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RegistrationOptions:
    """Options of next-best-view scoring and PnP registration.

    Attributes:
        min_num_inliers: PnP needs at least this many inlier correspondences.
            (also the floor of the PnP RANSAC's own ``min_num_inliers``).
        min_inlier_ratio: and at least this inlier fraction of the 2D-3D correspondences.
        min_num_visible: images seeing fewer triangulated points are not candidates.
        pyramid_levels: levels of the visibility pyramid (level l has 2^l x 2^l cells, l = 1..levels).
        ransac: the PnP RANSAC; its ``max_error_px`` (reprojection error) also decides which
            correspondences count as inliers of the refined pose.
    """

    min_num_inliers: int = 30
    min_inlier_ratio: float = 0.25
    min_num_visible: int = 15
    pyramid_levels: int = 3
    ransac: RansacOptions = field(
        default_factory=lambda: RansacOptions(max_error_px=12.0, max_iterations=5000, confidence=0.9999)
    )

    def __post_init__(self) -> None:
        if self.min_num_inliers < 4:
            raise InputError(f"min_num_inliers must be >= 4 (P3P + 1), got {self.min_num_inliers}")
        check_range("min_inlier_ratio", self.min_inlier_ratio, 0, 1)
        check_at_least("pyramid_levels", self.pyramid_levels, 1)


@dataclass
class RegistrationResult:
    """Outcome of registering one image.

    Attributes:
        success: pose found with enough inliers.
        reason: why not, when ``success`` is False.
        image_id: the image.
        cam_from_world: refined pose (None on failure).
        num_correspondences: 2D-3D correspondences offered to PnP.
        num_inliers: PnP inliers after refinement.
        inlier_rows: (K,) observation rows (MapperState) of the inlier correspondences.
    """

    success: bool
    reason: str
    image_id: int
    cam_from_world: Rigid3d | None = None
    num_correspondences: int = 0
    num_inliers: int = 0
    inlier_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def visible_point_rows(state: MapperState, image_id: int) -> np.ndarray:
    """Observation rows of the image whose track already has a 3D point (2D-3D correspondences)."""
    rows = state.table.image_obs[image_id]
    return rows[state.track_has_point[state.table.obs_track[rows]]]


def pyramid_score(pixels: np.ndarray, width: int, height: int, levels: int) -> int:
    """Visibility-pyramid score of (K, 2) pixels: sum over levels of ``2^l * occupied cells``."""
    if len(pixels) == 0:
        return 0
    u = np.clip((pixels[:, 0] + 0.5) / width, 0.0, 1.0 - 1e-12)
    v = np.clip((pixels[:, 1] + 0.5) / height, 0.0, 1.0 - 1e-12)
    score = 0
    for level in range(1, levels + 1):
        n = 2**level
        cells = np.floor(u * n).astype(np.int64) * n + np.floor(v * n).astype(np.int64)
        score += n * len(np.unique(cells))
    return int(score)


def rank_next_images(
    state: MapperState, candidate_ids: list[int], options: RegistrationOptions
) -> list[tuple[int, int, int]]:
    """Order unregistered candidates, best first.

    Returns:
        (image_id, pyramid score, number of visible points) for candidates seeing at least
        ``options.min_num_visible`` triangulated points, sorted by score, then count, then id.
    """
    ranked = []
    for image_id in candidate_ids:
        if state.is_registered[image_id]:
            continue
        rows = visible_point_rows(state, image_id)
        if len(rows) < options.min_num_visible:
            continue
        cam = state.camera_of(image_id)
        px = state.images[image_id].keypoints_px[state.table.obs_kp[rows]]
        ranked.append((image_id, pyramid_score(px, cam.width, cam.height, options.pyramid_levels), len(rows)))
    ranked.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return ranked


def register_image(
    state: MapperState, image_id: int, options: RegistrationOptions, *, rng: np.random.Generator
) -> RegistrationResult:
    """Estimate the pose of an unregistered image from its 2D-3D correspondences.

    PnP runs on undistorted pixel coordinates (normalised coordinates mapped through the pinhole K),
    so the RANSAC threshold stays in pixels for every camera model. The pose is then refined on the
    inliers by minimising reprojection error.

    Args:
        state: mapper state (not modified).
        image_id: image to register.
        options: thresholds.
        rng: random generator for RANSAC.
    """
    rows = visible_point_rows(state, image_id)
    result = RegistrationResult(False, "", image_id, num_correspondences=len(rows))
    if len(rows) < options.min_num_inliers:
        result.reason = f"{len(rows)} 2D-3D correspondences < {options.min_num_inliers}"
        return result
    cam = state.camera_of(image_id)
    K = cam.K
    pixels = state.obs_xn[rows] @ K[:2, :2].T + K[:2, 2]  # undistorted pixels
    points = state.track_xyz[state.table.obs_track[rows]]
    pose_options = replace(
        options.ransac, min_num_inliers=max(options.ransac.min_num_inliers, options.min_num_inliers)
    )
    # estimate_absolute_pose polishes the RANSAC pose by Levenberg-Marquardt on its inliers.
    estimate = estimate_absolute_pose(points, pixels, K, pose_options, refine=True, rng=rng)
    if not estimate.success:
        result.reason = f"PnP failed: {estimate.reason}"
        return result
    pose = estimate.cam_from_world
    # Re-count inliers with the refined pose: refinement may bring in or push out borderline points.
    points_in_cam = pose.apply(points)
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = points_in_cam[:, :2] / points_in_cam[:, 2:3] @ K[:2, :2].T + K[:2, 2]
    errors = np.linalg.norm(proj - pixels, axis=1)
    inliers = (points_in_cam[:, 2] > 0) & (errors <= options.ransac.max_error_px)
    num_inliers = int(inliers.sum())
    result.num_inliers = num_inliers
    if num_inliers < options.min_num_inliers:
        result.reason = f"{num_inliers} PnP inliers < {options.min_num_inliers}"
        return result
    if num_inliers < options.min_inlier_ratio * len(rows):
        result.reason = f"PnP inlier ratio {num_inliers / len(rows):.2f} < {options.min_inlier_ratio}"
        return result
    result.success = True
    result.cam_from_world = pose
    result.inlier_rows = rows[inliers]
    return result
