"""Image discovery and decoding (RGB uint8, EXIF orientation applied, EXIF focal length).

Pixels follow the OpenCV convention: ``image[y, x]``, origin at the centre of the top-left pixel.
Images are given integer ids 1..N in the sorted order returned by :func:`list_images`.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from geomvision.errors import InputError

logger = logging.getLogger(__name__)

#: File extensions (lower case) treated as images; everything else in a folder is skipped.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".pgm", ".ppm", ".pnm", ".jp2"}
)

# EXIF tag ids (Exif 2.3 specification).
_TAG_ORIENTATION = 0x0112
_TAG_EXIF_IFD = 0x8769
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_35MM = 0xA405
_TAG_FOCAL_PLANE_X_RES = 0xA20E
_TAG_FOCAL_PLANE_UNIT = 0xA210
_TAG_EXIF_IMAGE_WIDTH = 0xA002
#: FocalPlaneResolutionUnit -> millimetres per unit (2 = inch, 3 = cm, 4 = mm, 5 = um).
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}
#: Width of a full-frame 35 mm film frame, the reference of FocalLengthIn35mmFilm.
_FILM_35MM_WIDTH_MM = 36.0


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a folder, sorted by name (image ids are 1 + position in this list).

    Non-image files (by extension) and sub-folders are skipped; unreadable files are kept here
    (:func:`scan_images` also checks that each one decodes and skips the bad ones).

    Raises:
        InputError: the folder does not exist, is not a folder, or holds no image files.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InputError(f"image folder {str(folder)!r} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    skipped = sum(1 for p in folder.iterdir() if p.is_file()) - len(paths)
    if skipped:
        logger.debug("skipped %d non-image files in %s", skipped, folder)
    if not paths:
        raise InputError(
            f"image folder {str(folder)!r} contains no images (extensions {sorted(IMAGE_EXTENSIONS)})"
        )
    return paths


#: Leading bytes of the formats whose end can be checked cheaply, and of macOS resource forks.
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: AppleDouble header: the ``._name`` files macOS writes next to every file on non-Apple disks.
_APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"


def _looks_truncated(data: bytes) -> bool:
    """Cheap end-of-stream check by content (OpenCV decodes truncated JPEGs with only a warning).

    The format comes from the leading bytes, never from the file name: a PNG named ``.jpg`` is a PNG.
    """
    if data.startswith(_JPEG_MAGIC):
        # The EOI marker may be followed by padding, so look for it near the end.
        return b"\xff\xd9" not in data[-4096:]
    if data.startswith(_PNG_MAGIC):
        return b"IEND" not in data[-64:]
    return False


@dataclass(frozen=True, kw_only=True)
class SkippedImage:
    """An image-named file that cannot be used, and why (listed in ``report.json`` ``skipped_images``)."""

    name: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ImageScan:
    """What :func:`scan_images` found in a folder.

    Attributes:
        paths: usable images, sorted by name (image ids are 1 + position in this list).
        skipped: image-named files that cannot be decoded (empty, resource forks, corrupt, truncated).
        ignored: other entries, not looked at: files without an image extension and sub-folders
            (named with a trailing ``/``); the folder is not searched recursively.
    """

    paths: list[Path]
    skipped: list[SkippedImage] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def image_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes.

    Decodes by content (the extension is not trusted), at reduced resolution where the format allows
    (JPEG draft mode), so checking a folder costs a fraction of the feature extraction.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not data:
        return "empty file (0 bytes)"
    if data.startswith(_APPLEDOUBLE_MAGIC):
        return "macOS resource fork (AppleDouble '._' file), not an image"
    if _looks_truncated(data):
        return "truncated (no end-of-image marker)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if data.startswith(_PNG_MAGIC):  # chunk CRCs, without inflating the pixels (~10x faster)
                im.verify()
            else:  # JPEG: decoded at 1/8 scale (DCT scaling); other formats in full
                im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        return None
    except UnidentifiedImageError:
        if data.startswith((_JPEG_MAGIC, _PNG_MAGIC)):  # formats PIL always reads: really corrupt
            return "cannot be decoded (corrupt JPEG/PNG data)"
        # else a format PIL may lack (e.g. JPEG 2000 without OpenJPEG): ask OpenCV below
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not usable"
        return f"cannot be decoded ({' '.join(str(exc).split()) or type(exc).__name__})"
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if decoded is None or decoded.size == 0:
        return "not a decodable image (unknown or corrupt format)"
    return None


def scan_images(folder: str | os.PathLike, *, strict: bool = False) -> ImageScan:
    """The usable images of a folder; bad ones are skipped with one warning line each.

    Files with an image extension are decoded by content (see :func:`image_problem`); a file that
    fails is skipped (like COLMAP's feature extractor) unless ``strict``. Files without an image
    extension (``Thumbs.db``, ``notes.txt``) and sub-folders are ignored and listed in ``ignored``.

    Raises:
        InputError: the folder is missing or not a folder, holds no image files, or (``strict``) an
            image file cannot be decoded.
    """
    paths = list_images(folder)
    usable, skipped = [], []
    for path in paths:
        problem = image_problem(path)
        if problem is None:
            usable.append(path)
            continue
        if strict:
            raise InputError(f"image file {str(path)!r}: {problem} (without --strict it is skipped)")
        logger.warning("skipping %s: %s", path.name, problem)
        skipped.append(SkippedImage(name=path.name, reason=problem))
    chosen = {p.name for p in paths}
    ignored = sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in Path(folder).iterdir()
        if entry.name not in chosen
    )
    if ignored:
        logger.info("ignored %d non-image entries in %s: %s", len(ignored), folder, ", ".join(ignored[:10]))
    return ImageScan(paths=usable, skipped=skipped, ignored=ignored)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Map 16-bit or float images to uint8 (full-scale range preserved)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # 65535 / 257 = 255 exactly, so the full range maps onto the full range.
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    info = np.iinfo(image.dtype)
    scaled = (image.astype(np.float64) - info.min) / (info.max - info.min)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB.

    Handles 8/16-bit depth, grayscale (replicated to 3 channels), RGBA (alpha dropped), palette
    images (expanded) and the EXIF orientation tag (the returned array is upright).

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        InputError: the file is missing, empty, corrupt or truncated (message names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from exc
    return decode_image(data, path)


def decode_image(data: bytes, path: str | os.PathLike) -> np.ndarray:
    """:func:`read_image` on a file's bytes (``path`` names it in errors and gives its format).

    Lets a worker without access to the client's files decode the bytes the client sent.
    """
    path = Path(path)
    if not data:
        raise InputError(f"image file {str(path)!r} is empty")
    if _looks_truncated(data):
        raise InputError(f"image file {str(path)!r} is truncated (no end-of-image marker)")
    # IMREAD_COLOR applies the EXIF orientation and expands gray/palette, ANYDEPTH keeps 16 bit.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise InputError(f"image file {str(path)!r} is corrupt or not a supported image format")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(_to_uint8(image)[:, :, ::-1])


def _read_exif(path: Path):
    """PIL EXIF of ``path`` and the image's stored (w, h), or (None, None) without PIL / EXIF."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with matplotlib
        return None, None
    try:
        with Image.open(path) as im:
            return im.getexif(), im.size
    except Exception:  # noqa: BLE001 - any PIL failure means "no EXIF"
        return None, None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels of the upright image (EXIF orientation 5-8 swaps the axes).

    Reads only the header when PIL is available; otherwise decodes the image.
    """
    path = Path(path)
    exif, size = _read_exif(path)
    if size is None:
        height, width = read_image(path).shape[:2]
        return int(width), int(height)
    width, height = size
    if exif is not None and exif.get(_TAG_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    return int(width), int(height)


def read_exif_focal_px(path: str | os.PathLike, *, sensor_width_mm: float | None = None) -> float | None:
    """Focal length in pixels (of the upright image's longer side) from EXIF, or None.

    Uses, in order: ``FocalLengthIn35mmFilm`` (f_px = f35 / 36 mm * max(w, h)); ``FocalLength`` with
    ``sensor_width_mm`` when given; ``FocalLength`` with ``FocalPlaneXResolution``/``Unit``.
    """
    path = Path(path)
    exif, size = _read_exif(path)
    if exif is None or size is None:
        return None
    sub = exif.get_ifd(_TAG_EXIF_IFD)
    width, height = image_size(path)
    max_side = float(max(width, height))
    focal_35 = _positive(sub.get(_TAG_FOCAL_35MM))
    if focal_35 is not None:
        return focal_35 / _FILM_35MM_WIDTH_MM * max_side
    focal_mm = _positive(sub.get(_TAG_FOCAL_LENGTH))
    if focal_mm is None:
        return None
    if sensor_width_mm is not None and sensor_width_mm > 0:
        return focal_mm / float(sensor_width_mm) * max_side
    plane_res = _positive(sub.get(_TAG_FOCAL_PLANE_X_RES))
    unit_mm = _UNIT_MM.get(int(sub.get(_TAG_FOCAL_PLANE_UNIT, 2)))
    if plane_res is None or unit_mm is None:
        return None
    # Resolution refers to the sensor's full width; rescale if the stored image was resized.
    exif_width = _positive(sub.get(_TAG_EXIF_IMAGE_WIDTH))
    resize = size[0] / exif_width if exif_width else 1.0
    return focal_mm * plane_res / unit_mm * resize


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if np.isfinite(v) and v > 0 else None
