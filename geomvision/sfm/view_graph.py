"""The view graph: images as nodes, geometrically verified pairs as weighted edges (networkx).

Edge attributes: ``weight`` and ``num_inliers`` (verified inlier matches), ``config`` (calibrated,
uncalibrated, planar, panoramic), ``median_triangulation_angle_deg``, and, when the relative pose is
known, ``cam2_from_cam1`` (a :class:`Rigid3d` mapping the camera of ``image_i`` to that of
``image_j``; ``image_i < image_j`` are stored on the edge because networkx edges are unordered).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import networkx as nx
import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotation_angle
from geomvision.runtime.atomic import atomic_path, atomic_write_text
from geomvision.scene.types import TwoViewGeometry

logger = logging.getLogger(__name__)


def build_view_graph(
    two_view_geometries: Mapping[tuple[int, int], TwoViewGeometry],
    image_names: Mapping[int, str] | None = None,
    *,
    min_inliers: int = 15,
) -> nx.Graph:
    """Graph of verified pairs.

    Args:
        two_view_geometries: (i, j) -> TwoViewGeometry; rejected pairs and pairs with fewer than
            ``min_inliers`` inliers give no edge.
        image_names: image_id -> file name; every listed image becomes a node (isolated if unmatched).
        min_inliers: minimum verified inliers for an edge.

    Returns:
        Undirected ``nx.Graph`` with int image-id nodes (attribute ``name``).
    """
    graph = nx.Graph()
    for image_id, name in (image_names or {}).items():
        graph.add_node(int(image_id), name=str(name))
    for (i, j), tvg in two_view_geometries.items():
        i, j = int(i), int(j)
        for k in (i, j):
            if k not in graph:
                graph.add_node(k, name=(image_names or {}).get(k, str(k)))
        if not tvg.success or tvg.config == "rejected" or tvg.num_inliers < min_inliers:
            continue
        # The stored pose maps image_i's camera to image_j's; keep the ordered ids to read it back.
        attrs = {
            "weight": int(tvg.num_inliers),
            "num_inliers": int(tvg.num_inliers),
            "config": str(tvg.config),
            "median_triangulation_angle_deg": float(tvg.median_triangulation_angle_deg),
            "image_i": int(tvg.image_i),
            "image_j": int(tvg.image_j),
        }
        if tvg.cam2_from_cam1 is not None:
            attrs["cam2_from_cam1"] = tvg.cam2_from_cam1
        graph.add_edge(i, j, **attrs)
    logger.info("view graph: %d images, %d edges", graph.number_of_nodes(), graph.number_of_edges())
    return graph


def relative_pose(graph: nx.Graph, from_id: int, to_id: int) -> Rigid3d | None:
    """``cam_to_from_cam_from`` stored on the edge (inverted when the edge is stored the other way)."""
    data = graph.edges[from_id, to_id]
    pose = data.get("cam2_from_cam1")
    if pose is None:
        return None
    return pose if data["image_i"] == from_id else pose.inverse()


# --- pruning and structure -----------------------------------------------------------------------------


def prune_view_graph(
    graph: nx.Graph, *, min_inliers: int | None = None, top_k: int | None = None
) -> nx.Graph:
    """A copy without weak edges.

    Args:
        min_inliers: drop edges with fewer inliers.
        top_k: keep an edge only if it is among the ``top_k`` heaviest edges of at least one endpoint
            (bounds the degree of dense graphs while keeping every node's best links).
    """
    pruned = graph.copy()
    if min_inliers is not None:
        pruned.remove_edges_from([(u, v) for u, v, w in pruned.edges(data="weight") if w < min_inliers])
    if top_k is not None:
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        keep: set[frozenset] = set()
        for node in pruned.nodes:
            ranked = sorted(pruned.edges(node, data="weight"), key=lambda e: (-e[2], e[1]))
            keep.update(frozenset((u, v)) for u, v, _ in ranked[:top_k])
        pruned.remove_edges_from([(u, v) for u, v in list(pruned.edges) if frozenset((u, v)) not in keep])
    return pruned


def connected_components(graph: nx.Graph) -> list[set[int]]:
    """Node sets of the connected components, largest first (ties: smallest id first)."""
    return sorted(nx.connected_components(graph), key=lambda c: (-len(c), min(c)))


def largest_component(graph: nx.Graph) -> nx.Graph:
    """Sub-graph (a copy) of the largest connected component."""
    components = connected_components(graph)
    return graph.subgraph(components[0]).copy() if components else graph.copy()


def maximum_spanning_tree(graph: nx.Graph) -> nx.Graph:
    """Maximum-weight spanning forest (the strongest pairs that keep every component connected)."""
    return nx.maximum_spanning_tree(graph, weight="weight")


# --- rotation cycle consistency ------------------------------------------------------------------------


def _triangles(graph: nx.Graph) -> np.ndarray:
    """(T, 3) node triples a < b < c that are pairwise connected."""
    out = []
    for a in graph.nodes:
        higher = {n for n in graph[a] if n > a}
        for b in higher:
            for c in higher.intersection(graph[b]):
                if c > b:
                    out.append((a, b, c))
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 3)


def rotation_cycle_errors_deg(graph: nx.Graph) -> tuple[np.ndarray, np.ndarray]:
    """Loop rotation error of every triangle whose three edges carry a relative pose.

    For a consistent triplet ``R_ac^T R_bc R_ab = I`` (a -> b -> c -> a); the error is the angle of
    that product.

    Returns:
        triangles (T, 3) node ids, errors_deg (T,).
    """
    posed = nx.Graph()
    posed.add_edges_from((u, v) for u, v, p in graph.edges(data="cam2_from_cam1") if p is not None)
    triangles = _triangles(posed)
    if len(triangles) == 0:
        return triangles, np.zeros(0)

    def rotations(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        pairs = zip(src.tolist(), dst.tolist(), strict=True)
        return np.stack([relative_pose(graph, s, d).rotation for s, d in pairs])

    r_ab = rotations(triangles[:, 0], triangles[:, 1])
    r_bc = rotations(triangles[:, 1], triangles[:, 2])
    r_ca = rotations(triangles[:, 2], triangles[:, 0])
    loop = r_ca @ r_bc @ r_ab
    return triangles, np.degrees(rotation_angle(loop))


def filter_rotation_cycles(
    graph: nx.Graph, *, max_error_deg: float = 5.0
) -> tuple[nx.Graph, list[tuple[int, int]]]:
    """Remove edges whose relative rotation disagrees with the loops it closes.

    Each edge counts its consistent (loop error <= ``max_error_deg``) and inconsistent triangles; an
    edge is removed when inconsistent triangles outnumber consistent ones (Zach et al., CVPR 2010,
    use the same triplet evidence). Edges in no posed triangle are kept.

    Returns:
        (filtered copy of the graph, removed edges as (min, max) id tuples).
    """
    triangles, errors = rotation_cycle_errors_deg(graph)
    good: dict[tuple[int, int], int] = {}
    bad: dict[tuple[int, int], int] = {}
    for (a, b, c), err in zip(triangles.tolist(), errors.tolist(), strict=True):
        counter = good if err <= max_error_deg else bad
        for edge in ((a, b), (b, c), (a, c)):
            counter[edge] = counter.get(edge, 0) + 1
    removed = sorted(e for e, n_bad in bad.items() if n_bad > good.get(e, 0))
    filtered = graph.copy()
    filtered.remove_edges_from(removed)
    if removed:
        logger.info("rotation cycles: removed %d of %d edges", len(removed), graph.number_of_edges())
    return filtered, removed


# --- persistence and drawing ---------------------------------------------------------------------------


def _edge_to_plain(data: dict) -> dict:
    out = {k: v for k, v in data.items() if k != "cam2_from_cam1"}
    pose = data.get("cam2_from_cam1")
    if pose is not None:
        # GraphML takes scalars only, so the pose travels as space-separated numbers.
        out["rotation"] = " ".join(repr(float(x)) for x in pose.rotation.reshape(-1))
        out["translation"] = " ".join(repr(float(x)) for x in pose.translation)
    return out


def _edge_from_plain(data: dict) -> dict:
    out = dict(data)
    rotation, translation = out.pop("rotation", None), out.pop("translation", None)
    if rotation is not None and translation is not None:
        R = np.array([float(x) for x in str(rotation).split()]).reshape(3, 3)
        t = np.array([float(x) for x in str(translation).split()])
        out["cam2_from_cam1"] = Rigid3d(R, t)
    for key in ("weight", "num_inliers", "image_i", "image_j"):
        if key in out:
            out[key] = int(out[key])
    if "median_triangulation_angle_deg" in out:
        out["median_triangulation_angle_deg"] = float(out["median_triangulation_angle_deg"])
    return out


def _plain_graph(graph: nx.Graph) -> nx.Graph:
    plain = nx.Graph()
    plain.add_nodes_from((n, dict(d)) for n, d in graph.nodes(data=True))
    plain.add_edges_from((u, v, _edge_to_plain(d)) for u, v, d in graph.edges(data=True))
    return plain


def save_view_graph(graph: nx.Graph, path: str | os.PathLike) -> None:
    """Write the graph as JSON (``.json``, node-link) or GraphML (``.graphml``), atomically."""
    path = Path(path)
    plain = _plain_graph(graph)
    if path.suffix.lower() == ".json":
        data = nx.node_link_data(plain, edges="edges")
        atomic_write_text(path, json.dumps(data, indent=1, allow_nan=True))
    elif path.suffix.lower() == ".graphml":
        with atomic_path(path) as tmp:
            nx.write_graphml(plain, tmp)
    else:
        raise InputError(f"view graph file must end in .json or .graphml, got {str(path)!r}")


def load_view_graph(path: str | os.PathLike) -> nx.Graph:
    """Read a graph written by :func:`save_view_graph`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"view graph file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".json":
            plain = nx.node_link_graph(json.loads(path.read_text()), edges="edges")
        elif path.suffix.lower() == ".graphml":
            plain = nx.read_graphml(path, node_type=int)
        else:
            raise InputError(f"view graph file must end in .json or .graphml, got {str(path)!r}")
    except (json.JSONDecodeError, nx.NetworkXError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot parse view graph {str(path)!r}: {exc}") from exc
    graph = nx.Graph()
    graph.add_nodes_from((int(n), dict(d)) for n, d in plain.nodes(data=True))
    graph.add_edges_from((int(u), int(v), _edge_from_plain(d)) for u, v, d in plain.edges(data=True))
    return graph


# Beyond these sizes the drawing uses a cheaper layout (spectral start, a few spring iterations) and no
# labels: at 1000 images the full drawing took 5.5 s, in a worker beside the mapper.
_FULL_LAYOUT_MAX_NODES = 300
_LABELLED_MAX_NODES = 150


def draw_view_graph(graph: nx.Graph, path_png: str | os.PathLike, *, title: str | None = None) -> None:
    """Draw the graph to a PNG (matplotlib, headless Agg backend).

    Nodes are coloured by connected component, edge width grows with the inlier count, and the
    maximum spanning tree is drawn darker. Nodes carry their image names up to 150 images.
    """
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    components = connected_components(graph)
    colour_of = {n: k for k, comp in enumerate(components) for n in comp}
    if len(graph) <= 2:
        pos = nx.circular_layout(graph)
    elif len(graph) <= _FULL_LAYOUT_MAX_NODES:
        pos = nx.spring_layout(graph, weight="weight", seed=0)
    else:
        # A large graph starts from its spectral layout (0.1 s at 1000 images), so a few spring
        # iterations untangle it: the 50 of a random start took 2.8 s at 1000 images, in a worker
        # beside the mapper.
        start = nx.spectral_layout(graph, weight="weight")
        pos = nx.spring_layout(graph, weight="weight", pos=start, iterations=15, seed=0)
    many = len(graph) > _LABELLED_MAX_NODES
    weights = np.array([w for _, _, w in graph.edges(data="weight", default=1)], dtype=float)
    widths = 0.3 + 2.5 * np.sqrt(weights / weights.max()) if len(weights) else []
    nx.draw_networkx_edges(graph, pos, ax=ax, width=widths, edge_color="0.75")
    tree = maximum_spanning_tree(graph)
    nx.draw_networkx_edges(tree, pos, ax=ax, width=1.5, edge_color="tab:blue")
    nx.draw_networkx_nodes(
        graph,
        pos,
        ax=ax,
        node_size=20 if many else 180,
        cmap="tab10",
        vmin=0,
        vmax=9,
        node_color=[colour_of[n] % 10 for n in graph.nodes],
    )
    # file names, not ids 1..N: the names are what a user recognises (kept short: no extension)
    # (none beyond 150 images: they would cover each other, and each costs a text layout)
    if not many:
        labels = {n: Path(str(graph.nodes[n].get("name", n))).stem[:16] for n in graph.nodes}
        nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=7)
    ax.set_title(
        title
        or f"{graph.number_of_nodes()} images, {graph.number_of_edges()} verified pairs, "
        f"{len(components)} component(s); blue: maximum spanning tree"
    )
    ax.set_axis_off()
    path_png = Path(path_png)
    with atomic_path(path_png, suffix=".png") as tmp:
        with warnings.catch_warnings():  # a file name in a script the font lacks: boxes, not a warning
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.savefig(tmp, format="png", bbox_inches="tight")
