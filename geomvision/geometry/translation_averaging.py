"""Translation averaging maths: baseline directions from rays, and camera centres from the directions (LUD).

With every camera's rotation known, a correspondence of images ``i`` and ``j`` gives two world-frame
viewing rays ``u`` (from ``c_i``) and ``w`` (from ``c_j``); they meet only if the baseline ``b = c_j - c_i``
lies in their plane: ``b . (u x w) = 0``. :func:`baseline_directions` takes, per pair, the unit ``b``
closest to all these planes (smallest eigenvector of the 3x3 scatter of the normals ``u x w``, re-weighted
a few times so that wrong correspondences lose their say), with the sign that puts the correspondences in
front of both cameras. Refining the pairs' translations with the averaged rotations this way is what
Theia's global pipeline does before translation averaging (its ``RefineRelativeTranslationsWithKnownRotations``);
normals of small parallax are short, so such rays count little.

:func:`lud_centers` solves "least unsquared deviations" (Ozyesil & Singer, "Robust camera location
estimation by convex programming", CVPR 2015):

    min over c, d of  sum_ij || c_j - c_i - d_ij t_ij ||      subject to  d_ij >= 1

a convex problem (so no start to fold, unlike a random start of a non-convex cost) whose unsquared norms
make it robust to a share of wrong directions; ``d_ij >= 1`` fixes the scale and excludes the collapsed
solution. It is solved by iteratively re-weighted least squares: with weights ``1 / |r_ij|`` fixed, the
optimal ``d_ij = max(1, t_ij . (c_j - c_i))`` is eliminated (an edge with ``d_ij > 1`` keeps only the part
of the baseline across ``t_ij``; one at the bound keeps ``c_j - c_i - t_ij``), and the remaining quadratic
in the centres is one sparse ``3(C-1)`` system per iteration; a step that does not lower the LUD cost is
halved.

Pure numpy / scipy: no scene types.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from geomvision.errors import InputError
from geomvision.geometry.global_positioning import group_sum

__all__ = ["baseline_directions", "lud_centers", "lud_cost"]


def _epipolar_angles(normals: np.ndarray, rays_first: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    """Sine of the angle of the second ray to the epipolar plane of the first ray and the baseline.

    ``|b . (u x w)| / |u x b|``: the epipolar error as an angle, whatever the pair's parallax. ``u`` and
    ``b`` are unit vectors, so ``|u x b|^2 = 1 - (u . b)^2`` (a dot product instead of a cross product:
    this runs once per hypothesis on every correspondence).
    """
    return np.abs(np.einsum("ki,ki->k", normals, baselines)) / np.sqrt(_across_sq(rays_first, baselines))


def _across_sq(rays_first: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    """``|u x b|^2`` of unit rays and unit baselines as ``1 - (u . b)^2``, floored at 1e-24."""
    cos = np.einsum("ki,ki->k", rays_first, baselines)
    return np.maximum(1.0 - cos * cos, 1e-24)


def baseline_directions(
    rays_first: np.ndarray,
    rays_second: np.ndarray,
    pair_index: np.ndarray,
    num_pairs: int,
    *,
    num_hypotheses: int = 32,
    iterations: int = 5,
    loss_scale: float = 0.002,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit baseline ``c_second - c_first`` of each pair from its world-frame correspondences.

    Each correspondence's rays ``u``, ``w`` must be coplanar with the baseline ``b``: ``b . (u x w) = 0``.
    Per pair, the best of ``num_hypotheses`` two-correspondence samples (``b = n_1 x n_2``, scored by a
    truncated loss on the epipolar angle) starts ``iterations`` re-weighted fits (Cauchy on the epipolar
    angle; smallest eigenvector of the weighted scatter of the normals ``n = u x w``). All pairs are
    processed at once (vectorised over correspondences).

    Args:
        rays_first: (K, 3) unit world-frame rays in the pair's first image.
        rays_second: (K, 3) the matching rays in its second image.
        pair_index: (K,) pair of each correspondence in [0, num_pairs).
        num_pairs: number of pairs E.
        num_hypotheses: random two-correspondence samples per pair; 0 starts from the plain least-squares
            fit (not robust: a few wrong correspondences of large parallax decide it).
        iterations: re-weighted fits after the start; a last fit takes the inliers alone (epipolar angle
            below 3 times ``loss_scale``).
        loss_scale: Cauchy scale on the sine of the epipolar angle (0.002: ~1.6 px at a focal of 800 px);
            the samples are scored with inliers below 3 times it.
        rng: seed or generator of the samples.

    Returns:
        (directions (E, 3) unit, or NaN for a pair without correspondences; in_front (E,) share of the
        weighted correspondences in front of both cameras for the returned sign, in [0.5, 1]).

    Raises:
        InputError: arrays of mismatched shapes or a pair index out of range.
    """
    rays_first = np.asarray(rays_first, dtype=np.float64)
    rays_second = np.asarray(rays_second, dtype=np.float64)
    pair_index = np.asarray(pair_index, dtype=np.int64)
    k = len(pair_index)
    if rays_first.shape != (k, 3) or rays_second.shape != (k, 3):
        raise InputError(
            f"need rays (K, 3) and pair_index (K,); got {rays_first.shape}, {rays_second.shape}, {k}"
        )
    if k and (pair_index.min() < 0 or pair_index.max() >= num_pairs):
        raise InputError(f"pair_index out of range [0, {num_pairs})")
    rng = np.random.default_rng(0 if rng is None else rng)
    normals = np.cross(rays_first, rays_second)  # |n| = sin(parallax)
    norm = np.linalg.norm(normals, axis=1)
    outer = normals[:, :, None] * normals[:, None, :]
    directions = np.full((num_pairs, 3), np.nan)
    counts = np.bincount(pair_index, minlength=num_pairs)
    has = counts > 0

    def fit(weights: np.ndarray) -> None:
        scatter = group_sum(pair_index, weights[:, None, None] * outer, num_pairs)
        directions[has] = np.linalg.eigh(scatter[has])[1][:, :, 0]  # eigenvalues ascending

    if num_hypotheses > 0 and k:
        # Correspondences sorted by pair: a sample is two offsets into the pair's run.
        order = np.argsort(pair_index, kind="stable")
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        pairs_with = np.flatnonzero(has)
        best_score = np.full(num_pairs, -np.inf)
        threshold = 3.0 * loss_scale
        for _ in range(num_hypotheses):
            picks = starts[pairs_with][:, None] + (
                rng.random((len(pairs_with), 2)) * counts[pairs_with][:, None]
            ).astype(int)
            candidate = np.cross(normals[order[picks[:, 0]]], normals[order[picks[:, 1]]])
            length = np.linalg.norm(candidate, axis=1)
            hypothesis = np.zeros((num_pairs, 3))
            hypothesis[pairs_with] = candidate / np.maximum(length, 1e-300)[:, None]
            angles = _epipolar_angles(normals, rays_first, hypothesis[pair_index])
            score = np.bincount(pair_index, weights=np.maximum(threshold - angles, 0.0), minlength=num_pairs)
            score[pairs_with[length < 1e-12]] = -np.inf  # parallel normals: no hypothesis
            better = score > best_score
            directions[better] = hypothesis[better]
            best_score[better] = score[better]
        fallback = has & ~np.isfinite(best_score)
        if fallback.any():  # no usable sample (e.g. one correspondence): least squares
            saved = directions.copy()
            fit(np.ones(k))
            directions[~fallback] = saved[~fallback]
    else:
        fit(np.ones(k))
    weights = np.ones(k)
    for _ in range(iterations):
        b = directions[pair_index]
        angles = _epipolar_angles(normals, rays_first, b)
        across_sq = _across_sq(rays_first, b)
        weights = 1.0 / (1.0 + (angles / loss_scale) ** 2)
        fit(weights / across_sq)
    if k:
        # Last fit on the inliers alone (exact for exact inliers).
        b = directions[pair_index]
        angles = _epipolar_angles(normals, rays_first, b)
        across_sq = _across_sq(rays_first, b)
        inlier = angles < 3.0 * loss_scale
        enough = np.bincount(pair_index, weights=inlier, minlength=num_pairs) >= 2
        saved = directions.copy()
        fit(inlier / across_sq)
        directions[~enough] = saved[~enough]
        weights = np.where(enough[pair_index], inlier.astype(float), weights)
    # Sign: the correspondences triangulate in front of both cameras (b = a u - beta w).
    b = directions[pair_index]
    n2 = np.maximum(norm**2, 1e-300)
    depth_first = np.einsum("ki,ki->k", np.cross(b, rays_second), normals) / n2
    depth_second = np.einsum("ki,ki->k", np.cross(b, rays_first), normals) / n2
    vote = weights * (
        ((depth_first > 0) & (depth_second > 0)).astype(float) - ((depth_first < 0) & (depth_second < 0))
    )
    score = np.bincount(pair_index, weights=vote, minlength=num_pairs)
    total = np.bincount(
        pair_index, weights=weights * (np.sign(depth_first) == np.sign(depth_second)), minlength=num_pairs
    )
    flip = score < 0
    directions[flip] *= -1
    in_front = np.full(num_pairs, 0.5)
    ok = total > 0
    in_front[ok] = 0.5 + 0.5 * np.abs(score[ok]) / total[ok]
    return directions, in_front


def lud_cost(centers: np.ndarray, edges: np.ndarray, directions: np.ndarray) -> tuple[float, np.ndarray]:
    """LUD cost ``sum |c_j - c_i - d t|`` with each ``d = max(1, t . (c_j - c_i))``, and the scales d."""
    baselines = centers[edges[:, 1]] - centers[edges[:, 0]]
    scales = np.maximum(1.0, np.einsum("ei,ei->e", baselines, directions))
    residual = baselines - scales[:, None] * directions
    return float(np.linalg.norm(residual, axis=1).sum()), scales


def lud_centers(
    edges: np.ndarray,
    directions: np.ndarray,
    num_cameras: int,
    *,
    gauge_camera: int = 0,
    initial_centers: np.ndarray | None = None,
    max_iterations: int = 100,
    function_tolerance: float = 1e-10,
    min_residual: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Camera centres from unit pairwise directions by least unsquared deviations (IRLS).

    Args:
        edges: (E, 2) camera indices ``(i, j)`` in [0, num_cameras), i != j.
        directions: (E, 3) unit direction of ``c_j - c_i`` in world coordinates.
        num_cameras: C; the graph of ``edges`` should connect them all (and be parallel rigid, e.g. not all
            cameras on one line), else the solution is not unique.
        gauge_camera: this camera sits at the origin.
        initial_centers: (C, 3) start; None starts with every weight 1 (a least-squares solution).
        max_iterations: cap on the re-weighting iterations.
        function_tolerance: stop when an iteration lowers the cost by less than this fraction.
        min_residual: weights are ``1 / max(|r|, min_residual)`` (bounds the weight of exact edges).

    Returns:
        (centers (C, 3), scales d (E,), iterations).

    Raises:
        InputError: arrays of the wrong shape, indices out of range or an edge from a camera to itself.
    """
    edges = np.asarray(edges, dtype=np.int64)
    directions = np.asarray(directions, dtype=np.float64)
    e = len(edges)
    if edges.shape != (e, 2) or directions.shape != (e, 3):
        raise InputError(f"need edges (E, 2) and directions (E, 3); got {edges.shape}, {directions.shape}")
    if e and (edges.min() < 0 or edges.max() >= num_cameras):
        raise InputError(f"edge camera index out of range [0, {num_cameras})")
    if np.any(edges[:, 0] == edges[:, 1]):
        raise InputError("an edge joins a camera to itself")
    if not 0 <= gauge_camera < num_cameras:
        raise InputError(f"gauge_camera {gauge_camera} out of range [0, {num_cameras})")
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    free = np.arange(num_cameras) != gauge_camera
    index = np.cumsum(free) - 1  # position of a free camera in the reduced system
    n_red = 3 * (num_cameras - 1)
    i, j = edges[:, 0], edges[:, 1]
    eye = np.eye(3)
    projector = eye - directions[:, :, None] * directions[:, None, :]
    # Block (a, b) entries of the 3x3 block of edge e at camera rows/cols (u, v), as sparse COO data.
    uu, vv = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")

    def solve(weights: np.ndarray, active: np.ndarray) -> np.ndarray:
        # Edge e contributes w (G c - a)^T M (G c - a) with G c = c_j - c_i; M = I and a = t at the bound,
        # M = I - t t^T (a irrelevant) above it.
        m = np.where(active[:, None, None], eye, projector) * weights[:, None, None]
        rhs_edge = np.einsum("eij,ej->ei", m, directions * active[:, None])
        rows, cols, vals = [], [], []
        for a_cam, b_cam, sign in ((i, i, 1.0), (j, j, 1.0), (i, j, -1.0), (j, i, -1.0)):
            keep = free[a_cam] & free[b_cam]
            rows.append((3 * index[a_cam[keep]][:, None, None] + uu).ravel())
            cols.append((3 * index[b_cam[keep]][:, None, None] + vv).ravel())
            vals.append(sign * m[keep].ravel())
        hessian = sp.csc_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_red, n_red)
        )
        rhs = np.zeros((num_cameras, 3))
        rhs += group_sum(j, rhs_edge, num_cameras)
        rhs -= group_sum(i, rhs_edge, num_cameras)
        # A tiny ridge keeps the system solvable where the graph leaves a direction free.
        hessian = hessian + 1e-12 * float(np.abs(m).max(initial=1.0)) * sp.identity(n_red, format="csc")
        solution = np.zeros((num_cameras, 3))
        solution[free] = spsolve(hessian, rhs[free].ravel()).reshape(-1, 3)
        return solution

    if initial_centers is None:
        # Least-squares start: every edge at the bound (c_j - c_i = t) with weight 1.
        centers = solve(np.ones(e), np.ones(e, dtype=bool))
    else:
        centers = np.array(initial_centers, dtype=np.float64)
        if centers.shape != (num_cameras, 3):
            raise InputError(f"initial_centers must be ({num_cameras}, 3), got {centers.shape}")
        centers = centers - centers[gauge_camera]
    cost, scales = lud_cost(centers, edges, directions)
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (returned)
        baselines = centers[j] - centers[i]
        residual = np.linalg.norm(baselines - scales[:, None] * directions, axis=1)
        weights = 1.0 / np.maximum(residual, min_residual)
        active = np.einsum("ei,ei->e", baselines, directions) <= 1.0
        proposal = solve(weights, active)
        step = proposal - centers
        for _ in range(20):  # halve until the LUD cost does not rise
            trial = centers + step
            trial_cost, trial_scales = lud_cost(trial, edges, directions)
            if trial_cost <= cost:
                break
            step *= 0.5
        else:
            break
        decrease = (cost - trial_cost) / max(cost, 1e-300)
        centers, cost, scales = trial, trial_cost, trial_scales
        if decrease < function_tolerance:
            break
    return centers, scales, iterations
