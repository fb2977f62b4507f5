"""Show a reconstruction: an interactive Open3D window, or a headless PNG screenshot.

The screenshot first tries Open3D's Filament ``OffscreenRenderer`` (works headless through EGL or a
software Vulkan driver such as Mesa's llvmpipe); if that cannot start it falls back to a numpy/matplotlib
software renderer (z-sorted point splats and frustum lines) with the same virtual camera, so every
machine can produce a picture. ``GEOMVISION_RENDERER=software|open3d`` forces one backend.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomvision.errors import GeomVisionError, InputError
from geomvision.io.system_libraries import open3d_library_problem
from geomvision.runtime.atomic import atomic_path
from geomvision.scene.reconstruction import Reconstruction
from geomvision.viz.geometry import (
    camera_frustums,
    framing_mask,
    points_array,
    robust_point_mask,
    scene_scale,
    view_graph_segments,
)

logger = logging.getLogger(__name__)

__all__ = ["ViewSetup", "auto_view", "build_geometries", "show", "screenshot", "open3d_offscreen_available"]

BACKGROUND_RGB = (1.0, 1.0, 1.0)
GRAPH_EDGE_RGB = (0.55, 0.55, 0.55)


@dataclass(frozen=True)
class ViewSetup:
    """A virtual look-at camera in world coordinates.

    Attributes:
        eye: (3,) camera position; center: (3,) point looked at; up: (3,) unit up vector;
        fov_deg: vertical field of view in degrees.
    """

    eye: np.ndarray
    center: np.ndarray
    up: np.ndarray
    fov_deg: float = 45.0


def _scene_up(rec: Reconstruction) -> np.ndarray:
    """Up direction of the scene.

    Cameras on a ring or an arc (turntables, orbits): the normal of their best-fit plane, signed by the
    cameras' mean viewing direction (they look down on the object) or their mean 'up', whichever is
    more decisive. Otherwise the mean of the cameras' up directions (OpenCV y points down, so
    up = -row 1 of R). A camera's own up is unreliable on turntable rigs whose images are rotated
    (Middlebury templeRing), which is why the plane comes first.
    """
    ids = rec.registered_image_ids
    rotations = np.array([rec.views[i].cam_from_world.rotation for i in ids]).reshape(-1, 3, 3)
    mean_up = -rotations[:, 1].mean(axis=0) if len(ids) else np.array([0.0, 1.0, 0.0])
    mean_forward = rotations[:, 2].mean(axis=0) if len(ids) else np.zeros(3)
    centers = np.array([rec.views[i].cam_from_world.center for i in ids]).reshape(-1, 3)
    if len(centers) >= 4:
        _, sv, vt = np.linalg.svd(centers - centers.mean(axis=0), full_matrices=False)
        # a ring, or an arc of one (its sagitta makes sv[1] small but the out-of-plane sv[2] is smaller)
        if sv[1] > 0.05 * sv[0] and sv[2] < 0.3 * sv[1]:
            normal = vt[2]
            # Sign: cameras usually look slightly down on the object (forward has a -up component),
            # and upright images have their up along +normal. Trust whichever signal is stronger:
            # rotated images make the mean up cancel out, level rings make the forward vote vanish.
            by_forward, by_up = -(mean_forward @ normal), mean_up @ normal
            vote = by_forward if abs(by_forward) > abs(by_up) else by_up
            return normal * (np.sign(vote) or 1.0)
    norm = np.linalg.norm(mean_up)
    return mean_up / norm if norm > 1e-9 else np.array([0.0, 1.0, 0.0])


def auto_view(
    rec: Reconstruction, *, elevation_deg: float = 35.0, fov_deg: float = 45.0, aspect: float = 4 / 3
) -> ViewSetup:
    """A camera that frames the points and the camera ring, looking down at ``elevation_deg``.

    The target is the median of the points within their robust extent (:func:`framing_mask`: far,
    sparse points are drawn but not framed), or of the camera centres when there are no points. The viewing direction is tilted from the ring plane (normal = mean camera up) towards the
    side of the first registered camera; the distance fits the bounding sphere of points and centres.
    """
    xyz, _ = points_array(rec)
    xyz = xyz[robust_point_mask(xyz)]
    xyz = xyz[framing_mask(xyz)]  # frame the robust extent (median + 5 MAD sigmas), not the bounding box
    centers = np.array(list(rec.camera_centers().values())).reshape(-1, 3)
    if len(xyz) == 0 and len(centers) == 0:
        raise InputError("reconstruction has neither points nor registered cameras to show")
    target = np.median(xyz, axis=0) if len(xyz) else centers.mean(axis=0)
    up = _scene_up(rec)
    # Look from behind the cameras (towards the middle of an arc or a single camera row); for a closed
    # ring, whose mean is the target itself, from the first camera's side.
    side = np.cross(up, [1.0, 0.0, 0.0])
    if len(centers):
        horizontal = (centers - target) - np.outer((centers - target) @ up, up)
        side = horizontal.mean(axis=0)
        if np.linalg.norm(side) < 0.25 * np.linalg.norm(horizontal, axis=1).mean():
            side = horizontal[0]
    side = side - up * (side @ up)
    if np.linalg.norm(side) < 1e-9:
        side = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    el = np.radians(elevation_deg)
    direction = np.cos(el) * side + np.sin(el) * up
    # every camera must be in frame (plus its frustum), but only 99 % of the points: stray points far
    # away must not shrink the model to a dot.
    radius_points = float(np.quantile(np.linalg.norm(xyz - target, axis=1), 0.99)) if len(xyz) else 0.0
    radius_cams = float(np.max(np.linalg.norm(centers - target, axis=1))) if len(centers) else 0.0
    radius = max(radius_points, radius_cams + 0.5 * scene_scale(rec), 1e-6)
    half_fov = np.radians(fov_deg) / 2 * min(1.0, aspect)  # the narrower of the two image axes
    distance = 1.1 * radius / np.sin(half_fov)
    view = ViewSetup(target + distance * direction, target, up, fov_deg)
    # The bounding sphere is conservative; tighten so the content fills ~90 % of the frame.
    fr = camera_frustums(rec) if len(centers) else None
    keypoints = np.vstack([xyz, fr.vertices]) if fr is not None else xyz
    return _fit_view(view, keypoints, aspect, fill=0.9)


def _fit_view(
    view: ViewSetup, points: np.ndarray, aspect: float, *, fill: float, rounds: int = 4
) -> ViewSetup:
    """Re-centre and dolly the look-at camera so ``points`` span ``fill`` of the frame."""
    height = 1000
    width = int(round(height * aspect))
    for _ in range(rounds):
        px, depth = _project(view, width, height, points)
        ok = (depth > 0) & np.all(np.isfinite(px), axis=1)
        if ok.sum() < 2 or not np.all(depth > 0):
            break
        lo, hi = px[ok].min(0), px[ok].max(0)
        half = np.array([width, height]) / 2
        extent = max((hi - lo)[0] / (2 * half[0]), (hi - lo)[1] / (2 * half[1]))
        if extent <= 0:
            break
        # shift the target by the bbox offset measured at the target's depth, then dolly in/out
        forward = view.center - view.eye
        distance = float(np.linalg.norm(forward))
        forward /= distance
        right = np.cross(forward, view.up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        f = 0.5 * height / np.tan(np.radians(view.fov_deg) / 2)
        offset = ((lo + hi) / 2 - (np.array([width, height]) - 1) / 2) * distance / f
        center = view.center + offset[0] * right + offset[1] * down
        new_distance = distance * float(np.clip(extent / fill, 0.5, 2.0))
        view = ViewSetup(center - new_distance * forward, center, view.up, view.fov_deg)
    return view


def build_geometries(
    rec: Reconstruction,
    *,
    view_graph=None,
    frustum_scale: float | None = None,
    order: list[int] | None = None,
    show_frustums: bool = True,
) -> dict[str, object]:
    """Open3D geometries: coloured points, frustum LineSet (registration-order colours), graph edges."""
    import open3d as o3d

    geoms: dict[str, object] = {}
    xyz, rgb = points_array(rec)
    keep = robust_point_mask(xyz)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[keep]))
    cloud.colors = o3d.utility.Vector3dVector(rgb[keep].astype(np.float64) / 255.0)
    geoms["points"] = cloud
    if show_frustums and rec.registered_image_ids:
        fr = camera_frustums(rec, scale=frustum_scale, order=order)
        lines = o3d.geometry.LineSet(
            o3d.utility.Vector3dVector(fr.vertices), o3d.utility.Vector2iVector(fr.lines.astype(np.int32))
        )
        lines.colors = o3d.utility.Vector3dVector(np.repeat(fr.colors, 8, axis=0))
        geoms["frustums"] = lines
    if view_graph is not None:
        segs, _ = view_graph_segments(rec, view_graph)
        if len(segs):
            edges = o3d.geometry.LineSet(
                o3d.utility.Vector3dVector(segs.reshape(-1, 3)),
                o3d.utility.Vector2iVector(np.arange(2 * len(segs)).reshape(-1, 2)),
            )
            edges.colors = o3d.utility.Vector3dVector(np.tile(GRAPH_EDGE_RGB, (len(segs), 1)))
            geoms["view_graph"] = edges
    return geoms


def show(
    rec: Reconstruction,
    *,
    view_graph=None,
    width: int = 1280,
    height: int = 960,
    frustum_scale: float | None = None,
    order: list[int] | None = None,
) -> None:
    """Open an interactive Open3D window (needs a display)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name != "nt":
        raise GeomVisionError("no display available for a window; use --screenshot FILE.png instead")
    import open3d as o3d

    geoms = build_geometries(rec, view_graph=view_graph, frustum_scale=frustum_scale, order=order)
    o3d.visualization.draw_geometries(
        list(geoms.values()), window_name="geomvision", width=width, height=height
    )


def screenshot(
    rec: Reconstruction,
    path_png: str | Path,
    width: int = 1280,
    height: int = 960,
    *,
    view_graph=None,
    frustum_scale: float | None = None,
    order: list[int] | None = None,
    view: ViewSetup | None = None,
    backend: str | None = None,
) -> str:
    """Render the reconstruction headless to a PNG.

    Args:
        rec: reconstruction.
        path_png: output file (written atomically).
        width, height: image size in pixels.
        view_graph: optional networkx graph; its edges are drawn between camera centres.
        frustum_scale: frustum depth in world units (default from the camera spacing).
        order: image ids in registration order (frustum colour ramp).
        view: virtual camera (default ``auto_view``).
        backend: "open3d", "software" or None (auto: Open3D, then software).

    Returns:
        The backend that produced the image: "open3d" or "software".
    """
    if width < 16 or height < 16:
        raise InputError(f"screenshot size must be at least 16x16, got {width}x{height}")
    backend = backend or os.environ.get("GEOMVISION_RENDERER") or "auto"
    if backend not in ("auto", "open3d", "software"):
        raise InputError(f"unknown renderer {backend!r}; expected open3d or software")
    view = view or auto_view(rec, aspect=width / height)
    path_png = Path(path_png)
    image = None
    used = "software"
    if backend == "auto" and (open3d_library_problem() or not open3d_offscreen_available()):
        backend = "software"
    if backend in ("auto", "open3d"):
        try:
            with _native_output_silenced():
                image = _render_open3d(rec, width, height, view, view_graph, frustum_scale, order)
            used = "open3d"
        except Exception as exc:  # the GPU/EGL stack fails in many ways; all mean "use the fallback"
            if backend == "open3d":
                raise GeomVisionError(f"Open3D offscreen rendering failed: {exc}") from exc
            logger.warning("Open3D offscreen rendering unavailable (%s); using the software renderer", exc)
    if image is None:
        image = _render_software(rec, width, height, view, view_graph, frustum_scale, order)
    _write_png(path_png, image)
    logger.info("wrote %dx%d screenshot (%s renderer) to %s", width, height, used, path_png)
    return used


@functools.cache
def open3d_offscreen_available(timeout_s: float = 120.0) -> bool:
    """Whether Open3D's OffscreenRenderer starts here, probed once per process in a child process.

    A broken EGL/Vulkan stack can abort the whole process (not just raise), so the first attempt runs
    in a subprocess; the answer is cached.
    """
    code = (
        "import open3d as o3d\n"
        "r = o3d.visualization.rendering.OffscreenRenderer(32, 32)\n"
        "assert r.render_to_image() is not None\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.info("Open3D offscreen probe failed: %s", exc)
        return False
    if proc.returncode != 0:
        logger.info(
            "Open3D offscreen probe exited %d: %s",
            proc.returncode,
            proc.stderr.decode(errors="replace")[-300:],
        )
    return proc.returncode == 0


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(data.tobytes())


@contextlib.contextmanager
def _native_output_silenced():
    """Send C++ prints (Filament's engine banner, Vulkan driver lines) to /dev/null while rendering.

    They go straight to file descriptors 1 and 2, bypassing Python and logging, and would clutter the
    CLI's output; with debug logging on they are kept.
    """
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _render_open3d(rec, width, height, view: ViewSetup, view_graph, frustum_scale, order) -> np.ndarray:
    import open3d as o3d

    rendering = o3d.visualization.rendering
    renderer = rendering.OffscreenRenderer(width, height)
    try:
        scene = renderer.scene
        scene.set_background([*BACKGROUND_RGB, 1.0])
        scene.view.set_post_processing(False)  # no tone mapping: keep the points' true colours
        geoms = build_geometries(rec, view_graph=view_graph, frustum_scale=frustum_scale, order=order)
        point_mat = rendering.MaterialRecord()
        point_mat.shader = "defaultUnlit"
        point_mat.point_size = float(max(2.0, round(min(width, height) / 300)))
        line_mat = rendering.MaterialRecord()
        line_mat.shader = "unlitLine"
        line_mat.line_width = float(max(1.5, min(width, height) / 500))
        for name, geom in geoms.items():
            if name == "points" and len(geom.points) == 0:
                continue
            scene.add_geometry(name, geom, point_mat if name == "points" else line_mat)
        renderer.setup_camera(
            view.fov_deg,
            view.center.astype(np.float32),
            view.eye.astype(np.float32),
            view.up.astype(np.float32),
        )
        image = np.asarray(renderer.render_to_image())
    finally:
        del renderer
    if image.ndim != 3 or image.shape[:2] != (height, width):
        raise GeomVisionError(f"renderer returned an image of shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def _project(view: ViewSetup, width: int, height: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) and depths (N,) of world points in the look-at camera (OpenCV axes)."""
    z = view.center - view.eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, view.up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    cam = (points - view.eye) @ R.T
    f = 0.5 * height / np.tan(np.radians(view.fov_deg) / 2)
    depth = cam[:, 2]
    safe = np.where(depth > 1e-9, depth, np.nan)
    px = np.column_stack([f * cam[:, 0] / safe + (width - 1) / 2, f * cam[:, 1] / safe + (height - 1) / 2])
    return px, depth


def _render_software(rec, width, height, view: ViewSetup, view_graph, frustum_scale, order) -> np.ndarray:
    """Painter's algorithm with matplotlib: far-to-near point splats, then lines (Agg, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=BACKGROUND_RGB)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.axis("off")
    xyz, rgb = points_array(rec)
    keep = robust_point_mask(xyz)
    xyz, rgb = xyz[keep], rgb[keep]
    if len(xyz):
        px, depth = _project(view, width, height, xyz)
        vis = depth > 0
        idx = np.flatnonzero(vis)[np.argsort(-depth[vis])]  # far first, near drawn last
        size = max(2.0, min(width, height) / 300) ** 2
        ax.scatter(px[idx, 0], px[idx, 1], s=size, c=rgb[idx] / 255.0, marker="o", linewidths=0)

    def segments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        pa, da = _project(view, width, height, a)
        pb, db = _project(view, width, height, b)
        ok = (da > 0) & (db > 0)
        return np.stack([pa, pb], axis=1), ok

    if view_graph is not None:
        segs, _ = view_graph_segments(rec, view_graph)
        if len(segs):
            s2, ok = segments(segs[:, 0], segs[:, 1])
            ax.add_collection(LineCollection(s2[ok], colors=[GRAPH_EDGE_RGB], linewidths=0.8))
    if rec.registered_image_ids:
        fr = camera_frustums(rec, scale=frustum_scale, order=order)
        s2, ok = segments(fr.vertices[fr.lines[:, 0]], fr.vertices[fr.lines[:, 1]])
        colors = np.repeat(fr.colors, 8, axis=0)
        ax.add_collection(
            LineCollection(s2[ok], colors=colors[ok], linewidths=max(1.0, min(width, height) / 500))
        )
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[:, :, :3]
    return np.ascontiguousarray(image[:height, :width])
