"""Global positioning: camera centres and 3D points at once from known rotations and feature tracks.

With every camera's rotation fixed (rotation averaging), each observation of track ``p`` in image ``i``
gives a viewing ray ``v_ip = R_i^T x_ip / |x_ip|`` in world coordinates (``x_ip`` the undistorted
normalised keypoint). The positioning problem of GLOMAP (Pan et al., "Global Structure-from-Motion
Revisited", ECCV 2024), which takes the pairwise-direction cost of BATA (Zhuang et al., "Baseline
Desensitizing in Translation Averaging", CVPR 2018) to point-to-camera constraints, solves

    min over c_i, X_p, d_ip >= 0 of   sum rho( || v_ip - d_ip (X_p - c_i) || )

with one scale ``d_ip`` per observation (``1 / depth``): the residual is a difference of unit-scale
vectors, so it is bounded whatever the baseline and a far point cannot dominate, and no relative
translation is needed (pairs with a small baseline or a pure rotation do not corrupt anything). The
problem is solved with a robust loss from a start given by translation averaging
(:mod:`geomvision.sfm.translation_averaging`: pairwise baseline directions of the tracks, then a convex
least-unsquared-deviations solve; ``start="translation_averaging"``) or, as GLOMAP does, from a random
start in a box (``start="random"``: enough for compact scenes, but a long path can fold), by
Levenberg-Marquardt on the reduced camera system
(:func:`geomvision.geometry.global_positioning.bata_positions`). One camera's centre is held at the origin
(translation gauge); the overall scale is fixed by the unit rays.

Only tracks seen by ``min_track_length`` or more of the given images take part, at most about
``max_points_per_image`` per image (longest tracks first); the mapper triangulates the rest afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from geomvision.errors import InputError, check_at_least, check_choice, check_positive, check_range
from geomvision.geometry.global_positioning import BataProblem, bata_positions
from geomvision.sfm.translation_averaging import (
    TranslationAveragingOptions,
    average_translations,
    ray_observations,
)

logger = logging.getLogger(__name__)

__all__ = [
    "GlobalPositioningOptions",
    "GlobalPositioningResult",
    "position_globally",
    "select_positioning_tracks",
]


@dataclass(frozen=True, kw_only=True)
class GlobalPositioningOptions:
    """Options of :func:`position_globally`.

    Attributes:
        loss: robust loss on the residual norm ("huber", "cauchy" or "linear").
        loss_scale: where the loss turns robust, in the residual's unit (a unit ray minus a scaled
            vector; 0.1 is about 6 degrees of ray error).
        max_iterations: iteration cap of the Levenberg-Marquardt solver. From the translation-averaging
            start 20 are enough (synthetic 300-image street: positioning 23 -> 9 s, AUC@2 unchanged), and
            10 too (street: AUC@2 0.9554 -> 0.9553; fountain, entry, castle, templeRing, dtu37, both K:
            AUC@2 within 0.0004 of 20), and 3 (mapper alone on the pipeline's inputs: street 1000 AUC@2
            0.9444 -> 0.9440 with the rounds' smaller budget, positioning 11.9 -> 6.4 s; street 300 seeds
            0-2 0.9554 / 0.9554 / 0.9554 -> 0.9554 / 0.9553 / 0.9554; the ten real rows within 0.0003);
            the bundle adjustment rounds finish the job.
        initial_damping: Marquardt factor of the first step (times the diagonal of the normal
            equations).
        function_tolerance: relative cost decrease below which the solver stops.
        min_track_length: tracks seen by fewer of the images are left out.
        max_points_per_image: about this many tracks per image take part (longest first); 0 = all.
        start: where the centres start: "translation_averaging" (LUD on the tracks' pairwise baseline
            directions; cameras it cannot place start at random) or "random" (uniform in the box, as
            GLOMAP). Synthetic 300-image street (a closed loop; planar pairs re-posed): AUC@2 0.909 /
            0.954 / 0.953 (seeds 0-2) from translation averaging, 0.10 from the random start, which folds
            the path.
        translation_averaging: options of that start.
        init_box_size: points and centres start uniformly in a cube of this half-width (random start).
        max_angle_error_deg: observations whose ray misses the solved point by more are outliers.
    """

    loss: Literal["huber", "cauchy", "linear"] = "huber"
    loss_scale: float = 0.1
    max_iterations: int = 3
    initial_damping: float = 1e-4
    function_tolerance: float = 1e-4
    min_track_length: int = 3
    max_points_per_image: int = 500
    start: Literal["translation_averaging", "random"] = "translation_averaging"
    translation_averaging: TranslationAveragingOptions = field(default_factory=TranslationAveragingOptions)
    init_box_size: float = 100.0
    max_angle_error_deg: float = 5.0

    def __post_init__(self) -> None:
        check_choice("start", self.start, ("translation_averaging", "random"))
        if self.loss not in ("huber", "cauchy", "linear"):
            raise InputError(f"loss must be huber, cauchy or linear, got {self.loss!r}")
        check_positive("loss_scale", self.loss_scale)
        check_at_least("max_iterations", self.max_iterations, 1)
        check_positive("initial_damping", self.initial_damping)
        check_positive("function_tolerance", self.function_tolerance)
        check_at_least("min_track_length", self.min_track_length, 2)
        check_at_least("max_points_per_image", self.max_points_per_image, 0)
        check_positive("init_box_size", self.init_box_size)
        check_range("max_angle_error_deg", self.max_angle_error_deg, 0, 180, low_open=True, high_open=True)


@dataclass
class GlobalPositioningResult:
    """Outcome of :func:`position_globally`.

    Attributes:
        success: the solver ran and at least two cameras were positioned.
        reason: why not, when ``success`` is False.
        centers: image_id -> (3,) camera centre in world coordinates (images that observe a used track).
        points: (T, 3) point of each track index (NaN for tracks that did not take part).
        obs_inlier: (M,) bool per input observation: took part and its ray meets its point within
            ``max_angle_error_deg`` (in front of the camera).
        report: sizes, iterations, costs and time.
    """

    success: bool
    reason: str = ""
    centers: dict[int, np.ndarray] = field(default_factory=dict)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    obs_inlier: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    report: dict = field(default_factory=dict)


def _single_threaded_blas():
    """BLAS limited to one thread while solving, if threadpoolctl is installed.

    The solver calls BLAS on small dense systems (a few hundred unknowns); threaded OpenBLAS gains nothing
    there, and on a loaded machine its spinning threads made one 141 x 141 solve take 0.26 s instead of
    milliseconds (templeRing, load average 18 on 2 cores).
    """
    try:
        from threadpoolctl import threadpool_limits  # optional dependency
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def select_positioning_tracks(
    obs_image: np.ndarray, obs_track: np.ndarray, *, min_track_length: int, max_points_per_image: int
) -> np.ndarray:
    """Tracks used for positioning: long enough, and among the longest ``max_points_per_image`` of an image.

    Args:
        obs_image: (M,) image id of each observation.
        obs_track: (M,) track index of each observation (tracks see an image at most once).
        min_track_length: shorter tracks are skipped.
        max_points_per_image: a track is kept when it ranks (by length, then index) among the first this
            many tracks of at least one of its images; 0 keeps all.

    Returns:
        (K,) sorted track indices.
    """
    if len(obs_track) == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.bincount(obs_track)
    long_enough = lengths >= min_track_length
    rows = np.flatnonzero(long_enough[obs_track])
    if max_points_per_image == 0 or rows.size == 0:
        return np.flatnonzero(long_enough)
    image, track = obs_image[rows], obs_track[rows]
    order = np.lexsort((track, -lengths[track], image))  # per image: longest tracks first
    image_sorted = image[order]
    starts = np.r_[0, np.flatnonzero(image_sorted[1:] != image_sorted[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.arange(len(order)) - group_start
    keep = np.zeros(len(lengths), dtype=bool)
    keep[track[order][rank < max_points_per_image]] = True
    return np.flatnonzero(keep)


def _closest_points_to_rays(
    rays: np.ndarray, ray_origins: np.ndarray, point_index: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """Per point, the least-squares closest point to its rays ``sum_k (I - v v^T)(X - c_k) = 0``.

    Args:
        rays: (M, 3) unit world-frame rays; ray_origins: (M, 3) their camera centres.
        point_index: (M,) point of each ray; fallback: (P, 3) used where the 3x3 system is singular
            (parallel rays) or the point lands behind a camera.

    Returns:
        (P, 3) points.
    """
    projector = np.eye(3) - rays[:, :, None] * rays[:, None, :]
    A = np.zeros((len(fallback), 3, 3))
    b = np.zeros((len(fallback), 3))
    np.add.at(A, point_index, projector)
    np.add.at(b, point_index, np.einsum("kij,kj->ki", projector, ray_origins))
    points = fallback.copy()
    ok = np.linalg.cond(A) < 1e8
    points[ok] = np.linalg.solve(A[ok], b[ok][:, :, None])[:, :, 0]
    in_front = np.einsum("ki,ki->k", points[point_index] - ray_origins, rays) > 0
    behind = np.zeros(len(points), dtype=bool)
    np.logical_or.at(behind, point_index, ~in_front)
    points[behind] = fallback[behind]
    return points


def position_globally(
    rotations: dict[int, np.ndarray],
    obs_image: np.ndarray,
    obs_track: np.ndarray,
    rays_in_cam: np.ndarray,
    options: GlobalPositioningOptions | None = None,
    *,
    initial_centers: dict[int, np.ndarray] | None = None,
    rng: np.random.Generator | int | None = None,
    progress=None,
) -> GlobalPositioningResult:
    """Camera centres and track points from fixed rotations and point-to-camera rays (BATA cost).

    Args:
        rotations: image_id -> (3, 3) ``cam_from_world`` rotation (from rotation averaging).
        obs_image: (M,) image id of each track observation.
        obs_track: (M,) track index (0..T-1) of each observation.
        rays_in_cam: (M, 3) viewing ray of each observation in its camera frame (e.g. undistorted
            normalised ``(x, y, 1)``; normalised here).
        options: stage options.
        initial_centers: image_id -> (3,) starting centre (e.g. from an earlier model; else, with
            ``options.start == "translation_averaging"``, from translation averaging); images without
            one start at random in the box (scaled to the given centres' extent); the points too, unless
            every image has a centre: then each starts where its rays meet (least squares).
        rng: seed or generator of the random initialisation.
        progress: unused; accepted for the common stage signature.

    Returns:
        GlobalPositioningResult (centres in a world frame where one camera sits at the origin, points of
        the used tracks, per-observation inlier flags).

    Raises:
        InputError: arrays of mismatched shapes.
    """
    del progress  # one solver call: nothing to report in between
    options = options or GlobalPositioningOptions()
    rng = np.random.default_rng(0 if rng is None else rng)
    t0 = time.perf_counter()
    obs_image, obs_track, rays_in_cam = ray_observations(obs_image, obs_track, rays_in_cam)
    m = len(obs_image)
    num_tracks = int(obs_track.max()) + 1 if m else 0
    known = np.isin(obs_image, np.fromiter(rotations, dtype=np.int64, count=len(rotations)))
    rows_known = np.flatnonzero(known)
    used_tracks = select_positioning_tracks(
        obs_image[rows_known],
        obs_track[rows_known],
        min_track_length=options.min_track_length,
        max_points_per_image=options.max_points_per_image,
    )
    in_use = np.zeros(num_tracks, dtype=bool)
    in_use[used_tracks] = True
    rows = rows_known[in_use[obs_track[rows_known]]]
    images = np.unique(obs_image[rows])
    report: dict = {
        "num_images": len(images),
        "num_points": len(used_tracks),
        "num_observations": len(rows),
    }
    if len(images) < 2:
        return GlobalPositioningResult(
            False,
            f"{len(images)} image(s) observe tracks of length >= {options.min_track_length}",
            report=report,
            points=np.full((num_tracks, 3), np.nan),
            obs_inlier=np.zeros(m, dtype=bool),
        )
    rot = np.stack([rotations[int(i)] for i in images])
    image_index = np.searchsorted(images, obs_image[rows])
    rays = np.einsum("kji,kj->ki", rot[image_index], rays_in_cam[rows])  # R^T x: world frame
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    point_index = np.searchsorted(used_tracks, obs_track[rows])
    # The best-observed image is the gauge (its centre stays at the origin).
    counts = np.bincount(image_index, minlength=len(images))
    gauge = int(np.argmax(counts))
    if initial_centers is None and options.start == "translation_averaging":
        averaged = average_translations(
            rotations,
            obs_image[rows],
            obs_track[rows],
            rays_in_cam[rows],
            options.translation_averaging,
            rng=rng,
        )
        report["translation_averaging"] = averaged.report
        if averaged.success:
            initial_centers = averaged.centers
        else:
            logger.info("translation averaging failed (%s): random start", averaged.reason)
    box = options.init_box_size
    centers0 = rng.uniform(-box, box, (len(images), 3))
    points0 = rng.uniform(-box, box, (len(used_tracks), 3))
    known = [k for k, i in enumerate(images.tolist()) if initial_centers and i in initial_centers]
    if len(known) >= 2:
        given = np.array([initial_centers[int(images[k])] for k in known], dtype=np.float64)
        extent = max(float(np.ptp(given, axis=0).max()), 1e-9)
        # Random starts at the given centres' scale, around their middle.
        centers0 = given.mean(axis=0) + centers0 * (extent / box)
        points0 = given.mean(axis=0) + points0 * (extent / box)
        centers0[known] = given
        if len(known) == len(images):  # every centre given: points where their rays meet, not at random
            points0 = _closest_points_to_rays(rays, centers0[image_index], point_index, points0)
    origin = centers0[gauge].copy()  # the gauge camera sits at the origin
    centers0 -= origin
    points0 -= origin
    with _single_threaded_blas():
        centers_all, points_used, _, iterations, cost = bata_positions(
            BataProblem(rays, image_index, point_index, centers0, points0, gauge_camera=gauge),
            loss=options.loss,
            loss_scale=options.loss_scale,
            max_iterations=options.max_iterations,
            initial_damping=options.initial_damping,
            function_tolerance=options.function_tolerance,
        )
    # Inliers: the ray points at the solved point (angle), in front of the camera.
    to_point = points_used[point_index] - centers_all[image_index]
    cos = np.einsum("ki,ki->k", to_point, rays) / np.maximum(np.linalg.norm(to_point, axis=1), 1e-300)
    inlier_used = cos >= np.cos(np.deg2rad(options.max_angle_error_deg))
    obs_inlier = np.zeros(m, dtype=bool)
    obs_inlier[rows[inlier_used]] = True
    points = np.full((num_tracks, 3), np.nan)
    points[used_tracks] = points_used
    report.update(
        {
            "iterations": iterations,
            "final_cost": cost,
            "num_inlier_observations": int(inlier_used.sum()),
            "time_s": round(time.perf_counter() - t0, 4),
        }
    )
    logger.info(
        "global positioning: %d images, %d points, %d obs (%d inliers), %d iterations, %.2f s",
        len(images),
        len(used_tracks),
        len(rows),
        int(inlier_used.sum()),
        iterations,
        report["time_s"],
    )
    centers = {int(i): centers_all[k] for k, i in enumerate(images.tolist())}
    return GlobalPositioningResult(True, "", centers, points, obs_inlier, report)
