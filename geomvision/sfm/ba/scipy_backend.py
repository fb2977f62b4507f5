"""Bundle adjustment with ``scipy.optimize.least_squares`` (trust-region reflective, LSMR) and the
analytic sparse Jacobian of ``model.evaluate`` (no finite differences)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import least_squares

from geomvision.sfm.ba.model import BundleAdjustmentProblem, evaluate


@dataclass
class _SparsePattern:
    """Fixed CSR structure of the Jacobian: which dense per-observation entries are kept, and where."""

    keep: np.ndarray  # (M * 2 * (D + 3),) bool over the flattened [J_cam | J_point] blocks
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]


def _pattern(problem: BundleAdjustmentProblem) -> _SparsePattern:
    lay = problem.layout
    m = problem.num_observations
    point_cols = np.where(lay.point_col >= 0, lay.n_cam + 3 * lay.point_col, -1)[problem.obs_point]
    point_cols = np.where(point_cols[:, None] >= 0, point_cols[:, None] + np.arange(3), -1)
    cols = np.hstack([lay.image_cols[problem.obs_image], point_cols])  # (M, D + 3)
    cols = np.repeat(cols[:, None, :], 2, axis=1)  # same columns for the x and y rows
    keep = (cols >= 0).ravel()
    counts = (cols >= 0).sum(axis=2).ravel()
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return _SparsePattern(keep, cols.ravel()[keep], indptr, (2 * m, lay.n_cam + 3 * lay.n_free_points))


def solve_scipy(problem: BundleAdjustmentProblem, options, progress=None) -> dict:
    """Minimise the (robust) reprojection cost; updates ``problem`` in place.

    Returns:
        dict with ``success``, ``reason``, ``iterations`` (Jacobian evaluations), ``final_cost``.
    """
    pattern = _pattern(problem)
    cache: dict = {}

    def _eval(x: np.ndarray):
        key = x.tobytes()
        if cache.get("key") != key:
            problem.set_x(x)
            cache["key"] = key
            cache["ev"] = evaluate(problem, options.loss, options.loss_scale_px, jacobians=True)
        return cache["ev"]

    def fun(x):
        return _eval(x).residuals.ravel()

    def jac(x):
        ev = _eval(x)
        data = np.concatenate([ev.J_cam, ev.J_point], axis=2).ravel()[pattern.keep]
        return sp.csr_matrix((data, pattern.indices, pattern.indptr), shape=pattern.shape)

    x0 = problem.get_x()
    if x0.size == 0:
        return {"success": True, "reason": "no free parameters", "iterations": 0}
    result = least_squares(
        fun,
        x0,
        jac=jac,
        method="trf",
        x_scale="jac",
        tr_solver="lsmr",
        loss="linear",
        ftol=options.function_tolerance,
        xtol=options.parameter_tolerance,
        gtol=options.gradient_tolerance,
        max_nfev=options.max_iterations,
    )
    problem.set_x(result.x)
    return {
        "success": bool(result.status > 0 or result.status == 0),
        "reason": result.message,
        "iterations": int(result.njev or result.nfev),
    }
