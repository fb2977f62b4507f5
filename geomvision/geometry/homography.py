"""Planar homographies: normalised DLT estimation, transfer errors and degeneracy checks.

A homography ``H`` maps image-1 pixels to image-2 pixels, ``x2 ~ H x1`` (homogeneous, OpenCV pixel
origin). Estimation follows Hartley & Zisserman, "Multiple View Geometry", 2nd ed., section 4.4
(normalised DLT, Algorithm 4.2); errors follow section 4.2.2 (symmetric transfer error).
"""

from __future__ import annotations

import numpy as np

from geomvision.errors import InputError

__all__ = [
    "hartley_normalization",
    "apply_homography",
    "homography_dlt",
    "homography_transfer_errors_sq",
    "homography_sample_is_degenerate",
    "homography_orientation_consistent",
]

#: Minimal sample triangles with |area| below this (in Hartley-normalised units, where typical areas
#: are ~1) count as collinear.
_COLLINEAR_AREA_TOL = 1e-6
#: Ratio of the two smallest singular values of the DLT system under which the solution is not unique.
_NULLSPACE_TOL = 1e-10
#: Up to this many correspondences the DLT null vector comes from an SVD of A, beyond from A^T A.
_SVD_MAX_POINTS = 32
#: The four point triples (i, j, k) of a 4-point sample.
_TRIPLE_I, _TRIPLE_J, _TRIPLE_K = np.array([0, 0, 0, 1]), np.array([1, 1, 2, 2]), np.array([2, 3, 3, 3])


def _check_points(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{name} must have shape (N, 2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(arr)))} values)")
    return arr


def _check_homography(H) -> np.ndarray:
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        raise InputError(f"H must be (3, 3), got {H.shape}")
    if not np.all(np.isfinite(H)):
        raise InputError("H contains NaN or inf")
    return H


def hartley_normalization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity T moving (N, 2) points to centroid 0 and mean distance sqrt(2) (H&Z 4.4.4).

    Returns:
        ((N, 2) normalised points, (3, 3) T with ``x_normalised ~ T x``).

    Raises:
        InputError: all points coincide.
    """
    n = len(x)
    centroid = np.add.reduce(x, axis=0) / n
    centred = x - centroid
    mean_dist = float(np.add.reduce(np.sqrt(np.add.reduce(centred * centred, axis=1)))) / n
    if not mean_dist > 1e-12 * max(1.0, float(np.abs(centroid).max())):
        raise InputError(f"all {len(x)} points coincide at {centroid.tolist()}")
    s = np.sqrt(2.0) / mean_dist
    T = np.array([[s, 0.0, -s * centroid[0]], [0.0, s, -s * centroid[1]], [0.0, 0.0, 1.0]])
    return centred * s, T


def apply_homography(H: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through H; points sent to infinity come back as inf/NaN."""
    H = _check_homography(H)
    x = np.asarray(x, dtype=np.float64).reshape(-1, 2)
    y = x @ H[:, :2].T + H[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return y[:, :2] / y[:, 2:3]


def _triangle_dets(x: np.ndarray) -> np.ndarray:
    """det[x_i, x_j, x_k] (twice the signed area) of the triples (012, 013, 023, 123) of a (4, 2) sample."""
    a, b = x[_TRIPLE_J] - x[_TRIPLE_I], x[_TRIPLE_K] - x[_TRIPLE_I]
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def _is_degenerate_normalized(xn: np.ndarray) -> bool:
    """Collinearity test on Hartley-normalised points (N, 2): any 3 of 4, or all of N > 4."""
    if len(xn) == 4:
        return bool(np.min(np.abs(_triangle_dets(xn))) < _COLLINEAR_AREA_TOL)
    sv = np.linalg.svd(xn, compute_uv=False)  # centred: the 2nd singular value measures the spread
    return bool(sv[1] < _COLLINEAR_AREA_TOL * sv[0])


def homography_sample_is_degenerate(x1: np.ndarray, x2: np.ndarray) -> bool:
    """True when a 4-point sample cannot define a homography: three points collinear in either image.

    Collinearity is judged in Hartley-normalised coordinates, so the test does not depend on the
    image size. For samples of more than 4 points this checks whether *all* points are collinear.

    Args:
        x1, x2: (N, 2) corresponding pixels, N >= 4.
    """
    x1 = _check_points(x1, "x1")
    x2 = _check_points(x2, "x2")
    if len(x1) != len(x2) or len(x1) < 4:
        raise InputError(f"need >= 4 correspondences of equal length, got {len(x1)} and {len(x2)}")
    for x in (x1, x2):
        try:
            xn, _ = hartley_normalization(x)
        except InputError:
            return True
        if _is_degenerate_normalized(xn):
            return True
    return False


def homography_orientation_consistent(x1: np.ndarray, x2: np.ndarray) -> bool:
    """Whether a 4-point sample keeps a consistent orientation between the images.

    For a plane in front of both cameras, ``det[H x_i, H x_j, H x_k] = det(H) w_i w_j w_k det[x_i, x_j,
    x_k]`` with positive scales ``w``, so the sign ratio of every triple's orientation equals the same
    ``sign(det H)``. A sample violating this needs a "folded" homography and cannot come from a real
    plane; RANSAC can skip it before solving.

    Args:
        x1, x2: (4, 2) corresponding pixels.
    """
    x1 = _check_points(x1, "x1")
    x2 = _check_points(x2, "x2")
    if x1.shape != (4, 2) or x2.shape != (4, 2):
        raise InputError(f"need exactly 4 correspondences, got {len(x1)} and {len(x2)}")
    signs = np.sign(_triangle_dets(x1) * _triangle_dets(x2))
    return bool(np.all(signs == signs[0]) and signs[0] != 0)


def homography_dlt(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Homography ``x2 ~ H x1`` by the normalised DLT (H&Z 4.4, Algorithm 4.2), N >= 4.

    Both point sets are Hartley-normalised, each correspondence contributes the two independent rows
    of ``x2 x (H x1) = 0`` (H&Z eq. 4.3), the stacked (2N, 9) system is solved for its least-squares
    null vector (SVD for small N, smallest eigenvector of ``A^T A`` for large N) and the normalisation
    undone. The 4-point minimal case uses the same code (exact solution).

    Args:
        x1, x2: (N, 2) corresponding pixels in image 1 and image 2.

    Returns:
        (3, 3) H with unit Frobenius norm, signed so that the points map to positive ``w``
        (``H[2] @ [x1, 1] > 0`` on average).

    Raises:
        InputError: wrong shapes, NaN/inf, N < 4, coincident or collinear points (three collinear
            points of a 4-point sample, or all points on a line), or a non-unique solution.
    """
    x1 = _check_points(x1, "x1")
    x2 = _check_points(x2, "x2")
    if len(x1) != len(x2):
        raise InputError(f"x1 and x2 must have the same length, got {len(x1)} and {len(x2)}")
    if len(x1) < 4:
        raise InputError(f"homography_dlt needs >= 4 correspondences, got {len(x1)}")
    x1n, T1 = hartley_normalization(x1)
    x2n, T2 = hartley_normalization(x2)
    if _is_degenerate_normalized(x1n) or _is_degenerate_normalized(x2n):
        raise InputError(f"degenerate homography input: {len(x1)} points with (nearly) collinear subsets")
    Hn = _dlt_null_vector(_dlt_system(x1n, x2n)).reshape(3, 3)
    # T2 is a similarity [[s, 0, a], [0, s, b], [0, 0, 1]]: invert it in closed form.
    s2 = T2[0, 0]
    T2_inv = np.array([[1.0 / s2, 0.0, -T2[0, 2] / s2], [0.0, 1.0 / s2, -T2[1, 2] / s2], [0.0, 0.0, 1.0]])
    H = T2_inv @ Hn @ T1
    H /= np.linalg.norm(H)
    w = x1 @ H[2, :2] + H[2, 2]
    return -H if np.add.reduce(w) < 0 else H


def _dlt_null_vector(A: np.ndarray) -> np.ndarray:
    """Unit least-squares null vector (9,) of the (2N, 9) DLT matrix.

    Small systems use the SVD of A (exact to rounding even for minimal samples, where squaring the
    conditioning would cost ~6 digits); large ones the 9x9 normal matrix, whose eigh costs microseconds
    while the SVD of a tall A grows with N and suffers from BLAS threading overhead.
    """
    if len(A) <= 2 * _SVD_MAX_POINTS:
        _, sv, Vt = np.linalg.svd(A, full_matrices=len(A) < 9)
        # (a minimal sample, 8 rows, has a 1-D null space by construction once degeneracy is excluded)
        if len(A) > 8 and sv[-2] < _NULLSPACE_TOL * sv[0]:
            raise InputError(f"homography is not unique: singular values {sv[-2]:.3g}, {sv[-1]:.3g} vanish")
        return Vt[-1]
    eigvals, eigvecs = np.linalg.eigh(A.T @ A)  # ascending; eigenvalues are squared singular values
    if eigvals[1] < _NULLSPACE_TOL**2 * eigvals[-1]:
        raise InputError(
            f"homography is not unique: two eigenvalues of A^T A vanish ({eigvals[0]:.3g}, {eigvals[1]:.3g})"
        )
    return eigvecs[:, 0]


def _dlt_system(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """(2N, 9) DLT matrix: rows ``[0, -w' x^T, y' x^T]`` and ``[w' x^T, 0, -x' x^T]`` (H&Z 4.3), w' = 1."""
    n = len(x1)
    A = np.zeros((n, 2, 9))
    A[:, 0, 3:5] = -x1
    A[:, 0, 5] = -1.0
    A[:, 0, 6:8] = x2[:, 1:2] * x1
    A[:, 0, 8] = x2[:, 1]
    A[:, 1, 0:2] = x1
    A[:, 1, 2] = 1.0
    A[:, 1, 6:8] = -x2[:, 0:1] * x1
    A[:, 1, 8] = -x2[:, 0]
    return A.reshape(2 * n, 9)


def homography_transfer_errors_sq(H: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Symmetric transfer error per correspondence, squared pixels (H&Z 4.2.2, eq. 4.7).

    ``d(x2, H x1)^2 + d(x1, H^-1 x2)^2``; correspondences that map to infinity get ``inf``.

    Args:
        H: (3, 3) homography ``x2 ~ H x1`` (must be invertible).
        x1, x2: (N, 2) pixels in image 1 and 2.

    Returns:
        (N,) squared errors in px^2.

    Raises:
        InputError: bad shapes, NaN/inf, or singular H.
    """
    H = _check_homography(H)
    x1 = _check_points(x1, "x1")
    x2 = _check_points(x2, "x2")
    if len(x1) != len(x2):
        raise InputError(f"x1 and x2 must have the same length, got {len(x1)} and {len(x2)}")
    sv = np.linalg.svd(H, compute_uv=False)
    if not sv[2] > 1e-14 * sv[0]:
        raise InputError(f"H is singular (singular values {sv.tolist()})")
    forward = np.sum((apply_homography(H, x1) - x2) ** 2, axis=1)
    backward = np.sum((apply_homography(np.linalg.inv(H), x2) - x1) ** 2, axis=1)
    err = forward + backward
    return np.where(np.isfinite(err), err, np.inf)
