"""Rotation averaging on the view graph: one absolute rotation per image from the verified pairs' rotations.

The stage of a global mapper (GLOMAP: Pan et al., "Global Structure-from-Motion Revisited", ECCV 2024;
Chatterjee & Govindu, ICCV 2013 / TPAMI 2018):

1. the view graph of pairs with a relative pose (:func:`geomvision.sfm.view_graph.build_view_graph`);
2. per connected component (largest first): rotations chained along the maximum spanning tree weighted
   by inlier counts (the strongest pairs first, so outlier pairs rarely enter the initial guess);
3. robust refinement on all pairs (:func:`geomvision.geometry.rotation_averaging.irls_rotation_averaging`):
   an L1 phase, then Geman-McClure IRLS;
4. with candidate rotations for some pairs (the alternative decompositions of a planar pair's
   homography), rounds of consensus voting (:func:`geomvision.geometry.rotation_averaging.vote_rotations`:
   each image moves to the rotation most of its pairs agree on, over all their alternatives), each pair
   then taking the alternative closest to the absolute rotations, and the robust refinement again;
5. pairs whose rotation residual exceeds ``max_residual_deg`` are dropped; the surviving graph is split
   into connected components again, and each component of ``min_component_size`` or more images gives one
   solution (rotations in that component's own gauge).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from geomvision.errors import InputError, check_at_least
from geomvision.geometry.rigid import rotation_angle
from geomvision.geometry.rotation_averaging import (
    choose_relative_candidates,
    irls_rotation_averaging,
    relative_rotation_residuals_rad,
    rotations_from_spanning_tree,
    vote_rotations,
)
from geomvision.scene import TwoViewGeometry
from geomvision.sfm.view_graph import build_view_graph, connected_components, maximum_spanning_tree

logger = logging.getLogger(__name__)

__all__ = ["RotationAveragingOptions", "RotationAveragingResult", "RotationComponent", "average_rotations"]


@dataclass(frozen=True, kw_only=True)
class RotationAveragingOptions:
    """Options of :func:`average_rotations`.

    Attributes:
        min_num_inliers: pairs with fewer verified inliers are left out of the graph.
        l1_iterations: iterations of the L1 phase (robust to many outlier pairs; 0 skips it).
        irls_iterations: iteration cap of the Geman-McClure phase.
        loss_scale_deg: Geman-McClure scale: residuals well beyond it get little weight.
        weight_by_inliers: weight each pair by the square root of its inlier count (else all pairs equal).
        max_residual_deg: pairs whose rotation residual after refinement exceeds this are dropped.
        min_component_size: components with fewer images give no solution.
        candidate_rounds: rounds of voting, choosing among the candidate rotations and refining again
            when candidates are given (0: candidates ignored). On the synthetic 300-image street with
            five-point poses of its 1045 planar pairs plus their homography decompositions as candidates
            (seed 0): image rotations off by > 3 deg 2 -> 0 (one was 42 deg off), median 0.55 -> 0.52 deg.
        vote_sweeps: at most this many voting sweeps over the images per round (fewer once none moves).
        vote_threshold_deg: a pair supports a rotation of an image when one of its alternatives, with the
            other image's rotation, implies a rotation within this angle.
    """

    min_num_inliers: int = 15
    l1_iterations: int = 10
    irls_iterations: int = 50
    loss_scale_deg: float = 5.0
    weight_by_inliers: bool = False
    max_residual_deg: float = 5.0
    min_component_size: int = 2
    candidate_rounds: int = 2
    vote_sweeps: int = 3
    vote_threshold_deg: float = 3.0

    def __post_init__(self) -> None:
        check_at_least("min_num_inliers", self.min_num_inliers, 1)
        if self.l1_iterations < 0 or self.irls_iterations < 0:
            raise InputError(
                f"iteration counts must be >= 0, got l1_iterations={self.l1_iterations}, "
                f"irls_iterations={self.irls_iterations}"
            )
        if self.candidate_rounds < 0:
            raise InputError(f"candidate_rounds must be >= 0, got {self.candidate_rounds}")
        check_at_least("vote_sweeps", self.vote_sweeps, 1)
        for name in ("loss_scale_deg", "max_residual_deg", "vote_threshold_deg"):
            if not 0 < getattr(self, name) <= 180:
                raise InputError(f"{name} must be in (0, 180], got {getattr(self, name)}")
        check_at_least("min_component_size", self.min_component_size, 2)


@dataclass
class RotationComponent:
    """One connected set of images with rotations in a common (arbitrary) world frame.

    Attributes:
        rotations: image_id -> (3, 3) ``cam_from_world`` rotation.
        pairs: the pairs (i, j), i < j, kept inside this component (residual within the threshold).
        residuals_deg: (i, j) -> rotation residual of each kept pair, degrees.
    """

    rotations: dict[int, np.ndarray]
    pairs: list[tuple[int, int]]
    residuals_deg: dict[tuple[int, int], float]

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.rotations)


@dataclass
class RotationAveragingResult:
    """Outcome of :func:`average_rotations`.

    Attributes:
        success: at least one component was solved.
        reason: why not, when ``success`` is False.
        components: solutions, largest (most images) first.
        dropped_pairs: pairs removed for a residual above ``max_residual_deg``.
        report: counts, residual statistics, iterations and timings (JSON-serialisable).
    """

    success: bool
    reason: str = ""
    components: list[RotationComponent] = field(default_factory=list)
    dropped_pairs: list[tuple[int, int]] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def _relative_rotation(graph: nx.Graph, i: int, j: int) -> np.ndarray:
    """``cam_j_from_cam_i`` rotation of edge (i, j), i < j."""
    data = graph.edges[i, j]
    rotation = data["cam2_from_cam1"].rotation
    return rotation if data["image_i"] == i else rotation.T


def _component_candidates(
    pairs: list[tuple[int, int]],
    relative: np.ndarray,
    candidates: Mapping[tuple[int, int], Sequence[np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of the component's pairs packed as ((K, 3, 3) rotations, (K,) edge index); a pair with
    candidates has its own measurement among them, so a later choice can return to it."""
    rotations, edge = [], []
    for e, pair in enumerate(pairs):
        extra = candidates.get(pair, ())
        for rotation in [relative[e], *extra] if len(extra) else ():
            rotations.append(np.asarray(rotation, dtype=np.float64))
            edge.append(e)
    if not rotations:
        return np.zeros((0, 3, 3)), np.zeros(0, dtype=np.int64)
    return np.stack(rotations), np.array(edge, dtype=np.int64)


def _solve_component(
    graph: nx.Graph,
    nodes: set[int],
    options: RotationAveragingOptions,
    candidates: Mapping[tuple[int, int], Sequence[np.ndarray]],
) -> tuple[dict[int, np.ndarray], dict[tuple[int, int], float], dict]:
    """Rotations of one connected component and the residual of each of its pairs."""
    sub = graph.subgraph(nodes)
    ids = sorted(nodes)
    index = {image_id: k for k, image_id in enumerate(ids)}
    pairs = sorted((min(u, v), max(u, v)) for u, v in sub.edges)
    edges = np.array([(index[i], index[j]) for i, j in pairs], dtype=np.int64).reshape(-1, 2)
    relative = np.stack([_relative_rotation(sub, i, j) for i, j in pairs]) if pairs else np.zeros((0, 3, 3))
    weights = np.array([sub.edges[p]["weight"] for p in pairs], dtype=np.float64)
    # Root: the best-connected image (most inliers over its pairs), a stable anchor for the gauge.
    root = max(ids, key=lambda n: (sub.degree(n, weight="weight"), -n))
    tree = maximum_spanning_tree(sub)
    tree_pairs = sorted((min(u, v), max(u, v)) for u, v in tree.edges)
    tree_edges = np.array([(index[i], index[j]) for i, j in tree_pairs], dtype=np.int64).reshape(-1, 2)
    tree_relative = (
        np.stack([_relative_rotation(sub, i, j) for i, j in tree_pairs])
        if tree_pairs
        else np.zeros((0, 3, 3))
    )
    rotations = rotations_from_spanning_tree(len(ids), tree_edges, tree_relative, root=index[root])
    prior = np.sqrt(weights) if options.weight_by_inliers else None
    scale = np.deg2rad(options.loss_scale_deg)
    stats: dict[str, int] = {"num_votes_moved": 0, "num_candidates_chosen": 0}

    def refine(rotations: np.ndarray, relative: np.ndarray) -> np.ndarray:
        # An L1 pass from the start, then Geman-McClure IRLS from the L1 result.
        for loss, key in (("l1", "l1_iterations"), ("geman_mcclure", "irls_iterations")):
            rotations, stats[key] = irls_rotation_averaging(
                rotations,
                edges,
                relative,
                edge_weights=prior,
                fixed=index[root],
                loss=loss,
                loss_scale_rad=scale,
                max_iterations=getattr(options, key),
            )
        return rotations

    rotations = refine(rotations, relative)
    alternatives, alternative_edge = _component_candidates(pairs, relative, candidates)
    threshold = np.deg2rad(options.vote_threshold_deg)
    for _ in range(options.candidate_rounds if len(alternatives) else 0):
        for _ in range(options.vote_sweeps):
            rotations, moved = vote_rotations(
                rotations,
                edges,
                relative,
                alternatives,
                alternative_edge,
                threshold_rad=threshold,
                fixed=index[root],
            )
            stats["num_votes_moved"] += moved
            if not moved:
                break
        # The pair's own measurement is among the choices, so a later round can switch back.
        relative, _ = choose_relative_candidates(rotations, edges, relative, alternatives, alternative_edge)
        rotations = refine(rotations, relative)
    if len(alternatives):
        own = np.stack([_relative_rotation(sub, i, j) for i, j in pairs])
        stats["num_candidates_chosen"] = int(
            np.count_nonzero(rotation_angle(np.swapaxes(own, 1, 2) @ relative) > 1e-9)
        )
    residuals = np.degrees(relative_rotation_residuals_rad(rotations, edges, relative))
    return (
        {image_id: rotations[index[image_id]] for image_id in ids},
        dict(zip(pairs, residuals.tolist(), strict=True)),
        stats,
    )


def average_rotations(
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry],
    options: RotationAveragingOptions | None = None,
    *,
    candidates: Mapping[tuple[int, int], Sequence[np.ndarray]] | None = None,
    rng: np.random.Generator | int | None = None,
    progress=None,
) -> RotationAveragingResult:
    """Absolute rotations of the images from the relative rotations of the verified pairs.

    Args:
        two_view_geometries: (i, j) -> verified pair; only successful pairs with a relative pose
            (``cam2_from_cam1``) and at least ``options.min_num_inliers`` inliers take part.
        options: stage options.
        candidates: (i, j) -> alternative ``cam2_from_cam1`` rotations (each (3, 3), image i's camera to
            image j's) of pairs whose measured rotation is one of a few that fit their matches (a planar
            pair's homography decompositions); see ``options.candidate_rounds``.
        rng: unused (the stage is deterministic); accepted for the common stage signature.
        progress: unused; accepted for the common stage signature.

    Returns:
        RotationAveragingResult with one solution per connected component (largest first).
    """
    del rng, progress  # deterministic and fast: nothing to seed or report
    options = options or RotationAveragingOptions()
    t0 = time.perf_counter()
    posed = {
        pair: g
        for pair, g in two_view_geometries.items()
        if g.success and g.config != "rejected" and g.cam2_from_cam1 is not None
    }
    graph = build_view_graph(posed, min_inliers=options.min_num_inliers)
    graph.remove_nodes_from([n for n in list(graph.nodes) if graph.degree(n) == 0])
    report: dict = {"num_pairs_in": len(posed), "num_pairs_used": graph.number_of_edges()}
    all_residuals: dict[tuple[int, int], float] = {}
    solutions: list[tuple[dict[int, np.ndarray], dict[tuple[int, int], float]]] = []
    iterations = {"l1_iterations": 0, "irls_iterations": 0}
    counts = {"num_votes_moved": 0, "num_candidates_chosen": 0}
    for nodes in connected_components(graph):
        if len(nodes) < options.min_component_size:
            continue
        rotations, residuals, stats = _solve_component(graph, nodes, options, candidates or {})
        for key in iterations:
            iterations[key] = max(iterations[key], stats[key])
        for key in counts:
            counts[key] += stats[key]
        all_residuals.update(residuals)
        solutions.append((rotations, residuals))
    dropped = sorted(p for p, r in all_residuals.items() if r > options.max_residual_deg)
    kept_graph = nx.Graph()
    kept_graph.add_edges_from(p for p, r in all_residuals.items() if r <= options.max_residual_deg)
    components: list[RotationComponent] = []
    for rotations, residuals in solutions:
        inside = kept_graph.subgraph(list(rotations)).copy()
        inside.remove_nodes_from([n for n in list(inside.nodes) if inside.degree(n) == 0])
        for nodes in connected_components(inside):
            if len(nodes) < options.min_component_size:
                continue
            pairs = sorted((min(u, v), max(u, v)) for u, v in inside.subgraph(nodes).edges)
            components.append(
                RotationComponent(
                    {i: rotations[i] for i in sorted(nodes)}, pairs, {p: residuals[p] for p in pairs}
                )
            )
    components.sort(key=lambda c: (-len(c.rotations), min(c.rotations)))
    kept = np.array([r for p, r in all_residuals.items() if r <= options.max_residual_deg])
    report.update(
        {
            "num_components": len(components),
            "component_sizes": [len(c.rotations) for c in components],
            "num_pairs_dropped": len(dropped),
            "residual_deg_median": float(np.median(kept)) if kept.size else float("nan"),
            "residual_deg_p90": float(np.percentile(kept, 90)) if kept.size else float("nan"),
            **iterations,
            **counts,
            "time_s": round(time.perf_counter() - t0, 4),
        }
    )
    logger.info(
        "rotation averaging: %d pairs, %d dropped (> %.1f deg), %d component(s) %s",
        report["num_pairs_used"],
        len(dropped),
        options.max_residual_deg,
        len(components),
        report["component_sizes"],
    )
    if not components:
        return RotationAveragingResult(
            False, "no connected set of 2+ images with consistent rotations", [], dropped, report
        )
    return RotationAveragingResult(True, "", components, dropped, report)
