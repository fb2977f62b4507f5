"""Bundle adjustment of (part of) a mapper model: the mapper's arrays -> the BA problem -> back.

The problem handed to :mod:`geomvision.sfm.bundle_adjustment` is built directly from the
:class:`~geomvision.sfm.mapper_state.MapperState` arrays (no Point3D objects), so local BA after every
registration costs array slicing only:

- *free* images: pose optimised; *constant* images: other registered images that observe the chosen
  points, held fixed (they anchor the local problem);
- points: every point observed by a free image (all observations of those points enter the problem);
- gauge: when fewer than two constant images anchor the problem, the first free image's pose and the
  largest translation component of the second are held fixed (7 DOF: rotation, translation, scale),
  as COLMAP does;
- intrinsics: shared per camera; focal length and extra (distortion) parameters are freed only for the
  cameras listed in ``refine_camera_ids``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d, matrix_to_rotvec, rotvec_to_matrix
from geomvision.sfm.mapper_state import MapperState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MapperBAOptions:
    """How the mapper calls bundle adjustment.

    Attributes:
        backend: BA backend name passed to ``BundleAdjustmentOptions`` ("scipy" or "schur").
        loss: robust loss name ("linear", "huber", "soft_l1", "cauchy").
        loss_scale_px: robust loss scale in pixels.
        max_iterations: iteration cap.
        refine_extra_params: also free distortion parameters of refined cameras.
    """

    backend: str = "scipy"
    loss: str = "soft_l1"
    loss_scale_px: float = 1.0
    max_iterations: int = 50
    refine_extra_params: bool = True


@dataclass
class AdjustStats:
    """What one BA call did (for the mapper report)."""

    num_images: int
    num_fixed_images: int
    num_points: int
    num_observations: int
    initial_cost: float = float("nan")
    final_cost: float = float("nan")
    iterations: int = 0
    success: bool = True
    reason: str = ""


def adjust_bundle(
    state: MapperState,
    free_image_ids: list[int],
    options: MapperBAOptions,
    *,
    refine_camera_ids: set[int] = frozenset(),
    fixed_image_ids: set[int] = frozenset(),
    point_tracks: np.ndarray | None = None,
    fix_rotations: bool = False,
) -> AdjustStats:
    """Bundle-adjust the poses of ``free_image_ids`` and the points they see; updates ``state`` in place.

    Args:
        state: mapper state.
        free_image_ids: registered images whose poses are optimised.
        options: BA settings.
        refine_camera_ids: cameras whose focal (and extra params, if enabled) are optimised.
        fixed_image_ids: images held constant even if listed as free (e.g. the gauge image).
        point_tracks: points to optimise; default every point observed by a free image.
        fix_rotations: hold every rotation and optimise only translations (and points): the first
            bundle adjustment of the global mapper, whose rotations come from rotation averaging.

    Returns:
        AdjustStats with the problem size and costs.
    """
    from geomvision.sfm.ba.model import BundleAdjustmentProblem
    from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, adjust_problem

    free = [i for i in free_image_ids if state.is_registered[i]]
    free_set = set(free)
    if point_tracks is None:
        rows = np.concatenate([state.table.image_obs[i] for i in free]) if free else np.zeros(0, np.int64)
        rows = rows[state.obs_active[rows]]
        point_tracks = np.unique(state.table.obs_track[rows])
    tracks = np.asarray(point_tracks, dtype=np.int64)
    tracks = tracks[state.track_has_point[tracks]]
    rows = state.track_rows(tracks)
    rows = rows[state.obs_active[rows]]
    obs_image_id = state.table.obs_image[rows]
    images = np.unique(np.concatenate([obs_image_id, np.asarray(free, dtype=np.int64)]))
    image_index = {int(i): k for k, i in enumerate(images.tolist())}
    constant = [int(i) for i in images if int(i) not in free_set or int(i) in fixed_image_ids]
    stats = AdjustStats(len(images), len(constant), len(tracks), len(rows))
    if len(rows) == 0 or len(free_set - set(fixed_image_ids)) == 0:
        stats.reason = "nothing to adjust"
        return stats

    cam_ids = sorted({state.images[int(i)].camera_id for i in images})
    group_of_cam = {c: g for g, c in enumerate(cam_ids)}
    p_max = max(camera_models.NUM_PARAMS[state.cameras[c].model] for c in cam_ids)
    intrinsics = np.zeros((len(cam_ids), p_max))
    intrinsics_free = np.zeros((len(cam_ids), p_max), dtype=bool)
    for g, c in enumerate(cam_ids):
        cam = state.cameras[c]
        intrinsics[g, : len(cam.params)] = cam.params
        if c in refine_camera_ids:
            intrinsics_free[g, list(camera_models.FOCAL_INDICES[cam.model])] = True
            if options.refine_extra_params:
                intrinsics_free[g, list(camera_models.EXTRA_INDICES[cam.model])] = True

    pose_free = np.ones((len(images), 6), dtype=bool)
    for i in constant:
        pose_free[image_index[i]] = False
    if len(constant) < 2:
        _fix_gauge(state, images, image_index, pose_free, constant)
    if fix_rotations:
        pose_free[:, :3] = False

    track_index = (
        np.searchsorted(tracks, state.table.obs_track[rows]) if np.all(np.diff(tracks) > 0) else None
    )
    if track_index is None:  # tracks not sorted: map through a sort
        order = np.argsort(tracks)
        track_index = order[np.searchsorted(tracks[order], state.table.obs_track[rows])]
    obs_px = np.empty((len(rows), 2))
    for i in images.tolist():
        sel = obs_image_id == i
        obs_px[sel] = state.images[i].keypoints_px[state.table.obs_kp[rows[sel]]]

    problem = BundleAdjustmentProblem(
        camera_models=[state.cameras[c].model for c in cam_ids],
        intrinsics=intrinsics,
        image_group=np.array([group_of_cam[state.images[i].camera_id] for i in images.tolist()]),
        rotvecs=matrix_to_rotvec(state.rotations[images]),
        translations=state.translations[images],
        points=state.track_xyz[tracks],
        obs_image=np.array([image_index[i] for i in obs_image_id.tolist()], dtype=np.int64),
        obs_point=track_index,
        obs_px=obs_px,
        pose_free=pose_free,
        intrinsics_free=intrinsics_free,
    )
    ba_options = BundleAdjustmentOptions(
        backend=options.backend,
        loss=options.loss,
        loss_scale_px=options.loss_scale_px,
        max_iterations=options.max_iterations,
    )
    out = adjust_problem(problem, ba_options)
    stats.initial_cost, stats.final_cost = out.initial_cost, out.final_cost
    stats.iterations = out.iterations
    stats.success, stats.reason = out.success, out.reason
    if not np.isfinite(out.final_cost):
        logger.warning("bundle adjustment diverged (%s); keeping the previous model", out.reason)
        return stats
    _copy_back(state, problem, images, tracks, cam_ids)
    return stats


def _fix_gauge(
    state: MapperState,
    images: np.ndarray,
    image_index: dict[int, int],
    pose_free: np.ndarray,
    constant: list[int],
) -> None:
    """Hold 7 DOF when the constant images do not: the oldest free image, and a translation
    component (the largest) of the next one, which fixes the scale."""
    order = [i for i in state.registration_order if i in image_index and i not in constant]
    if not constant and order:
        pose_free[image_index[order[0]]] = False
        constant = [order[0]]
        order = order[1:]
    if order:
        second = order[0]
        # With the other pose fixed, one translation entry of this one pins the scale (COLMAP does the same).
        t = state.translations[second]
        pose_free[image_index[second], 3 + int(np.argmax(np.abs(t)))] = False


def _copy_back(
    state: MapperState,
    problem,
    images: np.ndarray,
    tracks: np.ndarray,
    cam_ids: list[int],
) -> None:
    """Write optimised poses, points and intrinsics from the BA problem back into the state."""
    rotations = rotvec_to_matrix(problem.rotvecs)
    for k, image_id in enumerate(images.tolist()):
        if not problem.pose_free[k].any():  # held poses stay bitwise identical (no rotvec round trip)
            continue
        state.set_pose(image_id, Rigid3d(rotations[k], problem.translations[k]))
    state.track_xyz[tracks] = problem.points
    changed = set()
    for g, c in enumerate(cam_ids):
        cam = state.cameras[c]
        new = problem.intrinsics[g, : len(cam.params)]
        if not np.array_equal(new, cam.params):
            cam.params = np.array(new, dtype=np.float64)
            changed.add(c)
    if changed:
        state.update_normalized(changed)
