"""Robust losses applied per observation (per 2D residual block, as Ceres does) by residual rescaling.

For an observation with residual ``r`` (2,) in pixels and ``s = |r|^2``, the robust cost is
``rho_c(s) = c^2 rho(s / c^2)`` with ``c`` the loss scale in pixels. Both backends minimise
``0.5 * sum rho_c(s)`` as an ordinary least-squares problem in the rescaled residual
``r~ = sqrt(g(s)) r`` with ``g(s) = rho_c(s) / s`` (so ``|r~|^2 = rho_c(s)``) and its exact Jacobian
``d r~ = w dr + 2 w'(s) r (r^T dr)``, ``w = sqrt(g)`` (Triggs et al., "Bundle adjustment - a modern
synthesis", 2000, sec. 6.8 discuss such reweightings). Using one rescaled model keeps the scipy and Schur
backends minimising exactly the same function.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from geomvision.errors import InputError

LossName = Literal["linear", "huber", "soft_l1", "cauchy"]
LOSSES: tuple[str, ...] = get_args(LossName)

# Below this s / c^2 the closed forms of g and g' lose digits to cancellation; a Taylor series is exact
# to double precision there.
_SERIES_BELOW = 1e-4


def _g_and_dg(loss: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``g(z) = rho(z) / z`` and ``g'(z)`` for the unit-scale loss (z = s / c^2 >= 0)."""
    if loss == "huber":
        big = z > 1.0
        zs = np.where(big, z, 1.0)
        sq = np.sqrt(zs)
        g = np.where(big, (2.0 * sq - 1.0) / zs, 1.0)
        dg = np.where(big, (1.0 - sq) / (zs * zs), 0.0)
        return g, dg
    if loss == "soft_l1":
        # rho = 2 (sqrt(1 + z) - 1)  ->  g = 2 / (sqrt(1 + z) + 1), stable for all z
        sq = np.sqrt(1.0 + z)
        g = 2.0 / (sq + 1.0)
        dg = -1.0 / ((sq + 1.0) ** 2 * sq)
        return g, dg
    if loss == "cauchy":
        small = z < _SERIES_BELOW
        zs = np.where(small, 1.0, z)
        g = np.where(small, 1.0 - z / 2.0 + z * z / 3.0, np.log1p(zs) / zs)
        dg = np.where(small, -0.5 + 2.0 * z / 3.0, (zs / (1.0 + zs) - np.log1p(zs)) / (zs * zs))
        return g, dg
    raise InputError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def robust_cost(loss: str, scale_px: float, sq_norms: np.ndarray) -> np.ndarray:
    """Per-observation cost ``rho_c(s)`` (px^2) for squared residual norms ``s`` (M,)."""
    if loss == "linear":
        return sq_norms
    g, _ = _g_and_dg(loss, sq_norms / scale_px**2)
    return g * sq_norms


def robust_weights(
    loss: str, scale_px: float, sq_norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-observation cost and the factors of the rescaled residual and Jacobian, in one pass.

    With ``s = |r|^2`` (M,): ``rho_c(s)`` (px^2), ``w = sqrt(g(s))`` with ``r~ = w r``, and ``k = w'(s) * 2``
    (per px^2) with ``J~ = (w I + k r r^T) J`` (a symmetric 2 x 2 matrix per observation, so the rescaling
    can be applied to any factor of the Jacobian, e.g. ``d pixel / d camera-frame point``, before the chain
    rule). ``w`` and ``k`` are None for the linear loss.
    """
    if loss == "linear":
        return sq_norms, None, None
    if scale_px <= 0:
        raise InputError(f"loss_scale_px must be > 0, got {scale_px}")
    c2 = scale_px**2
    g, dg = _g_and_dg(loss, sq_norms / c2)
    rho = g * sq_norms
    w = np.sqrt(g, out=g)
    # 2 w' = g' / (sqrt(g) c^2)
    k = np.divide(dg, w, out=dg)
    k /= c2
    return rho, w, k


def rescale(
    loss: str, scale_px: float, residuals: np.ndarray, jacobians: list[np.ndarray] | None = None
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Rescale residuals (M, 2) and, optionally, Jacobian blocks (M, 2, D_k) for the robust loss.

    Returns:
        ``(r~, [J~_k])``; inputs are returned unchanged for the linear loss.
    """
    if loss == "linear":
        return residuals, jacobians
    r_t = np.ascontiguousarray(residuals.T)  # (2, M): products over the contiguous length-M axis
    _, w, k = robust_weights(loss, scale_px, r_t[0] * r_t[0] + r_t[1] * r_t[1])
    r_out = residuals * w[:, None]
    if jacobians is None:
        return r_out, None
    a00, a01, a11 = mixing_matrix(r_t, w, k)
    out = []
    for J in jacobians:
        J_t = J.transpose(1, 2, 0)  # (2, D, M)
        J_out = np.empty(J_t.shape)
        mix_rows(a00, a01, a11, J_t[0], J_t[1], J_out[0], J_out[1])
        out.append(J_out.transpose(2, 0, 1))
    return r_out, out


def mixing_matrix(r_t: np.ndarray, w: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries ``(a00, a01, a11)`` (each (M,)) of ``A = w I + k r r^T`` for residuals ``r_t`` (2, M)."""
    kr0 = k * r_t[0]
    a01 = kr0 * r_t[1]
    a00 = kr0 * r_t[0]
    a00 += w
    a11 = k * r_t[1]
    a11 *= r_t[1]
    a11 += w
    return a00, a01, a11


def mix_rows(
    a00: np.ndarray,
    a01: np.ndarray,
    a11: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    out0: np.ndarray,
    out1: np.ndarray,
) -> None:
    """``[out0; out1] = A [x0; x1]`` per observation (rows (..., M)); ``out`` may not alias ``x``."""
    np.multiply(x0, a00, out=out0)
    out0 += x1 * a01
    np.multiply(x0, a01, out=out1)
    out1 += x1 * a11
