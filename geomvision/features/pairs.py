"""Which image pairs to match: exhaustive, sequential (video) and retrieval (VLAD) pair selection.

Pairs are returned sorted as ``(image_id_i, image_id_j)`` with ``i < j`` and no duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from geomvision.errors import InputError
from geomvision.features.store import descriptor_source, load_descriptors
from geomvision.runtime.rng import as_rng
from geomvision.scene.types import Features

logger = logging.getLogger(__name__)

Pair = tuple[int, int]


def _ordered(pairs: Iterable[tuple[int, int]]) -> list[Pair]:
    """Normalise to sorted unique (min, max) tuples without self pairs."""
    return sorted({(min(int(i), int(j)), max(int(i), int(j))) for i, j in pairs if int(i) != int(j)})


def _unique_ids(image_ids: Iterable[int]) -> list[int]:
    ids = [int(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise InputError(f"image ids must be unique, got {len(ids)} ids with {len(set(ids))} distinct")
    return ids


def exhaustive_pairs(image_ids: Iterable[int]) -> list[Pair]:
    """All N(N-1)/2 pairs of distinct images."""
    ids = sorted(_unique_ids(image_ids))
    return [(ids[a], ids[b]) for a in range(len(ids)) for b in range(a + 1, len(ids))]


def sequential_pairs(image_ids: Sequence[int], window: int, *, loop_closure: bool = False) -> list[Pair]:
    """Pairs of images at most ``window`` apart in the given order (video / ordered captures).

    Args:
        image_ids: ids in capture order.
        window: number of following images each image is paired with (>= 1).
        loop_closure: also pair the first ``window`` images with the last ``window`` ones, for
            sequences that end where they started (turntables, rings).
    """
    if window < 1:
        raise InputError(f"window must be >= 1, got {window}")
    ids = _unique_ids(image_ids)
    n = len(ids)
    pairs = [(ids[a], ids[b]) for a in range(n) for b in range(a + 1, min(a + window + 1, n))]
    if loop_closure and n > 2:
        # Wrap the window around the end of the sequence.
        pairs += [(ids[a], ids[(a + d) % n]) for a in range(n) for d in range(1, window + 1) if a + d >= n]
    return _ordered(pairs)


# --- retrieval ---------------------------------------------------------------------------------------


def _as_float_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """Descriptors as float32 unit rows (binary descriptors as unpacked bits)."""
    if descriptors.dtype == np.uint8:
        rows = np.unpackbits(descriptors, axis=1).astype(np.float32)
    else:
        rows = np.asarray(descriptors, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _float_dim(descriptors) -> int:
    """Columns of :func:`_as_float_descriptors` of an array or a descriptor file (8 per byte if binary)."""
    return descriptors.shape[1] * (8 if descriptors.dtype == np.uint8 else 1)


def _nearest_centre(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row (squared L2 via one matrix product)."""
    scores = rows @ centres.T - 0.5 * np.sum(centres**2, axis=1)[None, :]
    return scores.argmax(axis=1)


def train_vocabulary(
    descriptor_sets: Sequence[np.ndarray],
    num_words: int = 64,
    *,
    max_samples: int = 50_000,
    num_iterations: int = 20,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """k-means (Lloyd, k-means++ seeding) over a random sample of local descriptors.

    Args:
        descriptor_sets: (N_k, D) descriptors of each image, or
            :class:`~geomvision.features.store.DescriptorFile` references (read one at a time).
        num_words: number of centres.
        max_samples: k-means runs on at most this many randomly drawn descriptors.
        num_iterations: Lloyd iterations at most.
        rng: seed of the sample and of the k-means++ seeding.

    Returns:
        (num_words, D) float32 centres (fewer if there are fewer samples).
    """
    rng = as_rng(rng)
    sets = [d for d in descriptor_sets if len(d)]
    sizes = np.array([len(d) for d in sets], dtype=np.int64)
    if sizes.sum() > max_samples:
        # Draw the sample over all rows, then convert only the drawn ones: concatenating every image's
        # descriptors first held a float32 copy of all of them (~2.5 GB at 1000 street images).
        chosen = rng.choice(int(sizes.sum()), max_samples, replace=False)
        ends = np.cumsum(sizes)
        owner = np.searchsorted(ends, chosen, side="right")
        local = chosen - (ends - sizes)[owner]
        rows = np.empty((max_samples, _float_dim(sets[0])), np.float32)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(sets) + 1))
        for k in np.flatnonzero(np.diff(bounds)):  # stored descriptors: read one image at a time
            sel = order[bounds[k] : bounds[k + 1]]
            rows[sel] = _as_float_descriptors(load_descriptors(sets[k])[local[sel]])
    else:
        rows = np.concatenate([_as_float_descriptors(load_descriptors(d)) for d in sets], axis=0)
    k = min(num_words, len(rows))
    # k-means++ seeding (Arthur & Vassilvitskii 2007): spread initial centres.
    # Squared distances as |r|^2 + |c|^2 - 2 r.c: one matrix-vector product per new centre.
    sq_norms = np.sum(rows**2, axis=1)

    def sq_dist(centre: np.ndarray) -> np.ndarray:
        return np.maximum(sq_norms + centre @ centre - 2.0 * (rows @ centre), 0.0)

    centres = [rows[rng.integers(len(rows))]]
    d2 = sq_dist(centres[0])
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(rows[rng.choice(len(rows), p=probs)])
        d2 = np.minimum(d2, sq_dist(centres[-1]))
    centres = np.array(centres, dtype=np.float32)
    for _ in range(num_iterations):
        labels = _nearest_centre(rows, centres)
        counts = np.bincount(labels, minlength=k)
        # Per-centre sums as one (k, N) x (N, D) product: much faster than np.add.at.
        assign = np.zeros((k, len(rows)), np.float32)
        assign[labels, np.arange(len(rows))] = 1.0
        sums = assign @ rows
        filled = counts > 0
        new = centres.copy()
        new[filled] = sums[filled] / counts[filled, None]
        if np.allclose(new, centres, atol=1e-6):
            break
        centres = new
    return centres


def vlad_descriptor(descriptors: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """VLAD (Jegou et al. 2010): summed residuals to the nearest word, power- and L2-normalised.

    Args:
        descriptors: (N, D) local descriptors of one image.
        vocabulary: (K, D) centres from :func:`train_vocabulary`.

    Returns:
        (K * D,) float32 global descriptor with unit L2 norm (zeros for an empty image).
    """
    k, dim = vocabulary.shape
    out = np.zeros((k, dim), np.float32)
    if len(descriptors):
        rows = _as_float_descriptors(descriptors)
        labels = _nearest_centre(rows, vocabulary)
        np.add.at(out, labels, rows - vocabulary[labels])
    # Intra-normalisation per word (Arandjelovic & Zisserman 2013) limits bursty words, then the
    # signed square root and a global L2 norm.
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    out = np.sign(out) * np.sqrt(np.abs(out))
    flat = out.reshape(-1)
    return flat / max(float(np.linalg.norm(flat)), 1e-12)


def retrieval_pairs(
    features: Mapping[int, Features],
    k: int,
    *,
    num_words: int = 64,
    sequential_window: int = 0,
    rng: np.random.Generator | int | None = None,
) -> list[Pair]:
    """Pair each image with its ``k`` most similar images by VLAD cosine similarity.

    Args:
        features: image_id -> Features.
        k: neighbours per image (the pair set is symmetric, so degrees can exceed k).
        num_words: VLAD vocabulary size.
        sequential_window: if > 0, add :func:`sequential_pairs` over sorted ids with this window.
        rng: seed of the vocabulary sampling / seeding.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    ids = sorted(int(i) for i in features)
    if len(ids) < 2:
        return []
    # One image's descriptors at a time (stored features are read from their files, not all kept).
    vocabulary = train_vocabulary([descriptor_source(features[i]) for i in ids], num_words, rng=rng)
    globals_ = np.stack([vlad_descriptor(features[i].descriptors, vocabulary) for i in ids])
    similarity = globals_ @ globals_.T
    np.fill_diagonal(similarity, -np.inf)
    kk = min(k, len(ids) - 1)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :kk]
    pairs = [(ids[a], ids[b]) for a in range(len(ids)) for b in neighbours[a]]
    if sequential_window > 0:
        pairs += sequential_pairs(ids, sequential_window)
    result = _ordered(pairs)
    logger.info("retrieval: %d pairs for %d images (k=%d)", len(result), len(ids), k)
    return result
