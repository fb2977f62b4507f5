"""Descriptor matching: brute force (BLAS matrix product), inverted file (IVF) or FLANN, Lowe ratio
test, mutual check.

Brute force computes all descriptor dot products of a pair with one float32 matrix product per row
block, then takes row and column extrema, so a pair costs about one GEMM: it measured ~5x faster
than ``cv2.BFMatcher.knnMatch`` in both directions on 8192 SIFT features (see
benchmarks/results/matching.md). Binary descriptors use the same product on unpacked bits:
``hamming(a, b) = |a| + |b| - 2 a.b``.

The inverted file (the idea of FAISS ``IndexIVFFlat``; Jegou, Douze & Schmid 2011, sec. III) shares
one coarse k-means quantiser between all images of a :func:`match_pairs` call. Each image's
descriptors are bucketed once by their nearest centre; a query is then compared only with the other
image's descriptors in its ``ivf.num_probes`` nearest cells (one small matrix product per cell), so a
pair of 12k-descriptor images costs ~1/10 of the exhaustive product while ~99 % of the exact
ratio-test matches are kept with 64 cells and 6 probes (fountain-P11); the default 4 probes keep ~98 %
(-1.7 % matches against 6 probes) at 30 % less matching time.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

import cv2
import numpy as np

from geomvision.errors import InputError, check_choice, check_range
from geomvision.features.store import descriptor_source, features_hash, load_descriptors
from geomvision.progress import ProgressCallback
from geomvision.runtime.rng import as_rng
from geomvision.runtime.runner import Shared, Stage, StageRunner
from geomvision.scene.types import Features, Matches

logger = logging.getLogger(__name__)

MatcherName = Literal["bruteforce", "ivf", "flann"]
MATCHERS: tuple[str, ...] = get_args(MatcherName)
_CACHE_VERSION = 2
#: Rows per matrix-product block: the BLOCK x N2 float32 scores stay in cache for the extremum passes
#: (256 measured fastest, 1.6x faster than 2048, for 12k x 12k SIFT on one core).
_BLOCK_ROWS = 256
#: Images per side of a tile of the image x image grid: a task's pairs share few distinct images, so each
#: image is normalised (and bucketed) once per task. At least _TILE; larger (up to _MAX_TILE) when the grid
#: would otherwise give more than about _TILES_PER_WORKER tasks a worker: on Dask each task costs ~9 ms of
#: engine time, 15 % of a 16-pair templeRing tile (3.9 ms a pair), while a worker needs only a dozen or so
#: tasks to balance the load.
_TILE = 4
_MAX_TILE = 8
_TILES_PER_WORKER = 16
#: Tiles with fewer pairs (sparse retrieval pairs: ~1.5 per tile) are packed together, in grid order, up to
#: this many pairs per task, so the per-task cost of the engine is paid per 16 pairs, not per pair or two.
_MIN_PAIRS_PER_TASK = 16


@dataclass(frozen=True, kw_only=True)
class IvfOptions:
    """Options of the inverted file (:func:`train_ivf_quantiser` and the per-cell search).

    Attributes:
        num_cells: k-means cells of the coarse quantiser shared by the images of a call.
        num_probes: cells searched per query descriptor (its nearest centres); more probes, higher
            recall of the exact nearest neighbour, slower.
        min_num_features: pairs where either image has fewer descriptors are matched by exact brute
            force (the per-cell overhead does not pay off on small sets).
        descriptors_per_cell: fewer cells for smaller images: at most one cell per this many descriptors
            of the median image (probes scaled alike, at least 3), so cells keep enough members for the
            per-cell products to pay off; 0 keeps ``num_cells`` always. On templeRing (~1.6k RootSIFT per
            image) 16 cells / 3 probes match 2x faster than exact search and keep 97 % of its matches;
            on fountain-P11 (12k) the 64 cells / 4 probes stay.
    """

    num_cells: int = 64
    num_probes: int = 4
    min_num_features: int = 1024
    descriptors_per_cell: int = 100

    def __post_init__(self) -> None:
        if self.num_cells < 1 or not 1 <= self.num_probes <= self.num_cells:
            raise InputError(
                f"need num_cells >= 1 and 1 <= num_probes <= num_cells, got "
                f"{self.num_cells} cells, {self.num_probes} probes"
            )


@dataclass(frozen=True, kw_only=True)
class MatchingOptions:
    """Options of :func:`match_pairs`.

    Attributes:
        method: "ivf" (approximate inverted-file search on float descriptors; pairs where either
            image has fewer than ``ivf.min_num_features`` descriptors, and binary descriptors, are
            matched exactly), "bruteforce" (exact) or "flann" (approximate KD-tree / LSH).
        ratio_threshold: Lowe's ratio test, keep if d1 < ratio * d2 (1.0 disables it).
        mutual: keep only mutual nearest neighbours (cross check).
        max_distance: optional cap on the descriptor distance; float descriptors are L2-normalised
            before matching, so it is in unit-descriptor units (COLMAP uses 0.7); binary: bits.
        min_num_matches: pairs with fewer matches return empty matches, so geometric verification
            rejects them at once. A pre-verification filter: on templeRing (1081 exhaustive pairs,
            ~1.6k SIFT each) 100 skips verifying 834 mostly hopeless pairs and drops the pairs whose few
            inliers (< 50) make one mislocalised match cost 2 % precision.
        pca_dims: float descriptors only: search neighbours on the pair's descriptors projected onto
            their top ``pca_dims`` principal components (re-normalised), a ``128 / pca_dims``-fold
            cheaper matrix product; the search becomes approximate (48 dims kept ~98 % of the exact
            matches of 12k RootSIFT features on fountain-P11). Reported distances stay exact.
            Used by "bruteforce" only.
        ivf: the inverted file of the "ivf" method.
    """

    method: MatcherName = "ivf"
    ratio_threshold: float = 0.8
    mutual: bool = True
    max_distance: float | None = None
    min_num_matches: int = 0
    pca_dims: int | None = None
    ivf: IvfOptions = field(default_factory=IvfOptions)

    def __post_init__(self) -> None:
        check_choice("matcher", self.method, MATCHERS)
        check_range("ratio_threshold", self.ratio_threshold, 0, 1, low_open=True)
        if self.pca_dims is not None and self.pca_dims < 2:
            raise InputError(f"pca_dims must be >= 2 or None, got {self.pca_dims}")


# --- descriptor preparation ---------------------------------------------------------------------------


def _is_binary(descriptors: np.ndarray) -> bool:
    return descriptors.dtype == np.uint8


@dataclass
class _Prepared:
    """Descriptors ready for the matrix product: rows (N, D) float32 and squared norms (N,)."""

    rows: np.ndarray
    sq_norms: np.ndarray
    binary: bool


def _prepare(descriptors: np.ndarray) -> _Prepared:
    if _is_binary(descriptors):
        bits = np.unpackbits(descriptors, axis=1).astype(np.float32)
        return _Prepared(bits, bits.sum(axis=1), True)
    rows = np.asarray(descriptors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.maximum(norms, 1e-12)
    return _Prepared(np.ascontiguousarray(rows), np.ones(len(rows), np.float32), False)


def _pca_project(a: _Prepared, b: _Prepared, dims: int) -> tuple[_Prepared, _Prepared]:
    """Project both unit-row sets onto the top ``dims`` principal axes of their union, re-normalised.

    Cosine order in the subspace approximates cosine order in the full space because most descriptor
    variance lives in few directions (as in PCA-SIFT, Ke & Sukthankar 2004).
    """
    rows = np.concatenate([a.rows, b.rows])
    centred = rows - rows.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)

    def project(p: _Prepared) -> _Prepared:
        z = p.rows @ basis
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return _Prepared(np.ascontiguousarray(z), np.ones(len(z), np.float32), False)

    return project(a), project(b)


# --- inverted file ------------------------------------------------------------------------------------


def train_ivf_quantiser(
    descriptor_sets: Iterable[np.ndarray],
    num_cells: int,
    *,
    max_samples: int = 10_000,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Coarse quantiser of the inverted file: k-means centres of a sample of unit descriptors.

    Args:
        descriptor_sets: (N_k, D) float descriptors of each image (they are L2-normalised first), or
            :class:`~geomvision.features.store.DescriptorFile` references (read one at a time).
        num_cells: number of centres (fewer if there are fewer samples).
        max_samples: k-means runs on at most this many randomly drawn descriptors.
        rng: seed of the sample and of the k-means++ seeding.

    Returns:
        (num_cells, D) float32 centres.
    """
    from geomvision.features.pairs import train_vocabulary

    rng = as_rng(rng)
    sets = [d for d in descriptor_sets if len(d)]
    if not sets:
        raise InputError("no descriptors to train the IVF quantiser on")
    # Draw the sample before reading and normalising: only the sampled rows are converted, and stored
    # descriptors are read one image at a time (images without a sampled row are not read at all).
    sizes = np.array([len(d) for d in sets])
    total = int(sizes.sum())
    picked = np.sort(rng.choice(total, min(max_samples, total), replace=False))
    which = np.searchsorted(np.cumsum(sizes), picked, side="right")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sample = np.concatenate(
        [
            np.asarray(load_descriptors(sets[s])[picked[which == s] - offsets[s]], dtype=np.float32)
            if np.any(which == s)
            else np.zeros((0, sets[s].shape[1]), np.float32)
            for s in range(len(sets))
        ]
    )
    # Ten Lloyd iterations: cells only route the search, their exact placement matters little.
    return train_vocabulary(
        [_prepare(sample).rows], num_cells, max_samples=len(sample), num_iterations=10, rng=rng
    )


@dataclass
class _IvfIndex:
    """One image's unit descriptors bucketed by the shared quantiser.

    Attributes:
        order: (N,) row ids sorted by cell; rows of cell c are ``order[bounds[c]:bounds[c+1]]``.
        bounds: (K+1,) cell boundaries in ``order``.
        db_rows: (N, D) ``rows[order]`` (each cell a contiguous block, for the matrix products).
        probe_order: (N*P,) flattened (row, probe) entries sorted by probed cell; entry e is row
            ``e // P``; the entries probing cell c are ``probe_order[probe_bounds[c]:probe_bounds[c+1]]``.
        probe_bounds: (K+1,) cell boundaries in ``probe_order``.
        rows: (N, D) the unit rows in original order (query side).
        num_probes: P.
    """

    order: np.ndarray
    bounds: np.ndarray
    db_rows: np.ndarray
    probe_order: np.ndarray
    probe_bounds: np.ndarray
    rows: np.ndarray
    num_probes: int


def _ivf_index(prepared: _Prepared, centres: np.ndarray, num_probes: int) -> _IvfIndex:
    """Bucket one image's rows: nearest centre (database side) and ``num_probes`` nearest (query side)."""
    k = len(centres)
    num_probes = min(num_probes, k)
    # Nearest centres by squared L2: maximise r.c - |c|^2/2.
    scores = prepared.rows @ centres.T - 0.5 * np.sum(centres**2, axis=1)[None, :]
    cell = scores.argmax(axis=1)
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(k + 1))
    if num_probes == k:
        probes = np.broadcast_to(np.arange(k), scores.shape)
    else:
        probes = np.argpartition(-scores, num_probes - 1, axis=1)[:, :num_probes]
    flat = probes.reshape(-1)
    probe_order = np.argsort(flat, kind="stable")
    probe_bounds = np.searchsorted(flat[probe_order], np.arange(k + 1))
    return _IvfIndex(
        order,
        bounds,
        np.ascontiguousarray(prepared.rows[order]),
        probe_order,
        probe_bounds,
        prepared.rows,
        num_probes,
    )


def _two_nn_ivf(qa: _IvfIndex, ib: _IvfIndex):
    """Approximate :func:`_two_nn_bruteforce` for unit rows: search only the probed cells.

    Each (query, probed cell) entry gets the best and second-best score within that cell; the
    query's two nearest neighbours are then the best two of its entries' candidates. Column maxima
    (for the mutual check) are taken over the queries that probed each database row's cell.
    """
    n1, n2, p = len(qa.rows), len(ib.db_rows), qa.num_probes
    m = n1 * p
    e_best = np.zeros(m, np.int64)
    e_s1 = np.full(m, -np.inf, np.float32)
    e_s2 = np.full(m, -np.inf, np.float32)
    col = np.full(n2, -np.inf, np.float32)
    for c in np.flatnonzero((np.diff(qa.probe_bounds) > 0) & (np.diff(ib.bounds) > 0)):
        q0, q1 = qa.probe_bounds[c], qa.probe_bounds[c + 1]
        b0, b1 = ib.bounds[c], ib.bounds[c + 1]
        scores = qa.rows[qa.probe_order[q0:q1] // p] @ ib.db_rows[b0:b1].T
        np.maximum(col[b0:b1], scores.max(axis=0), out=col[b0:b1])
        j = scores.argmax(axis=1)
        rows = np.arange(q1 - q0)
        e_best[q0:q1] = j + b0
        e_s1[q0:q1] = scores[rows, j]
        if b1 - b0 > 1:
            scores[rows, j] = -np.inf
            e_s2[q0:q1] = scores.max(axis=1)
    # Entries back to (query, probe) layout, then the best two over each query's probes.
    back = np.empty(m, np.int64)
    back[qa.probe_order] = np.arange(m)
    cand = e_best[back].reshape(n1, p)
    s1 = e_s1[back].reshape(n1, p)
    s2 = e_s2[back].reshape(n1, p)
    rows = np.arange(n1)
    k = s1.argmax(axis=1)
    s_best = s1[rows, k]
    best = ib.order[cand[rows, k]]
    s1[rows, k] = -np.inf
    s_second = np.maximum(s1.max(axis=1), s2[rows, k])
    col_best = np.empty(n2, np.float32)
    col_best[ib.order] = col
    # Unit rows: d^2 = 2 - 2 s (a query that probed only empty cells keeps d = inf: no match).
    d_best = np.sqrt(np.maximum(2.0 - 2.0 * s_best.astype(np.float64), 0.0))
    d_best[~np.isfinite(s_best)] = np.inf
    d_second = np.sqrt(np.maximum(2.0 - 2.0 * s_second.astype(np.float64), 0.0))
    d_second[~np.isfinite(s_second)] = np.inf
    col_min = np.sqrt(np.maximum(2.0 - 2.0 * col_best.astype(np.float64), 0.0))
    col_min[~np.isfinite(col_best)] = np.inf
    return best, d_best, d_second, col_min


# --- matching kernels ---------------------------------------------------------------------------------


def _two_nn_bruteforce(a: _Prepared, b: _Prepared):
    """Exact nearest and second-nearest neighbour in ``b`` of each row of ``a``, plus column minima.

    Returns:
        best (N1,) int64, d_best (N1,), d_second (N1,) distances (L2 of unit rows, or Hamming bits:
        the squared L2 distance of bit vectors), col_min (N2,) the smallest distance of each ``b``
        row to any ``a`` row (for the mutual check).
    """
    n1, n2 = len(a.rows), len(b.rows)
    bt = np.ascontiguousarray(b.rows.T)
    best = np.empty(n1, np.int64)
    s_best = np.empty(n1, np.float32)
    s_second = np.full(n1, -np.inf, np.float32)
    col_best = np.full(n2, -np.inf, np.float32)
    # Maximise a.b - |b|^2/2 over b (row NN) and a.b - |a|^2/2 over a (column NN); both equal
    # -(d^2 - |a|^2 - |b|^2)/2, ordered like -d^2. For unit rows the norm terms are constants.
    half_b = 0.5 * b.sq_norms
    for r0 in range(0, n1, _BLOCK_ROWS):
        r1 = min(r0 + _BLOCK_ROWS, n1)
        scores = a.rows[r0:r1] @ bt
        rows = np.arange(r1 - r0)
        if a.binary:
            col_scores = scores - 0.5 * a.sq_norms[r0:r1, None]
            np.maximum(col_best, col_scores.max(axis=0), out=col_best)
            scores -= half_b[None, :]
        else:
            np.maximum(col_best, scores.max(axis=0), out=col_best)
        j = scores.argmax(axis=1)
        best[r0:r1] = j
        s_best[r0:r1] = scores[rows, j]
        if n2 > 1:
            scores[rows, j] = -np.inf
            s_second[r0:r1] = scores.max(axis=1)
    # Row scores: binary a.b - |b|^2/2, so d^2 = |a|^2 - 2 s; unit rows a.b, so d^2 = 2 - 2 s.
    offset = a.sq_norms.astype(np.float64) if a.binary else 2.0
    d2_best = np.maximum(offset - 2.0 * s_best, 0.0)
    d2_second = np.maximum(offset - 2.0 * s_second, 0.0)
    # Column minimum distance: d^2 = |b|^2 - 2 max_a(a.b - |a|^2/2) (unit rows: |a|^2 = 1 folded in).
    if a.binary:  # squared L2 of bit vectors is the Hamming distance
        col_min = np.maximum(b.sq_norms - 2.0 * col_best.astype(np.float64), 0.0)
        return best, np.rint(d2_best), np.rint(d2_second), np.rint(col_min)
    col_min = np.maximum(2.0 - 2.0 * col_best.astype(np.float64), 0.0)
    return best, np.sqrt(d2_best), np.sqrt(d2_second), np.sqrt(col_min)


def _two_nn_flann(a: _Prepared, b: _Prepared, descriptors_a: np.ndarray, descriptors_b: np.ndarray):
    """Approximate version of :func:`_two_nn_bruteforce` with OpenCV FLANN (KD-trees or LSH)."""
    if a.binary:
        index = {"algorithm": 6, "table_number": 6, "key_size": 12, "multi_probe_level": 1}  # LSH
        qa, qb = descriptors_a, descriptors_b
    else:
        index = {"algorithm": 1, "trees": 4}  # randomised KD-trees
        qa, qb = a.rows, b.rows
    matcher = cv2.FlannBasedMatcher(index, {"checks": 64})
    n1, n2 = len(qa), len(qb)
    best = np.zeros(n1, np.int64)
    d_best = np.full(n1, np.inf)
    d_second = np.full(n1, np.inf)
    for i, knn in enumerate(matcher.knnMatch(qa, qb, k=2)):
        if knn:
            best[i], d_best[i] = knn[0].trainIdx, knn[0].distance
        if len(knn) > 1:
            d_second[i] = knn[1].distance
    col_min = np.full(n2, np.inf)
    for j, knn in enumerate(matcher.knnMatch(qb, qa, k=1)):
        if knn:
            col_min[j] = knn[0].distance
    # FLANN reports L2 (float) or Hamming (LSH) distances, the units of the exact kernel.
    return best, d_best, d_second, col_min


def _uses_ivf(options: MatchingOptions, a: _Prepared, b: _Prepared) -> bool:
    return (
        options.method == "ivf"
        and not a.binary
        and min(len(a.rows), len(b.rows)) >= options.ivf.min_num_features
    )


def _check_kinds(descriptors_1: np.ndarray, descriptors_2: np.ndarray) -> None:
    if descriptors_1.dtype != descriptors_2.dtype or descriptors_1.shape[1:] != descriptors_2.shape[1:]:
        raise InputError(
            f"descriptor kinds differ: {descriptors_1.dtype}{descriptors_1.shape[1:]} vs "
            f"{descriptors_2.dtype}{descriptors_2.shape[1:]}"
        )


def match_descriptors(
    descriptors_1: np.ndarray,
    descriptors_2: np.ndarray,
    options: MatchingOptions | None = None,
    *,
    quantiser: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match two descriptor sets.

    Args:
        descriptors_1: (N1, D) float32 (SIFT) or (N1, B) uint8 (binary) descriptors.
        descriptors_2: (N2, D) of the same kind.
        options: matching options.
        quantiser: "ivf" only: (K, D) centres from :func:`train_ivf_quantiser`; None trains one on
            these two sets (costs about as much as matching them; :func:`match_pairs` trains one
            per call and indexes each image once).
        rng: seed of the quantiser training when ``quantiser`` is None.

    Returns:
        indices (M, 2) int64 into (descriptors_1, descriptors_2), distances (M,) float64
        (L2 of unit descriptors, or Hamming bits).
    """
    options = options or MatchingOptions()
    _check_kinds(descriptors_1, descriptors_2)
    if len(descriptors_1) == 0 or len(descriptors_2) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    a, b = _prepare(descriptors_1), _prepare(descriptors_2)
    index_a = index_b = None
    if _uses_ivf(options, a, b):
        if quantiser is None:
            options = _scaled_ivf(options, [len(a.rows), len(b.rows)])
            quantiser = train_ivf_quantiser([a.rows, b.rows], options.ivf.num_cells, rng=rng)
        index_a = _ivf_index(a, quantiser, options.ivf.num_probes)
        index_b = _ivf_index(b, quantiser, options.ivf.num_probes)
    return _match_prepared(a, b, descriptors_1, descriptors_2, options, index_a, index_b)


def _match_prepared(
    a: _Prepared,
    b: _Prepared,
    descriptors_1: np.ndarray,
    descriptors_2: np.ndarray,
    options: MatchingOptions,
    index_a: _IvfIndex | None = None,
    index_b: _IvfIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_descriptors` on prepared rows (IVF indices given when the pair uses them)."""
    if len(a.rows) == 0 or len(b.rows) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    approximate = (
        options.method == "bruteforce"
        and options.pca_dims is not None
        and not a.binary
        and options.pca_dims < a.rows.shape[1]
    )
    if index_a is not None and index_b is not None:
        best, d_best, d_second, col_min = _two_nn_ivf(index_a, index_b)
    elif approximate:
        best, d_best, d_second, col_min = _two_nn_bruteforce(*_pca_project(a, b, options.pca_dims))
    elif options.method in ("bruteforce", "ivf"):
        best, d_best, d_second, col_min = _two_nn_bruteforce(a, b)
    else:
        best, d_best, d_second, col_min = _two_nn_flann(a, b, descriptors_1, descriptors_2)
    keep = np.isfinite(d_best)
    if len(b.rows) > 1 and options.ratio_threshold < 1.0:
        keep &= d_best < options.ratio_threshold * d_second
    if options.mutual:
        # Mutual NN: no row of descriptors_1 is closer to best[i] than row i (float32 tolerance).
        # Both sides come from the same float32 products, so equality is exact for the true NN.
        keep &= d_best <= col_min[best] + 1e-6
    if options.max_distance is not None:
        keep &= d_best <= options.max_distance
    rows = np.flatnonzero(keep)
    indices = np.stack([rows, best[rows]], axis=1).astype(np.int64)
    if options.mutual:
        # Ties (identical descriptors) could map two rows to one column; keep the first.
        _, first = np.unique(indices[:, 1], return_index=True)
        indices = indices[np.sort(first)]
    if approximate:  # report exact full-dimensional distances
        distances = np.linalg.norm(a.rows[indices[:, 0]] - b.rows[indices[:, 1]], axis=1).astype(np.float64)
    else:
        distances = d_best[indices[:, 0]]
    if len(indices) < options.min_num_matches:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    return indices, distances


# --- caching and scheduling ---------------------------------------------------------------------------


def _seed(rng: np.random.Generator | int | None) -> int:
    """An integer seed (recorded in cache keys): None -> 0, a Generator -> one draw from it."""
    if rng is None:
        return 0
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63))
    return int(rng)


def _scaled_ivf(options: MatchingOptions, descriptor_counts: list[int]) -> MatchingOptions:
    """Options with ``ivf.num_cells`` / ``ivf.num_probes`` reduced for small images (see IvfOptions)."""
    ivf = options.ivf
    if ivf.descriptors_per_cell <= 0 or not descriptor_counts:
        return options
    cells = int(np.median(descriptor_counts)) // ivf.descriptors_per_cell
    cells = max(1, min(ivf.num_cells, cells))
    if cells == ivf.num_cells:
        return options
    probes = min(cells, max(3, -(-ivf.num_probes * cells // ivf.num_cells)))
    return replace(options, ivf=replace(ivf, num_cells=cells, num_probes=probes))


def _ivf_images(
    features: Mapping[int, Features], pairs: list[tuple[int, int]], options: MatchingOptions
) -> list[int]:
    """Images of the pairs that will use the inverted file (they train the shared quantiser)."""
    if options.method != "ivf":
        return []

    def eligible(k: int) -> bool:
        d = descriptor_source(features[k])  # for stored features: shape and dtype, nothing read
        return d.dtype != np.uint8 and len(d) >= options.ivf.min_num_features

    return sorted({k for p in pairs if eligible(p[0]) and eligible(p[1]) for k in p})


class MatchesCodec:
    """Cache codec of one pair's ``(indices (M, 2) int64, distances (M,))``."""

    def encode(self, result: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
        return {"indices": result[0], "distances": result[1]}, {}

    def decode(self, arrays, meta: dict) -> tuple[np.ndarray, np.ndarray]:
        return arrays["indices"].astype(np.int64).reshape(-1, 2), arrays["distances"]


def match_tile_task(
    pairs: list[tuple[int, int, np.ndarray, np.ndarray]], context: tuple[MatchingOptions, np.ndarray | None]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batched task of the stage runner: match a tile of pairs whose descriptors travel together.

    Args:
        pairs: ``(i, j, descriptors_i, descriptors_j)`` per pair (the client passes each image's
            descriptors as one :class:`~geomvision.runtime.runner.Shared` value: sent to the workers
            once per call, not once per pair or tile); a descriptor value may be a
            :class:`~geomvision.features.store.DescriptorFile`, read here once per task.
        context: (options, IVF quantiser or None).

    Each image is normalised (and bucketed, for IVF pairs) once per task, not once per pair.
    """
    options, quantiser = context
    descriptors = {}
    for i, j, d_i, d_j in pairs:  # stored descriptors are read once per task, here in the worker
        for k, d in ((i, d_i), (j, d_j)):
            if k not in descriptors:
                descriptors[k] = load_descriptors(d)
    prepared = {k: _prepare(d) for k, d in descriptors.items()}
    indices_ivf: dict[int, _IvfIndex] = {}

    def ivf(k: int) -> _IvfIndex:
        if k not in indices_ivf:
            indices_ivf[k] = _ivf_index(prepared[k], quantiser, options.ivf.num_probes)
        return indices_ivf[k]

    out = []
    for i, j, _, _ in pairs:
        a, b = prepared[i], prepared[j]
        use_ivf = quantiser is not None and _uses_ivf(options, a, b)
        out.append(
            _match_prepared(
                a,
                b,
                descriptors[i],
                descriptors[j],
                options,
                ivf(i) if use_ivf else None,
                ivf(j) if use_ivf else None,
            )
        )
    return out


#: Matching on the stage runner (batches are tiles of the image x image grid, see :func:`_tiles`).
MATCHES_STAGE = Stage(
    name="matches", task=match_tile_task, version=_CACHE_VERSION, codec=MatchesCodec(), batched=True
)


def _tile_side(num_images: int, num_workers: int) -> int:
    """Images per tile side: the smallest grid of b x b blocks whose b (b + 1) / 2 tiles give each worker
    about ``_TILES_PER_WORKER`` tasks, its side clamped to [_TILE, _MAX_TILE]."""
    blocks = 1
    while blocks * (blocks + 1) // 2 < _TILES_PER_WORKER * max(1, num_workers):
        blocks += 1
    return min(_MAX_TILE, max(_TILE, math.ceil(num_images / blocks)))


def _tiles(
    pairs: list[tuple[int, int]], image_ids: list[int], side: int = _TILE
) -> list[list[tuple[int, int]]]:
    """Group pairs into tiles of ``side`` x ``side`` images of the (image x image) grid, so each task needs
    few distinct images."""
    rank = {image_id: r for r, image_id in enumerate(image_ids)}
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, j in pairs:
        groups.setdefault((rank[i] // side, rank[j] // side), []).append((i, j))
    tasks, packed = [], []
    for key in sorted(groups):  # grid order: neighbouring tiles share an image block
        tile = groups[key]
        if len(tile) >= _MIN_PAIRS_PER_TASK:
            tasks.append(tile)
            continue
        packed += tile
        if len(packed) >= _MIN_PAIRS_PER_TASK:
            tasks.append(packed)
            packed = []
    if packed:
        tasks.append(packed)
    # Largest tasks first (LPT scheduling): the small ones fill the gaps at the end, so workers
    # finish together.
    return sorted(tasks, key=len, reverse=True)


def _check_pairs(features: Mapping[int, Features], pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for pair in pairs:
        i, j = (int(pair[0]), int(pair[1]))
        if i == j:
            raise InputError(f"pair ({i}, {j}) matches an image with itself")
        for k in (i, j):
            if k not in features:
                raise InputError(f"pair ({i}, {j}) refers to image id {k} without features")
        out.append((i, j))
    return out


def match_pairs(
    features: Mapping[int, Features],
    pairs: Iterable[tuple[int, int]],
    options: MatchingOptions | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    runner: StageRunner | None = None,
    progress: ProgressCallback | None = None,
    rng: np.random.Generator | int | None = None,
) -> dict[tuple[int, int], Matches]:
    """Match descriptors of every pair, reusing cached pairs.

    Args:
        features: image_id -> Features.
        pairs: (image_id_i, image_id_j) pairs (see ``features.pairs``).
        options: matching options.
        cache_dir: folder of per-pair cache entries keyed by both feature sets' content + options
            (None: the runner's own cache, if any).
        runner: where the per-pair work runs (a local pool or Dask: ``geomvision.runtime.runner``);
            default: in this process.
        progress: ``progress(done, total, message)`` callback.
        rng: "ivf": seed of the quantiser shared by the images of the pairs (None: seed 0). It is
            trained once, here on the client, and shipped with the tasks.

    Returns:
        (i, j) -> Matches with (M, 2) indices into (features[i], features[j]).
    """
    options = options or MatchingOptions()
    pair_list = _check_pairs(features, pairs)
    seed = _seed(rng)
    ivf_images = _ivf_images(features, pair_list, options)
    options = _scaled_ivf(options, [len(descriptor_source(features[k])) for k in ivf_images])
    runner = runner or StageRunner()
    if cache_dir is not None:
        runner = runner.with_cache(cache_dir)
    hashes = {k: features_hash(features[k]) for k in {k for p in pair_list for k in p}}
    # IVF results depend on the quantiser, a function of the images it is trained on and the seed.
    quantiser_key = (f"{seed}|" + "|".join(hashes[k] for k in sorted(ivf_images))) if ivf_images else ""
    quantiser = None
    if ivf_images:
        # Trained on all the images of the call (cached pairs included), so cached and fresh pairs
        # share one quantiser. Deterministic: one seeded k-means on the client, whatever the backend.
        quantiser = train_ivf_quantiser(
            [descriptor_source(features[k]) for k in ivf_images], options.ivf.num_cells, rng=seed
        )
    image_ids = sorted(features)
    # Stored features send their file where workers can read it (workers read it, a tile at a time);
    # otherwise the descriptors themselves, read as each batch is built.
    by_file = runner.shares_cache

    def shared_descriptors(k: int) -> Shared:
        value = descriptor_source(features[k]) if by_file else features[k].descriptors
        return Shared(key=("descriptors", k), value=value)

    results = runner.map(
        MATCHES_STAGE,
        pair_list,
        inputs=lambda p: (p[0], p[1], shared_descriptors(p[0]), shared_descriptors(p[1])),
        context=(options, quantiser),
        options_key={"options": asdict(options), "quantiser": quantiser_key},
        item_key=lambda p: f"{hashes[p[0]]}|{hashes[p[1]]}",
        group=lambda todo: _tiles(todo, image_ids, _tile_side(len(image_ids), runner.backend.num_workers)),
        label=lambda p: f"{p[0]}-{p[1]}",
        progress=progress,
    )
    return {(i, j): Matches(i, j, r[0], r[1]) for (i, j), r in zip(pair_list, results, strict=True)}
