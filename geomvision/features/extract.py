"""Local feature extraction (OpenCV SIFT / RootSIFT, ORB, AKAZE), parallel and cached on disk.

Keypoints are always reported in ORIGINAL image pixels with the OpenCV origin (centre of the
top-left pixel is (0, 0)), whatever downscaling was used for detection.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from geomvision.errors import InputError
from geomvision.io.atomic import atomic_path
from geomvision.io.images import read_image
from geomvision.progress import ProgressCallback, report
from geomvision.scene.types import Features

logger = logging.getLogger(__name__)

FeatureMethod = Literal["sift", "orb", "akaze"]
METHODS: tuple[str, ...] = get_args(FeatureMethod)
#: Bump when the extraction code changes in a way that alters its output (invalidates caches).
_CACHE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ExtractionOptions:
    """Options of :func:`extract_features`.

    Attributes:
        method: "sift" (float32 descriptors), "orb" or "akaze" (binary uint8 descriptors).
        root_sift: SIFT only: RootSIFT (L1-normalise, square root; Arandjelovic & Zisserman 2012).
        max_num_features: keep at most this many keypoints (strongest response first).
        max_image_size_px: images whose longer side exceeds this are downscaled for detection.
        sift_contrast_threshold, sift_edge_threshold: OpenCV SIFT detector thresholds. The contrast
            threshold is below OpenCV's 0.04: 0.012 gives low-texture small images (templeRing,
            640x480) about pycolmap's descriptor count (1639 vs 1480 per image; 0.02 gave 1359) and
            ~10 % more verified matches per pair; where ``max_num_features`` binds (large images)
            the strongest responses are kept either way, at no measurable extra cost.
        num_workers: worker processes of the default executor (None: all cores, 1: in-process).
    """

    method: FeatureMethod = "sift"
    root_sift: bool = False
    max_num_features: int = 8192
    max_image_size_px: int = 3200
    sift_contrast_threshold: float = 0.012
    sift_edge_threshold: float = 10.0
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown feature method {self.method!r}; expected one of {METHODS}")
        if self.max_num_features < 1:
            raise InputError(f"max_num_features must be >= 1, got {self.max_num_features}")
        if self.max_image_size_px < 16:
            raise InputError(f"max_image_size_px must be >= 16, got {self.max_image_size_px}")
        if self.num_workers is not None and self.num_workers < 1:
            raise InputError(f"num_workers must be >= 1 or None, got {self.num_workers}")

    def cache_fields(self) -> dict:
        """Fields that change the output (execution settings excluded)."""
        fields = asdict(self)
        fields.pop("num_workers")
        return fields


# --- per-image work (module level so that worker processes can unpickle it) -------------------------


def _create_detector(options: ExtractionOptions, image_size: int):
    if options.method == "sift":
        return cv2.SIFT_create(
            nfeatures=options.max_num_features,
            contrastThreshold=options.sift_contrast_threshold,
            edgeThreshold=options.sift_edge_threshold,
        )
    if options.method == "orb":
        # ORB's border must not exceed a small image; patch size 31 is OpenCV's default.
        edge = min(31, max(image_size // 4, 3))
        return cv2.ORB_create(nfeatures=options.max_num_features, edgeThreshold=edge, patchSize=edge)
    # OpenCV 5 moved AKAZE to the contrib module; 4.x has it at top level.
    akaze_create = getattr(cv2, "AKAZE_create", None) or cv2.xfeatures2d.AKAZE_create
    return akaze_create(threshold=1e-4)


def _keep_strongest(keypoints, descriptors, max_num: int):
    """Cap the count for detectors without an ``nfeatures`` limit (AKAZE) or that overshoot."""
    if descriptors is None or len(keypoints) <= max_num:
        return keypoints, descriptors
    responses = np.array([kp.response for kp in keypoints])
    keep = np.sort(np.argsort(-responses, kind="stable")[:max_num])
    return [keypoints[i] for i in keep], descriptors[keep]


def _root_sift(descriptors: np.ndarray) -> np.ndarray:
    l1 = np.abs(descriptors).sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(l1, 1e-12)).astype(np.float32)


def detect_and_describe(image_rgb: np.ndarray, options: ExtractionOptions) -> Features:
    """Detect keypoints and describe them on one RGB image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        options: extraction options.

    Returns:
        Features with keypoints in ``image_rgb`` pixels (OpenCV origin).
    """
    height, width = image_rgb.shape[:2]
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, options.max_image_size_px / max(width, height))
    if scale < 1.0:
        small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, small_size, interpolation=cv2.INTER_AREA)
    # Per-axis factors of the resize actually done (rounding makes them differ slightly).
    sx, sy = gray.shape[1] / width, gray.shape[0] / height
    detector = _create_detector(options, min(gray.shape))
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    keypoints, descriptors = _keep_strongest(keypoints, descriptors, options.max_num_features)
    if descriptors is None or len(keypoints) == 0:
        kinds = {"sift": (128, np.float32), "orb": (32, np.uint8), "akaze": (61, np.uint8)}
        dim, dtype = kinds[options.method]
        return Features(
            keypoints_px=np.zeros((0, 2)),
            descriptors=np.zeros((0, dim), dtype=dtype),
            scales=np.zeros(0),
            orientations=np.zeros(0),
            colors=np.zeros((0, 3), np.uint8),
        )
    pts_small = cv2.KeyPoint_convert(keypoints).astype(np.float64).reshape(-1, 2)
    # Pixel centres sit at integers in both images: x_orig + 0.5 = (x_small + 0.5) / s.
    pts = np.empty_like(pts_small)
    pts[:, 0] = (pts_small[:, 0] + 0.5) / sx - 0.5
    pts[:, 1] = (pts_small[:, 1] + 0.5) / sy - 0.5
    sizes = np.array([kp.size for kp in keypoints], dtype=np.float64) / np.sqrt(sx * sy)
    angles = np.deg2rad(np.array([kp.angle for kp in keypoints], dtype=np.float64))
    if options.method == "sift":
        descriptors = descriptors.astype(np.float32)
        if options.root_sift:
            descriptors = _root_sift(descriptors)
    else:
        descriptors = descriptors.astype(np.uint8)
    cols = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, height - 1)
    return Features(
        keypoints_px=pts,
        descriptors=np.ascontiguousarray(descriptors),
        scales=sizes,
        orientations=angles,
        colors=image_rgb[rows, cols].astype(np.uint8),
    )


def save_features(path: str | os.PathLike, features: Features) -> None:
    """Write features to an ``.npz`` file atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                keypoints_px=features.keypoints_px,
                descriptors=features.descriptors,
                scales=features.scales if features.scales is not None else np.zeros(0),
                orientations=features.orientations if features.orientations is not None else np.zeros(0),
                colors=features.colors if features.colors is not None else np.zeros((0, 3), np.uint8),
            )


def load_features(path: str | os.PathLike) -> Features:
    """Read features written by :func:`save_features`."""
    with np.load(path) as data:
        n = len(data["keypoints_px"])

        def optional(name):
            arr = data[name]
            return arr if len(arr) == n else None

        return Features(
            keypoints_px=data["keypoints_px"],
            descriptors=data["descriptors"],
            scales=optional("scales"),
            orientations=optional("orientations"),
            colors=optional("colors"),
        )


def _extract_one(path: str, options: ExtractionOptions, cache_file: str | None) -> Features:
    """Worker task: read, extract, write the cache entry (so a killed run keeps finished images)."""
    features = detect_and_describe(read_image(path), options)
    if cache_file is not None:
        save_features(cache_file, features)
    return features


def init_worker(num_threads: int = 1) -> None:
    """Process-pool initialiser: ``num_threads`` OpenCV and BLAS threads per worker.

    The pool already occupies the cores, so nested threading would only oversubscribe them.
    BLAS is limited through ``threadpoolctl`` when it is installed (optional).
    """
    cv2.setNumThreads(num_threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(num_threads)


# --- caching and scheduling ---------------------------------------------------------------------------


def file_hash(path: str | os.PathLike) -> str:
    """Hex BLAKE2b digest of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def features_cache_key(path: str | os.PathLike, options: ExtractionOptions) -> str:
    """Cache key: image content + output-relevant options + code version."""
    opts = json.dumps({"v": _CACHE_VERSION, **options.cache_fields()}, sort_keys=True)
    return hashlib.blake2b(f"{file_hash(path)}|{opts}".encode(), digest_size=16).hexdigest()


def default_num_workers(requested: int | None) -> int:
    return requested if requested is not None else max(1, os.cpu_count() or 1)


#: Modules the forkserver imports before forking workers (the per-image and per-pair stages).
_WORKER_PRELOAD = ("geomvision.features.extract", "geomvision.features.match", "geomvision.sfm.two_view")


def make_process_pool(num_workers: int) -> cf.ProcessPoolExecutor:
    """The default executor of the per-image / per-pair stages: a local process pool whose workers
    run OpenCV and BLAS single-threaded. Pass one pool to several stages to start workers once."""
    import multiprocessing as mp

    # forkserver: no fork of a multi-threaded parent (OpenCV/BLAS threads) and cheap worker start.
    context = mp.get_context("forkserver")
    # The server imports the stage modules once and each worker forks from it with them loaded,
    # instead of every worker importing numpy/OpenCV/scipy itself (~0.5 s CPU each). Takes effect
    # when the server starts (the first pool of the process).
    context.set_forkserver_preload(list(_WORKER_PRELOAD))
    return cf.ProcessPoolExecutor(
        max_workers=num_workers, mp_context=context, initializer=init_worker, initargs=(1,)
    )


def extract_features(
    image_paths: Sequence[str | os.PathLike],
    options: ExtractionOptions | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    executor: cf.Executor | None = None,
    progress: ProgressCallback | None = None,
) -> list[Features]:
    """Extract local features from every image, in parallel, reusing cached results.

    Args:
        image_paths: image files; the result has the same order.
        options: extraction options (defaults: SIFT, 8192 features).
        cache_dir: folder for per-image ``.npz`` results keyed by file content + options; images
            with a cache entry are not recomputed.
        executor: where to run per-image work (e.g. a Dask executor); default: a local process pool
            with ``options.num_workers`` workers, or in-process when that is 1. The pool starts its
            workers with ``forkserver``, so a calling script needs an ``if __name__ == "__main__":``
            guard (as with any spawn-based multiprocessing).
        progress: ``progress(done, total, message)`` callback.

    Returns:
        One :class:`Features` per image (keypoints in original-image pixels).

    Raises:
        InputError: an image cannot be read (message names the file).
    """
    options = options or ExtractionOptions()
    paths = [Path(p) for p in image_paths]
    total = len(paths)
    results: list[Features | None] = [None] * total
    cache_files: list[str | None] = [None] * total
    if cache_dir is not None:
        cache_root = Path(cache_dir)
        cache_root.mkdir(parents=True, exist_ok=True)
        for k, path in enumerate(paths):
            if not path.is_file():
                raise InputError(f"image file {str(path)!r} does not exist")
            cache_file = cache_root / f"features_{features_cache_key(path, options)}.npz"
            cache_files[k] = str(cache_file)
            if cache_file.is_file():
                try:
                    results[k] = load_features(cache_file)
                except (OSError, ValueError, KeyError) as exc:  # damaged entry: recompute it
                    logger.warning("ignoring unreadable feature cache %s: %s", cache_file, exc)
    todo = [k for k in range(total) if results[k] is None]
    done = total - len(todo)
    report(progress, done, total, "features (cached)" if done else "features")
    logger.info("extracting features of %d images (%d cached)", len(todo), done)
    if not todo:
        return results  # type: ignore[return-value]

    num_workers = default_num_workers(options.num_workers)
    if executor is None and (num_workers == 1 or len(todo) == 1):
        for k in todo:
            results[k] = _extract_one(str(paths[k]), options, cache_files[k])
            done += 1
            report(progress, done, total, paths[k].name)
        return results  # type: ignore[return-value]

    own_pool = executor is None
    pool = make_process_pool(min(num_workers, len(todo))) if own_pool else executor
    try:
        futures = {pool.submit(_extract_one, str(paths[k]), options, cache_files[k]): k for k in todo}
        for future in cf.as_completed(futures):
            k = futures[future]
            results[k] = future.result()
            done += 1
            report(progress, done, total, paths[k].name)
    finally:
        if own_pool:
            pool.shutdown(cancel_futures=True)
    return results  # type: ignore[return-value]
