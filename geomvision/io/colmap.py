"""Read and write COLMAP sparse models (``cameras``, ``images``, ``points3D``; text and binary).

Formats follow COLMAP's documentation (``docs/format.rst``) and its ``read_write_model.py``:

* ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``.
* ``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then
  ``X Y POINT3D_ID`` triples (``-1`` = no 3D point). The pose is ``cam_from_world`` with ``quat_wxyz``.
* ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*``.
* ``*.bin``: the same content, little endian: counts as uint64, camera ``(int32 id, int32 model_id, uint64 w,
  uint64 h, float64 params[])``, image ``(int32 id, float64 q[4], float64 t[3], int32 camera_id, name\\0,
  uint64 n, (float64 x, float64 y, int64 point3D_id)[n])``, point ``(uint64 id, float64 xyz[3], uint8 rgb[3],
  float64 error, uint64 n, (int32 image_id, int32 point2D_idx)[n])``.

Pixel origin: geomvision uses OpenCV's (centre of the top-left pixel is (0, 0)); COLMAP uses the corner of the
top-left pixel. Keypoints and principal points therefore get +0.5 on export and -0.5 on import, here only.

Only registered views are written (COLMAP has no pose-less image in a sparse model); track elements that
point to an unwritten view are dropped on export.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.io.atomic import atomic_write_bytes, atomic_write_text
from geomvision.scene.camera import CAMERA_MODELS, Camera
from geomvision.scene.reconstruction import Point3D, Reconstruction, View

logger = logging.getLogger(__name__)

__all__ = [
    "COLMAP_MODEL_IDS",
    "PIXEL_ORIGIN_SHIFT_PX",
    "find_model_folder",
    "read_model",
    "write_model",
    "read_cameras_text",
    "read_images_text",
    "read_points3D_text",
    "read_cameras_binary",
    "read_images_binary",
    "read_points3D_binary",
]

#: COLMAP's numeric model ids (``colmap/sensor/models.h``) for the models geomvision supports.
COLMAP_MODEL_IDS: dict[str, int] = {
    "SIMPLE_PINHOLE": 0,
    "PINHOLE": 1,
    "SIMPLE_RADIAL": 2,
    "RADIAL": 3,
    "OPENCV": 4,
}
_MODEL_NAMES = {v: k for k, v in COLMAP_MODEL_IDS.items()}

#: COLMAP pixel = OpenCV pixel + this shift.
PIXEL_ORIGIN_SHIFT_PX = 0.5

_FILES = ("cameras", "images", "points3D")
_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<i8")])
_TRACK_DTYPE = np.dtype([("image_id", "<i4"), ("point2D_idx", "<i4")])


# --------------------------------------------------------------------------------------------------
# pixel-origin conversion (the only place in the package that shifts by 0.5)
# --------------------------------------------------------------------------------------------------
def _principal_point_indices(model: str) -> tuple[int, int]:
    names = CAMERA_MODELS[model]
    return names.index("cx"), names.index("cy")


def _params_to_colmap(camera: Camera) -> np.ndarray:
    params = camera.params.copy()
    params[list(_principal_point_indices(camera.model))] += PIXEL_ORIGIN_SHIFT_PX
    return params


def _params_from_colmap(model: str, params: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=np.float64).copy()
    params[list(_principal_point_indices(model))] -= PIXEL_ORIGIN_SHIFT_PX
    return params


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def find_model_folder(path: str | Path) -> Path:
    """Locate a COLMAP model folder: ``path`` itself, ``path/sparse/0`` or ``path/sparse``.

    Raises:
        InputError: none of them holds ``cameras``/``images``/``points3D`` (``.txt`` or ``.bin``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model path {path} does not exist")
    for candidate in (path, path / "sparse" / "0", path / "sparse"):
        if _detect_format(candidate) is not None:
            return candidate
    raise InputError(f"no COLMAP model (cameras/images/points3D .txt or .bin) in {path} or {path}/sparse/0")


def _detect_format(folder: Path) -> str | None:
    for ext in (".bin", ".txt"):
        if all((folder / f"{name}{ext}").is_file() for name in _FILES):
            return ext
    return None


def read_model(folder: str | Path) -> Reconstruction:
    """Read a COLMAP model (binary if all three ``.bin`` files exist, else text).

    Args:
        folder: the model folder, or an output folder holding ``sparse/0``.

    Returns:
        Reconstruction with OpenCV-origin pixels, ``cam_from_world`` poses and linked tracks.

    Raises:
        InputError: missing or malformed files (the message names the file and line or byte offset).
    """
    folder = find_model_folder(folder)
    if _detect_format(folder) == ".bin":
        cameras = read_cameras_binary(folder / "cameras.bin")
        views = read_images_binary(folder / "images.bin")
        points = read_points3D_binary(folder / "points3D.bin")
    else:
        cameras = read_cameras_text(folder / "cameras.txt")
        views = read_images_text(folder / "images.txt")
        points = read_points3D_text(folder / "points3D.txt")
    return _assemble(cameras, views, points, folder)


def write_model(rec: Reconstruction, folder: str | Path, *, binary: bool = False) -> Path:
    """Write ``rec`` as a COLMAP model into ``folder`` (created if needed); each file atomically.

    Args:
        rec: the reconstruction; only registered views are written.
        folder: destination model folder (e.g. ``OUT/sparse/0``).
        binary: ``.bin`` files instead of ``.txt``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    views = [rec.views[i] for i in rec.registered_image_ids]
    written = {v.image_id for v in views}
    if binary:
        atomic_write_bytes(folder / "cameras.bin", _cameras_binary(rec.cameras))
        atomic_write_bytes(folder / "images.bin", _images_binary(views))
        atomic_write_bytes(folder / "points3D.bin", _points3D_binary(rec.points3D, written))
    else:
        atomic_write_text(folder / "cameras.txt", _cameras_text(rec.cameras))
        atomic_write_text(folder / "images.txt", _images_text(views))
        atomic_write_text(folder / "points3D.txt", _points3D_text(rec.points3D, written))
    logger.info(
        "wrote COLMAP %s model (%d cameras, %d images, %d points) to %s",
        "binary" if binary else "text",
        len(rec.cameras),
        len(views),
        len(rec.points3D),
        folder,
    )
    return folder


def _assemble(
    cameras: dict[int, Camera], views: dict[int, View], points: dict[int, Point3D], folder: Path
) -> Reconstruction:
    rec = Reconstruction()
    for camera in cameras.values():
        rec.add_camera(camera)
    for view in views.values():
        if view.camera_id not in rec.cameras:
            raise InputError(
                f"{folder}: image {view.image_id} ({view.name}) uses unknown camera {view.camera_id}"
            )
        rec.add_view(view)
    for pid, point in points.items():
        for image_id, idx in point.track:
            view = rec.views.get(image_id)
            if view is None or not 0 <= idx < len(view.keypoints_px):
                raise InputError(f"{folder}: point3D {pid} observes missing image {image_id} / point2D {idx}")
            # points3D is authoritative for tracks (COLMAP rebuilds images' ids from it too).
            view.point3D_ids[idx] = pid
    rec.points3D = points
    rec.next_point3D_id = max(points, default=0) + 1
    return rec


# --------------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------------
def _data_lines(path: Path):
    """Yield ``(line_number, stripped_line)`` for every non-comment line (blank lines included)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"COLMAP file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith("#"):
            yield number, line


def _floats(tokens: list[str], path: Path, number: int, what: str) -> np.ndarray:
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}:{number}: bad {what}: {' '.join(tokens)[:80]!r}") from exc
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}:{number}: non-finite {what}: {' '.join(tokens)[:80]!r}")
    return values


def _int(token: str, path: Path, number: int, what: str) -> int:
    try:
        return int(token)
    except ValueError as exc:
        raise InputError(f"{path}:{number}: bad {what} {token!r}") from exc


def read_cameras_text(path: str | Path) -> dict[int, Camera]:
    """Parse ``cameras.txt`` into ``{camera_id: Camera}`` (principal point shifted to the OpenCV origin)."""
    path = Path(path)
    cameras: dict[int, Camera] = {}
    for number, line in _data_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 4:
            raise InputError(
                f"{path}:{number}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line!r}"
            )
        camera_id = _int(tokens[0], path, number, "camera id")
        model = tokens[1]
        if model not in CAMERA_MODELS:
            raise InputError(
                f"{path}:{number}: unsupported camera model {model!r}; expected one of "
                f"{sorted(CAMERA_MODELS)}"
            )
        params = _floats(tokens[4:], path, number, "camera params")
        if len(params) != len(CAMERA_MODELS[model]):
            expected = len(CAMERA_MODELS[model])
            raise InputError(f"{path}:{number}: {model} takes {expected} params, got {len(params)}")
        width, height = _int(tokens[2], path, number, "width"), _int(tokens[3], path, number, "height")
        try:
            cameras[camera_id] = Camera(camera_id, model, width, height, _params_from_colmap(model, params))
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc}") from exc
    return cameras


def read_images_text(path: str | Path) -> dict[int, View]:
    """Parse ``images.txt`` into ``{image_id: View}`` (registered, keypoints at the OpenCV origin)."""
    path = Path(path)
    views: dict[int, View] = {}
    lines = iter(_data_lines(path))
    for number, line in lines:
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 10:
            raise InputError(
                f"{path}:{number}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line[:80]!r}"
            )
        image_id = _int(tokens[0], path, number, "image id")
        pose = _floats(tokens[1:8], path, number, "pose")
        camera_id = _int(tokens[8], path, number, "camera id")
        name = " ".join(tokens[9:])  # COLMAP names may contain spaces only at the end of the line
        points_number, points_line = next(lines, (number + 1, ""))
        keypoints, point3D_ids = _parse_points2D(points_line, path, points_number)
        try:
            cam_from_world = Rigid3d.from_quat_wxyz(pose[:4], pose[4:])
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc}") from exc
        views[image_id] = View(image_id, name, camera_id, cam_from_world, keypoints, point3D_ids)
    return views


def _parse_points2D(line: str, path: Path, number: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = line.split()
    if len(tokens) % 3:
        raise InputError(f"{path}:{number}: POINTS2D line has {len(tokens)} values, not a multiple of 3")
    values = _floats(tokens, path, number, "POINTS2D").reshape(-1, 3)
    ids = values[:, 2]
    if np.any(ids != np.round(ids)):
        raise InputError(f"{path}:{number}: POINT3D_ID values must be integers")
    return values[:, :2] - PIXEL_ORIGIN_SHIFT_PX, ids.astype(np.int64)


def read_points3D_text(path: str | Path) -> dict[int, Point3D]:
    """Parse ``points3D.txt`` into ``{point3D_id: Point3D}``."""
    path = Path(path)
    points: dict[int, Point3D] = {}
    for number, line in _data_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise InputError(
                f"{path}:{number}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*', "
                f"got {line[:80]!r}"
            )
        pid = _int(tokens[0], path, number, "point3D id")
        xyz = _floats(tokens[1:4], path, number, "XYZ")
        rgb = _floats(tokens[4:7], path, number, "RGB")
        if np.any((rgb < 0) | (rgb > 255)):
            raise InputError(f"{path}:{number}: RGB out of 0..255: {tokens[4:7]}")
        error = float(_floats(tokens[7:8], path, number, "ERROR")[0])
        track = _floats(tokens[8:], path, number, "TRACK").astype(np.int64).reshape(-1, 2)
        points[pid] = Point3D(xyz, rgb.astype(np.uint8), error, [(int(i), int(k)) for i, k in track])
    return points


def _cameras_text(cameras: dict[int, Camera]) -> str:
    out = io.StringIO()
    out.write("# Camera list with one line of data per camera:\n")
    out.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
    out.write(f"# Number of cameras: {len(cameras)}\n")
    for cid in sorted(cameras):
        cam = cameras[cid]
        params = " ".join(repr(p) for p in _params_to_colmap(cam).tolist())
        out.write(f"{cid} {cam.model} {cam.width} {cam.height} {params}\n")
    return out.getvalue()


def _points2D_line(view: View) -> str:
    n = len(view.keypoints_px)
    if n == 0:
        return ""
    table = np.empty((n, 3), dtype=object)
    table[:, :2] = (view.keypoints_px + PIXEL_ORIGIN_SHIFT_PX).tolist()
    table[:, 2] = view.point3D_ids.tolist()
    # one C-level %-format over all observations; %r on Python floats is the shortest exact repr.
    return " ".join(["%r %r %d"] * n) % tuple(table.ravel().tolist())


def _images_text(views: list[View]) -> str:
    out = io.StringIO()
    mean_obs = np.mean([v.num_points3D for v in views]) if views else 0.0
    out.write("# Image list with two lines of data per image:\n")
    out.write("#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
    out.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
    out.write(f"# Number of images: {len(views)}, mean observations per image: {mean_obs}\n")
    for view in views:
        pose = view.cam_from_world
        q = " ".join(repr(v) for v in pose.quat_wxyz.tolist())
        t = " ".join(repr(v) for v in pose.translation.tolist())
        out.write(f"{view.image_id} {q} {t} {view.camera_id} {view.name}\n")
        out.write(_points2D_line(view) + "\n")
    return out.getvalue()


def _kept_track(point: Point3D, written: set[int]) -> list[tuple[int, int]]:
    return [(int(i), int(k)) for i, k in point.track if i in written]


def _points3D_text(points: dict[int, Point3D], written: set[int]) -> str:
    out = io.StringIO()
    tracks = {pid: _kept_track(points[pid], written) for pid in sorted(points)}
    mean_track = np.mean([len(t) for t in tracks.values()]) if tracks else 0.0
    out.write("# 3D point list with one line of data per point:\n")
    out.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
    out.write(f"# Number of points: {len(points)}, mean track length: {mean_track}\n")
    for pid, track in tracks.items():
        p = points[pid]
        x, y, z = np.asarray(p.xyz, np.float64).tolist()
        r, g, b = np.asarray(p.color, np.uint8).tolist()
        flat = " ".join(f"{i} {k}" for i, k in track)
        out.write(f"{pid} {x!r} {y!r} {z!r} {r} {g} {b} {float(p.error)!r} {flat}\n")
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# binary
# --------------------------------------------------------------------------------------------------
class _Reader:
    """Bounds-checked little-endian reader that names the file and byte offset on error."""

    def __init__(self, path: Path) -> None:
        try:
            self.data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InputError(f"COLMAP file {path} does not exist") from exc
        self.path = path
        self.pos = 0

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise InputError(f"{self.path}: truncated at byte {self.pos} while reading {what}")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        size = dtype.itemsize * count
        if count < 0 or self.pos + size > len(self.data):
            raise InputError(f"{self.path}: truncated at byte {self.pos} while reading {count} {what}")
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return arr

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise InputError(f"{self.path}: unterminated {what} at byte {self.pos}")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: {what} at byte {self.pos} is not UTF-8") from exc

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise InputError(f"{self.path}: {len(self.data) - self.pos} trailing bytes after byte {self.pos}")


def read_cameras_binary(path: str | Path) -> dict[int, Camera]:
    """Parse ``cameras.bin`` into ``{camera_id: Camera}``."""
    reader = _Reader(Path(path))
    cameras: dict[int, Camera] = {}
    (count,) = reader.unpack("Q", "camera count")
    for _ in range(count):
        offset = reader.pos
        camera_id, model_id, width, height = reader.unpack("iiQQ", "camera header")
        model = _MODEL_NAMES.get(model_id)
        if model is None:
            raise InputError(f"{reader.path}: byte {offset}: unsupported COLMAP camera model id {model_id}")
        params = reader.array(np.dtype("<f8"), len(CAMERA_MODELS[model]), "camera params")
        try:
            cameras[camera_id] = Camera(camera_id, model, width, height, _params_from_colmap(model, params))
        except InputError as exc:
            raise InputError(f"{reader.path}: byte {offset}: {exc}") from exc
    reader.finish()
    return cameras


def read_images_binary(path: str | Path) -> dict[int, View]:
    """Parse ``images.bin`` into ``{image_id: View}``."""
    reader = _Reader(Path(path))
    views: dict[int, View] = {}
    (count,) = reader.unpack("Q", "image count")
    for _ in range(count):
        offset = reader.pos
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = reader.unpack("i7di", "image header")
        name = reader.cstring("image name")
        (num_points,) = reader.unpack("Q", "points2D count")
        pts = reader.array(_POINT2D_DTYPE, num_points, "points2D")
        try:
            pose = Rigid3d.from_quat_wxyz(np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]))
        except InputError as exc:
            raise InputError(f"{reader.path}: byte {offset}: image {image_id}: {exc}") from exc
        keypoints = np.column_stack([pts["x"], pts["y"]]) - PIXEL_ORIGIN_SHIFT_PX
        views[image_id] = View(image_id, name, camera_id, pose, keypoints, pts["point3D_id"].astype(np.int64))
    reader.finish()
    return views


def read_points3D_binary(path: str | Path) -> dict[int, Point3D]:
    """Parse ``points3D.bin`` into ``{point3D_id: Point3D}``."""
    reader = _Reader(Path(path))
    points: dict[int, Point3D] = {}
    (count,) = reader.unpack("Q", "point count")
    for _ in range(count):
        pid, x, y, z, r, g, b, error, track_length = reader.unpack("Q3d3BdQ", "point3D")
        track = reader.array(_TRACK_DTYPE, track_length, "track elements")
        points[int(pid)] = Point3D(
            np.array([x, y, z]),
            np.array([r, g, b], np.uint8),
            float(error),
            list(zip(track["image_id"].tolist(), track["point2D_idx"].tolist(), strict=True)),
        )
    reader.finish()
    return points


def _cameras_binary(cameras: dict[int, Camera]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack("<Q", len(cameras)))
    for cid in sorted(cameras):
        cam = cameras[cid]
        out.write(struct.pack("<iiQQ", cid, COLMAP_MODEL_IDS[cam.model], cam.width, cam.height))
        out.write(_params_to_colmap(cam).astype("<f8").tobytes())
    return out.getvalue()


def _images_binary(views: list[View]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack("<Q", len(views)))
    for view in views:
        pose = view.cam_from_world
        out.write(
            struct.pack(
                "<i7di", view.image_id, *pose.quat_wxyz.tolist(), *pose.translation.tolist(), view.camera_id
            )
        )
        out.write(view.name.encode("utf-8") + b"\x00")
        pts = np.empty(len(view.keypoints_px), dtype=_POINT2D_DTYPE)
        pts["x"] = view.keypoints_px[:, 0] + PIXEL_ORIGIN_SHIFT_PX
        pts["y"] = view.keypoints_px[:, 1] + PIXEL_ORIGIN_SHIFT_PX
        pts["point3D_id"] = view.point3D_ids
        out.write(struct.pack("<Q", len(pts)))
        out.write(pts.tobytes())
    return out.getvalue()


def _points3D_binary(points: dict[int, Point3D], written: set[int]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack("<Q", len(points)))
    for pid in sorted(points):
        p = points[pid]
        track = np.array(_kept_track(p, written), dtype=np.int64).reshape(-1, 2)
        elements = np.empty(len(track), dtype=_TRACK_DTYPE)
        elements["image_id"] = track[:, 0]
        elements["point2D_idx"] = track[:, 1]
        out.write(
            struct.pack(
                "<Q3d3BdQ",
                pid,
                *np.asarray(p.xyz, np.float64).tolist(),
                *np.asarray(p.color, np.uint8).tolist(),
                float(p.error),
                len(elements),
            )
        )
        out.write(elements.tobytes())
    return out.getvalue()
