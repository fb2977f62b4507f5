"""Training data for the learned pose models: posed images, pose labels, image stacks and augmentation.

Sources of posed images:

- a COLMAP model folder (``cameras``/``images``/``points3D`` ``.txt`` or ``.bin``), or a ``geomvision
  reconstruct`` output folder holding ``sparse/0``;
- a Middlebury multi-view ``*_par.txt`` file (``name k11..k33 r11..r33 t1 t2 t3`` per line with
  ``P = K [R | t]``, i.e. ``cam_from_world``), whose images lie next to it unless told otherwise;

both read by :func:`geomvision.evaluation.load_ground_truth`.

Labels are expressed relative to a *reference* camera (the first posed image in name order), so a model
learns poses in a frame fixed to the scene whatever gauge the reconstruction had, and translations are
divided by a scale (the median distance of the camera centres from the reference) so that positions and
quaternion distances have comparable magnitudes in the loss. Both are stored in checkpoints and undone
at inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from geomvision.errors import InputError
from geomvision.geometry.rigid import (
    Rigid3d,
    matrix_to_quat_wxyz,
    relative_poses_to_first_cam_to_world,
)
from geomvision.plugins.learned.common import RGB_MEAN, RGB_STD

__all__ = [
    "PosedImages",
    "load_posed_images",
    "translation_scale",
    "absolute_labels",
    "relative_labels",
    "sequence_labels",
    "neighbour_pairs",
    "sequence_windows",
    "read_rgb",
    "load_image_stack",
    "batch_to_tensor",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PosedImages:
    """Images with known ``cam_from_world`` poses, sorted by name.

    Attributes:
        names: image names (relative to the image folder).
        paths: absolute image paths.
        cam_from_world: one pose per image.
    """

    names: tuple[str, ...]
    paths: tuple[Path, ...]
    cam_from_world: tuple[Rigid3d, ...]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> PosedImages:
        """The images at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return PosedImages(
            tuple(self.names[i] for i in idx),
            tuple(self.paths[i] for i in idx),
            tuple(self.cam_from_world[i] for i in idx),
        )

    def rotations(self) -> np.ndarray:
        """(N, 3, 3) ``cam_from_world`` rotations."""
        return np.stack([p.rotation for p in self.cam_from_world])

    def translations(self) -> np.ndarray:
        """(N, 3) ``cam_from_world`` translations."""
        return np.stack([p.translation for p in self.cam_from_world])


def load_posed_images(source: str | Path, image_dir: str | Path | None = None) -> PosedImages:
    """Posed images from a COLMAP model / reconstruction folder or a Middlebury ``*_par.txt`` file.

    Ground truth is read by :func:`geomvision.evaluation.load_ground_truth` (COLMAP text/binary models,
    ``sparse/0`` inside an output folder, Middlebury ``*_par.txt``, Strecha ``*.camera``).

    Args:
        source: ``*_par.txt`` file, COLMAP model folder, or a folder with ``sparse/0`` or a ``*_par.txt``.
        image_dir: folder the image names are relative to; defaults to the source file's folder (or the
            source folder itself), which suits Middlebury data; pass it for a ``reconstruct`` output.

    Raises:
        InputError: no ground truth found, an image file missing, or fewer than 2 posed images.
    """
    from geomvision.evaluation import load_ground_truth

    source = Path(source)
    cameras = load_ground_truth(source)
    if image_dir is None:
        image_dir = source.parent if source.is_file() else source
    names = sorted(cameras)
    paths = [(Path(image_dir) / n).resolve() for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(names)} posed images missing, e.g. {missing[0]} (set the image folder)"
        )
    if len(names) < 2:
        raise InputError(f"need at least 2 posed images, got {len(names)} from {source}")
    return PosedImages(tuple(names), tuple(paths), tuple(cameras[n].cam_from_world for n in names))


def _cam_to_world(poses: Sequence[Rigid3d]) -> tuple[np.ndarray, np.ndarray]:
    """(world_from_cam rotations (N, 3, 3), camera centres (N, 3))."""
    R = np.stack([p.rotation for p in poses])
    t = np.stack([p.translation for p in poses])
    return np.swapaxes(R, 1, 2), -np.einsum("nji,nj->ni", R, t)


def translation_scale(poses: Sequence[Rigid3d], reference: Rigid3d) -> float:
    """Median distance of the camera centres from the reference camera's centre (>0), in world units."""
    centres = np.stack([p.center for p in poses])
    dist = np.linalg.norm(centres - reference.center, axis=1)
    dist = dist[dist > 1e-12]
    return float(np.median(dist)) if dist.size else 1.0


def absolute_labels(poses: Sequence[Rigid3d], reference: Rigid3d, scale: float) -> np.ndarray:
    """PoseNet labels: per image [centre in reference camera / scale (3), quat_wxyz of ref_from_cam (4)].

    ``ref_from_cam = ref_from_world @ world_from_cam``, i.e. ``R'_i = R_ref^T R_i`` and
    ``t'_i = R_ref^T (t_i - t_ref)`` for camera-to-world ``(R_i, t_i)``.

    Returns:
        (N, 7) float64.
    """
    R_wc, centres = _cam_to_world([reference, *poses])
    R_rel, t_rel = relative_poses_to_first_cam_to_world(R_wc, centres)
    return np.hstack([t_rel[1:] / scale, matrix_to_quat_wxyz(R_rel[1:])])


def relative_labels(poses: Sequence[Rigid3d], pairs: np.ndarray) -> np.ndarray:
    """Relative-pose labels for index pairs (P, 2) = (i, j): [quat_wxyz (4), unit t (3)] of cam_j_from_cam_i.

    Returns:
        (P, 7) float64; a pair with coincident centres gets a zero direction.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    R = np.stack([p.rotation for p in poses])
    t = np.stack([p.translation for p in poses])
    Ri, Rj, ti, tj = R[pairs[:, 0]], R[pairs[:, 1]], t[pairs[:, 0]], t[pairs[:, 1]]
    R_rel = Rj @ np.swapaxes(Ri, 1, 2)
    t_rel = tj - np.einsum("pij,pj->pi", R_rel, ti)
    norm = np.linalg.norm(t_rel, axis=1, keepdims=True)
    direction = np.divide(t_rel, norm, out=np.zeros_like(t_rel), where=norm > 1e-12)
    return np.hstack([matrix_to_quat_wxyz(R_rel), direction])


def sequence_labels(poses: Sequence[Rigid3d], windows: np.ndarray, scale: float) -> np.ndarray:
    """Sequence labels: for each window of image indices (S, T), each frame relative to the window's first.

    Returns:
        (S, T, 7) float64 = [centre in first camera / scale (3), quat_wxyz of first_from_cam (4)].
    """
    windows = np.asarray(windows, dtype=np.int64)
    R_wc, centres = _cam_to_world(poses)
    out = np.empty(windows.shape + (7,))
    for s, w in enumerate(windows):  # once per window at set-up, not per training step
        R_rel, t_rel = relative_poses_to_first_cam_to_world(R_wc[w], centres[w])
        out[s, :, :3] = t_rel / scale
        out[s, :, 3:] = matrix_to_quat_wxyz(R_rel)
    return out


def neighbour_pairs(num_images: int, window: int) -> np.ndarray:
    """Ordered pairs (i, j), both directions, of images at most ``window`` apart in name order: (P, 2)."""
    i, j = np.meshgrid(np.arange(num_images), np.arange(num_images), indexing="ij")
    keep = (i != j) & (np.abs(i - j) <= window)
    return np.stack([i[keep], j[keep]], axis=1)


def sequence_windows(
    num_images: int, length: int, max_stride: int = 2, *, reverse: bool = True
) -> np.ndarray:
    """Windows of ``length`` image indices with strides 1..max_stride (and reversed copies): (S, length)."""
    if length < 1 or num_images < 1:
        raise InputError(f"need length >= 1 and images >= 1, got {length} and {num_images}")
    length = min(length, num_images)
    windows = []
    for stride in range(1, max_stride + 1):
        span = (length - 1) * stride
        starts = np.arange(0, num_images - span)
        if starts.size:
            windows.append(starts[:, None] + stride * np.arange(length)[None, :])
    out = np.concatenate(windows) if windows else np.arange(length)[None, :]
    return np.concatenate([out, out[:, ::-1]]) if reverse else out


def read_rgb(image: str | Path | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image from a path or an array (gray arrays are expanded to 3 channels)."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        try:
            from geomvision.io.images import read_image
        except ImportError:
            read_image = None
        if read_image is not None:
            arr = read_image(image)
        else:
            bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(f"cannot read image {image}")
            arr = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr / (257.0 if arr.dtype == np.uint16 else 1.0), 0, 255).astype(np.uint8)
    return arr


def stored_size(image_size: tuple[int, int], crop_fraction: float) -> tuple[int, int]:
    """(width, height) images are kept at so random crops of ``image_size`` fit inside."""
    w, h = image_size
    return int(round(w * (1.0 + crop_fraction))), int(round(h * (1.0 + crop_fraction)))


def load_image_stack(
    images: Sequence[str | Path | np.ndarray], image_size: tuple[int, int], crop_fraction: float = 0.0
) -> np.ndarray:
    """Read and resize images to ``image_size`` enlarged by ``crop_fraction`` (area interpolation).

    Returns:
        (N, 3, H', W') uint8, channels first.
    """
    w, h = stored_size(image_size, crop_fraction)
    out = np.empty((len(images), 3, h, w), dtype=np.uint8)
    for k, image in enumerate(images):  # one decode + resize per image file
        out[k] = cv2.resize(read_rgb(image), (w, h), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    return out


def batch_to_tensor(
    stack: torch.Tensor,
    image_size: tuple[int, int],
    *,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> torch.Tensor:
    """Crop, colour-jitter and standardise a batch of stored images.

    Args:
        stack: (B, 3, H', W') uint8 tensor (on the training device).
        image_size: (width, height) of the crops.
        rng: when given, crops are random and colours jittered (training); else centre crops (inference).
        jitter: maximum relative change of brightness, contrast and saturation.

    Returns:
        (B, 3, height, width) float32, standardised with ``RGB_MEAN`` / ``RGB_STD``.
    """
    b, _, hs, ws = stack.shape
    w, h = image_size
    device = stack.device
    if rng is None:
        y0 = np.full(b, (hs - h) // 2)
        x0 = np.full(b, (ws - w) // 2)
    else:
        y0 = rng.integers(0, hs - h + 1, size=b)
        x0 = rng.integers(0, ws - w + 1, size=b)
    rows = torch.as_tensor(y0, device=device)[:, None] + torch.arange(h, device=device)[None, :]
    cols = torch.as_tensor(x0, device=device)[:, None] + torch.arange(w, device=device)[None, :]
    idx_b = torch.arange(b, device=device)[:, None, None]
    # Advanced indexing gathers every sample's own crop at once: (B, h, w, 3) -> (B, 3, h, w).
    crops = stack.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    x = crops.float() / 255.0
    if rng is not None and jitter > 0:
        factors = torch.as_tensor(
            rng.uniform(1 - jitter, 1 + jitter, size=(3, b)), dtype=torch.float32, device=device
        )[:, :, None, None, None]
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        x = x * factors[0]  # brightness
        mean = gray.mean(dim=(2, 3), keepdim=True) * factors[0]
        x = (x - mean) * factors[1] + mean  # contrast
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        x = (x - gray) * factors[2] + gray  # saturation
        x = x.clamp(0.0, 1.0)
    mean = torch.tensor(RGB_MEAN, device=device)[None, :, None, None]
    std = torch.tensor(RGB_STD, device=device)[None, :, None, None]
    return (x - mean) / std
