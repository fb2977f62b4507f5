"""Incremental structure from motion: the mapper that grows models image by image.

The loop follows COLMAP's incremental mapper (Schönberger & Frahm, "Structure-from-Motion Revisited",
CVPR 2016) and H&Z 18 (n-view reconstruction by resection and intersection):

1. tracks from the verified inlier matches (union-find, :func:`geomvision.sfm.tracks.build_tracks`);
2. initialise from the best-scored pair (:mod:`geomvision.sfm.initialization`) — or from a model another
   initialiser produced (``init_reconstruction``, e.g. factorization);
3. repeat: next-best view (visibility pyramid) -> PnP RANSAC registration (resection, H&Z 7.1)
   -> triangulation of new tracks and continuation of existing ones (intersection, H&Z 12.2)
   -> local bundle adjustment of the new image and its strongest neighbours -> filtering;
   every time the model has grown by ``global_ba_every`` (a ratio, 1.2 = 20 % more images) a global
   bundle adjustment, retriangulation and filtering;
4. when nothing more registers, a final global BA, and a new model is started from the images not yet
   registered in any model (so a scene that falls apart gives several models);
5. models are returned largest first.

Intrinsics: cameras in ``fixed_camera_ids`` (known calibration) are never changed; the others have their
intrinsics refined in global BA (those ``global_ba.refine_*`` free: focal and distortion by default) once
``refine_intrinsics_min_images`` images are registered (two views cannot tell focal from depth).

All per-observation work is vectorised over the flat arrays of
:class:`~geomvision.sfm.mapper_state.MapperState`; Python loops run over images, never observations.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from geomvision.errors import InputError, check_at_least
from geomvision.geometry.rigid import rotation_angle_deg
from geomvision.progress import ProgressCallback
from geomvision.progress import report as report_progress
from geomvision.runtime.allocator import retain_freed_memory
from geomvision.runtime.collector import cyclic_gc_paused
from geomvision.runtime.rng import as_rng
from geomvision.scene import Camera, ImageInfo, Reconstruction, TwoViewGeometry
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions
from geomvision.sfm.initialization import InitializationOptions, initialize_reconstruction
from geomvision.sfm.mapper_ba import adjust_bundle, check_mapper_ba_options
from geomvision.sfm.mapper_state import (
    MapperState,
    StepTimer,
    TrackTable,
    check_mapper_inputs,
    check_model_limits,
)
from geomvision.sfm.registration import RegistrationOptions, rank_next_images, register_image
from geomvision.sfm.triangulate import (
    TriangulationOptions,
    continue_tracks,
    filter_points,
    retriangulate,
    tracks_in_image,
    triangulate_tracks,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IncrementalMapperOptions",
    "MappingResult",
    "PairCheckedRegistrationOptions",
    "incremental_mapping",
]


def _mapper_triangulation() -> TriangulationOptions:
    return TriangulationOptions(max_error_px=2.0, filter_max_error_px=4.0)


def _mapper_initialization() -> InitializationOptions:
    # The two-view points are held to the mapper's 2 px joining threshold (and filtered at it).
    return InitializationOptions(
        triangulation=TriangulationOptions(max_error_px=2.0, filter_max_error_px=2.0)
    )


@dataclass(frozen=True, kw_only=True)
class PairCheckedRegistrationOptions:
    """Options of the mapper's pair-checked registration.

    When no candidate registers with ``registration.min_num_inliers``, candidates with a strong verified
    pair to a registered image are retried with a lower PnP inlier floor, and kept only if their PnP pose
    reproduces that pair's relative rotation. It joined image 6 of the synthetic street at 100 images as
    first rendered (14 triangulated points and 611 two-view matches where the walk turns), not images 1-5
    behind it, whose scale the images did not fix. Off by default until it is measured at 1000 images
    (see docs/scaling.md).

    Attributes:
        min_inliers: the lower PnP inlier floor (0, the default, turns the retry off; below 4 acts as 4;
            10 was tried).
        min_pair_inliers: the verified pair's inlier matches needed for that check.
        max_rotation_deg: largest disagreement (degrees) between the PnP pose's rotation relative to the
            paired image and the pair's two-view rotation.
    """

    min_inliers: int = 0
    min_pair_inliers: int = 100
    max_rotation_deg: float = 2.0

    def __post_init__(self) -> None:
        check_at_least("min_inliers", self.min_inliers, 0)
        check_at_least("min_pair_inliers", self.min_pair_inliers, 1)
        if not 0 < self.max_rotation_deg < 180:
            raise InputError(f"max_rotation_deg must be in (0, 180), got {self.max_rotation_deg}")


@dataclass(frozen=True, kw_only=True)
class IncrementalMapperOptions:
    """Options of :func:`incremental_mapping` (COLMAP's mapper defaults where they exist).

    The mapper's own settings (when to run which bundle adjustment, which cameras to refine, how many
    models) sit here; the options of the steps it calls are nested, each the step's own options class.

    Attributes:
        initialization: initial-pair choice and two-view reconstruction (its triangulation holds the
            two-view points to 2 px, like ``triangulation.max_error_px``).
        registration: next-best-view ranking and PnP registration (RANSAC at 12 px).
        triangulation: triangulation of new tracks, continuation of existing ones and filtering. New
            and continued observations must reproject within 2 px, tighter than COLMAP's 4 px: our
            SIFT keypoints reproject to ~0.3 px, and on scenes with repeated structure (Strecha
            castle-P19) wrong matches 2-4 px from a point biased every pose (AUC@2 0.78 -> 0.86 with
            known intrinsics); neutral on fountain/entry.
        local_ba: bundle adjustment of each new image and its best-connected neighbours (intrinsics
            held: ``intrinsics="fixed"``; any other value refines the cameras ``global_ba`` would).
        global_ba: bundle adjustment of the whole model; its ``refine_focal`` /
            ``refine_principal_point`` / ``refine_extra_params`` say which intrinsics of the cameras
            not in ``fixed_camera_ids`` are refined.
        local_ba_num_images: images optimised by local BA (the new one and its best-connected neighbours).
        global_ba_every: global BA each time the number of registered images grows by this factor.
        refine_intrinsics_min_images: registered images needed before intrinsics are refined.
        fixed_camera_ids: cameras with known calibration, never refined.
        max_num_models: stop after this many models.
        min_model_size: models with fewer registered images are discarded.
        max_reg_retry_growth: an image that failed to register is retried only once the number of
            triangulated points it sees has grown by this factor.
        pair_checked: the retry of images that no candidate registered for, checked against a verified
            pair (off by default).
    """

    initialization: InitializationOptions = field(default_factory=_mapper_initialization)
    registration: RegistrationOptions = field(default_factory=RegistrationOptions)
    triangulation: TriangulationOptions = field(default_factory=_mapper_triangulation)
    # no point steps in the mapper's BAs: on the 1000-image street's 300-image clusters (one worker, back
    # to back) they cost 9 % of the cluster stage (136.8 -> 149.5 s) although they cut the LM iterations;
    # the merge's and the global mapper's larger BAs gain from them (BundleAdjustmentOptions.point_steps)
    local_ba: BundleAdjustmentOptions = field(
        default_factory=lambda: BundleAdjustmentOptions(
            loss="soft_l1", max_iterations=25, intrinsics="fixed", point_steps=False
        )
    )
    global_ba: BundleAdjustmentOptions = field(
        default_factory=lambda: BundleAdjustmentOptions(loss="soft_l1", max_iterations=50, point_steps=False)
    )
    local_ba_num_images: int = 6
    global_ba_every: float = 1.2
    refine_intrinsics_min_images: int = 3
    fixed_camera_ids: tuple[int, ...] = ()
    max_num_models: int = 10
    min_model_size: int = 3
    max_reg_retry_growth: float = 1.2
    pair_checked: PairCheckedRegistrationOptions = field(default_factory=PairCheckedRegistrationOptions)

    def __post_init__(self) -> None:
        if self.global_ba_every <= 1.0:
            raise InputError(f"global_ba_every is a growth ratio and must be > 1, got {self.global_ba_every}")
        check_at_least("local_ba_num_images", self.local_ba_num_images, 1)
        check_model_limits(self.max_num_models, self.min_model_size)
        object.__setattr__(self, "fixed_camera_ids", tuple(int(c) for c in self.fixed_camera_ids))
        check_mapper_ba_options(self.local_ba)
        check_mapper_ba_options(self.global_ba)


@dataclass
class MappingResult:
    """Output of :func:`incremental_mapping`.

    Attributes:
        reconstructions: models, largest (most registered images) first.
        report: decisions, counts and timings (JSON-serialisable).
    """

    reconstructions: list[Reconstruction]
    report: dict = field(default_factory=dict)


class _ModelBuilder:
    """Grows one model; holds the counters that go into the report."""

    def __init__(
        self,
        state: MapperState,
        options: IncrementalMapperOptions,
        allowed: set[int],
        rng: np.random.Generator,
        timer: StepTimer,
        progress: ProgressCallback | None,
        num_images: int,
        pairs: dict[tuple[int, int], TwoViewGeometry] | None = None,
    ):
        self.state = state
        self.options = options
        self.allowed = allowed
        self.rng = rng
        self.timer = timer
        self.progress = progress
        self.num_images = num_images
        self.tri_options = options.triangulation
        self.reg_options = options.registration
        self.report: dict = {
            "registrations": [],
            "registration_failures": [],
            "num_local_ba": 0,
            "num_global_ba": 0,
            "num_filtered_observations": 0,
            "num_filtered_points": 0,
            "num_points_created": 0,
            "num_observations_continued": 0,
        }
        self.failed_at: dict[int, int] = {}
        self.next_global_ba = 0
        # Images sharing a track with a registered image (the only ones that can see a 3D point), grown
        # as images register: next-best-view ranking scores these instead of every unregistered image,
        # which made each step cost O(number of images) and the whole run O(N^2).
        self.frontier: set[int] = set()
        self.expanded: set[int] = set()
        # image -> [(other image, geometry)] of the strong verified pairs (the pair-checked registration)
        self.strong_pairs: dict[int, list[tuple[int, TwoViewGeometry]]] = {}
        for (i, j), g in (pairs or {}).items():
            if g.cam2_from_cam1 is not None and g.num_inliers >= options.pair_checked.min_pair_inliers:
                self.strong_pairs.setdefault(i, []).append((j, g))
                self.strong_pairs.setdefault(j, []).append((i, g))
        self.pair_checked_failed_at: dict[int, int] = {}
        self.frozen_cameras: set[int] = set()
        self.initial_params = {cid: cam.params.copy() for cid, cam in state.cameras.items()}

    # --- bundle adjustment --------------------------------------------------------------------------
    def refine_camera_ids(self) -> set[int]:
        if self.state.num_registered < self.options.refine_intrinsics_min_images:
            return set()
        used = {self.state.images[i].camera_id for i in self.state.registered_image_ids}
        return used - set(self.options.fixed_camera_ids) - self.frozen_cameras

    def reset_bogus_cameras(self, camera_ids: set[int]) -> bool:
        """Undo intrinsics that BA drove to implausible values (COLMAP's bogus-camera rule).

        A focal length outside [0.1, 10] x max(width, height), a distortion parameter beyond 1 in
        magnitude or an fx / fy aspect outside [0.8, 1.25] means the refinement ran into a degenerate
        configuration (too few or too similar views); the camera goes back to its initial
        intrinsics and stays fixed for this model.
        """
        reset = set()
        for cid in camera_ids:
            cam = self.state.cameras[cid]
            size = max(cam.width, cam.height)
            focal = np.asarray(cam.focal_xy) / size
            aspect = focal[0] / focal[1]
            plausible = (
                np.all((focal >= 0.1) & (focal <= 10.0))
                and np.all(np.abs(cam.distortion) <= 1.0)
                and 0.8 <= aspect <= 1.25  # real pixels are square to a few percent
            )
            if plausible:
                continue
            logger.warning(
                "camera %d: refined intrinsics %s are implausible; reverting and fixing them",
                cid,
                np.round(cam.params, 4).tolist(),
            )
            cam.params = self.initial_params[cid].copy()
            reset.add(cid)
        if reset:
            self.frozen_cameras |= reset
            self.state.update_normalized(reset)
            self.report["num_camera_resets"] = self.report.get("num_camera_resets", 0) + len(reset)
        return bool(reset)

    def adjust_two_view(self, state: MapperState, image_ids: list[int], fixed_image_id: int) -> None:
        with self.timer("global_ba"):
            adjust_bundle(state, image_ids, self.options.global_ba, fixed_image_ids={fixed_image_id})
        self.report["num_global_ba"] += 1

    def global_ba(self) -> int:
        """Global BA, retriangulation and filtering; returns how many points/observations changed."""
        state = self.state
        for _ in range(2):  # a second pass only when bogus intrinsics had to be reset
            refine = self.refine_camera_ids()
            with self.timer("global_ba"):
                adjust_bundle(
                    state,
                    state.registered_image_ids,
                    self.options.global_ba,
                    refine_camera_ids=refine,
                    point_tracks=state.point_ids(),
                )
            self.report["num_global_ba"] += 1
            if not self.reset_bogus_cameras(refine):
                break
        with self.timer("triangulation"):
            stats = retriangulate(state, self.tri_options)
        self.report["num_points_created"] += stats.num_created
        self.report["num_observations_continued"] += stats.num_continued
        filtered = self.filter(None)
        self.next_global_ba = max(
            state.num_registered + 1, math.ceil(state.num_registered * self.options.global_ba_every)
        )
        return stats.num_created + stats.num_continued + filtered

    def local_ba(self, image_id: int) -> None:
        state = self.state
        neighbours = self.local_images(image_id)
        with self.timer("local_ba"):
            adjust_bundle(
                state, neighbours, self.options.local_ba, refine_camera_ids=self.refine_camera_ids()
            )
        self.report["num_local_ba"] += 1
        tracks = np.unique(np.concatenate([tracks_in_image(state, i) for i in neighbours]))
        with self.timer("triangulation"):
            self.report["num_observations_continued"] += continue_tracks(
                state, tracks, self.tri_options.max_error_px
            )
        self.filter(tracks)

    def local_images(self, image_id: int) -> list[int]:
        """The new image and the registered images sharing the most points with it."""
        state = self.state
        rows = state.table.image_obs[image_id]
        rows = rows[state.obs_active[rows]]
        others = state.track_rows(np.unique(state.table.obs_track[rows]))
        others = others[state.obs_active[others]]
        counts = np.bincount(state.table.obs_image[others], minlength=len(state.is_registered))
        counts[image_id] = 0
        order = np.argsort(-counts, kind="stable")
        best = [int(i) for i in order[: self.options.local_ba_num_images - 1] if counts[i] > 0]
        return [image_id, *best]

    def filter(self, tracks: np.ndarray | None) -> int:
        with self.timer("filtering"):
            stats = filter_points(
                self.state,
                tracks,
                self.tri_options.filter_max_error_px,
                self.tri_options.filter_min_tri_angle_deg,
            )
        self.report["num_filtered_observations"] += stats.num_filtered_observations
        self.report["num_filtered_points"] += stats.num_filtered_points
        return stats.num_filtered_observations + stats.num_filtered_points

    # --- growth ---------------------------------------------------------------------------------------
    def update_frontier(self) -> None:
        """Add the images on the tracks of newly registered images to :attr:`frontier`."""
        state = self.state
        new = [i for i in state.registration_order if i not in self.expanded]
        if not new:
            return
        self.expanded.update(new)
        tracks = np.unique(np.concatenate([state.table.obs_track[state.table.image_obs[i]] for i in new]))
        self.frontier.update(np.unique(state.table.obs_image[state.track_rows(tracks)]).tolist())

    def try_register_next(self) -> int | None:
        """Register the best candidate that succeeds; returns its id or None when none does."""
        state = self.state
        self.update_frontier()
        # Same ranking as over all unregistered images: an image outside the frontier sees no 3D point.
        candidates = sorted((self.frontier & self.allowed) - set(state.registration_order))
        ranked = rank_next_images(state, candidates, self.reg_options)
        for image_id, score, num_visible in ranked:
            if num_visible < self.failed_at.get(image_id, 0) * self.options.max_reg_retry_growth:
                continue  # failed before and sees hardly more points now: not worth another RANSAC
            with self.timer("registration"):
                result = register_image(state, image_id, self.reg_options, rng=self.rng)
            if not result.success:
                self.failed_at[image_id] = num_visible
                self.report["registration_failures"].append(
                    {"image_id": image_id, "num_visible": num_visible, "reason": result.reason}
                )
                logger.debug("image %d not registered: %s", image_id, result.reason)
                continue
            self.accept(result, score)
            return image_id
        return self.try_register_pair_checked(candidates)

    def accept(self, result, score: int, pair_checked_with: int | None = None) -> None:
        """Register a successful PnP result in the state and the report."""
        state = self.state
        image_id = result.image_id
        state.set_pose(image_id, result.cam_from_world)
        state.obs_active[result.inlier_rows] = True
        entry = {
            "image_id": image_id,
            "pyramid_score": score,
            "num_correspondences": result.num_correspondences,
            "num_inliers": result.num_inliers,
        }
        if pair_checked_with is not None:
            entry["pair_checked_with"] = pair_checked_with
        self.report["registrations"].append(entry)
        logger.info(
            "registered image %d (%d/%d inliers%s), %d images",
            image_id,
            result.num_inliers,
            result.num_correspondences,
            "" if pair_checked_with is None else f", checked against image {pair_checked_with}",
            state.num_registered,
        )

    def try_register_pair_checked(self, candidates: list[int]) -> int | None:
        """No candidate registered: retry those with a strong verified pair to a registered image.

        PnP may then keep as few as ``pair_checked.min_inliers`` inliers, and the pose is accepted only
        if its rotation relative to the paired registered image matches the pair's two-view rotation
        within ``pair_checked.max_rotation_deg``: two independent estimates (2D-3D and 2D-2D) agree.
        """
        if self.options.pair_checked.min_inliers == 0:
            return None
        k = max(4, self.options.pair_checked.min_inliers)  # P3P + 1, as RegistrationOptions requires
        if k >= self.reg_options.min_num_inliers:
            return None
        state = self.state
        options = replace(
            self.reg_options,
            min_num_inliers=k,
            min_num_visible=min(k, self.reg_options.min_num_visible),
            ransac=replace(
                self.reg_options.ransac, min_num_inliers=min(k, self.reg_options.ransac.min_num_inliers)
            ),
        )
        strong = [
            c for c in candidates if any(state.is_registered[o] for o, _ in self.strong_pairs.get(c, []))
        ]
        for image_id, score, num_visible in rank_next_images(state, strong, options):
            if num_visible < self.pair_checked_failed_at.get(image_id, 0) * self.options.max_reg_retry_growth:
                continue
            with self.timer("registration"):
                result = register_image(state, image_id, options, rng=self.rng)
            partner = self.agreeing_pair(image_id, result) if result.success else None
            if partner is None:
                self.pair_checked_failed_at[image_id] = num_visible
                reason = result.reason if not result.success else "PnP pose disagrees with its verified pairs"
                self.report["registration_failures"].append(
                    {"image_id": image_id, "num_visible": num_visible, "reason": f"pair-checked: {reason}"}
                )
                continue
            self.report["num_pair_checked"] = self.report.get("num_pair_checked", 0) + 1
            self.accept(result, score, pair_checked_with=partner)
            return image_id
        return None

    def agreeing_pair(self, image_id: int, result) -> int | None:
        """The registered partner (most inliers first) whose two-view rotation the PnP pose reproduces."""
        state = self.state
        partners = sorted(
            ((o, g) for o, g in self.strong_pairs.get(image_id, []) if state.is_registered[o]),
            key=lambda og: -og[1].num_inliers,
        )
        R_new = result.cam_from_world.rotation
        for other, g in partners:
            # cam2_from_cam1 maps image_i's camera to image_j's
            if g.image_i == image_id:
                R_rel = state.rotations[other] @ R_new.T
            else:
                R_rel = R_new @ state.rotations[other].T
            if (
                rotation_angle_deg(R_rel, g.cam2_from_cam1.rotation)
                <= self.options.pair_checked.max_rotation_deg
            ):
                return other
        return None

    def grow(self) -> None:
        state = self.state
        self.next_global_ba = max(
            state.num_registered + 1, math.ceil(state.num_registered * self.options.global_ba_every)
        )
        while True:
            image_id = self.try_register_next()
            if image_id is None:
                break
            with self.timer("triangulation"):
                new_tracks = tracks_in_image(state, image_id)
                self.report["num_observations_continued"] += continue_tracks(
                    state, new_tracks, self.tri_options.max_error_px
                )
                stats = triangulate_tracks(state, new_tracks, self.tri_options)
            self.report["num_points_created"] += stats.num_created
            self.local_ba(image_id)
            if state.num_registered >= self.next_global_ba:
                self.global_ba()
            report_progress(
                self.progress,
                state.num_registered,
                self.num_images,
                f"{state.num_registered} registered, {state.num_points} points",
            )

    def finish(self) -> None:
        """Final global BA; a second pass if retriangulation/filtering changed the model."""
        if self.global_ba() > 0:
            self.global_ba()


def _seed_from_reconstruction(state: MapperState, rec: Reconstruction, allowed: set[int]) -> int:
    """Load poses and points of an external initial model into ``state``; returns points loaded.

    Each point is attached to the track of its observations (majority vote over the tracks its
    observations belong to); observations of other tracks are ignored.
    """
    for image_id, view in rec.views.items():
        if view.registered and image_id in allowed:
            state.set_pose(image_id, view.cam_from_world)
    for cam_id, cam in rec.cameras.items():
        if cam_id in state.cameras and cam.model == state.cameras[cam_id].model:
            state.cameras[cam_id].params = np.array(cam.params, dtype=np.float64)
    state.update_normalized()
    if not rec.points3D:
        return 0
    arrays = rec.observation_arrays()
    keep = np.array(
        [i in allowed and state.is_registered[i] for i in arrays["obs_image_id"].tolist()], dtype=bool
    )
    obs_point, obs_image, obs_kp = (
        arrays["obs_point"][keep],
        arrays["obs_image_id"][keep],
        arrays["obs_keypoint"][keep],
    )
    rows = np.full(len(obs_point), -1, dtype=np.int64)
    for image_id in np.unique(obs_image).tolist():
        sel = obs_image == image_id
        fo = state.table.feature_obs[image_id]
        kp = obs_kp[sel]
        valid = (kp >= 0) & (kp < len(fo))
        rows_sel = np.full(len(kp), -1, dtype=np.int64)
        rows_sel[valid] = fo[kp[valid]]
        rows[sel] = rows_sel
    good = rows >= 0
    obs_point, rows = obs_point[good], rows[good]
    tracks = state.table.obs_track[rows]
    # Majority track per point: count (point, track) pairs, keep each point's most frequent track.
    pt_tr, counts = np.unique(np.stack([obs_point, tracks], axis=1), axis=0, return_counts=True)
    pt_tr = pt_tr[np.lexsort((-counts, pt_tr[:, 0]))]
    best = pt_tr[np.r_[True, pt_tr[1:, 0] != pt_tr[:-1, 0]]]
    _, first_claim = np.unique(best[:, 1], return_index=True)  # a track claimed twice keeps one point
    p_arr, t_arr = best[first_claim, 0], best[first_claim, 1]
    state.track_xyz[t_arr] = arrays["xyz"][p_arr]
    state.track_has_point[t_arr] = True
    lookup = np.full(state.table.num_tracks, -1, dtype=np.int64)
    lookup[t_arr] = p_arr
    match = lookup[tracks] == obs_point
    state.obs_active[rows[match]] = True
    counts_per_track = np.bincount(state.table.obs_track[rows[match]], minlength=state.table.num_tracks)
    state.delete_points(t_arr[counts_per_track[t_arr] < 2])
    return state.num_points


@cyclic_gc_paused()  # hundreds of thousands of long-lived containers (runtime.collector)
def incremental_mapping(
    cameras: dict[int, Camera],
    images: dict[int, ImageInfo],
    two_view_geometries: dict[tuple[int, int], TwoViewGeometry],
    options: IncrementalMapperOptions | None = None,
    *,
    init_reconstruction: Reconstruction | None = None,
    rng: np.random.Generator | int | None = None,
    progress: ProgressCallback | None = None,
) -> MappingResult:
    """Reconstruct cameras and points from verified image pairs, one image at a time.

    Args:
        cameras: camera_id -> initial intrinsics (refined unless listed in ``options.fixed_camera_ids``).
        images: image_id -> ImageInfo (name, camera_id, keypoints, colours).
        two_view_geometries: verified pairs (i, j), i < j; their inlier matches define the tracks.
        options: mapper options.
        init_reconstruction: optional first model from another initialiser; its registered images and
            points seed the first model instead of the two-view initialisation.
        rng: seed or generator (RANSAC); the same seed gives the same models.
        progress: ``progress(done, total, message)`` callback over registered images.

    Returns:
        MappingResult with the models (largest first) and a report dict.

    Raises:
        InputError: images referring to unknown cameras, or pairs to unknown images.
    """
    from geomvision.sfm.tracks import build_track_arrays

    options = options or IncrementalMapperOptions()
    check_mapper_inputs(cameras, images, two_view_geometries, caller="incremental_mapping")
    rng = as_rng(rng)
    retain_freed_memory()  # the mapper's many large numpy temporaries reuse heap pages (runtime.allocator)
    timer = StepTimer()
    usable = {
        pair: g
        for pair, g in two_view_geometries.items()
        if g.success and g.config != "rejected" and g.num_inliers > 0
    }
    with timer("tracks"):
        arrays = build_track_arrays({pair: g.inlier_matches for pair, g in usable.items()})
        table = TrackTable.from_arrays(arrays.track_index, arrays.image_ids, arrays.keypoint_indices, images)
    report: dict = {
        "num_images": len(images),
        "num_pairs": len(usable),
        "num_tracks": table.num_tracks,
        "num_track_observations": table.num_observations,
        "models": [],
    }
    models: list[Reconstruction] = []
    used_images: set[int] = set()
    tried_pairs: set[tuple[int, int]] = set()
    init_options = options.initialization
    max_attempts = 3 * options.max_num_models
    reason = ""
    for _attempt in range(max_attempts):
        if len(models) >= options.max_num_models:
            break
        allowed = set(images) - used_images
        if len(allowed) < 2:
            break
        state = MapperState(cameras, images, table)
        builder = _ModelBuilder(state, options, allowed, rng, timer, progress, len(images), usable)
        model_report: dict = {}
        if init_reconstruction is not None and not models and _attempt == 0:
            with timer("initialization"):
                num = _seed_from_reconstruction(state, init_reconstruction, allowed)
            model_report["initialization"] = {
                "method": "external",
                "num_images": state.num_registered,
                "num_points": num,
            }
            if state.num_registered < 2 or num == 0:
                state.clear()
                model_report["initialization"]["reason"] = "external model gave < 2 images or no points"
        if state.num_registered == 0:
            with timer("initialization"):
                init = initialize_reconstruction(
                    state,
                    usable,
                    init_options,
                    allowed_image_ids=allowed,
                    excluded_pairs=tried_pairs,
                    adjust=builder.adjust_two_view,
                    rng=rng,
                )
            for attempt in init.attempts:
                tried_pairs.add(tuple(attempt["pair"]))
            model_report["initialization"] = {
                "method": "two-view",
                "success": init.success,
                "reason": init.reason,
                "initial_pair": list(init.image_ids) if init.success else None,
                "num_points": init.num_points,
                "median_tri_angle_deg": init.median_tri_angle_deg,
                "attempts": init.attempts,
            }
            if not init.success:
                reason = init.reason
                if not models:
                    report["models"].append(model_report)
                break
        builder.grow()
        builder.finish()
        model_report.update(builder.report)
        model_report.update(
            {
                "num_registered": state.num_registered,
                "num_points3D": state.num_points,
                "mean_reprojection_error_px": state.mean_reprojection_error_px(),
                "registered_image_ids": state.registered_image_ids,
            }
        )
        if state.num_registered >= min(options.min_model_size, len(allowed)):
            models.append(state.to_reconstruction(with_colors=True))
            used_images |= set(state.registered_image_ids)
            model_report["kept"] = True
        else:
            model_report["kept"] = False
            model_report["reason"] = (
                f"{state.num_registered} images < min_model_size {options.min_model_size}"
            )
        report["models"].append(model_report)
    models.sort(key=lambda r: (-r.num_registered, -len(r.points3D)))
    report["num_models"] = len(models)
    report["num_registered"] = sum(r.num_registered for r in models)
    report["num_ba_calls"] = sum(
        m.get("num_local_ba", 0) + m.get("num_global_ba", 0) for m in report["models"]
    )
    if not models:
        report["reason"] = reason or "no model could be built"
    report["timings_s"] = timer.timings_s()
    return MappingResult(models, report)
