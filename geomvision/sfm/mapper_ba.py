"""Bundle adjustment of (part of) a mapper model: the mapper's arrays -> the BA problem -> back.

The problem handed to :mod:`geomvision.sfm.bundle_adjustment` is built directly from the
:class:`~geomvision.sfm.mapper_state.MapperState` arrays (no Point3D objects), so local BA after every
registration costs array slicing only:

- *free* images: pose optimised; *constant* images: other registered images that observe the chosen
  points, held fixed (they anchor the local problem);
- points: every point observed by a free image (all observations of those points enter the problem);
- gauge: when fewer than two constant images anchor the problem, the first free image's pose (or the one
  constant image) and one translation coordinate of the next are held fixed (7 DOF: rotation,
  translation, scale), by the same rule as :mod:`geomvision.sfm.bundle_adjustment`
  (:func:`~geomvision.sfm.ba.model.gauge_translation_axis`);
- intrinsics: shared per camera; only the cameras listed in ``refine_camera_ids`` are refined, and only
  the parameters the options free (``refine_focal`` / ``refine_principal_point`` /
  ``refine_extra_params``; none with ``intrinsics="fixed"``).

The options are the plain :class:`~geomvision.sfm.bundle_adjustment.BundleAdjustmentOptions`: the
solver settings go to the solver as they are, ``fixed_image_ids`` are held on top of the mapper's own,
``gauge="none"`` skips the gauge fixing; ``fixed_point_ids`` and ``intrinsics="per_image"`` have no
meaning here (the mapper's points have no ids yet, and it never splits cameras) and are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d, matrix_to_rotvec, rotvec_to_matrix
from geomvision.sfm.ba.model import BundleAdjustmentProblem, gauge_translation_axis
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, adjust_problem
from geomvision.sfm.mapper_state import MapperState

logger = logging.getLogger(__name__)


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
    options: BundleAdjustmentOptions,
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
        options: BA settings (solver, loss, which intrinsics of refined cameras move).
        refine_camera_ids: cameras whose intrinsics may be optimised (as ``options`` says).
        fixed_image_ids: images held constant even if listed as free (e.g. the gauge image), on top of
            ``options.fixed_image_ids``.
        point_tracks: points to optimise; default every point observed by a free image.
        fix_rotations: hold every rotation and optimise only translations (and points): the first
            bundle adjustment of the global mapper, whose rotations come from rotation averaging.

    Returns:
        AdjustStats with the problem size and costs.
    """
    check_mapper_ba_options(options)
    fixed_image_ids = set(fixed_image_ids) | set(options.fixed_image_ids)
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
        if c in refine_camera_ids and options.intrinsics != "fixed":
            for flag, indices in (
                (options.refine_focal, camera_models.FOCAL_INDICES[cam.model]),
                (options.refine_principal_point, camera_models.PRINCIPAL_POINT_INDICES[cam.model]),
                (options.refine_extra_params, camera_models.EXTRA_INDICES[cam.model]),
            ):
                if flag:
                    intrinsics_free[g, list(indices)] = True

    pose_free = np.ones((len(images), 6), dtype=bool)
    for i in constant:
        pose_free[image_index[i]] = False
    if len(constant) < 2 and options.gauge == "auto":
        _fix_gauge(state, images, image_index, pose_free, constant)
    if fix_rotations:
        pose_free[:, :3] = False

    track_index = (
        np.searchsorted(tracks, state.table.obs_track[rows]) if np.all(np.diff(tracks) > 0) else None
    )
    if track_index is None:  # tracks not sorted: map through a sort
        order = np.argsort(tracks)
        track_index = order[np.searchsorted(tracks[order], state.table.obs_track[rows])]
    problem = BundleAdjustmentProblem(
        camera_models=[state.cameras[c].model for c in cam_ids],
        intrinsics=intrinsics,
        image_group=np.array([group_of_cam[state.images[i].camera_id] for i in images.tolist()]),
        rotvecs=matrix_to_rotvec(state.rotations[images]),
        translations=state.translations[images],
        points=state.track_xyz[tracks],
        obs_image=np.searchsorted(images, obs_image_id),  # images is sorted and holds every obs_image_id
        obs_point=track_index,
        obs_px=state.obs_px[rows],
        pose_free=pose_free,
        intrinsics_free=intrinsics_free,
    )
    out = adjust_problem(problem, options)
    stats.initial_cost, stats.final_cost = out.initial_cost, out.final_cost
    stats.iterations = out.iterations
    stats.success, stats.reason = out.success, out.reason
    if not np.isfinite(out.final_cost):
        logger.warning("bundle adjustment diverged (%s); keeping the previous model", out.reason)
        return stats
    _copy_back(state, problem, images, tracks, cam_ids)
    return stats


def check_mapper_ba_options(options: BundleAdjustmentOptions) -> None:
    """Refuse the bundle-adjustment settings that have no meaning inside the mapper."""
    if options.fixed_point_ids:
        raise InputError(
            f"the mapper's bundle adjustment cannot hold point ids, got {options.fixed_point_ids}"
        )
    if options.intrinsics == "per_image":
        raise InputError(
            "the mapper's bundle adjustment shares intrinsics per camera; got intrinsics='per_image'"
        )


def _fix_gauge(
    state: MapperState,
    images: np.ndarray,
    image_index: dict[int, int],
    pose_free: np.ndarray,
    constant: list[int],
) -> None:
    """Hold 7 DOF when the constant images do not: the oldest free image (unless one image is already
    constant), and one translation coordinate of the next, chosen by the BA gauge rule
    (:func:`~geomvision.sfm.ba.model.gauge_translation_axis`), which fixes the scale."""
    order = [i for i in state.registration_order if i in image_index and i not in constant]
    if constant:
        first = constant[0]
    elif order:
        first = order.pop(0)
        pose_free[image_index[first]] = False
    else:
        return
    if order:
        second = order[0]
        axis = gauge_translation_axis(
            state.rotations[first],
            state.translations[first],
            state.rotations[second],
            state.translations[second],
        )
        pose_free[image_index[second], 3 + axis] = False


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
