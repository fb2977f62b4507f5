"""Focal lengths from fundamental matrices: Bougnoux's formula and the essential singular-value gap.

Both assume square pixels, zero skew and a known principal point (the image centre by default), so
that ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` has one unknown per camera.

* **Bougnoux's formula** (Bougnoux 1998; H&Z 2nd ed., section 19.7 / result 19.x) gives both focal
  lengths of a pair in closed form from ``F`` and the two principal points. It is exact for noise-free
  ``F`` but degenerate when the optical axes are coplanar (for example two cameras aimed at one point),
  where the numerator and denominator both vanish; it may also return a negative ``f^2`` (reported
  as NaN).
* **The essential singular-value gap** (Hartley 1992; used for view-graph calibration by GLOMAP):
  ``E = K2^T F K1`` is an essential matrix exactly when its two non-zero singular values are equal,
  so ``(s1 - s2) / (s1 + s2)`` in ``[0, 1]`` measures how far a guess of ``(f1, f2)`` is from
  explaining ``F``. Minimised over many pairs at once it stays usable where single pairs are
  ill-conditioned.

Conventions (as in :mod:`geomvision.geometry.epipolar`): ``x2_h^T F x1_h = 0`` for pixels ``x1`` in
image 1 and ``x2`` in image 2; everything is vectorised over a leading batch axis.
"""

from __future__ import annotations

import numpy as np

from geomvision.errors import InputError

__all__ = ["bougnoux_focal_lengths", "essential_singular_gap"]

_I_TILDE = np.diag([1.0, 1.0, 0.0])


def _as_fundamentals(F: np.ndarray) -> np.ndarray:
    F = np.asarray(F, dtype=np.float64)
    if F.shape[-2:] != (3, 3):
        raise InputError(f"fundamental matrices must have shape (..., 3, 3), got {F.shape}")
    return F


def _skew_batch(v: np.ndarray) -> np.ndarray:
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def bougnoux_focal_lengths(
    F: np.ndarray, principal_point_1_px: np.ndarray, principal_point_2_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both focal lengths of each pair from its fundamental matrix (Bougnoux's formula).

    Args:
        F: (3, 3) or (P, 3, 3) fundamental matrices, ``x2^T F x1 = 0``.
        principal_point_1_px, principal_point_2_px: (2,) or (P, 2) principal points of camera 1 and 2.

    Returns:
        (f1_px, f2_px): (P,) focal lengths of camera 1 and camera 2 (scalars for one F); NaN where the
        formula gives a non-positive ``f^2`` or is degenerate (coplanar optical axes).
    """
    F = _as_fundamentals(F)
    single = F.ndim == 2
    F = F.reshape(-1, 3, 3)
    n = len(F)
    p1 = np.broadcast_to(np.asarray(principal_point_1_px, dtype=np.float64), (n, 2))
    p2 = np.broadcast_to(np.asarray(principal_point_2_px, dtype=np.float64), (n, 2))
    p1h = np.concatenate([p1, np.ones((n, 1))], axis=1)
    p2h = np.concatenate([p2, np.ones((n, 1))], axis=1)
    F = F / np.linalg.norm(F, axis=(1, 2), keepdims=True)
    # Epipoles: F e1 = 0 (image 1), F^T e2 = 0 (image 2): last right / left singular vectors.
    U, _, Vt = np.linalg.svd(F)
    e1, e2 = Vt[:, 2, :], U[:, :, 2]
    Ft = np.swapaxes(F, 1, 2)

    def focal_sq(F_a, F_a_t, e_b, p_a, p_b):
        # f_a^2 = -(p_b^T [e_b]x I~ F_a p_a p_a^T F_a^T p_b) / (p_b^T [e_b]x I~ F_a I~ F_a^T p_b)
        left = np.einsum("ni,nij->nj", p_b, _skew_batch(e_b) @ _I_TILDE)  # (n, 3) row p_b^T [e_b]x I~
        num = np.einsum("nj,nj->n", left, np.einsum("nij,nj->ni", F_a, p_a)) * np.einsum(
            "nj,nj->n", p_a, np.einsum("nij,nj->ni", F_a_t, p_b)
        )
        den = np.einsum("nj,nj->n", left, (F_a @ _I_TILDE @ F_a_t @ p_b[:, :, None])[:, :, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            return -num / den

    f1_sq = focal_sq(F, Ft, e2, p1h, p2h)
    f2_sq = focal_sq(Ft, F, e1, p2h, p1h)
    with np.errstate(invalid="ignore"):
        f1 = np.where(np.isfinite(f1_sq) & (f1_sq > 0), np.sqrt(np.abs(f1_sq)), np.nan)
        f2 = np.where(np.isfinite(f2_sq) & (f2_sq > 0), np.sqrt(np.abs(f2_sq)), np.nan)
    if single:
        return f1[0], f2[0]
    return f1, f2


def essential_singular_gap(F: np.ndarray, K1: np.ndarray, K2: np.ndarray) -> np.ndarray:
    """How far ``K2^T F K1`` is from an essential matrix: ``(s1 - s2) / (s1 + s2)`` in [0, 1].

    Args:
        F: (..., 3, 3) fundamental matrices (any scale).
        K1, K2: (..., 3, 3) calibration matrices of camera 1 and 2 (broadcast against F).

    Returns:
        (...,) the relative gap of the two largest singular values; 0 for an exact essential matrix.
    """
    F = _as_fundamentals(F)
    E = np.swapaxes(np.asarray(K2, dtype=np.float64), -1, -2) @ F @ np.asarray(K1, dtype=np.float64)
    s = np.linalg.svd(E, compute_uv=False)
    total = s[..., 0] + s[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (s[..., 0] - s[..., 1]) / total, 1.0)
