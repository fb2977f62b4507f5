"""Partition the view graph into overlapping clusters of images for partitioned (divide-and-conquer) mapping.

Why: one incremental mapper over the whole view graph runs on one core and costs super-linearly in the
number of images. Cutting the graph into clusters lets each cluster be mapped on its own (in parallel, on
the stage runner) and the models be merged by Sim(3) (:mod:`geomvision.sfm.merge`), as COLMAP's
hierarchical mapper, OpenSfM's submodels and GTSfM's METIS clusters do.

Algorithm (see ``docs/partition.md`` for the choice):

1. each connected component of the view graph is partitioned on its own; a component with at most
   ``max_cluster_images`` images is one cluster;
2. a larger one is cut into ``k = ceil(n / max_cluster_images)`` parts minimising the cut weight (the
   verified inliers on edges between parts) under a balance constraint: METIS multilevel k-way
   partitioning (Karypis & Kumar 1998, via ``pymetis``) or, without it, recursive spectral bisection by
   the normalised cut (Shi & Malik 2000: the sign pattern of the second eigenvector of the normalised
   Laplacian, swept for the smallest normalised cut). A part still too large or not connected is split
   again; parts smaller than ``min_cluster_images`` join the neighbour they share most inliers with;
3. overlap: for every pair of neighbouring clusters A, B (edges between their cores), the images of B most
   strongly connected to A are added to A, one at a time, each time the B image with the largest total
   inliers to A's current images (so the added images form a connected band along the cut, as COLMAP's
   scene clustering and GTSfM's overlap do). A then maps those images too, and the merge finds shared
   cameras and shared 3D points.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
import numpy as np

from geomvision.errors import InputError, check_fields_at_least, check_range

logger = logging.getLogger(__name__)

__all__ = ["ImageCluster", "PartitionOptions", "PartitionResult", "metis_available", "partition_view_graph"]

PartitionMethod = Literal["auto", "metis", "spectral"]
_METHODS = ("auto", "metis", "spectral")


def metis_available() -> bool:
    """Whether ``pymetis`` (the optional ``partition`` extra) can be imported."""
    try:
        import pymetis  # noqa: F401  (optional dependency: only its presence is tested)
    except ImportError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class PartitionOptions:
    """Options of :func:`partition_view_graph` (and of when the pipeline partitions at all).

    Attributes:
        max_cluster_images: largest number of images in a cluster's core (overlap images come on top);
            0 = never partition; None = automatic: no partition up to ``auto_min_images`` images,
            clusters of ``auto_cluster_images`` above.
        auto_min_images: with ``max_cluster_images=None``, sets of at most this many images are mapped
            in one piece (below ~500 images one mapper is fast enough and partitioning only adds a merge).
        auto_cluster_images: core cluster size used above ``auto_min_images`` with ``max_cluster_images=None``.
        method: "metis" (pymetis, the ``partition`` extra), "spectral" (recursive normalised-cut
            bisection, numpy/scipy only) or "auto" (metis when installed, else spectral).
        overlap_ratio: images each neighbouring cluster lends a cluster, as a fraction of its core size.
        min_overlap_images: lower bound of the images lent per neighbouring cluster (a Sim(3) needs
            shared cameras/points spread over several images).
        min_cluster_images: smaller parts are joined to their most strongly connected neighbour.
        seed: seed of METIS's randomised coarsening (the result depends on nothing else).
    """

    max_cluster_images: int | None = None
    auto_min_images: int = 500
    auto_cluster_images: int = 250
    method: PartitionMethod = "auto"
    overlap_ratio: float = 0.1
    min_overlap_images: int = 4
    min_cluster_images: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_cluster_images is not None and (
            not isinstance(self.max_cluster_images, int) or self.max_cluster_images < 0
        ):
            raise InputError(
                f"max_cluster_images must be None or an integer >= 0, got {self.max_cluster_images!r}"
            )
        if self.max_cluster_images == 1:
            raise InputError("max_cluster_images must be 0 (no partition) or >= 2, got 1")
        check_fields_at_least(self, auto_min_images=2, auto_cluster_images=2)
        if self.method not in _METHODS:
            raise InputError(f"partition method must be one of {_METHODS}, got {self.method!r}")
        check_range("overlap_ratio", self.overlap_ratio, 0, 1)
        check_fields_at_least(self, min_overlap_images=0, min_cluster_images=1)

    def cluster_size_for(self, num_images: int) -> int:
        """Core cluster size to use for a set of ``num_images`` images; 0 = do not partition."""
        if self.max_cluster_images is not None:
            size = self.max_cluster_images
        else:
            size = 0 if num_images <= self.auto_min_images else self.auto_cluster_images
        return 0 if size >= num_images else size

    def resolved_method(self) -> str:
        """The method that will run ("auto" resolved by whether pymetis is installed)."""
        if self.method == "auto":
            return "metis" if metis_available() else "spectral"
        return self.method


@dataclass(frozen=True)
class ImageCluster:
    """One cluster: its own images (``core_image_ids``) and those it shares (core + overlap, ``image_ids``)."""

    core_image_ids: tuple[int, ...]
    image_ids: tuple[int, ...]

    @property
    def overlap_image_ids(self) -> tuple[int, ...]:
        core = set(self.core_image_ids)
        return tuple(i for i in self.image_ids if i not in core)


@dataclass
class PartitionResult:
    """Clusters (largest core first) and how they were made.

    Attributes:
        clusters: the clusters; every image of the graph is in exactly one core.
        method: partitioner that ran ("metis", "spectral", or "none" when nothing had to be cut).
        cut_weight: verified inliers on the edges between different cores.
        total_weight: verified inliers on all edges.
    """

    clusters: list[ImageCluster]
    method: str
    cut_weight: int = 0
    total_weight: int = 0
    report: dict[str, Any] = field(default_factory=dict)


def partition_view_graph(
    graph: nx.Graph, options: PartitionOptions | None = None, *, max_cluster_images: int | None = None
) -> PartitionResult:
    """Cut the view graph into clusters of at most ``max_cluster_images`` core images, with overlap.

    Args:
        graph: view graph (:func:`geomvision.sfm.view_graph.build_view_graph`): int image-id nodes, edges
            weighted by verified inliers (``weight``).
        options: partition options.
        max_cluster_images: core size; None = ``options.cluster_size_for(number of nodes)``. 0 (or a
            size >= the number of images) gives one cluster per connected component.

    Returns:
        :class:`PartitionResult`.

    Raises:
        InputError: an empty graph, a negative size, or ``method="metis"`` without pymetis installed.
    """
    options = options or PartitionOptions()
    if graph.number_of_nodes() == 0:
        raise InputError("partition_view_graph needs a graph with at least one image, got none")
    size = (
        options.cluster_size_for(graph.number_of_nodes())
        if max_cluster_images is None
        else max_cluster_images
    )
    if size < 0 or size == 1:
        raise InputError(f"max_cluster_images must be 0 or >= 2, got {size}")
    method = options.resolved_method()
    if method == "metis" and not metis_available():
        raise InputError("partition method 'metis' needs pymetis: pip install geomvision[partition]")
    cores: list[set[int]] = []
    cut_any = False
    for component in sorted(nx.connected_components(graph), key=lambda c: (-len(c), min(c))):
        if size == 0 or len(component) <= size:
            cores.append(set(component))
            continue
        cut_any = True
        parts = _split(graph, set(component), size, method, options.seed)
        cores.extend(_absorb_small_parts(graph, parts, options.min_cluster_images, size))
    cores.sort(key=lambda c: (-len(c), min(c)))
    clusters = _add_overlap(graph, cores, options)
    membership = {i: k for k, core in enumerate(cores) for i in core}
    cut = sum(int(w) for u, v, w in graph.edges(data="weight", default=1) if membership[u] != membership[v])
    total = sum(int(w) for _, _, w in graph.edges(data="weight", default=1))
    result = PartitionResult(clusters, method if cut_any else "none", cut, total)
    result.report = {
        "method": result.method,
        "max_cluster_images": size,
        "num_clusters": len(clusters),
        "core_sizes": [len(c.core_image_ids) for c in clusters],
        "cluster_sizes": [len(c.image_ids) for c in clusters],
        "cut_weight": cut,
        "cut_fraction": round(cut / total, 4) if total else 0.0,
    }
    logger.info(
        "partition (%s): %d images -> %d clusters of %s core images, cut %.1f%% of the inliers",
        result.method,
        graph.number_of_nodes(),
        len(clusters),
        result.report["core_sizes"],
        100 * result.report["cut_fraction"],
    )
    return result


# --- cutting ------------------------------------------------------------------------------------------
def _split(graph: nx.Graph, nodes: set[int], size: int, method: str, seed: int) -> list[set[int]]:
    """Parts of ``nodes`` (a connected set) with at most ``size`` images each, each connected."""
    if len(nodes) <= size:
        return [nodes]
    num_parts = math.ceil(len(nodes) / size)
    parts = (
        _metis_parts(graph, nodes, num_parts, seed, size)
        if method == "metis"
        else _spectral_bisection(graph, nodes, size)
    )
    parts = _rebalance(graph, [set(p) for p in parts if p], size) if method != "metis" else parts
    out: list[set[int]] = []
    for part in parts:
        if not part:
            continue
        for piece in nx.connected_components(graph.subgraph(part)):
            piece = set(piece)
            if len(piece) > size and len(piece) < len(nodes):
                out.extend(_split(graph, piece, size, method, seed))
            elif len(piece) > size:  # the partitioner could not cut it: halve by breadth-first order
                order = list(nx.bfs_tree(graph.subgraph(piece), min(piece)))
                half = len(order) // 2
                out.extend(_split(graph, set(order[:half]), size, method, seed))
                out.extend(_split(graph, set(order[half:]), size, method, seed))
            else:
                out.append(piece)
    return out


def _metis_parts(graph: nx.Graph, nodes: set[int], num_parts: int, seed: int, size: int) -> list[set[int]]:
    """METIS partition of the sub-graph on ``nodes`` into ``num_parts`` parts (edge weights = inliers).

    METIS's balance tolerance and connectivity option are heuristics (on templeRing's view graph the
    k-way cut leaves a part of 17 images for a size of 16, the recursive one a disconnected part), so
    three variants run (k-way with a tolerance that keeps parts within ``size``, k-way with METIS's
    default 3 %, recursive bisection), each repaired by :func:`_rebalance`; the one with the fewest parts,
    then the smallest cut, wins.
    """
    import pymetis  # optional dependency (the ``partition`` extra); checked by the caller

    order = sorted(nodes)
    index = {n: k for k, n in enumerate(order)}
    xadj, adjncy, eweights = [0], [], []
    for n in order:
        for m in sorted(graph.neighbors(n)):
            if m in index:
                adjncy.append(index[m])
                eweights.append(max(1, int(graph.edges[n, m].get("weight", 1))))
        xadj.append(len(adjncy))
    # CSRAdjacency exists from pymetis 2025.2 on; older versions take xadj/adjncy directly.
    if hasattr(pymetis, "CSRAdjacency"):
        graph_args = {"adjacency": pymetis.CSRAdjacency(xadj, adjncy)}
    else:
        graph_args = {"xadj": xadj, "adjncy": adjncy}
    # Imbalance tolerance (in 1/1000) that still keeps the largest part within ``size`` images.
    tight = max(1, min(30, int(1000 * (size * num_parts / len(nodes) - 1))))
    best: tuple[tuple[int, float], list[set[int]]] | None = None
    for ufactor, recursive in ((tight, False), (30, False), (tight, True)):
        metis_options = pymetis.Options(
            seed=int(seed), ufactor=ufactor, contig=0 if recursive else 1, ncuts=3
        )
        _, membership = pymetis.part_graph(
            num_parts, **graph_args, eweights=eweights, options=metis_options, recursive=recursive
        )
        parts: list[set[int]] = [set() for _ in range(num_parts)]
        for n, p in zip(order, membership, strict=True):
            parts[int(p)].add(n)
        parts = _rebalance(graph, [p for p in parts if p], size)
        membership_map = {n: k for k, p in enumerate(parts) for n in p}
        cut = sum(
            float(w.get("weight", 1))
            for u in order
            for v, w in graph.adj[u].items()
            if v in index and u < v and membership_map[u] != membership_map[v]
        )
        key = (sum(1 for p in parts for _ in _chunks(len(p), size)), cut)
        if best is None or key < best[0]:
            best = (key, parts)
    assert best is not None
    return best[1]


def _chunks(n: int, size: int) -> range:
    """Clusters a part of ``n`` images will end up as (an overfull part is split again)."""
    return range(math.ceil(n / size))


def _spectral_bisection(graph: nx.Graph, nodes: set[int], size: int) -> list[set[int]]:
    """Two parts of ``nodes`` by the normalised cut (Shi & Malik 2000).

    The second-smallest eigenvector of ``I - D^-1/2 W D^-1/2`` (scaled by ``D^-1/2``) orders the images;
    the threshold along that order with the smallest ``cut / vol(A) + cut / vol(B)`` is taken, among those
    leaving each side a whole number of ``size``-image parts: with ``k = ceil(n / size)`` parts, side A
    gets ``k // 2`` of them (at most ``k // 2 * size`` images) and side B the rest.
    """
    order = sorted(nodes)
    n = len(order)
    index = {v: k for k, v in enumerate(order)}
    W = np.zeros((n, n))
    for u, v, w in graph.subgraph(order).edges(data="weight", default=1):
        W[index[u], index[v]] = W[index[v], index[u]] = float(w)
    degree = W.sum(axis=1)
    d_inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    L = np.eye(n) - d_inv_sqrt[:, None] * W * d_inv_sqrt[None, :]
    _, vectors = np.linalg.eigh(L)
    fiedler = vectors[:, 1] * d_inv_sqrt
    ranking = np.lexsort((np.arange(n), fiedler))
    in_a = np.zeros(n, dtype=bool)
    volume_total = degree.sum()
    best_cost, best_k = np.inf, n // 2
    cut = 0.0
    volume_a = 0.0
    k_total = math.ceil(n / size)
    k_a = k_total // 2
    lo, hi = max(1, n - (k_total - k_a) * size), min(n - 1, k_a * size)
    for k in range(1, n):
        node = ranking[k - 1]
        # Moving ``node`` to A: its edges to A leave the cut, its edges to B join it.
        to_a = W[node, in_a].sum()
        cut += degree[node] - 2.0 * to_a
        volume_a += degree[node]
        in_a[node] = True
        if lo <= k <= hi:
            cost = cut / max(volume_a, 1e-12) + cut / max(volume_total - volume_a, 1e-12)
            if cost < best_cost:
                best_cost, best_k = cost, k
    first = {order[r] for r in ranking[:best_k]}
    return [first, set(order) - first]


def _rebalance(graph: nx.Graph, parts: list[set[int]], size: int) -> list[set[int]]:
    """Repair what the partitioner's balance tolerance and heuristics leave: stray pieces and overfull parts.

    1. A part that is not connected keeps its largest piece; each other piece joins the part it shares
       most inliers with, when that part has room (else it stays a part of its own).
    2. While a part holds more than ``size`` images, the image on its boundary with the best gain (inliers
       to a part with room minus inliers kept) moves there, if the part stays connected without it.
       What cannot be repaired is split again by the caller.
    """
    fixed: list[set[int]] = []
    strays: list[set[int]] = []
    for part in parts:
        pieces = sorted(nx.connected_components(graph.subgraph(part)), key=lambda c: (-len(c), min(c)))
        fixed.append(set(pieces[0]))
        strays.extend(set(p) for p in pieces[1:])
    for piece in strays:
        links = {k: _weight_between(graph, piece, p) for k, p in enumerate(fixed)}
        room = {k: w for k, w in links.items() if w > 0 and len(fixed[k]) + len(piece) <= size}
        if room:
            fixed[max(room, key=lambda k: (room[k], -k))] |= piece
        else:
            fixed.append(piece)
    membership = {n: k for k, p in enumerate(fixed) for n in p}
    for k in range(len(fixed)):
        while len(fixed[k]) > size:
            best = None
            for node in sorted(fixed[k]):
                to: dict[int, float] = {}
                for m, w in graph.adj[node].items():
                    to[membership[m]] = to.get(membership[m], 0.0) + float(w.get("weight", 1))
                keep = to.pop(k, 0.0)
                for q, w in to.items():
                    if len(fixed[q]) < size and (best is None or w - keep > best[0]):
                        best = (w - keep, node, q)
            if best is None:
                break
            _, node, q = best
            rest = fixed[k] - {node}
            if not nx.is_connected(graph.subgraph(rest)):
                break
            fixed[k] = rest
            fixed[q].add(node)
            membership[node] = q
    return fixed


def _weight_between(graph: nx.Graph, a: set[int], b: set[int]) -> float:
    return float(sum(w.get("weight", 1) for u in a for v, w in graph.adj[u].items() if v in b))


def _absorb_small_parts(graph: nx.Graph, parts: list[set[int]], min_size: int, size: int) -> list[set[int]]:
    """Join parts smaller than ``min_size`` to the neighbouring part they share most inliers with.

    Prefers a neighbour that stays within ``size``; a small part with no neighbour stays as it is.
    """
    parts = [set(p) for p in parts if p]
    while True:
        small = [k for k, p in enumerate(parts) if len(p) < min_size]
        if not small or len(parts) == 1:
            return parts
        k = min(small, key=lambda j: (len(parts[j]), min(parts[j])))
        links: dict[int, float] = {}
        for j, other in enumerate(parts):
            if j != k:
                w = sum(
                    graph.edges[u, v].get("weight", 1)
                    for u in parts[k]
                    for v in graph.neighbors(u)
                    if v in other
                )
                if w > 0:
                    links[j] = w
        if not links:
            # Isolated from every other part: keep it (it becomes a cluster of its own).
            min_size = min(min_size, len(parts[k]))
            continue
        fits = {j: w for j, w in links.items() if len(parts[j]) + len(parts[k]) <= size}
        target = max(fits or links, key=lambda j: ((fits or links)[j], -j))
        parts[target] |= parts.pop(k)


# --- overlap ------------------------------------------------------------------------------------------
def _add_overlap(graph: nx.Graph, cores: list[set[int]], options: PartitionOptions) -> list[ImageCluster]:
    """Each cluster borrows the images of each neighbouring core most strongly connected to it."""
    membership = {i: k for k, core in enumerate(cores) for i in core}
    neighbours: dict[int, set[int]] = {k: set() for k in range(len(cores))}
    for u, v in graph.edges:
        a, b = membership[u], membership[v]
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    clusters = []
    for a, core in enumerate(cores):
        members = set(core)
        budget = max(options.min_overlap_images, math.ceil(options.overlap_ratio * len(core)))
        if options.overlap_ratio == 0 and options.min_overlap_images == 0:
            budget = 0
        for b in sorted(neighbours[a]):
            candidates = set(cores[b])
            score = {c: _weight_to(graph, c, members) for c in candidates}
            for _ in range(min(budget, len(candidates))):
                best = max(candidates, key=lambda c: (score[c], -c))
                if score[best] <= 0:
                    break
                candidates.discard(best)
                members.add(best)
                for m in graph.neighbors(best):  # the new member raises its neighbours' scores
                    if m in candidates:
                        score[m] += graph.edges[best, m].get("weight", 1)
        clusters.append(ImageCluster(tuple(sorted(core)), tuple(sorted(members))))
    return clusters


def _weight_to(graph: nx.Graph, node: int, members: set[int]) -> float:
    return float(sum(w for _, m, w in graph.edges(node, data="weight", default=1) if m in members))
