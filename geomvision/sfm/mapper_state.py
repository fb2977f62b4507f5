"""Array state shared by the incremental mapper's stages (initialisation, registration, triangulation).

The mapper keeps every track observation in flat arrays, sorted by track, so the hot loops
(triangulation, track continuation, filtering, next-best-view scoring) are vectorised numpy over
observations instead of Python loops over :class:`~geomvision.scene.Point3D` objects:

- ``obs_track``, ``obs_image``, ``obs_kp``: (M,) one row per (image_id, keypoint) of every track;
- ``feature_obs[image_id]``: (N_kp,) keypoint -> observation row (or -1 when the keypoint is in no track);
- per row, its pixel ``obs_px`` (M, 2) and undistorted normalised coordinates ``obs_xn`` (M, 2), the latter
  recomputed when BA refines the intrinsics (:meth:`MapperState.update_normalized`);
- one 3D point per track (``track_xyz``, ``track_has_point``); a point's observations are the rows of
  its track with ``obs_active``. The point id in exported reconstructions is ``track index + 1``.

Bundle adjustment reads and writes these arrays directly (:mod:`geomvision.sfm.mapper_ba`); a
:class:`~geomvision.scene.Reconstruction` is built only for the output
(:meth:`MapperState.to_reconstruction`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d, angle_between_vectors_deg
from geomvision.scene import Camera, ImageInfo, Point3D, Reconstruction, Track, TwoViewGeometry, View
from geomvision.scene.reconstruction import rows_by_image, track_elements

logger = logging.getLogger(__name__)


@dataclass
class TrackTable:
    """All track observations flattened and sorted by track (built once per mapping run).

    Attributes:
        obs_track: (M,) int64 track index of each observation (non-decreasing).
        obs_image: (M,) int64 image id.
        obs_kp: (M,) int64 keypoint index in that image.
        track_offsets: (T + 1,) int64; track t owns rows ``track_offsets[t]:track_offsets[t + 1]``.
        feature_obs: image_id -> (N_kp,) int64 observation row of each keypoint, -1 if in no track.
        image_obs: image_id -> (K,) int64 observation rows in that image.
    """

    obs_track: np.ndarray
    obs_image: np.ndarray
    obs_kp: np.ndarray
    track_offsets: np.ndarray
    feature_obs: dict[int, np.ndarray]
    image_obs: dict[int, np.ndarray]

    @property
    def num_tracks(self) -> int:
        return len(self.track_offsets) - 1

    @property
    def num_observations(self) -> int:
        return len(self.obs_track)

    @classmethod
    def from_tracks(cls, tracks: list[Track], images: dict[int, ImageInfo]) -> TrackTable:
        """Flatten Track objects (see :meth:`from_arrays`)."""
        lengths = np.array([len(t.elements) for t in tracks], dtype=np.int64)
        if len(tracks):
            flat = np.array([e for t in tracks for e in t.elements], dtype=np.int64).reshape(-1, 2)
        else:
            flat = np.zeros((0, 2), dtype=np.int64)
        obs_track = np.repeat(np.arange(len(tracks), dtype=np.int64), lengths)
        return cls.from_arrays(obs_track, flat[:, 0], flat[:, 1], images)

    @classmethod
    def from_arrays(
        cls, obs_track: np.ndarray, obs_image: np.ndarray, obs_kp: np.ndarray, images: dict[int, ImageInfo]
    ) -> TrackTable:
        """Index flat (M,) track/image/keypoint arrays (tracks numbered 0..T-1).

        Raises:
            InputError: a track refers to an unknown image or keypoint.
        """
        obs_track = np.asarray(obs_track, dtype=np.int64)
        order = np.argsort(obs_track, kind="stable")
        obs_track = obs_track[order]
        obs_image = np.asarray(obs_image, dtype=np.int64)[order]
        obs_kp = np.asarray(obs_kp, dtype=np.int64)[order]
        num_tracks = int(obs_track[-1]) + 1 if len(obs_track) else 0
        offsets = np.concatenate([[0], np.cumsum(np.bincount(obs_track, minlength=num_tracks))]).astype(
            np.int64
        )
        feature_obs: dict[int, np.ndarray] = {}
        image_obs: dict[int, np.ndarray] = {}
        order = np.argsort(obs_image, kind="stable")
        uniq, starts = np.unique(obs_image[order], return_index=True)
        bounds = np.append(starts, len(order))
        for k, image_id in enumerate(uniq.tolist()):
            if image_id not in images:
                raise InputError(f"track refers to image {image_id}, which is not among the images")
            rows = order[bounds[k] : bounds[k + 1]]
            num_kp = len(images[image_id].keypoints_px)
            kps = obs_kp[rows]
            if kps.size and (kps.min() < 0 or kps.max() >= num_kp):
                raise InputError(
                    f"track keypoint index {int(kps.max())} out of range for image {image_id} "
                    f"with {num_kp} keypoints"
                )
            fo = np.full(num_kp, -1, dtype=np.int64)
            fo[kps] = rows
            feature_obs[image_id] = fo
            image_obs[image_id] = rows
        for image_id, info in images.items():
            if image_id not in feature_obs:
                feature_obs[image_id] = np.full(len(info.keypoints_px), -1, dtype=np.int64)
                image_obs[image_id] = np.zeros(0, dtype=np.int64)
        return cls(obs_track, obs_image, obs_kp, offsets, feature_obs, image_obs)


def max_triangulation_angle_deg(
    centers: np.ndarray, points: np.ndarray, group: np.ndarray, num_groups: int
) -> np.ndarray:
    """Largest angle between viewing rays of each point, vectorised over all observations.

    Exact for two rays; for longer tracks it takes the ray farthest from the track's first ray and
    returns the largest angle to that one, which equals the maximum pairwise angle whenever the rays
    spread along one arc (the usual case) and is at least half of it otherwise.

    Args:
        centers: (K,) x 3 camera centres of the observations (world).
        points: (K, 3) the observed point of each observation (world).
        group: (K,) int point index in [0, num_groups).
        num_groups: number of points.

    Returns:
        (num_groups,) angles in degrees; 0 for points with fewer than two observations.
    """
    out = np.zeros(num_groups)
    if len(group) == 0:
        return out
    rays = centers - points
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-300)
    # np.minimum.at with indices gives the first row of each group in original order.
    rows = np.arange(len(group))
    first_row = np.full(num_groups, len(group), dtype=np.int64)
    np.minimum.at(first_row, group, rows)
    first = first_row[group]
    cos_ref = np.einsum("ij,ij->i", rays, rays[first])
    # per group, the ray farthest from the first ray (smallest cosine; the first such row on ties), by two
    # scatter-reductions instead of a sort of every observation (a lexsort was a third of this function)
    min_cos = np.full(num_groups, np.inf)
    np.minimum.at(min_cos, group, cos_ref)
    farthest = np.flatnonzero(cos_ref == min_cos[group])
    far_row = np.full(num_groups, len(group), dtype=np.int64)
    np.minimum.at(far_row, group[farthest], farthest)
    # atan2(|a x b|, a . b) stays accurate for tiny angles, where arccos of a dot product does not.
    angle_far = angle_between_vectors_deg(rays, rays[far_row[group]])
    np.maximum.at(out, group, angle_far)
    return out


class MapperState:
    """One model under construction: poses of registered images and one 3D point per track.

    Args:
        cameras: camera_id -> Camera; deep-copied, since the mapper refines intrinsics per model.
        images: image_id -> ImageInfo (keypoints, colours).
        table: flattened tracks over these images.
    """

    def __init__(self, cameras: dict[int, Camera], images: dict[int, ImageInfo], table: TrackTable) -> None:
        self.cameras = {cid: copy.deepcopy(cam) for cid, cam in cameras.items()}
        self.images = images
        self.table = table
        max_id = max(images) if images else 0
        self.image_camera = np.zeros(max_id + 1, dtype=np.int64)
        for image_id, info in images.items():
            if info.camera_id not in cameras:
                raise InputError(f"image {info.name} refers to unknown camera {info.camera_id}")
            self.image_camera[image_id] = info.camera_id
        # Pose arrays indexed by image id (NaN while unregistered) for vectorised per-observation work.
        self.rotations = np.full((max_id + 1, 3, 3), np.nan)
        self.translations = np.full((max_id + 1, 3), np.nan)
        self.centers = np.full((max_id + 1, 3), np.nan)
        self.is_registered = np.zeros(max_id + 1, dtype=bool)
        self.registration_order: list[int] = []
        num_obs, num_tracks = table.num_observations, table.num_tracks
        self.obs_active = np.zeros(num_obs, dtype=bool)
        self.track_xyz = np.full((num_tracks, 3), np.nan)
        self.track_has_point = np.zeros(num_tracks, dtype=bool)
        self.obs_px = np.zeros((num_obs, 2))
        self.obs_xn = np.zeros((num_obs, 2))
        self.update_normalized()

    # --- cameras and poses ---------------------------------------------------------------------------
    def update_normalized(self, camera_ids: set[int] | None = None) -> None:
        """Recompute undistorted normalised coordinates of observations after the intrinsics of
        ``camera_ids`` changed; ``None``: of every camera, and gather the observations' pixels
        (``obs_px``) again from the images' keypoints too."""
        if camera_ids is None:
            # pixels of every observation row, gathered once: the error checks of triangulation, filtering
            # and BA read them by row (a gather per image per call was ~1 s of the 1000-image global mapping)
            for image_id, rows in self.table.image_obs.items():
                if rows.size:
                    self.obs_px[rows] = self.images[image_id].keypoints_px[self.table.obs_kp[rows]]
        # one unprojection per camera over all its images' observations (one per image cost ~0.3 s per
        # global BA at 300 images); Newton stops per point, so the values are those of per-image calls
        by_camera: dict[int, list[np.ndarray]] = {}
        for image_id, rows in self.table.image_obs.items():
            if rows.size == 0:
                continue
            camera_id = self.images[image_id].camera_id
            if camera_ids is not None and camera_id not in camera_ids:
                continue
            by_camera.setdefault(camera_id, []).append(rows)
        for camera_id, parts in by_camera.items():
            cam = self.cameras[camera_id]
            rows = np.concatenate(parts)
            self.obs_xn[rows] = camera_models.unproject(cam.model, cam.params, self.obs_px[rows])

    def camera_of(self, image_id: int) -> Camera:
        return self.cameras[self.images[image_id].camera_id]

    def set_pose(self, image_id: int, cam_from_world: Rigid3d) -> None:
        """Register (or move) an image."""
        if not self.is_registered[image_id]:
            self.registration_order.append(image_id)
        self.is_registered[image_id] = True
        self.rotations[image_id] = cam_from_world.rotation
        self.translations[image_id] = cam_from_world.translation
        self.centers[image_id] = cam_from_world.center

    def clear(self) -> None:
        """Forget every pose and point (e.g. after a failed initial pair); intrinsics are kept."""
        self.rotations[:] = np.nan
        self.translations[:] = np.nan
        self.centers[:] = np.nan
        self.is_registered[:] = False
        self.registration_order.clear()
        self.obs_active[:] = False
        self.track_xyz[:] = np.nan
        self.track_has_point[:] = False

    def pose(self, image_id: int) -> Rigid3d:
        return Rigid3d(self.rotations[image_id], self.translations[image_id])

    @property
    def registered_image_ids(self) -> list[int]:
        return list(self.registration_order)

    @property
    def num_registered(self) -> int:
        return len(self.registration_order)

    # --- points --------------------------------------------------------------------------------------
    def track_rows(self, tracks: np.ndarray) -> np.ndarray:
        """All observation rows of the given tracks, concatenated (vectorised)."""
        tracks = np.asarray(tracks, dtype=np.int64)
        starts = self.table.track_offsets[tracks]
        lengths = self.table.track_offsets[tracks + 1] - starts
        if lengths.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        rel = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + rel

    def obs_registered(self) -> np.ndarray:
        """(M,) bool: the observation's image is registered in this model."""
        return self.is_registered[self.table.obs_image]

    def point_ids(self) -> np.ndarray:
        """Track indices that currently have a 3D point."""
        return np.flatnonzero(self.track_has_point)

    @property
    def num_points(self) -> int:
        return int(self.track_has_point.sum())

    def delete_points(self, tracks: np.ndarray) -> None:
        tracks = np.asarray(tracks, dtype=np.int64)
        if tracks.size == 0:
            return
        self.track_has_point[tracks] = False
        self.track_xyz[tracks] = np.nan
        self.obs_active[self.track_rows(tracks)] = False

    def observation_errors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reprojection error (px) and depth of observations against their track's current point.

        Args:
            rows: (K,) observation rows whose image is registered and whose track has a point.

        Returns:
            ((K,) errors in pixels, (K,) depths along the camera's +z).
        """
        rows = np.asarray(rows, dtype=np.int64)
        return self.errors_for_points(rows, self.track_xyz[self.table.obs_track[rows]])

    def errors_for_points(self, rows: np.ndarray, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reprojection errors (px) and depths of world points ``xyz`` (K, 3) as seen by the observation
        rows ``rows`` (K,) (their images and keypoints)."""
        image = self.table.obs_image[rows]
        points_in_cam = np.einsum("kij,kj->ki", self.rotations[image], xyz) + self.translations[image]
        depth = points_in_cam[:, 2]
        errors = np.full(len(image), np.inf)
        cam_ids = self.image_camera[image]
        observed = self.obs_px[rows]
        for cam_id in np.unique(cam_ids):  # usually one camera: one vectorised projection
            sel = cam_ids == cam_id
            cam = self.cameras[int(cam_id)]
            projected = camera_models.project(cam.model, cam.params, points_in_cam[sel])
            errors[sel] = np.linalg.norm(projected - observed[sel], axis=1)
        errors[~np.isfinite(errors) | (depth <= 0)] = np.inf
        return errors, depth

    def triangulation_angles_deg(self, tracks: np.ndarray) -> np.ndarray:
        """Max triangulation angle of each given track's point over its active observations."""
        tracks = np.asarray(tracks, dtype=np.int64)
        rows = self.track_rows(tracks)
        rows = rows[self.obs_active[rows]]
        local = (
            np.searchsorted(tracks, self.table.obs_track[rows])
            if _is_sorted(tracks)
            else _index_of(tracks, self.table.obs_track[rows])
        )
        return max_triangulation_angle_deg(
            self.centers[self.table.obs_image[rows]],
            self.track_xyz[self.table.obs_track[rows]],
            local,
            len(tracks),
        )

    def mean_reprojection_error_px(self) -> float:
        rows = np.flatnonzero(self.obs_active)
        if rows.size == 0:
            return float("nan")
        return float(self.observation_errors(rows)[0].mean())

    # --- conversion to / from Reconstruction ---------------------------------------------------------
    def to_reconstruction(
        self,
        image_ids: list[int] | None = None,
        tracks: np.ndarray | None = None,
        *,
        with_colors: bool = False,
    ) -> Reconstruction:
        """A Reconstruction of some points and every registered image that observes them.

        Args:
            image_ids: registered images to include even without points (default: all registered).
            tracks: track indices with points to include (default: all points).
            with_colors: fill Point3D colours (first observation's keypoint colour) and errors.

        Returns:
            Reconstruction whose point ids are ``track + 1`` and whose views are registered images.
        """
        tracks = self.point_ids() if tracks is None else np.asarray(tracks, dtype=np.int64)
        rows = self.track_rows(tracks)
        rows = rows[self.obs_active[rows]]
        obs_img, obs_kp, obs_trk = (
            self.table.obs_image[rows],
            self.table.obs_kp[rows],
            self.table.obs_track[rows],
        )
        view_ids = set(self.registered_image_ids if image_ids is None else image_ids)
        view_ids.update(np.unique(obs_img).tolist())
        rec = Reconstruction()
        for cam_id in sorted({self.images[i].camera_id for i in view_ids}):
            rec.add_camera(copy.deepcopy(self.cameras[cam_id]))
        rows_of_image = dict(rows_by_image(obs_img))  # one sort, not a mask over all rows per image
        for image_id in sorted(view_ids):
            info = self.images[image_id]
            ids = np.full(len(info.keypoints_px), -1, dtype=np.int64)
            sel = rows_of_image.get(image_id, np.zeros(0, dtype=np.int64))
            ids[obs_kp[sel]] = obs_trk[sel] + 1
            rec.add_view(
                View(image_id, info.name, info.camera_id, self.pose(image_id), info.keypoints_px, ids)
            )
        if not len(rows):
            rec.next_point3D_id = self.table.num_tracks + 1
            return rec
        # rows are grouped by track (track_rows keeps track order), so split them per point.
        starts = np.r_[0, np.flatnonzero(np.diff(obs_trk)) + 1]
        lengths = np.diff(np.r_[starts, len(rows)])
        point_tracks = obs_trk[starts]
        colors = np.zeros((len(starts), 3), np.uint8)
        mean_errors = np.zeros(len(starts))
        if with_colors:
            # per-point mean in one pass (91k points on the street-300 model: a .mean() each cost 0.5 s)
            errors = self.observation_errors(rows)[0]
            mean_errors = np.add.reduceat(errors, starts) / lengths
            # each point's colour: its first observation's keypoint colour
            for image_id, sel in rows_by_image(obs_img[starts]):
                image_colors = self.images[image_id].colors
                if image_colors is not None:
                    colors[sel] = np.asarray(image_colors, dtype=np.uint8)[obs_kp[starts[sel]]]
        xyz = self.track_xyz[point_tracks].copy()
        pairs = track_elements(np.stack([obs_img, obs_kp], axis=1))
        bounds = np.r_[starts, len(rows)].tolist()
        for k, (t, err) in enumerate(zip(point_tracks.tolist(), mean_errors.tolist(), strict=True)):
            rec.points3D[t + 1] = Point3D(xyz[k], colors[k], err, pairs[bounds[k] : bounds[k + 1]])
        rec.next_point3D_id = self.table.num_tracks + 1
        return rec


def _is_sorted(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1])) if len(a) > 1 else True


def _index_of(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in the (unsorted, unique) ``keys``."""
    order = np.argsort(keys)
    return order[np.searchsorted(keys[order], values)]


def check_model_limits(max_num_models: int, min_model_size: int) -> None:
    """Refuse mapper options that allow no model (``max_num_models``) or one-image models (``min_model_size``)."""
    if max_num_models < 1 or min_model_size < 2:
        raise InputError(
            f"need max_num_models >= 1 and min_model_size >= 2, got {max_num_models}, {min_model_size}"
        )


def check_mapper_inputs(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    *,
    caller: str,
) -> None:
    """The checks both mappers make on their inputs (``caller`` names the mapper in the message).

    Raises:
        InputError: no images, an image of an unknown camera, or a pair of unknown / mismatched images.
    """
    if not images:
        raise InputError(f"{caller} needs at least one image, got none")
    for image_id, info in images.items():
        if info.camera_id not in cameras:
            raise InputError(f"image {image_id} ({info.name}) refers to unknown camera {info.camera_id}")
    for (i, j), g in two_view_geometries.items():
        if i not in images or j not in images:
            raise InputError(f"two-view geometry ({i}, {j}) refers to an unknown image")
        if (g.image_i, g.image_j) != (i, j):
            raise InputError(f"two-view geometry keyed ({i}, {j}) is for images ({g.image_i}, {g.image_j})")


class StepTimer:
    """Wall time per named step of a mapper: ``with timer("global_ba"): ...`` adds to ``totals``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()

    def timings_s(self) -> dict[str, float]:
        """The report's ``timings_s``: seconds per step and ``total`` since the timer was made (4 decimals)."""
        return {k: round(v, 4) for k, v in self.totals.items()} | {
            "total": round(time.perf_counter() - self.start, 4)
        }

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start
