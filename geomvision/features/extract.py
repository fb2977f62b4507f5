"""Local feature extraction (OpenCV SIFT / RootSIFT, ORB, AKAZE), per image on the stage runner.

Keypoints are always reported in ORIGINAL image pixels with the OpenCV origin (centre of the
top-left pixel is (0, 0)), whatever downscaling was used for detection.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from geomvision.errors import InputError, check_at_least, check_choice
from geomvision.features.store import DescriptorFile, StoredFeatures
from geomvision.io.images import decode_image, read_image
from geomvision.progress import ProgressCallback
from geomvision.runtime.atomic import atomic_path
from geomvision.runtime.cache import file_hash
from geomvision.runtime.runner import Stage, StageRunner
from geomvision.scene.types import Features

logger = logging.getLogger(__name__)

FeatureMethod = Literal["sift", "orb", "akaze"]
METHODS: tuple[str, ...] = get_args(FeatureMethod)
#: Bump when the extraction code changes in a way that alters its output (invalidates caches).
_CACHE_VERSION = 2


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
    """

    method: FeatureMethod = "sift"
    root_sift: bool = False
    max_num_features: int = 8192
    max_image_size_px: int = 3200
    sift_contrast_threshold: float = 0.012
    sift_edge_threshold: float = 10.0

    def __post_init__(self) -> None:
        check_choice("feature method", self.method, METHODS)
        check_at_least("max_num_features", self.max_num_features, 1)
        check_at_least("max_image_size_px", self.max_image_size_px, 16)


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
    arrays, _ = FeaturesCodec().encode(features)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_features(path: str | os.PathLike) -> Features:
    """Read features written by :func:`save_features`."""
    with np.load(path) as data:
        return FeaturesCodec().decode(data, {})


class FeaturesCodec:
    """Cache codec of :class:`Features` (arrays only; absent optional fields stored empty)."""

    def encode(self, features: Features) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {
            "keypoints_px": features.keypoints_px,
            "descriptors": features.descriptors,
            "scales": features.scales if features.scales is not None else np.zeros(0),
            "orientations": features.orientations if features.orientations is not None else np.zeros(0),
            "colors": features.colors if features.colors is not None else np.zeros((0, 3), np.uint8),
        }
        return arrays, {}

    def decode(self, arrays, meta: dict) -> Features:
        n = len(arrays["keypoints_px"])

        def optional(name):
            arr = arrays[name]  # read once: an np.load archive decompresses on every lookup
            return arr if len(arr) == n else None

        return Features(
            keypoints_px=arrays["keypoints_px"],
            descriptors=arrays["descriptors"],
            scales=optional("scales"),
            orientations=optional("orientations"),
            colors=optional("colors"),
        )


def extract_image_task(image: tuple, options: ExtractionOptions) -> Features:
    """Per-image task of the stage runner: decode one image and describe it.

    Args:
        image: ``("path", path)`` where the worker can open the file, or ``("bytes", path, data)``
            with the file's bytes read by the client (``path`` names it in errors).
        options: extraction options.
    """
    if image[0] == "bytes":
        rgb = decode_image(image[2], image[1])
    else:
        rgb = read_image(image[1])
    return detect_and_describe(rgb, options)


#: Extraction on the stage runner; bump ``version`` when the output changes (invalidates caches).
FEATURES_STAGE = Stage(
    name="features", task=extract_image_task, version=_CACHE_VERSION, codec=FeaturesCodec(), batch_size=1
)


def extract_features(
    image_paths: Sequence[str | os.PathLike],
    options: ExtractionOptions | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    runner: StageRunner | None = None,
    progress: ProgressCallback | None = None,
    descriptors_on_disk: bool = False,
) -> list[Features]:
    """Extract local features from every image, reusing cached results.

    Args:
        image_paths: image files; the result has the same order.
        options: extraction options (defaults: SIFT, 8192 features).
        cache_dir: folder of per-image cache entries keyed by file content + options; images with an
            entry are not recomputed. None: the runner's own cache (if any).
        runner: where the per-image work runs (``geomvision.runtime.runner.open_runner("processes")``
            for a local pool, or a Dask one); default: in this process.
        progress: ``progress(done, total, message)`` callback.
        descriptors_on_disk: return :class:`~geomvision.features.store.StoredFeatures`, whose descriptors
            stay in their cache entry (read back where a task needs them), so memory does not grow with
            all images' descriptors. Needs a cache and workers that can read it
            (``runner.shares_cache``); otherwise the descriptors stay in memory.

    Returns:
        One :class:`Features` per image (keypoints in original-image pixels).

    Raises:
        InputError: an image cannot be read (message names the file).
    """
    options = options or ExtractionOptions()
    paths = [Path(p) for p in image_paths]
    runner = runner or StageRunner()
    if cache_dir is not None:
        runner = runner.with_cache(cache_dir)
    for path in paths:
        if not path.is_file():
            raise InputError(f"image file {str(path)!r} does not exist")
    ship_bytes = not runner.shares_files

    def image_input(k: int) -> tuple:
        if ship_bytes:  # no shared filesystem: the client reads, the worker decodes
            return ("bytes", str(paths[k]), paths[k].read_bytes())
        return ("path", str(paths[k]))

    def keep(features: Features, entry: Path | None) -> Features:
        if entry is None or not descriptors_on_disk or not runner.shares_cache:
            return features
        return StoredFeatures(features, DescriptorFile.of(entry, features.descriptors))

    return runner.map(
        FEATURES_STAGE,
        range(len(paths)),
        inputs=image_input,
        context=options,
        options_key=asdict(options),
        item_key=lambda k: file_hash(paths[k]),
        label=lambda k: paths[k].name,
        progress=progress,
        keep=keep,
    )
