"""Rotation averaging maths: absolute rotations from noisy relative rotations on a graph.

Given nodes ``k`` with unknown rotations ``R_k`` (``cam_from_world``) and edges ``(i, j)`` carrying measured
relative rotations ``R_ij ~ R_j R_i^T`` (``cam_j_from_cam_i``), find the ``R_k``. The gauge (one global
rotation of the world) is fixed by holding one node.

Refinement is the iteratively re-linearised, iteratively re-weighted least squares of Chatterjee & Govindu
("Efficient and Robust Large-Scale Rotation Averaging", ICCV 2013; "Robust Relative Rotation Averaging",
TPAMI 2018): with the update ``R_k <- R_k Exp(w_k)`` (``w_k`` a world-frame rotation vector), the
first-order condition for edge ``(i, j)`` is

    w_j - w_i = -R_i^T Log(R_ij^T R_j R_i^T),

a linear system whose matrix is the graph's incidence matrix (times I_3), so its normal equations are the
weighted graph Laplacian (one N x N sparse factorisation shared by the three coordinates). Robustness comes
from the edge weights: an L1 phase (weights ``1 / |r|``) that tolerates a large share of outlier edges,
then a Geman-McClure phase (weights ``(s^2 / (s^2 + r^2))^2``) for accuracy on the inliers.

Pure numpy / scipy.sparse: no scene types.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from geomvision.errors import InputError
from geomvision.geometry.rigid import matrix_to_rotvec, project_to_so3, rotation_angle, rotvec_to_matrix

__all__ = [
    "align_rotations",
    "choose_relative_candidates",
    "irls_rotation_averaging",
    "relative_rotation_residuals_rad",
    "rotations_from_spanning_tree",
    "vote_rotations",
]


def _check_edges(num_nodes: int, edges: np.ndarray, relative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    relative = np.asarray(relative, dtype=np.float64)
    if relative.shape != (len(edges), 3, 3):
        raise InputError(f"relative rotations must have shape ({len(edges)}, 3, 3), got {relative.shape}")
    if len(edges) and (edges.min() < 0 or edges.max() >= num_nodes):
        raise InputError(f"edge node index out of range [0, {num_nodes}): {edges.min()}..{edges.max()}")
    if np.any(edges[:, 0] == edges[:, 1]):
        raise InputError("an edge joins a node to itself")
    return edges, relative


def relative_rotation_residuals_rad(
    rotations: np.ndarray, edges: np.ndarray, relative: np.ndarray
) -> np.ndarray:
    """Angle of ``R_ij^T R_j R_i^T`` for every edge: how far the absolute rotations miss each measurement.

    Args:
        rotations: (N, 3, 3) absolute rotations ``cam_from_world``.
        edges: (E, 2) node indices (i, j).
        relative: (E, 3, 3) measured ``cam_j_from_cam_i`` rotations.

    Returns:
        (E,) residual angles in radians, in [0, pi].
    """
    edges, relative = _check_edges(len(rotations), edges, relative)
    r_i, r_j = rotations[edges[:, 0]], rotations[edges[:, 1]]
    return rotation_angle(np.swapaxes(relative, 1, 2) @ r_j @ np.swapaxes(r_i, 1, 2))


def rotations_from_spanning_tree(
    num_nodes: int, edges: np.ndarray, relative: np.ndarray, *, root: int = 0
) -> np.ndarray:
    """Absolute rotations by chaining relative rotations outward from ``root`` (breadth first).

    ``edges`` should form a tree (e.g. the maximum spanning tree of the view graph); on a graph with cycles
    the first edge reaching each node wins. Nodes not reached keep NaN.

    Args:
        num_nodes: N.
        edges: (E, 2) node indices (i, j).
        relative: (E, 3, 3) ``cam_j_from_cam_i`` rotations.
        root: node whose rotation is the identity (the gauge).

    Returns:
        (N, 3, 3) rotations ``cam_from_world`` (NaN for unreachable nodes).
    """
    edges, relative = _check_edges(num_nodes, edges, relative)
    if not 0 <= root < num_nodes:
        raise InputError(f"root {root} out of range [0, {num_nodes})")
    neighbours: list[list[tuple[int, int, bool]]] = [[] for _ in range(num_nodes)]
    for e, (i, j) in enumerate(edges.tolist()):
        neighbours[i].append((j, e, True))
        neighbours[j].append((i, e, False))
    rotations = np.full((num_nodes, 3, 3), np.nan)
    rotations[root] = np.eye(3)
    queue = deque([root])
    while queue:
        node = queue.popleft()
        for other, e, forward in neighbours[node]:
            if not np.isnan(rotations[other, 0, 0]):
                continue
            # R_j = R_ij R_i going forward along (i, j); R_i = R_ij^T R_j going backward.
            rotations[other] = relative[e] @ rotations[node] if forward else relative[e].T @ rotations[node]
            queue.append(other)
    return rotations


def _laplacian_solver(num_nodes: int, edges: np.ndarray, weights: np.ndarray, fixed: int):
    """Factorise the weighted graph Laplacian with node ``fixed`` removed; returns (solve, keep)."""
    i, j = edges[:, 0], edges[:, 1]
    rows = np.concatenate([i, j, i, j])
    cols = np.concatenate([i, j, j, i])
    vals = np.concatenate([weights, weights, -weights, -weights])
    laplacian = sp.csc_matrix((vals, (rows, cols)), shape=(num_nodes, num_nodes))
    keep = np.flatnonzero(np.arange(num_nodes) != fixed)
    reduced = laplacian[keep][:, keep].tocsc()
    return spla.factorized(reduced), keep


def irls_rotation_averaging(
    initial: np.ndarray,
    edges: np.ndarray,
    relative: np.ndarray,
    *,
    edge_weights: np.ndarray | None = None,
    fixed: int = 0,
    loss: Literal["l1", "geman_mcclure", "l2"] = "geman_mcclure",
    loss_scale_rad: float = np.deg2rad(5.0),
    max_iterations: int = 50,
    tolerance_rad: float = 1e-7,
) -> tuple[np.ndarray, int]:
    """Refine absolute rotations by robust IRLS on the relative rotations (Chatterjee & Govindu).

    Each iteration re-linearises at the current rotations, sets edge weights from the current residuals
    by the loss's IRLS weight function, solves the weighted Laplacian system for the world-frame
    rotation-vector updates ``w`` (``w_fixed = 0``) and applies ``R_k <- R_k Exp(w_k)``.

    Args:
        initial: (N, 3, 3) starting rotations ``cam_from_world`` (e.g. from a spanning tree); the graph of
            ``edges`` must connect all N nodes.
        edges: (E, 2) node indices (i, j).
        relative: (E, 3, 3) measured ``cam_j_from_cam_i`` rotations.
        edge_weights: (E,) prior weights (e.g. by inlier count); None = all 1.
        fixed: node held constant (the gauge).
        loss: "l1" (weights 1/|r|), "geman_mcclure" (weights (s^2 / (s^2 + r^2))^2) or "l2".
        loss_scale_rad: scale ``s`` of Geman-McClure, radians.
        max_iterations: iteration cap.
        tolerance_rad: stop once the largest update angle is below this.

    Returns:
        (rotations (N, 3, 3), iterations run).
    """
    rotations = np.array(initial, dtype=np.float64)
    num_nodes = len(rotations)
    edges, relative = _check_edges(num_nodes, edges, relative)
    if not np.all(np.isfinite(rotations)):
        raise InputError("initial rotations contain NaN (a node not connected to the graph?)")
    if loss not in ("l1", "geman_mcclure", "l2"):
        raise InputError(f"loss must be 'l1', 'geman_mcclure' or 'l2', got {loss!r}")
    prior = np.ones(len(edges)) if edge_weights is None else np.asarray(edge_weights, dtype=np.float64)
    if prior.shape != (len(edges),) or np.any(prior <= 0):
        raise InputError(f"edge_weights must be {len(edges)} positive numbers")
    if num_nodes < 2 or len(edges) == 0:
        return rotations, 0
    i, j = edges[:, 0], edges[:, 1]
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (the count is returned)
        error = np.swapaxes(relative, 1, 2) @ rotations[j] @ np.swapaxes(rotations[i], 1, 2)
        log_error = matrix_to_rotvec(error)  # (E, 3) in camera i's frame
        residual = np.linalg.norm(log_error, axis=1)
        b = -np.einsum("eki,ek->ei", rotations[i], log_error)  # -R_i^T Log(E_ij)
        if loss == "l1":
            w = prior / np.maximum(residual, 1e-4 * loss_scale_rad)
        elif loss == "geman_mcclure":
            w = prior * (loss_scale_rad**2 / (loss_scale_rad**2 + residual**2)) ** 2
        else:
            w = prior
        w = np.maximum(w, 1e-12 * w.max())  # keep the Laplacian connected
        solve, keep = _laplacian_solver(num_nodes, edges, w, fixed)
        rhs = np.zeros((num_nodes, 3))
        np.add.at(rhs, j, w[:, None] * b)
        np.add.at(rhs, i, -w[:, None] * b)
        update = np.zeros((num_nodes, 3))
        update[keep] = np.stack([solve(rhs[keep, c]) for c in range(3)], axis=1)
        rotations = rotations @ rotvec_to_matrix(update)
        if np.max(np.linalg.norm(update, axis=1)) < tolerance_rad:
            break
    return rotations, iterations


def _check_candidates(
    num_edges: int, candidates: np.ndarray, candidate_edge: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 3, 3)
    candidate_edge = np.asarray(candidate_edge, dtype=np.int64).reshape(-1)
    if len(candidate_edge) != len(candidates):
        raise InputError(f"{len(candidates)} candidates but {len(candidate_edge)} candidate edge indices")
    if len(candidate_edge) and (candidate_edge.min() < 0 or candidate_edge.max() >= num_edges):
        raise InputError(f"candidate edge index out of range [0, {num_edges})")
    return candidates, candidate_edge


def choose_relative_candidates(
    rotations: np.ndarray,
    edges: np.ndarray,
    relative: np.ndarray,
    candidates: np.ndarray,
    candidate_edge: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Per edge, the measurement among its own and its candidates closest to the absolute rotations.

    Args:
        rotations: (N, 3, 3) absolute rotations ``cam_from_world``.
        edges: (E, 2) node indices (i, j).
        relative: (E, 3, 3) current ``cam_j_from_cam_i`` measurements.
        candidates: (K, 3, 3) alternative ``cam_j_from_cam_i`` rotations.
        candidate_edge: (K,) the edge of each candidate.

    Returns:
        ((E, 3, 3) chosen measurements, number of edges whose measurement changed).
    """
    edges, relative = _check_edges(len(rotations), edges, relative)
    candidates, candidate_edge = _check_candidates(len(edges), candidates, candidate_edge)
    chosen = relative.copy()
    if not len(candidates):
        return chosen, 0
    predicted = rotations[edges[:, 1]] @ np.swapaxes(rotations[edges[:, 0]], 1, 2)
    best = relative_rotation_residuals_rad(rotations, edges, relative)
    error = rotation_angle(np.swapaxes(candidates, 1, 2) @ predicted[candidate_edge])
    changed = np.zeros(len(edges), dtype=bool)
    for k in np.argsort(error, kind="stable"):  # closest first: the first one below an edge's best wins
        e = candidate_edge[k]
        if error[k] < best[e]:
            best[e], chosen[e], changed[e] = error[k], candidates[k], True
    return chosen, int(np.count_nonzero(changed))


def vote_rotations(
    rotations: np.ndarray,
    edges: np.ndarray,
    relative: np.ndarray,
    candidates: np.ndarray,
    candidate_edge: np.ndarray,
    *,
    threshold_rad: float,
    fixed: int | None = None,
) -> tuple[np.ndarray, int]:
    """One sweep of consensus voting: move each node to the rotation most of its edges agree on.

    A relative measurement can be one of a few discrete alternatives that fit the matches equally well
    (a plane-induced homography has two decompositions; five-point RANSAC on a planar pair picks either),
    and where several neighbouring pairs pick the same wrong one, least squares settles the node between
    the alternatives. Each edge ``(i, j)`` with measurements ``C`` (its own and its candidates) and the
    neighbour's rotation implies ``R_j = C R_i``; a hypothesis for node ``i`` is supported by an edge when
    one of the edge's implied rotations lies within ``threshold_rad`` of it. Node by node (in index order,
    each seeing the nodes already moved), the hypothesis with the most supporting edges replaces the node's
    rotation (as the chordal mean of the implied rotations supporting it) when it has strictly more support
    than the current rotation.

    Args:
        rotations, edges, relative, candidates, candidate_edge: as in :func:`choose_relative_candidates`.
        threshold_rad: agreement threshold, radians.
        fixed: a node never moved (the gauge), or None.

    Returns:
        (rotations (N, 3, 3) after the sweep, number of nodes moved).
    """
    rotations = np.array(rotations, dtype=np.float64)
    edges, relative = _check_edges(len(rotations), edges, relative)
    candidates, candidate_edge = _check_candidates(len(edges), candidates, candidate_edge)
    measure = np.concatenate([relative, candidates])
    measure_edge = np.concatenate([np.arange(len(edges)), candidate_edge])
    order = np.argsort(measure_edge, kind="stable")
    num_nodes = len(rotations)
    incident: list[list[int]] = [[] for _ in range(num_nodes)]
    for e, (i, j) in enumerate(edges.tolist()):
        incident[i].append(e)
        incident[j].append(e)
    # measurement indices of each edge: its own first, then its candidates
    by_edge = np.split(order, np.cumsum(np.bincount(measure_edge, minlength=len(edges)))[:-1])
    cos_threshold = np.cos(threshold_rad)
    moved = 0
    for node in range(num_nodes):
        if node == fixed or len(incident[node]) < 2:
            continue
        implied, owner = [], []
        for slot, e in enumerate(incident[node]):
            m = measure[by_edge[e]]
            i, j = edges[e]
            if i == node:  # R_j = C R_i -> R_i = C^T R_j
                implied.append(np.swapaxes(m, 1, 2) @ rotations[j])
            else:  # R_i = C R_j (this node is j)
                implied.append(m @ rotations[i])
            owner.extend([slot] * len(m))
        implied_all = np.concatenate(implied)
        owner_arr = np.asarray(owner)
        hypotheses = np.concatenate([rotations[node][None], implied_all])
        # cos of the angle between hypotheses and implied rotations: (trace - 1) / 2
        close = (np.einsum("hab,mab->hm", hypotheses, implied_all) - 1.0) / 2.0 >= cos_threshold
        support = np.zeros((len(hypotheses), len(incident[node])), dtype=bool)
        np.logical_or.at(support, (slice(None), owner_arr), close)
        count = support.sum(axis=1)
        best = int(np.argmax(count))
        if best == 0 or count[best] <= count[0]:
            continue
        rotations[node] = project_to_so3(implied_all[close[best]].sum(axis=0))
        moved += 1
    return rotations, moved


def align_rotations(estimated: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the gauge: the world rotation Q minimising sum ||R_est_k Q^T - R_ref_k||_F (chordal L2 mean).

    Args:
        estimated: (N, 3, 3) rotations ``cam_from_world`` in the estimate's world.
        reference: (N, 3, 3) rotations ``cam_from_world`` in the reference world.

    Returns:
        (aligned (N, 3, 3) = ``estimated @ Q^T``, the estimate expressed in the reference world;
        Q (3, 3) with ``R_est ~ R_ref Q``).
    """
    estimated = np.asarray(estimated, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if estimated.shape != reference.shape or estimated.shape[1:] != (3, 3):
        raise InputError(f"rotation stacks differ in shape: {estimated.shape} vs {reference.shape}")
    q = project_to_so3(np.einsum("nki,nkj->ij", reference, estimated))  # sum R_ref^T R_est
    return estimated @ q.T, q
