"""Initial pair selection and two-view reconstruction for the incremental mapper.

Pair choice follows the spirit of COLMAP's mapper (Schönberger & Frahm, CVPR 2016, section 4.2):
a good seed has many verified inliers (a dense, reliable start), enough parallax (a well-conditioned
depth: a small median triangulation angle means a near-pure rotation, H&Z 8.4.6 / 11.9), a low share
of homography inliers (a planar or rotation-only pair leaves the essential matrix ill-determined),
and images that are well connected in the view graph (so the model can grow from it).

Each candidate pair gets ``score = inliers * (1 - homography_share) * (0.5 + 0.5 * connectivity)``
where ``connectivity`` is the pair's smaller image degree over the largest degree. Pairs below the
inlier, parallax or homography limits are skipped; candidates are tried in score order until one
two-view reconstruction succeeds.

The two-view reconstruction fixes the first camera at the origin and the second at the relative pose
of the essential matrix (unit baseline, H&Z 9.6), triangulates every track seen by both images
(H&Z 12.2), filters by reprojection error / cheirality / angle, bundle-adjusts and filters again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from geomvision.errors import check_at_least, check_range
from geomvision.geometry.rigid import Rigid3d
from geomvision.robust.estimators import estimate_essential
from geomvision.robust.ransac import RansacOptions
from geomvision.scene import TwoViewGeometry
from geomvision.sfm.mapper_state import MapperState
from geomvision.sfm.triangulate import TriangulationOptions, filter_points, triangulate_tracks

logger = logging.getLogger(__name__)

#: Two-view configurations from which a relative pose (and so a metric seed) can be obtained.
USABLE_CONFIGS = ("calibrated", "uncalibrated")


@dataclass(frozen=True, kw_only=True)
class InitializationOptions:
    """Options of initial pair selection and two-view reconstruction.

    Attributes:
        min_num_inliers: verified inliers a pair needs to be a candidate, and triangulated points the
            two-view model needs to be accepted.
        min_tri_angle_deg: median triangulation angle a pair needs (before and after reconstruction).
        max_homography_share: pairs whose homography inliers exceed this share of their inliers are skipped.
        max_pairs_tried: at most this many candidate pairs are reconstructed before giving up.
        triangulation: triangulation and filtering of the two-view points (reprojection threshold,
            smallest triangulation angle).
        ransac: the essential-matrix RANSAC run when the verified pair carries no usable pose
            (its ``min_num_inliers`` is floored at this stage's ``min_num_inliers``).
    """

    min_num_inliers: int = 50
    min_tri_angle_deg: float = 4.0
    max_homography_share: float = 0.8
    max_pairs_tried: int = 20
    triangulation: TriangulationOptions = field(default_factory=TriangulationOptions)
    ransac: RansacOptions = field(default_factory=lambda: RansacOptions(max_error_px=4.0))

    def __post_init__(self) -> None:
        check_at_least("min_num_inliers", self.min_num_inliers, 5)
        check_range("min_tri_angle_deg", self.min_tri_angle_deg, 0, 90, high_open=True)
        check_range("max_homography_share", self.max_homography_share, 0, 1, low_open=True)
        check_at_least("max_pairs_tried", self.max_pairs_tried, 1)


@dataclass
class InitialPairCandidate:
    """A scored candidate pair (image_id1 < image_id2)."""

    image_id1: int
    image_id2: int
    score: float
    num_inliers: int
    median_tri_angle_deg: float
    homography_share: float


@dataclass
class InitializationResult:
    """Outcome of initialisation.

    Attributes:
        success: a two-view model was built (the state holds it).
        reason: why not, otherwise empty.
        image_ids: the initial pair.
        num_points: points of the accepted two-view model.
        median_tri_angle_deg: median triangulation angle of its points.
        attempts: one dict per pair tried (pair, score, outcome).
    """

    success: bool
    reason: str
    image_ids: tuple[int, int] | None = None
    num_points: int = 0
    median_tri_angle_deg: float = float("nan")
    attempts: list[dict] = field(default_factory=list)


#: bundle-adjust callback: (state, image ids to optimise, fixed image id) -> None (state updated in place).
AdjustFn = Callable[[MapperState, list[int], int], None]


def rank_initial_pairs(
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    options: InitializationOptions,
    *,
    allowed_image_ids: set[int] | None = None,
    excluded_pairs: set[tuple[int, int]] = frozenset(),
) -> list[InitialPairCandidate]:
    """Score and sort candidate initial pairs (best first; ties broken by ids for determinism)."""
    usable = {
        pair: g
        for pair, g in two_view_geometries.items()
        if g.success and g.config in (*USABLE_CONFIGS, "planar") and g.num_inliers >= options.min_num_inliers
    }
    degree: dict[int, int] = {}
    for i, j in usable:
        degree[i] = degree.get(i, 0) + 1
        degree[j] = degree.get(j, 0) + 1
    max_degree = max(degree.values(), default=1)
    candidates, planar = [], []
    for (i, j), g in usable.items():
        pair = (min(i, j), max(i, j))
        if pair in excluded_pairs:
            continue
        if allowed_image_ids is not None and (i not in allowed_image_ids or j not in allowed_image_ids):
            continue
        angle = float(g.median_triangulation_angle_deg)
        if np.isfinite(angle) and angle < options.min_tri_angle_deg:
            continue  # too little parallax: a near-pure rotation gives unreliable depths
        h_share = min(1.0, g.num_homography_inliers / max(g.num_inliers, 1))
        connectivity = min(degree[i], degree[j]) / max_degree
        if h_share > options.max_homography_share or g.config == "planar":
            # A planar scene has only such pairs: keep those with measured parallax as a last resort
            # (their pose comes from the homography decomposition, H&Z 13.2, not the ambiguous E).
            if np.isfinite(angle) and g.cam2_from_cam1 is not None:
                score = g.num_inliers * (0.5 + 0.5 * connectivity)
                planar.append(InitialPairCandidate(pair[0], pair[1], score, g.num_inliers, angle, h_share))
            continue
        score = g.num_inliers * (1.0 - h_share) * (0.5 + 0.5 * connectivity)
        candidates.append(InitialPairCandidate(pair[0], pair[1], score, g.num_inliers, angle, h_share))
    candidates = candidates or planar
    candidates.sort(key=lambda c: (-c.score, c.image_id1, c.image_id2))
    return candidates


def relative_pose(
    state: MapperState, geometry: TwoViewGeometry, options: InitializationOptions, *, rng: np.random.Generator
) -> tuple[Rigid3d | None, str]:
    """``cam2_from_cam1`` of the pair: the verified one when calibrated or planar (from H), else from E."""
    if geometry.config in ("calibrated", "planar") and geometry.cam2_from_cam1 is not None:
        pose = geometry.cam2_from_cam1
    else:
        matches = np.asarray(geometry.inlier_matches, dtype=np.int64)
        x1 = state.camera_of(geometry.image_i).ideal_pixels(
            state.images[geometry.image_i].keypoints_px[matches[:, 0]]
        )
        x2 = state.camera_of(geometry.image_j).ideal_pixels(
            state.images[geometry.image_j].keypoints_px[matches[:, 1]]
        )
        result = estimate_essential(
            x1,
            x2,
            state.camera_of(geometry.image_i).K,
            state.camera_of(geometry.image_j).K,
            replace(
                options.ransac, min_num_inliers=max(options.ransac.min_num_inliers, options.min_num_inliers)
            ),
            rng=rng,
        )
        if not result.success or result.cam2_from_cam1 is None:
            return None, f"essential matrix: {result.reason or 'no pose'}"
        pose = result.cam2_from_cam1
    norm = np.linalg.norm(pose.translation)
    if not norm > 1e-12:
        return None, "relative pose has zero baseline"
    return Rigid3d(pose.rotation, pose.translation / norm), ""


def reconstruct_pair(
    state: MapperState,
    geometry: TwoViewGeometry,
    options: InitializationOptions,
    *,
    adjust: AdjustFn | None = None,
    rng: np.random.Generator,
) -> InitializationResult:
    """Two-view model of one pair into an empty ``state``; on failure the state is cleared again."""
    i, j = geometry.image_i, geometry.image_j
    result = InitializationResult(False, "", (i, j))
    pose, reason = relative_pose(state, geometry, options, rng=rng)
    if pose is None:
        result.reason = reason
        return result
    state.set_pose(i, Rigid3d())
    state.set_pose(j, pose)
    tri = options.triangulation
    triangulate_tracks(state, None, tri)
    ok, reason = _check_two_view(state, options, i, j)
    if ok and adjust is not None:
        adjust(state, [i, j], i)
        filter_points(state, None, tri.filter_max_error_px, tri.filter_min_tri_angle_deg)
        ok, reason = _check_two_view(state, options, i, j)
    if not ok:
        state.clear()
        result.reason = reason
        return result
    result.success = True
    result.num_points = state.num_points
    result.median_tri_angle_deg = _median_angle(state, i, j)
    return result


def _median_angle(state: MapperState, i: int, j: int) -> float:
    points = state.point_ids()
    if points.size == 0:
        return float("nan")
    return float(np.median(state.triangulation_angles_deg(points)))


def _check_two_view(state: MapperState, options: InitializationOptions, i: int, j: int) -> tuple[bool, str]:
    if state.num_points < options.min_num_inliers:
        return False, f"{state.num_points} two-view points < {options.min_num_inliers}"
    median = _median_angle(state, i, j)
    if median < options.min_tri_angle_deg:
        return False, f"median triangulation angle {median:.2f} deg < {options.min_tri_angle_deg} deg"
    return True, ""


def initialize_reconstruction(
    state: MapperState,
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    options: InitializationOptions,
    *,
    allowed_image_ids: set[int] | None = None,
    excluded_pairs: set[tuple[int, int]] = frozenset(),
    adjust: AdjustFn | None = None,
    rng: np.random.Generator,
) -> InitializationResult:
    """Try the ranked candidate pairs until a two-view model succeeds (``state`` must be empty).

    Args:
        state: empty mapper state; holds the two-view model on success.
        two_view_geometries: verified pairs keyed (i, j).
        options: thresholds.
        allowed_image_ids: only pairs of these images (e.g. not registered in an earlier model).
        excluded_pairs: pairs already tried by earlier models.
        adjust: bundle-adjustment callback for the two-view model.
        rng: random generator.

    Returns:
        InitializationResult; ``attempts`` lists every pair tried with its outcome.
    """
    candidates = rank_initial_pairs(
        two_view_geometries, options, allowed_image_ids=allowed_image_ids, excluded_pairs=excluded_pairs
    )
    attempts: list[dict] = []
    if not candidates:
        return InitializationResult(False, "no image pair with enough inliers and parallax to start a model")
    by_pair = {(min(p), max(p)): g for p, g in two_view_geometries.items()}
    for cand in candidates[: options.max_pairs_tried]:
        geometry = by_pair[(cand.image_id1, cand.image_id2)]
        res = reconstruct_pair(state, geometry, options, adjust=adjust, rng=rng)
        attempts.append(
            {
                "pair": [cand.image_id1, cand.image_id2],
                "score": round(cand.score, 3),
                "num_inliers": cand.num_inliers,
                "homography_share": round(cand.homography_share, 3),
                "success": res.success,
                "reason": res.reason,
                "num_points": res.num_points,
            }
        )
        if res.success:
            res.attempts = attempts
            logger.info(
                "initial pair %s: %d points, median angle %.1f deg",
                res.image_ids,
                res.num_points,
                res.median_tri_angle_deg,
            )
            return res
        logger.info("initial pair (%d, %d) rejected: %s", cand.image_id1, cand.image_id2, res.reason)
    return InitializationResult(
        False,
        f"all {len(attempts)} candidate pairs failed; last: {attempts[-1]['reason']}",
        attempts=attempts,
    )
