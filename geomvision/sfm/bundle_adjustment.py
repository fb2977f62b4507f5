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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from geomvision.errors import InputError, check_at_least, check_positive
from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d, matrix_to_rotvec, rotvec_to_matrix
from geomvision.progress import ProgressCallback
from geomvision.runtime.allocator import retain_freed_memory
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
        num_threads: threads of the schur backend (None: the CPU cores this process may run on). They share
            the per-observation work (Jacobian evaluation, linearisation, the Schur complement's rows, self
            and pair blocks; numpy releases the GIL there) of problems of at least 24000 observations, cut
            into chunks of whole images independently of the thread count (every num_threads gives bitwise
            the same result); smaller problems run on the calling thread. BLAS stays single-threaded.
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
    rec: Reconstruction, options: BundleAdjustmentOptions
) -> tuple[BundleAdjustmentProblem, dict]:
    """Flatten the registered part of ``rec`` into a ``BundleAdjustmentProblem``.

    Returns:
        the problem and a dict of the ids behind each array row (``image_ids``, ``camera_ids``,
        ``point_ids``) for writing the solution back.
    """
    image_ids = np.array(rec.registered_image_ids, dtype=np.int64)
    if options.intrinsics == "per_image":
        _split_cameras_per_image(rec, image_ids)
    arrays = rec.observation_arrays()
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
        "all_observations_used": bool(keep.all()),
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
    progress: ProgressCallback | None = None,
) -> BundleAdjustmentResult:
    """Bundle-adjust the registered images and all 3D points of ``rec`` in place.

    Args:
        rec: reconstruction; views without a pose are ignored (with their observations).
        options: see ``BundleAdjustmentOptions``.
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
    problem, ids = problem_from_reconstruction(rec, options)
    result = adjust_problem(problem, options, progress=progress)
    if result.success:
        _write_back(rec, problem, ids)
        if ids["all_observations_used"]:  # Reconstruction's error update needs every observed view posed
            rec.update_point_errors()
    result.time_s = time.perf_counter() - t0
    return result
