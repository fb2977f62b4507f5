"""Place images the mapper could not register from a learned relative-pose prior (a weak fallback).

Incremental mapping registers an image only through PnP on verified 2D-3D matches. An image whose matches
all fail verification (texture-less, motion blur, repeated structure) stays unregistered, and evaluation
then counts it as a total failure. When the user provides a relative-pose model
(``geomvision reconstruct IMAGES -o OUT --pose-prior CKPT``), :func:`register_with_pose_priors` gives such
an image an *approximate* pose instead:

1. neighbours: the registered images that were candidate pairs of the image (ranked by their number of
   putative matches when known, otherwise by index distance, i.e. capture order), at most
   ``max_neighbours`` of them. Only images the mapper registered serve as neighbours: an image placed
   by the prior is never used to place another, so prior errors do not chain;
2. for each neighbour ``j`` the prior returns ``cam_i_from_cam_j`` with a *unit* translation and a
   confidence; priors below ``min_confidence`` are skipped;
3. rotation: ``R_i = R_ij R_j`` per neighbour, averaged with the confidence-weighted chordal L2 mean
   (``project_to_so3(sum_k w_k R_k)``, Hartley et al., "Rotation averaging", IJCV 2013, section 5.3);
4. position: each neighbour gives a ray from its centre along ``-R_kᵀ t_ij`` (the image's centre lies on
   it, at an unknown distance since a two-view translation has no scale). With two or more rays that
   span at least ``min_ray_angle_deg``, the centre is their weighted least-squares intersection (the
   midpoint method, H&Z 12.2 applied to camera centres) when it lies in front of every neighbour.
   Otherwise (one neighbour, or nearly parallel rays as on a straight track) the unit translation is
   scaled by the *median baseline*: the median distance between the centres of registered images that
   are candidate pairs of each other (the typical spacing of matched neighbours in this model; falls back
   to the median nearest-neighbour spacing of all registered centres). This is an assumption, not a
   measurement: the placed image is assumed to be as far from its neighbour as matched images usually
   are, so its position error is of the order of the baseline spread.

What this is and is not: a prior-placed view has a pose but **no observations, no 3D points
and no bundle adjustment**; its accuracy is that of the learned model (typically degrees, not the
sub-degree accuracy of PnP). Such views count in ``Reconstruction.registered_image_ids`` (so evaluation
sees an approximate pose instead of "unregistered"), but they are *not* counted in the mapper's report
(``report["mapping"]["num_registered"]`` is PnP registrations only), and the returned report lists them
under ``registered_by_prior`` with their neighbours and confidences. Views are not marked inside the
Reconstruction itself (the scene types have no flag for it): keep the report next to the model.

The learned model is optional: :func:`geomvision.plugins.learned_prior.learned_prior_fn` builds the prior from a checkpoint through the
plugin registry, importing torch only then (the core never imports torch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomvision.errors import InputError, check_at_least, check_range
from geomvision.geometry.rigid import Rigid3d, project_to_so3
from geomvision.scene import Camera, ImageInfo, Reconstruction
from geomvision.scene.reconstruction import View

__all__ = [
    "PosePriorOptions",
    "PriorFn",
    "register_with_pose_priors",
]

logger = logging.getLogger(__name__)

#: ``prior_fn(path_1, path_2) -> (cam2_from_cam1 with unit translation, confidence in (0, 1])``.
PriorFn = Callable[[Path, Path], tuple[Rigid3d, float]]

#: candidate pairs: ``{(i, j): number of putative matches}`` or an iterable of ``(i, j)``.
CandidatePairs = Mapping[tuple[int, int], float] | Iterable[tuple[int, int]]


@dataclass(frozen=True, kw_only=True)
class PosePriorOptions:
    """Options of :func:`register_with_pose_priors`.

    Attributes:
        min_confidence: priors with a lower confidence are ignored (the plugin's confidence is a
            forward/backward consistency heuristic in (0, 1]; 0.5 ~ a few degrees of disagreement).
        max_neighbours: registered neighbours queried per image (best-ranked first).
        min_ray_angle_deg: two or more neighbour rays must span this angle for the centre to be
            intersected; below it the median baseline sets the scale.
    """

    min_confidence: float = 0.5
    max_neighbours: int = 3
    min_ray_angle_deg: float = 5.0

    def __post_init__(self) -> None:
        check_range("min_confidence", self.min_confidence, 0, 1)
        check_at_least("max_neighbours", self.max_neighbours, 1)
        check_range("min_ray_angle_deg", self.min_ray_angle_deg, 0, 90, low_open=True, high_open=True)


def _pair_weights(
    candidate_pairs: CandidatePairs | None, image_ids: Iterable[int]
) -> dict[tuple[int, int], float]:
    """``{(i, j) with i < j: weight}``; weight = putative matches, or ``-|i - j|`` (capture order)."""
    if candidate_pairs is None:  # no pairing known: every pair, nearest in capture order first
        ids = sorted(image_ids)
        return {(a, b): -float(b - a) for k, a in enumerate(ids) for b in ids[k + 1 :]}
    if isinstance(candidate_pairs, Mapping):
        items = ((tuple(p), float(w)) for p, w in candidate_pairs.items())
    else:
        items = ((tuple(p), -float(abs(p[1] - p[0]))) for p in candidate_pairs)
    weights: dict[tuple[int, int], float] = {}
    for (i, j), w in items:
        key = (min(i, j), max(i, j))
        weights[key] = max(w, weights.get(key, -np.inf))
    return weights


def _neighbours(
    image_id: int, weights: dict[tuple[int, int], float], registered: set[int], limit: int
) -> list[int]:
    """Registered candidate partners of ``image_id``, best weight first (ties: smaller id gap, then id)."""
    scored = [
        (-w, abs(j - image_id), j)
        for (a, b), w in weights.items()
        if image_id in (a, b) and (j := b if a == image_id else a) in registered
    ]
    scored.sort()
    return [j for _, _, j in scored[:limit]]


def _median_baseline(rec: Reconstruction, weights: dict[tuple[int, int], float]) -> float | None:
    """Median centre distance of registered candidate pairs; else median nearest-neighbour spacing."""
    centers = rec.camera_centers()
    dists = [np.linalg.norm(centers[a] - centers[b]) for a, b in weights if a in centers and b in centers]
    if not dists and len(centers) >= 2:
        c = np.array(list(centers.values()))
        d = np.linalg.norm(c[:, None] - c[None], axis=2)
        np.fill_diagonal(d, np.inf)
        dists = list(d.min(axis=1))
    positive = [float(d) for d in dists if d > 1e-12]
    return float(np.median(positive)) if positive else None


def _intersect_rays(
    origins: np.ndarray, directions: np.ndarray, w: np.ndarray, min_angle_deg: float
) -> np.ndarray | None:
    """Weighted least-squares point nearest to rays ``origins + s * directions`` (s > 0), or None.

    Minimises ``sum_k w_k ||(I - d_k d_kᵀ)(c - o_k)||²``; None when the rays span less than
    ``min_angle_deg`` (ill-conditioned) or the solution lies behind any ray's origin.
    """
    if len(origins) < 2:
        return None
    cosines = np.clip(directions @ directions.T, -1.0, 1.0)
    if np.degrees(np.arccos(np.abs(cosines).min())) < min_angle_deg:
        return None
    P = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]  # (K, 3, 3) projectors
    A = np.einsum("k,kij->ij", w, P)
    b = np.einsum("k,kij,kj->i", w, P, origins)
    center = np.linalg.solve(A, b)
    if np.any(np.einsum("ki,ki->k", center[None] - origins, directions) <= 0):
        return None
    return center


def _place_image(
    image_id: int,
    rec: Reconstruction,
    estimates: list[tuple[int, Rigid3d, float]],
    baseline: float | None,
    options: PosePriorOptions,
) -> tuple[Rigid3d | None, dict[str, Any]]:
    """Average the neighbours' estimates of ``cam_i_from_world``; (pose or None, report entry)."""
    w = np.array([c for _, _, c in estimates])
    rel = [p for _, p, _ in estimates]
    neighbour_poses = [rec.views[j].cam_from_world for j, _, _ in estimates]
    R_each = np.array([p.rotation @ n.rotation for p, n in zip(rel, neighbour_poses, strict=True)])
    R = project_to_so3(np.einsum("k,kij->ij", w, R_each))  # chordal L2 mean
    origins = np.array([n.center for n in neighbour_poses])
    # c_i = c_j - s * R_iᵀ t_ij: the image lies along -R_iᵀ t_ij from each neighbour.
    dirs = -np.einsum("kji,kj->ki", R_each, np.array([p.translation for p in rel]))
    norms = np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs = dirs / np.maximum(norms, 1e-12)
    center = _intersect_rays(origins, dirs, w, options.min_ray_angle_deg)
    method = "ray_intersection"
    if center is None:
        if baseline is None:
            return None, {"reason": "no baseline: fewer than 2 registered images with distinct centres"}
        method = "median_baseline"
        center = np.einsum("k,ki->i", w, origins + baseline * dirs) / w.sum()
    entry = {
        "neighbours": [int(j) for j, _, _ in estimates],
        "confidences": [round(float(c), 6) for c in w],
        "confidence": round(float(w.mean()), 6),
        "scale": method,
    }
    return Rigid3d(R, -R @ center), entry


def register_with_pose_priors(
    rec: Reconstruction,
    images: Mapping[int, ImageInfo],
    image_paths: Mapping[int, Path],
    prior_fn: PriorFn,
    candidate_pairs: CandidatePairs | None = None,
    options: PosePriorOptions | None = None,
    *,
    cameras: Mapping[int, Camera] | None = None,
    skip_image_ids: Iterable[int] = (),
) -> dict[str, Any]:
    """Give unregistered images an approximate pose in ``rec`` from a relative-pose prior (in place).

    Args:
        rec: the mapped model; registered views are read, new views (pose only, no points) are added.
        images: image_id -> ImageInfo of every input image (those absent from ``rec`` or unregistered
            there are candidates).
        image_paths: image_id -> file the prior reads.
        prior_fn: ``prior_fn(path_j, path_i) -> (cam_i_from_cam_j with unit translation, confidence)``.
        candidate_pairs: ``{(i, j): putative matches}`` (ranks neighbours by matches) or ``(i, j)`` pairs
            (ranked by index distance); None = every registered image, nearest in index first.
        options: :class:`PosePriorOptions`.
        cameras: camera_id -> Camera, used when an image's camera is not yet in ``rec``.
        skip_image_ids: images never placed (e.g. registered in another model).

    Returns:
        JSON-ready report: ``registered_by_prior`` (image ids placed), ``placements`` (per placed image:
        ``image_id``, ``name``, ``neighbours``, ``confidences``, ``confidence`` (mean), ``scale``
        ("ray_intersection" or "median_baseline")), ``not_placed`` (``image_id``, ``name``, ``reason``),
        ``baseline`` (median baseline in world units, or None) and ``min_confidence``.
    """
    options = options or PosePriorOptions()
    registered = set(rec.registered_image_ids)
    skip = set(skip_image_ids)
    todo = sorted(i for i in images if i not in registered and i not in skip)
    missing = [i for i in todo + sorted(registered) if i in images and i not in image_paths]
    if missing:
        raise InputError(f"image_paths has no file for image(s) {missing[:5]}")
    weights = _pair_weights(candidate_pairs, images)
    # without known pairs every pair is a "candidate": only nearest-neighbour spacing is meaningful then
    baseline = _median_baseline(rec, weights if candidate_pairs is not None else {})
    report: dict[str, Any] = {
        "registered_by_prior": [],
        "placements": [],
        "not_placed": [],
        "baseline": baseline,
        "min_confidence": options.min_confidence,
    }
    for image_id in todo:
        name = images[image_id].name
        entry, pose = _estimate(image_id, rec, image_paths, prior_fn, weights, registered, baseline, options)
        if pose is None or not _add_view(rec, images[image_id], image_id, pose, cameras):
            reason = entry.get("reason") or f"camera {images[image_id].camera_id} unknown"
            report["not_placed"].append({"image_id": image_id, "name": name, "reason": reason})
            logger.info("pose prior: image %d (%s) not placed: %s", image_id, name, reason)
            continue
        report["registered_by_prior"].append(image_id)
        report["placements"].append({"image_id": image_id, "name": name} | entry)
        logger.info("pose prior: placed image %d (%s), confidence %.3f", image_id, name, entry["confidence"])
    return report


def _estimate(
    image_id: int,
    rec: Reconstruction,
    image_paths: Mapping[int, Path],
    prior_fn: PriorFn,
    weights: dict[tuple[int, int], float],
    registered: set[int],
    baseline: float | None,
    options: PosePriorOptions,
) -> tuple[dict[str, Any], Rigid3d | None]:
    """Query the prior against the image's neighbours and fuse the confident answers."""
    neighbours = _neighbours(image_id, weights, registered, options.max_neighbours)
    if not neighbours:
        return {"reason": "no registered neighbour among its candidate pairs"}, None
    estimates, rejected = [], []
    for j in neighbours:
        try:
            cam_i_from_cam_j, confidence = prior_fn(Path(image_paths[j]), Path(image_paths[image_id]))
        except InputError as exc:  # e.g. an image the model cannot read: this query gives no prior
            rejected.append(f"image {j}: {exc}")
            continue
        if not np.isfinite(confidence) or confidence < options.min_confidence:
            rejected.append(round(float(confidence), 6))
            continue
        estimates.append((j, cam_i_from_cam_j, float(confidence)))
    if not estimates:
        return {
            "reason": f"all {len(neighbours)} priors failed or below min_confidence "
            f"{options.min_confidence}: {rejected}"
        }, None
    pose, entry = _place_image(image_id, rec, estimates, baseline, options)
    return entry, pose


def _add_view(
    rec: Reconstruction, info: ImageInfo, image_id: int, pose: Rigid3d, cameras: Mapping[int, Camera] | None
) -> bool:
    """Add (or update) the view with its pose and no 3D points; False if its camera is unknown."""
    if info.camera_id not in rec.cameras:
        if cameras is None or info.camera_id not in cameras:
            return False
        rec.add_camera(cameras[info.camera_id])
    if image_id in rec.views:
        rec.views[image_id].cam_from_world = pose
    else:
        rec.add_view(View(image_id, info.name, info.camera_id, pose, info.keypoints_px))
    return True
