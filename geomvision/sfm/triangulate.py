"""Triangulation inside the incremental mapper: new tracks, track continuation, retriangulation, filtering.

Every function works on a :class:`~geomvision.sfm.mapper_state.MapperState` and is vectorised over
observations: candidate tracks are gathered as flat observation rows, triangulated in one batched
N-view DLT (H&Z 12.2, :func:`geomvision.geometry.triangulation.triangulate_nview`) in undistorted
normalised coordinates, and checked with per-observation reprojection errors, depths (cheirality,
H&Z 21.1) and the largest triangulation angle per point.

There is one 3D point per track. Tracks come from the union-find over verified matches
(:func:`geomvision.sfm.tracks.build_tracks`), which already joins every observation that could belong
to the same point, so COLMAP's separate "merge" step is not needed: two points never share a track.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.triangulation import triangulate_nview
from geomvision.sfm.mapper_state import MapperState, max_triangulation_angle_deg

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TriangulationOptions:
    """Thresholds of the mapper's triangulation and filtering steps.

    Attributes:
        max_error_px: an observation joins a new or existing point only if it reprojects within this.
        min_tri_angle_deg: new points need at least this largest angle between their viewing rays.
        filter_max_error_px: observations of existing points beyond this are removed by filtering.
        filter_min_tri_angle_deg: filtering deletes points whose largest ray angle fell below this.
    """

    max_error_px: float = 4.0
    min_tri_angle_deg: float = 1.5
    filter_max_error_px: float = 4.0
    filter_min_tri_angle_deg: float = 1.5

    def __post_init__(self) -> None:
        for name in ("max_error_px", "filter_max_error_px"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_tri_angle_deg", "filter_min_tri_angle_deg"):
            if not 0 <= getattr(self, name) < 90:
                raise InputError(f"{name} must be in [0, 90), got {getattr(self, name)}")


@dataclass
class TriangulationStats:
    """Counts of one triangulation / continuation / filtering call."""

    num_candidates: int = 0
    num_created: int = 0
    num_continued: int = 0
    num_filtered_observations: int = 0
    num_filtered_points: int = 0


def _dense_index(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique sorted values, position of each entry in them)."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    return uniq, inverse


def _triangulate_rows(state: MapperState, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N-view DLT of the tracks of ``rows`` (each track must appear in >= 2 rows).

    Returns:
        (tracks (P,), xyz (P, 3) with NaN for points at infinity, local index (K,) of each row).
    """
    tracks, local = _dense_index(state.table.obs_track[rows])
    images = state.table.obs_image[rows]
    projections = np.concatenate([state.rotations[images], state.translations[images][:, :, None]], axis=2)
    xyz = triangulate_nview(projections, state.obs_xn[rows], local, len(tracks))
    return tracks, xyz, local


def _groups_with_min_count(local: np.ndarray, num: int, min_count: int) -> np.ndarray:
    return np.bincount(local, minlength=num) >= min_count


def _group_layout(local: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by group: (start row of each group, group sizes)."""
    sizes = np.bincount(local, minlength=num)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return starts, sizes


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for every (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    rel = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + rel


def _robust_rows(state: MapperState, rows: np.ndarray, max_error_px: float, max_first: int = 4) -> np.ndarray:
    """Per track, the inliers of the best two-view hypothesis (RANSAC over observation pairs, exhaustive).

    For every track, each pair of observations (a, b) with a among its first ``max_first`` observations
    is triangulated (all pairs for tracks of up to ``max_first + 1`` views); the hypothesis with the
    most observations within ``max_error_px`` (then the lowest truncated error) wins. This is the
    multi-view RANSAC of COLMAP's triangulator, evaluated for all tracks at once.

    Args:
        rows: observation rows sorted by track.

    Returns:
        The rows that are inliers of their track's best hypothesis.
    """
    tracks, local = np.unique(state.table.obs_track[rows], return_inverse=True)
    starts, sizes = _group_layout(local, len(tracks))
    hyp_group, hyp_a, hyp_b = [], [], []
    for a in range(max_first):
        groups = np.flatnonzero(sizes > a + 1)
        counts = sizes[groups] - a - 1
        b = _ranges(np.full(len(groups), a + 1), counts)
        hyp_group.append(np.repeat(groups, counts))
        hyp_a.append(np.full(int(counts.sum()), a))
        hyp_b.append(b)
    hyp_group = np.concatenate(hyp_group)
    if hyp_group.size == 0:
        return np.zeros(0, dtype=np.int64)
    pair_rows = np.stack(
        [rows[starts[hyp_group] + np.concatenate(hyp_a)], rows[starts[hyp_group] + np.concatenate(hyp_b)]],
        axis=1,
    ).reshape(-1)
    images = state.table.obs_image[pair_rows]
    projections = np.concatenate([state.rotations[images], state.translations[images][:, :, None]], axis=2)
    num_hyp = len(hyp_group)
    xyz = triangulate_nview(projections, state.obs_xn[pair_rows], np.repeat(np.arange(num_hyp), 2), num_hyp)
    finite = np.all(np.isfinite(xyz), axis=1)
    # Score every hypothesis on all observations of its track.
    eval_pos = _ranges(starts[hyp_group], sizes[hyp_group])
    eval_hyp = np.repeat(np.arange(num_hyp), sizes[hyp_group])
    eval_rows = rows[eval_pos]
    errors, _ = state.errors_for_points(eval_rows, np.where(finite[eval_hyp, None], xyz[eval_hyp], 0.0))
    errors = np.where(finite[eval_hyp], errors, np.inf)
    inlier = errors <= max_error_px
    num_inliers = np.bincount(eval_hyp, weights=inlier, minlength=num_hyp)
    cost = np.bincount(eval_hyp, weights=np.minimum(errors, max_error_px), minlength=num_hyp)
    order = np.lexsort((cost, -num_inliers, hyp_group))
    first_of_group = np.r_[True, hyp_group[order][1:] != hyp_group[order][:-1]]
    best = np.zeros(num_hyp, dtype=bool)
    best[order[first_of_group]] = True
    return eval_rows[best[eval_hyp] & inlier]


def _checked_points(
    state: MapperState, rows: np.ndarray, max_error_px: float, min_angle_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangulate tracks and keep points whose observations reproject within the threshold.

    All tracks are first triangulated from all their observations (one batched DLT). Tracks with any
    observation beyond ``max_error_px`` go through :func:`_robust_rows` (a single outlier drags a
    least-squares fit so that good views look bad too), and are re-triangulated from its inliers.
    Accepted points have >= 2 observations within the threshold, finite coordinates and a largest
    triangulation angle >= ``min_angle_deg``.

    Returns:
        (tracks (P,) accepted, xyz (P, 3), rows (K,) of their accepted observations).
    """
    empty = np.zeros(0, dtype=np.int64)
    if rows.size == 0:
        return empty, np.zeros((0, 3)), empty
    rows = rows[np.argsort(state.table.obs_track[rows], kind="stable")]
    tracks, xyz, local = _triangulate_rows(state, rows)
    finite = np.all(np.isfinite(xyz), axis=1)
    errors, _ = state.errors_for_points(rows, np.where(finite[local, None], xyz[local], 0.0))
    bad_obs = ~finite[local] | (errors > max_error_px)
    bad_track = np.zeros(len(tracks), dtype=bool)
    bad_track[local[bad_obs]] = True
    rows = np.concatenate(
        [rows[~bad_track[local]], _robust_rows(state, rows[bad_track[local]], max_error_px)]
    )
    rows = rows[np.argsort(state.table.obs_track[rows], kind="stable")]
    counts = np.bincount(state.table.obs_track[rows], minlength=state.table.num_tracks)
    rows = rows[counts[state.table.obs_track[rows]] >= 2]
    if rows.size == 0:
        return empty, np.zeros((0, 3)), empty
    tracks, xyz, local = _triangulate_rows(state, rows)
    finite = np.all(np.isfinite(xyz), axis=1)
    xyz_obs = np.where(finite[local, None], xyz[local], 0.0)
    angles = max_triangulation_angle_deg(
        state.centers[state.table.obs_image[rows]], xyz_obs, local, len(tracks)
    )
    errors, _ = state.errors_for_points(rows, xyz_obs)
    obs_ok = finite[local] & (errors <= max_error_px)
    ok = finite & (angles >= min_angle_deg) & _groups_with_min_count(local[obs_ok], len(tracks), 2)
    return tracks[ok], xyz[ok], rows[obs_ok & ok[local]]


def triangulate_tracks(
    state: MapperState,
    tracks: np.ndarray | None,
    options: TriangulationOptions,
    min_observations: int = 2,
) -> TriangulationStats:
    """Create points for tracks without one that are seen by >= ``min_observations`` registered images.

    Args:
        state: mapper state (modified in place).
        tracks: candidate track indices, or None for every track.
        options: thresholds.
        min_observations: tracks with fewer registered observations are left alone (a caller that deletes
            shorter points anyway need not triangulate them; the global mapper, whose images are all
            registered up front, would otherwise triangulate and delete its two-view tracks every round).

    Returns:
        Counts (candidates with >= ``min_observations`` registered observations, points created).
    """
    candidates = (
        np.arange(state.table.num_tracks) if tracks is None else np.unique(np.asarray(tracks, np.int64))
    )
    candidates = candidates[~state.track_has_point[candidates]]
    rows = state.track_rows(candidates)
    rows = rows[state.is_registered[state.table.obs_image[rows]]]
    local = np.searchsorted(candidates, state.table.obs_track[rows])  # candidates is sorted and unique
    counts = np.bincount(local, minlength=len(candidates))
    rows = rows[counts[local] >= min_observations]
    stats = TriangulationStats(num_candidates=int(np.count_nonzero(counts >= min_observations)))
    new_tracks, xyz, good_rows = _checked_points(state, rows, options.max_error_px, options.min_tri_angle_deg)
    state.track_xyz[new_tracks] = xyz
    state.track_has_point[new_tracks] = True
    state.obs_active[good_rows] = True
    stats.num_created = len(new_tracks)
    return stats


def continue_tracks(state: MapperState, tracks: np.ndarray | None, max_error_px: float) -> int:
    """Add registered, not yet used observations of existing points that reproject within the threshold.

    Returns:
        Number of observations added.
    """
    candidates = state.point_ids() if tracks is None else np.unique(np.asarray(tracks, np.int64))
    candidates = candidates[state.track_has_point[candidates]]
    rows = state.track_rows(candidates)
    rows = rows[~state.obs_active[rows] & state.is_registered[state.table.obs_image[rows]]]
    if rows.size == 0:
        return 0
    errors, _ = state.observation_errors(rows)
    add = rows[errors <= max_error_px]
    # A track may not use two keypoints of one image: tracks from build_tracks never do, but keep it safe.
    state.obs_active[add] = True
    return int(add.size)


def filter_points(
    state: MapperState, tracks: np.ndarray | None, max_error_px: float, min_tri_angle_deg: float
) -> TriangulationStats:
    """Remove observations with large reprojection error or negative depth, then weak points.

    Points left with fewer than two observations, or whose largest triangulation angle is below
    ``min_tri_angle_deg`` (badly conditioned depth), are deleted.

    Args:
        state: mapper state (modified in place).
        tracks: points to check, or None for all.
        max_error_px: reprojection error threshold in pixels.
        min_tri_angle_deg: minimum largest ray angle in degrees.
    """
    points = state.point_ids() if tracks is None else np.unique(np.asarray(tracks, np.int64))
    points = points[state.track_has_point[points]]
    stats = TriangulationStats(num_candidates=len(points))
    if points.size == 0:
        return stats
    rows = state.track_rows(points)
    rows = rows[state.obs_active[rows]]
    errors, _ = state.observation_errors(rows)  # inf for negative depth
    bad = errors > max_error_px
    state.obs_active[rows[bad]] = False
    stats.num_filtered_observations = int(bad.sum())
    # points is sorted: count per point through its position (not over all tracks: local steps stay O(local))
    local = np.searchsorted(points, state.table.obs_track[rows[~bad]])
    remaining = np.bincount(local, minlength=len(points))
    too_short = points[remaining < 2]
    state.delete_points(too_short)
    points = points[remaining >= 2]
    angles = state.triangulation_angles_deg(points)
    too_flat = points[angles < min_tri_angle_deg]
    state.delete_points(too_flat)
    stats.num_filtered_points = int(too_short.size + too_flat.size)
    return stats


def move_points(state: MapperState, tracks: np.ndarray) -> None:
    """Re-triangulate existing points from their active observations (one batched N-view DLT) after
    their cameras moved; a point whose DLT is at infinity is deleted. Outliers are the filter's job.

    Args:
        state: mapper state (modified in place).
        tracks: (P,) sorted track ids of points.
    """
    rows = state.track_rows(tracks)
    rows = rows[state.obs_active[rows]]
    if rows.size == 0:
        return
    moved, xyz, _ = _triangulate_rows(state, rows)
    finite = np.all(np.isfinite(xyz), axis=1)
    state.track_xyz[moved[finite]] = xyz[finite]
    state.delete_points(moved[~finite])


def retriangulate(
    state: MapperState, options: TriangulationOptions, min_observations: int = 2
) -> TriangulationStats:
    """After bundle adjustment: continue every point's track and triangulate tracks that failed before
    (those with at least ``min_observations`` registered observations: ``triangulate_tracks``)."""
    continued = continue_tracks(state, None, options.max_error_px)
    stats = triangulate_tracks(state, None, options, min_observations)
    stats.num_continued = continued
    return stats


def tracks_in_image(state: MapperState, image_id: int) -> np.ndarray:
    """Track indices with an observation in the image."""
    return np.unique(state.table.obs_track[state.table.image_obs[image_id]])
