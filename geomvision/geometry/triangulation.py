"""Triangulation of 3D points from calibrated or projective views, and the checks that go with it.

Conventions (docs/conventions.md): projection matrices are ``P = K [R | t]`` with ``[R | t]`` the
``cam_from_world`` pose, pixels use the OpenCV origin, angles are returned in degrees (``_deg``).

All functions are vectorised over points / observations: no Python loop runs per point.
"""

from __future__ import annotations

import logging

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import angle_between_vectors_deg

logger = logging.getLogger(__name__)

__all__ = [
    "triangulate_dlt",
    "triangulate_nview",
    "triangulate_midpoint",
    "triangulation_angle_deg",
    "depths_in_camera",
    "cheirality_mask",
    "reprojection_errors_px",
]

#: |w| below this fraction of the homogeneous vector's norm marks a point at infinity (returned as NaN).
_INFINITY_TOL = 1e-12


def _finite_array(x, shape_tail: tuple[int, ...], name: str, *, ndim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape[arr.ndim - len(shape_tail) :] != shape_tail or (ndim is not None and arr.ndim != ndim):
        want = ("(N, " if ndim and ndim > len(shape_tail) else "(") + ", ".join(map(str, shape_tail)) + ")"
        raise InputError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(arr)))} values)")
    return arr


def _world_normalization(projections: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Similarity that moves the camera centres to the origin with unit mean distance.

    The DLT is not invariant to the world frame: far-away origins (e.g. geo-referenced coordinates)
    make the last column of ``P`` dominate and ruin the conditioning. With ``X = s * X' + c`` the
    projections become ``P' = P @ T`` where ``T = [[s I, c], [0, 1]]``.

    Args:
        projections: (M, 3, 4) finite projection matrices (M may repeat the same camera).

    Returns:
        ((M, 3, 4) normalised projections, centre c (3,), scale s).
    """
    # Centres of a strided subset are plenty for a normalisation and keep this O(1) in M.
    sample = projections[:: max(1, len(projections) // 512)]
    M3 = sample[:, :, :3]
    det = np.linalg.det(M3)
    finite_cams = np.abs(det) > 1e-300
    if not np.any(finite_cams):  # only affine cameras: no centres in the finite world, leave as is
        return projections, np.zeros(3), 1.0
    centers = -np.linalg.solve(M3[finite_cams], sample[finite_cams, :, 3:])[..., 0]
    c = centers.mean(axis=0)
    s = float(np.mean(np.linalg.norm(centers - c, axis=1)))
    if not np.isfinite(s) or s < 1e-12 * max(1.0, float(np.abs(c).max())):
        s = 1.0  # one camera (or all at one centre): translation only
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = c
    return projections @ T, c, s


def _dehomogenize(X_h: np.ndarray, c: np.ndarray, s: float) -> np.ndarray:
    """(N, 4) homogeneous normalised points -> (N, 3) world points; points at infinity become NaN."""
    w = X_h[:, 3]
    at_infinity = np.abs(w) <= _INFINITY_TOL * np.linalg.norm(X_h, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        X = X_h[:, :3] / w[:, None]
    X[at_infinity] = np.nan
    if np.any(at_infinity):
        logger.debug("triangulation: %d point(s) at infinity returned as NaN", int(at_infinity.sum()))
    return s * X + c


def _dlt_rows(projections: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(M, 2, 4) DLT rows ``x P3 - P1`` and ``y P3 - P2`` (H&Z 12.2), each scaled to unit norm.

    Unit rows weight every observation alike regardless of its pixel magnitude, which keeps the
    4x4 systems well conditioned without a per-camera image normalisation.
    """
    rows = x[:, :, None] * projections[:, 2:3, :]
    rows -= projections[:, :2, :]
    norms = np.sqrt(np.einsum("mri,mri->mr", rows, rows))
    rows /= np.where(norms > 0, norms, 1.0)[:, :, None]
    return rows


def _adjugate_sym4(M: np.ndarray) -> np.ndarray:
    """Adjugate (N, 4, 4) of symmetric 4x4 matrices, from 2x2 minors (Laplace expansion), elementwise.

    ``adj(M) = det(M) M^-1`` exists for singular M too: for rank 3 it is ``(l2 l3 l4) v v^T`` with v the
    null vector, which is what inverse iteration needs, without any pivoting or LAPACK call per matrix.
    """
    a = [[M[:, i, j] for j in range(4)] for i in range(4)]
    s0 = a[0][0] * a[1][1] - a[1][0] * a[0][1]
    s1 = a[0][0] * a[1][2] - a[1][0] * a[0][2]
    s2 = a[0][0] * a[1][3] - a[1][0] * a[0][3]
    s3 = a[0][1] * a[1][2] - a[1][1] * a[0][2]
    s4 = a[0][1] * a[1][3] - a[1][1] * a[0][3]
    s5 = a[0][2] * a[1][3] - a[1][2] * a[0][3]
    c5 = a[2][2] * a[3][3] - a[3][2] * a[2][3]
    c4 = a[2][1] * a[3][3] - a[3][1] * a[2][3]
    c3 = a[2][1] * a[3][2] - a[3][1] * a[2][2]
    c2 = a[2][0] * a[3][3] - a[3][0] * a[2][3]
    c1 = a[2][0] * a[3][2] - a[3][0] * a[2][2]
    # (the sixth minor, a20 a31 - a30 a21, only enters the lower triangle, which symmetry gives for free)
    adj = np.empty_like(M)
    adj[:, 0, 0] = a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3
    adj[:, 0, 1] = -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3
    adj[:, 0, 2] = a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3
    adj[:, 0, 3] = -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3
    adj[:, 1, 1] = a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1
    adj[:, 1, 2] = -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1
    adj[:, 1, 3] = a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1
    adj[:, 2, 2] = a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0
    adj[:, 2, 3] = -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0
    adj[:, 3, 3] = a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0
    # The adjugate of a symmetric matrix is symmetric: mirror the upper triangle.
    for i, j in ((1, 0), (2, 0), (3, 0), (2, 1), (3, 1), (3, 2)):
        adj[:, i, j] = adj[:, j, i]
    return adj


def _smallest_eigenvectors(M: np.ndarray) -> np.ndarray:
    """Unit eigenvectors (N, 4) of the smallest eigenvalue of symmetric PSD matrices M (N, 4, 4).

    Inverse iteration with the adjugate (``adj(M) ~ M^-1``, built elementwise): about 10x faster than
    a batched ``eigh``. The error shrinks by ``lambda_1 / lambda_2`` per step, which is tiny for
    well-posed points (noise against baseline), so five steps reach ~1e-12 or better. Points whose
    iterates have not settled (nearly repeated smallest eigenvalues: ill-posed rays) are re-solved
    with ``eigh``.
    """
    n = len(M)
    trace = np.trace(M, axis1=1, axis2=2)
    # Scale to unit trace so the adjugate (cubic in M) neither overflows nor underflows.
    adj = _adjugate_sym4(M / np.where(trace > 0, trace, 1.0)[:, None, None])
    y = np.full((n, 4), 0.5)
    y[:, 3] = 1.0  # start leaning on w: finite points in the normalised frame have |w| ~ |X|
    changes = []
    for _ in range(5):
        y_new = np.einsum("nij,nj->ni", adj, y)
        norm = np.sqrt(np.einsum("ij,ij->i", y_new, y_new))
        y_new /= np.where(norm > 0, norm, 1.0)[:, None]
        diff = y_new - y
        changes.append(np.sqrt(np.einsum("ij,ij->i", diff, diff)))  # step length
        y = y_new
    # Steps shrink by rho = lambda_1 / lambda_2 each time, so the error left after the last step is
    # about rho / (1 - rho) times that step. Accept when rho <= 0.5 and that bound is below 1e-12, or
    # when the last step is at rounding level (converged at once, e.g. noise-free data).
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(changes[-1] > 0, changes[-1] / changes[-2], 0.0)
    settled = (changes[-1] <= 1e-14) | ((rho <= 0.5) & (rho * changes[-1] <= 0.5e-12))
    if not np.all(settled):
        redo = ~settled
        y[redo] = np.linalg.eigh(M[redo])[1][:, :, 0]
        logger.debug("triangulation: %d of %d points re-solved with eigh", int(redo.sum()), n)
    return y


def _check_projection(P, name: str) -> np.ndarray:
    P = _finite_array(P, (3, 4), name)
    if P.shape != (3, 4):
        raise InputError(f"{name} must be (3, 4), got {P.shape}")
    if np.linalg.matrix_rank(P) < 3:
        raise InputError(f"{name} has rank < 3: {P.tolist()}")
    return P


def triangulate_dlt(P1: np.ndarray, P2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Linear (homogeneous DLT) two-view triangulation, H&Z 12.2, vectorised over points.

    Each point solves ``A X = 0`` with the four unit-normalised rows of both views by SVD, in a world
    frame normalised to the two camera centres (undone on return).

    Args:
        P1, P2: (3, 4) projection matrices ``K [R | t]`` (``cam_from_world``) of views 1 and 2;
            with normalised image coordinates pass ``[R | t]``.
        x1, x2: (N, 2) observations in view 1 and 2, same units as the projections (pixels).

    Returns:
        (N, 3) points in world. Points the two rays meet at infinity (parallel rays) are NaN.

    Raises:
        InputError: wrong shapes, NaN/inf, rank-deficient P, or mismatched N.
    """
    P1 = _check_projection(P1, "P1")
    P2 = _check_projection(P2, "P2")
    x1 = _finite_array(x1, (2,), "x1", ndim=2)
    x2 = _finite_array(x2, (2,), "x2", ndim=2)
    if len(x1) != len(x2):
        raise InputError(f"x1 and x2 must have the same length, got {len(x1)} and {len(x2)}")
    n = len(x1)
    if n == 0:
        return np.zeros((0, 3))
    Pn, c, s = _world_normalization(np.stack([P1, P2]))
    rows = np.concatenate(
        [_dlt_rows(np.broadcast_to(Pn[0], (n, 3, 4)), x1), _dlt_rows(np.broadcast_to(Pn[1], (n, 3, 4)), x2)],
        axis=1,
    )  # (N, 4, 4): A per point
    # The smallest eigenvector of A^T A is much cheaper than a batched SVD of A; with unit rows in the
    # normalised world frame the squared conditioning still leaves ~1e-12 relative error for baselines
    # of 0.15 degrees (tests/test_triangulation.py::test_dlt_small_baseline_precision).
    return _dehomogenize(_smallest_eigenvectors(np.matmul(rows.transpose(0, 2, 1), rows)), c, s)


def _check_index(point_index, m: int, num_points: int) -> np.ndarray:
    idx = np.asarray(point_index)
    if idx.shape != (m,):
        raise InputError(f"point_index must have shape ({m},), got {idx.shape}")
    if m and not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"point_index must be integer, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if m and (idx.min() < 0 or idx.max() >= num_points):
        raise InputError(f"point_index values must be in [0, {num_points}), got [{idx.min()}, {idx.max()}]")
    return idx


def _check_min_observations(idx: np.ndarray, num_points: int) -> None:
    counts = np.bincount(idx, minlength=num_points)
    few = np.flatnonzero(counts < 2)
    if len(few):
        raise InputError(
            f"{len(few)} point(s) have fewer than 2 observations, e.g. point {few[0]} has {counts[few[0]]}"
        )


def _check_grouping(
    a: np.ndarray, b: np.ndarray, names: tuple[str, str], point_index, num_points
) -> tuple[np.ndarray, int]:
    """Shared input gate of the batched multi-view solvers: per-observation arrays ``a`` and ``b`` of
    equal length M, ``num_points >= 0``, a valid (M,) ``point_index`` and (when there are points) >= 2
    observations per point.

    Returns:
        (M,) int64 point index and ``num_points`` as int.
    """
    m = len(a)
    if len(b) != m:
        raise InputError(f"{names[0]} and {names[1]} must have the same length, got {m} and {len(b)}")
    num_points = int(num_points)
    if num_points < 0:
        raise InputError(f"num_points must be >= 0, got {num_points}")
    idx = _check_index(point_index, m, num_points)
    if num_points:
        _check_min_observations(idx, num_points)
    return idx, num_points


def _accumulate(idx: np.ndarray, values: np.ndarray, num_points: int) -> np.ndarray:
    """Sum (M, ...) values into (num_points, ...) by index: one bincount per component."""
    flat = values.reshape(len(values), -1)
    out = np.stack(
        [np.bincount(idx, weights=flat[:, k], minlength=num_points) for k in range(flat.shape[1])], axis=1
    )
    return out.reshape((num_points,) + values.shape[1:])


def _accumulate_normal_matrices(idx: np.ndarray, rows: np.ndarray, num_points: int) -> np.ndarray:
    """Per-point ``A^T A`` (num_points, 4, 4) from (M, 2, 4) rows: 10 symmetric entries, one bincount each."""
    normal = np.empty((num_points, 4, 4))
    for i in range(4):
        for j in range(i, 4):
            products = rows[:, 0, i] * rows[:, 0, j] + rows[:, 1, i] * rows[:, 1, j]
            normal[:, i, j] = normal[:, j, i] = np.bincount(idx, weights=products, minlength=num_points)
    return normal


def triangulate_nview(
    projections: np.ndarray, x: np.ndarray, point_index: np.ndarray, num_points: int
) -> np.ndarray:
    """Multi-view homogeneous DLT triangulation (H&Z 12.2), one solve per point, fully vectorised.

    Observation m contributes the two unit-normalised rows of ``x_m P_m3 - P_m1`` and
    ``y_m P_m3 - P_m2`` to its point's system. Per point we accumulate the 4x4 normal matrix
    ``A^T A`` (bincount over the observations) and take the eigenvector of the smallest eigenvalue;
    all points are solved in one batched ``np.linalg.eigh``.

    Args:
        projections: (M, 3, 4) projection matrix of the view of each observation (may repeat).
        x: (M, 2) observations, same units as the projections.
        point_index: (M,) int index in [0, num_points) of the point each observation belongs to.
        num_points: number of points to return; every point needs >= 2 observations.

    Returns:
        (num_points, 3) points in world; points at infinity (all rays parallel) are NaN.

    Raises:
        InputError: wrong shapes, NaN/inf, indices out of range, or a point with < 2 observations.
    """
    projections = _finite_array(projections, (3, 4), "projections", ndim=3)
    x = _finite_array(x, (2,), "x", ndim=2)
    idx, num_points = _check_grouping(projections, x, ("projections", "x"), point_index, num_points)
    if num_points == 0:
        return np.zeros((0, 3))
    Pn, c, s = _world_normalization(projections)
    rows = _dlt_rows(Pn, x)  # (M, 2, 4)
    normal = _accumulate_normal_matrices(idx, rows, num_points)
    return _dehomogenize(_smallest_eigenvectors(normal), c, s)


def triangulate_midpoint(
    centers: np.ndarray, directions: np.ndarray, point_index: np.ndarray, num_points: int
) -> np.ndarray:
    """Least-squares ray intersection ("midpoint" method, H&Z 12.5 generalised to many rays).

    Minimises the sum of squared perpendicular distances to the rays ``c_m + lambda d_m``:
    ``sum_m (I - d_m d_m^T) X = sum_m (I - d_m d_m^T) c_m`` with unit ``d_m``, solved per point in
    one batched 3x3 solve. For two rays this is the midpoint of their common perpendicular.

    Args:
        centers: (M, 3) ray origins (camera centres) in world.
        directions: (M, 3) ray directions in world (any non-zero length).
        point_index: (M,) int index in [0, num_points) of each ray's point.
        num_points: number of points; every point needs >= 2 rays.

    Returns:
        (num_points, 3) points; NaN where all of a point's rays are parallel.

    Raises:
        InputError: wrong shapes, NaN/inf, zero directions, bad indices, a point with < 2 rays.
    """
    centers = _finite_array(centers, (3,), "centers", ndim=2)
    directions = _finite_array(directions, (3,), "directions", ndim=2)
    idx, num_points = _check_grouping(centers, directions, ("centers", "directions"), point_index, num_points)
    if num_points == 0:
        return np.zeros((0, 3))
    lengths = np.linalg.norm(directions, axis=1)
    if np.any(lengths == 0):
        raise InputError(f"directions contain {int(np.sum(lengths == 0))} zero vector(s)")
    d = directions / lengths[:, None]
    proj = np.eye(3) - d[:, :, None] * d[:, None, :]  # (M, 3, 3) projector orthogonal to each ray
    # Work relative to the mean centre so that large world offsets do not cost precision.
    origin = centers.mean(axis=0)
    A = _accumulate(idx, proj, num_points)
    b = _accumulate(idx, np.einsum("mij,mj->mi", proj, centers - origin), num_points)
    # Parallel rays make A singular (rank 2): detect with the smallest eigenvalue (A's eigenvalues lie
    # in [0, n_rays]) and solve only the well-posed systems.
    smallest = np.linalg.eigvalsh(A)[:, 0]
    ok = smallest > 1e-12 * np.trace(A, axis1=1, axis2=2)
    out = np.full((num_points, 3), np.nan)
    out[ok] = np.linalg.solve(A[ok], b[ok][:, :, None])[:, :, 0] + origin
    return out


def triangulation_angle_deg(center1: np.ndarray, center2: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Angle in degrees at each point between the rays to two camera centres (in [0, 180]).

    Args:
        center1, center2: (3,) camera centres in world.
        points: (N, 3) points in world.
    """
    c1 = _finite_array(center1, (3,), "center1").reshape(3)
    c2 = _finite_array(center2, (3,), "center2").reshape(3)
    points = _finite_array(points, (3,), "points", ndim=2)
    return angle_between_vectors_deg(c1 - points, c2 - points)


def depths_in_camera(R: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Depth (z in the camera frame) of (N, 3) world points for the pose ``cam_from_world = (R, t)``."""
    R = _finite_array(R, (3, 3), "R").reshape(3, 3)
    t = _finite_array(t, (3,), "t").reshape(3)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {points.shape}")
    return points @ R[2] + t[2]


def cheirality_mask(
    rotations: np.ndarray, translations: np.ndarray, points: np.ndarray, *, min_depth: float = 0.0
) -> np.ndarray:
    """True where a point is in front of every given camera (depth > ``min_depth``), H&Z 21.

    Two-view use: ``cheirality_mask(np.stack([I, R]), np.stack([0, t]), points_in_cam1)``.

    Args:
        rotations: (C, 3, 3) or (3, 3) ``cam_from_world`` rotations.
        translations: (C, 3) or (3,) ``cam_from_world`` translations.
        points: (N, 3) world points; NaN points are reported as False.
        min_depth: strictly positive depths above this pass (same units as the points).

    Returns:
        (N,) bool.
    """
    R = _finite_array(rotations, (3, 3), "rotations").reshape(-1, 3, 3)
    t = _finite_array(translations, (3,), "translations").reshape(-1, 3)
    if len(R) != len(t):
        raise InputError(f"got {len(R)} rotations but {len(t)} translations")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {points.shape}")
    depths = points @ R[:, 2, :].T + t[:, 2]  # (N, C)
    with np.errstate(invalid="ignore"):
        return np.all(depths > min_depth, axis=1)


def reprojection_errors_px(P: np.ndarray, points: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) between observations and the projections ``P X`` of world points.

    The error ignores which side of the camera a point is on (use :func:`cheirality_mask`); points
    projecting to infinity (on the principal plane) get ``inf``.

    Args:
        P: (3, 4) projection matrix.
        points: (N, 3) world points.
        x: (N, 2) observations in pixels.

    Returns:
        (N,) errors in pixels.
    """
    P = _finite_array(P, (3, 4), "P").reshape(3, 4)
    points = _finite_array(points, (3,), "points", ndim=2)
    x = _finite_array(x, (2,), "x", ndim=2)
    if len(points) != len(x):
        raise InputError(f"points and x must have the same length, got {len(points)} and {len(x)}")
    proj = points @ P[:, :3].T + P[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        px = proj[:, :2] / proj[:, 2:3]
    err = np.linalg.norm(px - x, axis=1)
    return np.where(np.isfinite(err), err, np.inf)
