"""Is a reconstructed model to be trusted? Measured signals, not the reprojection error alone.

A model can reproject to a fraction of a pixel and still be wrong: with a focal length far from the
truth, a narrow-field set of views can be explained by a flattened, mis-scaled scene whose poses are
all off by many degrees (bundle adjustment has nothing to pull against). Such models show it
elsewhere, and each of these measured signals, beyond its threshold, makes a model untrusted:

* **focal far from the view-graph estimate**: the model's focal length against the estimate of
  :func:`geomvision.sfm.calibration.calibrate_view_graph` (when that estimate was trusted): two
  independent measurements of one quantity that disagree mean one of them is wrong;
* **implausible focal**: focal length outside a plausible range of the image size;
* **short tracks**: mean observations per 3D point (a model stitched from two-view points);
* **low triangulation angles**: median over points of the largest angle between their rays
  (depth, and with it the poses, is then barely constrained);
* **few inliers per image**: median number of 3D points an image observes;
* **given focal disagrees with the images**: for intrinsics held fixed (given by the user), a short
  bundle adjustment that frees the focal moves it by more than ``max_focal_drift``;
* **verified pairs the model contradicts** (when the verified pairs are given): the share of the inlier
  matches of verified pairs between registered images that lie in pairs the model contradicts (most of
  their matches violate the epipolar geometry of the model's two poses). A model assembled from false
  pairs (repeated textures linking different places) reprojects its own points well but contradicts
  many of the other pairs among its images: 25-30 % of the matches in street models mapped from false
  pairs, none in the correct one. Weighting by matches keeps a correct model whose verification let
  a few weak false pairs through trusted: castle-P19's model contradicts exactly the 23 of its 109
  pairs that are false against the ground truth (21 % of the pairs, 30-125 matches each: 1.8 % of
  the matches).

The thresholds (see :class:`TrustOptions`) come from measurements on the benchmark sets (good
models with ground truth) and on deliberately wrong models (focal prior 4x off, calibration off);
``benchmarks/self_calibration.py`` reports the signals beside each model's pose error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geomvision.errors import InputError, check_fields_at_least, check_positive, check_range
from geomvision.geometry import camera_models
from geomvision.geometry.epipolar import essential_from_pose, sampson_distance_sq
from geomvision.scene import TwoViewGeometry
from geomvision.scene.reconstruction import Reconstruction
from geomvision.sfm.bundle_adjustment import (
    BundleAdjustmentOptions,
    adjust_problem,
    problem_from_reconstruction,
)


def _default_drift_ba() -> BundleAdjustmentOptions:
    return BundleAdjustmentOptions(loss="soft_l1", refine_extra_params=False, max_iterations=20)


@dataclass(frozen=True, kw_only=True)
class TrustOptions:
    """Thresholds of :func:`assess_model_trust`.

    Attributes:
        max_focal_deviation: largest relative difference between a camera's focal in the model and its
            trusted view-graph estimate.
        min_focal_ratio, max_focal_ratio: plausible focal length as a multiple of ``max(width, height)``.
        min_mean_track_length: shortest acceptable mean track length (observations per point).
        min_mean_track_length_unconfirmed_focal: shortest acceptable mean track length when a camera's
            focal is neither given (fixed) nor confirmed by a trusted view-graph estimate. Two-view tracks
            add no focal constraint beyond the pairs' F, which failed to give one (no trusted estimate), and
            a narrow field of view leaves the depth-reversal ambiguity: on the 12-view dinosaur ring (true
            focal 3.3x the prior, mean track length 2.13) the unknown-K model had 12 images at 29 deg median
            pose error and passed every other signal, while the right unknown-K models of the 16-view
            templeRing ring (unconfirmed focal 2x the prior) have 2.52-2.71 (0.4-1.0 deg); 2.3 sits between.
            Its 3-image fragment (2.20, 1.3 deg) is a false alarm of this signal.
        min_median_triangulation_angle_deg: smallest acceptable median (over points) of the largest
            angle between a point's rays.
        min_median_points_per_image: fewest acceptable 3D points observed by the median image.
        min_registered_images: a model with fewer registered images is not trusted.
        max_focal_drift: for cameras whose intrinsics were held fixed (given by the user), a short bundle
            adjustment with the focal freed may move it by at most this relative amount; more means the
            images disagree with the given focal.
        drift_max_points: points (a random subset) of that adjustment.
        drift_ba: options of that adjustment (only the focal of the held cameras is freed in it).
        max_contradicted_match_ratio: largest acceptable share of the inlier matches of the checked
            verified pairs that lie in pairs the model contradicts (see :func:`contradicted_pairs`).
        pair_min_inliers: verified pairs with fewer inlier matches are not checked.
        pair_max_epipolar_error_px: an inlier match agrees with the model when its Sampson distance
            to the epipolar geometry of the two model poses is at most this (pixels).
        pair_min_agreeing_ratio: a pair is contradicted when fewer of its inlier matches than this
            share agree with the model.
    """

    max_focal_deviation: float = 0.15
    min_focal_ratio: float = 0.3
    max_focal_ratio: float = 6.0
    min_mean_track_length: float = 2.1
    min_mean_track_length_unconfirmed_focal: float = 2.3
    min_median_triangulation_angle_deg: float = 2.0
    min_median_points_per_image: int = 40
    min_registered_images: int = 3
    max_focal_drift: float = 0.1
    drift_max_points: int = 2000
    drift_ba: BundleAdjustmentOptions = field(default_factory=_default_drift_ba)
    max_contradicted_match_ratio: float = 0.1
    pair_min_inliers: int = 30
    pair_max_epipolar_error_px: float = 4.0
    pair_min_agreeing_ratio: float = 0.5

    def __post_init__(self) -> None:
        check_positive("max_focal_deviation", self.max_focal_deviation)
        if not 0 < self.min_focal_ratio < self.max_focal_ratio:
            raise InputError(
                f"need 0 < min_focal_ratio < max_focal_ratio, got {self.min_focal_ratio}, {self.max_focal_ratio}"
            )
        check_positive("max_focal_drift", self.max_focal_drift)
        check_fields_at_least(
            self,
            min_mean_track_length=2,
            min_mean_track_length_unconfirmed_focal=2,
            min_median_triangulation_angle_deg=0,
        )
        check_fields_at_least(self, drift_max_points=10)
        check_fields_at_least(self, min_median_points_per_image=0, min_registered_images=2)
        check_range("max_contradicted_match_ratio", self.max_contradicted_match_ratio, 0, 1)
        check_range("pair_min_agreeing_ratio", self.pair_min_agreeing_ratio, 0, 1)
        check_positive("pair_max_epipolar_error_px", self.pair_max_epipolar_error_px)
        check_fields_at_least(self, pair_min_inliers=8)


@dataclass
class ModelTrust:
    """Verdict on one model.

    Attributes:
        trusted: no signal beyond its threshold.
        reasons: one line per signal beyond its threshold (empty when trusted).
        signals: the measured values (JSON-ready).
    """

    trusted: bool
    reasons: list[str] = field(default_factory=list)
    signals: dict[str, Any] = field(default_factory=dict)


def triangulation_angles_deg(rec: Reconstruction) -> np.ndarray:
    """(P,) largest angle between the rays of each 3D point (degrees), in ``observation_arrays`` order."""
    arrays = rec.observation_arrays()
    if len(arrays["point_ids"]) == 0:
        return np.zeros(0)
    centres = rec.camera_centers()
    obs_centre = np.array([centres[int(i)] for i in arrays["obs_image_id"]]).reshape(-1, 3)
    rays = arrays["xyz"][arrays["obs_point"]] - obs_centre
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-300)
    num_points = len(arrays["point_ids"])
    # Largest pairwise angle per point, from every ray's angle to the first ray of its point and to the
    # ray farthest from that one (exact for two rays; within a factor of two of the true maximum).
    first = np.full(num_points, -1)
    first[arrays["obs_point"][::-1]] = np.arange(len(rays))[::-1]
    cos_first = np.clip(np.sum(rays * rays[first[arrays["obs_point"]]], axis=1), -1.0, 1.0)
    far = np.full(num_points, np.inf)
    np.minimum.at(far, arrays["obs_point"], cos_first)
    far_index = np.full(num_points, -1)
    hit = cos_first == far[arrays["obs_point"]]
    far_index[arrays["obs_point"][hit]] = np.flatnonzero(hit)
    cos_far = np.clip(np.sum(rays * rays[far_index[arrays["obs_point"]]], axis=1), -1.0, 1.0)
    largest = np.full(num_points, 1.0)
    np.minimum.at(largest, arrays["obs_point"], np.minimum(cos_first, cos_far))
    return np.degrees(np.arccos(largest))


def contradicted_pairs(
    rec: Reconstruction,
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry],
    options: TrustOptions,
) -> dict[str, int]:
    """Count the verified pairs between registered images that the model's poses contradict.

    For each successful pair (i, j) with both images registered and at least ``pair_min_inliers``
    inlier matches, the Sampson distance of every inlier match to the essential matrix of the model's
    relative pose ``[t]x R`` (``cam_j_from_cam_i``) is measured in normalised coordinates and scaled to
    pixels by the mean focal of the two cameras. The pair is contradicted when fewer than
    ``pair_min_agreeing_ratio`` of its matches lie within ``pair_max_epipolar_error_px``.

    Returns:
        ``contradicted_pairs`` and ``checked_pairs`` (pair counts), ``contradicted_matches`` and
        ``checked_matches`` (their inlier matches).
    """
    registered = set(rec.registered_image_ids)
    checked = contradicted = checked_matches = contradicted_matches = 0
    for (i, j), g in two_view_geometries.items():
        if (
            not g.success
            or i not in registered
            or j not in registered
            or len(g.inlier_matches) < options.pair_min_inliers
        ):
            continue
        vi, vj = rec.views[i], rec.views[j]
        cam_i, cam_j = rec.cameras[vi.camera_id], rec.cameras[vj.camera_id]
        cam_j_from_cam_i = vj.cam_from_world @ vi.cam_from_world.inverse()
        norm = float(np.linalg.norm(cam_j_from_cam_i.translation))
        checked += 1
        checked_matches += len(g.inlier_matches)
        if norm < 1e-12:  # coincident centres: every match of a pure rotation agrees; nothing to test
            continue
        # the Sampson distance does not depend on the scale of E, so t needs no normalising
        E = essential_from_pose(cam_j_from_cam_i)
        m = g.inlier_matches
        x1 = cam_i.unproject(vi.keypoints_px[m[:, 0]])
        x2 = cam_j.unproject(vj.keypoints_px[m[:, 1]])
        focal = 0.5 * (float(np.mean(cam_i.focal_xy)) + float(np.mean(cam_j.focal_xy)))
        error_px = focal * np.sqrt(sampson_distance_sq(E, x1, x2))  # inf on both epipoles: disagrees
        if np.mean(error_px <= options.pair_max_epipolar_error_px) < options.pair_min_agreeing_ratio:
            contradicted += 1
            contradicted_matches += len(m)
    return {
        "contradicted_pairs": contradicted,
        "checked_pairs": checked,
        "contradicted_matches": contradicted_matches,
        "checked_matches": checked_matches,
    }


def focal_drift(
    rec: Reconstruction, camera_ids: Collection[int], options: TrustOptions, *, rng=None
) -> dict[int, float]:
    """Relative change of each camera's focal in a short bundle adjustment that frees only the focal.

    Runs on the array problem of a random subset of the points (the model is not changed).
    """
    ba = options.drift_ba
    problem, ids = problem_from_reconstruction(rec, ba)
    num_points = len(problem.points)
    if num_points > options.drift_max_points:
        chosen = np.sort(
            np.random.default_rng(rng).choice(num_points, size=options.drift_max_points, replace=False)
        )
        problem = problem.with_points(chosen)
    wanted = np.isin(ids["camera_ids"], list(camera_ids))
    problem.intrinsics_free &= wanted[:, None]
    before = problem.intrinsics.copy()
    adjust_problem(problem, ba)
    out = {}
    for g, c in enumerate(ids["camera_ids"]):
        if wanted[g]:
            focal = list(camera_models.FOCAL_INDICES[problem.camera_models[g]])
            out[int(c)] = float(np.mean(problem.intrinsics[g, focal] / before[g, focal]) - 1.0)
    return out


def assess_model_trust(
    reconstruction: Reconstruction,
    options: TrustOptions | None = None,
    *,
    calibrated_focal_px: Mapping[int, float] | None = None,
    fixed_camera_ids: Collection[int] = (),
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry] | None = None,
    rng: np.random.Generator | int | None = None,
) -> ModelTrust:
    """Measure a model's trust signals and compare them with the thresholds.

    Args:
        reconstruction: the model.
        options: see :class:`TrustOptions`.
        calibrated_focal_px: camera_id -> trusted view-graph focal estimate (pixels); cameras absent
            (or None) are not checked against it (known intrinsics, or no trusted estimate).
        fixed_camera_ids: cameras whose intrinsics were held fixed while mapping (given by the user):
            their focal is checked by a short bundle adjustment that frees it (``max_focal_drift``).
        two_view_geometries: the verified pairs (image ids as in the model); when given, the share of
            their matches in pairs the model contradicts is checked (``max_contradicted_match_ratio``).
        rng: seed of that adjustment's point subset.

    Returns:
        :class:`ModelTrust`.
    """
    options = options or TrustOptions()
    rec = reconstruction
    reasons: list[str] = []
    registered = rec.registered_image_ids
    signals: dict[str, Any] = {"num_registered": len(registered)}
    if len(registered) < options.min_registered_images:
        reasons.append(f"{len(registered)} registered images < {options.min_registered_images}")
    cameras = sorted({rec.views[i].camera_id for i in registered})
    deviations, ratios = {}, {}
    for c in cameras:
        cam = rec.cameras[c]
        focal = float(np.sqrt(np.prod(cam.focal_xy)))
        ratios[c] = focal / max(cam.width, cam.height)
        if not options.min_focal_ratio <= ratios[c] <= options.max_focal_ratio:
            reasons.append(
                f"camera {c}: implausible focal {focal:.0f} px = {ratios[c]:.2f} x the image size "
                f"(outside [{options.min_focal_ratio}, {options.max_focal_ratio}])"
            )
        estimate = (calibrated_focal_px or {}).get(c)
        if estimate is not None and np.isfinite(estimate) and estimate > 0:
            deviations[c] = focal / estimate - 1.0
            if abs(deviations[c]) > options.max_focal_deviation:
                reasons.append(
                    f"camera {c}: focal {focal:.0f} px is {100 * deviations[c]:+.0f} % from the view-graph "
                    f"estimate {estimate:.0f} px (> {100 * options.max_focal_deviation:.0f} %)"
                )
    fixed = [c for c in cameras if c in set(fixed_camera_ids)]
    if fixed and rec.points3D:
        drifts = focal_drift(rec, fixed, options, rng=rng)
        signals["focal_drift_when_freed"] = {str(c): v for c, v in drifts.items()}
        for c, drift in drifts.items():
            if abs(drift) > options.max_focal_drift:
                reasons.append(
                    f"camera {c}: the given focal moves {100 * drift:+.0f} % when freed in bundle adjustment "
                    f"(> {100 * options.max_focal_drift:.0f} %): the images disagree with it"
                )
    signals["focal_deviation_from_calibration"] = {str(c): v for c, v in deviations.items()}
    signals["focal_over_image_size"] = {str(c): v for c, v in ratios.items()}
    track_lengths = np.array([len(p.track) for p in rec.points3D.values()])
    mean_track = float(track_lengths.mean()) if len(track_lengths) else 0.0
    signals["mean_track_length"] = mean_track
    if mean_track < options.min_mean_track_length:
        reasons.append(f"short tracks: mean length {mean_track:.2f} < {options.min_mean_track_length}")
    unconfirmed = [c for c in cameras if c not in set(fixed_camera_ids) and c not in deviations]
    signals["cameras_with_unconfirmed_focal"] = unconfirmed
    if (
        unconfirmed
        and options.min_mean_track_length <= mean_track < options.min_mean_track_length_unconfirmed_focal
    ):
        reasons.append(
            f"short tracks ({mean_track:.2f} < {options.min_mean_track_length_unconfirmed_focal}) with the focal of "
            f"camera(s) {unconfirmed} neither given nor confirmed by the view graph: focal and depth are weakly "
            f"constrained"
        )
    angles = triangulation_angles_deg(rec)
    median_angle = float(np.median(angles)) if len(angles) else 0.0
    signals["median_triangulation_angle_deg"] = median_angle
    if median_angle < options.min_median_triangulation_angle_deg:
        reasons.append(
            f"low triangulation angles: median {median_angle:.2f} deg < {options.min_median_triangulation_angle_deg} deg"
        )
    points_per_image = [rec.views[i].num_points3D for i in registered]
    median_points = float(np.median(points_per_image)) if points_per_image else 0.0
    signals["median_points_per_image"] = median_points
    if median_points < options.min_median_points_per_image:
        reasons.append(
            f"few inliers per image: median {median_points:.0f} points < {options.min_median_points_per_image}"
        )
    if two_view_geometries is not None:
        counts = contradicted_pairs(rec, two_view_geometries, options)
        ratio = (
            counts["contradicted_matches"] / counts["checked_matches"] if counts["checked_matches"] else 0.0
        )
        signals.update(counts)
        signals["contradicted_match_ratio"] = ratio
        if ratio > options.max_contradicted_match_ratio:
            reasons.append(
                f"the model contradicts {counts['contradicted_pairs']} of {counts['checked_pairs']} verified "
                f"pairs between its images, {100 * ratio:.0f} % of their matches "
                f"(> {100 * options.max_contradicted_match_ratio:.0f} %): false pairs (repeated structure) may "
                f"have joined different places"
            )
    return ModelTrust(not reasons, reasons, signals)


def order_by_trust(
    reconstructions: list[Reconstruction], verdicts: list[ModelTrust]
) -> tuple[list[Reconstruction], list[ModelTrust]]:
    """Trusted models first, each group largest first (so model 0 is the largest trusted one)."""
    order = sorted(
        range(len(reconstructions)),
        key=lambda k: (not verdicts[k].trusted, -reconstructions[k].num_registered, k),
    )
    return [reconstructions[k] for k in order], [verdicts[k] for k in order]


def assess_models_trust(
    reconstructions: list[Reconstruction],
    options: TrustOptions | None = None,
    *,
    calibrated_focal_px: Mapping[int, float] | None = None,
    fixed_camera_ids: Collection[int] = (),
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry] | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[list[Reconstruction], list[ModelTrust]]:
    """Assess every model and order them trusted first, largest first (model 0: the largest trusted)."""
    verdicts = [
        assess_model_trust(
            r,
            options,
            calibrated_focal_px=calibrated_focal_px,
            fixed_camera_ids=fixed_camera_ids,
            two_view_geometries=two_view_geometries,
            rng=rng,
        )
        for r in reconstructions
    ]
    return order_by_trust(reconstructions, verdicts)
