"""Writing rendered test images to files (the features and feature-store tests read photos from disk)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_rgb_pngs(images: list[np.ndarray], folder: Path) -> list[Path]:
    """Write (H, W, 3) uint8 RGB images as ``folder/00.png``, ``01.png``, ...; returns their paths."""
    paths = []
    for k, image in enumerate(images):
        path = folder / f"{k:02d}.png"
        cv2.imwrite(str(path), image[:, :, ::-1])  # OpenCV writes BGR
        paths.append(path)
    return paths
