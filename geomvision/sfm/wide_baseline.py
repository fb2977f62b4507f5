"""Wide baselines: retry weakly connected pairs with affine-simulating (ASIFT-like) features.

Ordinary SIFT is invariant to similarity transforms only. Between views far apart on a ring around a
small object the local appearance changes by a strong affine tilt, and the ratio-tested SIFT matches of
such a pair fall below what verification needs. Affine simulation (Morel & Yu 2009, ASIFT) describes
each image again under a few synthetic tilts ``t`` and in-plane rotations, so that one of the simulated
views is close to the other camera's and SIFT matches there; ``cv2.AffineFeature`` maps the keypoints
back to the original image.

This pass costs several SIFT extractions per image, so it runs only where the ordinary path failed
(:func:`densify_wide_baseline_pairs`):

1. from the verified pairs with at least ``min_pair_inliers`` inliers, the *weak* images: fewer than
   ``min_verified_neighbors`` such neighbours, or outside the largest connected component of their graph;
2. candidate pairs: each weak image with its ``candidates_per_image`` best-matched images (most
   ordinary putative matches) among those it has no strong verified pair with, capped at ``max_pairs``;
3. each candidate is matched with the affine-simulated features of both images and verified again by
   :func:`geomvision.sfm.two_view.verify_pair`; the inlier keypoints that are new are appended to the
   images' features (an affine keypoint within ``snap_radius_px`` of an existing keypoint is that
   keypoint, so tracks stay joined), and the pair enters the verified set (replacing a thin verified
   pair when it has more inliers).

On a well-connected set (every image with enough verified neighbours, one component) nothing runs.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from geomvision.errors import InputError, check_at_least, check_positive, check_range
from geomvision.features.match import MatchingOptions, match_descriptors
from geomvision.io.images import read_image
from geomvision.progress import ProgressCallback, report
from geomvision.robust.absolute_pose import estimate_absolute_pose
from geomvision.robust.ransac import RansacOptions
from geomvision.runtime.rng import as_rng
from geomvision.scene import Reconstruction, View
from geomvision.scene.types import Features, TwoViewGeometry
from geomvision.sfm.guided_matching import GuidedMatchingOptions
from geomvision.sfm.merge import MergeOptions, merge_reconstructions
from geomvision.sfm.two_view import CameraLike, TwoViewOptions, verify_pair

logger = logging.getLogger(__name__)

__all__ = [
    "GlobalFallbackOptions",
    "needs_global_fallback",
    "ModelBridgeOptions",
    "bridge_and_merge_models",
    "WideBaselineOptions",
    "WideBaselineResult",
    "affine_features",
    "densify_wide_baseline_pairs",
    "weak_images",
]


@dataclass(frozen=True, kw_only=True)
class GlobalFallbackOptions:
    """When the incremental mapper leaves most of the images out, map again with the global mapper.

    On a sparse ring (12 views 30 deg apart around the Oxford dinosaur) every image has only its two
    neighbours: the tracks are two or three views long, so incremental registration (PnP with 30 inliers
    among the model's 3D points) stops after the initial pair, while rotation averaging and global
    positioning use every verified pair at once (11 of 12 images registered there). The global run is
    kept only when its largest model registers more images; on a set where the incremental mapper
    registers at least ``min_registered_share`` of the images it does not run.

    Attributes:
        enabled: run the fallback at all.
        min_registered_share: the fallback runs when the largest model (after the model bridge) registers
            fewer than this share of the images (0 < share <= 1).
    """

    enabled: bool = True
    min_registered_share: float = 0.9

    def __post_init__(self) -> None:
        check_range("min_registered_share", self.min_registered_share, 0.0, 1.0, low_open=True)


def needs_global_fallback(
    models: list[Reconstruction], num_images: int, options: GlobalFallbackOptions, *, mapper: str
) -> bool:
    """True when the incremental mapper's largest model registers too few images (see the options)."""
    if not options.enabled or mapper != "incremental" or num_images < 3:
        return False
    largest = max((m.num_registered for m in models), default=0)
    return largest < options.min_registered_share * num_images


@dataclass(frozen=True, kw_only=True)
class WideBaselineOptions:
    """Options of :func:`densify_wide_baseline_pairs`.

    Attributes:
        enabled: run the affine-feature pass at all. Off by default: on the 16-view templeRing ring it
            added 9 pairs but moved AUC@2 by only 0.001-0.003 at 2.5-4x the run time (the gain there came
            from the model bridge, ``bridge``, which stays on); see BENCHMARKS.md, wide baselines.
        min_verified_neighbors: an image with fewer strong verified neighbours is weak (its pairs are
            retried). 3: on a ring every image needs more than its two immediate neighbours.
        min_pair_inliers: a verified pair with fewer inliers does not count as a neighbour (a bridge
            this thin often fails to carry registration across).
        candidates_per_image: pairs retried per weak image (its best-matched unverified partners).
        max_pairs: at most this many pairs retried per run (bounds the cost on a badly connected set).
        max_tilt_index: ASIFT tilts ``sqrt(2)^k`` for ``k = 0..max_tilt_index`` (2: tilts 1, 1.41, 2;
            each tilt ``t > 1`` adds about ``0.9 t`` views of 180 deg of rotations at
            ``rotate_step_base_deg / t``).
        rotate_step_base_deg: in-plane rotation step at tilt 1 (divided by the tilt, as in ASIFT).
        max_num_features: keep at most this many affine keypoints per image (strongest first).
        max_image_size_px: images are downscaled to this longer side for the affine pass.
        sift_contrast_threshold: SIFT contrast threshold inside the affine simulation.
        snap_radius_px: an affine keypoint this close to an existing keypoint of the image is that
            keypoint (joins tracks with the ordinary matches); otherwise it is appended.
        matching: matching of the affine descriptors (exact nearest neighbours and a ratio test).
        bridge: after mapping, joining the mapper's separate models (:func:`bridge_and_merge_models`).
        global_fallback: after the bridge, the global mapper where the incremental one registered few
            images (:func:`needs_global_fallback`).
        guided: after verification, guided matching of the verified pairs of weak images
            (:func:`geomvision.sfm.guided_matching.densify_weak_pairs`; runs whatever ``enabled`` says).
    """

    enabled: bool = False
    min_verified_neighbors: int = 3
    min_pair_inliers: int = 30
    candidates_per_image: int = 3
    max_pairs: int = 40
    max_tilt_index: int = 2
    rotate_step_base_deg: float = 72.0
    max_num_features: int = 8000
    max_image_size_px: int = 1024
    sift_contrast_threshold: float = 0.012
    snap_radius_px: float = 1.0
    matching: MatchingOptions = field(default_factory=lambda: MatchingOptions(method="bruteforce"))
    bridge: ModelBridgeOptions = field(default_factory=lambda: ModelBridgeOptions())
    global_fallback: GlobalFallbackOptions = field(default_factory=GlobalFallbackOptions)
    guided: GuidedMatchingOptions = field(default_factory=GuidedMatchingOptions)

    def __post_init__(self) -> None:
        check_at_least("min_verified_neighbors", self.min_verified_neighbors, 0)
        check_at_least("min_pair_inliers", self.min_pair_inliers, 0)
        check_at_least("candidates_per_image", self.candidates_per_image, 1)
        check_at_least("max_pairs", self.max_pairs, 0)
        check_range("max_tilt_index", self.max_tilt_index, 0, 6)
        check_positive("rotate_step_base_deg", self.rotate_step_base_deg)
        check_at_least("max_num_features", self.max_num_features, 8)
        check_at_least("max_image_size_px", self.max_image_size_px, 16)
        check_at_least("snap_radius_px", self.snap_radius_px, 0)


@dataclass
class WideBaselineResult:
    """Outcome of :func:`densify_wide_baseline_pairs`.

    Attributes:
        features: the input features, with the new inlier keypoints appended to the images that
            gained pairs (existing indices unchanged, so every earlier match stays valid).
        two_view_geometries: the verified pairs, the new ones added.
        report: ``weak_images``, ``pairs_retried``, ``pairs_added``, ``keypoints_added``,
            ``time_s`` and the added pairs with their inlier counts.
    """

    features: dict[int, Features]
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry]
    report: dict[str, Any] = field(default_factory=dict)


def weak_images(
    image_ids: list[int], verified_pairs: list[tuple[int, int]], min_verified_neighbors: int
) -> list[int]:
    """Images with fewer than ``min_verified_neighbors`` verified neighbours or outside the largest
    connected component of the view graph (sorted)."""
    index = {image_id: k for k, image_id in enumerate(image_ids)}
    degree = dict.fromkeys(image_ids, 0)
    rows, cols = [], []
    for i, j in verified_pairs:
        degree[i] += 1
        degree[j] += 1
        rows.append(index[i])
        cols.append(index[j])
    n = len(image_ids)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    largest = np.bincount(labels).argmax() if n else 0
    return [i for i in image_ids if degree[i] < min_verified_neighbors or labels[index[i]] != largest]


def affine_features(image_rgb: np.ndarray, options: WideBaselineOptions) -> Features:
    """Affine-simulated SIFT features of one image (keypoints in ``image_rgb`` pixels).

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        options: the tilts, rotations and detector settings.

    Returns:
        Features (float32 SIFT descriptors, L2 as OpenCV computes them; colours sampled at the
        keypoints).
    """
    height, width = image_rgb.shape[:2]
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, options.max_image_size_px / max(width, height))
    if scale < 1.0:
        gray = cv2.resize(
            gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    sx, sy = gray.shape[1] / width, gray.shape[0] / height
    sift = cv2.SIFT_create(contrastThreshold=options.sift_contrast_threshold)
    detector = cv2.AffineFeature.create(
        sift, maxTilt=options.max_tilt_index, minTilt=0, rotateStepBase=options.rotate_step_base_deg
    )
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) == 0:
        return Features(
            keypoints_px=np.zeros((0, 2)),
            descriptors=np.zeros((0, 128), np.float32),
            scales=np.zeros(0),
            orientations=np.zeros(0),
            colors=np.zeros((0, 3), np.uint8),
        )
    if len(keypoints) > options.max_num_features:
        responses = np.array([kp.response for kp in keypoints])
        keep = np.sort(np.argsort(-responses, kind="stable")[: options.max_num_features])
        keypoints, descriptors = [keypoints[k] for k in keep], descriptors[keep]
    small = cv2.KeyPoint_convert(keypoints).astype(np.float64).reshape(-1, 2)
    pts = np.empty_like(small)
    pts[:, 0] = (small[:, 0] + 0.5) / sx - 0.5
    pts[:, 1] = (small[:, 1] + 0.5) / sy - 0.5
    cols = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, height - 1)
    return Features(
        keypoints_px=pts,
        descriptors=np.ascontiguousarray(descriptors, dtype=np.float32),
        scales=np.array([kp.size for kp in keypoints], np.float64) / np.sqrt(sx * sy),
        orientations=np.deg2rad(np.array([kp.angle for kp in keypoints], np.float64)),
        colors=image_rgb[rows, cols].astype(np.uint8),
    )


def _candidate_pairs(
    weak: list[int],
    putative_counts: Mapping[tuple[int, int], int],
    strong: set[tuple[int, int]],
    options: WideBaselineOptions,
) -> list[tuple[int, int]]:
    """Per weak image its best-matched partners without a strong verified pair; most matches first."""
    chosen: dict[tuple[int, int], int] = {}
    for image_id in weak:
        partners = [
            (count, pair)
            for pair, count in putative_counts.items()
            if image_id in pair and pair not in strong
        ]
        partners.sort(key=lambda cp: (-cp[0], cp[1]))
        for count, pair in partners[: options.candidates_per_image]:
            chosen[pair] = count
    ranked = sorted(chosen, key=lambda p: (-chosen[p], p))
    return ranked[: options.max_pairs]


class _GrowingFeatures:
    """Features of one image with affine keypoints appended on demand (each appended once)."""

    def __init__(self, base: Features, snap_radius_px: float):
        self.base = base
        self.tree = cKDTree(base.keypoints_px) if len(base) else None
        self.snap_radius_px = snap_radius_px
        self.appended: dict[int, int] = {}  # affine index -> feature index
        self.order: list[int] = []

    def index_of(self, affine_index: int, affine: Features) -> int:
        if affine_index in self.appended:
            return self.appended[affine_index]
        point = affine.keypoints_px[affine_index]
        if self.tree is not None and self.snap_radius_px > 0:
            distance, nearest = self.tree.query(point, distance_upper_bound=self.snap_radius_px)
            if np.isfinite(distance):
                self.appended[affine_index] = int(nearest)
                return int(nearest)
        index = len(self.base) + len(self.order)
        self.order.append(affine_index)
        self.appended[affine_index] = index
        return index

    def features(self, affine: Features) -> Features:
        if not self.order:
            return self.base
        new = np.asarray(self.order, dtype=np.int64)
        base = self.base

        def stack(a, b):
            return None if a is None or b is None else np.concatenate([a, b[new]])

        # read once: stored features (features.store) read their descriptors from disk on every access
        base_descriptors = base.descriptors
        descriptors = affine.descriptors[new]
        if base_descriptors.dtype != descriptors.dtype or base_descriptors.shape[1] != descriptors.shape[1]:
            # other descriptor kinds (ORB, AKAZE, RootSIFT width alike): keep rows aligned, zero-filled
            descriptors = np.zeros((len(new), base_descriptors.shape[1]), base_descriptors.dtype)
        return Features(
            keypoints_px=np.concatenate([base.keypoints_px, affine.keypoints_px[new]]),
            descriptors=np.concatenate([base_descriptors, descriptors]),
            scales=stack(base.scales, affine.scales),
            orientations=stack(base.orientations, affine.orientations),
            colors=stack(base.colors, affine.colors),
        )


def densify_wide_baseline_pairs(
    image_paths: Mapping[int, str | Path],
    features: Mapping[int, Features],
    putative_counts: Mapping[tuple[int, int], int],
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry],
    cameras: Mapping[int, CameraLike],
    options: WideBaselineOptions | None = None,
    *,
    two_view_options: TwoViewOptions | None = None,
    rng: np.random.Generator | int | None = None,
    progress: ProgressCallback | None = None,
) -> WideBaselineResult:
    """Retry the pairs of weakly connected images with affine-simulated features.

    Args:
        image_paths: image id -> image file (read again for the affine features of weak pairs only).
        features: image id -> its ordinary features (keypoints the verified matches index).
        putative_counts: (i, j) with i < j -> number of ordinary putative matches: the pairs that were
            matched, and how promising each is.
        two_view_geometries: the verified pairs (failed ones may be included; only ``success`` counts).
        cameras: image id -> Camera, (3, 3) K or None, as given to verification.
        options: pass options.
        two_view_options: verification of the retried pairs (the pipeline's ``[two_view]``).
        rng: seed or generator of the RANSACs.
        progress: ``progress(done, total, message)`` over the retried pairs.

    Returns:
        :class:`WideBaselineResult` (inputs not modified; on a well-connected set, the same
        features and verified pairs and zero counts).

    Raises:
        InputError: a pair of ``putative_counts`` names an image without features or path.
    """
    options = options or WideBaselineOptions()
    two_view_options = two_view_options or TwoViewOptions()
    rng = as_rng(rng)
    t_start = time.perf_counter()
    verified = {pair: g for pair, g in two_view_geometries.items() if g.success}
    out_features = dict(features)
    stats: dict[str, Any] = {
        "weak_images": [],
        "pairs_retried": 0,
        "pairs_added": 0,
        "keypoints_added": 0,
        "added": [],
        "time_s": 0.0,
    }
    if not options.enabled:
        return WideBaselineResult(out_features, verified, stats)
    for pair in putative_counts:
        if any(i not in features or i not in image_paths for i in pair):
            raise InputError(f"pair {pair} names an image without features or image path")
    image_ids = sorted(features)
    strong = sorted(pair for pair, g in verified.items() if g.num_inliers >= options.min_pair_inliers)
    weak = weak_images(image_ids, strong, options.min_verified_neighbors)
    stats["weak_images"] = weak
    candidates = _candidate_pairs(weak, putative_counts, set(strong), options) if weak else []
    if not candidates:
        stats["time_s"] = time.perf_counter() - t_start
        return WideBaselineResult(out_features, verified, stats)
    logger.info("wide baseline: %d weak images, retrying %d pairs", len(weak), len(candidates))

    affine: dict[int, Features] = {}
    growing: dict[int, _GrowingFeatures] = {}
    for done, (i, j) in enumerate(candidates):
        for image_id in (i, j):
            if image_id not in affine:
                affine[image_id] = affine_features(read_image(image_paths[image_id]), options)
                growing[image_id] = _GrowingFeatures(features[image_id], options.snap_radius_px)
        indices, _ = match_descriptors(affine[i].descriptors, affine[j].descriptors, options.matching)
        indices = _unique_pairs(indices)
        geometry = verify_pair(
            affine[i].keypoints_px,
            affine[j].keypoints_px,
            indices,
            cameras.get(i),
            cameras.get(j),
            two_view_options,
            image_ids=(i, j),
            rng=rng,
        )
        stats["pairs_retried"] += 1
        report(progress, done + 1, len(candidates), f"pair {i}-{j}")
        if not geometry.success:
            continue
        inliers = np.array(
            [
                (growing[i].index_of(a, affine[i]), growing[j].index_of(b, affine[j]))
                for a, b in geometry.inlier_matches
            ],
            dtype=np.int64,
        ).reshape(-1, 2)
        inliers = _unique_pairs(inliers)
        previous = verified.get((i, j))
        if len(inliers) < two_view_options.min_num_inliers or (
            previous is not None and previous.num_inliers >= len(inliers)
        ):
            continue
        verified[(i, j)] = _with_inliers(geometry, inliers)
        stats["pairs_added"] += 1
        stats["added"].append({"pair": [i, j], "num_inliers": len(inliers), "config": geometry.config})
    for image_id, grown in growing.items():
        stats["keypoints_added"] += len(grown.order)
        out_features[image_id] = grown.features(affine[image_id])
    stats["time_s"] = time.perf_counter() - t_start
    logger.info(
        "wide baseline: %d of %d retried pairs verified (%.1f s)",
        stats["pairs_added"],
        stats["pairs_retried"],
        stats["time_s"],
    )
    return WideBaselineResult(out_features, verified, stats)


def _unique_pairs(indices: np.ndarray) -> np.ndarray:
    """Matches with each keypoint used at most once on either side (first occurrence kept)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 2)
    if len(indices) == 0:
        return indices
    _, first = np.unique(indices[:, 0], return_index=True)
    indices = indices[np.sort(first)]
    _, first = np.unique(indices[:, 1], return_index=True)
    return indices[np.sort(first)]


def _with_inliers(geometry: TwoViewGeometry, inliers: np.ndarray) -> TwoViewGeometry:
    return replace(geometry, inlier_matches=inliers, reason="wide baseline (affine features)")


# --- joining separate models ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ModelBridgeOptions:
    """Options of :func:`bridge_and_merge_models`.

    Attributes:
        enabled: try to join the mapper's separate models at all.
        min_correspondences: an image of one model is posed in another (PnP) only with at least this
            many 2D-3D correspondences through verified matches.
        pnp_ransac: the PnP RANSAC (``max_error_px``: reprojection threshold; ``min_num_inliers``: the
            fewest inliers that pose the image).
        merge: the Sim(3) merge (:func:`geomvision.sfm.merge.merge_reconstructions`) of a model with the
            other model, once they share the images posed in both.
    """

    enabled: bool = True
    min_correspondences: int = 15
    pnp_ransac: RansacOptions = field(
        default_factory=lambda: RansacOptions(
            max_error_px=4.0, min_num_inliers=12, max_iterations=5000, confidence=0.9999
        )
    )
    merge: MergeOptions = field(default_factory=MergeOptions)

    def __post_init__(self) -> None:
        check_at_least("min_correspondences", self.min_correspondences, 4)


def _bridge_correspondences(
    target: Reconstruction, image_id: int, verified: Mapping[tuple[int, int], TwoViewGeometry]
) -> tuple[np.ndarray, np.ndarray]:
    """(keypoint indices of ``image_id``, point ids of ``target``) linked by verified inlier matches."""
    keypoints, points = [], []
    for (i, j), geometry in verified.items():
        if image_id not in (i, j):
            continue
        other, col_self, col_other = (j, 0, 1) if i == image_id else (i, 1, 0)
        view = target.views.get(other)
        if view is None or not view.registered:
            continue
        ids = view.point3D_ids[geometry.inlier_matches[:, col_other]]
        seen = ids >= 0
        keypoints.append(geometry.inlier_matches[seen, col_self])
        points.append(ids[seen])
    if not keypoints:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keypoints, points = np.concatenate(keypoints), np.concatenate(points)
    _, first = np.unique(keypoints, return_index=True)  # one 3D point per keypoint (first found)
    return keypoints[first], points[first]


def _pose_into(
    target: Reconstruction,
    source: Reconstruction,
    image_id: int,
    verified: Mapping[tuple[int, int], TwoViewGeometry],
    options: ModelBridgeOptions,
    rng: np.random.Generator,
) -> int:
    """Pose ``source``'s image ``image_id`` in ``target`` by PnP and add it with its inlier observations
    (in place); returns the number of inliers (0: not posed, ``target`` unchanged)."""
    if image_id in target.views and target.views[image_id].registered:
        return 0  # already posed there
    keypoints, point_ids = _bridge_correspondences(target, image_id, verified)
    if len(keypoints) < options.min_correspondences:
        return 0
    view = source.views[image_id]
    camera = target.cameras.get(view.camera_id, source.cameras[view.camera_id])
    K = camera.K
    pixels = camera.ideal_pixels(view.keypoints_px[keypoints])
    xyz = np.array([target.points3D[int(p)].xyz for p in point_ids])
    try:
        pose = estimate_absolute_pose(xyz, pixels, K, options.pnp_ransac, rng=rng)
    except InputError:  # degenerate correspondences: the image stays out of this model
        return 0
    if not pose.success:
        return 0
    if view.camera_id not in target.cameras:
        target.add_camera(copy.deepcopy(camera))
    target.add_view(View(image_id, view.name, view.camera_id, pose.cam_from_world, view.keypoints_px.copy()))
    inliers = np.flatnonzero(pose.inlier_mask)
    for k in inliers:
        target.add_observation(int(point_ids[k]), image_id, int(keypoints[k]))
    return len(inliers)


def bridge_and_merge_models(
    models: list[Reconstruction],
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry],
    options: ModelBridgeOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[list[Reconstruction], dict[str, Any]]:
    """Join separate models of one mapper run (disjoint image sets) through their verified pairs.

    Models of one run share no image, so :func:`geomvision.sfm.merge.merge_reconstructions` has nothing
    to align them by. Verified matches between an image ``b`` of model B and registered images of
    model A link ``b``'s keypoints to A's 3D points; ``b`` is posed in a copy of A by PnP (with those
    points as its observations; when no image of B can be, A's images are posed in a copy of B). Once A's copy and B share such images and, through them, 3D points,
    the Sim(3) merge aligns them (RANSAC over shared points, reprojection in both models), joins the
    tracks and bundle-adjusts. Models are taken largest first; a model that cannot be joined stays
    separate (its reason reported).

    Args:
        models: the mapper's models, largest first (not modified).
        two_view_geometries: the verified pairs (inlier matches index the models' keypoints).
        options: bridge options.
        rng: seed or generator (PnP and alignment RANSACs).

    Returns:
        (models after joining, largest first; report with ``num_models_before`` / ``after``,
        ``attempts`` per joined-or-not model and ``time_s``).
    """
    options = options or ModelBridgeOptions()
    rng = as_rng(rng)
    t_start = time.perf_counter()
    verified = {pair: g for pair, g in two_view_geometries.items() if g.success}
    stats: dict[str, Any] = {"num_models_before": len(models), "attempts": []}
    remaining = sorted(models, key=lambda r: -r.num_registered)
    result: list[Reconstruction] = []
    while remaining:
        base = remaining.pop(0)
        joined = True
        while joined and remaining:
            joined = False
            for index, other in enumerate(remaining):
                attempt = _join(base, other, verified, options, rng)
                stats["attempts"].append(attempt.pop("report"))
                if attempt["merged"] is not None:
                    base = attempt["merged"]
                    remaining.pop(index)
                    joined = True
                    break
        result.append(base)
    result.sort(key=lambda r: -r.num_registered)
    stats["num_models_after"] = len(result)
    stats["time_s"] = time.perf_counter() - t_start
    return result, stats


def _join(
    base: Reconstruction,
    other: Reconstruction,
    verified: Mapping[tuple[int, int], TwoViewGeometry],
    options: ModelBridgeOptions,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Pose ``other``'s images in a copy of ``base`` (else ``base``'s in a copy of ``other``) and merge
    the two; ``merged`` None on failure."""
    report_row: dict[str, Any] = {"models": [base.num_registered, other.num_registered]}
    for target, source, direction in (
        (base, other, "smaller into larger"),
        (other, base, "larger into smaller"),
    ):
        bridged = copy.deepcopy(target)
        posed = {}
        for image_id in source.registered_image_ids:
            num_inliers = _pose_into(bridged, source, image_id, verified, options, rng)
            if num_inliers:
                posed[image_id] = num_inliers
        if posed:
            report_row.update(bridged_images=posed, direction=direction)
            break
    else:
        report_row["reason"] = "no image of either model could be posed in the other"
        return {"merged": None, "report": report_row}
    models = [bridged, other] if target is base else [base, bridged]
    merge = merge_reconstructions(models, options.merge, rng=rng)
    report_row["merge"] = {k: v for k, v in merge.report.items() if k != "groups"}
    if len(merge.reconstructions) != 1:
        report_row["reason"] = "the Sim(3) alignment failed"
        return {"merged": None, "report": report_row}
    merged = merge.reconstructions[0]
    report_row["merged_registered"] = merged.num_registered
    if merged.num_registered <= base.num_registered:
        report_row["reason"] = "the merged model is no larger"
        return {"merged": None, "report": report_row}
    return {"merged": merged, "report": report_row}
