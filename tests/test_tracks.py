"""sfm.tracks: union-find tracks from hand-made matches, conflicts, statistics."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.scene.types import Matches
from geomvision.sfm.tracks import build_track_arrays, build_tracks, track_length_stats


def test_chains_merge_into_tracks():
    pair_matches = {
        (1, 2): np.array([[0, 5], [1, 6], [2, 7]]),
        (2, 3): np.array([[5, 9], [6, 8]]),
        (1, 3): np.array([[0, 9]]),  # closes the loop of track {1:0, 2:5, 3:9}
        (3, 4): Matches(3, 4, np.array([[8, 0]])),
    }
    tracks = build_tracks(pair_matches)
    as_sets = sorted(sorted(t.elements) for t in tracks)
    assert as_sets == [
        [(1, 0), (2, 5), (3, 9)],
        [(1, 1), (2, 6), (3, 8), (4, 0)],
        [(1, 2), (2, 7)],
    ]
    stats = track_length_stats(tracks)
    assert stats["num_tracks"] == 3 and stats["num_observations"] == 9
    assert stats["max_length"] == 4 and stats["histogram"] == {2: 1, 3: 1, 4: 1}
    assert stats["mean_length"] == pytest.approx(3.0)
    assert track_length_stats(build_track_arrays(pair_matches)) == stats


def test_conflicting_track_is_dropped():
    # Keypoint 0 of image 1 reaches keypoints 3 AND 4 of image 2 (via image 3): inconsistent.
    pair_matches = {
        (1, 2): np.array([[0, 3], [7, 7]]),
        (1, 3): np.array([[0, 1], [7, 2]]),
        (2, 3): np.array([[4, 1], [7, 2]]),
    }
    arrays = build_track_arrays(pair_matches)
    assert arrays.num_conflicting == 1
    tracks = build_tracks(pair_matches)
    assert [sorted(t.elements) for t in tracks] == [[(1, 7), (2, 7), (3, 2)]]


def test_min_length_and_empty():
    assert build_tracks({}) == []
    assert track_length_stats([])["num_tracks"] == 0
    pair_matches = {(1, 2): np.array([[0, 0]]), (2, 3): np.array([[1, 1]]), (3, 4): np.array([[1, 0]])}
    assert len(build_tracks(pair_matches, min_length=3)) == 1


def test_large_random_tracks_equal_graph_components(rng):
    # Ground-truth tracks: point p is keypoint perm_k[p] in image k; each pair matches half the points.
    num_points, num_images = 2000, 6
    perms = [rng.permutation(num_points) for _ in range(num_images)]
    pair_matches = {}
    for i in range(num_images):
        for j in range(i + 1, num_images):
            pts = rng.choice(num_points, num_points // 2, replace=False)
            pair_matches[(i + 1, j + 1)] = np.stack([perms[i][pts], perms[j][pts]], axis=1)
    arrays = build_track_arrays(pair_matches)
    # Reference: connected components of the observation graph by networkx.
    graph = nx.Graph()
    for (i, j), m in pair_matches.items():
        graph.add_edges_from(((i, int(a)), (j, int(b))) for a, b in m)
    expected = {frozenset(c) for c in nx.connected_components(graph)}
    got = {
        frozenset(
            zip(
                arrays.image_ids[arrays.track_index == t].tolist(),
                arrays.keypoint_indices[arrays.track_index == t].tolist(),
                strict=True,
            )
        )
        for t in range(arrays.num_tracks)
    }
    assert got == expected and arrays.num_conflicting == 0
    # Every track maps back to a single ground-truth point.
    point_of = np.array([np.argsort(perms[k]) for k in range(num_images)])
    gt_point = point_of[arrays.image_ids - 1, arrays.keypoint_indices]
    first = np.zeros(arrays.num_tracks, np.int64)
    first[arrays.track_index] = gt_point
    assert np.all(gt_point == first[arrays.track_index])


def test_bad_input():
    with pytest.raises(InputError, match=r"\(K, 2\)"):
        build_tracks({(1, 2): np.zeros((3, 3), int)})
    with pytest.raises(InputError, match="itself"):
        build_tracks({(1, 1): np.zeros((3, 2), int)})
