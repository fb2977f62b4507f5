"""Synthetic scenes with exact ground truth for tests and benchmarks.

Everything follows docs/conventions.md: poses are ``cam_from_world`` (x right, y down, z forward),
pixels use the OpenCV origin (centre of the top-left pixel is (0, 0), so an image spans
[-0.5, width - 0.5] x [-0.5, height - 0.5]) and every random function takes
``rng: np.random.Generator | int | None``.

Three levels of realism:

- :func:`random_scene`: a point cloud seen by several cameras (exact projections + visibility).
- :func:`two_view_correspondences`: pixel matches between two calibrated views with noise and outliers,
  the usual input of essential / fundamental / homography estimation.
- :func:`render_scene_images`: real rendered RGB images of textured planes and boxes, for feature
  extraction and matching tests, with depth maps for exact pixel-to-pixel ground truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, euler_to_matrix, skew
from geomvision.runtime.rng import as_rng

logger = logging.getLogger(__name__)

__all__ = [
    "SyntheticScene",
    "TwoViewCorrespondences",
    "RenderedScene",
    "as_rng",
    "intrinsics_matrix",
    "look_at",
    "project_points",
    "random_scene",
    "add_pixel_noise",
    "add_outliers",
    "two_view_correspondences",
    "render_scene_images",
    "random_texture",
]

_LAYOUTS = ("ring", "sphere", "sequence")
_STRUCTURES = ("volume", "plane")


def intrinsics_matrix(focal_px: float, width: int, height: int) -> np.ndarray:
    """Pinhole K with square pixels and the principal point at the image centre.

    With the OpenCV pixel origin the image centre is ``((width - 1) / 2, (height - 1) / 2)``
    (COLMAP's ``width / 2`` in its corner-origin convention).
    """
    if not np.isfinite(focal_px) or focal_px <= 0:
        raise InputError(f"focal_px must be positive and finite, got {focal_px}")
    if int(width) <= 0 or int(height) <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return np.array([[focal_px, 0.0, cx], [0.0, focal_px, cy], [0.0, 0.0, 1.0]])


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> Rigid3d:
    """``cam_from_world`` of a camera at ``center`` whose optical axis (+z) points at ``target``.

    The image y axis (down) is aligned with ``-up`` as far as possible, so ``up`` appears up in the image.

    Args:
        center: (3,) camera centre in world.
        target: (3,) point in world the camera looks at.
        up: (3,) world direction that should appear upwards; a fallback is used when it is parallel
            to the viewing direction.
    """
    center = np.asarray(center, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - center
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise InputError(f"look_at: target coincides with the camera centre {center}")
    z = forward / norm
    up = np.asarray(up, dtype=np.float64)
    x = np.cross(-up, z)
    if np.linalg.norm(x) < 1e-6 * np.linalg.norm(up):
        # Looking straight along `up`: any perpendicular works; pick a fixed one for determinism.
        alt = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = np.cross(-alt, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # right-handed: x cross y = z
    R = np.stack([x, y, z])  # rows are the camera axes in world
    return Rigid3d(R, -R @ center)


def project_points(
    K: np.ndarray, cam_from_world: Rigid3d, points_in_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of (N, 3) world points; returns ((N, 2) px, (N,) depths along +z)."""
    points_in_cam = cam_from_world.apply(points_in_world)
    depth = points_in_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = points_in_cam[:, :2] / depth[:, None]
    px = uv @ K[:2, :2].T + K[:2, 2]
    return px, depth


def _inside_image(px: np.ndarray, width: int, height: int) -> np.ndarray:
    return (
        np.isfinite(px).all(axis=-1)
        & (px[..., 0] >= -0.5)
        & (px[..., 0] < width - 0.5)
        & (px[..., 1] >= -0.5)
        & (px[..., 1] < height - 0.5)
    )


@dataclass
class SyntheticScene:
    """Points seen by pinhole cameras that share one K.

    Attributes:
        points_in_world: (N, 3) float64.
        cams_from_world: C poses ``cam_from_world``.
        K: (3, 3) calibration shared by all cameras.
        width, height: image size in pixels.
        observations_px: (C, N, 2) exact projections (OpenCV origin), also for invisible points.
        visible: (C, N) bool, point in front of the camera (depth > 0) and inside the image.
    """

    points_in_world: np.ndarray
    cams_from_world: list[Rigid3d]
    K: np.ndarray
    width: int
    height: int
    observations_px: np.ndarray
    visible: np.ndarray

    @property
    def num_cameras(self) -> int:
        return len(self.cams_from_world)

    @property
    def num_points(self) -> int:
        return len(self.points_in_world)

    def projection_matrices(self) -> np.ndarray:
        """(C, 3, 4) ``K [R | t]`` per camera."""
        return np.stack([self.K @ c.matrix() for c in self.cams_from_world])

    def camera_centers(self) -> np.ndarray:
        """(C, 3) camera centres in world."""
        return np.stack([c.center for c in self.cams_from_world])


def _sample_structure(num_points: int, structure: str, rng: np.random.Generator) -> np.ndarray:
    """Points around the origin within radius ~1: a uniform ball, or the z = 0 plane (unit disc)."""
    if structure == "volume":
        directions = rng.normal(size=(num_points, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        radii = rng.uniform(0.0, 1.0, size=(num_points, 1)) ** (1.0 / 3.0)
        return directions * radii
    angles = rng.uniform(0.0, 2.0 * np.pi, size=num_points)
    radii = np.sqrt(rng.uniform(0.0, 1.0, size=num_points))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles), np.zeros(num_points)], axis=1)


def _camera_centers(
    num_cameras: int, layout: str, distance: float, structure: str, rng: np.random.Generator
) -> np.ndarray:
    """Camera centres (C, 3) at ``distance`` from the origin for the named layout.

    Plane structures (z = 0) are viewed from the +z side only, at least 30 degrees above the plane,
    so every camera sees the plane's front face without grazing angles.
    """
    if layout == "ring":
        az = np.linspace(0.0, 2.0 * np.pi, num_cameras, endpoint=False) + rng.uniform(0, 2 * np.pi)
        elev = np.deg2rad(
            rng.uniform(35.0, 55.0, size=num_cameras)
            if structure == "plane"
            else rng.uniform(-15.0, 25.0, size=num_cameras)
        )
    elif layout == "sphere":
        if structure == "plane":
            elev = np.arcsin(rng.uniform(np.sin(np.deg2rad(30.0)), 1.0, size=num_cameras))
        else:
            elev = np.arcsin(rng.uniform(-1.0, 1.0, size=num_cameras))
        az = rng.uniform(0.0, 2.0 * np.pi, size=num_cameras)
    else:  # sequence: a smooth arc of 60 degrees, like a hand-held video around the object
        az = np.linspace(-np.pi / 6, np.pi / 6, num_cameras) + rng.uniform(0, 2 * np.pi)
        az += rng.normal(scale=np.deg2rad(0.5), size=num_cameras)
        elev = np.deg2rad((45.0 if structure == "plane" else 10.0) + rng.normal(scale=1.0, size=num_cameras))
    dist = distance * rng.uniform(0.9, 1.1, size=num_cameras)
    return np.stack(
        [dist * np.cos(elev) * np.cos(az), dist * np.cos(elev) * np.sin(az), dist * np.sin(elev)], axis=1
    )


def random_scene(
    num_points: int,
    num_cameras: int,
    *,
    layout: str = "ring",
    structure: str = "volume",
    focal_px: float = 800.0,
    width: int = 640,
    height: int = 480,
    rng: np.random.Generator | int | None = None,
) -> SyntheticScene:
    """Random points around the origin (radius 1) seen by cameras that look at the cloud's centre.

    Cameras sit far enough (about 1.25x the distance at which the unit sphere fills the shorter image
    side) that most points are visible in most views, and look at a slightly jittered target so that
    rotations are generic.

    Args:
        num_points: N >= 1.
        num_cameras: C >= 1.
        layout: "ring" (around the vertical axis), "sphere" (random directions) or "sequence" (a smooth
            60-degree arc, ordered like video frames).
        structure: "volume" (uniform ball) or "plane" (unit disc in the world plane z = 0).
        focal_px: focal length in pixels; the principal point is the image centre.
        width, height: image size in pixels.
        rng: generator, seed or None (seed 0).

    Returns:
        A :class:`SyntheticScene` with exact observations and visibility.
    """
    if int(num_points) < 1 or int(num_cameras) < 1:
        raise InputError(f"need num_points >= 1 and num_cameras >= 1, got {num_points} and {num_cameras}")
    if layout not in _LAYOUTS:
        raise InputError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if structure not in _STRUCTURES:
        raise InputError(f"structure must be one of {_STRUCTURES}, got {structure!r}")
    rng = as_rng(rng)
    K = intrinsics_matrix(focal_px, width, height)
    points = _sample_structure(int(num_points), structure, rng)
    half_fov_tan = 0.5 * min(width, height) / focal_px
    distance = 1.25 * np.sqrt(1.0 + 1.0 / half_fov_tan**2)
    centers = _camera_centers(int(num_cameras), layout, distance, structure, rng)
    targets = rng.normal(scale=0.05, size=centers.shape)
    cams = [look_at(c, tgt) for c, tgt in zip(centers, targets, strict=True)]
    obs = np.empty((len(cams), len(points), 2))
    visible = np.empty((len(cams), len(points)), dtype=bool)
    for i, cam in enumerate(cams):  # loop over cameras only; projection is vectorised over points
        obs[i], depth = project_points(K, cam, points)
        visible[i] = (depth > 1e-9) & _inside_image(obs[i], width, height)
    logger.debug(
        "random_scene: %d points, %d cameras, %.1f%% visible", len(points), len(cams), 100.0 * visible.mean()
    )
    return SyntheticScene(points, cams, K, int(width), int(height), obs, visible)


def add_pixel_noise(
    px: np.ndarray, sigma_px: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Return a copy of (..., 2) pixels plus isotropic Gaussian noise with std ``sigma_px`` per axis."""
    px = np.asarray(px, dtype=np.float64)
    if not np.isfinite(sigma_px) or sigma_px < 0:
        raise InputError(f"sigma_px must be >= 0 and finite, got {sigma_px}")
    rng = as_rng(rng)
    return px + rng.normal(scale=sigma_px, size=px.shape) if sigma_px > 0 else px.copy()


def add_outliers(
    px: np.ndarray,
    ratio: float,
    width: int,
    height: int,
    rng: np.random.Generator | int | None = None,
    *,
    min_distance_px: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace a fraction of (N, 2) pixels with uniform random positions inside the image.

    Args:
        px: (N, 2) pixels.
        ratio: fraction in [0, 1]; exactly ``round(ratio * N)`` points are replaced.
        width, height: image size; replacements lie in [-0.5, w - 0.5) x [-0.5, h - 0.5).
        rng: generator, seed or None.
        min_distance_px: replacements are re-drawn until at least this far from the original pixel.

    Returns:
        (new (N, 2) pixels, (N,) bool mask that is True for the replaced points).
    """
    px = np.asarray(px, dtype=np.float64)
    if px.ndim != 2 or px.shape[1] != 2:
        raise InputError(f"px must be (N, 2), got {px.shape}")
    if not 0.0 <= ratio <= 1.0:
        raise InputError(f"outlier ratio must be in [0, 1], got {ratio}")
    rng = as_rng(rng)
    n_out = int(round(ratio * len(px)))
    mask = np.zeros(len(px), dtype=bool)
    mask[rng.choice(len(px), size=n_out, replace=False)] = True
    out = px.copy()
    out[mask] = _uniform_far_from(px[mask], width, height, min_distance_px, rng)
    return out, mask


def _uniform_far_from(
    px: np.ndarray,
    width: int,
    height: int,
    min_distance_px: float,
    rng: np.random.Generator,
    *,
    far_enough=None,
) -> np.ndarray:
    """Uniform pixels in the image, re-drawn (vectorised rejection) until ``far_enough`` holds.

    ``far_enough(candidates, idx) -> bool mask`` defaults to "at least ``min_distance_px`` from px[idx]".
    """
    low, high = np.array([-0.5, -0.5]), np.array([width - 0.5, height - 0.5])
    if far_enough is None:

        def far_enough(cand, idx):
            return np.linalg.norm(cand - px[idx], axis=1) >= min_distance_px

    out = np.empty_like(px)
    todo = np.arange(len(px))
    for _ in range(1000):  # each round accepts most candidates; the cap only guards impossible requests
        if len(todo) == 0:
            return out
        cand = rng.uniform(low, high, size=(len(todo), 2))
        ok = far_enough(cand, todo)
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    raise InputError(
        f"could not place {len(todo)} outliers at the requested distance in a {width}x{height} image"
    )


@dataclass
class TwoViewCorrespondences:
    """Matches between two calibrated views that share K.

    Attributes:
        x1_px, x2_px: (N, 2) pixels in image 1 and 2 (with noise and outliers applied).
        K: (3, 3) calibration of both cameras.
        cam2_from_cam1: relative pose with unit-norm translation (camera 1 is the world frame);
            zero translation for pure-rotation data.
        inlier_mask: (N,) bool, False for generated outliers (their x2 is at least 10 px from the
            true epipolar line; for pure rotation, at least 10 px from the true x2).
        points_in_cam1: (N, 3) true 3D points in camera 1 (for outliers, the point x1 came from).
        width, height: image size in pixels.
    """

    x1_px: np.ndarray
    x2_px: np.ndarray
    K: np.ndarray
    cam2_from_cam1: Rigid3d
    inlier_mask: np.ndarray
    points_in_cam1: np.ndarray
    width: int = 640
    height: int = 480

    @property
    def essential(self) -> np.ndarray:
        """True essential matrix ``E = [t]_x R`` with ``x2n^T E x1n = 0`` (H&Z 9.6)."""
        return skew(self.cam2_from_cam1.translation) @ self.cam2_from_cam1.rotation

    @property
    def fundamental(self) -> np.ndarray:
        """True fundamental matrix ``F = K^-T E K^-1`` with ``x2^T F x1 = 0``, scaled to unit norm."""
        K_inv = np.linalg.inv(self.K)
        F = K_inv.T @ self.essential @ K_inv
        norm = np.linalg.norm(F)
        return F / norm if norm > 0 else F  # pure rotation: E = F = 0


def _epipolar_distance_px(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Distance (px) of x2 from the epipolar line F x1."""
    lines = np.c_[x1, np.ones(len(x1))] @ F.T
    return np.abs(np.sum(lines[:, :2] * x2, axis=1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1)


def two_view_correspondences(
    num_points: int = 200,
    *,
    noise_px: float = 0.0,
    outlier_ratio: float = 0.0,
    planar: bool = False,
    pure_rotation: bool = False,
    focal_px: float = 800.0,
    width: int = 640,
    height: int = 480,
    rng: np.random.Generator | int | None = None,
) -> TwoViewCorrespondences:
    """Random correspondences between two views with a generic relative pose.

    Camera 1 is the reference frame. Points are drawn as random pixels of image 1 at depths 4..8 (or on
    a tilted plane about 6 units away when ``planar``), and kept only when also visible in image 2.
    Camera 2 sits at unit distance from camera 1 (baseline/depth ~ 1/6, triangulation angles of
    several degrees) in a random mostly-sideways direction and turns to look at the points, plus a small
    random rotation.

    Args:
        num_points: N >= 1 correspondences.
        noise_px: std of Gaussian pixel noise added to both x1 and x2 (inliers and outliers).
        outlier_ratio: fraction of correspondences whose x2 is replaced by a random pixel at least 10 px
            from the true epipolar line.
        planar: all points on one plane (homography-related views).
        pure_rotation: camera 2 only rotates (about 8-12 degrees) about camera 1's centre; the
            translation is zero (not unit norm) and the views are related by ``H = K R K^-1``.
        focal_px: focal length (principal point at the image centre).
        width, height: image size.
        rng: generator, seed or None.
    """
    if int(num_points) < 1:
        raise InputError(f"num_points must be >= 1, got {num_points}")
    rng = as_rng(rng)
    K = intrinsics_matrix(focal_px, width, height)
    K_inv = np.linalg.inv(K)
    cam2_from_cam1 = _random_rotation_only(rng) if pure_rotation else _random_relative_pose(rng)
    n = int(num_points)
    points = np.empty((0, 3))
    plane = _random_plane(rng) if planar else None
    for _ in range(100):
        cand = _points_seen_by_cam1(4 * n + 16, K_inv, width, height, plane, rng)
        x2, depth2 = project_points(K, cam2_from_cam1, cand)
        keep = (depth2 > 0.1) & _inside_image(x2, width, height)
        points = np.vstack([points, cand[keep]])
        if len(points) >= n:
            break
    else:
        raise RuntimeError("two_view_correspondences: views do not overlap (internal error)")
    points = points[:n]
    x1, _ = project_points(K, Rigid3d(), points)
    x2, _ = project_points(K, cam2_from_cam1, points)
    result = TwoViewCorrespondences(x1, x2, K, cam2_from_cam1, np.ones(n, dtype=bool), points, width, height)
    if outlier_ratio > 0:
        if not 0.0 <= outlier_ratio <= 1.0:
            raise InputError(f"outlier_ratio must be in [0, 1], got {outlier_ratio}")
        F = result.fundamental
        out_idx = rng.choice(n, size=int(round(outlier_ratio * n)), replace=False)
        if pure_rotation:  # no epipolar geometry: keep outliers away from the true match instead
            x2[out_idx] = _uniform_far_from(x2[out_idx], width, height, 10.0, rng)
        else:
            x2[out_idx] = _uniform_far_from(
                x2[out_idx],
                width,
                height,
                0.0,
                rng,
                far_enough=lambda cand, idx: _epipolar_distance_px(F, x1[out_idx[idx]], cand) >= 10.0,
            )
        result.inlier_mask[out_idx] = False
    result.x1_px = add_pixel_noise(x1, noise_px, rng)
    result.x2_px = add_pixel_noise(x2, noise_px, rng)
    return result


def _random_relative_pose(rng: np.random.Generator) -> Rigid3d:
    """cam2_from_cam1 with unit baseline, mostly sideways, camera 2 turned towards the scene centre."""
    direction = np.array([rng.choice([-1.0, 1.0]), rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3)])
    center2 = direction / np.linalg.norm(direction)
    scene_center = np.array([0.0, 0.0, 6.0])
    toward = look_at(center2, scene_center, up=np.array([0.0, -1.0, 0.0]))  # camera 1's up is -y
    jitter = euler_to_matrix(rng.uniform(-np.deg2rad(3.0), np.deg2rad(3.0), size=3))
    R = jitter @ toward.rotation
    return Rigid3d(R, -R @ center2)


def _random_rotation_only(rng: np.random.Generator) -> Rigid3d:
    """cam2_from_cam1 = (R, 0) with a random axis and an angle of 8 to 12 degrees."""
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(8.0, 12.0))
    return Rigid3d.from_rotvec(axis / np.linalg.norm(axis) * angle, np.zeros(3))


def _random_plane(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Plane ``n . X = d`` in camera 1, about 6 units away, tilted up to ~35 degrees from fronto-parallel."""
    tilt = rng.uniform(-0.6, 0.6, size=2)
    normal = np.array([tilt[0], tilt[1], 1.0])
    normal /= np.linalg.norm(normal)
    return normal, 6.0 * normal[2]


def _points_seen_by_cam1(
    count: int, K_inv: np.ndarray, width: int, height: int, plane, rng: np.random.Generator
) -> np.ndarray:
    """Random points whose projection lies in image 1: random pixel rays at random depth / on a plane."""
    px = rng.uniform([-0.5, -0.5], [width - 0.5, height - 0.5], size=(count, 2))
    rays = np.c_[px, np.ones(count)] @ K_inv.T  # z = 1
    if plane is None:
        depth = rng.uniform(4.0, 8.0, size=count)
    else:
        normal, d = plane
        depth = d / (rays @ normal)
    return rays * depth[:, None]


# --------------------------------------------------------------------------------------------------
# Rendered images
# --------------------------------------------------------------------------------------------------


def random_texture(size: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """(size, size, 3) uint8 natural-looking texture: multi-scale smooth colour noise plus shapes.

    Noise octaves give blob-like structure at several scales; random filled circles, rectangles,
    polygons and lines give sharp corners and edges so detectors (SIFT/ORB) find well-localised,
    distinctive keypoints.
    """
    rng = as_rng(rng)
    size = int(size)
    if size < 16:
        raise InputError(f"texture size must be >= 16, got {size}")
    acc = np.zeros((size, size, 3), dtype=np.float32)
    for cells, weight in ((4, 1.0), (12, 0.6), (40, 0.35), (size // 4, 0.2)):
        small = rng.uniform(-1.0, 1.0, size=(cells, cells, 3)).astype(np.float32)
        acc += weight * cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    acc = (acc - acc.min()) / max(float(np.ptp(acc)), 1e-6)
    img = np.ascontiguousarray((40 + 170 * acc).astype(np.uint8))
    num_shapes = max(8, size * size // 1200)
    kinds = rng.integers(0, 4, size=num_shapes)
    centres = rng.integers(0, size, size=(num_shapes, 2))
    # Shape sizes in texels (not relative to the texture) keep the feature density uniform across
    # the ground and box textures, which are rendered at similar texels per image pixel.
    extents = rng.integers(3, 24, size=num_shapes)
    colours = rng.integers(0, 256, size=(num_shapes, 3))
    for kind, (cx, cy), r, col in zip(kinds, centres, extents, colours, strict=True):
        colour = tuple(int(c) for c in col)
        if kind == 0:
            cv2.circle(img, (int(cx), int(cy)), int(r), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (int(cx - r), int(cy - r // 2)), (int(cx + r), int(cy + r)), colour, -1)
        elif kind == 2:
            pts = (np.array([cx, cy]) + rng.integers(-r, r + 1, size=(5, 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            end = (int(cx + rng.integers(-3 * r, 3 * r + 1)), int(cy + rng.integers(-3 * r, 3 * r + 1)))
            cv2.line(img, (int(cx), int(cy)), end, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


@dataclass
class _Quad:
    """A textured planar rectangle ``origin + u * axis_u + v * axis_v`` for (u, v) in [0, 1]^2 (world)."""

    origin: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    texture: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """All-255 uint8 coverage mask of the texture (warped to find the quad's footprint)."""
        return np.full(self.texture.shape[:2], 255, dtype=np.uint8)


@dataclass
class RenderedScene:
    """Rendered RGB views of a textured scene with exact cameras.

    Attributes:
        images: list of (H, W, 3) uint8 RGB images.
        cams_from_world: one ``cam_from_world`` per image.
        K: (3, 3) shared calibration.
        width, height: image size.
        depth_maps: list of (H, W) float32 depth along +z of the surface seen at each pixel centre
            (``inf`` where the background shows).
    """

    images: list[np.ndarray]
    cams_from_world: list[Rigid3d]
    K: np.ndarray
    width: int
    height: int
    depth_maps: list[np.ndarray]

    def transfer(self, i: int, j: int, px_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map (N, 2) pixels of image i to image j through the true surface.

        Depth is read at the nearest pixel centre, so the transfer is exact to about the depth
        variation within one pixel.

        Returns:
            ((N, 2) pixels in image j, (N,) bool valid: surface hit, in front of j, inside j and not
            occluded in j (depth agrees with j's depth map within 1%)).
        """
        px_i = np.asarray(px_i, dtype=np.float64).reshape(-1, 2)
        cols = np.clip(np.rint(px_i[:, 0]).astype(int), 0, self.width - 1)
        rows = np.clip(np.rint(px_i[:, 1]).astype(int), 0, self.height - 1)
        depth = self.depth_maps[i][rows, cols].astype(np.float64)
        rays = np.c_[px_i, np.ones(len(px_i))] @ np.linalg.inv(self.K).T
        points_in_world = self.cams_from_world[i].inverse().apply(rays * depth[:, None])
        with np.errstate(invalid="ignore"):
            px_j, depth_j = project_points(self.K, self.cams_from_world[j], points_in_world)
            valid = np.isfinite(depth) & (depth_j > 0) & _inside_image(px_j, self.width, self.height)
        cj = np.clip(np.rint(px_j[:, 0]).astype(int) * valid, 0, self.width - 1)
        rj = np.clip(np.rint(px_j[:, 1]).astype(int) * valid, 0, self.height - 1)
        seen = self.depth_maps[j][rj, cj]
        with np.errstate(invalid="ignore"):
            valid &= np.abs(seen - depth_j) <= 0.01 * depth_j
        return px_j, valid


def _scene_quads(rng: np.random.Generator, texture_size: int) -> list[_Quad]:
    """A textured ground plane (z = 0, 16x16 units) and two or three textured boxes standing on it."""
    quads = [
        _Quad(
            np.array([-8.0, -8.0, 0.0]),
            np.array([16.0, 0.0, 0.0]),
            np.array([0.0, 16.0, 0.0]),
            random_texture(2 * texture_size, rng),
        )
    ]
    num_boxes = int(rng.integers(2, 4))
    angles = rng.uniform(0, 2 * np.pi) + np.arange(num_boxes) * 2 * np.pi / num_boxes
    for k in range(num_boxes):
        size = rng.uniform(0.8, 1.4, size=3)
        centre = 1.3 * np.array([np.cos(angles[k]), np.sin(angles[k])]) + rng.normal(scale=0.1, size=2)
        yaw = rng.uniform(0, np.pi / 2)
        ex = size[0] * np.array([np.cos(yaw), np.sin(yaw), 0.0])
        ey = size[1] * np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        ez = np.array([0.0, 0.0, size[2]])
        corner = np.array([centre[0], centre[1], 0.0]) - ex / 2 - ey / 2
        faces = [
            (corner, ex, ez),
            (corner + ey, ex, ez),  # the two faces along ex
            (corner, ey, ez),
            (corner + ex, ey, ez),  # the two faces along ey
            (corner + ez, ex, ey),  # top (the bottom rests on the ground, never seen)
        ]
        for origin, au, av in faces:
            quads.append(_Quad(origin, au, av, random_texture(texture_size // 2, rng)))
    return quads


def _render_view(
    quads: list[_Quad], K: np.ndarray, cam: Rigid3d, width: int, height: int, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffered rendering of textured quads: each quad is one cv2.warpPerspective with exact depth.

    Work per quad is limited to the bounding box of its footprint in the image.
    """
    image = background.copy()
    zbuf = np.full((height, width), np.inf, dtype=np.float32)
    # Pixel rays with z = 1: x = (col - cx) / fx, y = (row - cy) / fy (pinhole K without skew).
    ray_x = (np.arange(width) - K[0, 2]) / K[0, 0]
    ray_y = (np.arange(height) - K[1, 2]) / K[1, 1]
    for quad in quads:
        tex = quad.texture
        th, tw = tex.shape[:2]
        origin_c = cam.apply(quad.origin)
        au_c, av_c = cam.rotation @ quad.axis_u, cam.rotation @ quad.axis_v
        normal = np.cross(au_c, av_c)
        offset = normal @ origin_c  # plane: normal . X = offset, in camera coordinates
        if abs(offset) < 1e-9 * np.linalg.norm(normal):
            # Seen edge-on: covers no pixel area. Both sides are textured; the z-buffer hides back faces.
            continue
        # Texel (s, t) -> origin + (s + 0.5) / tw * axis_u + (t + 0.5) / th * axis_v (texel centres).
        A = np.column_stack([au_c / tw, av_c / th, origin_c + 0.5 * au_c / tw + 0.5 * av_c / th])
        H = K @ A
        mask = cv2.warpPerspective(
            quad.mask, H, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
        )
        x0, y0, bw, bh = cv2.boundingRect(mask)
        if bw == 0 or bh == 0:
            continue
        box = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        # Exact depth of the plane along each pixel ray; it also rejects pixels whose ray meets the plane
        # behind the camera, which the homography would otherwise fold into the image.
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = normal[0] * ray_x[None, x0 : x0 + bw] + normal[1] * ray_y[y0 : y0 + bh, None] + normal[2]
            depth = (offset / denom).astype(np.float32)
        keep = (mask[box] > 0) & (depth > 1e-3) & (depth < zbuf[box])
        shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        warped = cv2.warpPerspective(
            tex, shift @ H, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        np.copyto(image[box], warped, where=keep[:, :, None])
        np.copyto(zbuf[box], depth, where=keep)
    return image, zbuf


def render_scene_images(
    num_images: int = 5,
    *,
    width: int = 640,
    height: int = 480,
    focal_px: float | None = None,
    arc_deg: float = 40.0,
    texture_size: int = 512,
    rng: np.random.Generator | int | None = None,
) -> RenderedScene:
    """Render a textured toy scene (ground plane + boxes) from cameras on an arc around it.

    The cameras stand about 7 units from the scene centre, 35-45 degrees above the ground, spread over
    ``arc_deg`` of azimuth and looking at the boxes, so neighbouring views overlap strongly. Textures,
    box placement and camera jitter are all drawn from ``rng``, so a seed reproduces the images exactly.

    Args:
        num_images: number of views (>= 1).
        width, height: image size in pixels.
        focal_px: focal length; defaults to 1.2 * max(width, height) (the project's default focal).
        arc_deg: total azimuth spread of the cameras, degrees.
        texture_size: texel resolution of the box faces (the ground uses twice this).
        rng: generator, seed or None.

    Returns:
        :class:`RenderedScene` with RGB uint8 images, exact poses, K and depth maps.
    """
    if int(num_images) < 1:
        raise InputError(f"num_images must be >= 1, got {num_images}")
    rng = as_rng(rng)
    focal = 1.2 * max(width, height) if focal_px is None else float(focal_px)
    K = intrinsics_matrix(focal, width, height)
    quads = _scene_quads(rng, int(texture_size))
    az0 = rng.uniform(0, 2 * np.pi)
    az = az0 + np.deg2rad(np.linspace(-arc_deg / 2, arc_deg / 2, int(num_images)))
    elev = np.deg2rad(rng.uniform(35.0, 45.0, size=int(num_images)))
    dist = rng.uniform(6.5, 7.5, size=int(num_images))
    centers = np.stack(
        [dist * np.cos(elev) * np.cos(az), dist * np.cos(elev) * np.sin(az), dist * np.sin(elev)], axis=1
    )
    targets = np.array([0.0, 0.0, 0.5]) + rng.normal(scale=0.15, size=centers.shape)
    cams = [look_at(c, t) for c, t in zip(centers, targets, strict=True)]
    # Smooth, nearly featureless "sky" so that background pixels produce no spurious keypoints.
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    background = np.broadcast_to(
        (np.array([150, 180, 220]) * (1 - 0.3 * ramp)).astype(np.uint8), (height, width, 3)
    )
    images, depths = [], []
    for cam in cams:
        img, depth = _render_view(quads, K, cam, int(width), int(height), background)
        images.append(img)
        depths.append(depth)
    return RenderedScene(images, cams, K, int(width), int(height), depths)
