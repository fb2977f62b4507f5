"""sfm.view_graph: construction, pruning, components, spanning tree, rotation cycles, I/O, drawing."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix
from geomvision.scene.types import TwoViewGeometry
from geomvision.sfm.view_graph import (
    build_view_graph,
    connected_components,
    draw_view_graph,
    filter_rotation_cycles,
    largest_component,
    load_view_graph,
    maximum_spanning_tree,
    prune_view_graph,
    relative_pose,
    rotation_cycle_errors_deg,
    save_view_graph,
)


def _tvg(i, j, n, pose=None, config="calibrated", success=True):
    return TwoViewGeometry(
        i,
        j,
        config,
        inlier_matches=np.zeros((n, 2), np.int64),
        cam2_from_cam1=pose,
        median_triangulation_angle_deg=3.0,
        success=success,
    )


@pytest.fixture
def posed(rng):
    """5 cameras with exact absolute rotations; all 10 pairs carry exact relative poses."""
    cams = [Rigid3d(rotvec_to_matrix(rng.normal(scale=0.5, size=3)), rng.normal(size=3)) for _ in range(5)]
    tvgs = {}
    for i in range(5):
        for j in range(i + 1, 5):
            rel = cams[j] @ cams[i].inverse()
            rel = Rigid3d(rel.rotation, rel.translation / np.linalg.norm(rel.translation))
            tvgs[(i + 1, j + 1)] = _tvg(i + 1, j + 1, 100 + 10 * i + j, rel)
    return cams, tvgs


def test_build_and_structure():
    tvgs = {
        (1, 2): _tvg(1, 2, 50),
        (2, 3): _tvg(2, 3, 40),
        (1, 3): _tvg(1, 3, 10),  # below min_inliers
        (4, 5): _tvg(4, 5, 30),
        (3, 4): _tvg(3, 4, 99, config="rejected", success=False),
    }
    names = {k: f"im{k}.png" for k in range(1, 7)}
    g = build_view_graph(tvgs, names, min_inliers=15)
    assert sorted(g.nodes) == [1, 2, 3, 4, 5, 6] and g.nodes[6]["name"] == "im6.png"
    assert sorted(g.edges) == [(1, 2), (2, 3), (4, 5)]
    assert g.edges[1, 2]["weight"] == 50 and g.edges[1, 2]["config"] == "calibrated"
    assert connected_components(g) == [{1, 2, 3}, {4, 5}, {6}]
    assert sorted(largest_component(g).nodes) == [1, 2, 3]


def test_prune_and_spanning_tree():
    tvgs = {
        (1, 2): _tvg(1, 2, 100),
        (1, 3): _tvg(1, 3, 90),
        (2, 3): _tvg(2, 3, 20),
        (3, 4): _tvg(3, 4, 50),
        (1, 4): _tvg(1, 4, 30),
    }
    g = build_view_graph(tvgs)
    tree = maximum_spanning_tree(g)
    assert sorted(tree.edges) == [(1, 2), (1, 3), (3, 4)]
    assert sorted(prune_view_graph(g, min_inliers=40).edges) == [(1, 2), (1, 3), (3, 4)]
    # top-1: each node keeps its heaviest edge -> 1:(1,2) 2:(1,2) 3:(1,3) 4:(3,4).
    assert sorted(prune_view_graph(g, top_k=1).edges) == [(1, 2), (1, 3), (3, 4)]
    assert g.number_of_edges() == 5  # pruning returns a copy
    with pytest.raises(InputError, match="top_k"):
        prune_view_graph(g, top_k=0)


def test_rotation_cycles_remove_the_corrupted_edge(posed):
    cams, tvgs = posed
    g = build_view_graph(tvgs)
    _, errors = rotation_cycle_errors_deg(g)
    assert len(errors) == 10 and np.max(errors) < 1e-8
    # Corrupt edge (2, 4) by 20 degrees about some axis.
    bad = tvgs[(2, 4)].cam2_from_cam1
    tvgs[(2, 4)] = _tvg(
        2, 4, 500, Rigid3d(rotvec_to_matrix([0.0, np.deg2rad(20), 0.0]) @ bad.rotation, bad.translation)
    )
    g = build_view_graph(tvgs)
    filtered, removed = filter_rotation_cycles(g, max_error_deg=2.0)
    assert removed == [(2, 4)]
    assert filtered.number_of_edges() == 9 and not filtered.has_edge(2, 4)
    _, errors = rotation_cycle_errors_deg(filtered)
    assert np.max(errors) < 1e-8


def test_relative_pose_direction(posed):
    cams, tvgs = posed
    g = build_view_graph(tvgs)
    np.testing.assert_allclose(
        relative_pose(g, 3, 1).rotation, (cams[0] @ cams[2].inverse()).rotation, atol=1e-12
    )


@pytest.mark.parametrize("suffix", [".json", ".graphml"])
def test_save_load_round_trip(posed, tmp_path, suffix):
    _, tvgs = posed
    g = build_view_graph(tvgs, {k: f"{k:03d}.jpg" for k in range(1, 7)})
    path = tmp_path / f"graph{suffix}"
    save_view_graph(g, path)
    back = load_view_graph(path)
    assert sorted(back.nodes) == sorted(g.nodes) and back.nodes[6]["name"] == "006.jpg"
    assert sorted(back.edges) == sorted(g.edges)
    for u, v, data in g.edges(data=True):
        other = back.edges[u, v]
        assert other["weight"] == data["weight"] and other["config"] == data["config"]
        np.testing.assert_array_equal(other["cam2_from_cam1"].rotation, data["cam2_from_cam1"].rotation)
        np.testing.assert_array_equal(other["cam2_from_cam1"].translation, data["cam2_from_cam1"].translation)
    with pytest.raises(InputError, match="json or .graphml"):
        save_view_graph(g, tmp_path / "g.txt")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        load_view_graph(tmp_path / "broken.json")


def test_draw_writes_png(posed, tmp_path):
    _, tvgs = posed
    path = tmp_path / "graph.png"
    draw_view_graph(build_view_graph(tvgs), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
