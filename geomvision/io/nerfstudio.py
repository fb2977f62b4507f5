"""nerfstudio ``transforms.json`` export and import.

nerfstudio stores, per frame, ``transform_matrix``: the 4x4 **camera-to-world** matrix in the OpenGL /
Blender camera convention (x right, y up, z backwards). geomvision poses are ``cam_from_world`` with
OpenCV axes (x right, y down, z forward), so ``c2w_gl = inverse(cam_from_world) @ diag(1, -1, -1, 1)``:
the camera's y and z axes (columns 1 and 2 of the rotation) flip sign. The world frame is left unchanged.

Intrinsics use nerfstudio's keys ``fl_x, fl_y, cx, cy, w, h, k1, k2, p1, p2, camera_model``; like COLMAP,
nerfstudio puts pixel centres at +0.5 (its ray grid is ``index + 0.5``), so the principal point gets the
same +0.5 shift as COLMAP files (``geomvision.io.colmap.PIXEL_ORIGIN_SHIFT_PX``) on export, -0.5 on import.
A single camera is written at the top level, several cameras per frame. On import an
``applied_transform`` (written by ``ns-process-data``) is undone. Camera models map to
``OPENCV`` (SIMPLE_RADIAL/RADIAL distortion becomes k1/k2); import gives PINHOLE when all distortion is 0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.io.colmap import PIXEL_ORIGIN_SHIFT_PX
from geomvision.runtime.atomic import atomic_write_text
from geomvision.scene.camera import Camera
from geomvision.scene.reconstruction import Reconstruction, View

logger = logging.getLogger(__name__)

__all__ = ["OPENCV_TO_OPENGL", "write_transforms_json", "read_transforms_json", "camera_to_intrinsics"]

#: right-multiplying a camera-to-world matrix by this swaps OpenCV camera axes for OpenGL ones (and back).
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


def camera_to_intrinsics(camera: Camera) -> dict:
    """nerfstudio intrinsics dict for a geomvision camera (principal point to the corner origin)."""
    fx, fy = camera.focal_xy
    cx, cy = camera.principal_point
    dist = {"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    d = camera.distortion.tolist()
    if camera.model in ("SIMPLE_RADIAL", "RADIAL"):
        dist.update(dict(zip(("k1", "k2"), d, strict=False)))
    elif camera.model == "OPENCV":
        dist.update(dict(zip(("k1", "k2", "p1", "p2"), d, strict=True)))
    return {
        "camera_model": "OPENCV",
        "fl_x": fx,
        "fl_y": fy,
        "cx": cx + PIXEL_ORIGIN_SHIFT_PX,
        "cy": cy + PIXEL_ORIGIN_SHIFT_PX,
        "w": camera.width,
        "h": camera.height,
        **dist,
    }


def write_transforms_json(
    rec: Reconstruction,
    path: str | Path,
    *,
    image_prefix: str = "images/",
    write_points_ply: bool = True,
) -> Path:
    """Write ``transforms.json`` (and ``sparse_pc.ply`` with the 3D points next to it).

    Args:
        rec: reconstruction; registered views become frames, sorted by image id.
        path: destination file, or a folder (then ``folder/transforms.json``).
        image_prefix: prepended to each view name in ``file_path`` (relative to the json's folder).
        write_points_ply: also write the 3D points as ``sparse_pc.ply`` (``ply_file_path`` key), which
            nerfstudio's splatfacto uses for initialisation.

    Returns:
        Path of the json file.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        path = path / "transforms.json"
    ids = rec.registered_image_ids
    if not ids:
        raise InputError("reconstruction has no registered images to export")
    used = sorted({rec.views[i].camera_id for i in ids})
    single = len(used) == 1
    data: dict = camera_to_intrinsics(rec.cameras[used[0]]) if single else {"camera_model": "OPENCV"}
    frames = []
    for image_id in ids:
        view = rec.views[image_id]
        c2w = view.cam_from_world.inverse().matrix4() @ OPENCV_TO_OPENGL
        frame = {
            "file_path": f"{image_prefix}{view.name}",
            "transform_matrix": c2w.tolist(),
            "colmap_im_id": int(image_id),
        }
        if not single:
            frame.update(camera_to_intrinsics(rec.cameras[view.camera_id]))
        frames.append(frame)
    data["frames"] = frames
    if write_points_ply and rec.points3D:
        from geomvision.io.ply import write_reconstruction_ply

        write_reconstruction_ply(path.parent / "sparse_pc.ply", rec)
        data["ply_file_path"] = "sparse_pc.ply"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    logger.info("wrote %d frames to %s", len(frames), path)
    return path


def _camera_from(entry: dict, defaults: dict, camera_id: int, where: str) -> Camera:
    merged = {**defaults, **{k: v for k, v in entry.items() if k != "transform_matrix"}}
    missing = [k for k in _INTRINSIC_KEYS if k not in merged]
    if missing:
        raise InputError(f"{where}: missing intrinsics {missing}")
    model = merged.get("camera_model", "OPENCV")
    if model != "OPENCV":
        raise InputError(f"{where}: unsupported camera_model {model!r} (only OPENCV)")
    extra = {k: merged.get(k, 0.0) for k in ("k3", "k4") if merged.get(k, 0.0)}
    if extra:
        raise InputError(f"{where}: distortion terms {extra} are not supported by geomvision cameras")
    try:
        fx, fy, cx, cy = (float(merged[k]) for k in ("fl_x", "fl_y", "cx", "cy"))
        dist = [float(merged.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2")]
        w, h = int(merged["w"]), int(merged["h"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: bad intrinsics value ({exc})") from exc
    cx, cy = cx - PIXEL_ORIGIN_SHIFT_PX, cy - PIXEL_ORIGIN_SHIFT_PX
    if any(dist):
        return Camera(camera_id, "OPENCV", w, h, [fx, fy, cx, cy, *dist])
    return Camera(camera_id, "PINHOLE", w, h, [fx, fy, cx, cy])


def read_transforms_json(path: str | Path, *, image_prefix: str = "images/") -> Reconstruction:
    """Read a nerfstudio ``transforms.json`` into a Reconstruction (cameras and posed views, no points).

    Frames sharing identical intrinsics share one camera. Image ids come from ``colmap_im_id`` when every
    frame has one, else 1..N in file order. ``image_prefix`` is stripped from ``file_path``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: no 'frames' list")
    defaults = {k: v for k, v in data.items() if k != "frames"}
    # ns-process-data re-orients the world and records it as ``applied_transform`` (3x4,
    # c2w_file = A @ c2w_colmap); undo it so poses come back in the original frame.
    world_from_file = np.eye(4)
    if "applied_transform" in data:
        try:
            applied = np.asarray(data["applied_transform"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: applied_transform is not a numeric matrix") from exc
        if applied.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(applied)):
            raise InputError(f"{path}: applied_transform must be 3x4 or 4x4, got shape {applied.shape}")
        A = np.eye(4)
        A[:3] = applied[:3]
        world_from_file = np.linalg.inv(A)
    use_ids = all("colmap_im_id" in f for f in frames)
    rec = Reconstruction()
    camera_keys: dict[tuple, int] = {}
    for index, frame in enumerate(frames):
        where = f"{path}: frame {index}"
        camera = _camera_from(frame, defaults, len(camera_keys) + 1, where)
        key = (camera.model, camera.width, camera.height, tuple(camera.params.tolist()))
        if key not in camera_keys:
            camera_keys[key] = camera.camera_id
            rec.add_camera(camera)
        try:
            c2w_gl = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: missing or non-numeric transform_matrix") from exc
        if c2w_gl.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(c2w_gl)):
            raise InputError(
                f"{where}: transform_matrix must be a finite 4x4 matrix, got shape {c2w_gl.shape}"
            )
        c2w = np.eye(4)
        c2w[:3] = c2w_gl[:3]
        c2w = world_from_file @ c2w @ OPENCV_TO_OPENGL  # the flip is its own inverse
        R = c2w[:3, :3]
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-6:
            raise InputError(
                f"{where}: transform_matrix rotation is not orthonormal (scaled poses unsupported)"
            )
        name = str(frame.get("file_path", f"frame_{index:05d}"))
        name = name[2:] if name.startswith("./") else name
        name = name[len(image_prefix) :] if image_prefix and name.startswith(image_prefix) else name
        image_id = int(frame["colmap_im_id"]) if use_ids else index + 1
        pose = Rigid3d(R, c2w[:3, 3]).inverse()
        rec.add_view(View(image_id, name, camera_keys[key], pose))
    return rec
