"""Levenberg-Marquardt bundle adjustment on the Schur complement (reduced camera system).

Normal equations of the damped Gauss-Newton step, split into camera columns ``c`` and point columns
``p`` (H&Z appendix A6.3 "sparse Levenberg-Marquardt"; Triggs et al. 2000 sec. 6.1)::

    [U + mu D_c    W       ] [dc]   [-g_c]
    [W^T       C + mu D_p  ] [dp] = [-g_p]

``C`` is block diagonal with one 3x3 block per point, so points are eliminated with batched 3x3
inverses: ``S = U + mu D_c - W C~^-1 W^T``, ``S dc = -(g_c - W C~^-1 g_p)``, then
``dp = -C~^-1 (g_p + W^T dc)``. ``S`` is assembled from per-observation blocks reduced per image pair
(no loop over observations). It is solved by dense Cholesky (LAPACK) when small or nearly full, by a sparse
direct factorisation (SuperLU, no pivoting, a fill-reducing minimum-degree ordering of the camera blocks
computed once) when sparse, and by conjugate gradients with a block-Jacobi preconditioner when very large.
Damping follows Ceres/Nielsen: ``D = diag(J^T J)`` clamped,
``mu`` scaled by ``max(1/3, 1 - (2 rho - 1)^3)`` on success and doubled-doubling on failure.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from geomvision.progress import report
from geomvision.runtime.worker import thread_budget
from geomvision.sfm.ba.model import (
    BundleAdjustmentProblem,
    carried_translation_columns,
    compose_rotation_steps,
    evaluate,
    observed_centroids_in_cam,
    rotation_tangent_columns,
)

logger = logging.getLogger(__name__)

_MIN_DIAG, _MAX_DIAG = 1e-6, 1e32
_PAIRS_PER_CHUNK = 8192  # bounds each gather buffer to ~1.8 MB for D = 9 (cache-sized, and splits evenly)
# "auto" reduced-system solver: dense Cholesky below _ALWAYS_DENSE camera parameters or when at least
# _DENSE_FILL of the image-pair blocks are non-zero (ladybug-49: 441 parameters, 83% full, dense 1.2 ms vs
# SuperLU 10 ms); sparse direct otherwise (200-camera ring, 1193 parameters, 3.5% full: SuperLU 3 ms vs
# dense 45 ms; 2000 cameras, 11993 parameters: 0.08 s where PCG took ~10 s per solve).
_ALWAYS_DENSE = 256
_DENSE_FILL = 0.25
# Per-observation work (Jacobian evaluation, linearisation, the Schur complement's Z rows and self blocks)
# runs in chunks of whole images, at least _CHUNK_OBS observations each, a power of two of them (at most
# _MAX_CHUNKS), so that threads can share it. The chunking depends on the problem only, never on the
# thread count: every num_threads gives bitwise the same iterates. Threads are used from _CHUNKS_PER_THREAD
# chunks per thread on: numpy releases the GIL only inside each call, and on calls of ~20k elements the GIL
# hand-offs between two threads cost about what they gain (2-chunk problems, e.g. ladybug-49 and the
# 200-camera row, were 3-6% slower with 2 threads on an otherwise idle 2-core share; 1000 and 2000 cameras
# 13% and 21% faster). Problems under 2 * _CHUNK_OBS observations (the mapper's local BAs) are one chunk.
_CHUNK_OBS = 12_000
_MAX_CHUNKS = 8
_CHUNKS_PER_THREAD = 2
# Problems of at least this many chunks drop the linearisation while a candidate step is evaluated and
# rebuild it when the step is rejected (memory for time; one chunk: local BAs, where memory is no issue).
_REBUILD_REJECTED_MIN_CHUNKS = 2
# rotation steps in the camera-frame tangent (R <- exp(dw) R, a free pose turning about the centroid of its
# points: model.evaluate) where every image's rotation is free or held
_ROTATION_TANGENT = True


@dataclass(frozen=True)
class _Chunk:
    """A run of whole images: its observations, their free-point subset and its present images."""

    obs: slice  # observations [lo, hi) (sorted by image)
    free: slice  # positions [lo, hi) in free_obs of its observations of free points
    free_local: np.ndarray | None  # those observations as positions within ``obs`` (None: all are free)
    images: slice  # positions [lo, hi) in img_present


@dataclass
class _Structure:
    """Index arrays that depend only on which parameters are free and who observes what."""

    n: int  # camera columns
    cols_ext: np.ndarray  # (I, D) image columns with -1 replaced by n (a dummy slot)
    free_obs: np.ndarray  # (Mf,) observations of free points (image order)
    free_pc: np.ndarray  # (Mf,) free-point index of each of them
    all_free: bool  # every observation sees a free point (free_obs is arange(M))
    free_img: np.ndarray  # (Mf,) image of each free_obs (its camera columns: cols_ext[free_img])
    n_points: int
    img_present: np.ndarray  # images that have observations, sorted
    img_bounds: np.ndarray  # (len(img_present) + 1,) observation slice of each present image
    free_img_bounds: np.ndarray  # (len(img_present) + 1,) slice of free_obs of each present image
    num_obs_pairs: int  # pairs (a < b) of observations of one free point (in pair_batches, by image pair)
    pair_img: np.ndarray  # (K, 2) image pair of each group
    pair_batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # see _bucket_pair_groups
    scatter_index: np.ndarray  # target slot of every entry of [self blocks; pair blocks; transposes]
    n_slots: int
    solver: str  # "dense", "sparse" or "pcg" (see _choose_solver)
    csr_indices: np.ndarray | None = None
    csr_indptr: np.ndarray | None = None
    block_index: np.ndarray | None = None  # (B, b) block-Jacobi columns, padded with n
    block_slots: np.ndarray | None = None  # (B, b, b) slots of those entries in the CSR data (or -1)
    perm: np.ndarray | None = None  # sparse: camera column at each position of the fill-reducing order
    diag_slots: np.ndarray | None = None  # sparse/pcg: CSR slot of each diagonal entry (in CSR order)
    buffers: dict = field(default_factory=dict)  # scratch arrays reused across LM iterations
    chunks: list[_Chunk] = field(default_factory=list)
    workers: int = 1  # threads sharing the work (the calling thread and workers - 1 pool threads)
    pool: ThreadPoolExecutor | None = None
    pair_parts: list | None = None  # pair_batches split into one list per thread
    # per chunk (several chunks only): (its free points, sorted; each of its free observations' position there)
    chunk_points: list[tuple[np.ndarray, np.ndarray]] | None = None
    rot_cols: np.ndarray | None = None  # (K, 3) rotation columns stepped in the tangent space, or None
    trans_cols: np.ndarray | None = None  # (K, 3) translations those steps carry along (-1: none)
    pivots: np.ndarray | None = None  # (I, 3) camera-frame point each image's rotation steps turn about
    pivot_rows: np.ndarray | None = None  # (K, 3) the pivots of the rows of rot_cols
    # per present image: some column free (the self blocks and gradients of the others land in the dummy
    # slot and are skipped)
    present_has_free: list[bool] = field(default_factory=list)


def _block_rows(c: np.ndarray) -> np.ndarray:
    """Row index of every entry of blocks whose rows are columns ``c`` (K, D): flattened (K, D, D)."""
    return np.broadcast_to(c[:, :, None], c.shape + c.shape[1:]).ravel()


def _block_cols(c: np.ndarray) -> np.ndarray:
    return np.broadcast_to(c[:, None, :], c.shape[:1] + (c.shape[1],) * 2).ravel()


def _bucket_pair_groups(pair_a: np.ndarray, pair_b: np.ndarray, pair_starts: np.ndarray, n_free: int):
    """Batches of image-pair groups for batched GEMMs.

    A group of k observation pairs (image a, image b) contributes ``sum_k T_a W_b^T`` = ``X^T Y`` with X, Y
    the (3k, D) stacks of the per-observation ``T^T`` and ``W^T`` rows: one GEMM. Groups are bucketed by
    k rounded up to the next width of a geometric ladder (ratio 2^(1/4)) and padded with a zero row (index ``n_free``), so each bucket is one
    ``np.matmul`` over a (G, D, 3k) x (G, 3k, D) stack, split into chunks of at most ``_PAIRS_PER_CHUNK``
    padded pairs to bound memory.

    Returns:
        list of (group ids (G,), padded pair_a (G, k), padded pair_b (G, k)).
    """
    bounds = np.append(pair_starts, len(pair_a))
    sizes = np.diff(bounds)
    pa_ext = np.append(pair_a, n_free)
    pb_ext = np.append(pair_b, n_free)
    batches = []
    if sizes.size == 0:
        return batches
    # widths on a ladder of ratio 2^(1/4): ~10% padding on average (powers of two padded ~40% on
    # ladybug-49), for a few more, still large, batches
    ladder = np.unique(np.ceil(2.0 ** (np.arange(4 * int(np.log2(sizes.max())) + 5) / 4.0)).astype(np.int64))
    width = ladder[np.searchsorted(ladder, sizes)]
    for w in np.unique(width).tolist():
        groups = np.flatnonzero(width == w)
        # (G, w) positions into the pair arrays; slots past a group's size point at the zero row
        pos = bounds[groups][:, None] + np.arange(w)
        pos = np.where(np.arange(w) < sizes[groups][:, None], pos, len(pair_a))
        per_chunk = max(1, _PAIRS_PER_CHUNK // w)
        for lo in range(0, len(groups), per_chunk):
            sl = slice(lo, lo + per_chunk)
            batches.append((groups[sl], pa_ext[pos[sl]], pb_ext[pos[sl]]))
    return batches


def _choose_solver(options, n: int, n_images: int, n_image_pairs: int) -> str:
    """The reduced-system solver: ``options.schur_solver`` or, for "auto", by size and fill (see above)."""
    if options.schur_solver != "auto":
        return options.schur_solver
    fill = (n_images + 2 * n_image_pairs) / max(n_images, 1) ** 2  # share of non-zero image-pair blocks
    if n <= options.dense_schur_max_params and (n <= _ALWAYS_DENSE or fill >= _DENSE_FILL):
        return "dense"
    if n <= options.sparse_schur_max_params and fill < _DENSE_FILL:
        return "sparse"
    return "pcg"


def _build_structure(problem: BundleAdjustmentProblem, options) -> _Structure:
    lay = problem.layout
    n = lay.n_cam
    cols_ext = np.where(lay.image_cols >= 0, lay.image_cols, n)
    if np.any(np.diff(problem.obs_image) < 0):
        raise ValueError("schur structure needs observations sorted by image (see solve_schur)")
    pc_all = lay.point_col[problem.obs_point]
    free = np.flatnonzero(pc_all >= 0)
    free_pc = pc_all[free]
    img_free = problem.obs_image[free]
    img_present, img_starts = np.unique(problem.obs_image, return_index=True)
    img_bounds = np.append(img_starts, problem.num_observations)
    free_img_bounds = np.searchsorted(img_free, np.append(img_present, np.iinfo(np.int64).max))

    # all pairs (a < b) of observations of the same point, generated with repeat/cumsum arithmetic
    by_point = np.argsort(free_pc, kind="stable")
    counts = np.bincount(free_pc, minlength=lay.n_free_points)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.arange(len(free)) - starts[free_pc[by_point]]
    n_rep = counts[free_pc[by_point]] - 1 - local
    pair_a = np.repeat(np.arange(len(free)), n_rep)
    offsets = np.arange(len(pair_a)) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep)
    pair_b = by_point[pair_a + 1 + offsets]
    pair_a = by_point[pair_a]
    n_img = len(problem.rotvecs)
    key = img_free[pair_a] * n_img + img_free[pair_b]
    order = np.argsort(key, kind="stable")
    pair_a, pair_b, key = pair_a[order], pair_b[order], key[order]
    uniq, pair_starts = np.unique(key, return_index=True)
    pair_img = np.stack([uniq // n_img, uniq % n_img], axis=1)
    n_image_pairs = len(pair_img)  # all of them, for the solver choice (as before they were dropped)
    # a block with an image whose columns are all held (local BA's constant images, the gauge image) lands
    # entirely in the dummy slot: those groups are dropped (in local BA most groups, e.g. 58 of 73)
    has_free = (cols_ext < n).any(axis=1)
    group_keep = has_free[pair_img[:, 0]] & has_free[pair_img[:, 1]]
    if not group_keep.all():
        sizes = np.diff(np.append(pair_starts, len(pair_a)))
        pair_keep = np.repeat(group_keep, sizes)
        pair_a, pair_b = pair_a[pair_keep], pair_b[pair_keep]
        kept_sizes = sizes[group_keep]
        pair_starts = np.cumsum(kept_sizes) - kept_sizes
        pair_img = pair_img[group_keep]
    pair_batches = _bucket_pair_groups(pair_a, pair_b, pair_starts, len(free))
    num_obs_pairs = len(pair_a)
    del pair_a, pair_b, key, order, offsets  # the batches hold what the iterations need of them
    # target (row, col) of every block entry: self blocks per present image, pair blocks, transposes
    c_self = cols_ext[img_present]
    c_a, c_b = cols_ext[pair_img[:, 0]], cols_ext[pair_img[:, 1]]
    rows = np.concatenate([_block_rows(c_self), _block_rows(c_a), _block_rows(c_b)])
    cols = np.concatenate([_block_cols(c_self), _block_cols(c_b), _block_cols(c_a)])
    solver = _choose_solver(options, n, len(img_present), n_image_pairs)
    structure = _Structure(
        n,
        cols_ext,
        free,
        free_pc,
        len(free) == problem.num_observations,
        img_free,
        lay.n_free_points,
        img_present,
        img_bounds,
        free_img_bounds,
        num_obs_pairs,
        pair_img,
        pair_batches,
        None,
        0,
        solver,
    )
    structure.present_has_free = has_free[img_present].tolist()
    structure.chunks = _make_chunks(problem.num_observations, img_bounds, free, len(free) == len(pc_all))
    if len(structure.chunks) > 1:  # each chunk's point sums over its own points only (see _linearise)
        structure.chunk_points = [
            np.unique(free_pc[chunk.free], return_inverse=True) for chunk in structure.chunks
        ]
    if solver == "dense":
        structure.scatter_index = rows * (n + 1) + cols
        structure.n_slots = (n + 1) ** 2
        return structure
    # sparse and pcg: slots are the unique non-dummy (row, col) keys in CSR order, with every diagonal entry
    # present (the damping goes there); dummy entries go to the last slot. For the sparse factorisation the
    # columns are renumbered once into a fill-reducing order, so each iteration factors as is.
    blocks = _camera_blocks(problem, n)
    position = np.arange(n + 1)
    if solver == "sparse":
        structure.perm = _fill_reducing_order(blocks, c_self, c_a, c_b, n)
        position[structure.perm] = np.arange(n)
    rows, cols = position[rows], position[cols]
    valid = (rows < n) & (cols < n)
    keys = np.concatenate(
        [rows[valid].astype(np.int64) * n + cols[valid], np.arange(n, dtype=np.int64) * (n + 1)]
    )
    # the distinct keys in CSR order (scipy's COO -> CSR sums duplicates in linear time; 1.5x faster than
    # np.unique here), then each key's slot among them
    pattern = sp.coo_matrix((np.ones(len(keys)), (keys // n, keys % n)), shape=(n, n)).tocsr()
    pattern.sort_indices()
    uniq_keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr)) * n + pattern.indices
    inverse = np.searchsorted(uniq_keys, keys)
    scatter = np.full(len(rows), len(uniq_keys), np.int64)
    scatter[valid] = inverse[: int(valid.sum())]
    structure.scatter_index = scatter
    structure.n_slots = len(uniq_keys) + 1
    structure.csr_indices = uniq_keys % n
    structure.csr_indptr = pattern.indptr.astype(np.int64)
    structure.diag_slots = inverse[int(valid.sum()) :]
    if solver == "pcg":
        _build_block_jacobi(structure, blocks, uniq_keys)
    return structure


def _make_chunks(m: int, img_bounds: np.ndarray, free_obs: np.ndarray, all_free: bool) -> list[_Chunk]:
    """Split the observations (sorted by image) into runs of whole images of about equal size."""
    k = m // _CHUNK_OBS
    count = 1 if k < 2 else min(_MAX_CHUNKS, 1 << (k.bit_length() - 1))
    # image boundaries nearest to the equal split points
    targets = np.arange(1, count) * (m / count)
    pos = np.clip(np.searchsorted(img_bounds, targets), 1, len(img_bounds) - 1)
    nearer_left = targets - img_bounds[pos - 1] < img_bounds[pos] - targets
    cut_images = np.unique(np.concatenate([[0], np.where(nearer_left, pos - 1, pos), [len(img_bounds) - 1]]))
    chunks = []
    for k_lo, k_hi in zip(cut_images[:-1].tolist(), cut_images[1:].tolist(), strict=True):
        lo, hi = int(img_bounds[k_lo]), int(img_bounds[k_hi])
        f_lo, f_hi = (int(v) for v in np.searchsorted(free_obs, [lo, hi]))
        local = None if all_free else free_obs[f_lo:f_hi] - lo
        chunks.append(_Chunk(slice(lo, hi), slice(f_lo, f_hi), local, slice(k_lo, k_hi)))
    return chunks


def _parallel(st: _Structure, fn, items: list) -> list:
    """``[fn(item) for item in items]``, the items dealt round-robin to the calling thread and the pool."""
    if st.pool is None or len(items) < 2:
        return [fn(item) for item in items]

    def run(indices: range) -> list:
        return [(i, fn(items[i])) for i in indices]

    parts = [range(w, len(items), st.workers) for w in range(min(st.workers, len(items)))]
    futures = [st.pool.submit(run, part) for part in parts[1:]]
    done = run(parts[0])
    for future in futures:
        done += future.result()
    return [result for _, result in sorted(done, key=lambda pair: pair[0])]


def _camera_blocks(problem: BundleAdjustmentProblem, n: int) -> np.ndarray:
    """(B, b) camera columns of each image's free pose and of each intrinsics group, padded with ``n``."""
    lay = problem.layout
    blocks = [
        np.sort(np.where(lay.pose_cols >= 0, lay.pose_cols, n), axis=1),
        np.sort(np.where(lay.intr_cols >= 0, lay.intr_cols, n), axis=1),
    ]
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=n) for b in blocks]
    index = np.vstack(padded)
    return index[(index < n).any(axis=1)]


def _fill_reducing_order(
    blocks: np.ndarray, c_self: np.ndarray, c_a: np.ndarray, c_b: np.ndarray, n: int
) -> np.ndarray:
    """Camera columns in a fill-reducing order: minimum degree on the graph of parameter blocks.

    Ordering the (B,) blocks instead of the n columns keeps each block's columns together (dense
    supernodes) and is computed once per solve, from the structure alone. SuperLU's multiple minimum degree
    on ``A + A^T`` (``permc_spec="MMD_AT_PLUS_A"``) orders a diagonally dominant matrix with the block
    graph's pattern; only its column permutation is kept.
    """
    block_of = np.full(n + 1, -1, np.int64)
    for k in range(blocks.shape[1]):
        block_of[blocks[:, k]] = np.arange(len(blocks))
    block_of[n] = -1
    # the distinct parameter blocks of each image (its pose, its intrinsics: usually 2 of its D columns),
    # then the block pairs of every non-zero image block of S (self blocks, both orientations of pairs)
    b_self, b_a, b_b = (_distinct_per_row(block_of[c]) for c in (c_self, c_a, c_b))
    br = np.concatenate([_block_rows(b_self), _block_rows(b_a), _block_rows(b_b)])
    bc = np.concatenate([_block_cols(b_self), _block_cols(b_b), _block_cols(b_a)])
    keep = (br >= 0) & (bc >= 0)
    nb = len(blocks)
    pattern = sp.csc_matrix((np.ones(int(keep.sum())), (br[keep], bc[keep])), shape=(nb, nb))
    pattern.sum_duplicates()
    pattern.data[:] = 1.0
    pattern = (pattern + sp.identity(nb, format="csc") * (nb + 1.0)).tocsc()
    order = spla.splu(
        pattern, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    ).perm_c
    block_order = np.argsort(order)  # perm_c[i] is the position of block i
    ordered = blocks[block_order].ravel()
    return ordered[ordered < n]


def _distinct_per_row(ids: np.ndarray) -> np.ndarray:
    """(R, w) the distinct non-negative values of each row of ``ids`` (R, D), padded with -1."""
    ids = np.sort(ids, axis=1)
    ids[:, 1:][ids[:, 1:] == ids[:, :-1]] = -1
    ids = -np.sort(-ids, axis=1)  # valid ids first
    width = max(1, int((ids >= 0).sum(axis=1).max(initial=0)))
    return ids[:, :width]


def _build_block_jacobi(structure: _Structure, index: np.ndarray, uniq_keys: np.ndarray) -> None:
    """Preconditioner blocks ``index`` (B, b) = each image's free pose and each intrinsics group's columns."""
    n = structure.n
    r = index[:, :, None]
    c = index[:, None, :]
    keys = r * n + c
    pos = np.searchsorted(uniq_keys, keys)
    pos = np.minimum(pos, len(uniq_keys) - 1)
    found = (r < n) & (c < n) & (uniq_keys[pos] == keys)
    structure.block_index = index
    structure.block_slots = np.where(found, pos, -1)


# Per-observation arrays are kept component-major, e.g. J_c as (2, D, M) and W^T as (3, D, M): every
# elementwise product then runs over a contiguous length-M axis. The (M, 2, D) layout had inner loops of
# length 3-9, where numpy's per-loop overhead dominated (measured ~3x slower on ladybug-49).


def _inv3(A: np.ndarray) -> np.ndarray:
    """Batched inverse of component-major (3, 3, N) matrices by the adjugate."""
    (a, b, c), (d, e, f), (g, h, i) = A
    co = np.empty_like(A)
    co[0, 0], co[0, 1], co[0, 2] = e * i - f * h, c * h - b * i, b * f - c * e
    co[1, 0], co[1, 1], co[1, 2] = f * g - d * i, a * i - c * g, c * d - a * f
    co[2, 0], co[2, 1], co[2, 2] = d * h - e * g, b * g - a * h, a * e - b * d
    det = a * co[0, 0] + b * co[1, 0] + c * co[2, 0]
    return co / det


def _point_blocks(Jp: np.ndarray, point: np.ndarray, n_points: int) -> np.ndarray:
    """``C = sum J_p^T J_p`` per point (3, 3, Np) from component-major Jp (2, 3, M): the 6 distinct entries of
    each symmetric block are summed per observation and binned, then mirrored."""
    C = np.empty((3, 3, n_points))
    prod = np.empty(Jp.shape[2])
    for i in range(3):
        for j in range(i, 3):
            np.multiply(Jp[0, i], Jp[0, j], out=prod)
            prod += Jp[1, i] * Jp[1, j]
            C[i, j] = np.bincount(point, weights=prod, minlength=n_points)
            if j != i:
                C[j, i] = C[i, j]
    return C


def _bincount_rows(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sum (..., M) values into (..., size) bins given by index (M,)."""
    flat = values.reshape(-1, values.shape[-1])
    out = np.stack([np.bincount(index, weights=row, minlength=size) for row in flat])
    return out.reshape(values.shape[:-1] + (size,))


@dataclass
class _Linearisation:
    """Per-iteration quantities that do not depend on the damping (component-major layouts)."""

    cost: float
    U_img: np.ndarray  # (present images, D, D) sum of J_c^T J_c
    g_cam: np.ndarray  # (n,)
    C: np.ndarray  # (3, 3, Np) point blocks J_p^T J_p
    g_pt: np.ndarray  # (3, Np)
    Jc: list[np.ndarray]  # per chunk (2, D, Mf_chunk) camera Jacobian of each observation of a free point
    Jp: list[np.ndarray]  # per chunk (2, 3, Mf_chunk) point Jacobian of each observation of a free point
    diag_cam: np.ndarray  # (n,) diag(J^T J) over camera columns
    grad_max: float


def _evaluate(
    problem: BundleAdjustmentProblem,
    st: _Structure,
    options,
    *,
    jacobians: bool,
    camera_jacobians: bool = True,
) -> list:
    """``evaluate`` of every chunk of observations (in parallel threads); the cost is the sum of theirs."""
    tangent = st.rot_cols is not None

    def one(chunk: _Chunk):
        return evaluate(
            problem,
            options.loss,
            options.loss_scale_px,
            jacobians=jacobians,
            zero_fixed_columns=False,
            observations=None if len(st.chunks) == 1 else chunk.obs,
            rotation_tangent=tangent,
            rotation_pivots=st.pivots,
            camera_jacobians=camera_jacobians,
        )

    return _parallel(st, one, st.chunks)


def _total_cost(evaluations: list) -> float:
    return float(sum(ev.cost for ev in evaluations))  # chunk order: the same sum for any thread count


def _linearise(problem: BundleAdjustmentProblem, st: _Structure, evaluations: list) -> _Linearisation:
    n = st.n
    d = evaluations[0].J_cam.shape[2]
    U_img = np.zeros((len(st.img_present), d, d))
    g_img = np.zeros((len(st.img_present), d))

    def one(item):
        chunk, ev, points = item
        Jc = np.ascontiguousarray(ev.J_cam.transpose(1, 2, 0))  # (2, D, m)
        Jp = np.ascontiguousarray(ev.J_point.transpose(1, 2, 0))  # (2, 3, m)
        r = np.ascontiguousarray(ev.residuals.T)  # (2, m)
        # the evaluation's Jacobians are copied: freed now, chunk by chunk, not after every chunk is copied
        # (both sets at once were the peak of a global BA: 1000-image merge 3.72 -> 3.47 GiB)
        ev.J_cam = ev.J_point = None
        # U = sum J_c^T J_c and g = sum J_c^T r per image: GEMMs on contiguous slices (obs sorted by image)
        bounds = (st.img_bounds[chunk.images.start : chunk.images.stop + 1] - chunk.obs.start).tolist()
        for k, lo, hi in zip(
            range(chunk.images.start, chunk.images.stop), bounds[:-1], bounds[1:], strict=True
        ):
            if not st.present_has_free[k]:
                continue
            X0, X1 = Jc[0, :, lo:hi], Jc[1, :, lo:hi]
            U_img[k] = X0 @ X0.T + X1 @ X1.T
            g_img[k] = X0 @ r[0, lo:hi] + X1 @ r[1, lo:hi]
        if chunk.free_local is not None:
            Jc, Jp, r = Jc[:, :, chunk.free_local], Jp[:, :, chunk.free_local], r[:, chunk.free_local]
        return (Jc, Jp, *_chunk_point_sums(st, chunk, Jp, r, points))

    chunk_points = st.chunk_points or [None] * len(st.chunks)
    parts = _parallel(st, one, list(zip(st.chunks, evaluations, chunk_points, strict=True)))
    C, g_pt = _sum_point_parts(st, [part[2:] for part in parts])
    cols_img = st.cols_ext[st.img_present].ravel()
    g_cam = np.bincount(cols_img, weights=g_img.ravel(), minlength=n + 1)[:n]
    diag_cam = np.bincount(cols_img, weights=np.einsum("kii->ki", U_img).ravel(), minlength=n + 1)[:n]
    grad_max = max(float(np.abs(g_cam).max(initial=0.0)), float(np.abs(g_pt).max(initial=0.0)))
    return _Linearisation(
        _total_cost(evaluations),
        U_img,
        g_cam,
        C,
        g_pt,
        [part[0] for part in parts],
        [part[1] for part in parts],
        diag_cam,
        grad_max,
    )


def _chunk_point_sums(st: _Structure, chunk: _Chunk, Jp: np.ndarray, r: np.ndarray, points) -> tuple:
    """One chunk's point blocks ``J_p^T J_p`` (3, 3, P) and gradients ``J_p^T r`` (3, P) from its free
    observations' component-major ``Jp`` (2, 3, m) and residuals ``r`` (2, m), over the chunk's own points
    (``points``: (sorted point indices, each observation's position there), or None for all points).

    Per chunk's own points: a (3, 3, all points) array per chunk made the chunks' sums, held together, cost
    8 x 96 bytes per point.

    Returns:
        (C, g, the chunk's point indices or None).
    """
    present, point = points if points is not None else (None, st.free_pc[chunk.free])
    size = st.n_points if present is None else len(present)
    return _point_blocks(Jp, point, size), _bincount_rows(point, Jp[0] * r[0] + Jp[1] * r[1], size), present


def _sum_point_parts(st: _Structure, parts: list) -> tuple[np.ndarray, np.ndarray]:
    """The chunks' ``_chunk_point_sums`` added up: (C (3, 3, Np), g (3, Np)), in chunk order (the same sums
    for any thread count; adding a point's absent 0.0 changes nothing)."""
    if len(parts) == 1:
        return parts[0][0], parts[0][1]
    C, g = np.zeros((3, 3, st.n_points)), np.zeros((3, st.n_points))
    for C_part, g_part, present in parts:
        C[:, :, present] += C_part
        g[:, present] += g_part
    return C, g


def _point_steps(st: _Structure, evaluations: list, mu: float) -> np.ndarray:
    """(3, Np) damped Gauss-Newton steps of the free points with the cameras held, from the point
    Jacobians and residuals of ``evaluations``: ``-(C + mu D_p)^-1 J_p^T r`` per point.

    These are the embedded point iterations of Jeong et al. ("Pushing the envelope of modern methods for
    bundle adjustment", PAMI 2012): after each camera step the points, which are independent once the
    cameras are held, take one more Newton step of their own. A linearised LM step moves a point along a
    straight line although its projection is non-linear in depth; on the 200-camera synthetic ring the
    joint iterations then converged linearly (a constant actual-to-predicted ratio of ~0.69 at almost no
    damping): from a 0.01 rad / 0.05 start 29 LM iterations without these steps, 11 with them, to the same
    cost (linear loss); from 0.05 rad, 100 without did not reach the cost 22 reach with them.
    Steps that are not finite (a degenerate point) are zero.
    """

    def one(item):
        chunk, ev, points = item
        Jp = np.ascontiguousarray(ev.J_point.transpose(1, 2, 0))  # (2, 3, m)
        r = np.ascontiguousarray(ev.residuals.T)  # (2, m)
        if chunk.free_local is not None:
            Jp, r = Jp[:, :, chunk.free_local], r[:, chunk.free_local]
        return _chunk_point_sums(st, chunk, Jp, r, points)

    chunk_points = st.chunk_points or [None] * len(st.chunks)
    C, g = _sum_point_parts(
        st, _parallel(st, one, list(zip(st.chunks, evaluations, chunk_points, strict=True)))
    )
    dp = -_blocks_times(_inv3(_damped_point_blocks(C, mu)), g)
    dp[:, ~np.isfinite(dp).all(axis=0)] = 0.0
    return dp


def _point_diag(C: np.ndarray) -> np.ndarray:
    """(3, Np) clamped diagonal of the point blocks C (3, 3, Np) (the LM scaling D_p)."""
    return np.clip(np.stack([C[0, 0], C[1, 1], C[2, 2]]), _MIN_DIAG, _MAX_DIAG)


def _damped_point_blocks(C: np.ndarray, mu: float) -> np.ndarray:
    """``C + mu D_p`` (3, 3, Np), a new array: the point blocks with the LM damping on their diagonals."""
    damped = C.copy()
    diag = _point_diag(C)
    for k in range(3):
        damped[k, k] += mu * diag[k]
    return damped


def _blocks_times(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-point products ``A_i v_i`` (3, Np) of component-major (3, 3, Np) blocks and (3, Np) vectors."""
    return A[:, 0] * v[0] + A[:, 1] * v[1] + A[:, 2] * v[2]


def _chol3(A: np.ndarray) -> tuple[np.ndarray, ...]:
    """Lower Cholesky factor of component-major SPD (3, 3, N) blocks: (l00, l10, l20, l11, l21, l22)."""
    tiny = 1e-300  # a non-positive pivot gives inf/nan, which the caller treats as a failed step
    l00 = np.sqrt(np.maximum(A[0, 0], tiny))
    l10, l20 = A[1, 0] / l00, A[2, 0] / l00
    l11 = np.sqrt(np.maximum(A[1, 1] - l10 * l10, tiny))
    l21 = (A[2, 1] - l20 * l10) / l11
    l22 = np.sqrt(np.maximum(A[2, 2] - l20 * l20 - l21 * l21, tiny))
    return l00, l10, l20, l11, l21, l22


def _forward3(L: tuple[np.ndarray, ...], B: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = L^-1 B`` for per-column factors L (each (N,)) and component-major B (3, ..., N)."""
    l00, l10, l20, l11, l21, l22 = L
    np.divide(B[0], l00, out=out[0])
    np.divide(B[1] - l10 * out[0], l11, out=out[1])
    np.divide(B[2] - l20 * out[0] - l21 * out[1], l22, out=out[2])
    return out


def _pair_products(
    Z_rows: np.ndarray, batches: list, pair_blocks: np.ndarray, buffers: dict, key: str
) -> None:
    """Off-diagonal blocks ``sum_shared points Z_a^T Z_b`` of the given pair batches into ``pair_blocks``.

    The gathers go into a buffer reused across iterations (fresh multi-MB arrays cost page faults every
    time); ``key`` names the buffer, one per thread. numpy releases the GIL in ``take`` and ``matmul``, so
    parts of the batch list run in parallel threads.
    """
    d = Z_rows.shape[2]
    for groups, pa, pb in batches:
        size = pa.size * 3 * d
        buf = buffers.get(key)
        if buf is None or buf.shape[1] < size:
            buf = buffers[key] = np.empty((2, size))
        X = np.take(Z_rows, pa, axis=0, out=buf[0, :size].reshape(pa.shape + (3, d)))
        Y = np.take(Z_rows, pb, axis=0, out=buf[1, :size].reshape(pb.shape + (3, d)))
        X = X.reshape(len(groups), -1, d)  # (G, 3k, D)
        Y = Y.reshape(len(groups), -1, d)
        pair_blocks[groups] = np.matmul(X.transpose(0, 2, 1), Y)


def _split_batches(batches: list, parts: int) -> list[list]:
    """Greedy split of the pair batches into ``parts`` lists of about equal padded size (largest first)."""
    out: list[list] = [[] for _ in range(parts)]
    load = [0] * parts
    for batch in sorted(batches, key=lambda b: -b[1].size):
        i = load.index(min(load))
        out[i].append(batch)
        load[i] += batch[1].size
    return [part for part in out if part] or [[]]


def _reduced_system(problem: BundleAdjustmentProblem, st: _Structure, lin: _Linearisation, mu: float):
    """Damped Schur complement: (slot values of S, rhs -v, C~^-1 (3, 3, Np)).

    With ``C~ = L L^T`` per point, ``W C~^-1 W^T = Z^T Z`` for ``Z = L^-1 W^T`` (3 x D per observation):
    every block of S is a product of rows of the single array Z (one gather source instead of two, and a
    triangular solve instead of a 3x3 product per observation).
    """
    C_damped = _damped_point_blocks(lin.C, mu)
    C_inv = _inv3(C_damped)
    L = _chol3(C_damped)
    d = lin.Jc[0].shape[1]
    mf = sum(Jc.shape[2] for Jc in lin.Jc)
    # Z row-major (Mf + 1, 3, D) with a final zero row (the padding target), so that the rows of one image
    # or one group are a contiguous (3k, D) matrix: one GEMM each
    # (allocated per call, not kept between iterations: it is the solve's largest array, 3 D doubles an
    # observation, and the next candidate's evaluation, which runs beside the kept linearisation, needs none)
    Z_rows = np.empty((mf + 1, 3, d))
    Z_rows[mf] = 0.0  # every other row is written below (the chunks' free observations cover them all)
    # rhs: -(g_c - sum W C~^-1 g_p) = -(g_c - sum Z^T L^-1 g_p), with h = L^-1 g_p of each observation's point
    h_pt = np.ascontiguousarray(_forward3(L, lin.g_pt, np.empty_like(lin.g_pt)).T)  # (Np, 3)
    self_img = lin.U_img.copy()
    v_img = np.zeros((len(self_img), d))

    def one(item):
        chunk, Jc, Jp = item
        m = Jc.shape[2]
        point = st.free_pc[chunk.free]
        L_obs = tuple(np.take(f, point) for f in L)
        # Z = L^-1 W^T = (L^-1 J_p^T) J_c per observation: a triangular solve on the 3x2 J_p^T, then a 3x2 by
        # 2xD product (W^T itself is never formed)
        Q = _forward3(L_obs, Jp.transpose(1, 0, 2), np.empty((3, 2, m)))  # (3, 2, m)
        Zt = np.empty((3, d, m))
        tmp = np.empty((d, m))
        for i in range(3):
            np.multiply(Jc[0], Q[i, 0], out=Zt[i])
            Zt[i] += np.multiply(Jc[1], Q[i, 1], out=tmp)
        f0 = chunk.free.start
        Z_rows[f0 : chunk.free.stop] = Zt.transpose(2, 0, 1)
        h_rows = np.take(h_pt, point, axis=0)  # (m, 3)
        # self blocks per image: U - Z^T Z over the image's observations of free points, and the image's
        # share Z^T h of the rhs, from the same contiguous rows
        bounds = st.free_img_bounds[chunk.images.start : chunk.images.stop + 1].tolist()
        for k, lo, hi in zip(
            range(chunk.images.start, chunk.images.stop), bounds[:-1], bounds[1:], strict=True
        ):
            if hi > lo and st.present_has_free[k]:
                Zk = Z_rows[lo:hi].reshape(-1, d)
                self_img[k] -= Zk.T @ Zk
                v_img[k] = h_rows[lo - f0 : hi - f0].ravel() @ Zk

    _parallel(st, one, list(zip(st.chunks, lin.Jc, lin.Jp, strict=True)))
    # off-diagonal blocks per image pair: sum over shared points of Z_a^T Z_b, batched GEMMs per bucket;
    # the gathers go into buffers reused across iterations (fresh 10 MB arrays cost page faults each time)
    pair_blocks = np.empty((len(st.pair_img), d, d))
    parts = st.pair_parts or [st.pair_batches]
    _parallel(
        st,
        lambda item: _pair_products(Z_rows, item[1], pair_blocks, st.buffers, f"gather{item[0]}"),
        list(enumerate(parts)),
    )
    values = np.concatenate([self_img.ravel(), -pair_blocks.ravel(), -pair_blocks.transpose(0, 2, 1).ravel()])
    S = np.bincount(st.scatter_index, weights=values, minlength=st.n_slots)

    cols_img = st.cols_ext[st.img_present].ravel()
    v = lin.g_cam - np.bincount(cols_img, weights=v_img.ravel(), minlength=st.n + 1)[: st.n]
    return S, -v, C_inv


def _solve_dense(st: _Structure, S_slots: np.ndarray, rhs: np.ndarray, damp: np.ndarray) -> np.ndarray | None:
    n = st.n
    S = S_slots.reshape(n + 1, n + 1)[:n, :n]
    S[np.arange(n), np.arange(n)] += damp
    try:
        factor = scipy.linalg.cho_factor(S, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    return scipy.linalg.cho_solve(factor, rhs, check_finite=False)


def _solve_sparse(
    st: _Structure, S_slots: np.ndarray, rhs: np.ndarray, damp: np.ndarray
) -> np.ndarray | None:
    """Sparse direct solve of the reduced system in the fill-reducing order ``st.perm``.

    SuperLU with diagonal pivots only (``diag_pivot_thresh=0``) on a symmetric matrix is an ``L D L^T``
    factorisation; a non-positive pivot means the damped system is not positive definite (failed step).
    """
    n = st.n
    data = S_slots[:-1]
    data[st.diag_slots] += damp[st.perm]
    # S is symmetric, so its CSR arrays are also its CSC arrays (the layout SuperLU takes)
    S = sp.csc_matrix((data, st.csr_indices, st.csr_indptr), shape=(n, n))
    try:
        lu = spla.splu(S, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    except RuntimeError:  # exactly singular
        return None
    if not np.all(lu.U.diagonal() > 0):
        return None
    dc = np.empty(n)
    dc[st.perm] = lu.solve(rhs[st.perm])
    return dc


def _solve_pcg(
    st: _Structure, S_slots: np.ndarray, rhs: np.ndarray, damp: np.ndarray, tol: float, max_iter: int
) -> np.ndarray | None:
    """Preconditioned conjugate gradients on the sparse reduced system (block-Jacobi preconditioner)."""
    n = st.n
    S_slots[:-1][st.diag_slots] += damp
    S = sp.csr_matrix((S_slots[:-1], st.csr_indices, st.csr_indptr), shape=(n, n))
    data = np.append(S_slots[:-1], 0.0)
    blocks = data[st.block_slots]
    idx = st.block_index
    eye = np.eye(idx.shape[1])[None]
    blocks = np.where((idx[:, :, None] < n) & (idx[:, None, :] < n), blocks, eye)  # pad with identity
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
    S, rhs, C_inv = _reduced_system(problem, st, lin, mu)
    damp = mu * np.clip(lin.diag_cam, _MIN_DIAG, _MAX_DIAG)
    if st.n == 0:
        dc = np.zeros(0)
    elif st.solver == "dense":
        dc = _solve_dense(st, S, rhs, damp)
    elif st.solver == "sparse":
        dc = _solve_sparse(st, S, rhs, damp)
    else:
        dc = _solve_pcg(st, S, rhs, damp, options.cg_tolerance, options.cg_max_iterations)
    if dc is None or not np.all(np.isfinite(dc)):
        return None
    dc_ext = np.append(dc, 0.0)

    def one(item):
        chunk, Jc, Jp = item
        dcs = np.take(dc_ext, np.take(st.cols_ext.T, st.free_img[chunk.free], axis=1))  # (D, m)
        jdc = np.einsum("rdm,dm->rm", Jc, dcs)  # (2, m) J_c dc per observation
        return Jp[0] * jdc[0] + Jp[1] * jdc[1]  # (3, m) W^T dc = J_p^T J_c dc

    wt_dc = _parallel(st, one, list(zip(st.chunks, lin.Jc, lin.Jp, strict=True)))
    wt_dc = wt_dc[0] if len(wt_dc) == 1 else np.concatenate(wt_dc, axis=1)
    rhs_p = lin.g_pt + _bincount_rows(st.free_pc, wt_dc, st.n_points)  # (3, Np)
    dp = -_blocks_times(C_inv, rhs_p)  # (3, Np)
    delta = np.concatenate([dc, dp.T.ravel()])
    # predicted decrease of the Gauss-Newton model: 0.5 dx^T (mu D dx - g)
    g = np.concatenate([lin.g_cam, lin.g_pt.T.ravel()])
    D = np.concatenate([damp, mu * _point_diag(lin.C).T.ravel()])
    predicted = 0.5 * float(delta @ (D * delta - g))
    return delta, predicted


def solve_schur(problem: BundleAdjustmentProblem, options, progress=None) -> dict:
    """Levenberg-Marquardt with Schur elimination of the points; updates ``problem`` in place."""
    t0 = time.perf_counter()
    user_problem = problem
    problem = problem.sorted_by_image()  # contiguous per-image slices: GEMMs on views, no gathers
    st = _build_structure(problem, options)
    if _ROTATION_TANGENT:
        st.rot_cols = rotation_tangent_columns(problem)
        if st.rot_cols is not None:
            st.trans_cols = carried_translation_columns(problem)
            st.pivots = observed_centroids_in_cam(problem)
            st.pivot_rows = st.pivots[problem.pose_free[:, :3].all(axis=1)]
    x = problem.get_x()
    if x.size == 0:
        return {"success": True, "reason": "no free parameters", "iterations": 0}
    threads = options.num_threads or thread_budget()
    st.workers = max(1, min(threads, len(st.chunks) // _CHUNKS_PER_THREAD))
    if st.workers > 1:  # small problems stay on the calling thread
        st.pair_parts = _split_batches(st.pair_batches, st.workers)
        st.pool = ThreadPoolExecutor(max_workers=st.workers - 1)
    try:
        return _lm_loop(problem, user_problem, st, x, options, progress, t0)
    finally:
        if st.pool is not None:
            st.pool.shutdown()


def _lm_loop(problem, user_problem, st: _Structure, x: np.ndarray, options, progress, t0: float) -> dict:
    """The Levenberg-Marquardt iterations of ``solve_schur`` (Nielsen/Ceres damping schedule)."""
    evaluations = _evaluate(problem, st, options, jacobians=True)
    lin = _linearise(problem, st, evaluations)
    # the cost and mean error at the start and at the returned parameters, so the caller needs no
    # evaluations of its own
    costs = {"initial_cost": lin.cost, "initial_mean_error_px": _mean_error(evaluations)}
    cost, mean_error = costs["initial_cost"], costs["initial_mean_error_px"]
    mu, nu = 1e-4, 2.0  # Ceres: initial trust region radius 1e4
    reason, iterations = "maximum iterations reached", 0
    logger.debug(
        "schur BA: %d camera columns (%s), %d points, %d pairs, setup %.3f s",
        st.n,
        st.solver,
        st.n_points,
        st.num_obs_pairs,
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
        x_new = (
            x + delta
            if st.rot_cols is None
            else compose_rotation_steps(x, delta, st.rot_cols, st.trans_cols, st.pivot_rows)
        )
        problem.set_x(x_new)
        # most LM steps are accepted, so the Jacobian is evaluated with the cost, unless the model predicts a
        # decrease below the function tolerance: that step is either the last one or rejected, and needs
        # the cost alone
        cost = lin.cost
        small = predicted <= options.function_tolerance * cost
        if len(st.chunks) >= _REBUILD_REJECTED_MIN_CHUNKS:
            # large problems: the candidate is evaluated without the current linearisation beside it (two
            # sets of Jacobians at once were a quarter of the solve's peak memory); a rejected step rebuilds
            # it at x, bitwise the same (the evaluation is deterministic), at the cost of one evaluation
            lin = None
        # with point steps the candidate needs only its point Jacobian (for those steps)
        point_steps = options.point_steps and not small and st.n_points > 0
        ev_new = _evaluate(problem, st, options, jacobians=not small, camera_jacobians=not point_steps)
        new_cost = _total_cost(ev_new)
        if point_steps and np.isfinite(new_cost):
            x_new, ev_new, new_cost = _try_point_steps(problem, st, options, x_new, ev_new, new_cost, mu)
        actual = cost - new_cost
        rho = actual / predicted if predicted > 0 else -1.0
        report(progress, iterations, options.max_iterations, f"cost {min(new_cost, cost):.6g}")
        logger.debug(
            "LM iteration %d: cost %.6g -> %.6g, predicted decrease %.4g, rho %.3f, mu %.3g",
            iterations,
            cost,
            new_cost,
            predicted,
            rho,
            mu,
        )
        accepted = rho > 1e-3 and np.isfinite(new_cost)
        # Ceres' order: the function tolerance is tested on every candidate, before the step's acceptance,
        # so a rejected step whose cost change is that small ends the solve too (at the better of the two)
        if abs(actual) <= options.function_tolerance * cost:
            # the reason's relative change is against the cost at x, before an accepted step replaces it
            reason = f"function tolerance reached (relative change {actual / max(cost, 1e-300):.3g})"
            if accepted:
                x = x_new
                cost, mean_error = new_cost, _mean_error(ev_new)
            break
        if accepted:
            x = x_new
            cost, mean_error = new_cost, _mean_error(ev_new)
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            if ev_new[0].J_cam is None:  # evaluated for the cost (small) or the point steps only
                ev_new = _evaluate(problem, st, options, jacobians=True)
            lin = _linearise(problem, st, ev_new)
            ev_new = None  # its residuals are not needed while the next candidate is evaluated
        else:
            problem.set_x(x)
            mu *= nu
            nu *= 2.0
            if mu > 1e16:
                reason = "damping diverged; no further decrease possible"
                break
            if lin is None:
                ev_new = None
                lin = _linearise(problem, st, _evaluate(problem, st, options, jacobians=True))
    user_problem.set_x(x)
    return {
        "success": True,
        "reason": reason,
        "iterations": iterations,
        **costs,
        "final_cost": cost,
        "final_mean_error_px": mean_error,
    }


def _try_point_steps(
    problem, st: _Structure, options, x_new: np.ndarray, ev_new: list, new_cost: float, mu: float
):
    """Follow the candidate ``x_new`` (evaluated with its point Jacobian only, as ``ev_new``) by
    ``_point_steps``; keep them when they lower the cost. The problem is left at the returned parameters.

    Returns:
        (parameters, their evaluations (with every Jacobian when the steps were kept, else ``ev_new``
        without its Jacobians), their cost).
    """
    dp = _point_steps(st, ev_new, mu)
    for ev in ev_new:  # one set of Jacobians at a time (see _lm_loop)
        ev.J_point = None
    x_pt = x_new.copy()
    x_pt[st.n :] += dp.T.ravel()
    problem.set_x(x_pt)
    ev_pt = _evaluate(problem, st, options, jacobians=True)
    cost_pt = _total_cost(ev_pt)
    if cost_pt <= new_cost:
        return x_pt, ev_pt, cost_pt
    del ev_pt
    problem.set_x(x_new)
    return x_new, ev_new, new_cost


def _mean_error(evaluations: list) -> float:
    """Mean plain reprojection error (px) over the chunks' evaluations."""
    total = sum(float(ev.errors_px.sum()) for ev in evaluations)
    return total / max(1, sum(len(ev.errors_px) for ev in evaluations))
