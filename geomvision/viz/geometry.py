"""Pure-numpy scene geometry for drawing: camera frustums, scene scale, colormaps (no Open3D here).

Shared by the Open3D viewer, the PLY exporter and the software screenshot renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geomvision.scene.reconstruction import Reconstruction, points_array

#: per frustum: 5 vertices (centre, then image corners top-left, top-right, bottom-right, bottom-left)
FRUSTUM_LINES = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]], dtype=np.int64)
#: 4 side faces and the image rectangle (2 triangles), wound so normals point outwards.
FRUSTUM_TRIANGLES = np.array(
    [[0, 2, 1], [0, 3, 2], [0, 4, 3], [0, 1, 4], [1, 2, 3], [1, 3, 4]], dtype=np.int64
)


@dataclass
class Frustums:
    """Frustum geometry for the registered views.

    Attributes:
        image_ids: (C,) image ids, in drawing order.
        vertices: (C*5, 3) world points; camera c owns rows 5c..5c+4 (centre first).
        lines: (C*8, 2) vertex index pairs.
        triangles: (C*6, 3) vertex index triples.
        colors: (C, 3) float RGB in [0, 1] per camera.
    """

    image_ids: np.ndarray
    vertices: np.ndarray
    lines: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray


def robust_point_mask(xyz: np.ndarray, *, quantile: float = 0.98, factor: float = 2.0) -> np.ndarray:
    """Points within ``factor`` times the ``quantile`` distance from the median (drops far outliers)."""
    if len(xyz) < 10:
        return np.ones(len(xyz), dtype=bool)
    dist = np.linalg.norm(xyz - np.median(xyz, axis=0), axis=1)
    return dist <= factor * np.quantile(dist, quantile) + 1e-12


def framing_mask(xyz: np.ndarray, *, k: float = 5.0) -> np.ndarray:
    """Points a view should frame: distance from the median within median + ``k`` robust sigmas.

    The sigma is 1.4826 * MAD of the distances, so a few percent of far, sparse points (a distant
    wall, the sky) do not shrink the subject to a corner; they are still drawn, just not framed.
    At least the nearer half of the points is always kept.
    """
    if len(xyz) < 10:
        return np.ones(len(xyz), dtype=bool)
    dist = np.linalg.norm(xyz - np.median(xyz, axis=0), axis=1)
    median = float(np.median(dist))
    sigma = 1.4826 * float(np.median(np.abs(dist - median)))
    return dist <= median + k * sigma + 1e-12


def scene_scale(rec: Reconstruction) -> float:
    """A length typical of the scene: median camera-centre spacing, else the point spread, else 1."""
    centers = np.array(list(rec.camera_centers().values())).reshape(-1, 3)
    if len(centers) >= 2:
        d = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nearest = d.min(axis=1)
        spread = np.median(np.linalg.norm(centers - centers.mean(0), axis=1))
        value = float(max(np.median(nearest), 0.2 * spread))
        if value > 0:
            return value
    xyz, _ = points_array(rec)
    if len(xyz) >= 2:
        value = float(np.median(np.linalg.norm(xyz - np.median(xyz, axis=0), axis=1)))
        if value > 0:
            return value
    return 1.0


def order_colors(n: int, cmap: str = "viridis") -> np.ndarray:
    """(n, 3) RGB in [0, 1] sampled evenly from a matplotlib colormap (registration order -> colour)."""
    from matplotlib import colormaps

    if n == 0:
        return np.zeros((0, 3))
    return np.asarray(colormaps[cmap](np.linspace(0.0, 1.0, n)))[:, :3]


def camera_frustums(
    rec: Reconstruction,
    *,
    scale: float | None = None,
    order: list[int] | None = None,
    cmap: str = "viridis",
) -> Frustums:
    """Pyramids from each registered camera centre to its image corners at depth ``scale``.

    Args:
        rec: reconstruction; only registered views are drawn. Distortion is ignored (pinhole K).
        scale: frustum depth in world units; default half of ``scene_scale(rec)``.
        order: image ids in registration order (colour ramp); default sorted registered ids.
        cmap: matplotlib colormap name for the order ramp.
    """
    ids = [i for i in (order or rec.registered_image_ids) if i in rec.views and rec.views[i].registered]
    depth = 0.5 * scene_scale(rec) if scale is None else float(scale)
    verts = np.zeros((len(ids), 5, 3))
    for c, image_id in enumerate(ids):
        view = rec.views[image_id]
        cam = rec.cameras[view.camera_id]
        corners_px = np.array(
            [
                [-0.5, -0.5],
                [cam.width - 0.5, -0.5],
                [cam.width - 0.5, cam.height - 0.5],
                [-0.5, cam.height - 0.5],
            ]
        )
        rays = np.linalg.solve(cam.K, np.column_stack([corners_px, np.ones(4)]).T).T  # z = 1
        # scale so the farthest corner ray has length ``depth``: wide and narrow lenses look alike.
        points_in_cam = np.vstack([np.zeros(3), rays * depth / np.linalg.norm(rays, axis=1).max()])
        pose = view.cam_from_world
        verts[c] = (points_in_cam - pose.translation) @ pose.rotation  # R^T (x - t)
    offsets = 5 * np.arange(len(ids))
    lines = (FRUSTUM_LINES[None] + offsets[:, None, None]).reshape(-1, 2)
    triangles = (FRUSTUM_TRIANGLES[None] + offsets[:, None, None]).reshape(-1, 3)
    return Frustums(
        np.asarray(ids, np.int64), verts.reshape(-1, 3), lines, triangles, order_colors(len(ids), cmap)
    )


def view_graph_segments(rec: Reconstruction, view_graph) -> tuple[np.ndarray, np.ndarray]:
    """Segments between registered camera centres for each edge of a networkx view graph.

    Returns:
        (E, 2, 3) segment end points and (E,) edge weights (``weight`` attribute, default 1).
    """
    centers = rec.camera_centers()
    segs, weights = [], []
    for i, j, data in view_graph.edges(data=True):
        if i in centers and j in centers:
            segs.append([centers[i], centers[j]])
            weights.append(float(data.get("weight", 1.0)))
    return np.asarray(segs, np.float64).reshape(-1, 2, 3), np.asarray(weights, np.float64)


def covisibility_graph(rec: Reconstruction, *, min_shared: int = 15):
    """networkx graph of registered images joined when they observe >= ``min_shared`` common 3D points.

    Built from the sparse image-by-point incidence matrix ``A`` as ``A @ A.T`` (shared-point counts);
    edge attribute ``weight`` = number of shared points.
    """
    import networkx as nx
    from scipy import sparse

    arrays = rec.observation_arrays()
    ids = np.array(rec.registered_image_ids, dtype=np.int64)
    graph = nx.Graph()
    graph.add_nodes_from(ids.tolist())
    if len(ids) < 2 or len(arrays["obs_point"]) == 0:
        return graph
    row_of = {int(i): r for r, i in enumerate(ids)}
    keep = np.isin(arrays["obs_image_id"], ids)
    rows = np.array([row_of[int(i)] for i in arrays["obs_image_id"][keep]], dtype=np.int64)
    A = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, arrays["obs_point"][keep])), shape=(len(ids), len(arrays["point_ids"]))
    )
    A.data[:] = 1.0  # an image seeing a point twice still shares it once
    counts = sparse.triu(A @ A.T, k=1).tocoo()
    sel = counts.data >= min_shared
    graph.add_weighted_edges_from(
        zip(
            ids[counts.row[sel]].tolist(),
            ids[counts.col[sel]].tolist(),
            counts.data[sel].astype(int).tolist(),
            strict=True,
        )
    )
    return graph
