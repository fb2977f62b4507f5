"""Initial cameras of a folder of images: known intrinsics, EXIF focal length, or a default guess.

Pixel convention: geomvision (like OpenCV) puts the centre of the top-left pixel at (0, 0). COLMAP's
``cameras.txt`` puts its top-left *corner* there, so a principal point copied from COLMAP is 0.5 px
larger: ``cx_opencv = cx_colmap - 0.5`` (``intrinsics_convention="colmap"`` does that subtraction).

Shared intrinsics (``intrinsics`` given, or ``single_camera=True``) give one camera per distinct image
size, never one camera for images of several sizes: a 768x512 calibration applied to 1152x768 photos
is a silently wrong model. Known intrinsics belong to one image size (``intrinsics_size_px``, or the
size of every image when all have one); other sizes are an error unless ``scale_intrinsics`` asks to
rescale them (only for resized images of the same aspect ratio, not crops).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from geomvision.errors import InputError
from geomvision.geometry.camera_models import default_focal_px, default_params
from geomvision.io.images import image_size, read_exif_focal_px
from geomvision.scene.camera import Camera

logger = logging.getLogger(__name__)

__all__ = ["PIXEL_CONVENTIONS", "scale_pinhole", "setup_cameras", "to_opencv_principal_point"]

#: Where the principal point's origin lies: "opencv" = centre of the top-left pixel, "colmap" = its
#: top-left corner (cameras.txt, nerfstudio).
PIXEL_CONVENTIONS = ("opencv", "colmap")
#: Largest relative difference of the x and y scale factors still taken as a plain resize.
_MAX_ASPECT_MISMATCH = 0.01


def to_opencv_principal_point(
    cx: float, cy: float, convention: Literal["opencv", "colmap"]
) -> tuple[float, float]:
    """Principal point in geomvision's (OpenCV) pixel-centre convention."""
    if convention not in PIXEL_CONVENTIONS:
        raise InputError(f"intrinsics convention must be one of {PIXEL_CONVENTIONS}, got {convention!r}")
    shift = 0.5 if convention == "colmap" else 0.0
    return cx - shift, cy - shift


def scale_pinhole(
    intrinsics: Sequence[float], from_size_px: tuple[int, int], to_size_px: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Pinhole (fx, fy, cx, cy) of ``from_size_px`` images for the same images resized to ``to_size_px``.

    Pixel centres at integers: a pixel edge at -0.5 maps to -0.5, so ``c' = s (c + 0.5) - 0.5``.

    Raises:
        InputError: the aspect ratios differ by more than 1 % (a crop, not a resize).
    """
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    sx = to_size_px[0] / from_size_px[0]
    sy = to_size_px[1] / from_size_px[1]
    if abs(sx - sy) > _MAX_ASPECT_MISMATCH * max(sx, sy):
        raise InputError(
            f"cannot scale intrinsics of {from_size_px[0]}x{from_size_px[1]} images to "
            f"{to_size_px[0]}x{to_size_px[1]}: the aspect ratio differs (a crop, not a resize)"
        )
    return fx * sx, fy * sy, sx * (cx + 0.5) - 0.5, sy * (cy + 0.5) - 0.5


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def setup_cameras(
    paths: Sequence[Path],
    image_ids: Sequence[int],
    *,
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool | None = None,
    intrinsics: Sequence[float] | None = None,
    intrinsics_convention: Literal["opencv", "colmap"] = "opencv",
    intrinsics_size_px: tuple[int, int] | None = None,
    scale_intrinsics: bool = False,
) -> tuple[dict[int, Camera], dict[int, int]]:
    """Initial cameras: known ``intrinsics``, else EXIF focal length, else ``1.2 * max(w, h)``.

    Args:
        paths: image files, one per id.
        image_ids: their ids.
        camera_model: model of estimated cameras (known intrinsics give PINHOLE).
        single_camera: share intrinsics among images (one camera per image size: True), one camera
            per image (False), or None = shared when all images have one size.
        intrinsics: known pinhole (fx, fy, cx, cy) in pixels, or None to estimate.
        intrinsics_convention: origin of (cx, cy): "opencv" (centre of the top-left pixel) or
            "colmap" (its corner; ``cx_opencv = cx_colmap - 0.5``).
        intrinsics_size_px: (width, height) the intrinsics belong to; None = the images' size when
            they all share one.
        scale_intrinsics: rescale ``intrinsics`` to images of other sizes (same aspect ratio).

    Returns:
        (cameras by camera_id, camera_id of each image_id).

    Raises:
        InputError: intrinsics whose size differs from (some of) the images without
            ``scale_intrinsics``, several image sizes without ``intrinsics_size_px``, or a principal
            point outside the image.
    """
    sizes = {i: image_size(p) for i, p in zip(image_ids, paths, strict=True)}
    distinct = sorted(set(sizes.values()))
    if intrinsics is not None:
        return _known_cameras(
            paths,
            image_ids,
            sizes,
            distinct,
            intrinsics,
            intrinsics_convention,
            intrinsics_size_px,
            scale_intrinsics,
        )
    shared = single_camera if single_camera is not None else len(distinct) == 1
    cameras: dict[int, Camera] = {}
    camera_of_image: dict[int, int] = {}
    camera_of_size: dict[tuple[int, int], int] = {}
    for i, path in zip(image_ids, paths, strict=True):
        size = sizes[i]
        if shared and size in camera_of_size:
            camera_of_image[i] = camera_of_size[size]
            continue
        w, h = size
        focal = read_exif_focal_px(path) or default_focal_px(w, h)
        camera_id = len(cameras) + 1 if shared else i
        cameras[camera_id] = Camera(camera_id, camera_model, w, h, default_params(camera_model, w, h, focal))
        camera_of_image[i] = camera_of_size[size] = camera_id
    if shared and len(distinct) > 1:
        logger.info("shared intrinsics: one camera per image size (%s)", ", ".join(map(_size_text, distinct)))
    return cameras, camera_of_image


def _known_cameras(
    paths, image_ids, sizes, distinct, intrinsics, convention, intrinsics_size_px, scale
) -> tuple[dict[int, Camera], dict[int, int]]:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    cx, cy = to_opencv_principal_point(cx, cy, convention)
    counts = {s: sum(1 for v in sizes.values() if v == s) for s in distinct}
    listing = ", ".join(f"{_size_text(s)}: {counts[s]} images" for s in distinct)
    if intrinsics_size_px is None:
        if len(distinct) > 1:
            raise InputError(
                f"--intrinsics given but the images have {len(distinct)} sizes ({listing}); name the size "
                "they belong to with --intrinsics-size WxH (and add --scale-intrinsics to rescale them "
                "for the other sizes)"
            )
        base = distinct[0]
    else:
        base = (int(intrinsics_size_px[0]), int(intrinsics_size_px[1]))
    if not (-0.5 <= cx < base[0] - 0.5 and -0.5 <= cy < base[1] - 0.5):
        raise InputError(
            f"--intrinsics principal point ({cx}, {cy}) lies outside the {_size_text(base)} images"
        )
    others = [s for s in distinct if s != base]
    if others and not scale:
        first = next(Path(p).name for i, p in zip(image_ids, paths, strict=True) if sizes[i] == others[0])
        raise InputError(
            f"--intrinsics are for {_size_text(base)} images but {sum(counts[s] for s in others)} images "
            f"have another size ({listing}; e.g. {first}); add --scale-intrinsics to rescale them, or "
            "reconstruct each size separately"
        )
    cameras: dict[int, Camera] = {}
    camera_of_size: dict[tuple[int, int], int] = {}
    for size in distinct:
        params = (fx, fy, cx, cy) if size == base else scale_pinhole((fx, fy, cx, cy), base, size)
        camera_id = len(cameras) + 1
        cameras[camera_id] = Camera.pinhole(camera_id, *params, size[0], size[1])
        camera_of_size[size] = camera_id
    return cameras, {i: camera_of_size[sizes[i]] for i in image_ids}
