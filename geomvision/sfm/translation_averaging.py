"""Translation averaging: a start for global positioning from the tracks' pairwise baseline directions.

Global positioning's cost is not convex: started at random, a long camera path (a street of hundreds of
images) can fold onto itself and stay folded. This stage gives it a start that cannot fold:

1. every pair of images that shares ``min_shared_tracks`` or more tracks gets a baseline direction from the
   world-frame rays of those tracks, with the rotations held at their averaged values
   (:func:`geomvision.geometry.translation_averaging.baseline_directions`; pairs whose correspondences have
   a median parallax below ``min_parallax_deg`` are left out: their direction is noise);
2. camera centres by least unsquared deviations, a convex problem
   (:func:`geomvision.geometry.translation_averaging.lud_centers`);
3. directions off the solved baselines by more than ``max_angle_error_deg`` are dropped and LUD runs again
   on the rest (the few wrong directions LUD cannot out-vote pull its solution; without them it is exact
   for exact directions).

Cameras outside the largest connected set of the remaining pairs get no centre.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from geomvision.errors import InputError, check_at_least, check_positive, check_range
from geomvision.geometry.translation_averaging import baseline_directions, lud_centers

logger = logging.getLogger(__name__)

__all__ = [
    "TranslationAveragingOptions",
    "TranslationAveragingResult",
    "average_translations",
    "ray_observations",
    "centers_from_directions",
    "track_pairs",
]


@dataclass(frozen=True, kw_only=True)
class TranslationAveragingOptions:
    """Options of :func:`average_translations`.

    Attributes:
        min_shared_tracks: image pairs sharing fewer tracks give no direction.
        min_parallax_deg: pairs whose correspondences' median ray angle is smaller give no direction.
        direction_hypotheses: two-correspondence samples per pair that start its direction estimate
            (16: on the synthetic 300-image street, 725k correspondences, 2.1 -> 1.3 s and AUC@2 0.9554
            as with 32; the ten real rows of ``benchmarks/results/global_mapper.md`` unchanged).
        direction_iterations: re-weightings of each pair's direction estimate.
        max_correspondences_per_pair: a pair's direction is estimated from at most this many of its
            correspondences, a random subset (0: all). A direction needs far fewer than the hundreds
            a street pair shares (synthetic 1000-image street: 1.97M correspondences, positioning
            13.9 -> 12.0 s, AUC@2 0.9451 -> 0.9444; the ten real rows of
            ``benchmarks/results/global_mapper.md`` within 0.0002, templeRing unknown 0.8654 -> 0.8642).
            50 rather than 100 (tenth session, mapper alone): street 1000 positioning ~1 s shorter, AUC@2
            0.9439 / 0.9455 / 0.9460 -> 0.9450 / 0.9469 / 0.9453 (seeds 0-2); street 300 0.9554 for each
            seed either way; the ten real rows unchanged except templeRing unknown 0.8619 -> 0.8610.
        direction_loss_scale: Cauchy scale of that re-weighting (sine of the epipolar angle; 0.002 is ~1.5 px
            at a focal of 800 px); inliers of the last fit lie within 3 times it.
        max_iterations: iteration cap of each LUD solve.
        function_tolerance: a LUD solve stops when an iteration lowers its cost by less than this fraction
            (a start for positioning needs no more than a few digits).
        max_angle_error_deg: after the first LUD solve, directions off their solved baseline by more are
            dropped and LUD solves again; 180 = no second solve.
    """

    min_shared_tracks: int = 10
    min_parallax_deg: float = 1.0
    direction_hypotheses: int = 16
    direction_iterations: int = 5
    direction_loss_scale: float = 0.002
    max_correspondences_per_pair: int = 50
    max_iterations: int = 200
    function_tolerance: float = 1e-6
    max_angle_error_deg: float = 10.0

    def __post_init__(self) -> None:
        check_at_least("min_shared_tracks", self.min_shared_tracks, 2)
        check_range("min_parallax_deg", self.min_parallax_deg, 0, 90, high_open=True)
        check_at_least("direction_hypotheses", self.direction_hypotheses, 0)
        check_at_least("max_correspondences_per_pair", self.max_correspondences_per_pair, 0)
        check_at_least("direction_iterations", self.direction_iterations, 0)
        check_positive("direction_loss_scale", self.direction_loss_scale)
        check_at_least("max_iterations", self.max_iterations, 1)
        check_positive("function_tolerance", self.function_tolerance)
        check_range("max_angle_error_deg", self.max_angle_error_deg, 0, 180, low_open=True)


@dataclass
class TranslationAveragingResult:
    """Outcome of :func:`average_translations`.

    Attributes:
        success: at least two cameras got a centre.
        reason: why not, when ``success`` is False.
        centers: image_id -> (3,) camera centre (world frame of the rotations; arbitrary origin; the
            shortest baselines are about 1).
        report: pair counts, iterations and time.
    """

    success: bool
    reason: str = ""
    centers: dict[int, np.ndarray] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def ray_observations(
    obs_image: np.ndarray, obs_track: np.ndarray, rays_in_cam: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observations of the positioning stages as arrays: ``obs_image`` (M,) int64, ``obs_track`` (M,)
    int64 and ``rays_in_cam`` (M, 3) float64 (bearing of each observation in its camera's frame).

    Raises:
        InputError: arrays of mismatched shapes.
    """
    obs_image = np.asarray(obs_image, dtype=np.int64)
    obs_track = np.asarray(obs_track, dtype=np.int64)
    rays_in_cam = np.asarray(rays_in_cam, dtype=np.float64)
    m = len(obs_image)
    if obs_track.shape != (m,) or rays_in_cam.shape != (m, 3):
        raise InputError(
            f"need obs_image (M,), obs_track (M,), rays_in_cam (M, 3); got {obs_image.shape}, "
            f"{obs_track.shape}, {rays_in_cam.shape}"
        )
    return obs_image, obs_track, rays_in_cam


def track_pairs(obs_image: np.ndarray, obs_track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of observations of one track, ordered so the first has the smaller image id.

    Args:
        obs_image: (M,) image id of each observation; obs_track: (M,) its track (a track sees an image once).

    Returns:
        (first (K,), second (K,)) observation rows with ``obs_image[first] < obs_image[second]``.
    """
    order = np.lexsort((obs_image, obs_track))
    track_sorted = obs_track[order]
    firsts, seconds = [], []
    offset = 1
    while offset < len(order):
        same = track_sorted[offset:] == track_sorted[:-offset]
        if not same.any():
            break
        firsts.append(order[:-offset][same])
        seconds.append(order[offset:][same])
        offset += 1
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def average_translations(
    rotations: dict[int, np.ndarray],
    obs_image: np.ndarray,
    obs_track: np.ndarray,
    rays_in_cam: np.ndarray,
    options: TranslationAveragingOptions | None = None,
    *,
    rng=None,
    progress=None,
) -> TranslationAveragingResult:
    """Camera centres from known rotations and the tracks' rays: pairwise directions, then LUD.

    Args:
        rotations: image_id -> (3, 3) ``cam_from_world`` rotation; observations of other images are ignored.
        obs_image: (M,) image id of each track observation.
        obs_track: (M,) track index of each observation.
        rays_in_cam: (M, 3) viewing ray of each observation in its camera frame (normalised here).
        options: stage options.
        rng: seed or generator of the direction estimates' samples.
        progress: unused; accepted for the common stage signature.

    Returns:
        TranslationAveragingResult with the centres of the largest connected set of directed pairs.

    Raises:
        InputError: arrays of mismatched shapes.
    """
    del progress  # one solve: nothing to report in between
    options = options or TranslationAveragingOptions()
    t0 = time.perf_counter()
    obs_image, obs_track, rays_in_cam = ray_observations(obs_image, obs_track, rays_in_cam)
    image_ids = np.array(sorted(rotations), dtype=np.int64)
    rows = np.flatnonzero(np.isin(obs_image, image_ids))
    image_index = np.searchsorted(image_ids, obs_image[rows])
    rot = np.stack([rotations[int(i)] for i in image_ids]) if len(image_ids) else np.zeros((0, 3, 3))
    rays = np.einsum("kji,kj->ki", rot[image_index], rays_in_cam[rows])  # R^T x: world frame
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    first, second = track_pairs(image_index, obs_track[rows])
    report: dict = {"num_correspondences": len(first)}
    # Pairs of images with enough shared tracks.
    key = image_index[first] * len(image_ids) + image_index[second]
    pair_keys, pair_of, counts = _group_keys(key, len(image_ids) ** 2)
    parallax = np.arccos(np.clip(np.einsum("ki,ki->k", rays[first], rays[second]), -1.0, 1.0))
    median_parallax = np.full(len(pair_keys), np.inf)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    if len(pair_keys):
        # by pair, then by parallax (in [0, pi], so parallax / 4 < 1 never reaches the next pair's index)
        order = _argsort_within_groups(pair_of, parallax / 4.0)
        median_parallax = parallax[order][starts + counts // 2]
    usable = (counts >= options.min_shared_tracks) & (median_parallax >= np.deg2rad(options.min_parallax_deg))
    report["num_pairs"] = int(usable.sum())
    keep = usable[pair_of]
    rng = np.random.default_rng(rng)
    if options.max_correspondences_per_pair and len(pair_keys):
        # a random rank of each correspondence within its pair; the first ones of each pair are kept
        shuffled = _argsort_within_groups(pair_of, rng.random(len(pair_of)))
        rank = np.empty(len(pair_of), dtype=np.int64)
        rank[shuffled] = np.arange(len(pair_of)) - np.repeat(starts, counts)
        keep &= rank < options.max_correspondences_per_pair
    report["num_correspondences_used"] = int(keep.sum())
    new_index = np.cumsum(usable) - 1
    directions, in_front = baseline_directions(
        rays[first[keep]],
        rays[second[keep]],
        new_index[pair_of[keep]],
        int(usable.sum()),
        num_hypotheses=options.direction_hypotheses,
        iterations=options.direction_iterations,
        loss_scale=options.direction_loss_scale,
        rng=rng,
    )
    edges = np.column_stack([pair_keys[usable] // len(image_ids), pair_keys[usable] % len(image_ids)])
    centers, num_edges, iterations = centers_from_directions(edges, directions, len(image_ids), options)
    report.update(
        {
            "num_pairs_kept": num_edges,
            "iterations": iterations,
            "num_images": int(np.isfinite(centers[:, 0]).sum()),
            "time_s": round(time.perf_counter() - t0, 4),
        }
    )
    solved = np.flatnonzero(np.isfinite(centers[:, 0]))
    logger.info(
        "translation averaging: %d of %d images from %d of %d pairs, %s LUD iterations, %.2f s",
        len(solved),
        len(image_ids),
        num_edges,
        report["num_pairs"],
        iterations,
        report["time_s"],
    )
    if len(solved) < 2:
        return TranslationAveragingResult(
            False, "fewer than two images joined by usable pairs", report=report
        )
    return TranslationAveragingResult(
        True, "", {int(image_ids[k]): centers[k] for k in solved.tolist()}, report
    )


def _group_keys(key: np.ndarray, key_bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True, return_counts=True)`` for non-negative integer keys below
    ``key_bound``: by counting when the bound is small (image pairs: at most images^2 keys), else by sorting.
    """
    if key_bound > 4 * len(key) + 1_000_000:
        return np.unique(key, return_inverse=True, return_counts=True)
    counts = np.bincount(key, minlength=key_bound)
    keys = np.flatnonzero(counts)
    group = np.zeros(key_bound, dtype=np.int64)
    group[keys] = np.arange(len(keys))
    return keys, group[key], counts[keys]


def _argsort_within_groups(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The order by ``group`` (ints), then by ``value`` (floats in [0, 1)): ``np.lexsort((value, group))``
    by one quicksort of ``group + value`` (a third of the time at 2M correspondences; values closer than
    the float spacing at the group's index, ~1e-12, may swap)."""
    return np.argsort(group + value)


def _largest_component(edges: np.ndarray) -> np.ndarray:
    """Bool per edge: both cameras lie in the largest connected component of the edges' graph."""
    graph = nx.Graph()
    graph.add_edges_from(edges.tolist())
    if graph.number_of_nodes() == 0:
        return np.zeros(len(edges), dtype=bool)
    largest = max(nx.connected_components(graph), key=len)
    return np.isin(edges[:, 0], list(largest))


def centers_from_directions(
    edges: np.ndarray, directions: np.ndarray, num_cameras: int, options: TranslationAveragingOptions
) -> tuple[np.ndarray, int, list[int]]:
    """LUD on the largest component, then again without the directions it leaves far off.

    Args:
        edges: (E, 2) camera indices ``(i, j)`` in [0, num_cameras).
        directions: (E, 3) unit direction of ``c_j - c_i`` (world frame).
        num_cameras: C.
        options: ``max_iterations``, ``function_tolerance`` and ``max_angle_error_deg`` apply.

    Returns:
        (centers (C, 3), NaN for cameras without one; edges used by the last solve; iterations per solve).
    """
    centers = np.full((num_cameras, 3), np.nan)
    iterations: list[int] = []
    start = None
    for solve in range(2):
        keep = _largest_component(edges)
        if keep.sum() == 0:
            return centers, 0, iterations
        cams, local = np.unique(edges[keep], return_inverse=True)
        local = local.reshape(-1, 2)
        solution, _, its = lud_centers(
            local,
            directions[keep],
            len(cams),
            initial_centers=None if start is None else start[cams],
            max_iterations=options.max_iterations,
            function_tolerance=options.function_tolerance,
        )
        iterations.append(its)
        centers = np.full((num_cameras, 3), np.nan)
        centers[cams] = solution
        edges, directions = edges[keep], directions[keep]
        if solve == 1 or options.max_angle_error_deg >= 180:
            break
        baselines = centers[edges[:, 1]] - centers[edges[:, 0]]
        cos = np.einsum("ei,ei->e", baselines, directions) / np.maximum(
            np.linalg.norm(baselines, axis=1), 1e-300
        )
        good = cos >= np.cos(np.deg2rad(options.max_angle_error_deg))
        if good.all():
            break
        edges, directions, start = edges[good], directions[good], centers
    return centers, len(edges), iterations
