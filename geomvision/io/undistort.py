"""Undistorted image folders other tools take as they are (COLMAP ``image_undistorter`` layout, nerfstudio).

Every camera becomes a PINHOLE camera with the same size, focal lengths and principal point; each image
is resampled so that a pixel of the new image shows what the distorted camera saw along the same ray
(bilinear, black outside the original image). Keypoints move the same way, so the model's
reprojection errors are unchanged. Pinhole cameras are copied as they are.

Layouts (written into a temporary sibling folder, then swapped in, so an existing export is replaced
whole and a failed export leaves the old one):

- ``colmap``: ``DIR/images/<name>`` and ``DIR/sparse/0/{cameras,images,points3D}.bin`` -- what COLMAP's
  ``image_undistorter`` writes and Gaussian-splatting trainers read (they accept only PINHOLE cameras);
- ``nerfstudio``: ``DIR/images/<name>``, ``DIR/transforms.json`` (``file_path`` relative to ``DIR``)
  and ``DIR/sparse_pc.ply`` (``ply_file_path``), which ``ns-train ... --data DIR`` reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from geomvision.errors import InputError
from geomvision.io.images import read_image
from geomvision.runtime.atomic import replace_folder as swap_in_folder
from geomvision.scene.camera import Camera
from geomvision.scene.reconstruction import Point3D, Reconstruction, View

logger = logging.getLogger(__name__)

__all__ = ["pinhole_camera", "undistort_image", "undistort_reconstruction", "export_undistorted"]

#: Files that mark a folder as an earlier export, which may therefore be replaced.
_EXPORT_MARKERS = ("transforms.json", "sparse", "images")
_JPEG_QUALITY = 95


def pinhole_camera(camera: Camera) -> Camera:
    """The PINHOLE camera of the undistorted images: same size, focal lengths and principal point."""
    fx, fy = camera.focal_xy
    cx, cy = camera.principal_point
    return Camera.pinhole(camera.camera_id, fx, fy, cx, cy, camera.width, camera.height)


def undistort_image(image: np.ndarray, camera: Camera, pinhole: Camera | None = None) -> np.ndarray:
    """Resample ``image`` (H, W, C) taken by ``camera`` into the distortion-free ``pinhole`` camera.

    Returns:
        (pinhole.height, pinhole.width, C) image of the same dtype; pixels whose ray falls outside
        the original image are black.
    """
    pinhole = pinhole or pinhole_camera(camera)
    if not camera.distortion.any() and pinhole.width == camera.width and pinhole.height == camera.height:
        if np.allclose(pinhole.K, camera.K):
            return image.copy()
    # OpenCV's undistortion maps implement exactly this model family (pixel centres at integers, like
    # geomvision), ~17x faster than projecting every pixel's ray in numpy; test_first_hour checks that
    # the maps equal Camera.project for every model.
    map_x, map_y = cv2.initUndistortRectifyMap(
        camera.K, _opencv_distortion(camera), None, pinhole.K, (pinhole.width, pinhole.height), cv2.CV_32FC1
    )
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _opencv_distortion(camera: Camera) -> np.ndarray:
    """OpenCV's (k1, k2, p1, p2) of a camera model (see docs/camera_models.md)."""
    d = camera.distortion
    coefficients = np.zeros(4)
    if camera.model == "SIMPLE_RADIAL":
        coefficients[0] = d[0]
    elif camera.model == "RADIAL":
        coefficients[:2] = d
    elif camera.model == "OPENCV":
        coefficients[:] = d
    return coefficients


def undistort_reconstruction(rec: Reconstruction) -> Reconstruction:
    """The same model with PINHOLE cameras and keypoints moved to the undistorted images."""
    out = Reconstruction(next_point3D_id=rec.next_point3D_id)
    for camera in rec.cameras.values():
        out.add_camera(pinhole_camera(camera))
    for image_id, view in rec.views.items():
        camera = rec.cameras[view.camera_id]
        keypoints = view.keypoints_px
        if len(keypoints) and camera.distortion.any():
            normalised = camera.unproject(keypoints)
            keypoints = normalised @ np.diag(out.cameras[view.camera_id].focal_xy) + np.array(
                out.cameras[view.camera_id].principal_point
            )
        out.add_view(
            View(image_id, view.name, view.camera_id, view.cam_from_world, keypoints, view.point3D_ids.copy())
        )
    for point_id, point in rec.points3D.items():
        out.points3D[point_id] = Point3D(point.xyz.copy(), point.color.copy(), point.error, list(point.track))
    return out


def _write_image(path: Path, image_rgb: np.ndarray) -> None:
    suffix = (
        path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff") else ".png"
    )
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(suffix, np.ascontiguousarray(image_rgb[:, :, ::-1]), params)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def export_undistorted(
    rec: Reconstruction,
    image_dir: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    layout: Literal["colmap", "nerfstudio"] = "colmap",
) -> Path:
    """Write undistorted images of the registered views plus a PINHOLE model in ``layout``.

    Args:
        rec: the reconstruction (COLMAP model read back, or the pipeline's).
        image_dir: folder holding the original images under the views' names.
        dest: destination folder; an earlier export there is replaced whole.
        layout: "colmap" (``images/`` + ``sparse/0`` binary) or "nerfstudio" (``images/`` +
            ``transforms.json`` + ``sparse_pc.ply``).

    Returns:
        ``dest``.

    Raises:
        InputError: no registered view, an original image missing, or ``dest`` is a file or a folder
            that is not an earlier export.
    """
    if layout not in ("colmap", "nerfstudio"):
        raise InputError(f"layout must be 'colmap' or 'nerfstudio', got {layout!r}")
    image_dir, dest = Path(image_dir), Path(dest)
    ids = rec.registered_image_ids
    if not ids:
        raise InputError("the reconstruction has no registered images to export")
    missing = [rec.views[i].name for i in ids if not (image_dir / rec.views[i].name).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} original images not found in {image_dir} (e.g. {missing[0]}); pass --images DIR"
        )
    undistorted = undistort_reconstruction(rec)

    def write(folder: Path) -> None:
        for image_id in ids:
            view = rec.views[image_id]
            image = read_image(image_dir / view.name)
            camera = rec.cameras[view.camera_id]
            if image.shape[:2] != (camera.height, camera.width):
                raise InputError(
                    f"{view.name} is {image.shape[1]}x{image.shape[0]} but its camera is "
                    f"{camera.width}x{camera.height}: not the images this model was made from"
                )
            _write_image(
                folder / "images" / view.name,
                undistort_image(image, camera, undistorted.cameras[view.camera_id]),
            )
        if layout == "colmap":
            from geomvision.io.colmap import write_model

            write_model(undistorted, folder / "sparse" / "0", binary=True)
        else:
            from geomvision.io.nerfstudio import write_transforms_json

            write_transforms_json(undistorted, folder / "transforms.json", image_prefix="images/")

    replace_folder(dest, write)
    logger.info("wrote %d undistorted images and a PINHOLE model (%s layout) to %s", len(ids), layout, dest)
    return dest


def replace_folder(dest: Path, write: Callable[[Path], object]) -> None:
    """Write a folder next to ``dest`` and swap it in; an existing ``dest`` must be an earlier export.

    A failure (or a kill) leaves the old ``dest`` in place; the new folder appears whole or not at all.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"export destination {dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not any((dest / m).exists() for m in _EXPORT_MARKERS):
        raise InputError(f"refusing to replace {dest}: it is not empty and holds no earlier export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")

    def write_into(folder: Path) -> None:
        folder.mkdir()
        write(folder)

    swap_in_folder(dest, write_into, tmp=tmp, old=old)
