"""Feature tracks: connected components of pairwise (verified) matches.

Every observation ``(image_id, keypoint_index)`` is a node, every match an edge; a track is a
connected component. Components are found with scipy's sparse connected-components (the union-find
of COLMAP's correspondence graph, vectorised). A component holding two keypoints of one image is
inconsistent (some match in it is wrong) and is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geomvision.errors import InputError
from geomvision.scene.types import Track

logger = logging.getLogger(__name__)


@dataclass
class TrackArrays:
    """Tracks as flat arrays, sorted by track then image.

    Attributes:
        track_index: (M,) int64 track of each observation (0..T-1).
        image_ids: (M,) int64.
        keypoint_indices: (M,) int64.
        num_conflicting: number of components dropped because they saw one image twice.
    """

    track_index: np.ndarray
    image_ids: np.ndarray
    keypoint_indices: np.ndarray
    num_conflicting: int = 0

    @property
    def num_tracks(self) -> int:
        return int(self.track_index.max()) + 1 if len(self.track_index) else 0


def _match_array(value) -> np.ndarray:
    """Accept a (K, 2) array, a ``TwoViewGeometry`` (inlier_matches) or ``Matches`` (indices)."""
    for attr in ("inlier_matches", "indices"):
        if hasattr(value, attr):
            value = getattr(value, attr)
            break
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"pair matches must have shape (K, 2), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise InputError(f"pair matches must be non-negative integers, got {arr.dtype} min {arr.min()}")
    return arr.astype(np.int64)


def build_track_arrays(pair_matches: Mapping[tuple[int, int], object], *, min_length: int = 2) -> TrackArrays:
    """Vectorised track building; see :func:`build_tracks`."""
    edges_i, edges_j = [], []
    for (i, j), value in pair_matches.items():
        m = _match_array(value)
        if int(i) == int(j):
            raise InputError(f"pair ({i}, {j}) matches an image with itself")
        edges_i.append(np.stack([np.full(len(m), int(i)), m[:, 0]], axis=1))
        edges_j.append(np.stack([np.full(len(m), int(j)), m[:, 1]], axis=1))
    if not edges_i:
        empty = np.zeros(0, np.int64)
        return TrackArrays(empty, empty, empty)
    obs_a, obs_b = np.concatenate(edges_i), np.concatenate(edges_j)
    # Dense node numbering: unique (image_id, keypoint) rows, sorted by image then keypoint. One int64
    # key per row sorts like the rows (and ~30x faster than np.unique(axis=0) on 1.4M rows).
    rows = np.concatenate([obs_a, obs_b])
    stride = int(rows[:, 1].max()) + 1
    if rows.min() >= 0 and int(rows[:, 0].max()) < np.iinfo(np.int64).max // stride:
        keys, inverse = np.unique(rows[:, 0] * stride + rows[:, 1], return_inverse=True)
        nodes = np.stack([keys // stride, keys % stride], axis=1)
    else:
        nodes, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    a, b = inverse[: len(obs_a)], inverse[len(obs_a) :]
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # nodes are sorted by (image, keypoint); a stable sort by label keeps that order inside tracks.
    order = np.argsort(labels, kind="stable")
    labels_sorted = labels[order]
    images_sorted = nodes[order, 0]
    sizes = np.bincount(labels)
    # A component sees some image twice iff two consecutive entries share label and image.
    dup = (labels_sorted[1:] == labels_sorted[:-1]) & (images_sorted[1:] == images_sorted[:-1])
    conflicting = np.zeros(len(sizes), bool)
    conflicting[labels_sorted[1:][dup]] = True
    keep_label = (sizes >= min_length) & ~conflicting
    keep = keep_label[labels_sorted]
    new_index = np.cumsum(keep_label) - 1
    num_conflicting = int(np.count_nonzero(conflicting & (sizes >= min_length)))
    if num_conflicting:
        logger.info("dropped %d tracks that saw one image twice", num_conflicting)
    return TrackArrays(
        track_index=new_index[labels_sorted[keep]].astype(np.int64),
        image_ids=nodes[order[keep], 0].astype(np.int64),
        keypoint_indices=nodes[order[keep], 1].astype(np.int64),
        num_conflicting=num_conflicting,
    )


def build_tracks(pair_matches: Mapping[tuple[int, int], object], *, min_length: int = 2) -> list[Track]:
    """Tracks from pairwise matches.

    Args:
        pair_matches: (image_id_i, image_id_j) -> (K, 2) int keypoint indices into (i, j); a
            ``TwoViewGeometry`` (its inlier matches) or ``Matches`` is accepted as the value.
        min_length: drop tracks with fewer observations.

    Returns:
        Tracks (elements sorted by image id), ordered by their smallest (image_id, keypoint); tracks
        that observe one image twice are dropped.
    """
    arrays = build_track_arrays(pair_matches, min_length=min_length)
    if arrays.num_tracks == 0:
        return []
    bounds = np.flatnonzero(np.diff(arrays.track_index)) + 1
    pairs = np.stack([arrays.image_ids, arrays.keypoint_indices], axis=1).tolist()
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(pairs)]]).tolist()
    return [Track([(int(i), int(k)) for i, k in pairs[s:e]]) for s, e in zip(starts, ends, strict=True)]


def track_length_stats(tracks: list[Track] | TrackArrays) -> dict[str, float | int]:
    """Count, mean/median/max length and a length histogram ``{length: count}`` of tracks."""
    if isinstance(tracks, TrackArrays):
        lengths = np.bincount(tracks.track_index) if len(tracks.track_index) else np.zeros(0, np.int64)
    else:
        lengths = np.array([len(t) for t in tracks], dtype=np.int64)
    if len(lengths) == 0:
        return {
            "num_tracks": 0,
            "num_observations": 0,
            "mean_length": 0.0,
            "median_length": 0.0,
            "max_length": 0,
            "histogram": {},
        }
    values, counts = np.unique(lengths, return_counts=True)
    return {
        "num_tracks": int(len(lengths)),
        "num_observations": int(lengths.sum()),
        "mean_length": float(lengths.mean()),
        "median_length": float(np.median(lengths)),
        "max_length": int(lengths.max()),
        "histogram": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
    }
