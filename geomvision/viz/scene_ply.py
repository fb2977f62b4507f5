"""Camera frustums as PLY meshes, alone or with the point cloud (Open3D, binary little-endian PLY).

Open3D is imported lazily (inside the writers) so that importing ``geomvision.viz`` stays cheap.
Every write is atomic (temporary file + rename).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from geomvision.runtime.atomic import atomic_path
from geomvision.scene.reconstruction import Reconstruction
from geomvision.viz.geometry import camera_frustums, points_array

logger = logging.getLogger(__name__)

__all__ = ["write_camera_frustums_mesh", "write_scene_ply"]


def _frustum_mesh(rec: Reconstruction, scale: float | None, order: list[int] | None):
    import open3d as o3d

    fr = camera_frustums(rec, scale=scale, order=order)
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(fr.vertices), o3d.utility.Vector3iVector(fr.triangles.astype(np.int32))
    )
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.repeat(fr.colors, 5, axis=0).reshape(-1, 3))
    return mesh


def _write_mesh(path: Path, mesh) -> None:
    import open3d as o3d

    with atomic_path(path, suffix=".ply") as tmp:
        ok = o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False, write_vertex_normals=False)
        if not ok:
            raise OSError(f"Open3D could not write {path}")


def write_camera_frustums_mesh(
    path: str | Path, rec: Reconstruction, *, scale: float | None = None, order: list[int] | None = None
) -> Path:
    """Write the registered cameras as a PLY triangle mesh of pyramids (5 vertices, 6 faces each).

    Args:
        path: destination ``.ply``.
        rec: reconstruction.
        scale: frustum depth in world units (default: half the median camera spacing).
        order: image ids in registration order for the colour ramp.
    """
    path = Path(path)
    _write_mesh(path, _frustum_mesh(rec, scale, order))
    return path


def write_scene_ply(
    path: str | Path, rec: Reconstruction, *, scale: float | None = None, order: list[int] | None = None
) -> Path:
    """One PLY with the coloured 3D points (unreferenced vertices) and the camera frustum faces.

    Viewers such as MeshLab show both; ``read_point_cloud`` returns the points first, then the frustum
    vertices (5 per registered camera).
    """
    import open3d as o3d

    xyz, rgb = points_array(rec)
    mesh = _frustum_mesh(rec, scale, order)
    frustum_vertices = np.asarray(mesh.vertices)
    combined = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.vstack([xyz, frustum_vertices])),
        o3d.utility.Vector3iVector((np.asarray(mesh.triangles) + len(xyz)).astype(np.int32)),
    )
    combined.vertex_colors = o3d.utility.Vector3dVector(
        np.vstack([rgb.astype(np.float64) / 255.0, np.asarray(mesh.vertex_colors)])
    )
    path = Path(path)
    _write_mesh(path, combined)
    logger.info("wrote %d points and %d frustums to %s", len(xyz), len(frustum_vertices) // 5, path)
    return path
