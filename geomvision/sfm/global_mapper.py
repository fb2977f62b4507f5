"""Global structure from motion: all cameras at once instead of one image at a time.

The pipeline of GLOMAP (Pan et al., "Global Structure-from-Motion Revisited", ECCV 2024), on our stages:

1. rotation averaging on the view graph (:mod:`geomvision.sfm.rotation_averaging`): one rotation per
   image, pairs that disagree dropped, one solution per connected component (largest first);
2. tracks from the inlier matches of the pairs kept (:func:`geomvision.sfm.tracks.build_track_arrays`);
3. global positioning (:mod:`geomvision.sfm.global_positioning`): camera centres and points of the
   longest tracks jointly from the viewing rays, random start, robust loss; observations whose ray
   misses its point by more than ``positioning.max_angle_error_deg`` are left out (filtering by angle);
4. bundle adjustment rounds (:func:`geomvision.sfm.mapper_ba.adjust_bundle`, our schur backend): the first
   with rotations fixed, then joint (intrinsics of unknown cameras refined too), each followed by
   retriangulation of every track (:mod:`geomvision.sfm.triangulate`) and filtering by reprojection
   error and triangulation angle — with a threshold ``first_filter_factor`` times looser after the first
   round, since the positioned model is still rough;
5. images left with fewer than ``min_image_observations`` observations are dropped, and a final BA.

The output is the same :class:`~geomvision.sfm.incremental.MappingResult` as the incremental mapper's,
with per-step counts, iterations and timings in its report.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.progress import ProgressCallback
from geomvision.progress import report as report_progress
from geomvision.scene import Camera, ImageInfo, TwoViewGeometry
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions
from geomvision.sfm.global_positioning import GlobalPositioningOptions, position_globally
from geomvision.sfm.incremental import MappingResult
from geomvision.sfm.mapper_ba import adjust_bundle
from geomvision.sfm.mapper_state import MapperState, TrackTable
from geomvision.sfm.rotation_averaging import RotationAveragingOptions, RotationComponent, average_rotations
from geomvision.sfm.tracks import build_track_arrays
from geomvision.sfm.triangulate import TriangulationOptions, filter_points, retriangulate

logger = logging.getLogger(__name__)

__all__ = ["GlobalMapperOptions", "global_mapping"]


@dataclass(frozen=True, kw_only=True)
class GlobalMapperOptions:
    """Options of :func:`global_mapping`.

    Attributes:
        rotation_averaging: options of the rotation-averaging stage.
        positioning: options of the global-positioning stage.
        triangulation: retriangulation and filtering thresholds between BA rounds.
        ba: how each bundle adjustment runs (backend, loss, iteration cap).
        num_ba_rounds: BA rounds; the first holds the averaged rotations, the others refine everything.
        first_filter_factor: the reprojection threshold of the filtering after the first round is this
            times ``triangulation.filter_max_error_px`` (the positioned model is still rough).
        min_image_observations: images with fewer 3D-point observations at the end are dropped.
        refine_focal: refine focal lengths of cameras not in ``fixed_camera_ids`` in the joint rounds.
        fixed_camera_ids: cameras with known calibration, never refined.
        max_num_models: at most this many models (one per connected component of the view graph).
        min_model_size: components with fewer images give no model.
    """

    rotation_averaging: RotationAveragingOptions = field(default_factory=RotationAveragingOptions)
    positioning: GlobalPositioningOptions = field(default_factory=GlobalPositioningOptions)
    triangulation: TriangulationOptions = field(
        default_factory=lambda: TriangulationOptions(max_error_px=2.0, filter_max_error_px=4.0)
    )
    ba: BundleAdjustmentOptions = field(
        default_factory=lambda: BundleAdjustmentOptions(loss="soft_l1", max_iterations=50)
    )
    num_ba_rounds: int = 3
    first_filter_factor: float = 4.0
    min_image_observations: int = 20
    refine_focal: bool = True
    fixed_camera_ids: tuple[int, ...] = ()
    max_num_models: int = 10
    min_model_size: int = 3

    def __post_init__(self) -> None:
        if self.num_ba_rounds < 1:
            raise InputError(f"num_ba_rounds must be >= 1, got {self.num_ba_rounds}")
        if not self.first_filter_factor >= 1:
            raise InputError(f"first_filter_factor must be >= 1, got {self.first_filter_factor}")
        if self.min_image_observations < 1:
            raise InputError(f"min_image_observations must be >= 1, got {self.min_image_observations}")
        if self.max_num_models < 1 or self.min_model_size < 2:
            raise InputError(
                f"need max_num_models >= 1 and min_model_size >= 2, got "
                f"{self.max_num_models}, {self.min_model_size}"
            )
        object.__setattr__(self, "fixed_camera_ids", tuple(int(c) for c in self.fixed_camera_ids))


class _Timer:
    """Wall time per named step."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._name = ""
        self._start = 0.0

    def __call__(self, name: str) -> _Timer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.totals[self._name] += time.perf_counter() - self._start


def _check_inputs(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
) -> None:
    if not images:
        raise InputError("global_mapping needs at least one image, got none")
    for image_id, info in images.items():
        if info.camera_id not in cameras:
            raise InputError(f"image {image_id} ({info.name}) refers to unknown camera {info.camera_id}")
    for (i, j), g in two_view_geometries.items():
        if i not in images or j not in images:
            raise InputError(f"two-view geometry ({i}, {j}) refers to an unknown image")
        if (g.image_i, g.image_j) != (i, j):
            raise InputError(f"two-view geometry keyed ({i}, {j}) is for images ({g.image_i}, {g.image_j})")


def _deregister(state: MapperState, image_ids: list[int]) -> None:
    """Remove images from the model: their observations leave their points, short points go."""
    for image_id in image_ids:
        state.obs_active[state.table.image_obs[image_id]] = False
        state.is_registered[image_id] = False
        state.rotations[image_id] = np.nan
        state.translations[image_id] = np.nan
        state.centers[image_id] = np.nan
        state.registration_order.remove(image_id)
    points = state.point_ids()
    counts = np.bincount(state.table.obs_track[state.obs_active], minlength=state.table.num_tracks)
    state.delete_points(points[counts[points] < 2])


def _image_observation_counts(state: MapperState) -> dict[int, int]:
    counts = np.bincount(state.table.obs_image[state.obs_active], minlength=len(state.is_registered))
    return {i: int(counts[i]) for i in state.registered_image_ids}


class _ComponentMapper:
    """Builds the model of one rotation component; holds the report counters."""

    def __init__(
        self,
        cameras: dict[int, Camera],
        images: dict[int, ImageInfo],
        table: TrackTable,
        options: GlobalMapperOptions,
        timer: _Timer,
        rng: np.random.Generator,
    ) -> None:
        self.state = MapperState(cameras, images, table)
        self.options = options
        self.timer = timer
        self.rng = rng
        self.initial_params = {cid: cam.params.copy() for cid, cam in self.state.cameras.items()}
        self.frozen_cameras: set[int] = set()
        self.report: dict = {"ba_rounds": [], "num_filtered_observations": 0, "num_filtered_points": 0}

    def position(self, component: RotationComponent) -> bool:
        """Global positioning; sets poses and the positioned points. Returns False when it failed."""
        state, table = self.state, self.state.table
        rows = np.flatnonzero(np.isin(table.obs_image, component.image_ids))
        rays = np.column_stack([state.obs_xn[rows], np.ones(len(rows))])
        with self.timer("positioning"):
            result = position_globally(
                component.rotations,
                table.obs_image[rows],
                table.obs_track[rows],
                rays,
                self.options.positioning,
                rng=self.rng,
            )
        self.report["positioning"] = result.report
        if not result.success:
            self.report["reason"] = f"positioning failed: {result.reason}"
            return False
        for image_id, center in result.centers.items():
            rotation = component.rotations[image_id]
            state.set_pose(image_id, Rigid3d(rotation, -rotation @ center))
        inlier_rows = rows[result.obs_inlier]
        tracks = table.obs_track[inlier_rows]
        good = np.bincount(tracks, minlength=table.num_tracks) >= 2
        good_tracks = np.flatnonzero(good)
        state.track_xyz[good_tracks] = result.points[good_tracks]
        state.track_has_point[good] = True
        state.obs_active[inlier_rows[good[tracks]]] = True
        self.report["num_positioned_points"] = int(good.sum())
        return True

    def refine_camera_ids(self) -> set[int]:
        if not self.options.refine_focal:
            return set()
        used = {self.state.images[i].camera_id for i in self.state.registered_image_ids}
        return used - set(self.options.fixed_camera_ids) - self.frozen_cameras

    def reset_bogus_cameras(self, camera_ids: set[int]) -> bool:
        """Undo implausible refined intrinsics (COLMAP's bogus-camera rule; see the incremental mapper)."""
        reset = set()
        for cid in camera_ids:
            cam = self.state.cameras[cid]
            size = max(cam.width, cam.height)
            focal = np.asarray(cam.focal_xy) / size
            plausible = (
                np.all((focal >= 0.1) & (focal <= 10.0))
                and np.all(np.abs(cam.distortion) <= 1.0)
                and 0.8 <= focal[0] / focal[1] <= 1.25
            )
            if not plausible:
                logger.warning("camera %d: implausible intrinsics after BA; reverting and fixing them", cid)
                cam.params = self.initial_params[cid].copy()
                reset.add(cid)
        if reset:
            self.frozen_cameras |= reset
            self.state.update_normalized(reset)
        return bool(reset)

    def bundle_adjust(self, *, fix_rotations: bool) -> dict:
        state = self.state
        refine = set() if fix_rotations else self.refine_camera_ids()
        with self.timer("bundle_adjustment"):
            stats = adjust_bundle(
                state,
                state.registered_image_ids,
                self.options.ba,
                refine_camera_ids=refine,
                point_tracks=state.point_ids(),
                fix_rotations=fix_rotations,
            )
        if refine and self.reset_bogus_cameras(refine):
            with self.timer("bundle_adjustment"):
                adjust_bundle(
                    state,
                    state.registered_image_ids,
                    self.options.ba,
                    refine_camera_ids=self.refine_camera_ids(),
                    point_tracks=state.point_ids(),
                )
        return {
            "fix_rotations": fix_rotations,
            "iterations": stats.iterations,
            "num_points": stats.num_points,
            "num_observations": stats.num_observations,
            "initial_cost": stats.initial_cost,
            "final_cost": stats.final_cost,
        }

    def filter(self, max_error_px: float) -> None:
        with self.timer("filtering"):
            stats = filter_points(
                self.state, None, max_error_px, self.options.triangulation.filter_min_tri_angle_deg
            )
        self.report["num_filtered_observations"] += stats.num_filtered_observations
        self.report["num_filtered_points"] += stats.num_filtered_points

    def refine(self) -> None:
        """BA rounds with retriangulation and filtering in between, then drop weak images."""
        options = self.options
        tri = options.triangulation
        # Before any BA the positioned points can be far off: only the angle filter applies yet.
        self.filter(np.inf)
        for round_index in range(options.num_ba_rounds):
            ba = self.bundle_adjust(fix_rotations=round_index == 0)
            with self.timer("triangulation"):
                stats = retriangulate(self.state, tri)
            ba["num_points_created"] = stats.num_created
            ba["num_observations_continued"] = stats.num_continued
            factor = options.first_filter_factor if round_index == 0 else 1.0
            self.filter(tri.filter_max_error_px * factor)
            self.report["ba_rounds"].append(ba)
        weak = [
            i for i, n in _image_observation_counts(self.state).items() if n < options.min_image_observations
        ]
        if weak:
            logger.info(
                "dropping %d image(s) with < %d observations", len(weak), options.min_image_observations
            )
            _deregister(self.state, weak)
        self.report["dropped_image_ids"] = weak
        final = self.bundle_adjust(fix_rotations=False)
        self.filter(tri.filter_max_error_px)
        self.report["ba_rounds"].append(final)


def global_mapping(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    options: GlobalMapperOptions | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    progress: ProgressCallback | None = None,
) -> MappingResult:
    """Reconstruct cameras and points from verified pairs by rotation averaging and global positioning.

    Args:
        cameras: camera_id -> intrinsics (refined unless listed in ``options.fixed_camera_ids``; when they
            are unknown, calibrate them from the view graph first).
        images: image_id -> ImageInfo (name, camera_id, keypoints, colours).
        two_view_geometries: verified pairs (i, j), i < j, with ``cam2_from_cam1`` (pairs without a
            relative pose take no part).
        options: mapper options.
        rng: seed or generator (random start of global positioning).
        progress: ``progress(done, total, message)`` over the mapper's steps.

    Returns:
        MappingResult with the models (largest first) and a report dict.

    Raises:
        InputError: images referring to unknown cameras, or pairs to unknown images.
    """
    options = options or GlobalMapperOptions()
    _check_inputs(cameras, images, two_view_geometries)
    rng = np.random.default_rng(0 if rng is None else rng)
    timer = _Timer()
    t_start = time.perf_counter()
    report: dict = {"num_images": len(images), "models": []}

    report_progress(progress, 0, 4, "rotation averaging")
    with timer("rotation_averaging"):
        rotations = average_rotations(two_view_geometries, options.rotation_averaging)
    report["rotation_averaging"] = rotations.report
    report["num_pairs"] = rotations.report["num_pairs_used"]
    models = []
    if rotations.success:
        kept_pairs = [p for c in rotations.components for p in c.pairs]
        report_progress(progress, 1, 4, "tracks")
        with timer("tracks"):
            arrays = build_track_arrays({p: two_view_geometries[p].inlier_matches for p in kept_pairs})
            table = TrackTable.from_arrays(
                arrays.track_index, arrays.image_ids, arrays.keypoint_indices, images
            )
        report["num_tracks"] = table.num_tracks
        report["num_track_observations"] = table.num_observations
        components = [c for c in rotations.components if len(c.rotations) >= options.min_model_size]
        for index, component in enumerate(components[: options.max_num_models]):
            report_progress(
                progress, 2, 4, f"positioning component {index + 1} ({len(component.rotations)} images)"
            )
            mapper = _ComponentMapper(cameras, images, table, options, timer, rng)
            model_report = mapper.report
            model_report["component_size"] = len(component.rotations)
            if mapper.position(component):
                report_progress(progress, 3, 4, f"bundle adjustment of component {index + 1}")
                mapper.refine()
                state = mapper.state
                model_report.update(
                    {
                        "num_registered": state.num_registered,
                        "num_points3D": state.num_points,
                        "mean_reprojection_error_px": state.mean_reprojection_error_px(),
                        "registered_image_ids": sorted(state.registered_image_ids),
                    }
                )
                kept = state.num_registered >= options.min_model_size
                model_report["kept"] = kept
                if kept:
                    models.append(state.to_reconstruction(with_colors=True))
            report["models"].append(model_report)
    else:
        report["reason"] = rotations.reason
    models.sort(key=lambda r: (-r.num_registered, -len(r.points3D)))
    report["num_models"] = len(models)
    report["num_registered"] = sum(r.num_registered for r in models)
    if not models and "reason" not in report:
        report["reason"] = "no component could be positioned"
    report["timings_s"] = {k: round(v, 4) for k, v in timer.totals.items()} | {
        "total": round(time.perf_counter() - t_start, 4)
    }
    report_progress(progress, 4, 4, f"{report['num_registered']} registered")
    return MappingResult(models, report)
