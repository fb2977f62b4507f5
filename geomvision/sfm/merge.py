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
``filter_max_reproj_error_px`` are dropped, images left with too few points are dropped (reported),
and a final global bundle adjustment (:func:`geomvision.sfm.bundle_adjustment.bundle_adjust`) runs.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geomvision.errors import InputError
from geomvision.geometry.rigid import Sim3d, rotation_angle_deg, umeyama_alignment
from geomvision.geometry.sim3 import (
    ProjectionSet,
    pose_consistency_residuals,
    sim3_from_matrix,
    sim3_from_vector,
    sim3_to_vector,
)
from geomvision.progress import ProgressCallback
from geomvision.progress import report as report_progress
from geomvision.robust.ransac import RansacOptions, ransac
from geomvision.scene import Reconstruction, View
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentOptions",
    "AlignmentResult",
    "MergeOptions",
    "MergeResult",
    "align_reconstructions",
    "merge_reconstructions",
    "shared_point_pairs",
]


def _default_alignment_ransac() -> RansacOptions:
    return RansacOptions(
        max_error_px=4.0, min_num_inliers=10, min_iterations=100, max_iterations=2000, bailout_subset=0
    )


@dataclass(frozen=True, kw_only=True)
class AlignmentOptions:
    """Options of :func:`align_reconstructions`.

    Attributes:
        ransac: RANSAC over shared-point triplets; ``max_error_px`` is the reprojection threshold a
            point must meet in both models, ``min_num_inliers`` the fewest inlier points accepted.
        min_inlier_ratio: fewest inliers as a share of the shared points (two models of the same scene
            agree on most of them; a low ratio means a wrong match between clusters).
        huber_scale_px: Huber loss scale of the refinement (pixels).
        refine_max_iterations: function evaluations of the refinement (least squares, 7 parameters).
        max_camera_error_px: a shared image whose two poses disagree by more than this (pixel-equivalent,
            see :func:`geomvision.geometry.sim3.pose_consistency_residuals`) is inconsistent.
        max_inconsistent_camera_ratio: more inconsistent shared images than this share fails the check.
    """

    ransac: RansacOptions = field(default_factory=_default_alignment_ransac)
    min_inlier_ratio: float = 0.3
    huber_scale_px: float = 1.0
    refine_max_iterations: int = 200
    max_camera_error_px: float = 20.0
    max_inconsistent_camera_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_inlier_ratio <= 1.0:
            raise InputError(f"min_inlier_ratio must be in [0, 1], got {self.min_inlier_ratio}")
        if not self.huber_scale_px > 0 or not self.max_camera_error_px > 0:
            raise InputError(
                f"huber_scale_px and max_camera_error_px must be > 0, got "
                f"{self.huber_scale_px}, {self.max_camera_error_px}"
            )
        if self.refine_max_iterations < 1:
            raise InputError(f"refine_max_iterations must be >= 1, got {self.refine_max_iterations}")
        if not 0.0 <= self.max_inconsistent_camera_ratio <= 1.0:
            raise InputError(
                f"max_inconsistent_camera_ratio must be in [0, 1], got {self.max_inconsistent_camera_ratio}"
            )


def _default_merge_ba() -> BundleAdjustmentOptions:
    return BundleAdjustmentOptions(loss="soft_l1", max_iterations=50)


@dataclass(frozen=True, kw_only=True)
class MergeOptions:
    """Options of :func:`merge_reconstructions`.

    Attributes:
        alignment: how two models are aligned.
        filter_max_reproj_error_px: merged observations reprojecting farther are dropped (before and
            after the final BA).
        min_image_points: images left observing fewer merged points are dropped from the model.
        final_ba: run the final global bundle adjustment on each merged group.
        bundle_adjustment: options of that bundle adjustment.
    """

    alignment: AlignmentOptions = field(default_factory=AlignmentOptions)
    filter_max_reproj_error_px: float = 4.0
    min_image_points: int = 10
    final_ba: bool = True
    bundle_adjustment: BundleAdjustmentOptions = field(default_factory=_default_merge_ba)

    def __post_init__(self) -> None:
        if not self.filter_max_reproj_error_px > 0:
            raise InputError(f"filter_max_reproj_error_px must be > 0, got {self.filter_max_reproj_error_px}")
        if self.min_image_points < 0:
            raise InputError(f"min_image_points must be >= 0, got {self.min_image_points}")


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
    """Observations of ``point_ids`` (in that order) in ``rec``'s registered images."""
    index, rotations, translations, models, params, pixels = [], [], [], [], [], []
    for k, pid in enumerate(point_ids.tolist()):
        for image_id, kp in rec.points3D[pid].track:
            view = rec.views[image_id]
            if not view.registered:
                continue
            camera = rec.cameras[view.camera_id]
            index.append(k)
            rotations.append(view.cam_from_world.rotation)
            translations.append(view.cam_from_world.translation)
            models.append(camera.model)
            params.append(camera.params)
            pixels.append(view.keypoints_px[kp])
    return ProjectionSet(
        np.asarray(index, dtype=np.int64),
        np.asarray(rotations).reshape(-1, 3, 3),
        np.asarray(translations).reshape(-1, 3),
        models,
        params,
        np.asarray(pixels).reshape(-1, 2),
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
        )


def _shared_cameras(src: Reconstruction, dst: Reconstruction) -> _SharedCameras:
    ids = sorted(set(src.registered_image_ids) & set(dst.registered_image_ids))
    depths, focals = [], []
    fallback = _median_depth(dst, dst.registered_image_ids)
    for i in ids:
        depth = _median_depth(dst, [i])
        depths.append(depth if np.isfinite(depth) and depth > 0 else fallback)
        camera = dst.cameras[dst.views[i].camera_id]
        focals.append(float(np.mean(camera.focal_xy)))
    return _SharedCameras(
        ids,
        np.array([src.views[i].cam_from_world.rotation for i in ids]).reshape(-1, 3, 3),
        np.array([src.views[i].cam_from_world.center for i in ids]).reshape(-1, 3),
        np.array([dst.views[i].cam_from_world.rotation for i in ids]).reshape(-1, 3, 3),
        np.array([dst.views[i].cam_from_world.center for i in ids]).reshape(-1, 3),
        np.asarray(depths, dtype=np.float64),
        np.asarray(focals, dtype=np.float64),
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
    options: AlignmentOptions,
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
        max_nfev=options.refine_max_iterations,
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
    xyz_src = np.array([src.points3D[int(p)].xyz for p in pairs[:, 0]])
    xyz_dst = np.array([dst.points3D[int(p)].xyz for p in pairs[:, 1]])
    in_src, in_dst = _projection_set(src, pairs[:, 0]), _projection_set(dst, pairs[:, 1])
    estimator = _SimilarityEstimator(xyz_src, xyz_dst, in_src, in_dst)
    found = ransac(estimator, len(pairs), options.ransac, rng=rng)
    result.stats["ransac_iterations"] = found.num_iterations
    if found.model is None:
        result.reason = f"RANSAC found no similarity: {found.reason}"
        return result
    sim = sim3_from_matrix(found.model)
    inliers = found.inlier_mask
    threshold_sq = options.ransac.max_error_px**2
    for _ in range(2):  # refine on the inliers, recount, refine once more on the new inlier set
        if inliers.sum() < 3:
            break
        sel = np.flatnonzero(inliers)
        sim = _refine(
            sim,
            xyz_src[sel],
            xyz_dst[sel],
            _projection_set(src, pairs[sel, 0]),
            _projection_set(dst, pairs[sel, 1]),
            cameras,
            options,
        )
        inliers = estimator.residuals_sq(sim.matrix()) <= threshold_sq
    result.dst_from_src = sim
    result.num_inliers = int(inliers.sum())
    sel = np.flatnonzero(inliers)
    err_dst = np.linalg.norm(
        _projection_set(dst, pairs[sel, 1]).residuals_px(sim.apply(xyz_src[sel])), axis=1
    )
    err_src = np.linalg.norm(
        _projection_set(src, pairs[sel, 0]).residuals_px(sim.inverse().apply(xyz_dst[sel])), axis=1
    )
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


def merge_reconstructions(
    models: list[Reconstruction],
    options: MergeOptions | None = None,
    *,
    core_image_ids: list[set[int]] | None = None,
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
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
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
    for group in groups:
        if len(group) == 1:
            rec = copy.deepcopy(models[group[0]])
            group_report: dict[str, Any] = {"models": group, "merged": False}
            if failures[group[0]]:
                group_report["reason"] = "; ".join(failures[group[0]])
            elif len(models) > 1:
                group_report["reason"] = "shares no 3D point with any other model"
        else:
            rec, group_report, group_dropped = _merge_group(
                [models[k] for k in group],
                [root_from_model[k] for k in group],
                [core_image_ids[k] if core_image_ids else set() for k in group],
                options,
            )
            group_report["models"] = group
            group_report["merged"] = True
            group_report["tree"] = [[k, parent[k]] for k in group[1:]]
            dropped.extend(group_dropped)
        group_report["num_registered"] = rec.num_registered
        group_report["num_points3D"] = len(rec.points3D)
        reconstructions.append(rec)
        group_reports.append(group_report)
    in_output = {i for rec in reconstructions for i in rec.registered_image_ids}
    dropped = [d for d in dropped if d["image_id"] not in in_output]
    ranking = sorted(range(len(groups)), key=lambda g: (-reconstructions[g].num_registered, g))
    result = MergeResult(
        [reconstructions[g] for g in ranking],
        [groups[g] for g in ranking],
        root_from_model,
        dropped,
        {
            "num_input_models": len(models),
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


def _merge_group(
    models: list[Reconstruction],
    transforms: list[Sim3d],
    cores: list[set[int]],
    options: MergeOptions,
) -> tuple[Reconstruction, dict[str, Any], list[dict[str, Any]]]:
    """Map the models into the root frame, join their tracks, filter, bundle-adjust."""
    t0 = time.perf_counter()
    moved = []
    for model, transform in zip(models, transforms, strict=True):
        rec = copy.deepcopy(model)
        rec.transform(transform)
        moved.append(rec)
    merged = Reconstruction()
    # Cameras: the first model (the root) that has one gives its intrinsics.
    for rec in moved:
        for camera_id, camera in rec.cameras.items():
            if camera_id not in merged.cameras:
                merged.add_camera(copy.deepcopy(camera))
    # Poses: from the model owning the image (its core), else the first model that posed it.
    owner: dict[int, int] = {}
    for k, rec in enumerate(moved):
        for image_id in rec.registered_image_ids:
            current = owner.get(image_id)
            if current is None or (image_id in cores[k] and image_id not in cores[current]):
                owner[image_id] = k
    for image_id in sorted(owner):
        view = moved[owner[image_id]].views[image_id]
        merged.add_view(
            View(image_id, view.name, view.camera_id, view.cam_from_world, view.keypoints_px.copy())
        )
    num_points_in = sum(len(rec.points3D) for rec in moved)
    _join_tracks(merged, moved)
    num_points_joined = len(merged.points3D)
    filtered_before = _filter_observations(merged, options.filter_max_reproj_error_px)
    dropped = _drop_weak_images(merged, options.min_image_points, "after joining tracks")
    ba_report: dict[str, Any] = {}
    if options.final_ba and merged.points3D:
        ba = bundle_adjust(merged, options.bundle_adjustment)
        ba_report = {
            "success": ba.success,
            "reason": ba.reason,
            "iterations": ba.iterations,
            "initial_mean_reprojection_error_px": ba.initial_mean_reprojection_error_px,
            "mean_reprojection_error_px": ba.mean_reprojection_error_px,
            "time_s": round(ba.time_s, 4),
        }
        filtered_after = _filter_observations(merged, options.filter_max_reproj_error_px)
        dropped += _drop_weak_images(merged, options.min_image_points, "after the final bundle adjustment")
    else:
        filtered_after = 0
    merged.update_point_errors()
    report = {
        "num_points_in": num_points_in,
        "num_points_joined": num_points_joined,
        "num_observations_filtered": filtered_before + filtered_after,
        "final_ba": ba_report,
        "mean_reprojection_error_px": merged.mean_reprojection_error_px() if merged.points3D else None,
        "time_s": round(time.perf_counter() - t0, 4),
    }
    return merged, report, dropped


def _join_tracks(merged: Reconstruction, models: list[Reconstruction]) -> None:
    """Add to ``merged`` one point per set of points linked through a shared (image_id, keypoint) observation.

    The merged point's observations are the union of its members' (one keypoint per image: the one most
    members agree on); its position is the members' mean weighted by track length, colour the first's.
    """
    node_model, node_pid, obs_node, obs_image, obs_kp = [], [], [], [], []
    xyz, colors, lengths = [], [], []
    for k, rec in enumerate(models):
        for pid, point in rec.points3D.items():
            node = len(node_model)
            node_model.append(k)
            node_pid.append(pid)
            xyz.append(point.xyz)
            colors.append(point.color)
            lengths.append(len(point.track))
            for image_id, kp in point.track:
                if image_id in merged.views:
                    obs_node.append(node)
                    obs_image.append(image_id)
                    obs_kp.append(kp)
    num_nodes = len(node_model)
    if not num_nodes:
        return
    obs_node = np.asarray(obs_node, dtype=np.int64)
    obs_image = np.asarray(obs_image, dtype=np.int64)
    obs_kp = np.asarray(obs_kp, dtype=np.int64)
    # Union of points sharing an observation: link consecutive nodes with the same (image, keypoint).
    order = np.lexsort((obs_node, obs_kp, obs_image))
    same = (np.diff(obs_image[order]) == 0) & (np.diff(obs_kp[order]) == 0)
    a, b = obs_node[order][:-1][same], obs_node[order][1:][same]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(num_nodes, num_nodes))
    _, label = connected_components(graph, directed=False)
    xyz = np.asarray(xyz).reshape(-1, 3)
    lengths = np.asarray(lengths, dtype=np.float64)
    num_groups = int(label.max()) + 1
    weight = np.bincount(label, lengths, minlength=num_groups)
    centre = (
        np.stack([np.bincount(label, lengths * xyz[:, d], minlength=num_groups) for d in range(3)], axis=1)
        / np.maximum(weight, 1e-300)[:, None]
    )
    first_node = np.full(num_groups, -1, dtype=np.int64)
    first_node[label[::-1]] = np.arange(num_nodes)[::-1]
    # Observations per group: unique (group, image, keypoint) with counts; one keypoint per (group, image).
    rows = np.stack([label[obs_node], obs_image, obs_kp], axis=1)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    order = np.lexsort((unique[:, 2], -counts, unique[:, 1], unique[:, 0]))
    unique = unique[order]
    keep = np.r_[True, (unique[1:, 0] != unique[:-1, 0]) | (unique[1:, 1] != unique[:-1, 1])]
    unique = unique[keep]
    # A keypoint claimed by two groups (conflicting joins) stays with the first group only.
    order = np.lexsort((unique[:, 0], unique[:, 2], unique[:, 1]))
    unique = unique[order]
    first = np.r_[True, (unique[1:, 1] != unique[:-1, 1]) | (unique[1:, 2] != unique[:-1, 2])]
    unique = unique[first]
    unique = unique[np.lexsort((unique[:, 2], unique[:, 1], unique[:, 0]))]
    starts = np.flatnonzero(np.r_[True, unique[1:, 0] != unique[:-1, 0]])
    ends = np.r_[starts[1:], len(unique)]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e - s < 2:
            continue
        g = int(unique[s, 0])
        track = [(int(i), int(kp)) for i, kp in unique[s:e, 1:]]
        merged.add_point3D(centre[g], track, colors[first_node[g]])


def _filter_observations(rec: Reconstruction, max_error_px: float) -> int:
    """Remove observations reprojecting beyond ``max_error_px`` (points left with < 2 go too)."""
    if not rec.points3D:
        return 0
    arrays = rec.reprojection_errors_px()
    bad = np.flatnonzero(~(arrays["errors_px"] <= max_error_px))
    for k in bad.tolist():
        pid = int(arrays["point_ids"][arrays["obs_point"][k]])
        if pid in rec.points3D:
            rec.delete_observation(pid, int(arrays["obs_image_id"][k]), int(arrays["obs_keypoint"][k]))
    return len(bad)


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
