"""Bundle adjustment of a ``Reconstruction`` (or of a plain array problem such as BAL).

Minimises ``0.5 * sum_obs rho(|project(cam_from_world X) - x_obs|^2)`` over poses (rotation vector +
translation, ``cam_from_world``), intrinsics and points (H&Z 18.1, appendix A6). Two backends share one
residual/Jacobian model (``geomvision.sfm.ba.model``):

* ``"scipy"``: ``scipy.optimize.least_squares`` (TRF, ``x_scale='jac'``) with the analytic sparse Jacobian;
* ``"schur"``: Levenberg-Marquardt on the reduced camera system (``geomvision.sfm.ba.schur``).

Gauge (``gauge="auto"``): unless at least two images are held fixed, the pose of the first free image
(smallest ``image_id``; an already fixed image takes its place) is held, and so is the one translation
coordinate of the second image in which the baseline ``R_2 (C_1 - C_2)`` is largest. With the first pose
fixed the only remaining freedom is a scaling about the first centre, which moves exactly that coordinate
(``t_2' = s (t_2 + R_2 C_1) - R_2 C_1``), so the 7-dof similarity gauge is removed without biasing the
solution (COLMAP makes the same choice). ``gauge="none"`` leaves it to the damping.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np

from geomvision.errors import InputError, check_at_least, check_positive
from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d, matrix_to_rotvec, rotvec_to_matrix
from geomvision.progress import ProgressCallback
from geomvision.runtime.allocator import retain_freed_memory
from geomvision.runtime.worker import thread_budget
from geomvision.scene.camera import Camera
from geomvision.scene.reconstruction import Reconstruction
from geomvision.sfm.ba import losses
from geomvision.sfm.ba.model import BundleAdjustmentProblem, evaluate, gauge_translation_axis
from geomvision.sfm.ba.schur import solve_schur
from geomvision.sfm.ba.scipy_backend import solve_scipy

logger = logging.getLogger(__name__)

__all__ = [
    "BundleAdjustmentOptions",
    "BundleAdjustmentProblem",
    "BundleAdjustmentResult",
    "adjust_problem",
    "bundle_adjust",
    "covering_points",
    "grid_cell_of",
    "points_covering_images",
    "refine_points",
]


BABackend = Literal["scipy", "schur"]
SchurSolver = Literal["auto", "dense", "sparse", "pcg"]
IntrinsicsMode = Literal["shared", "per_image", "fixed"]
GaugeMode = Literal["auto", "none"]


@dataclass(frozen=True, kw_only=True)
class BundleAdjustmentOptions:
    """Options of ``bundle_adjust`` / ``adjust_problem``.

    Attributes:
        backend: "scipy" (least_squares TRF) or "schur" (Levenberg-Marquardt, reduced camera system).
        loss: "linear", "huber", "soft_l1" or "cauchy", applied per observation (2D residual).
        loss_scale_px: robust loss scale in pixels (residual norm where it starts to down-weight).
        max_iterations: iteration cap (LM iterations for schur, function evaluations for scipy).
        function_tolerance: stop when the relative cost decrease of a step is below this.
        gradient_tolerance: stop when max |gradient| is below this.
        parameter_tolerance: stop when |dx| <= tol * (|x| + tol).
        refine_focal, refine_principal_point, refine_extra_params: which intrinsics are optimised.
        intrinsics: "shared" (one set per camera_id), "per_image" (each image gets its own camera;
            shared cameras are split in the reconstruction) or "fixed".
        fixed_image_ids: images whose pose is held.
        fixed_point_ids: 3D points held.
        gauge: "auto" (see module docstring) or "none".
        schur_solver: how the schur backend solves the reduced camera system: "dense" (LAPACK Cholesky),
            "sparse" (SuperLU in a fill-reducing order, no pivoting), "pcg" (conjugate gradients, block-Jacobi
            preconditioner) or "auto": dense up to ``dense_schur_max_params`` camera parameters when the
            system is small (<= 256) or at least a quarter of its image-pair blocks are non-zero, sparse
            up to ``sparse_schur_max_params`` when it is sparser, PCG otherwise.
        dense_schur_max_params: largest reduced system (camera parameters) that "auto" solves densely.
        sparse_schur_max_params: largest reduced system that "auto" factors sparsely.
        cg_tolerance: relative residual at which PCG stops (inexact LM step).
        cg_max_iterations: PCG iteration cap.
        lsmr_max_iterations: LSMR iteration cap per step of the scipy backend (None: scipy's default).
        lsmr_tolerance: LSMR ``atol``/``btol`` per step of the scipy backend (None: ``function_tolerance``
            clipped to [1e-6, 1e-2]); a looser tolerance gives inexact Gauss-Newton steps that cost fewer
            LSMR iterations.
        num_threads: threads of the schur backend (None: ``runtime.worker.thread_budget()``, the CPU cores
            this process may run on, 1 in a worker process). They share
            the per-observation work (Jacobian evaluation, linearisation, the Schur complement's rows, self
            and pair blocks; numpy releases the GIL there) of problems of at least 24000 observations, cut
            into chunks of whole images independently of the thread count (every num_threads gives bitwise
            the same result); smaller problems run on the calling thread. BLAS stays single-threaded.
        point_steps: the schur backend follows each camera step by a Gauss-Newton step of every point with
            the cameras held, kept when it lowers the cost (embedded point iterations, Jeong et al. 2012;
            one more evaluation per iteration, fewer iterations: see ``ba.schur._point_steps``).
        scipy_preconditioner: solve the scipy backend in block-Jacobi preconditioned variables (per-point
            3x3 and per-image pose blocks), which cuts LSMR iterations by an order of magnitude.
    """

    backend: BABackend = "schur"
    loss: losses.LossName = "linear"
    loss_scale_px: float = 1.0
    max_iterations: int = 100
    function_tolerance: float = 1e-6
    gradient_tolerance: float = 1e-10
    parameter_tolerance: float = 1e-8
    refine_focal: bool = True
    refine_principal_point: bool = False
    refine_extra_params: bool = True
    intrinsics: IntrinsicsMode = "shared"
    fixed_image_ids: tuple[int, ...] = ()
    fixed_point_ids: tuple[int, ...] = ()
    gauge: GaugeMode = "auto"
    schur_solver: SchurSolver = "auto"
    dense_schur_max_params: int = 1500
    sparse_schur_max_params: int = 100_000
    cg_tolerance: float = 1e-2
    cg_max_iterations: int = 300
    lsmr_max_iterations: int | None = 50
    lsmr_tolerance: float | None = None
    scipy_preconditioner: bool = True
    point_steps: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("backend", self.backend, get_args(BABackend)),
            ("loss", self.loss, losses.LOSSES),
            ("intrinsics", self.intrinsics, get_args(IntrinsicsMode)),
            ("gauge", self.gauge, get_args(GaugeMode)),
            ("schur_solver", self.schur_solver, get_args(SchurSolver)),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise InputError(f"BundleAdjustmentOptions.{name} must be one of {allowed}, got {value!r}")
        check_positive("loss_scale_px", self.loss_scale_px)
        if self.num_threads is not None:
            check_at_least("num_threads", self.num_threads, 1)
        check_at_least("max_iterations", self.max_iterations, 1)


@dataclass
class BundleAdjustmentResult:
    """Outcome of one bundle adjustment. Costs are ``0.5 * sum rho(|r|^2)`` in px^2."""

    success: bool
    reason: str
    initial_cost: float
    final_cost: float
    iterations: int
    time_s: float
    mean_reprojection_error_px: float
    num_residuals: int
    initial_mean_reprojection_error_px: float = float("nan")


def adjust_problem(
    problem: BundleAdjustmentProblem,
    options: BundleAdjustmentOptions,
    *,
    progress: ProgressCallback | None = None,
) -> BundleAdjustmentResult:
    """Bundle-adjust an array problem in place (the BAL path; no Reconstruction needed).

    The problem's ``pose_free`` / ``intrinsics_free`` / ``point_free`` masks decide what moves; the
    ``refine_*``, ``fixed_*`` and ``gauge`` options apply to ``bundle_adjust`` only.
    """
    t0 = time.perf_counter()
    if problem.num_observations == 0:
        return BundleAdjustmentResult(False, "no observations", 0.0, 0.0, 0, 0.0, float("nan"), 0)
    retain_freed_memory()  # large per-observation temporaries: reuse heap pages (see runtime.allocator)
    x_start = problem.get_x()
    solver = solve_scipy if options.backend == "scipy" else solve_schur
    start = None
    if options.backend == "scipy":
        start = _CostSummary.evaluate(problem, options)
    with _single_threaded_blas():
        out = solver(problem, options, progress)
    if "final_cost" in out:  # the schur solver reports the costs it evaluated anyway
        start = _CostSummary(out["initial_cost"], out["initial_mean_error_px"])
        end = _CostSummary(out["final_cost"], out["final_mean_error_px"])
    else:
        start = start or _CostSummary.evaluate(problem, options)  # nothing to solve: unchanged
        end = _CostSummary.evaluate(problem, options)
    if not end.cost <= start.cost:  # never hand back a worse (or non-finite) model
        problem.set_x(x_start)
        end = start
        out = {**out, "reason": f"no decrease ({out['reason']}); parameters restored"}
    elapsed = time.perf_counter() - t0
    logger.info(
        "BA (%s): cost %.6g -> %.6g in %d iterations, %.2f s (%s)",
        options.backend,
        start.cost,
        end.cost,
        out["iterations"],
        elapsed,
        out["reason"],
    )
    return BundleAdjustmentResult(
        success=bool(out["success"]) and np.isfinite(end.cost),
        reason=str(out["reason"]),
        initial_cost=start.cost,
        final_cost=end.cost,
        iterations=int(out["iterations"]),
        time_s=elapsed,
        mean_reprojection_error_px=end.mean_error_px,
        num_residuals=2 * problem.num_observations,
        initial_mean_reprojection_error_px=start.mean_error_px,
    )


@dataclass(frozen=True)
class _CostSummary:
    """Cost (``0.5 * sum rho``, px^2) and mean reprojection error (px) of one parameter state."""

    cost: float
    mean_error_px: float

    @classmethod
    def evaluate(cls, problem: BundleAdjustmentProblem, options: BundleAdjustmentOptions) -> _CostSummary:
        ev = evaluate(problem, options.loss, options.loss_scale_px, jacobians=False)
        return cls(ev.cost, float(ev.errors_px.mean()))


def _single_threaded_blas():
    """Limit BLAS to one thread while solving, if threadpoolctl is installed.

    BA calls BLAS on many small vectors/matrices (norms, dots, a few-hundred-column Cholesky); threaded
    OpenBLAS gains nothing there and, on a loaded machine, its spinning threads made single ``dot`` calls
    take ~25 ms instead of ~20 us (measured on the ladybug problem), a 50x slowdown of the LSMR solver.
    """
    controller = _blas_controller()
    if controller is None:  # optional: without threadpoolctl BLAS keeps its default threading
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, found once per process (None without it).

    ``threadpool_limits`` rescans the loaded libraries on every call (~1 ms, ~900 ``lstat`` calls; more
    on a loaded machine), which the mapper's many small bundle adjustments paid each time. numpy's and
    scipy's BLAS are loaded by the imports of this module, before the first call.
    """
    try:
        from threadpoolctl import ThreadpoolController  # optional dependency
    except ImportError:
        return None
    return ThreadpoolController()


# --- Reconstruction <-> arrays ----------------------------------------------------------------------------
def _intrinsics_mask(model: str, width: int, options: BundleAdjustmentOptions) -> np.ndarray:
    mask = np.zeros(width, bool)
    if options.intrinsics == "fixed":
        return mask
    for flag, idx in (
        (options.refine_focal, camera_models.FOCAL_INDICES[model]),
        (options.refine_principal_point, camera_models.PRINCIPAL_POINT_INDICES[model]),
        (options.refine_extra_params, camera_models.EXTRA_INDICES[model]),
    ):
        if flag:
            mask[list(idx)] = True
    return mask


def _split_cameras_per_image(rec: Reconstruction, image_ids: Iterable[int]) -> None:
    """Give every image its own camera (copies of shared ones get fresh ids) for per-image intrinsics."""
    seen: set[int] = set()
    next_id = max(rec.cameras, default=0) + 1
    for image_id in image_ids:
        view = rec.views[image_id]
        if view.camera_id in seen:
            cam = rec.cameras[view.camera_id]
            rec.add_camera(Camera(next_id, cam.model, cam.width, cam.height, cam.params.copy()))
            view.camera_id = next_id
            next_id += 1
        seen.add(view.camera_id)


def _gauge_mask(problem: BundleAdjustmentProblem, image_ids: np.ndarray, options) -> None:
    """Fix the similarity gauge in ``problem.pose_free`` (see module docstring)."""
    fixed = ~problem.pose_free.any(axis=1)
    if options.gauge == "none" or fixed.sum() >= 2 or len(image_ids) < 2:
        return
    first = int(np.flatnonzero(fixed)[0]) if fixed.any() else 0
    problem.pose_free[first] = False
    others = [i for i in range(len(image_ids)) if i != first and problem.pose_free[i].any()]
    if not others:
        return
    second = others[0]
    rotations = rotvec_to_matrix(problem.rotvecs[[first, second]])
    axis = gauge_translation_axis(
        rotations[0], problem.translations[first], rotations[1], problem.translations[second]
    )
    problem.pose_free[second, 3 + axis] = False


def problem_from_reconstruction(
    rec: Reconstruction, options: BundleAdjustmentOptions, point_ids: np.ndarray | None = None
) -> tuple[BundleAdjustmentProblem, dict]:
    """Flatten the registered part of ``rec`` into a ``BundleAdjustmentProblem``.

    Args:
        rec: the reconstruction.
        options: which poses, points and intrinsics are free.
        point_ids: (P,) sorted ids of the points to include (None: every point).

    Returns:
        the problem and a dict of the ids behind each array row (``image_ids``, ``camera_ids``,
        ``point_ids``) for writing the solution back.
    """
    image_ids = np.array(rec.registered_image_ids, dtype=np.int64)
    if options.intrinsics == "per_image":
        _split_cameras_per_image(rec, image_ids)
    arrays = rec.observation_arrays(point_ids)
    keep = np.isin(arrays["obs_image_id"], image_ids)
    if not keep.all():
        logger.warning("BA: ignoring %d observations in unregistered images", int((~keep).sum()))
    obs_image = np.searchsorted(image_ids, arrays["obs_image_id"][keep])
    camera_ids = np.array(sorted({rec.views[int(i)].camera_id for i in image_ids}), dtype=np.int64)
    cams = [rec.cameras[int(c)] for c in camera_ids]
    p_max = max((len(c.params) for c in cams), default=3)
    intrinsics = np.zeros((len(cams), p_max))
    intrinsics_free = np.zeros((len(cams), p_max), bool)
    for g, cam in enumerate(cams):
        intrinsics[g, : len(cam.params)] = cam.params
        intrinsics_free[g] = _intrinsics_mask(cam.model, p_max, options)
        intrinsics_free[g, len(cam.params) :] = False
    poses = [rec.views[int(i)].cam_from_world for i in image_ids]
    rotations = np.array([p.rotation for p in poses]).reshape(-1, 3, 3)
    pose_free = np.ones((len(image_ids), 6), bool)
    pose_free[np.isin(image_ids, np.asarray(options.fixed_image_ids, dtype=np.int64))] = False
    point_free = ~np.isin(arrays["point_ids"], np.asarray(options.fixed_point_ids, dtype=np.int64))
    problem = BundleAdjustmentProblem(
        camera_models=[c.model for c in cams],
        intrinsics=intrinsics,
        image_group=np.searchsorted(camera_ids, [rec.views[int(i)].camera_id for i in image_ids]),
        rotvecs=matrix_to_rotvec(rotations) if len(poses) else np.zeros((0, 3)),
        translations=np.array([p.translation for p in poses]).reshape(-1, 3),
        points=arrays["xyz"],
        obs_image=obs_image,
        obs_point=arrays["obs_point"][keep],
        obs_px=arrays["obs_px"][keep],
        pose_free=pose_free,
        intrinsics_free=intrinsics_free,
        point_free=point_free,
    )
    _gauge_mask(problem, image_ids, options)
    ids = {
        "image_ids": image_ids,
        "camera_ids": camera_ids,
        "point_ids": arrays["point_ids"],
        "all_observations_used": bool(keep.all()) and point_ids is None,
    }
    return problem, ids


def _write_back(rec: Reconstruction, problem: BundleAdjustmentProblem, ids: dict) -> None:
    """Copy optimised values into ``rec``; held poses/points/cameras are not touched (bitwise equal)."""
    for row, image_id in enumerate(ids["image_ids"]):
        if problem.pose_free[row].any():
            rec.views[int(image_id)].cam_from_world = Rigid3d.from_rotvec(
                problem.rotvecs[row], problem.translations[row]
            )
    for g, camera_id in enumerate(ids["camera_ids"]):
        if problem.intrinsics_free[g].any():
            cam = rec.cameras[int(camera_id)]
            cam.params = problem.intrinsics[g, : len(cam.params)].copy()
    for row in np.flatnonzero(problem.point_free):
        rec.points3D[int(ids["point_ids"][row])].xyz = problem.points[row].copy()


def bundle_adjust(
    rec: Reconstruction,
    options: BundleAdjustmentOptions | None = None,
    *,
    point_ids: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> BundleAdjustmentResult:
    """Bundle-adjust the registered images and all 3D points (or ``point_ids``) of ``rec`` in place.

    Args:
        rec: reconstruction; views without a pose are ignored (with their observations).
        options: see ``BundleAdjustmentOptions``.
        point_ids: (P,) sorted ids of the only points (and observations) in the problem; the others are
            neither used nor moved, and keep their ``error`` (None: every point).
        progress: ``progress(iteration, max_iterations, message)`` callback.

    Returns:
        ``BundleAdjustmentResult``; ``success=False`` (model untouched) when there is nothing to adjust
        or the solver produced non-finite values.
    """
    options = options or BundleAdjustmentOptions()
    t0 = time.perf_counter()
    if rec.num_registered == 0 or not rec.points3D:
        return BundleAdjustmentResult(
            False,
            f"{rec.num_registered} registered images, {len(rec.points3D)} points",
            0.0,
            0.0,
            0,
            0.0,
            float("nan"),
            0,
        )
    problem, ids = problem_from_reconstruction(rec, options, point_ids)
    result = adjust_problem(problem, options, progress=progress)
    if result.success:
        _write_back(rec, problem, ids)
        if ids["all_observations_used"]:  # Reconstruction's error update needs every observed view posed
            rec.update_point_errors()
    result.time_s = time.perf_counter() - t0
    return result


def points_covering_images(rec: Reconstruction, max_observations: int, grid_cells: int = 4) -> np.ndarray:
    """A subset of the points, of at most ``max_observations`` observations, that still constrains every image.

    The choice is :func:`covering_points`' over the registered images' observations (a point's error is
    its ``Point3D.error``).

    Args:
        rec: reconstruction (unregistered images' observations are ignored).
        max_observations: observations of the chosen points, at most.
        grid_cells: cells per side of the spreading grid.

    Returns:
        (P,) sorted ids of the points chosen (every point when they all fit).
    """
    check_at_least("max_observations", max_observations, 1)
    arrays = rec.observation_arrays()
    registered = np.array(rec.registered_image_ids, dtype=np.int64)
    keep = np.isin(arrays["obs_image_id"], registered)
    obs_image, obs_point = arrays["obs_image_id"][keep], arrays["obs_point"][keep]
    if len(obs_point) <= max_observations:
        return arrays["point_ids"][np.bincount(obs_point, minlength=len(arrays["point_ids"])) > 0]
    point_error = np.array([rec.points3D[int(p)].error for p in arrays["point_ids"].tolist()])
    cameras = [rec.cameras[rec.views[int(i)].camera_id] for i in registered]
    image_size = np.array([[c.width, c.height] for c in cameras], dtype=float).reshape(-1, 2)
    sizes = image_size[np.searchsorted(registered, obs_image)]  # registered ids are sorted
    cell = grid_cell_of(arrays["obs_px"][keep], sizes, grid_cells)
    chosen = covering_points(obs_image, obs_point, cell, point_error, max_observations)
    return np.sort(arrays["point_ids"][chosen])


def grid_cell_of(obs_px: np.ndarray, image_size_px: np.ndarray, grid_cells: int) -> np.ndarray:
    """Cell index (row-major) of each observation in a ``grid_cells`` x ``grid_cells`` grid over its frame.

    Args:
        obs_px: (M, 2) observed pixels (x, y).
        image_size_px: (M, 2) width and height of each observation's image, or (2,) for all.
        grid_cells: cells per side.

    Returns:
        (M,) int64 cell indices in [0, grid_cells**2).
    """
    check_at_least("grid_cells", grid_cells, 1)
    cell_xy = np.clip((obs_px / image_size_px * grid_cells).astype(np.int64), 0, grid_cells - 1)
    return cell_xy[:, 1] * grid_cells + cell_xy[:, 0]


def covering_points(
    obs_image: np.ndarray,
    obs_point: np.ndarray,
    obs_cell: np.ndarray,
    point_error: np.ndarray,
    max_observations: int,
) -> np.ndarray:
    """Points whose observations fit ``max_observations`` and still constrain every image.

    Every image ranks the points it observes: its grid cells take turns (so the first points are spread
    over the frame), and within a cell longer tracks come first (they tie more images together), then
    smaller errors. A point's priority is its best rank in any image, and the points are taken by
    priority while their observations fit: the first k points of every image, for the largest k that
    fits (with part of the next rank).

    Args:
        obs_image: (M,) image of each observation.
        obs_point: (M,) point of each observation, an index into ``point_error``.
        obs_cell: (M,) grid cell of each observation in its image (:func:`grid_cell_of`).
        point_error: (P,) each point's reprojection error, px (ranks the ties of track length).
        max_observations: observations of the chosen points, at most.

    Returns:
        (K,) indices into ``point_error`` of the chosen points, best priority first (every observed point
        when all fit).
    """
    check_at_least("max_observations", max_observations, 1)
    track_length = np.bincount(obs_point, minlength=len(point_error))
    candidates = np.flatnonzero(track_length > 0)
    if len(obs_point) <= max_observations:
        return candidates
    num_cells = int(obs_cell.max()) + 1
    # rank of each observation within its (image, cell): longest track first, then smallest error (ranked:
    # equal errors tie, as in a lexsort)
    _, error_rank = np.unique(point_error, return_inverse=True)
    longest_first = track_length.max() - track_length
    order = _int_lexsort((error_rank[obs_point], longest_first[obs_point], obs_cell, obs_image))
    rank_in_cell = _rank_in_runs(obs_image[order] * num_cells + obs_cell[order])
    # rank within its image: the cells in turn (every cell's first point, then every cell's second, ...)
    by_image = order[_int_lexsort((rank_in_cell, obs_image[order]))]
    rank = _rank_in_runs(obs_image[by_image])
    priority = np.full(len(track_length), np.iinfo(np.int64).max)
    np.minimum.at(priority, obs_point[by_image], rank)
    candidates = candidates[np.lexsort((-track_length[candidates], priority[candidates]))]
    fits = np.cumsum(track_length[candidates]) <= max_observations
    return candidates[fits]


def _int_lexsort(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """``np.lexsort(keys)`` (the last key primary) of non-negative integer keys (M,) each: one stable sort of
    their mixed-radix combination when it fits in int64 (1.2M observations, four keys: 0.28 -> 0.07 s)."""
    radices = [int(k.max()) + 1 if len(k) else 1 for k in keys]
    if np.prod([float(r) for r in radices]) >= 2.0**62:
        return np.lexsort(keys)
    combined = np.zeros(len(keys[0]), dtype=np.int64)
    for key, radix in zip(reversed(keys), reversed(radices), strict=True):
        combined *= radix
        combined += key
    return np.argsort(combined, kind="stable")


def _rank_in_runs(keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal consecutive ``keys`` (M,) -> (M,)."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))


def refine_points(
    rec: Reconstruction,
    point_ids: np.ndarray,
    options: BundleAdjustmentOptions | None = None,
    *,
    poses_before: Mapping[int, Rigid3d] | None = None,
    max_iterations: int = 10,
    max_observations: int = 400_000,
) -> int:
    """Move the points ``point_ids`` to their best positions with every pose and intrinsic held (in place).

    With the cameras held the points are independent 3-parameter least-squares problems: each gets its own
    Levenberg-Marquardt step (3x3 normal equations, its own damping, its step kept only if its own cost
    drops), all points at once in numpy. The work is cut into problems of at most ``max_observations``
    observations, which bounds memory whatever the number of points.

    Args:
        rec: reconstruction.
        point_ids: (P,) sorted ids of the points to refine.
        options: its loss and loss scale are used (and ``function_tolerance`` as the stopping rule on the
            total cost, and ``num_threads`` as the threads the problems run on).
        poses_before: image_id -> ``cam_from_world`` the points were last consistent with, when the
            cameras have moved since (a BA on other points): each point is first carried along with the
            cameras observing it (its position in each one's frame kept, averaged over them), so that the
            refinement starts near its optimum rather than pixels off.
        max_iterations: steps per point at most.
        max_observations: observations per problem.

    Returns:
        The number of problems solved.
    """
    check_at_least("max_observations", max_observations, 1)
    check_at_least("max_iterations", max_iterations, 0)
    options = options or BundleAdjustmentOptions()
    held = replace(options, intrinsics="fixed", fixed_point_ids=(), gauge="none")
    point_ids = np.asarray(point_ids, dtype=np.int64)
    lengths = np.fromiter((len(rec.points3D[int(p)].track) for p in point_ids), np.int64, len(point_ids))
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(max_observations, lengths.sum(), max_observations))
    chunks = [chunk for chunk in np.split(point_ids, np.unique(bounds)) if len(chunk)]

    def refine(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point ids, refined (P, 3) points) of one chunk; reads ``rec`` only."""
        problem, ids = problem_from_reconstruction(rec, held, chunk)
        if not problem.num_observations:
            return ids["point_ids"][:0], np.zeros((0, 3))
        if poses_before is not None:
            _carry_points(problem, [poses_before[int(i)] for i in ids["image_ids"]])
        _refine_held_points(problem, options, max_iterations)
        return ids["point_ids"], problem.points

    # The chunks are independent problems of a fixed size (the same results whatever the thread count):
    # numpy releases the GIL in their array work, so they run on the BA's threads (merge of the 1000-image
    # street, 457k points: 6.0 -> 3.7 s on 2 threads).
    threads = min(options.num_threads or thread_budget(), len(chunks))
    with ThreadPoolExecutor(max_workers=threads) if threads > 1 else contextlib.nullcontext() as pool:
        for ids, xyz in (pool.map if pool is not None else map)(refine, chunks):
            for row, point_id in enumerate(ids.tolist()):
                rec.points3D[point_id].xyz = xyz[row].copy()
    return len(chunks)


def _carry_points(problem: BundleAdjustmentProblem, poses_before: list[Rigid3d]) -> None:
    """Move ``problem.points`` (N, 3) from the frame of ``poses_before`` (one per problem image) to the
    problem's poses: the mean over each point's observations of ``new^-1(old(X))`` (in place)."""
    rotations_before = np.array([p.rotation for p in poses_before])
    translations_before = np.array([p.translation for p in poses_before])
    img, point = problem.obs_image, problem.obs_point
    in_camera = (
        np.einsum("mij,mj->mi", rotations_before[img], problem.points[point]) + translations_before[img]
    )
    rotations = rotvec_to_matrix(problem.rotvecs)
    moved = np.einsum("mji,mj->mi", rotations[img], in_camera - problem.translations[img])
    counts = np.maximum(np.bincount(point, minlength=len(problem.points)), 1)
    problem.points = np.stack(
        [np.bincount(point, moved[:, k], minlength=len(problem.points)) / counts for k in range(3)], axis=1
    )


def _refine_held_points(problem: BundleAdjustmentProblem, options: BundleAdjustmentOptions, iterations: int):
    """Per-point Levenberg-Marquardt on ``problem.points`` (N, 3), cameras held (in place)."""
    n, point = len(problem.points), problem.obs_point

    def linearised(ev):  # per point: cost (N,), J^T J (N, 3, 3), J^T r (N, 3)
        cost = np.bincount(point, (ev.residuals**2).sum(axis=1), minlength=n)
        jtj = np.einsum("mri,mrj->mij", ev.J_point, ev.J_point).reshape(-1, 9)
        jtr = np.einsum("mri,mr->mi", ev.J_point, ev.residuals)
        H = np.stack([np.bincount(point, jtj[:, k], minlength=n) for k in range(9)], axis=1)
        g = np.stack([np.bincount(point, jtr[:, k], minlength=n) for k in range(3)], axis=1)
        return cost, H.reshape(n, 3, 3), g

    ev = evaluate(problem, options.loss, options.loss_scale_px, zero_fixed_columns=False)
    cost, H, g = linearised(ev)
    # relative to the diagonal, per point: a point whose step raised its cost retries with 10x the damping
    # (a gentler schedule left such points, a few percent, far from their optimum after 10 steps)
    damping = np.full(n, 1e-4)
    start = problem.points.copy()
    for _ in range(iterations):
        A = H.copy()
        diag = np.einsum("nii->ni", A)  # a view: damping the diagonal in place
        diag += damping[:, None] * np.maximum(diag, 1e-12)
        step = np.linalg.solve(A, -g[:, :, None])[:, :, 0]
        step[~np.isfinite(step).all(axis=1)] = 0.0
        problem.points = start + step
        trial = evaluate(problem, options.loss, options.loss_scale_px, zero_fixed_columns=False)
        t_cost, t_H, t_g = linearised(trial)
        better = t_cost < cost
        per_obs = better[point]
        ev.residuals[per_obs] = trial.residuals[per_obs]
        ev.J_point[per_obs] = trial.J_point[per_obs]
        start[better] = problem.points[better]
        total_before = float(cost.sum())
        cost[better], H[better], g[better] = t_cost[better], t_H[better], t_g[better]
        damping = np.clip(np.where(better, damping / 10.0, damping * 10.0), 1e-8, 1e8)
        if total_before - float(cost.sum()) <= options.function_tolerance * total_before and better.all():
            break
    problem.points = start
