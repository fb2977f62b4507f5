"""Merge overlapping reconstructions by Sim(3): align, join tracks, drop outliers, bundle-adjust.

Models of overlapping image sets (the clusters of :mod:`geomvision.sfm.partition`, or several models of
one mapper run) share images and, through them, 3D points: a point of model A and a point of model B are
the same scene point when both are observed by the same keypoint ``(image_id, keypoint_index)``. The
models differ by a similarity (the gauge freedom of structure from motion, H&Z 10.2).

Alignment (:func:`align_reconstructions`), ``dst_from_src``:

1. correspondences: pairs (point of src, point of dst) sharing at least one observation; a point linked
   to several points of the other model keeps its most frequent partner;
2. RANSAC (:func:`geomvision.robust.ransac.ransac`) on minimal samples of three correspondences solved by
   Umeyama (1991), each hypothesis scored by *reprojection in both models*: a src point mapped into dst
   must reproject within ``max_error_px`` into every dst image observing its partner, and the dst point
   mapped back into src likewise (so the threshold is in pixels, whatever the models' scales);
3. robust refinement on the inliers: Huber-loss least squares over the 7 parameters (rotation vector,
   translation, log scale) of all reprojection residuals in both models plus, for every image posed in
   both, its rotation and centre disagreement converted to pixels (``f * angle`` and ``f * offset /
   depth``), i.e. iteratively reweighted least squares with Huber weights; inliers are then recounted;
4. the check: enough inliers, a large enough inlier ratio, and the shared cameras' poses agreeing.

Merging (:func:`merge_reconstructions`) grows groups along a maximum spanning tree of the model graph
(edge weight = shared 3D points): from the largest model, the strongest edge to a model not yet merged
is aligned; a failed alignment is recorded and the next edge tried (Prim's algorithm with failures).
Models that cannot be attached start their own group and come out as separate models with the reason.
Each group's models are mapped into the root's frame; tracks are joined (union of observations of the
same ``(image_id, keypoint_index)``, connected through any model), observations reprojecting beyond
``filter_max_reproj_error_px`` are dropped, images left with too few points are taken out, and a final
global bundle adjustment (:func:`geomvision.sfm.bundle_adjustment.bundle_adjust`) runs.

An image is left with too few points when the pose its owning model gave it disagrees with the joined
points (e.g. a locally misregistered stretch of one cluster, corrected by the other clusters' points).
Such an image is registered again by PnP (:func:`geomvision.robust.absolute_pose.estimate_absolute_pose`)
on the joined points its keypoints observed in any input model, the way an incremental mapper registers
a new image; its inlier observations rejoin their tracks before the final bundle adjustment. Images that
still fail are dropped (reported with both reasons).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geomvision.errors import InputError, check_at_least, check_positive, check_range
from geomvision.geometry.rigid import Sim3d, rotation_angle_deg, umeyama_alignment
from geomvision.geometry.sim3 import (
    ProjectionSet,
    pose_consistency_residuals,
    sim3_from_matrix,
    sim3_from_vector,
    sim3_to_vector,
)
from geomvision.geometry.triangulation import triangulate_dlt, triangulation_angle_deg
from geomvision.progress import ProgressCallback
from geomvision.progress import report as report_progress
from geomvision.robust.absolute_pose import estimate_absolute_pose
from geomvision.robust.ransac import BailoutOptions, RansacOptions, ransac
from geomvision.runtime.allocator import release_free_memory
from geomvision.runtime.collector import cyclic_gc_paused
from geomvision.runtime.rng import as_rng
from geomvision.scene import ImageInfo, Reconstruction, TwoViewGeometry, View
from geomvision.sfm.bundle_adjustment import (
    BundleAdjustmentOptions,
    bundle_adjust,
    points_covering_images,
    refine_points,
)
from geomvision.sfm.registration import RegistrationOptions

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentOptions",
    "AlignmentRefinementOptions",
    "AlignmentResult",
    "MergeOptions",
    "MergeResult",
    "align_reconstructions",
    "merge_reconstructions",
    "shared_point_pairs",
]


def _default_alignment_ransac() -> RansacOptions:
    return RansacOptions(
        max_error_px=4.0,
        min_num_inliers=10,
        min_iterations=16,
        max_iterations=2000,
        bailout=BailoutOptions(subset=0),
    )


@dataclass(frozen=True, kw_only=True)
class AlignmentRefinementOptions:
    """Options of the refinement of a RANSAC similarity (Huber-robust least squares, 7 parameters).

    Attributes:
        max_points: inliers used at the most (a seeded random subset of them).
        huber_scale_px: Huber loss scale (pixels).
        max_iterations: function evaluations of the least squares.
    """

    max_points: int = 300
    huber_scale_px: float = 1.0
    max_iterations: int = 200

    def __post_init__(self) -> None:
        if self.max_points < 3:
            raise InputError(f"max_points must be >= 3, got {self.max_points}")
        check_positive("huber_scale_px", self.huber_scale_px)
        check_at_least("max_iterations", self.max_iterations, 1)


@dataclass(frozen=True, kw_only=True)
class AlignmentOptions:
    """Options of :func:`align_reconstructions`.

    Attributes:
        ransac: RANSAC over shared-point triplets; ``max_error_px`` is the reprojection threshold a
            point must meet in both models, ``min_num_inliers`` the fewest inlier points accepted.
        refinement: the refinement of the RANSAC similarity on its inliers (twice: refine, recount on
            all shared points, refine again).
        ransac_max_points: RANSAC samples and scores at most this many shared points (a seeded random
            subset).
        min_inlier_ratio: fewest inliers as a share of the shared points (two models of the same scene
            agree on most of them; a low ratio means a wrong match between clusters).
        max_camera_error_px: a shared image whose two poses disagree by more than this (pixel-equivalent,
            see :func:`geomvision.geometry.sim3.pose_consistency_residuals`) is inconsistent.
        max_inconsistent_camera_ratio: more inconsistent shared images than this share fails the check.
    """

    ransac: RansacOptions = field(default_factory=_default_alignment_ransac)
    refinement: AlignmentRefinementOptions = field(default_factory=AlignmentRefinementOptions)
    ransac_max_points: int = 300
    min_inlier_ratio: float = 0.3
    max_camera_error_px: float = 20.0
    max_inconsistent_camera_ratio: float = 0.5

    def __post_init__(self) -> None:
        check_range("min_inlier_ratio", self.min_inlier_ratio, 0, 1)
        check_positive("max_camera_error_px", self.max_camera_error_px)
        if self.ransac_max_points < 3:
            raise InputError(f"ransac_max_points must be >= 3, got {self.ransac_max_points}")
        check_range("max_inconsistent_camera_ratio", self.max_inconsistent_camera_ratio, 0, 1)


def _default_merge_ba() -> BundleAdjustmentOptions:
    return BundleAdjustmentOptions(loss="soft_l1", max_iterations=50)


@dataclass(frozen=True, kw_only=True)
class MergeOptions:
    """Options of :func:`merge_reconstructions`.

    Attributes:
        alignment: how two models are aligned.
        filter_max_reproj_error_px: merged observations reprojecting farther are dropped (after the final
            BA; also before it when there is none).
        max_reproj_error_before_ba_px: before the final BA, only observations reprojecting farther than
            this are dropped. The models are aligned along a spanning tree, so an overlap it leaves out
            (where a loop closes: the 1000-image street's first and last clusters) carries the drift
            of the models around the loop: its images reproject the joined points several pixels off.
            Filtered at ``filter_max_reproj_error_px`` there, six images lost every point and were dropped
            (994/1000, AUC@2 0.923); kept for the final BA, which closes the loop: 1000/1000, AUC@2 0.945.
        min_image_points: images left observing fewer merged points are taken out of the model (then
            registered again by PnP when ``reregister`` is set, else dropped).
        reregister: register the images taken out again by PnP on the joined points.
        registration: that PnP: its RANSAC, fewest inliers and inlier ratio (an inlier must also
            reproject within ``filter_max_reproj_error_px``, and at least ``min_image_points`` must).
        min_tri_angle_deg: with the verified pairs given, an image registered again gets new points
            triangulated from its inlier matches with registered images where the rays meet at least at
            this angle (and reproject within ``filter_max_reproj_error_px`` in both images).
        final_ba: run the final global bundle adjustment on each merged group.
        bundle_adjustment: options of that bundle adjustment.
        final_ba_max_observations: a merged model with more observations gets a final BA on a subset of
            its points that fits this many observations and gives every image its best-spread points
            (:func:`~geomvision.sfm.bundle_adjustment.points_covering_images`); the other points are then
            refined with the cameras held, in problems of bounded size
            (:func:`~geomvision.sfm.bundle_adjustment.refine_points`). The clusters' models are adjusted
            already, so the final BA mainly spreads the alignment and loop-closure residuals over the
            cameras, and those are smooth over the scene: a subset with every image's best-spread points pins
            them almost as well as every point, at a fraction of the cost per iteration (the BA's memory, ~0.8
            KB per observation, shrinks with it). Synthetic street, default partition (twelfth session):
            1000 images (1.5M observations), 500k instead of every point after a 100k pre-pass: merge 28-29
            -> 19 s on 2 workers, 33 -> 23 s on one, AUC@2 0.9522 -> 0.9468 (the whole-scene mapper:
            0.949); 2000 images (3.1M observations; 2M before): merge 55.5 -> 38.3 s, AUC@2 0.9226 ->
            0.9206 (whole scene: 0.869). With 800k at 1000 images: AUC@2 0.9509, merge 23.6 s instead of
            20.4 s in-process. 0: every point, whatever the size.
        pre_ba_observations_per_image: before the final BA, a BA on the points that cover every image best
            within ``max(this x images, pre_ba_min_observations)`` observations (the other points then
            follow the cameras by :func:`~geomvision.sfm.bundle_adjustment.refine_points`), run only when
            the model has at least twice that many observations: it settles the slow modes (bending a long
            street) cheaply before a final BA on every point. 0 (the default): no such pass; the final BA
            on a subset (``final_ba_max_observations``) does that job itself (1000 images, in-process: a
            100-per-image pre-pass before the 500k final BA took the merge from 20.4 to 24.8 s for AUC@2
            0.9468 -> 0.9469).
        pre_ba_min_observations: the smallest budget of that pass.
    """

    alignment: AlignmentOptions = field(default_factory=AlignmentOptions)
    filter_max_reproj_error_px: float = 4.0
    max_reproj_error_before_ba_px: float = 16.0
    min_image_points: int = 10
    reregister: bool = True
    registration: RegistrationOptions = field(default_factory=RegistrationOptions)
    min_tri_angle_deg: float = 1.5
    final_ba: bool = True
    bundle_adjustment: BundleAdjustmentOptions = field(default_factory=_default_merge_ba)
    final_ba_max_observations: int = 500_000
    pre_ba_observations_per_image: int = 0
    pre_ba_min_observations: int = 100_000

    def __post_init__(self) -> None:
        check_positive("filter_max_reproj_error_px", self.filter_max_reproj_error_px)
        check_at_least("final_ba_max_observations", self.final_ba_max_observations, 0)
        check_at_least("pre_ba_observations_per_image", self.pre_ba_observations_per_image, 0)
        check_at_least("pre_ba_min_observations", self.pre_ba_min_observations, 1)
        if not self.max_reproj_error_before_ba_px >= self.filter_max_reproj_error_px:
            raise InputError(
                f"max_reproj_error_before_ba_px must be >= filter_max_reproj_error_px "
                f"({self.filter_max_reproj_error_px}), got {self.max_reproj_error_before_ba_px}"
            )
        check_at_least("min_image_points", self.min_image_points, 0)
        check_positive("min_tri_angle_deg", self.min_tri_angle_deg)


# --- alignment ----------------------------------------------------------------------------------------
@dataclass
class AlignmentResult:
    """Outcome of :func:`align_reconstructions`.

    Attributes:
        success: a similarity passed the checks.
        reason: why not (empty on success).
        dst_from_src: the similarity (also set on a failed check, for diagnostics), else None.
        num_shared_images: images posed in both models.
        num_shared_points: point correspondences (shared observations).
        num_inliers: correspondences reprojecting within the threshold in both models.
        stats: residuals (px), camera disagreements, RANSAC iterations, time (JSON-ready).
    """

    success: bool
    reason: str
    dst_from_src: Sim3d | None = None
    num_shared_images: int = 0
    num_shared_points: int = 0
    num_inliers: int = 0
    inconsistent_image_ids: list[int] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def shared_point_pairs(src: Reconstruction, dst: Reconstruction) -> np.ndarray:
    """(K, 2) point-id pairs (src, dst) observed by the same keypoint of the same image, one partner each.

    A point linked to several points of the other model keeps the partner it shares most keypoints with
    (ties: smallest id).
    """
    pairs = []
    for image_id in sorted(set(src.views) & set(dst.views)):
        ids_s, ids_d = src.views[image_id].point3D_ids, dst.views[image_id].point3D_ids
        if len(ids_s) != len(ids_d):
            raise InputError(
                f"image {image_id} has {len(ids_s)} keypoints in one model and {len(ids_d)} in the other"
            )
        both = (ids_s >= 0) & (ids_d >= 0)
        pairs.append(np.stack([ids_s[both], ids_d[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(pairs).astype(np.int64)
    if not len(pairs):
        return pairs
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    # Most frequent partner per src point, then per dst point (lexsort: last key is primary).
    for col in (0, 1):
        order = np.lexsort((unique[:, 1 - col], -counts, unique[:, col]))
        unique, counts = unique[order], counts[order]
        first = np.r_[True, unique[1:, col] != unique[:-1, col]]
        unique, counts = unique[first], counts[first]
    return unique[np.lexsort((unique[:, 1], unique[:, 0]))]


def _projection_set(rec: Reconstruction, point_ids: np.ndarray) -> ProjectionSet:
    """Observations of ``point_ids`` (point k = ``point_ids[k]``) in ``rec``'s registered images."""
    point_ids = np.asarray(point_ids, dtype=np.int64)
    order = np.argsort(point_ids, kind="stable")
    sorted_ids = point_ids[order]
    point_index, image_index, pixels = [], [], []
    rotations, translations, models, params = [], [], [], []
    for image_id in rec.registered_image_ids:
        view = rec.views[image_id]
        keypoints = np.flatnonzero(view.point3D_ids >= 0)
        ids = view.point3D_ids[keypoints]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        found = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(len(ids), dtype=bool)
        if not found.any():
            continue
        camera = rec.cameras[view.camera_id]
        point_index.append(order[pos[found]])
        image_index.append(np.full(int(found.sum()), len(rotations), dtype=np.int64))
        pixels.append(view.keypoints_px[keypoints[found]])
        rotations.append(view.cam_from_world.rotation)
        translations.append(view.cam_from_world.translation)
        models.append(camera.model)
        params.append(camera.params)
    if not rotations:
        empty = np.zeros(0, dtype=np.int64)
        return ProjectionSet(
            empty, empty, np.zeros((0, 3, 3)), np.zeros((0, 3)), [], [], np.zeros((0, 2)), len(point_ids)
        )
    return ProjectionSet(
        np.concatenate(point_index),
        np.concatenate(image_index),
        np.array(rotations),
        np.array(translations),
        models,
        params,
        np.concatenate(pixels),
        len(point_ids),
    )


class _SimilarityEstimator:
    """RANSAC estimator: Umeyama on point triplets, residual = worst reprojection in both models."""

    sample_size = 3

    def __init__(self, xyz_src, xyz_dst, in_src: ProjectionSet, in_dst: ProjectionSet):
        self.xyz_src, self.xyz_dst = xyz_src, xyz_dst
        self.in_src, self.in_dst = in_src, in_dst

    def _umeyama(self, idx: np.ndarray) -> list[np.ndarray]:
        try:
            return [umeyama_alignment(self.xyz_src[idx], self.xyz_dst[idx]).matrix()]
        except InputError:  # collinear or coincident sample: no hypothesis
            return []

    def fit(self, sample_idx: np.ndarray) -> list[np.ndarray]:
        return self._umeyama(np.asarray(sample_idx))

    def refit(self, inlier_idx: np.ndarray) -> list[np.ndarray]:
        return self._umeyama(np.asarray(inlier_idx))

    def residuals_sq(self, model: np.ndarray) -> np.ndarray:
        try:
            dst_from_src = sim3_from_matrix(model)
        except InputError:
            return np.full(len(self.xyz_src), np.inf)
        in_dst = self.in_dst.max_error_sq_per_point(dst_from_src.apply(self.xyz_src))
        in_src = self.in_src.max_error_sq_per_point(dst_from_src.inverse().apply(self.xyz_dst))
        return np.maximum(in_dst, in_src)


@dataclass
class _SharedCameras:
    image_ids: list[int]
    rotations_src: np.ndarray
    centers_src: np.ndarray
    rotations_dst: np.ndarray
    centers_dst: np.ndarray
    depths_dst: np.ndarray
    focals_px: np.ndarray
    radii_px: np.ndarray

    def residuals(self, dst_from_src: Sim3d) -> np.ndarray:
        if not self.image_ids:
            return np.zeros((0, 6))
        return pose_consistency_residuals(
            dst_from_src,
            self.rotations_src,
            self.centers_src,
            self.rotations_dst,
            self.centers_dst,
            self.depths_dst,
            self.focals_px,
            self.radii_px,
        )


def _shared_cameras(src: Reconstruction, dst: Reconstruction) -> _SharedCameras:
    ids = sorted(set(src.registered_image_ids) & set(dst.registered_image_ids))
    depths, focals, radii = [], [], []
    fallback = _median_depth(dst, dst.registered_image_ids)
    for i in ids:
        depth = _median_depth(dst, [i])
        depths.append(depth if np.isfinite(depth) and depth > 0 else fallback)
        camera = dst.cameras[dst.views[i].camera_id]
        focals.append(float(np.mean(camera.focal_xy)))
        # Mean distance of points spread uniformly over the image from its centre: ~0.38 x the diagonal.
        radii.append(0.38 * float(np.hypot(camera.width, camera.height)))
    return _SharedCameras(
        ids,
        np.array([src.views[i].cam_from_world.rotation for i in ids]).reshape(-1, 3, 3),
        np.array([src.views[i].cam_from_world.center for i in ids]).reshape(-1, 3),
        np.array([dst.views[i].cam_from_world.rotation for i in ids]).reshape(-1, 3, 3),
        np.array([dst.views[i].cam_from_world.center for i in ids]).reshape(-1, 3),
        np.asarray(depths, dtype=np.float64),
        np.asarray(focals, dtype=np.float64),
        np.asarray(radii, dtype=np.float64),
    )


def _median_depth(rec: Reconstruction, image_ids: list[int]) -> float:
    depths = []
    for i in image_ids:
        view = rec.views[i]
        pids = view.point3D_ids[view.point3D_ids >= 0]
        if len(pids):
            xyz = np.array([rec.points3D[int(p)].xyz for p in pids])
            depths.append(view.cam_from_world.apply(xyz)[:, 2])
    if not depths:
        return 1.0
    return float(np.median(np.concatenate(depths)))


def _refine(
    dst_from_src: Sim3d,
    xyz_src: np.ndarray,
    xyz_dst: np.ndarray,
    in_src: ProjectionSet,
    in_dst: ProjectionSet,
    cameras: _SharedCameras,
    options: AlignmentRefinementOptions,
) -> Sim3d:
    """Huber-robust least squares over the 7 similarity parameters (reprojection in both models + cameras)."""

    def residuals(v: np.ndarray) -> np.ndarray:
        sim = sim3_from_vector(v)
        return np.concatenate(
            [
                in_dst.residuals_px(sim.apply(xyz_src)).ravel(),
                in_src.residuals_px(sim.inverse().apply(xyz_dst)).ravel(),
                cameras.residuals(sim).ravel(),
            ]
        )

    x0 = sim3_to_vector(dst_from_src)
    solution = least_squares(
        residuals,
        x0,
        loss="huber",
        f_scale=options.huber_scale_px,
        max_nfev=options.max_iterations,
        x_scale="jac",
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
    )
    return sim3_from_vector(solution.x)


def align_reconstructions(
    src: Reconstruction,
    dst: Reconstruction,
    options: AlignmentOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
) -> AlignmentResult:
    """Estimate the similarity ``dst_from_src`` that maps model ``src`` onto model ``dst``.

    Args:
        src, dst: reconstructions sharing images (same image ids and keypoints).
        options: alignment options.
        rng: seed or generator of the RANSAC sampling.

    Returns:
        :class:`AlignmentResult`; ``success=False`` with a reason when the models share too little or
        disagree (never raises for that).
    """
    options = options or AlignmentOptions()
    t0 = time.perf_counter()
    pairs = shared_point_pairs(src, dst)
    cameras = _shared_cameras(src, dst)
    result = AlignmentResult(
        False, "", num_shared_images=len(cameras.image_ids), num_shared_points=len(pairs)
    )
    if len(pairs) < max(options.ransac.min_num_inliers, 3):
        result.reason = (
            f"{len(pairs)} shared 3D points < {max(options.ransac.min_num_inliers, 3)} "
            f"({len(cameras.image_ids)} shared images)"
        )
        return result
    gen = as_rng(rng)
    xyz_src = np.array([src.points3D[int(p)].xyz for p in pairs[:, 0]])
    xyz_dst = np.array([dst.points3D[int(p)].xyz for p in pairs[:, 1]])
    full = _SimilarityEstimator(
        xyz_src, xyz_dst, _projection_set(src, pairs[:, 0]), _projection_set(dst, pairs[:, 1])
    )
    subset = np.arange(len(pairs))
    if len(pairs) > options.ransac_max_points:
        subset = np.sort(gen.choice(len(pairs), options.ransac_max_points, replace=False))
    estimator = (
        full if len(subset) == len(pairs) else _subset_estimator(src, dst, pairs, xyz_src, xyz_dst, subset)
    )
    found = ransac(estimator, len(subset), options.ransac, rng=gen)
    result.stats["ransac_iterations"] = found.num_iterations
    if found.model is None:
        result.reason = f"RANSAC found no similarity: {found.reason}"
        return result
    sim = sim3_from_matrix(found.model)
    threshold_sq = options.ransac.max_error_px**2
    for _ in range(2):  # refine on the inliers, recount on all shared points, refine once more
        inliers = np.flatnonzero(full.residuals_sq(sim.matrix()) <= threshold_sq)
        if len(inliers) < 3:
            break
        if len(inliers) > options.refinement.max_points:
            inliers = np.sort(gen.choice(inliers, options.refinement.max_points, replace=False))
        sim = _refine(
            sim,
            xyz_src[inliers],
            xyz_dst[inliers],
            _projection_set(src, pairs[inliers, 0]),
            _projection_set(dst, pairs[inliers, 1]),
            cameras,
            options.refinement,
        )
    result.dst_from_src = sim
    all_inliers = full.residuals_sq(sim.matrix()) <= threshold_sq
    result.num_inliers = int(all_inliers.sum())
    err_dst = np.linalg.norm(full.in_dst.residuals_px(sim.apply(xyz_src)), axis=1)[
        all_inliers[full.in_dst.point_index]
    ]
    err_src = np.linalg.norm(full.in_src.residuals_px(sim.inverse().apply(xyz_dst)), axis=1)[
        all_inliers[full.in_src.point_index]
    ]
    camera_res = cameras.residuals(sim)
    camera_err_px = np.linalg.norm(camera_res, axis=1)
    inconsistent = [
        i for i, e in zip(cameras.image_ids, camera_err_px, strict=True) if e > options.max_camera_error_px
    ]
    result.inconsistent_image_ids = inconsistent
    rot_err = [
        float(rotation_angle_deg(cameras.rotations_dst[k], cameras.rotations_src[k] @ sim.rotation.T))
        for k in range(len(cameras.image_ids))
    ]
    result.stats.update(
        {
            "scale": sim.scale,
            "inlier_ratio": round(result.num_inliers / len(pairs), 4),
            "reprojection_error_dst_px": _summary(err_dst),
            "reprojection_error_src_px": _summary(err_src),
            "camera_rotation_error_deg": _summary(np.asarray(rot_err)),
            "camera_error_px": _summary(camera_err_px),
            "num_inconsistent_images": len(inconsistent),
            "time_s": round(time.perf_counter() - t0, 4),
        }
    )
    ratio = result.num_inliers / len(pairs)
    if result.num_inliers < options.ransac.min_num_inliers:
        result.reason = f"{result.num_inliers} inlier points < {options.ransac.min_num_inliers}"
    elif ratio < options.min_inlier_ratio:
        result.reason = f"inlier ratio {ratio:.2f} < {options.min_inlier_ratio} of {len(pairs)} shared points"
    elif cameras.image_ids and len(inconsistent) > options.max_inconsistent_camera_ratio * len(
        cameras.image_ids
    ):
        result.reason = (
            f"{len(inconsistent)} of {len(cameras.image_ids)} shared images disagree by more than "
            f"{options.max_camera_error_px} px-equivalent"
        )
    else:
        result.success = True
    return result


def _subset_estimator(src, dst, pairs, xyz_src, xyz_dst, subset) -> _SimilarityEstimator:
    return _SimilarityEstimator(
        xyz_src[subset],
        xyz_dst[subset],
        _projection_set(src, pairs[subset, 0]),
        _projection_set(dst, pairs[subset, 1]),
    )


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"mean": float("nan"), "median": float("nan"), "max": float("nan")}
    return {
        "mean": round(float(values.mean()), 6),
        "median": round(float(np.median(values)), 6),
        "max": round(float(values.max()), 6),
    }


# --- merging ------------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """Outcome of :func:`merge_reconstructions`.

    Attributes:
        reconstructions: one model per group (merged groups and models that could not be attached),
            largest first.
        groups: indices of the input models in each output model (same order).
        root_from_model: per input model, its similarity into its group's root frame (None: dropped).
        dropped_images: images registered in some input model but left out of the output at merge, each
            ``{"image_id", "name", "reason"}``.
        report: per-edge alignments, per-group counts and residuals, the reasons models stayed apart.
    """

    reconstructions: list[Reconstruction]
    groups: list[list[int]]
    root_from_model: list[Sim3d | None]
    dropped_images: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


@cyclic_gc_paused()  # hundreds of thousands of long-lived containers (runtime.collector)
def merge_reconstructions(
    models: list[Reconstruction],
    options: MergeOptions | None = None,
    *,
    core_image_ids: list[set[int]] | None = None,
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry] | None = None,
    images: Mapping[int, ImageInfo] | None = None,
    release_models: bool = False,
    rng: np.random.Generator | int | None = None,
    progress: ProgressCallback | None = None,
) -> MergeResult:
    """Merge overlapping models into as few models as their overlaps allow.

    Args:
        models: reconstructions of overlapping image sets (same image ids and keypoints for the same
            image). They are not modified.
        options: merge options.
        core_image_ids: per model, the images it "owns" (a partition cluster's core): an image posed in
            several models takes its pose from the model owning it (else from the first model merged).
        two_view_geometries: verified pairs (i, j), i < j, of the models' images. With them, an image taken
            out at merge is registered again through its inlier matches with the merged images as well
            (their points give 2D-3D correspondences; new points are triangulated with them), not only
            through the input models' tracks.
        images: image_id -> ImageInfo: the colours of those new points (black without).
        release_models: empty the list ``models`` (in place) once every group is joined, so that the
            input models are freed before the final bundle adjustments, which need only the joined models
            (the caller must hold no other reference to them). Models that stay alone are returned.
        rng: seed or generator of the alignments' RANSAC.
        progress: ``progress(done, total, message)`` over the alignments tried.

    Returns:
        :class:`MergeResult`.

    Raises:
        InputError: no models, or ``core_image_ids`` of the wrong length.
    """
    options = options or MergeOptions()
    if not models:
        raise InputError("merge_reconstructions needs at least one model, got none")
    if core_image_ids is not None and len(core_image_ids) != len(models):
        raise InputError(f"{len(core_image_ids)} core image sets for {len(models)} models")
    rng = as_rng(rng)
    t0 = time.perf_counter()
    weights = _model_graph(models)
    order = sorted(range(len(models)), key=lambda k: (-models[k].num_registered, k))
    root_from_model: list[Sim3d | None] = [None] * len(models)
    parent: dict[int, int] = {}
    edges_report: list[dict[str, Any]] = []
    groups: list[list[int]] = []
    failures: dict[int, list[str]] = {k: [] for k in range(len(models))}
    num_tried = 0
    remaining = set(range(len(models)))
    while remaining:
        root = min(remaining, key=order.index)
        remaining.discard(root)
        root_from_model[root] = Sim3d()
        group = [root]
        tried: set[tuple[int, int]] = set()
        while True:
            frontier = [
                (w, u, v)
                for (a, b), w in weights.items()
                for u, v in ((a, b), (b, a))
                if u in group and v in remaining and (u, v) not in tried
            ]
            if not frontier:
                break
            w, u, v = max(frontier, key=lambda e: (e[0], -e[2], -e[1]))
            tried.add((u, v))
            alignment = align_reconstructions(models[v], models[u], options.alignment, rng=rng)
            num_tried += 1
            report_progress(progress, num_tried, max(num_tried, len(weights)), f"aligned {v} -> {u}")
            edges_report.append(
                {
                    "model": v,
                    "onto": u,
                    "shared_points": alignment.num_shared_points,
                    "shared_images": alignment.num_shared_images,
                    "inliers": alignment.num_inliers,
                    "success": alignment.success,
                    "reason": alignment.reason,
                    **alignment.stats,
                }
            )
            if not alignment.success:
                failures[v].append(f"onto model {u}: {alignment.reason}")
                logger.info("model %d does not align onto model %d: %s", v, u, alignment.reason)
                continue
            root_from_model[v] = root_from_model[u] @ alignment.dst_from_src
            parent[v] = u
            group.append(v)
            remaining.discard(v)
        groups.append(group)

    reconstructions, dropped, group_reports = [], [], []
    num_input_models = len(models)
    for group in groups:
        if len(group) == 1:
            rec = models[group[0]]  # returned as it is (never modified)
            group_report: dict[str, Any] = {"models": group, "merged": False}
            if failures[group[0]]:
                group_report["reason"] = "; ".join(failures[group[0]])
            elif len(models) > 1:
                group_report["reason"] = "shares no 3D point with any other model"
        else:
            rec, group_report, group_dropped = _join_group(
                [models[k] for k in group],
                [root_from_model[k] for k in group],
                [core_image_ids[k] if core_image_ids else set() for k in group],
                options,
                rng,
                two_view_geometries,
                images,
            )
            group_report["models"] = group
            group_report["merged"] = True
            group_report["tree"] = [[k, parent[k]] for k in group[1:]]
            dropped.extend(group_dropped)
        reconstructions.append(rec)
        group_reports.append(group_report)
    if release_models:  # the joined models no longer need their inputs: free them before the adjustments
        models.clear()
        release_free_memory()
    for rec, group, group_report in zip(reconstructions, groups, group_reports, strict=True):
        if len(group) > 1:
            dropped.extend(_finish_group(rec, group_report, options))
        group_report["num_registered"] = rec.num_registered
        group_report["num_points3D"] = len(rec.points3D)
    in_output = {i for rec in reconstructions for i in rec.registered_image_ids}
    dropped = [d for d in dropped if d["image_id"] not in in_output]
    ranking = sorted(range(len(groups)), key=lambda g: (-reconstructions[g].num_registered, g))
    result = MergeResult(
        [reconstructions[g] for g in ranking],
        [groups[g] for g in ranking],
        root_from_model,
        dropped,
        {
            "num_input_models": num_input_models,
            "num_output_models": len(groups),
            "alignments": edges_report,
            "groups": [group_reports[g] for g in ranking],
            "dropped_images": dropped,
            "time_s": round(time.perf_counter() - t0, 4),
        },
    )
    return result


def _model_graph(models: list[Reconstruction]) -> dict[tuple[int, int], int]:
    """(k, l) -> number of shared point pairs, for model pairs sharing at least one image."""
    weights = {}
    for k in range(len(models)):
        for l in range(k + 1, len(models)):
            if set(models[k].registered_image_ids) & set(models[l].registered_image_ids):
                n = len(shared_point_pairs(models[k], models[l]))
                if n:
                    weights[(k, l)] = n
    return weights


def _join_group(
    models: list[Reconstruction],
    transforms: list[Sim3d],
    cores: list[set[int]],
    options: MergeOptions,
    rng: np.random.Generator,
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry] | None = None,
    images: Mapping[int, ImageInfo] | None = None,
) -> tuple[Reconstruction, dict[str, Any], list[dict[str, Any]]]:
    """The part of a group's merge that needs the input models (:func:`_finish_group` does the rest): map
    them into the root frame, join their tracks, filter, re-register. Returns the joined model, its report so
    far and the dropped images."""
    t0 = time.perf_counter()
    merged = Reconstruction()
    # Cameras: the first model (the root) that has one gives its intrinsics.
    for rec in models:
        for camera_id, camera in rec.cameras.items():
            if camera_id not in merged.cameras:
                merged.add_camera(copy.deepcopy(camera))
    # Poses: from the model owning the image (its core), else the first model that posed it.
    owner: dict[int, int] = {}
    for k, rec in enumerate(models):
        for image_id in rec.registered_image_ids:
            current = owner.get(image_id)
            if current is None or (image_id in cores[k] and image_id not in cores[current]):
                owner[image_id] = k
    for image_id in sorted(owner):
        k = owner[image_id]
        view = models[k].views[image_id]
        pose = transforms[k].transform_pose(view.cam_from_world)
        merged.add_view(View(image_id, view.name, view.camera_id, pose, view.keypoints_px))
    num_points_in = sum(len(rec.points3D) for rec in models)
    _join_tracks(merged, models, transforms)
    num_points_joined = len(merged.points3D)
    before_ba = (
        options.max_reproj_error_before_ba_px if options.final_ba else options.filter_max_reproj_error_px
    )
    filtered_before = _filter_observations(merged, before_ba)
    dropped = _drop_weak_images(merged, options.min_image_points, "after joining tracks")
    reregistered: list[dict[str, Any]] = []
    t_reregister = time.perf_counter()
    if options.reregister and dropped:
        dropped, reregistered = _reregister_images(
            merged, models, dropped, options, rng, two_view_geometries, images
        )
    report = {
        "num_points_in": num_points_in,
        "num_points_joined": num_points_joined,
        "num_observations_filtered": filtered_before,
        "reregistered_images": reregistered,
        "join_s": round(t_reregister - t0, 4),
        "reregister_s": round(time.perf_counter() - t_reregister, 4),
        "time_s": round(time.perf_counter() - t0, 4),
    }
    return merged, report, dropped


def _finish_group(
    merged: Reconstruction, report: dict[str, Any], options: MergeOptions
) -> list[dict[str, Any]]:
    """The final bundle adjustment of a joined model, its filter and point errors (in place; no input model
    needed). Updates ``report``; returns the images dropped after the adjustment."""
    t0 = time.perf_counter()
    ba_report: dict[str, Any] = {}
    dropped: list[dict[str, Any]] = []
    if options.final_ba and merged.points3D:
        pre_report = None
        budget = options.final_ba_max_observations
        num_observations = sum(len(p.track) for p in merged.points3D.values())
        if options.pre_ba_observations_per_image:
            pre_budget = max(
                options.pre_ba_observations_per_image * merged.num_registered, options.pre_ba_min_observations
            )
            if num_observations >= 2 * pre_budget:
                pre_report = _adjust(merged, options.bundle_adjustment, pre_budget)
        over_budget = budget and num_observations > budget
        ba_report = _adjust(merged, options.bundle_adjustment, budget if over_budget else None)
        if pre_report is not None:
            ba_report["pre_ba"] = pre_report
        report["num_observations_filtered"] += _filter_observations(
            merged, options.filter_max_reproj_error_px
        )
        dropped = _drop_weak_images(merged, options.min_image_points, "after the final bundle adjustment")
    errors = _observation_errors(merged)
    _set_point_errors(merged, errors)
    report["final_ba"] = ba_report
    report["mean_reprojection_error_px"] = (
        float(errors["error_px"].mean()) if len(errors["error_px"]) else None
    )
    report["time_s"] = round(report["time_s"] + time.perf_counter() - t0, 4)
    return dropped


def _adjust(
    rec: Reconstruction, options: BundleAdjustmentOptions, max_observations: int | None = None
) -> dict[str, Any]:
    """BA of every point of ``rec``, or with ``max_observations`` of the points covering every image within
    that many observations (:func:`points_covering_images`), the other points then carried along with the
    moved cameras and refined with them held (:func:`refine_points`). In place; returns its report."""
    subset = None if max_observations is None else points_covering_images(rec, max_observations)
    poses_before = {i: rec.views[i].cam_from_world for i in rec.registered_image_ids}
    ba = bundle_adjust(rec, options, point_ids=subset)
    report: dict[str, Any] = {
        "success": ba.success,
        "reason": ba.reason,
        "iterations": ba.iterations,
        "initial_mean_reprojection_error_px": ba.initial_mean_reprojection_error_px,
        "mean_reprojection_error_px": ba.mean_reprojection_error_px,
        "num_points_adjusted": len(rec.points3D) if subset is None else len(subset),
        "time_s": round(ba.time_s, 4),
    }
    if subset is not None:
        t_refine = time.perf_counter()
        rest = np.setdiff1d(np.fromiter(rec.points3D, np.int64, len(rec.points3D)), subset)
        refine_points(rec, rest, options, poses_before=poses_before)
        report["num_points_refined"] = len(rest)
        report["refine_time_s"] = round(time.perf_counter() - t_refine, 4)
    return report


def _point_arrays(rec: Reconstruction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted point ids (P,), their positions (P, 3) and colours (P, 3)."""
    pids = np.array(sorted(rec.points3D), dtype=np.int64)
    xyz = np.array([rec.points3D[int(p)].xyz for p in pids]).reshape(-1, 3)
    colors = np.array([rec.points3D[int(p)].color for p in pids], dtype=np.uint8).reshape(-1, 3)
    return pids, xyz, colors


def _view_observations(rec: Reconstruction, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point row in ``pids``, image_id, keypoint) of every observation in a registered view (per view, vectorised)."""
    rows, images, keypoints = [], [], []
    for image_id in rec.registered_image_ids:
        ids = rec.views[image_id].point3D_ids
        kps = np.flatnonzero(ids >= 0)
        rows.append(np.searchsorted(pids, ids[kps]))
        images.append(np.full(len(kps), image_id, dtype=np.int64))
        keypoints.append(kps)
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(rows), np.concatenate(images), np.concatenate(keypoints)


def _join_tracks(merged: Reconstruction, models: list[Reconstruction], transforms: list[Sim3d]) -> None:
    """Add to ``merged`` one point per set of points linked through a shared (image_id, keypoint) observation.

    The merged point's observations are the union of its members' (one keypoint per image: the one most
    members agree on); its position is the members' mean weighted by track length, colour the first's.
    """
    xyz_parts, color_parts, obs_node, obs_image, obs_kp = [], [], [], [], []
    offset = 0
    for rec, transform in zip(models, transforms, strict=True):
        pids, xyz, colors = _point_arrays(rec)
        rows, images, kps = _view_observations(rec, pids)
        keep = np.isin(images, np.fromiter(merged.views, dtype=np.int64))
        xyz_parts.append(transform.apply(xyz) if len(xyz) else xyz)
        color_parts.append(colors)
        obs_node.append(rows[keep] + offset)
        obs_image.append(images[keep])
        obs_kp.append(kps[keep])
        offset += len(pids)
    num_nodes = offset
    if not num_nodes:
        return
    xyz = np.concatenate(xyz_parts)
    colors = np.concatenate(color_parts)
    obs_node, obs_image, obs_kp = np.concatenate(obs_node), np.concatenate(obs_image), np.concatenate(obs_kp)
    # Union of points sharing an observation: link consecutive nodes with the same (image, keypoint).
    order = np.lexsort((obs_node, obs_kp, obs_image))
    same = (np.diff(obs_image[order]) == 0) & (np.diff(obs_kp[order]) == 0)
    a, b = obs_node[order][:-1][same], obs_node[order][1:][same]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(num_nodes, num_nodes))
    _, label = connected_components(graph, directed=False)
    lengths = np.bincount(obs_node, minlength=num_nodes).astype(np.float64)
    num_groups = int(label.max()) + 1
    weight = np.bincount(label, lengths, minlength=num_groups)
    centre = (
        np.stack([np.bincount(label, lengths * xyz[:, d], minlength=num_groups) for d in range(3)], axis=1)
        / np.maximum(weight, 1e-300)[:, None]
    )
    first_node = np.full(num_groups, -1, dtype=np.int64)
    first_node[label[::-1]] = np.arange(num_nodes)[::-1]
    # Observations per group: unique (group, image, keypoint) with counts; one keypoint per (group, image).
    # (One int64 key per row, group-major then image then keypoint: sorting keys is several times faster
    # than np.unique(axis=0) on the rows.)
    num_images, num_kps = int(obs_image.max()) + 1, int(obs_kp.max()) + 1
    key, counts = np.unique(
        (label[obs_node] * num_images + obs_image) * num_kps + obs_kp, return_counts=True
    )  # sorted by (group, image, keypoint)
    group_image = key // num_kps
    order = np.lexsort((-counts, group_image))  # stable: equal counts keep the smaller keypoint first
    key, group_image = key[order], group_image[order]
    key = key[np.r_[True, group_image[1:] != group_image[:-1]]]
    unique = np.stack([key // num_kps // num_images, key // num_kps % num_images, key % num_kps], axis=1)
    # A keypoint claimed by two groups (conflicting joins) stays with the first group only.
    order = np.lexsort((unique[:, 0], unique[:, 2], unique[:, 1]))
    unique = unique[order]
    first = np.r_[True, (unique[1:, 1] != unique[:-1, 1]) | (unique[1:, 2] != unique[:-1, 2])]
    unique = unique[first]
    unique = unique[np.lexsort((unique[:, 2], unique[:, 1], unique[:, 0]))]
    starts = np.flatnonzero(np.r_[True, unique[1:, 0] != unique[:-1, 0]])
    lengths = np.diff(np.r_[starts, len(unique)])
    kept = lengths >= 2
    groups = unique[starts[kept], 0]
    rows = unique[np.repeat(kept, lengths), 1:3]
    merged.add_points3D(centre[groups], rows, lengths[kept], colors[first_node[groups]])


def _observation_errors(rec: Reconstruction) -> dict[str, np.ndarray]:
    """Reprojection error of every observation in a registered view, computed per view (vectorised).

    Returns:
        ``point_id``, ``image_id``, ``keypoint`` (M,) int and ``error_px`` (M,) float.
    """
    pids, xyz, _ = _point_arrays(rec)
    rows, images, kps = _view_observations(rec, pids)
    errors = np.empty(len(rows))
    bounds = np.flatnonzero(np.r_[True, np.diff(images) != 0, True])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        view = rec.views[int(images[a])]
        camera = rec.cameras[view.camera_id]
        in_cam = view.cam_from_world.apply(xyz[rows[a:b]])
        err = np.linalg.norm(camera.project(in_cam) - view.keypoints_px[kps[a:b]], axis=1)
        err[in_cam[:, 2] <= 0] = np.inf
        errors[a:b] = err
    return {
        "point_id": pids[rows] if len(rows) else rows,
        "image_id": images,
        "keypoint": kps,
        "error_px": errors,
    }


def _set_point_errors(rec: Reconstruction, errors: dict[str, np.ndarray]) -> None:
    if not len(errors["point_id"]):
        return
    uniq, inverse = np.unique(errors["point_id"], return_inverse=True)
    mean = np.bincount(inverse, errors["error_px"]) / np.bincount(inverse)
    for pid, err in zip(uniq.tolist(), mean.tolist(), strict=True):
        rec.points3D[pid].error = err


def _filter_observations(rec: Reconstruction, max_error_px: float) -> int:
    """Remove observations reprojecting beyond ``max_error_px`` (points left with < 2 go too)."""
    if not rec.points3D:
        return 0
    errors = _observation_errors(rec)
    bad = np.flatnonzero(~(errors["error_px"] <= max_error_px))
    for k in bad.tolist():
        pid = int(errors["point_id"][k])
        if pid in rec.points3D:
            rec.delete_observation(pid, int(errors["image_id"][k]), int(errors["keypoint"][k]))
    return len(bad)


def _reregister_images(
    merged: Reconstruction,
    models: list[Reconstruction],
    taken_out: list[dict[str, Any]],
    options: MergeOptions,
    rng: np.random.Generator,
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry] | None = None,
    images: Mapping[int, ImageInfo] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Register the images taken out of ``merged`` again, by PnP on its joined points (in place).

    The correspondences come from the input models' tracks and, given the verified pairs, from the image's
    inlier matches with registered images; a registered image then gets new points triangulated with them.
    Images are tried in passes, as long as a pass registers one (a stretch of taken-out images comes back
    from its ends inwards, each on the points of the ones before).

    Returns:
        (images still dropped, with the PnP failure added to their reason; images registered again, each
        ``{"image_id", "name", "num_correspondences", "num_inliers", "num_new_points",
        "num_retriangulated_points"}``).
    """
    pairs = _pairs_by_image(two_view_geometries or {}, {entry["image_id"] for entry in taken_out})
    # the registered images it matches: their own pairs, to triangulate what it needs (see below)
    neighbours = {other for entries in pairs.values() for other, _, _ in entries if other in merged.views}
    neighbour_pairs = {**_pairs_by_image(two_view_geometries or {}, neighbours), **pairs}
    pending, registered, failure = list(taken_out), [], {}
    while pending:
        still = []
        for entry in pending:
            image_id = entry["image_id"]
            # Taking images out deletes the points only they and one registered image observed: the
            # registered image's keypoints that this one matches are often left without a point (a stretch
            # taken out: none). Triangulate those keypoints first from the registered image's own verified
            # pairs with other registered images (COLMAP's retriangulation), then register by PnP.
            retriangulated = 0
            for other, _, other_keypoints in pairs.get(image_id, []):
                if other in merged.views and merged.views[other].registered:
                    retriangulated += _triangulate_image(
                        merged, other, neighbour_pairs.get(other, []), options, images, other_keypoints
                    )
            outcome = _register_by_pnp(merged, models, image_id, options, rng, pairs.get(image_id, []))
            if isinstance(outcome, str):
                failure[image_id] = outcome
                still.append(entry)
                continue
            outcome["num_new_points"] = _triangulate_image(
                merged, image_id, pairs.get(image_id, []), options, images
            )
            outcome["num_retriangulated_points"] = retriangulated
            registered.append({"image_id": image_id, "name": entry["name"], **outcome})
        if len(still) == len(pending):
            break
        pending = still
    dropped = [
        {**entry, "reason": f"{entry['reason']}; PnP on the merged points: {failure[entry['image_id']]}"}
        for entry in pending
    ]
    if registered:
        logger.info("registered %d images again by PnP on the merged points", len(registered))
    return dropped, registered


_PairMatches = list[tuple[int, np.ndarray, np.ndarray]]


def _pairs_by_image(
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry], image_ids: set[int]
) -> dict[int, _PairMatches]:
    """image_id -> [(other image, its keypoints, the other's keypoints)] of its verified pairs, most inliers
    first (for ``image_ids`` only)."""
    out: dict[int, _PairMatches] = {}
    for (i, j), geometry in two_view_geometries.items():
        matches = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
        if not geometry.success or not len(matches):
            continue
        if i in image_ids:
            out.setdefault(i, []).append((j, matches[:, 0], matches[:, 1]))
        if j in image_ids:
            out.setdefault(j, []).append((i, matches[:, 1], matches[:, 0]))
    for entries in out.values():
        entries.sort(key=lambda e: (-len(e[1]), e[0]))
    return out


def _correspondences_2d3d(
    merged: Reconstruction, models: list[Reconstruction], image_id: int, pairs: _PairMatches = ()
) -> tuple[np.ndarray, np.ndarray]:
    """(keypoint indices, merged point ids) of an image not in ``merged``, from the input models' tracks
    and the image's verified pairs.

    A keypoint of the image observed point P of an input model; P's other observations ``(j, kp)`` that
    are in ``merged`` name the merged point P was joined into. A keypoint matched (verified pair) to a
    keypoint of a registered image names that keypoint's merged point. The most named point wins; one
    keypoint per merged point (the first).
    """
    votes: dict[int, dict[int, int]] = {}

    def vote(kp: int, pid: int) -> None:
        counts = votes.setdefault(kp, {})
        counts[pid] = counts.get(pid, 0) + 1

    for rec in models:
        view = rec.views.get(image_id)
        if view is None or not view.registered:
            continue
        for kp in np.flatnonzero(view.point3D_ids >= 0).tolist():
            for j, kp_j in rec.points3D[int(view.point3D_ids[kp])].track:
                other = merged.views.get(j)
                if j == image_id or other is None:
                    continue
                pid = int(other.point3D_ids[kp_j])
                if pid >= 0:
                    vote(kp, pid)
    for other_id, keypoints, other_keypoints in pairs:
        other = merged.views.get(other_id)
        if other is None or not other.registered:
            continue
        pids = other.point3D_ids[other_keypoints]
        for kp, pid in zip(keypoints[pids >= 0].tolist(), pids[pids >= 0].tolist(), strict=True):
            vote(kp, pid)
    keypoints, point_ids, used = [], [], set()
    for kp in sorted(votes):
        pid = max(votes[kp].items(), key=lambda e: (e[1], -e[0]))[0]
        if pid not in used:
            used.add(pid)
            keypoints.append(kp)
            point_ids.append(pid)
    return np.array(keypoints, dtype=np.int64), np.array(point_ids, dtype=np.int64)


def _source_view(models: list[Reconstruction], image_id: int) -> View:
    return next(rec.views[image_id] for rec in models if image_id in rec.views)


def _register_by_pnp(
    merged: Reconstruction,
    models: list[Reconstruction],
    image_id: int,
    options: MergeOptions,
    rng: np.random.Generator,
    pairs: _PairMatches = (),
) -> dict[str, int] | str:
    """Pose ``image_id`` in ``merged`` by PnP and add its inlier observations; the reason on failure."""
    source = _source_view(models, image_id)
    keypoints, point_ids = _correspondences_2d3d(merged, models, image_id, pairs)
    registration = options.registration
    needed = max(registration.min_num_inliers, options.min_image_points)
    if len(keypoints) < needed:
        return f"{len(keypoints)} 2D-3D correspondences < {needed}"
    camera = merged.cameras[source.camera_id]
    pixels_px = source.keypoints_px[keypoints]
    points_in_world = np.array([merged.points3D[int(p)].xyz for p in point_ids])
    ransac_options = replace(
        registration.ransac, min_num_inliers=max(registration.ransac.min_num_inliers, needed)
    )
    # PnP on undistorted pixels (pinhole K); inliers are then counted with the camera's own projection.
    estimate = estimate_absolute_pose(
        points_in_world, camera.ideal_pixels(pixels_px), camera.K, ransac_options, rng=rng
    )
    if not estimate.success:
        return f"PnP failed: {estimate.reason}"
    pose = estimate.cam_from_world
    points_in_cam = pose.apply(points_in_world)
    in_front = points_in_cam[:, 2] > 0
    errors = np.full(len(keypoints), np.inf)
    errors[in_front] = np.linalg.norm(camera.project(points_in_cam[in_front]) - pixels_px[in_front], axis=1)
    inliers = np.flatnonzero(errors <= options.filter_max_reproj_error_px)
    if len(inliers) < needed:
        return f"{len(inliers)} inliers within {options.filter_max_reproj_error_px} px < {needed}"
    if len(inliers) < registration.min_inlier_ratio * len(keypoints):
        return f"inlier ratio {len(inliers) / len(keypoints):.2f} < {registration.min_inlier_ratio}"
    merged.add_view(View(image_id, source.name, source.camera_id, pose, source.keypoints_px))
    for k in inliers.tolist():
        merged.add_observation(int(point_ids[k]), image_id, int(keypoints[k]))
    return {"num_correspondences": len(keypoints), "num_inliers": len(inliers)}


def _triangulate_image(
    merged: Reconstruction,
    image_id: int,
    pairs: _PairMatches,
    options: MergeOptions,
    images: Mapping[int, ImageInfo] | None,
    only_keypoints: np.ndarray | None = None,
) -> int:
    """New two-view points of the registered ``image_id`` from its verified matches with registered images
    where neither keypoint has a point yet (DLT on undistorted pixels; kept when in front of both cameras,
    within ``filter_max_reproj_error_px`` in both and with rays meeting at ``min_tri_angle_deg`` or more),
    for its keypoints in ``only_keypoints`` (None: all). Returns the number of points added."""
    view = merged.views[image_id]
    camera = merged.cameras[view.camera_id]
    info = images.get(image_id) if images is not None else None
    colors = info.colors if info is not None else None
    added = 0
    for other_id, keypoints, other_keypoints in pairs:
        other = merged.views.get(other_id)
        if other is None or not other.registered:
            continue
        free = (view.point3D_ids[keypoints] < 0) & (other.point3D_ids[other_keypoints] < 0)
        if only_keypoints is not None:
            free &= np.isin(keypoints, only_keypoints)
        a, b = keypoints[free], other_keypoints[free]
        if not len(a):
            continue
        other_camera = merged.cameras[other.camera_id]
        points = triangulate_dlt(
            camera.K @ view.cam_from_world.matrix(),
            other_camera.K @ other.cam_from_world.matrix(),
            camera.ideal_pixels(view.keypoints_px[a]),
            other_camera.ideal_pixels(other.keypoints_px[b]),
        )
        ok = np.all(np.isfinite(points), axis=1)
        a, b, points = a[ok], b[ok], points[ok]
        in_cam = view.cam_from_world.apply(points)
        in_other = other.cam_from_world.apply(points)
        ok = (in_cam[:, 2] > 0) & (in_other[:, 2] > 0)
        a, b, points, in_cam, in_other = a[ok], b[ok], points[ok], in_cam[ok], in_other[ok]
        if not len(a):
            continue
        error = np.maximum(
            np.linalg.norm(camera.project(in_cam) - view.keypoints_px[a], axis=1),
            np.linalg.norm(other_camera.project(in_other) - other.keypoints_px[b], axis=1),
        )
        angle = triangulation_angle_deg(view.cam_from_world.center, other.cam_from_world.center, points)
        ok = (error <= options.filter_max_reproj_error_px) & (angle >= options.min_tri_angle_deg)
        for k in np.flatnonzero(ok).tolist():
            kp, kp_other = int(a[k]), int(b[k])
            if view.point3D_ids[kp] >= 0 or other.point3D_ids[kp_other] >= 0:  # matched twice in this pair
                continue
            color = colors[kp] if colors is not None else None
            merged.add_point3D(points[k], [(image_id, kp), (other_id, kp_other)], color)
            added += 1
    return added


def _drop_weak_images(rec: Reconstruction, min_points: int, when: str) -> list[dict[str, Any]]:
    """Remove registered images observing fewer than ``min_points`` points (with their observations)."""
    dropped = []
    for image_id in rec.registered_image_ids:
        view = rec.views[image_id]
        count = view.num_points3D
        if count >= min_points:
            continue
        for kp in np.flatnonzero(view.point3D_ids >= 0).tolist():
            pid = int(view.point3D_ids[kp])
            if pid in rec.points3D:
                rec.delete_observation(pid, image_id, kp)
        del rec.views[image_id]
        dropped.append(
            {"image_id": image_id, "name": view.name, "reason": f"{count} points < {min_points} {when}"}
        )
    return dropped
