"""PLY export/import of point clouds (binary little-endian PLY).

The camera-frustum meshes are drawn by ``geomvision.viz.scene_ply`` (drawing is viz's job; io stays below it).

Point clouds are written with numpy (no system libraries needed); meshes and reading go through Open3D.
Besides ``geomvision.viz`` this is the only module that imports ``open3d``; it does so lazily so importing
``geomvision.io`` stays cheap. Every write is atomic (temporary file + rename).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from geomvision.errors import InputError
from geomvision.runtime.atomic import atomic_write_bytes
from geomvision.scene.reconstruction import Reconstruction, points_array

logger = logging.getLogger(__name__)

__all__ = [
    "write_point_cloud",
    "read_point_cloud",
    "write_reconstruction_ply",
]


def _check_xyz_rgb(xyz: np.ndarray, rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(f"xyz must be (N, 3), got shape {xyz.shape}")
    if not np.all(np.isfinite(xyz)):
        raise InputError(f"xyz contains {np.count_nonzero(~np.isfinite(xyz))} NaN/inf values")
    if rgb is None:
        return xyz, None
    rgb = np.asarray(rgb)
    if rgb.shape != xyz.shape:
        raise InputError(f"rgb must be (N, 3) like xyz {xyz.shape}, got {rgb.shape}")
    # uint8 0..255 is the scene convention; floats are taken as 0..1 (Open3D's own convention).
    rgb01 = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    if rgb01.size and (rgb01.min() < 0 or rgb01.max() > 1):
        raise InputError(f"float rgb must lie in [0, 1], got range [{rgb01.min()}, {rgb01.max()}]")
    return xyz, rgb01


def write_point_cloud(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> Path:
    """Write a coloured point cloud as binary little-endian PLY (double x/y/z, uchar red/green/blue).

    Written with numpy, not Open3D, so the pipeline's ``points.ply`` does not depend on Open3D's
    system libraries (libEGL, libGL, libusb); the layout is the one Open3D writes and reads.

    Args:
        path: destination ``.ply`` file.
        xyz: (N, 3) world points.
        rgb: (N, 3) uint8 (0..255) or float (0..1) colours, or None.

    Returns:
        The path written.
    """
    xyz, rgb01 = _check_xyz_rgb(xyz, rgb)
    path = Path(path)
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if rgb01 is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(len(xyz), dtype=fields)
    for k, name in enumerate("xyz"):
        vertices[name] = xyz[:, k]
    if rgb01 is not None:
        rgb8 = np.clip(np.rint(rgb01 * 255.0), 0, 255).astype(np.uint8)
        for k, name in enumerate(("red", "green", "blue")):
            vertices[name] = rgb8[:, k]
    properties = "".join(
        f"property {'double' if kind == '<f8' else 'uchar'} {name}\n" for name, kind in fields
    )
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n{properties}end_header\n"
    atomic_write_bytes(path, header.encode("ascii") + vertices.tobytes())
    logger.info("wrote %d points to %s", len(xyz), path)
    return path


def read_point_cloud(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY point cloud (or the vertices of a PLY mesh).

    Returns:
        (N, 3) float64 points and (N, 3) uint8 colours (None when the file has none).
    """
    import open3d as o3d

    path = Path(path)
    if not path.is_file():
        raise InputError(f"point cloud {path} does not exist")
    with open(path, "rb") as fh:
        header = fh.read(4096)
    if not header.startswith(b"ply") or b"end_header" not in header:
        raise InputError(f"{path}: not a PLY file (no 'ply' ... 'end_header' header)")
    cloud = o3d.io.read_point_cloud(str(path), format="ply")
    xyz = np.asarray(cloud.points, dtype=np.float64)
    if len(xyz) == 0:
        if b"element vertex 0\n" not in header:
            raise InputError(f"{path}: PLY file has no readable vertices")
        return np.zeros((0, 3)), None
    colors = np.round(np.asarray(cloud.colors) * 255.0).astype(np.uint8) if cloud.has_colors() else None
    return xyz, colors


def write_reconstruction_ply(path: str | Path, rec: Reconstruction) -> Path:
    """The reconstruction's 3D points with their colours (``OUT/points.ply``)."""
    xyz, rgb = points_array(rec)
    return write_point_cloud(path, xyz, rgb)
