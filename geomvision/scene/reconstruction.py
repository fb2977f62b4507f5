"""The sparse model: cameras, registered views, 3D points with tracks."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, Sim3d
from geomvision.scene.camera import Camera


@dataclass
class View:
    """One image in a reconstruction.

    Attributes:
        image_id: id unique within the reconstruction.
        name: file name relative to the image folder.
        camera_id: key into ``Reconstruction.cameras``.
        cam_from_world: pose, or None while unregistered.
        keypoints_px: (N, 2) float64 2D points (OpenCV pixel origin).
        point3D_ids: (N,) int64, -1 where the keypoint has no 3D point.
    """

    image_id: int
    name: str
    camera_id: int
    cam_from_world: Rigid3d | None = None
    keypoints_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keypoints_px = np.asarray(self.keypoints_px, dtype=np.float64).reshape(-1, 2)
        if self.point3D_ids is None:
            self.point3D_ids = np.full(len(self.keypoints_px), -1, dtype=np.int64)
        else:
            self.point3D_ids = np.asarray(self.point3D_ids, dtype=np.int64).reshape(-1)
            if len(self.point3D_ids) != len(self.keypoints_px):
                raise InputError(
                    f"view {self.name}: {len(self.point3D_ids)} point3D ids for {len(self.keypoints_px)} keypoints"
                )

    @property
    def registered(self) -> bool:
        return self.cam_from_world is not None

    @property
    def num_points3D(self) -> int:
        return int(np.count_nonzero(self.point3D_ids >= 0))


@dataclass(slots=True)
class Point3D:
    """A triangulated point.

    Attributes:
        xyz: (3,) position in world.
        color: (3,) uint8 RGB.
        error: mean reprojection error in pixels.
        track: list of (image_id, keypoint_index) observations.
    """

    xyz: np.ndarray
    color: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.uint8))
    error: float = 0.0
    track: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Reconstruction:
    """Cameras, views and points; ids are stable and independent of dict order."""

    cameras: dict[int, Camera] = field(default_factory=dict)
    views: dict[int, View] = field(default_factory=dict)
    points3D: dict[int, Point3D] = field(default_factory=dict)
    next_point3D_id: int = 1

    def __reduce__(self):
        """Pickled with the points as arrays (positions, colours, errors, flat tracks) rather than one object
        each: cluster models come back from the workers this way. Unpickled, the points are objects again,
        their positions and colours rows of one array each and their tracks' ints shared (one int object per
        distinct image id and keypoint index instead of two per observation)."""
        return (
            _unpack_reconstruction,
            (self.cameras, self.views, _pack_points(self.points3D), self.next_point3D_id),
        )

    # --- construction -------------------------------------------------------------------------------
    def add_camera(self, camera: Camera) -> None:
        self.cameras[camera.camera_id] = camera

    def add_view(self, view: View) -> None:
        if view.camera_id not in self.cameras:
            raise InputError(f"view {view.name} refers to unknown camera {view.camera_id}")
        self.views[view.image_id] = view

    def add_point3D(
        self,
        xyz: np.ndarray,
        track: list[tuple[int, int]],
        color: np.ndarray | None = None,
        error: float = 0.0,
    ) -> int:
        """Add a point and link its observations; returns the new point id."""
        pid = self.next_point3D_id
        self.next_point3D_id += 1
        col = np.zeros(3, np.uint8) if color is None else np.asarray(color, np.uint8)
        self.points3D[pid] = Point3D(np.asarray(xyz, np.float64).reshape(3), col, float(error), list(track))
        for image_id, kp in track:
            self.views[image_id].point3D_ids[kp] = pid
        return pid

    def add_points3D(
        self, xyz: np.ndarray, track_rows: np.ndarray, track_lengths: np.ndarray, colors: np.ndarray
    ) -> np.ndarray:
        """Add N points at once and link their observations (the bulk form of :meth:`add_point3D`).

        Args:
            xyz: (N, 3) world positions.
            track_rows: (M, 2) (image_id, keypoint_index) of every observation, point by point.
            track_lengths: (N,) observations of each point (summing to M).
            colors: (N, 3) uint8 colours.

        Returns:
            (N,) the new point ids, in order.
        """
        n = len(xyz)
        ids = np.arange(self.next_point3D_id, self.next_point3D_id + n, dtype=np.int64)
        self.next_point3D_id += n
        pairs = track_elements(track_rows)
        bounds = np.concatenate([[0], np.cumsum(track_lengths)]).tolist()
        xyz = np.asarray(xyz, np.float64)
        colors = np.asarray(colors, np.uint8)
        for k, pid in enumerate(ids.tolist()):
            self.points3D[pid] = Point3D(xyz[k], colors[k], 0.0, pairs[bounds[k] : bounds[k + 1]])
        obs_point = np.repeat(ids, track_lengths)
        for image_id, rows in rows_by_image(track_rows[:, 0]):
            self.views[image_id].point3D_ids[track_rows[rows, 1]] = obs_point[rows]
        return ids

    def add_observation(self, point3D_id: int, image_id: int, keypoint_index: int) -> None:
        self.points3D[point3D_id].track.append((image_id, keypoint_index))
        self.views[image_id].point3D_ids[keypoint_index] = point3D_id

    def delete_point3D(self, point3D_id: int) -> None:
        point = self.points3D.pop(point3D_id)
        for image_id, kp in point.track:
            view = self.views[image_id]
            if view.point3D_ids[kp] == point3D_id:
                view.point3D_ids[kp] = -1

    def delete_observation(self, point3D_id: int, image_id: int, keypoint_index: int) -> None:
        """Remove one observation; a point left with fewer than 2 observations is deleted."""
        point = self.points3D[point3D_id]
        point.track = [(i, k) for i, k in point.track if (i, k) != (image_id, keypoint_index)]
        self.views[image_id].point3D_ids[keypoint_index] = -1
        if len(point.track) < 2:
            self.delete_point3D(point3D_id)

    # --- queries ------------------------------------------------------------------------------------
    @property
    def registered_image_ids(self) -> list[int]:
        return sorted(i for i, v in self.views.items() if v.registered)

    @property
    def num_registered(self) -> int:
        return len(self.registered_image_ids)

    @property
    def num_observations(self) -> int:
        return sum(len(p.track) for p in self.points3D.values())

    def observation_arrays(self, point_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Flatten the observations of all points (or of ``point_ids``) for vectorised work.

        Args:
            point_ids: (P,) ids of the points to flatten, sorted ascending (None: every point).

        Returns:
            dict with ``point_ids`` (P,), ``xyz`` (P, 3), ``obs_point`` (M,) index into point arrays,
            ``obs_image_id`` (M,), ``obs_keypoint`` (M,), ``obs_px`` (M, 2).
        """
        if point_ids is None:
            point_ids = np.array(sorted(self.points3D), dtype=np.int64)
        else:
            point_ids = np.asarray(point_ids, dtype=np.int64)
        points = [self.points3D[p] for p in point_ids.tolist()]
        xyz = np.array([p.xyz for p in points]).reshape(-1, 3)
        # one flat pass over the tracks (a Python loop per observation took ~2.7 s at 600k observations)
        lengths = np.fromiter((len(p.track) for p in points), dtype=np.int64, count=len(points))
        flat = np.fromiter(
            chain.from_iterable(chain.from_iterable(p.track for p in points)),
            dtype=np.int64,
            count=2 * int(lengths.sum()),
        ).reshape(-1, 2)
        obs_point = np.repeat(np.arange(len(points), dtype=np.int64), lengths)
        obs_image = np.ascontiguousarray(flat[:, 0])
        obs_kp = np.ascontiguousarray(flat[:, 1])
        obs_px = np.zeros((len(obs_point), 2))
        for image_id, sel in rows_by_image(obs_image):
            obs_px[sel] = self.views[image_id].keypoints_px[obs_kp[sel]]
        return {
            "point_ids": point_ids,
            "xyz": xyz,
            "obs_point": obs_point,
            "obs_image_id": obs_image,
            "obs_keypoint": obs_kp,
            "obs_px": obs_px,
        }

    def reprojection_errors_px(self) -> dict[str, np.ndarray]:
        """Per-observation reprojection error in pixels, with the observation arrays it belongs to."""
        arrays = self.observation_arrays()
        errors = np.zeros(len(arrays["obs_point"]))
        for image_id, sel in rows_by_image(arrays["obs_image_id"]):
            view = self.views[image_id]
            camera = self.cameras[view.camera_id]
            points_in_cam = view.cam_from_world.apply(arrays["xyz"][arrays["obs_point"][sel]])
            projected = camera.project(points_in_cam)
            errors[sel] = np.linalg.norm(projected - arrays["obs_px"][sel], axis=1)
        arrays["errors_px"] = errors
        return arrays

    def mean_reprojection_error_px(self) -> float:
        errors = self.reprojection_errors_px()["errors_px"]
        return float(errors.mean()) if len(errors) else float("nan")

    def update_point_errors(self) -> None:
        """Recompute every ``Point3D.error`` (mean over its track) from the current poses."""
        arrays = self.reprojection_errors_px()
        if len(arrays["point_ids"]) == 0:
            return
        sums = np.bincount(arrays["obs_point"], arrays["errors_px"], minlength=len(arrays["point_ids"]))
        counts = np.maximum(np.bincount(arrays["obs_point"], minlength=len(arrays["point_ids"])), 1)
        for pid, err in zip(arrays["point_ids"], sums / counts, strict=True):
            self.points3D[int(pid)].error = float(err)

    def camera_centers(self) -> dict[int, np.ndarray]:
        return {i: self.views[i].cam_from_world.center for i in self.registered_image_ids}

    def transform(self, new_from_old: Sim3d) -> None:
        """Apply a similarity to the whole model in place (points and poses)."""
        for view in self.views.values():
            if view.registered:
                view.cam_from_world = new_from_old.transform_pose(view.cam_from_world)
        for point in self.points3D.values():
            point.xyz = new_from_old.apply(point.xyz)

    def view_by_name(self, name: str) -> View:
        for view in self.views.values():
            if view.name == name:
                return view
        raise KeyError(name)

    def summary(self) -> dict[str, float | int]:
        track_lengths = [len(p.track) for p in self.points3D.values()]
        return {
            "num_cameras": len(self.cameras),
            "num_images": len(self.views),
            "num_registered": self.num_registered,
            "num_points3D": len(self.points3D),
            "num_observations": int(sum(track_lengths)),
            "mean_track_length": float(np.mean(track_lengths)) if track_lengths else 0.0,
            "mean_reprojection_error_px": self.mean_reprojection_error_px()
            if self.points3D
            else float("nan"),
        }


def _pack_points(points3D: dict[int, Point3D]) -> dict[str, np.ndarray]:
    """Point dict -> arrays: ``ids`` (P,), ``xyz`` (P, 3), ``colors`` (P, 3) uint8, ``errors`` (P,),
    ``lengths`` (P,) track lengths, ``tracks`` (sum of lengths, 2) (image_id, keypoint) rows."""
    points = list(points3D.values())
    lengths = np.fromiter((len(p.track) for p in points), dtype=np.int64, count=len(points))
    return {
        "ids": np.fromiter(points3D, dtype=np.int64, count=len(points)),
        "xyz": np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3),
        "colors": np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3),
        "errors": np.fromiter((p.error for p in points), dtype=np.float64, count=len(points)),
        "lengths": lengths,
        "tracks": np.fromiter(
            chain.from_iterable(chain.from_iterable(p.track for p in points)),
            dtype=np.int64,
            count=2 * int(lengths.sum()),
        ).reshape(-1, 2),
    }


def track_elements(rows: np.ndarray) -> list[tuple[int, int]]:
    """(M, 2) integer (image_id, keypoint_index) rows -> M track tuples whose ints are shared: one int object
    per distinct image id and keypoint index instead of two per observation (~56 bytes an observation in
    large models)."""
    image_ints = list(range(int(rows[:, 0].max(initial=0)) + 1))
    keypoint_ints = list(range(int(rows[:, 1].max(initial=0)) + 1))
    return list(
        zip(
            map(image_ints.__getitem__, rows[:, 0].tolist()),
            map(keypoint_ints.__getitem__, rows[:, 1].tolist()),
            strict=True,
        )
    )


def _unpack_points(packed: dict[str, np.ndarray]) -> dict[int, Point3D]:
    """Inverse of :func:`_pack_points` (same order, so the same dict iteration order)."""
    pairs = track_elements(packed["tracks"])
    bounds = np.concatenate([[0], np.cumsum(packed["lengths"])]).tolist()
    xyz, colors = packed["xyz"], packed["colors"]
    return {
        pid: Point3D(xyz[k], colors[k], error, pairs[bounds[k] : bounds[k + 1]])
        for k, (pid, error) in enumerate(zip(packed["ids"].tolist(), packed["errors"].tolist(), strict=True))
    }


def _unpack_reconstruction(
    cameras: dict[int, Camera], views: dict[int, View], packed: dict[str, np.ndarray], next_point3D_id: int
) -> Reconstruction:
    return Reconstruction(cameras, views, _unpack_points(packed), next_point3D_id)


def points_array(rec: Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) float64 world points and (P, 3) uint8 colours, in sorted point-id order."""
    ids = sorted(rec.points3D)
    if not ids:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    xyz = np.array([rec.points3D[i].xyz for i in ids], dtype=np.float64)
    rgb = np.array([rec.points3D[i].color for i in ids], dtype=np.uint8)
    return xyz, rgb


def rows_by_image(obs_image: np.ndarray):
    """``(image_id, rows)`` per distinct image id (ascending), rows in their original order (one stable sort
    instead of a boolean mask over all observations per image)."""
    order = np.argsort(obs_image, kind="stable")
    ordered = obs_image[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, int)
    ids = ordered[starts]
    bounds = np.append(starts, len(order)).tolist()
    for k, image_id in enumerate(ids.tolist()):
        yield image_id, order[bounds[k] : bounds[k + 1]]
