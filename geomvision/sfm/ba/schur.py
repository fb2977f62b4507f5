"""Levenberg-Marquardt bundle adjustment on the Schur complement (reduced camera system).

Normal equations of the damped Gauss-Newton step, split into camera columns ``c`` and point columns
``p`` (H&Z appendix A6.3 "sparse Levenberg-Marquardt"; Triggs et al. 2000 sec. 6.1)::

    [U + mu D_c    W       ] [dc]   [-g_c]
    [W^T       C + mu D_p  ] [dp] = [-g_p]

``C`` is block diagonal with one 3x3 block per point, so points are eliminated with batched 3x3
inverses: ``S = U + mu D_c - W C~^-1 W^T``, ``S dc = -(g_c - W C~^-1 g_p)``, then
``dp = -C~^-1 (g_p + W^T dc)``. ``S`` is assembled from per-observation blocks reduced per image pair
(no loop over observations); it is solved by dense Cholesky when small and by conjugate gradients with a
block-Jacobi preconditioner when large. Damping follows Ceres/Nielsen: ``D = diag(J^T J)`` clamped,
``mu`` scaled by ``max(1/3, 1 - (2 rho - 1)^3)`` on success and doubled-doubling on failure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from geomvision.progress import report
from geomvision.sfm.ba.model import BundleAdjustmentProblem, evaluate

logger = logging.getLogger(__name__)

_MIN_DIAG, _MAX_DIAG = 1e-6, 1e32
_PAIRS_PER_CHUNK = 40_000  # bounds the (pairs, D, D) temporary to ~30 MB for D = 9


@dataclass
class _Structure:
    """Index arrays that depend only on which parameters are free and who observes what."""

    n: int  # camera columns
    cols_ext: np.ndarray  # (I, D) image columns with -1 replaced by n (a dummy slot)
    free_obs: np.ndarray  # (Mf,) observations of free points, sorted by point
    free_pc: np.ndarray  # (Mf,) free-point index of each of them
    n_points: int
    img_present: np.ndarray  # images that have observations, sorted
    img_order: np.ndarray  # observations sorted by image
    img_starts: np.ndarray  # reduceat starts for img_order
    pair_a: np.ndarray  # pairs (a < b) of positions in free_obs sharing a point, sorted by image pair
    pair_b: np.ndarray
    pair_starts: np.ndarray  # reduceat starts of each (image_a, image_b) group in pair_a/pair_b
    pair_img: np.ndarray  # (K, 2) image pair of each group
    chunks: list[tuple[int, int, int, int]]  # (pair lo, pair hi, group lo, group hi)
    scatter_index: np.ndarray  # target slot of every entry of [self blocks; pair blocks; transposes]
    n_slots: int
    dense: bool
    csr_indices: np.ndarray | None = None
    csr_indptr: np.ndarray | None = None
    block_index: np.ndarray | None = None  # (B, b) block-Jacobi columns, padded with n
    block_slots: np.ndarray | None = None  # (B, b, b) slots of those entries in the CSR data (or -1)


def _block_rows(c: np.ndarray) -> np.ndarray:
    """Row index of every entry of blocks whose rows are columns ``c`` (K, D): flattened (K, D, D)."""
    return np.broadcast_to(c[:, :, None], c.shape + c.shape[1:]).ravel()


def _block_cols(c: np.ndarray) -> np.ndarray:
    return np.broadcast_to(c[:, None, :], c.shape[:1] + (c.shape[1],) * 2).ravel()


def _build_structure(problem: BundleAdjustmentProblem, dense_max: int) -> _Structure:
    lay = problem.layout
    n = lay.n_cam
    cols_ext = np.where(lay.image_cols >= 0, lay.image_cols, n)
    pc_all = lay.point_col[problem.obs_point]
    free = np.flatnonzero(pc_all >= 0)
    free = free[np.argsort(pc_all[free], kind="stable")]
    free_pc = pc_all[free]
    img_order = np.argsort(problem.obs_image, kind="stable")
    img_sorted = problem.obs_image[img_order]
    img_present, img_starts = np.unique(img_sorted, return_index=True)

    # all pairs (a < b) of observations of the same point, generated with repeat/cumsum arithmetic
    counts = np.bincount(free_pc, minlength=lay.n_free_points)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.arange(len(free)) - starts[free_pc]
    n_rep = counts[free_pc] - 1 - local
    pair_a = np.repeat(np.arange(len(free)), n_rep)
    offsets = np.arange(len(pair_a)) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep)
    pair_b = pair_a + 1 + offsets
    img_free = problem.obs_image[free]
    n_img = len(problem.rotvecs)
    key = img_free[pair_a] * n_img + img_free[pair_b]
    order = np.argsort(key, kind="stable")
    pair_a, pair_b, key = pair_a[order], pair_b[order], key[order]
    uniq, pair_starts = np.unique(key, return_index=True)
    pair_img = np.stack([uniq // n_img, uniq % n_img], axis=1)

    bounds = np.append(pair_starts, len(pair_a))
    chunks, g = [], 0
    while g < len(pair_starts):
        g_hi = int(np.searchsorted(bounds, bounds[g] + _PAIRS_PER_CHUNK, side="right")) - 1
        g_hi = max(g_hi, g + 1)
        chunks.append((int(bounds[g]), int(bounds[g_hi]), g, g_hi))
        g = g_hi

    # target (row, col) of every block entry: self blocks per present image, pair blocks, transposes
    c_self = cols_ext[img_present]
    c_a, c_b = cols_ext[pair_img[:, 0]], cols_ext[pair_img[:, 1]]
    rows = np.concatenate([_block_rows(c_self), _block_rows(c_a), _block_rows(c_b)])
    cols = np.concatenate([_block_cols(c_self), _block_cols(c_b), _block_cols(c_a)])
    dense = n <= dense_max
    structure = _Structure(
        n,
        cols_ext,
        free,
        free_pc,
        lay.n_free_points,
        img_present,
        img_order,
        img_starts,
        pair_a,
        pair_b,
        pair_starts,
        pair_img,
        chunks,
        None,
        0,
        dense,
    )
    if dense:
        structure.scatter_index = rows * (n + 1) + cols
        structure.n_slots = (n + 1) ** 2
        return structure
    # sparse: slots are the unique non-dummy (row, col) keys in CSR order; dummy entries go to the last slot
    valid = (rows < n) & (cols < n)
    keys = rows.astype(np.int64) * n + cols
    uniq_keys, inverse = np.unique(keys[valid], return_inverse=True)
    scatter = np.full(len(keys), len(uniq_keys), np.int64)
    scatter[valid] = inverse
    structure.scatter_index = scatter
    structure.n_slots = len(uniq_keys) + 1
    structure.csr_indices = uniq_keys % n
    structure.csr_indptr = np.searchsorted(uniq_keys // n, np.arange(n + 1))
    _build_block_jacobi(structure, problem, uniq_keys)
    return structure


def _build_block_jacobi(
    structure: _Structure, problem: BundleAdjustmentProblem, uniq_keys: np.ndarray
) -> None:
    """Blocks = each image's free pose columns and each intrinsics group's free columns."""
    lay = problem.layout
    n = structure.n
    blocks = [
        np.sort(np.where(lay.pose_cols >= 0, lay.pose_cols, n), axis=1),
        np.sort(np.where(lay.intr_cols >= 0, lay.intr_cols, n), axis=1),
    ]
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=n) for b in blocks]
    index = np.vstack(padded)
    index = index[(index < n).any(axis=1)]
    r = index[:, :, None]
    c = index[:, None, :]
    keys = r * n + c
    pos = np.searchsorted(uniq_keys, keys)
    pos = np.minimum(pos, len(uniq_keys) - 1)
    found = (r < n) & (c < n) & (uniq_keys[pos] == keys)
    structure.block_index = index
    structure.block_slots = np.where(found, pos, -1)


def _outer_sum(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Batched ``A^T B`` for small inner size: A (M, K, D1), B (M, K, D2) -> (M, D1, D2).

    K (2 or 3) broadcast multiply-adds beat ``np.matmul``/``einsum`` on millions of tiny matrices.
    """
    out = A[:, 0, :, None] * B[:, 0, None, :]
    for k in range(1, A.shape[1]):
        out += A[:, k, :, None] * B[:, k, None, :]
    return out


def _bincount_blocks(index: np.ndarray, values: np.ndarray, size: int, dim: int) -> np.ndarray:
    """Sum (M, dim, dim) blocks into ``size`` 3x3 (dim x dim) slots given by index (M,)."""
    out = np.zeros((size, dim * dim))
    flat = values.reshape(len(values), dim * dim)
    for k in range(dim * dim):
        out[:, k] = np.bincount(index, weights=flat[:, k], minlength=size)
    return out.reshape(size, dim, dim)


@dataclass
class _Linearisation:
    """Per-iteration quantities that do not depend on the damping."""

    cost: float
    U_obs: np.ndarray  # (M, D, D)
    g_cam: np.ndarray  # (n,)
    C: np.ndarray  # (Np, 3, 3)
    g_pt: np.ndarray  # (Np, 3)
    W: np.ndarray  # (Mf, D, 3)
    diag_cam: np.ndarray  # (n,) diag(J^T J) over camera columns
    grad_max: float


def _linearise(problem: BundleAdjustmentProblem, st: _Structure, ev) -> _Linearisation:
    Jc, Jp, r = ev.J_cam, ev.J_point, ev.residuals
    n = st.n
    cols_obs = st.cols_ext[problem.obs_image]  # (M, D)
    U_obs = _outer_sum(Jc, Jc)
    g_obs = np.einsum("mki,mk->mi", Jc, r)
    g_cam = np.bincount(cols_obs.ravel(), weights=g_obs.ravel(), minlength=n + 1)[:n]
    diag_idx = np.arange(Jc.shape[2])
    diag_cam = np.bincount(cols_obs.ravel(), weights=U_obs[:, diag_idx, diag_idx].ravel(), minlength=n + 1)[
        :n
    ]
    Jpf, rf = Jp[st.free_obs], r[st.free_obs]
    C = _bincount_blocks(st.free_pc, _outer_sum(Jpf, Jpf), st.n_points, 3)
    g_pt = np.stack(
        [
            np.bincount(st.free_pc, weights=w, minlength=st.n_points)
            for w in np.einsum("mki,mk->mi", Jpf, rf).T
        ],
        axis=1,
    ).reshape(-1, 3)
    W = _outer_sum(Jc[st.free_obs], Jpf)
    grad_max = max(float(np.abs(g_cam).max(initial=0.0)), float(np.abs(g_pt).max(initial=0.0)))
    return _Linearisation(ev.cost, U_obs, g_cam, C, g_pt, W, diag_cam, grad_max)


def _reduced_system(problem: BundleAdjustmentProblem, st: _Structure, lin: _Linearisation, mu: float):
    """Damped Schur complement: (slot values of S, rhs -v, C~^-1, T = W C~^-1)."""
    diag_pt = np.clip(np.einsum("nii->ni", lin.C), _MIN_DIAG, _MAX_DIAG)
    C_damped = lin.C.copy()
    C_damped[:, [0, 1, 2], [0, 1, 2]] += mu * diag_pt
    C_inv = np.linalg.inv(C_damped)
    Wt = np.ascontiguousarray(lin.W.transpose(0, 2, 1))  # (Mf, 3, D)
    Tt = _outer_sum(C_inv[st.free_pc], Wt)  # (Mf, 3, D) = C~^-1 W^T  (C~^-1 symmetric)
    T = Tt.transpose(0, 2, 1)

    # self blocks per observation: U - T W^T for observations of free points
    self_obs = lin.U_obs.copy()
    self_obs[st.free_obs] -= _outer_sum(Tt, Wt)
    self_img = np.add.reduceat(self_obs[st.img_order], st.img_starts, axis=0)
    pair_blocks = np.empty((len(st.pair_img),) + self_img.shape[1:])
    for lo, hi, g_lo, g_hi in st.chunks:
        B = _outer_sum(Tt[st.pair_a[lo:hi]], Wt[st.pair_b[lo:hi]])
        pair_blocks[g_lo:g_hi] = np.add.reduceat(B, st.pair_starts[g_lo:g_hi] - lo, axis=0)
    values = np.concatenate([self_img.ravel(), -pair_blocks.ravel(), -pair_blocks.transpose(0, 2, 1).ravel()])
    S = np.bincount(st.scatter_index, weights=values, minlength=st.n_slots)

    # rhs: -(g_c - sum T g_p)
    v_obs = np.einsum("mij,mj->mi", T, lin.g_pt[st.free_pc])
    cols_free = st.cols_ext[problem.obs_image[st.free_obs]]
    v = lin.g_cam - np.bincount(cols_free.ravel(), weights=v_obs.ravel(), minlength=st.n + 1)[: st.n]
    return S, -v, C_inv, T


def _solve_dense(st: _Structure, S_slots: np.ndarray, rhs: np.ndarray, damp: np.ndarray) -> np.ndarray | None:
    n = st.n
    S = S_slots.reshape(n + 1, n + 1)[:n, :n]
    S[np.arange(n), np.arange(n)] += damp
    try:
        factor = scipy.linalg.cho_factor(S, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    return scipy.linalg.cho_solve(factor, rhs, check_finite=False)


def _solve_pcg(
    st: _Structure, S_slots: np.ndarray, rhs: np.ndarray, damp: np.ndarray, tol: float, max_iter: int
) -> np.ndarray | None:
    """Preconditioned conjugate gradients on the sparse reduced system (block-Jacobi preconditioner)."""
    n = st.n
    S = sp.csr_matrix((S_slots[:-1], st.csr_indices, st.csr_indptr), shape=(n, n))
    S = S + sp.diags(damp)
    data = np.append(S_slots[:-1], 0.0)
    blocks = data[st.block_slots]
    idx = st.block_index
    eye = np.eye(idx.shape[1])[None]
    blocks = np.where((idx[:, :, None] < n) & (idx[:, None, :] < n), blocks, eye)  # pad with identity
    blocks[:, np.arange(idx.shape[1]), np.arange(idx.shape[1])] += np.where(
        idx < n, damp[np.minimum(idx, n - 1)], 0
    )
    try:
        block_inv = np.linalg.inv(blocks)
    except np.linalg.LinAlgError:
        return None

    def precondition(r: np.ndarray) -> np.ndarray:
        r_ext = np.append(r, 0.0)
        z = np.einsum("bij,bj->bi", block_inv, r_ext[idx])
        return np.bincount(idx.ravel(), weights=z.ravel(), minlength=n + 1)[:n]

    x = np.zeros(n)
    r = rhs.copy()
    z = precondition(r)
    p = z.copy()
    rz = r @ z
    target = tol * np.linalg.norm(rhs)
    for _ in range(max_iter):
        Ap = S @ p
        pAp = p @ Ap
        if pAp <= 0:
            return None if not np.any(x) else x
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        if np.linalg.norm(r) <= target:
            break
        z = precondition(r)
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def _step(problem, st, lin, mu, options) -> tuple[np.ndarray, float] | None:
    """Solve the damped system; returns (delta x, predicted cost decrease) or None if it failed."""
    S, rhs, C_inv, T = _reduced_system(problem, st, lin, mu)
    damp = mu * np.clip(lin.diag_cam, _MIN_DIAG, _MAX_DIAG)
    if st.n == 0:
        dc = np.zeros(0)
    elif st.dense:
        dc = _solve_dense(st, S, rhs, damp)
    else:
        dc = _solve_pcg(st, S, rhs, damp, options.cg_tolerance, options.cg_max_iterations)
    if dc is None or not np.all(np.isfinite(dc)):
        return None
    dc_ext = np.append(dc, 0.0)
    cols_free = st.cols_ext[problem.obs_image[st.free_obs]]
    wt_dc = np.einsum("mij,mi->mj", lin.W, dc_ext[cols_free])  # W^T dc per observation
    acc = np.stack([np.bincount(st.free_pc, weights=w, minlength=st.n_points) for w in wt_dc.T], axis=1)
    dp = -np.einsum("nij,nj->ni", C_inv, lin.g_pt + acc.reshape(-1, 3))
    delta = np.concatenate([dc, dp.ravel()])
    # predicted decrease of the Gauss-Newton model: 0.5 dx^T (mu D dx - g)
    diag_pt = np.clip(np.einsum("nii->ni", lin.C), _MIN_DIAG, _MAX_DIAG).ravel()
    g = np.concatenate([lin.g_cam, lin.g_pt.ravel()])
    D = np.concatenate([damp, mu * diag_pt])
    predicted = 0.5 * float(delta @ (D * delta - g))
    return delta, predicted


def solve_schur(problem: BundleAdjustmentProblem, options, progress=None) -> dict:
    """Levenberg-Marquardt with Schur elimination of the points; updates ``problem`` in place."""
    t0 = time.perf_counter()
    st = _build_structure(problem, options.dense_schur_max_params)
    x = problem.get_x()
    if x.size == 0:
        return {"success": True, "reason": "no free parameters", "iterations": 0}
    ev = evaluate(problem, options.loss, options.loss_scale_px, jacobians=True)
    lin = _linearise(problem, st, ev)
    mu, nu = 1e-4, 2.0  # Ceres: initial trust region radius 1e4
    reason, iterations = "maximum iterations reached", 0
    logger.debug(
        "schur BA: %d camera columns (%s), %d points, %d pairs, setup %.3f s",
        st.n,
        "dense" if st.dense else "pcg",
        st.n_points,
        len(st.pair_a),
        time.perf_counter() - t0,
    )
    while iterations < options.max_iterations:
        iterations += 1
        if lin.grad_max <= options.gradient_tolerance:
            reason = f"gradient {lin.grad_max:.3g} <= {options.gradient_tolerance}"
            break
        step = _step(problem, st, lin, mu, options)
        if step is None:
            mu *= nu
            nu *= 2.0
            continue
        delta, predicted = step
        if np.linalg.norm(delta) <= options.parameter_tolerance * (
            np.linalg.norm(x) + options.parameter_tolerance
        ):
            reason = "parameter tolerance reached"
            break
        x_new = x + delta
        problem.set_x(x_new)
        new_cost = evaluate(problem, options.loss, options.loss_scale_px, jacobians=False).cost
        actual = lin.cost - new_cost
        rho = actual / predicted if predicted > 0 else -1.0
        report(progress, iterations, options.max_iterations, f"cost {min(new_cost, lin.cost):.6g}")
        if rho > 1e-3 and np.isfinite(new_cost):
            x = x_new
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            old_cost = lin.cost
            ev = evaluate(problem, options.loss, options.loss_scale_px, jacobians=True)
            lin = _linearise(problem, st, ev)
            if abs(actual) <= options.function_tolerance * old_cost:
                reason = (
                    f"function tolerance reached (relative decrease {actual / max(old_cost, 1e-300):.3g})"
                )
                break
        else:
            problem.set_x(x)
            mu *= nu
            nu *= 2.0
            if mu > 1e16:
                reason = "damping diverged; no further decrease possible"
                break
    problem.set_x(x)
    return {"success": True, "reason": reason, "iterations": iterations}
