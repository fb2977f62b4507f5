"""Global structure from motion: all cameras at once instead of one image at a time.

The pipeline of GLOMAP (Pan et al., "Global Structure-from-Motion Revisited", ECCV 2024), on our stages:

1. rotation averaging on the view graph (:mod:`geomvision.sfm.rotation_averaging`): one rotation per
   image, pairs that disagree dropped, one solution per connected component (largest first); a planar
   pair's pose is one of the two its homography allows, and the averaging chooses between them by
   consensus voting (``planar_rotation_candidates``);
2. tracks from the inlier matches of the pairs kept (:func:`geomvision.sfm.tracks.build_track_arrays`);
3. global positioning (:mod:`geomvision.sfm.global_positioning`): camera centres and points of the
   longest tracks jointly from the viewing rays, translation-averaging start, robust loss; observations
   whose ray misses its point by more than ``positioning.max_angle_error_deg`` are left out (filtering by
   angle);
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

import copy
import logging
from dataclasses import dataclass, field, replace

import numpy as np

from geomvision.errors import check_at_least
from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d
from geomvision.geometry.rotation_averaging import align_rotations
from geomvision.progress import ProgressCallback
from geomvision.progress import report as report_progress
from geomvision.runtime.allocator import retain_freed_memory
from geomvision.runtime.collector import cyclic_gc_paused
from geomvision.scene import Camera, ImageInfo, Reconstruction, TwoViewGeometry
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, covering_points, grid_cell_of
from geomvision.sfm.global_positioning import GlobalPositioningOptions, position_globally
from geomvision.sfm.incremental import MappingResult
from geomvision.sfm.mapper_ba import adjust_bundle, check_mapper_ba_options
from geomvision.sfm.mapper_state import (
    MapperState,
    StepTimer,
    TrackTable,
    check_mapper_inputs,
    check_model_limits,
)
from geomvision.sfm.registration import RegistrationOptions, register_image
from geomvision.sfm.relative_poses import (
    RelativePoseOptions,
    estimate_relative_poses,
    homography_rotation_candidates,
)
from geomvision.sfm.rotation_averaging import RotationAveragingOptions, RotationComponent, average_rotations
from geomvision.sfm.tracks import build_track_arrays
from geomvision.sfm.triangulate import (
    TriangulationOptions,
    TriangulationStats,
    continue_tracks,
    filter_points,
    move_points,
    retriangulate,
    tracks_in_image,
    triangulate_tracks,
)

logger = logging.getLogger(__name__)

__all__ = ["GlobalMapperOptions", "global_mapping"]


@dataclass(frozen=True, kw_only=True)
class GlobalMapperOptions:
    """Options of :func:`global_mapping`.

    Attributes:
        pose_unposed_pairs: estimate a relative pose for the verified pairs without one (the
            "uncalibrated" ones, whose E kept fewer than 95 % of F's inliers) before rotation
            averaging, as GLOMAP does for every pair (castle-P19, known K: AUC@2 0.947 -> 0.953).
        pose_planar_pairs: also pose the planar pairs (whose pose verification took from the
            homography's decomposition) again by five-point RANSAC on their inliers, as GLOMAP poses
            every pair; a pair it cannot pose keeps the homography pose. The decomposition's pose is
            rough and sometimes the wrong one of its two solutions: on the synthetic 300-image street
            (facades, 1045 of 1438 pairs planar; translation-averaging start) AUC@2 0.756 -> 0.909, 300
            of 300 images registered either way. On fountain, entry and castle-P19 (both K; 2-46
            planar pairs) AUC@2 stayed within 0.001.
        planar_rotation_candidates: give rotation averaging the two rotations of each planar pair's
            homography decomposition as alternatives to its pose, to choose among by consistency
            (``rotation_averaging.candidate_rounds``). Five-point RANSAC on a planar pair returns either
            of the two poses that fit the plane: on the synthetic 300-image street, seed 0, the draws
            put 7 images of a facade-only stretch 1.5 deg and one 42 deg off after rotation averaging,
            and the final model 4 deg off there (AUC@2 0.909); with the candidates every image is within
            3 deg after rotation averaging, AUC@2 0.955 for seeds 0, 1 and 2.
        relative_poses: options of that estimation, also used for the pairs of a refocused camera.
        rotation_averaging: options of the rotation-averaging stage.
        positioning: options of the global-positioning stage.
        triangulation: retriangulation and filtering thresholds between BA rounds.
        ba: how each bundle adjustment runs (the plain BA options: backend, loss, iteration cap, every
            solver setting; ``refine_*`` say which intrinsics of the refined cameras move).
        round_ba: options of the BA rounds before the last one (retriangulation and filtering follow each,
            so they need not converge); None: ``ba``.
        round_function_tolerance: those rounds stop once a step lowers the cost by less than this fraction
            (their options' ``function_tolerance`` when that is larger); 0: their options' own. The rounds
            settle the poses and focal; the last BA converges. Synthetic 1000-image street, mapper alone,
            seed 0: rounds of 35 + 50 iterations and a last BA of 30 (AUC@2 0.9441, 27.0 s) -> 23 + 18 and
            11 (0.9303, 18.5 s); the ten real rows of ``benchmarks/results/global_mapper.md`` within
            -0.0004..+0.0012 (castle-P19 unknown focal 0.94636 -> 0.94724).
        num_ba_rounds: BA rounds before the final BA; the first holds the averaged rotations, the others
            refine everything. Two: a third round (and its retriangulation and filtering) moved nothing the
            final BA does not (mapper alone, tenth session: synthetic 1000-image street seeds 0 / 1 / 2
            AUC@2 0.9454 / 0.9457 / 0.9455 with 3, 0.9439 / 0.9455 / 0.9460 with 2, 33-38 -> 30-31 s;
            300-image street 0.9554 for each seed either way, 8.2-9.1 -> 7.2-7.4 s; the ten real rows of
            ``benchmarks/results/global_mapper.md`` within 0.0011 except templeRing unknown focal
            0.8650 -> 0.8619, mapping 10-30 % faster).
        round_observations_per_image: the BA rounds before the last adjust only a subset of the points
            whose observations fit this many per registered image (or ``round_min_observations``, the
            larger), chosen so that every image keeps its best-spread, longest tracks
            (``bundle_adjustment.covering_points``); the points left out are re-triangulated from the
            adjusted poses after the round. The rounds only need to settle the poses (and focal), and the
            last BA refines every point. Synthetic 1000-image street, unknown focal (the rounds' 1.2M
            observations -> 100k): BA 76 -> 22 s, AUC@2 0.940 -> 0.945; 100 -> 50 per image (50k): BA
            21.3 -> 18.8 s, AUC@2 0.9444 -> 0.9437. 0: every point in every round.
        round_min_observations: the rounds' observation budget is at least this (small models keep
            every point: of the ten real rows of ``benchmarks/results/global_mapper.md`` only dtu_scan37
            exceeds 50k, AUC@2 0.86199 -> 0.86201 known K, 0.70406 -> 0.70405 unknown).
        final_max_observations: the final BA adjusts at most this many observations: the points that cover
            every image best (the rounds' choice); the other points then follow the adjusted cameras
            (``triangulate.move_points``), as in the partitioned mapper's final BA. 0: every point. Synthetic
            1000-image street (1.24M observations), mapper alone, seeds 0 / 1 / 2: all points AUC@2 0.9450 /
            0.9469 / 0.9453 in 27.3 / 28.5 / 26.4 s; 800k 0.9469 / 0.9491 / 0.9470 in 25.2 / 26.7 / 25.4 s;
            600k 0.9419 / 0.9447 / 0.9427 in 23.8 / 24.3 / 23.5 s (its final BA 8.2 -> 4.0 s). The street
            of 300 images (427k) and every real row of ``benchmarks/results/global_mapper.md`` are below it.
        fix_rotations_first_round: the first BA round holds the averaged rotations (only centres and points
            move); else every round refines them.
        fixed_rotation_max_iterations: that round (rotations held, no intrinsics refined) stops after at
            most this many iterations (retriangulation, a loose filtering and the joint rounds follow);
            0: the cap of its BA options (the default). Its iterations are cheap (three parameters a
            camera), and a converged start shortens the joint rounds, whose camera systems cost ~0.1 s an
            iteration at 1000 images: synthetic 1000-image street, mapper alone, seeds 0 / 1 / 2, with a cap
            of 5 -> none: the later rounds 50 + 33 + 13 -> 50 + 26 + 12 iterations (seed 0), mapping
            38.9 -> 36.4 s (seed 0) and 34.8 -> 33.2 s (seed 2), AUC@2 0.9440 / 0.9470 / 0.9448 ->
            0.9480 / 0.9456 / 0.9459; synthetic 300-image street seeds 0-2 within 0.0001; the nine real rows
            of ``benchmarks/results/global_mapper.md`` (mapper alone) within 0.0003, castle-P19 unknown
            focal 0.6876 -> 0.6852. Capping the joint rounds' iterations (``round_ba``) is no default: on
            templeRing with an unknown focal (768 -> 1543 px) the first pass then ended with the focal
            unsettled, AUC@2 0.13 (``round_function_tolerance`` stops them by their progress instead).
        first_filter_factor: the reprojection threshold of the filtering after the first round is this
            times ``triangulation.filter_max_error_px`` (the positioned model is still rough).
        min_point_observations: points left with fewer observations by a filtering are deleted. Two-view
            points carry the wrong matches of repeated structure that agree with their pair's epipolar
            geometry, so the model bends to fit them; a third view rejects them (GLOMAP keeps tracks of
            3+ views too). Measured on castle-P19, known K: AUC@2 0.78 with 2, 0.947 with 3, 0.939 with 4.
        sparse_image_observations: an image with fewer observations of points of
            ``min_point_observations`` or more views keeps its two-view points too (they are triangulated
            and not deleted). On a sparse ring most tracks have two views: on dino12 (12 views 30 deg apart
            around the Oxford dinosaur, known K) the 3-view rule left one image 16 such observations and it
            was dropped (11/12, AUC@2 0.655); with this rule 12/12, AUC@2 0.762. Of the ten real rows of
            ``benchmarks/results/global_mapper.md`` it applies only in dtu_scan37's first pass with an
            unknown focal (one image; AUC@2 0.90169 -> 0.90163); the other nine are unchanged to 5 digits.
            0: never.
        min_image_observations: images with fewer 3D-point observations at the end are registered again
            by PnP on the model's points (``registration``), or dropped when that fails.
        registration: PnP options of that re-registration.
        refine_focal: refine focal lengths of cameras not in ``fixed_camera_ids`` in the joint rounds.
        recalibrate_focal_change: when BA moves a camera's focal by more than this (relative), its pairs
            are posed again with the refined intrinsics (``relative_poses``) and the mapping runs again
            (once); 0 = never.
        second_pass_from_first_centers: position the second pass (after a refocus) from the first pass's
            camera centres; else from a random start, as the first pass. Off: the first pass's centres
            carry its wrong focal's distortions into a weakly linked part of the view graph. 16-view
            templeRing ring (every third image), unknown focal (prior 768 px, true 1520), 3 px pairs,
            mapper alone, seeds 0 / 1 / 2: from the centres 13 / 13 / 13 images (3 dropped), AUC@2 0.365 /
            0.371 / 0.362; from random 16 / 16 / 16, 0.385 / 0.385 / 0.401 (pycolmap global 16, 0.397).
            Real rows with a refocus, whole pipeline: entry 0.95102 -> 0.95189, templeRing 0.87667 ->
            0.88065, dtu_scan37 0.90163 -> 0.90207, castle-P19 0.94868 -> 0.94604 (unknown K).
        warm_start_joint_rounds: a second pass positioned from the first pass's centres skips the BA round
            with fixed rotations (templeRing: 50 iterations, capped, of 210 in the second pass).
        lean_first_pass: once a joint BA round of the first pass has moved a camera's focal by more than
            ``recalibrate_focal_change`` (so the mapping will run again), that pass only estimates the
            focal and the camera centres: its later rounds adjust the positioned points (the longest
            tracks) and continue their tracks, but triangulate no new ones. If the focal ends within the
            threshold after all, the model is completed (new tracks triangulated, one more round).
            templeRing (prior focal half the true one): first-pass BA on ~2.7k instead of ~7.7k points,
            mapping 40 -> 25 s, AUC@2 unchanged.
        fixed_camera_ids: cameras with known calibration, never refined.
        max_num_models: at most this many models (one per connected component of the view graph).
        min_model_size: components with fewer images give no model.
    """

    pose_unposed_pairs: bool = True
    pose_planar_pairs: bool = True
    planar_rotation_candidates: bool = True
    relative_poses: RelativePoseOptions = field(default_factory=RelativePoseOptions)
    rotation_averaging: RotationAveragingOptions = field(default_factory=RotationAveragingOptions)
    positioning: GlobalPositioningOptions = field(default_factory=GlobalPositioningOptions)
    triangulation: TriangulationOptions = field(
        default_factory=lambda: TriangulationOptions(max_error_px=2.0, filter_max_error_px=4.0)
    )
    ba: BundleAdjustmentOptions = field(
        default_factory=lambda: BundleAdjustmentOptions(loss="soft_l1", max_iterations=50)
    )
    round_ba: BundleAdjustmentOptions | None = None
    round_function_tolerance: float = 1e-4
    num_ba_rounds: int = 2
    round_observations_per_image: int = 50
    round_min_observations: int = 50_000
    final_max_observations: int = 600_000
    fix_rotations_first_round: bool = True
    fixed_rotation_max_iterations: int = 0
    first_filter_factor: float = 4.0
    min_point_observations: int = 3
    sparse_image_observations: int = 50
    min_image_observations: int = 20
    registration: RegistrationOptions = field(default_factory=RegistrationOptions)
    refine_focal: bool = True
    recalibrate_focal_change: float = 0.05
    second_pass_from_first_centers: bool = False
    warm_start_joint_rounds: bool = True
    lean_first_pass: bool = True
    fixed_camera_ids: tuple[int, ...] = ()
    max_num_models: int = 10
    min_model_size: int = 3

    def __post_init__(self) -> None:
        check_at_least("num_ba_rounds", self.num_ba_rounds, 1)
        check_at_least("round_function_tolerance", self.round_function_tolerance, 0)
        check_at_least("fixed_rotation_max_iterations", self.fixed_rotation_max_iterations, 0)
        check_at_least("round_observations_per_image", self.round_observations_per_image, 0)
        check_at_least("round_min_observations", self.round_min_observations, 0)
        check_at_least("final_max_observations", self.final_max_observations, 0)
        check_at_least("first_filter_factor", self.first_filter_factor, 1)
        check_at_least("recalibrate_focal_change", self.recalibrate_focal_change, 0)
        check_at_least("min_point_observations", self.min_point_observations, 2)
        check_at_least("sparse_image_observations", self.sparse_image_observations, 0)
        check_at_least("min_image_observations", self.min_image_observations, 1)
        check_model_limits(self.max_num_models, self.min_model_size)
        object.__setattr__(self, "fixed_camera_ids", tuple(int(c) for c in self.fixed_camera_ids))
        check_mapper_ba_options(self.ba)
        if self.round_ba is not None:
            check_mapper_ba_options(self.round_ba)


def _centers_in_frame(
    centers: dict[int, np.ndarray],
    rotations_before: dict[int, np.ndarray],
    rotations_now: dict[int, np.ndarray],
) -> dict[int, np.ndarray]:
    """Centres of an earlier model in the world frame of new ``cam_from_world`` rotations.

    The frame rotation ``Q`` (``R_before ~ R_now Q``) is the chordal mean over the images both know; the
    centres become ``Q c``. Unchanged when no image is shared.
    """
    common = sorted(set(centers) & set(rotations_before) & set(rotations_now))
    if not common:
        return centers
    _, q = align_rotations(
        np.stack([rotations_before[i] for i in common]), np.stack([rotations_now[i] for i in common])
    )
    return {i: q @ np.asarray(c, dtype=np.float64) for i, c in centers.items()}


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
        timer: StepTimer,
        rng: np.random.Generator,
        *,
        watch_focal: bool = False,
    ) -> None:
        self.state = MapperState(cameras, images, table)
        self.options = options
        self.timer = timer
        self.rng = rng
        self.initial_params = {cid: cam.params.copy() for cid, cam in self.state.cameras.items()}
        self.frozen_cameras: set[int] = set()
        # First pass of an unknown focal (lean): new tracks wait for the first joint round; if it moved
        # the focal, the pass will be re-mapped and triangulates none (refocusing).
        self.focal_pending = watch_focal and options.lean_first_pass
        self.refocusing = False
        self.report: dict = {"ba_rounds": [], "num_filtered_observations": 0, "num_filtered_points": 0}

    def position(
        self,
        component: RotationComponent,
        initial_centers: dict[int, np.ndarray] | None,
        initial_rotations: dict[int, np.ndarray] | None = None,
    ) -> bool:
        """Global positioning; sets poses and the positioned points. Returns False when it failed.

        ``initial_centers`` of an earlier model (with its ``initial_rotations``) are first turned into the
        world frame of this component's rotations: each rotation averaging fixes its own frame.
        """
        state, table = self.state, self.state.table
        if initial_centers is not None and initial_rotations is not None:
            initial_centers = _centers_in_frame(initial_centers, initial_rotations, component.rotations)
        rows = np.flatnonzero(np.isin(table.obs_image, component.image_ids))
        rays = np.column_stack([state.obs_xn[rows], np.ones(len(rows))])
        with self.timer("positioning"):
            result = position_globally(
                component.rotations,
                table.obs_image[rows],
                table.obs_track[rows],
                rays,
                self.options.positioning,
                initial_centers=initial_centers,
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

    def bundle_adjust(self, *, fix_rotations: bool, last: bool = True) -> dict:
        state = self.state
        refine = set() if fix_rotations else self.refine_camera_ids()
        options = self.options.ba if last or self.options.round_ba is None else self.options.round_ba
        if not last and self.options.round_function_tolerance > options.function_tolerance:
            options = replace(options, function_tolerance=self.options.round_function_tolerance)
        cap = self.options.fixed_rotation_max_iterations
        if fix_rotations and not refine and 0 < cap < options.max_iterations:
            options = replace(options, max_iterations=cap)
        points, held = state.point_ids(), np.zeros(0, np.int64)
        budget = self._observation_budget(last)
        with self.timer("bundle_adjustment"):
            if budget:
                points, held = self._covering_subset(points, budget)
            stats = adjust_bundle(
                state,
                state.registered_image_ids,
                options,
                refine_camera_ids=refine,
                point_tracks=points,
                fix_rotations=fix_rotations,
            )
        if refine and self.reset_bogus_cameras(refine):
            with self.timer("bundle_adjustment"):
                adjust_bundle(
                    state,
                    state.registered_image_ids,
                    options,
                    refine_camera_ids=self.refine_camera_ids(),
                    point_tracks=points,
                )
        if held.size:  # the held points no longer fit the moved poses
            with self.timer("triangulation"):
                move_points(state, held)
        return {
            "num_points_held": len(held),
            "fix_rotations": fix_rotations,
            "iterations": stats.iterations,
            "num_points": stats.num_points,
            "num_observations": stats.num_observations,
            "initial_cost": stats.initial_cost,
            "final_cost": stats.final_cost,
            "focal_px": {str(c): float(np.mean(state.cameras[c].focal_xy)) for c in sorted(refine)},
        }

    def _observation_budget(self, last: bool) -> int:
        """Most observations a BA adjusts (0: every point): ``final_max_observations`` for the last BA,
        ``max(round_observations_per_image x images, round_min_observations)`` for the rounds."""
        if last:
            return self.options.final_max_observations
        per_image = self.options.round_observations_per_image
        if not per_image:
            return 0
        return max(per_image * self.state.num_registered, self.options.round_min_observations)

    def _covering_subset(self, points: np.ndarray, max_observations: int) -> tuple[np.ndarray, np.ndarray]:
        """Split ``points`` (sorted track ids) into those a round adjusts, of at most ``max_observations``
        active observations (``bundle_adjustment.covering_points``), and those it holds."""
        state = self.state
        rows = state.track_rows(points)
        rows = rows[state.obs_active[rows]]
        if len(rows) <= max_observations:
            return points, points[:0]
        image = state.table.obs_image[rows]
        local = np.searchsorted(points, state.table.obs_track[rows])
        errors, _ = state.observation_errors(rows)
        counts = np.maximum(np.bincount(local, minlength=len(points)), 1)
        point_error = np.bincount(local, np.minimum(errors, 1e6), minlength=len(points)) / counts
        size_of_camera = np.zeros((max(state.cameras) + 1, 2))  # by camera id
        for cid, cam in state.cameras.items():
            size_of_camera[cid] = (cam.width, cam.height)
        image_size = size_of_camera[state.image_camera[image]]
        cell = grid_cell_of(state.obs_px[rows], image_size, grid_cells=4)
        chosen = np.zeros(len(points), dtype=bool)
        chosen[covering_points(image, local, cell, point_error, max_observations)] = True
        return points[chosen], points[~chosen]

    def retriangulate(self) -> TriangulationStats:
        """Continue every point's track and triangulate the tracks seen by ``min_point_observations`` or
        more images: shorter ones would only give points the filtering deletes (all images are registered
        up front, so a track never gains a view later)."""
        state = self.state
        stats = retriangulate(state, self.options.triangulation, self.options.min_point_observations)
        sparse = self._sparse_images()
        if len(sparse):  # their two-view tracks too (see ``sparse_image_observations``)
            tracks = np.unique(np.concatenate([tracks_in_image(state, i) for i in sparse]))
            more = triangulate_tracks(state, tracks, self.options.triangulation, 2)
            stats.num_candidates += more.num_candidates
            stats.num_created += more.num_created
        return stats

    def _track_counts(self) -> np.ndarray:
        """(num_tracks,) active observations of each track."""
        table = self.state.table
        return np.bincount(table.obs_track[self.state.obs_active], minlength=table.num_tracks)

    def _sparse_images(self, counts: np.ndarray | None = None) -> np.ndarray:
        """(K,) registered image ids with fewer than ``sparse_image_observations`` observations of points
        seen by ``min_point_observations`` or more images (they keep their two-view points).

        Args:
            counts: (num_tracks,) :meth:`_track_counts`, when the caller has them already.
        """
        state, table = self.state, self.state.table
        if self.options.sparse_image_observations == 0:
            return np.zeros(0, np.int64)
        counts = self._track_counts() if counts is None else counts
        long_rows = state.obs_active & (counts[table.obs_track] >= self.options.min_point_observations)
        per_image = np.bincount(table.obs_image[long_rows], minlength=len(state.is_registered))
        registered = np.flatnonzero(state.is_registered)
        sparse = registered[per_image[registered] < self.options.sparse_image_observations]
        if len(sparse):
            self.report["sparse_image_ids"] = sparse.tolist()
        return sparse

    def filter(self, max_error_px: float) -> None:
        with self.timer("filtering"):
            stats = filter_points(
                self.state, None, max_error_px, self.options.triangulation.filter_min_tri_angle_deg
            )
            num_short = self._delete_short_points()
        self.report["num_filtered_observations"] += stats.num_filtered_observations
        self.report["num_filtered_points"] += stats.num_filtered_points + num_short

    def _delete_short_points(self) -> int:
        """Delete the points with fewer than ``min_point_observations`` active observations, except those
        seen by a sparse image (``sparse_image_observations``)."""
        state, table = self.state, self.state.table
        points = state.point_ids()
        counts = self._track_counts()
        is_short = counts[points] < self.options.min_point_observations
        sparse = self._sparse_images(counts)
        if len(sparse):
            rows = np.concatenate([table.image_obs[i] for i in sparse])
            in_sparse = np.zeros(table.num_tracks, dtype=bool)
            in_sparse[table.obs_track[rows[state.obs_active[rows]]]] = True
            is_short &= ~in_sparse[points]
        short = points[is_short]
        state.delete_points(short)
        return len(short)

    def focal_moved(self) -> bool:
        """Whether BA moved a refined camera's focal by more than ``recalibrate_focal_change``."""
        for cid in self.refine_camera_ids():
            before = np.mean(
                self.initial_params[cid][list(camera_models.FOCAL_INDICES[self.state.cameras[cid].model])]
            )
            after = np.mean(self.state.cameras[cid].focal_xy)
            if abs(after / before - 1.0) > self.options.recalibrate_focal_change:
                return True
        return False

    def run_rounds(self, start: int, stop: int) -> None:
        """BA rounds ``start..stop-1`` with retriangulation and filtering after each.

        In a lean first pass, the retriangulation only continues the tracks of existing points until the
        first joint round, and after it too when that round moved the focal (:attr:`refocusing`).
        """
        options = self.options
        tri = options.triangulation
        for round_index in range(start, stop):
            fix = round_index == 0 and options.fix_rotations_first_round
            ba = self.bundle_adjust(fix_rotations=fix, last=False)
            if self.focal_pending and round_index > 0:
                self.focal_pending = False
                self.refocusing = ba["refocusing"] = self.focal_moved()
            with self.timer("triangulation"):
                if self.refocusing or self.focal_pending:
                    stats = TriangulationStats(
                        num_continued=continue_tracks(self.state, None, tri.max_error_px)
                    )
                else:
                    stats = self.retriangulate()
            ba["num_points_created"] = stats.num_created
            ba["num_observations_continued"] = stats.num_continued
            factor = options.first_filter_factor if round_index == 0 else 1.0
            self.filter(tri.filter_max_error_px * factor)
            self.report["ba_rounds"].append(ba)

    def finish(self) -> None:
        """Re-register (PnP) or drop images with too few observations, then a final BA and filtering.

        An image whose observations were all filtered away was mispositioned (e.g. few long tracks); PnP on
        the finished model's points usually recovers it, as the incremental mapper would register it.
        """
        options = self.options
        tri = options.triangulation
        weak = [
            i for i, n in _image_observation_counts(self.state).items() if n < options.min_image_observations
        ]
        recovered = []
        if weak:
            _deregister(self.state, weak)
            for image_id in weak:
                with self.timer("registration"):
                    result = register_image(self.state, image_id, options.registration, rng=self.rng)
                if result.success:
                    self.state.set_pose(image_id, result.cam_from_world)
                    self.state.obs_active[result.inlier_rows] = True
                    recovered.append(image_id)
            if recovered:
                with self.timer("triangulation"):
                    self.retriangulate()
            logger.info(
                "%d image(s) with < %d observations: %d re-registered by PnP, the others dropped",
                len(weak),
                options.min_image_observations,
                len(recovered),
            )
        self.report["reregistered_image_ids"] = recovered
        self.report["dropped_image_ids"] = [i for i in weak if i not in recovered]
        final = self.bundle_adjust(fix_rotations=False)
        self.filter(tri.filter_max_error_px)
        self.report["ba_rounds"].append(final)

    def complete(self) -> None:
        """A lean first pass kept after all (its focal ended within the threshold): triangulate the tracks
        it left out, then one more BA and filtering."""
        tri = self.options.triangulation
        self.refocusing = self.focal_pending = False
        with self.timer("triangulation"):
            stats = self.retriangulate()
        final = self.bundle_adjust(fix_rotations=False)
        final["num_points_created"] = stats.num_created
        self.filter(tri.filter_max_error_px)
        self.report["ba_rounds"].append(final)


def _map_once(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    options: GlobalMapperOptions,
    timer: StepTimer,
    rng: np.random.Generator,
    progress: ProgressCallback | None,
    *,
    check_focal: bool = False,
    initial_centers: dict[int, np.ndarray] | None = None,
    initial_rotations: dict[int, np.ndarray] | None = None,
    candidates: dict[tuple[int, int], list[np.ndarray]] | None = None,
) -> tuple[list[tuple[Reconstruction, MapperState]], dict, dict[int, Camera]]:
    """Rotation averaging -> tracks -> positioning -> BA rounds.

    With ``check_focal``, mapping stops after the largest component when BA moved a camera's focal by
    more than ``options.recalibrate_focal_change``. ``candidates``: alternative relative rotations of
    pairs for rotation averaging.

    Returns:
        (models with their states, largest first; report; refocused cameras (empty unless it stopped)).
    """
    report: dict = {"models": []}
    report_progress(progress, 0, 4, "rotation averaging")
    with timer("rotation_averaging"):
        rotations = average_rotations(two_view_geometries, options.rotation_averaging, candidates=candidates)
    report["rotation_averaging"] = rotations.report
    report["num_pairs"] = rotations.report["num_pairs_used"]
    if not rotations.success:
        report["reason"] = rotations.reason
        return [], report, {}
    kept_pairs = [p for c in rotations.components for p in c.pairs]
    report_progress(progress, 1, 4, "tracks")
    with timer("tracks"):
        arrays = build_track_arrays({p: two_view_geometries[p].inlier_matches for p in kept_pairs})
        table = TrackTable.from_arrays(arrays.track_index, arrays.image_ids, arrays.keypoint_indices, images)
    report["num_tracks"] = table.num_tracks
    report["num_track_observations"] = table.num_observations
    models = []
    components = [c for c in rotations.components if len(c.rotations) >= options.min_model_size]
    for index, component in enumerate(components[: options.max_num_models]):
        report_progress(
            progress, 2, 4, f"positioning component {index + 1} ({len(component.rotations)} images)"
        )
        watch = check_focal and index == 0
        mapper = _ComponentMapper(cameras, images, table, options, timer, rng, watch_focal=watch)
        model_report = mapper.report
        model_report["component_size"] = len(component.rotations)
        if mapper.position(component, initial_centers, initial_rotations):
            report_progress(progress, 3, 4, f"bundle adjustment of component {index + 1}")
            # Before any BA the positioned points can be far off: only the angle filter applies.
            mapper.filter(np.inf)
            # Positioned from an earlier model's centres, the model needs no round with fixed rotations.
            warm = initial_centers is not None and options.warm_start_joint_rounds
            mapper.run_rounds(1 if warm else 0, options.num_ba_rounds)
            mapper.finish()
            if watch:
                # Measured: re-mapping from the focal of the finished model (templeRing, prior 2x short:
                # AUC@2 0.83) beats re-mapping from the focal after two rounds (0.79) at the same time.
                changed = _refocused_cameras(cameras, mapper.state, options)
                if changed:
                    report["models"].append(model_report)
                    report["centers"] = {
                        i: mapper.state.centers[i].copy() for i in mapper.state.registered_image_ids
                    }
                    report["rotations"] = {
                        i: mapper.state.rotations[i].copy() for i in mapper.state.registered_image_ids
                    }
                    return [], report, changed
                if mapper.refocusing or mapper.focal_pending:
                    mapper.complete()
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
                models.append((state.to_reconstruction(with_colors=True), state))
        report["models"].append(model_report)
    models.sort(key=lambda m: (-m[0].num_registered, -len(m[0].points3D)))
    if not models:
        report["reason"] = "no component could be positioned"
    return models, report, {}


def _refocused_cameras(
    cameras: dict[int, Camera], state: MapperState, options: GlobalMapperOptions
) -> dict[int, Camera]:
    """Cameras of the model whose focal moved by more than ``recalibrate_focal_change`` (relative)."""
    changed = {}
    for cid, cam in cameras.items():
        if cid in options.fixed_camera_ids or cid not in state.cameras:
            continue
        before = np.mean(cam.focal_xy)
        after = np.mean(state.cameras[cid].focal_xy)
        if abs(after / before - 1.0) > options.recalibrate_focal_change:
            changed[cid] = copy.deepcopy(state.cameras[cid])
    return changed


@cyclic_gc_paused()  # hundreds of thousands of long-lived containers (runtime.collector)
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

    When bundle adjustment moves the focal length of a camera not in ``fixed_camera_ids`` by more than
    ``recalibrate_focal_change`` (the relative rotations were then estimated with a wrong focal), the
    pairs of that camera are posed again with the refined intrinsics and the whole mapping runs once more.
    That first pass, once a joint round has moved the focal, only refines the focal and the centres on
    its positioned points (``lean_first_pass``); the second pass is positioned afresh (or from the first
    pass's centres: ``second_pass_from_first_centers``).

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
    check_mapper_inputs(cameras, images, two_view_geometries, caller="global_mapping")
    rng = np.random.default_rng(0 if rng is None else rng)
    retain_freed_memory()  # the mapper's many large numpy temporaries reuse heap pages (runtime.allocator)
    timer = StepTimer()
    # Only a camera whose focal BA may refine can move it.
    check = (
        options.recalibrate_focal_change > 0
        and options.refine_focal
        and any(cid not in options.fixed_camera_ids for cid in cameras)
    )
    posing_report = None
    verified = two_view_geometries  # a refocused camera's pairs are posed again from these inliers
    if options.pose_unposed_pairs or options.pose_planar_pairs:
        with timer("relative_poses"):
            todo = [
                p
                for p, g in two_view_geometries.items()
                if options.pose_unposed_pairs and g.success and g.cam2_from_cam1 is None
            ]
            planar = [
                p
                for p, g in two_view_geometries.items()
                if options.pose_planar_pairs
                and g.success
                and g.config == "planar"
                and g.cam2_from_cam1 is not None
            ]
            posed = estimate_relative_poses(
                two_view_geometries, images, cameras, options.relative_poses, pairs=todo + planar, rng=rng
            )
            # A planar pair that five-point RANSAC cannot pose keeps its homography pose.
            kept = [p for p in planar if posed.two_view_geometries[p].cam2_from_cam1 is None]
            posed.two_view_geometries.update({p: two_view_geometries[p] for p in kept})
            posed.report.update(num_planar=len(planar), num_planar_kept=len(kept))
        two_view_geometries, posing_report = posed.two_view_geometries, posed.report

    def planar_candidates(pass_cameras: dict[int, Camera]) -> dict[tuple[int, int], list[np.ndarray]]:
        if not options.planar_rotation_candidates:
            return {}
        with timer("rotation_averaging"):
            planar_pairs = [p for p, g in verified.items() if g.success and g.config == "planar"]
            return homography_rotation_candidates(verified, images, pass_cameras, planar_pairs)

    models, report, changed = _map_once(
        cameras,
        images,
        two_view_geometries,
        options,
        timer,
        rng,
        progress,
        check_focal=check,
        candidates=planar_candidates(cameras),
    )
    if changed:
        logger.info(
            "focal of camera(s) %s moved; posing their pairs again and mapping again", sorted(changed)
        )
        with timer("recalibration"):
            refocused = {**cameras, **changed}
            touched = [
                p
                for p, g in verified.items()
                if g.success and {images[p[0]].camera_id, images[p[1]].camera_id} & set(changed)
            ]
            reposed = estimate_relative_poses(
                verified, images, refocused, options.relative_poses, pairs=touched, rng=rng
            )
            pairs = reposed.two_view_geometries
        first_pass = report
        centers, rotations_before = first_pass.pop("centers"), first_pass.pop("rotations")
        if not options.second_pass_from_first_centers:
            centers = rotations_before = None  # a random start, as the first pass
        models, report, _ = _map_once(
            refocused,
            images,
            pairs,
            options,
            timer,
            rng,
            progress,
            initial_centers=centers,
            initial_rotations=rotations_before,
            candidates=planar_candidates(refocused),
        )
        report["recalibration"] = {
            "focal_px_before_after": {
                str(cid): [float(np.mean(cameras[cid].focal_xy)), float(np.mean(c.focal_xy))]
                for cid, c in changed.items()
            },
            "relative_poses": reposed.report,
            "first_pass": first_pass,
        }
    if posing_report is not None:
        report["relative_poses"] = posing_report
    report["num_images"] = len(images)
    report["num_models"] = len(models)
    report["num_registered"] = sum(r.num_registered for r, _ in models)
    report["timings_s"] = timer.timings_s()
    report_progress(progress, 4, 4, f"{report['num_registered']} registered")
    return MappingResult([r for r, _ in models], report)
