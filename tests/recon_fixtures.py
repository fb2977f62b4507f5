"""Synthetic reconstructions for the I/O, evaluation, viewer and report tests (numpy only).

Cameras sit on a ring around the origin and look at it; points fill a cube; PINHOLE projection is done
here with K directly so the tests do not depend on ``geometry.camera_models``.
"""

from __future__ import annotations

import numpy as np

from geomvision.geometry.rigid import Rigid3d
from geomvision.scene import Camera, Reconstruction, View


def look_at_pose(
    center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, -1.0, 0.0])
) -> Rigid3d:
    """``cam_from_world`` of a camera at ``center`` looking at ``target`` (OpenCV axes: y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows are camera axes in world
    return Rigid3d(R, -R @ center)


def ring_reconstruction(
    num_views: int = 8,
    num_points: int = 60,
    *,
    rng: int = 0,
    radius: float = 4.0,
    width: int = 640,
    height: int = 480,
    noise_px: float = 0.0,
    extra_keypoints: int = 3,
    wobble: float = 0.3,
    camera_height: float = 0.0,
) -> Reconstruction:
    """A ring of PINHOLE views around a cube of points; every point is seen by every view.

    Each view also has ``extra_keypoints`` keypoints without a 3D point (point3D_id -1), placed first.
    """
    gen = np.random.default_rng(rng)
    rec = Reconstruction()
    rec.add_camera(
        Camera.pinhole(1, 500.0, 510.0, width / 2 - 0.5 + 3.0, height / 2 - 0.5 - 2.0, width, height)
    )
    points = gen.uniform(-1.0, 1.0, size=(num_points, 3))
    angles = np.linspace(0, 2 * np.pi, num_views, endpoint=False)
    K = rec.cameras[1].K
    for i, a in enumerate(angles, start=1):
        center = np.array([radius * np.cos(a), camera_height + wobble * np.sin(3 * a), radius * np.sin(a)])
        pose = look_at_pose(center, np.zeros(3))
        cam = pose.apply(points)
        px = cam @ K.T
        px = px[:, :2] / px[:, 2:]
        px = px + gen.normal(0, noise_px, px.shape) if noise_px else px
        extra = gen.uniform([0, 0], [width - 1, height - 1], size=(extra_keypoints, 2))
        rec.add_view(View(i, f"img_{i:03d}.png", 1, pose, np.vstack([extra, px])))
    colors = gen.integers(0, 256, size=(num_points, 3)).astype(np.uint8)
    for j in range(num_points):
        track = [(i, extra_keypoints + j) for i in rec.views]
        rec.add_point3D(points[j], track, colors[j], error=float(gen.uniform(0, 1)))
    return rec
