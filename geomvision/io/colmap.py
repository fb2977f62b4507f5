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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.runtime.atomic import atomic_write_bytes, atomic_write_text
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


def _camera_from_colmap(
    camera_id: int, model: str, width: int, height: int, params: np.ndarray, where: str
) -> Camera:
    """The :class:`Camera` of a COLMAP camera record; an invalid one raises an InputError located at ``where``."""
    try:
        return Camera(camera_id, model, width, height, _params_from_colmap(model, params))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from exc


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
        points = _read_points3D_binary_table(folder / "points3D.bin")
    else:
        cameras = read_cameras_text(folder / "cameras.txt")
        views = read_images_text(folder / "images.txt")
        points = _read_points3D_text_table(folder / "points3D.txt")
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


@dataclass
class _PointTable:
    """points3D in columns (what both file formats hold), converted to ``Point3D`` objects once.

    Attributes:
        ids: (P,) point ids; xyz: (P, 3); rgb: (P, 3) uint8; error: (P,);
        track_len: (P,) elements per point; track: (M, 2) (image_id, point2D_idx), point after point.
    """

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_len: np.ndarray
    track: np.ndarray

    def to_points(self) -> dict[int, Point3D]:
        pairs = list(zip(self.track[:, 0].tolist(), self.track[:, 1].tolist(), strict=True))
        bounds = np.concatenate([[0], np.cumsum(self.track_len)]).tolist()
        xyz = np.array(self.xyz, dtype=np.float64)
        rgb = np.array(self.rgb, dtype=np.uint8)
        errors = self.error.tolist()
        return {
            pid: Point3D(xyz[k], rgb[k], errors[k], pairs[bounds[k] : bounds[k + 1]])
            for k, pid in enumerate(self.ids.tolist())
        }

    @classmethod
    def from_points(cls, points: dict[int, Point3D], written: set[int] | None = None) -> _PointTable:
        pids = sorted(points)
        objs = [points[p] for p in pids]
        lengths = np.array([len(o.track) for o in objs], dtype=np.int64)
        track = np.array([e for o in objs for e in o.track], dtype=np.int64).reshape(-1, 2)
        if written is not None and len(track):
            # drop elements that point at views that are not written, then recount per point
            keep = np.isin(track[:, 0], np.fromiter(written, dtype=np.int64))
            owner = np.repeat(np.arange(len(objs)), lengths)
            track = track[keep]
            lengths = np.bincount(owner[keep], minlength=len(objs)).astype(np.int64)
        return cls(
            np.array(pids, dtype=np.int64),
            np.array([o.xyz for o in objs], dtype=np.float64).reshape(-1, 3),
            np.array([o.color for o in objs], dtype=np.uint8).reshape(-1, 3),
            np.array([float(o.error) for o in objs], dtype=np.float64),
            lengths,
            track,
        )


def _assemble(
    cameras: dict[int, Camera], views: dict[int, View], table: _PointTable, folder: Path
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
    # Validate every track element at once: the image exists and the keypoint index is in range.
    view_ids = np.array(sorted(rec.views), dtype=np.int64)
    num_kp = np.array([len(rec.views[i].keypoints_px) for i in view_ids.tolist()], dtype=np.int64)
    image, idx = table.track[:, 0], table.track[:, 1]
    slot = np.clip(np.searchsorted(view_ids, image), 0, max(len(view_ids) - 1, 0))
    ok = (len(view_ids) > 0) & (view_ids[slot] == image) if len(view_ids) else np.zeros(len(image), bool)
    ok &= (idx >= 0) & (idx < np.where(ok, num_kp[slot] if len(view_ids) else 0, 0))
    point_of_element = np.repeat(table.ids, table.track_len)
    if not np.all(ok):
        k = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"{folder}: point3D {point_of_element[k]} observes missing image {image[k]} / point2D {idx[k]}"
        )
    # points3D is authoritative for tracks (COLMAP rebuilds the images' point ids from it too).
    order = np.argsort(slot, kind="stable")
    starts = np.searchsorted(slot[order], np.arange(len(view_ids) + 1))
    for s_i, image_id in enumerate(view_ids.tolist()):
        sel = order[starts[s_i] : starts[s_i + 1]]
        rec.views[image_id].point3D_ids[idx[sel]] = point_of_element[sel]
    rec.points3D = table.to_points()
    rec.next_point3D_id = int(table.ids.max()) + 1 if len(table.ids) else 1
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


def parse_floats(tokens: list[str], path: Path, number: int, what: str) -> np.ndarray:
    """Finite float64 values of ``tokens`` (line ``number`` of the text file ``path``, holding ``what``).

    Raises:
        InputError: a token is not a number, or a value is not finite; the message names the line.
    """
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


def _record_tokens(line: str, path: Path, number: int, layout: str, min_tokens: int) -> list[str]:
    """Tokens of the record on line ``number`` of ``path``; an InputError quoting ``layout`` if too few."""
    tokens = line.split()
    if len(tokens) < min_tokens:
        raise InputError(f"{path}:{number}: expected {layout!r}, got {line[:80]!r}")
    return tokens


def read_cameras_text(path: str | Path) -> dict[int, Camera]:
    """Parse ``cameras.txt`` into ``{camera_id: Camera}`` (principal point shifted to the OpenCV origin)."""
    path = Path(path)
    cameras: dict[int, Camera] = {}
    for number, line in _data_lines(path):
        if not line:
            continue
        tokens = _record_tokens(line, path, number, "CAMERA_ID MODEL WIDTH HEIGHT PARAMS...", 4)
        camera_id = _int(tokens[0], path, number, "camera id")
        model = tokens[1]
        if model not in CAMERA_MODELS:
            raise InputError(
                f"{path}:{number}: unsupported camera model {model!r}; expected one of "
                f"{sorted(CAMERA_MODELS)}"
            )
        params = parse_floats(tokens[4:], path, number, "camera params")
        if len(params) != len(CAMERA_MODELS[model]):
            expected = len(CAMERA_MODELS[model])
            raise InputError(f"{path}:{number}: {model} takes {expected} params, got {len(params)}")
        width, height = _int(tokens[2], path, number, "width"), _int(tokens[3], path, number, "height")
        cameras[camera_id] = _camera_from_colmap(camera_id, model, width, height, params, f"{path}:{number}")
    return cameras


def read_images_text(path: str | Path) -> dict[int, View]:
    """Parse ``images.txt`` into ``{image_id: View}`` (registered, keypoints at the OpenCV origin)."""
    path = Path(path)
    views: dict[int, View] = {}
    lines = iter(_data_lines(path))
    for number, line in lines:
        if not line:
            continue
        tokens = _record_tokens(line, path, number, "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", 10)
        image_id = _int(tokens[0], path, number, "image id")
        pose = parse_floats(tokens[1:8], path, number, "pose")
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
    values = parse_floats(tokens, path, number, "POINTS2D").reshape(-1, 3)
    ids = values[:, 2]
    if np.any(ids != np.round(ids)) or np.any(np.abs(ids) >= 2.0**63):  # int64 range: cast is exact
        raise InputError(f"{path}:{number}: POINT3D_ID values must be integers")
    return values[:, :2] - PIXEL_ORIGIN_SHIFT_PX, ids.astype(np.int64)


def read_points3D_text(path: str | Path) -> dict[int, Point3D]:
    """Parse ``points3D.txt`` into ``{point3D_id: Point3D}``."""
    return _read_points3D_text_table(Path(path)).to_points()


def _read_points3D_text_table(path: Path) -> _PointTable:
    rows = [(number, line.split()) for number, line in _data_lines(path) if line]
    lengths = np.array([len(tokens) for _, tokens in rows], dtype=np.int64)
    try:
        # one C-level conversion of every number in the file; errors are located line by line below
        values = np.fromiter(map(float, (t for _, tokens in rows for t in tokens)), dtype=np.float64)
        bad_shape = (lengths < 8) | ((lengths - 8) % 2 == 1)
        if np.any(bad_shape) or not np.all(np.isfinite(values)):
            raise ValueError
        starts = np.cumsum(lengths) - lengths
        head = values[starts[:, None] + np.arange(8)].reshape(-1, 8)
        in_track = np.ones(len(values), dtype=bool)
        in_track[(starts[:, None] + np.arange(8)).ravel()] = False
        track = values[in_track].reshape(-1, 2)
        integral = np.concatenate([head[:, 0], head[:, 4:7].ravel(), track.ravel()])
        rgb = head[:, 4:7]
        if (
            np.any(integral != np.round(integral))
            or np.any(np.abs(integral) >= 2.0**63)
            or np.any((rgb < 0) | (rgb > 255))
        ):
            raise ValueError
    except ValueError:
        for number, tokens in rows:
            _check_point_line(tokens, path, number)
        raise InputError(f"{path}: malformed points3D file") from None
    return _PointTable(
        head[:, 0].astype(np.int64),
        head[:, 1:4],
        head[:, 4:7].astype(np.uint8),
        head[:, 7].copy(),
        (lengths - 8) // 2,
        track.astype(np.int64),
    )


def _check_point_line(tokens: list[str], path: Path, number: int) -> None:
    """Raise an InputError naming the problem on this line (used once the fast path has failed)."""
    if len(tokens) < 8 or (len(tokens) - 8) % 2:
        raise InputError(
            f"{path}:{number}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*', "
            f"got {' '.join(tokens)[:80]!r}"
        )
    _int(tokens[0], path, number, "point3D id")
    parse_floats(tokens[1:4], path, number, "XYZ")
    rgb = parse_floats(tokens[4:7], path, number, "RGB")
    if np.any((rgb < 0) | (rgb > 255) | (rgb != np.round(rgb))):
        raise InputError(f"{path}:{number}: RGB must be integers in 0..255, got {tokens[4:7]}")
    parse_floats(tokens[7:8], path, number, "ERROR")
    track = parse_floats(tokens[8:], path, number, "TRACK")
    if np.any(track != np.round(track)):
        raise InputError(f"{path}:{number}: TRACK values must be integers")


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
    xy = (view.keypoints_px + PIXEL_ORIGIN_SHIFT_PX).tolist()
    # repr of a Python float is the shortest string that reads back to the same double (exact round trip)
    return " ".join([f"{x!r} {y!r} {p}" for (x, y), p in zip(xy, view.point3D_ids.tolist(), strict=True)])


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


def _points3D_text(points: dict[int, Point3D], written: set[int]) -> str:
    table = _PointTable.from_points(points, written)
    out = io.StringIO()
    mean_track = float(table.track_len.mean()) if len(table.ids) else 0.0
    out.write("# 3D point list with one line of data per point:\n")
    out.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
    out.write(f"# Number of points: {len(points)}, mean track length: {mean_track}\n")
    elements = [f"{i} {k}" for i, k in table.track.tolist()]
    bounds = np.concatenate([[0], np.cumsum(table.track_len)]).tolist()
    heads = zip(table.ids.tolist(), table.xyz.tolist(), table.rgb.tolist(), table.error.tolist(), strict=True)
    for k, (pid, (x, y, z), (r, g, b), err) in enumerate(heads):
        track = " ".join(elements[bounds[k] : bounds[k + 1]])
        out.write(f"{pid} {x!r} {y!r} {z!r} {r} {g} {b} {err!r} {track}\n")
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

    def records(self, what: str) -> Iterator[int]:
        """Read the uint64 count of ``what`` records, yield each record's start byte, then :meth:`finish`.

        The caller reads one record per step; the file must end with the last one.
        """
        (count,) = self.unpack("Q", f"{what} count")
        for _ in range(count):
            yield self.pos
        self.finish()


def read_cameras_binary(path: str | Path) -> dict[int, Camera]:
    """Parse ``cameras.bin`` into ``{camera_id: Camera}``."""
    reader = _Reader(Path(path))
    cameras: dict[int, Camera] = {}
    for offset in reader.records("camera"):
        camera_id, model_id, width, height = reader.unpack("iiQQ", "camera header")
        model = _MODEL_NAMES.get(model_id)
        if model is None:
            raise InputError(f"{reader.path}: byte {offset}: unsupported COLMAP camera model id {model_id}")
        params = reader.array(np.dtype("<f8"), len(CAMERA_MODELS[model]), "camera params")
        cameras[camera_id] = _camera_from_colmap(
            camera_id, model, width, height, params, f"{reader.path}: byte {offset}"
        )
    return cameras


def read_images_binary(path: str | Path) -> dict[int, View]:
    """Parse ``images.bin`` into ``{image_id: View}``."""
    reader = _Reader(Path(path))
    views: dict[int, View] = {}
    for offset in reader.records("image"):
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
    return views


_POINT_HEAD_DTYPE = np.dtype(
    [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_len", "<u8")]
)  # packed: 51 bytes, as in the file


def read_points3D_binary(path: str | Path) -> dict[int, Point3D]:
    """Parse ``points3D.bin`` into ``{point3D_id: Point3D}``."""
    return _read_points3D_binary_table(Path(path)).to_points()


def _read_points3D_binary_table(path: Path) -> _PointTable:
    reader = _Reader(path)
    (count,) = reader.unpack("Q", "point count")
    data, size = reader.data, len(reader.data)
    head_size = _POINT_HEAD_DTYPE.itemsize
    if count > (size - reader.pos) // head_size:  # check before allocating: a corrupt count can be 2**64
        raise InputError(f"{path}: point count {count} does not fit in the file's {size} bytes")
    offsets = np.empty(count, dtype=np.int64)
    lengths = np.empty(count, dtype=np.int64)
    pos = reader.pos
    # Records have variable length, so one cheap scan finds where each starts; the rest is vectorised.
    for k in range(count):
        if pos + head_size > size:
            raise InputError(f"{path}: truncated at byte {pos} while reading point3D {k}")
        (n,) = struct.unpack_from("<Q", data, pos + head_size - 8)
        end = pos + head_size + _TRACK_DTYPE.itemsize * n
        if end > size:  # also guards the int64 store below against a corrupt 2**64 length
            raise InputError(f"{path}: truncated at byte {pos} while reading the track of point3D {k}")
        offsets[k], lengths[k] = pos, n
        pos = end
    if pos != size:
        raise InputError(f"{path}: {size - pos} trailing bytes after byte {pos}")
    raw = np.frombuffer(data, dtype=np.uint8)
    heads = raw[offsets[:, None] + np.arange(head_size)].reshape(-1).view(_POINT_HEAD_DTYPE)
    bad = ~np.isfinite(heads["xyz"]).all(axis=1)
    if bad.any():  # the text reader rejects these too
        k = int(np.argmax(bad))
        raise InputError(f"{path}: byte {offsets[k]}: non-finite XYZ of point3D {int(heads['id'][k])}")
    step = _TRACK_DTYPE.itemsize
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    element_start = np.repeat(offsets + head_size - first * step, lengths) + np.arange(total) * step
    elements = raw[element_start[:, None] + np.arange(step)].reshape(-1).view(_TRACK_DTYPE)
    return _PointTable(
        heads["id"].astype(np.int64),
        heads["xyz"].astype(np.float64),
        heads["rgb"].astype(np.uint8),
        heads["error"].astype(np.float64),
        lengths,
        np.column_stack([elements["image_id"], elements["point2D_idx"]]).astype(np.int64),
    )


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
    table = _PointTable.from_points(points, written)
    count, head_size, step = len(table.ids), _POINT_HEAD_DTYPE.itemsize, _TRACK_DTYPE.itemsize
    heads = np.empty(count, dtype=_POINT_HEAD_DTYPE)
    heads["id"], heads["xyz"], heads["rgb"] = table.ids, table.xyz, table.rgb
    heads["error"], heads["track_len"] = table.error, table.track_len
    elements = np.empty(len(table.track), dtype=_TRACK_DTYPE)
    elements["image_id"], elements["point2D_idx"] = table.track[:, 0], table.track[:, 1]
    sizes = head_size + step * table.track_len
    offsets = 8 + np.cumsum(sizes) - sizes
    out = np.empty(8 + int(sizes.sum()), dtype=np.uint8)
    out[:8] = np.frombuffer(struct.pack("<Q", count), dtype=np.uint8)
    out[offsets[:, None] + np.arange(head_size)] = heads.view(np.uint8).reshape(count, head_size)
    first = np.cumsum(table.track_len) - table.track_len
    element_start = (
        np.repeat(offsets + head_size - first * step, table.track_len) + np.arange(len(elements)) * step
    )
    out[element_start[:, None] + np.arange(step)] = elements.view(np.uint8).reshape(-1, step)
    return out.tobytes()
