"""Rotation averaging: maths (geometry.rotation_averaging) and the view-graph stage (sfm.rotation_averaging)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotation_angle_deg
from geomvision.geometry.rotation_averaging import (
    align_rotations,
    choose_relative_candidates,
    irls_rotation_averaging,
    relative_rotation_residuals_rad,
    rotations_from_spanning_tree,
    vote_rotations,
)
from geomvision.scene import TwoViewGeometry
from geomvision.sfm.rotation_averaging import RotationAveragingOptions, average_rotations


def _noisy_graph(num_nodes, edge_prob, noise_deg, outlier_ratio, seed):
    """Random rotations, a random edge set, relative rotations with noise (angle ~noise_deg) and outliers."""
    rng = np.random.default_rng(seed)
    truth = Rotation.random(num_nodes, random_state=seed).as_matrix()
    edges = np.array(
        [(i, j) for i in range(num_nodes) for j in range(i + 1, num_nodes) if rng.random() < edge_prob]
    )
    relative = truth[edges[:, 1]] @ np.swapaxes(truth[edges[:, 0]], 1, 2)
    # Per-axis sigma noise/sqrt(3): the noise rotation's RMS angle is noise_deg.
    noise = Rotation.from_rotvec(rng.normal(size=(len(edges), 3)) * np.deg2rad(noise_deg) / np.sqrt(3))
    relative = noise.as_matrix() @ relative
    outlier = rng.random(len(edges)) < outlier_ratio
    relative[outlier] = Rotation.random(int(outlier.sum()), random_state=seed + 1).as_matrix()
    return truth, edges, relative, outlier


def _solve(edges, relative, num_nodes):
    start = rotations_from_spanning_tree(num_nodes, edges, relative)
    rotations, _ = irls_rotation_averaging(start, edges, relative, loss="l1", max_iterations=10)
    rotations, iterations = irls_rotation_averaging(rotations, edges, relative, loss="geman_mcclure")
    return rotations, iterations


def test_exact_relative_rotations_are_reproduced_exactly():
    truth, edges, relative, _ = _noisy_graph(12, 0.5, 0.0, 0.0, seed=3)
    rotations, _ = _solve(edges, relative, 12)
    aligned, _ = align_rotations(rotations, truth)
    assert rotation_angle_deg(aligned, truth).max() < 1e-6
    assert relative_rotation_residuals_rad(rotations, edges, relative).max() < 1e-8


def test_noise_and_twenty_percent_outliers_stay_under_a_tenth_of_a_degree():
    truth, edges, relative, outlier = _noisy_graph(50, 1.0, 0.5, 0.2, seed=1)
    assert 0.17 < outlier.mean() < 0.23
    tree_only = rotations_from_spanning_tree(50, edges, relative)
    tree_error = rotation_angle_deg(align_rotations(tree_only, truth)[0], truth)
    assert tree_error.max() > 10  # chaining through outlier edges: the refinement has work to do
    rotations, iterations = _solve(edges, relative, 50)
    errors = rotation_angle_deg(align_rotations(rotations, truth)[0], truth)
    assert errors.mean() < 0.1 and errors.max() < 0.2  # degrees, after removing the gauge
    assert iterations < 50
    # As good as least squares on the inlier edges alone (the oracle that knows the outliers).
    oracle, _ = irls_rotation_averaging(rotations, edges[~outlier], relative[~outlier], loss="l2")
    oracle_errors = rotation_angle_deg(align_rotations(oracle, truth)[0], truth)
    assert errors.mean() < 1.05 * oracle_errors.mean()
    # Residuals separate the outlier edges from the inliers.
    residuals = np.degrees(relative_rotation_residuals_rad(rotations, edges, relative))
    assert residuals[~outlier].max() < 5.0 < residuals[outlier].min()


def test_spanning_tree_chaining_and_alignment():
    truth = Rotation.random(4, random_state=0).as_matrix()
    edges = np.array([[0, 1], [2, 1], [2, 3]])  # (2, 1) walks the edge backwards from node 1
    relative = truth[edges[:, 1]] @ np.swapaxes(truth[edges[:, 0]], 1, 2)
    rotations = rotations_from_spanning_tree(4, edges, relative, root=1)
    np.testing.assert_allclose(rotations[1], np.eye(3), atol=1e-12)
    aligned, world = align_rotations(rotations, truth)
    np.testing.assert_allclose(aligned, truth, atol=1e-12)
    np.testing.assert_allclose(rotations, truth @ world, atol=1e-12)
    unreachable = rotations_from_spanning_tree(5, edges, relative)
    assert np.isnan(unreachable[4]).all()


def test_bad_input_raises():
    rel = np.tile(np.eye(3), (1, 1, 1))
    with pytest.raises(InputError, match="out of range"):
        rotations_from_spanning_tree(2, np.array([[0, 5]]), rel)
    with pytest.raises(InputError, match="shape"):
        relative_rotation_residuals_rad(np.tile(np.eye(3), (2, 1, 1)), np.array([[0, 1]]), np.eye(3))
    with pytest.raises(InputError, match="NaN"):
        irls_rotation_averaging(np.full((2, 3, 3), np.nan), np.array([[0, 1]]), rel)
    with pytest.raises(InputError, match="max_residual_deg"):
        RotationAveragingOptions(max_residual_deg=0)


def _pairs_from(truth, edges, relative, inliers=100, id_offset=1):
    pairs = {}
    for (a, b), rel in zip(edges.tolist(), relative, strict=True):
        i, j = a + id_offset, b + id_offset
        matches = np.stack([np.arange(inliers), np.arange(inliers)], axis=1)
        pairs[(i, j)] = TwoViewGeometry(
            i, j, "calibrated", matches, cam2_from_cam1=Rigid3d(rel, np.array([1.0, 0, 0]))
        )
    return pairs


def test_stage_drops_outlier_pairs_and_splits_components():
    truth, edges, relative, outlier = _noisy_graph(20, 0.6, 0.5, 0.2, seed=5)
    pairs = _pairs_from(truth, edges, relative)
    # A second, disconnected set of 5 images (ids 101..105) with exact rotations.
    small = Rotation.random(5, random_state=9).as_matrix()
    small_edges = np.array([(i, j) for i in range(5) for j in range(i + 1, 5)])
    small_rel = small[small_edges[:, 1]] @ np.swapaxes(small[small_edges[:, 0]], 1, 2)
    pairs |= _pairs_from(small, small_edges, small_rel, id_offset=101)
    # A pair without a relative pose and a rejected pair take no part.
    pairs[(1, 101)] = TwoViewGeometry(1, 101, "uncalibrated", np.zeros((50, 2), np.int64))
    pairs[(2, 102)] = TwoViewGeometry(2, 102, "rejected", np.zeros((50, 2), np.int64), success=False)
    result = average_rotations(pairs, RotationAveragingOptions())
    assert result.success
    assert [len(c.rotations) for c in result.components] == [20, 5]
    big, other = result.components
    ids = big.image_ids
    est = np.stack([big.rotations[i] for i in ids])
    errors = rotation_angle_deg(align_rotations(est, truth[np.array(ids) - 1])[0], truth[np.array(ids) - 1])
    assert errors.mean() < 0.25 and errors.max() < 0.5  # ~9 inlier pairs per image
    dropped = {(a + 1, b + 1) for a, b in edges[outlier].tolist()}
    assert set(result.dropped_pairs) == dropped
    assert not dropped & set(big.pairs)
    est_small = np.stack([other.rotations[i] for i in other.image_ids])
    assert rotation_angle_deg(align_rotations(est_small, small)[0], small).max() < 1e-6
    report = result.report
    assert report["num_pairs_in"] == len(edges) + len(small_edges)  # the pose-less and rejected are out
    assert report["num_pairs_dropped"] == len(dropped) and report["component_sizes"] == [20, 5]
    assert 0 < report["residual_deg_median"] < 1.0


def test_stage_without_posed_pairs_fails_as_a_value():
    pairs = {(1, 2): TwoViewGeometry(1, 2, "uncalibrated", np.zeros((50, 2), np.int64))}
    result = average_rotations(pairs)
    assert not result.success and "2+ images" in result.reason


def _relative(truth, edges):
    return truth[edges[:, 1]] @ np.swapaxes(truth[edges[:, 0]], 1, 2)


def test_vote_moves_a_node_to_the_rotation_most_edges_support_and_choose_picks_the_fitting_candidate():
    truth = Rotation.random(6, random_state=2).as_matrix()
    # Node 0 joined to 1..5, and a chain 1-2-3-4-5.
    edges = np.array([[0, k] for k in range(1, 6)] + [[k, k + 1] for k in range(1, 5)])
    exact = _relative(truth, edges)
    # Edges (0, 1) and (0, 2) measure the same wrong alternative: node 0 turned by 40 deg.
    turn = Rotation.from_rotvec([0.0, np.deg2rad(40.0), 0.0]).as_matrix()
    relative = exact.copy()
    relative[:2] = truth[[1, 2]] @ (turn @ truth[0]).T
    rotations = truth.copy()
    rotations[0] = turn @ truth[0]
    # Their exact rotations are among their candidates, next to a useless third one.
    candidates = np.stack([exact[0], exact[1], np.eye(3)])
    candidate_edge = np.array([0, 1, 1])
    voted, moved = vote_rotations(
        rotations, edges, relative, candidates, candidate_edge, threshold_rad=np.deg2rad(3.0)
    )
    # The wrong rotation has 2 supporting edges, the true one all 5: node 0 moves, exactly.
    assert moved == 1
    np.testing.assert_allclose(voted, truth, atol=1e-12)
    # The gauge node stays; without candidates 3 exact edges against 2 still move it.
    held, moved = vote_rotations(
        rotations, edges, relative, candidates, candidate_edge, threshold_rad=np.deg2rad(3.0), fixed=0
    )
    assert moved == 0 and np.array_equal(held, rotations)
    alone, moved = vote_rotations(
        rotations, edges, relative, np.zeros((0, 3, 3)), np.zeros(0, int), threshold_rad=np.deg2rad(3.0)
    )
    assert moved == 1
    np.testing.assert_allclose(alone[0], truth[0], atol=1e-12)
    chosen, changed = choose_relative_candidates(voted, edges, relative, candidates, candidate_edge)
    assert changed == 2
    np.testing.assert_allclose(chosen, exact, atol=1e-12)
    with pytest.raises(InputError, match="candidate edge index"):
        choose_relative_candidates(voted, edges, relative, candidates, np.array([0, 1, 99]))


def test_stage_resolves_consistent_wrong_alternatives_with_candidates():
    truth, edges, relative, _ = _noisy_graph(20, 0.5, 0.0, 0.0, seed=7)
    exact = relative.copy()
    # Node 19's edges: all but one measure the alternative that turns node 19 by 30 deg (as the
    # wrong decomposition of several planar pairs of a facade would): least squares follows them.
    turn = Rotation.from_rotvec([np.deg2rad(30.0), 0.0, 0.0]).as_matrix()
    mine = np.flatnonzero((edges == 19).any(axis=1))
    assert len(mine) >= 4
    wrong = mine[1:]
    for e in wrong:
        i, j = edges[e]
        rotation_i = turn @ truth[i] if i == 19 else truth[i]
        rotation_j = turn @ truth[j] if j == 19 else truth[j]
        relative[e] = rotation_j @ rotation_i.T
    pairs = _pairs_from(truth, edges, relative)

    def error_of_19(result):
        component = result.components[0]
        ids = component.image_ids
        est = np.stack([component.rotations[i] for i in ids])
        ref = truth[np.array(ids) - 1]
        return rotation_angle_deg(align_rotations(est, ref)[0], ref)[ids.index(20)]

    plain = average_rotations(pairs)
    assert error_of_19(plain) > 25
    candidates = {(int(edges[e, 0]) + 1, int(edges[e, 1]) + 1): [exact[e]] for e in wrong}
    resolved = average_rotations(pairs, candidates=candidates)
    assert error_of_19(resolved) < 1e-6
    assert resolved.report["num_candidates_chosen"] == len(wrong)
    assert resolved.report["num_pairs_dropped"] == 0
    # candidate_rounds = 0 ignores them
    ignored = average_rotations(pairs, RotationAveragingOptions(candidate_rounds=0), candidates=candidates)
    assert error_of_19(ignored) > 25
    with pytest.raises(InputError, match="vote_threshold_deg"):
        RotationAveragingOptions(vote_threshold_deg=0)
