"""Per-stage data: features, matches, two-view geometry, tracks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geomvision.geometry.rigid import Rigid3d


@dataclass
class Features:
    """Local features of one image.

    Attributes:
        keypoints_px: (N, 2) float64 (x, y) in ORIGINAL image pixels, OpenCV origin.
        descriptors: (N, D) float32 (SIFT/RootSIFT) or uint8 (binary ORB/AKAZE).
        scales: (N,) keypoint size in pixels; orientations: (N,) radians.
        colors: (N, 3) uint8 RGB sampled at the keypoints.
    """

    keypoints_px: np.ndarray
    descriptors: np.ndarray
    scales: np.ndarray | None = None
    orientations: np.ndarray | None = None
    colors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keypoints_px)


@dataclass
class Matches:
    """Putative matches between image ``i`` and ``j``: (M, 2) int indices into each image's features."""

    image_i: int
    image_j: int
    indices: np.ndarray
    distances: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class TwoViewGeometry:
    """Result of geometric verification of one pair.

    Attributes:
        config: "calibrated" (E), "uncalibrated" (F), "planar" / "panoramic" (H), or "rejected".
        inlier_matches: (K, 2) int indices into each image's features.
        cam2_from_cam1: relative pose (unit translation) when it could be recovered.
        median_triangulation_angle_deg: over inliers with positive depth (nan if no pose).
    """

    image_i: int
    image_j: int
    config: str
    inlier_matches: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    F: np.ndarray | None = None
    E: np.ndarray | None = None
    H: np.ndarray | None = None
    cam2_from_cam1: Rigid3d | None = None
    num_putative: int = 0
    num_homography_inliers: int = 0
    median_triangulation_angle_deg: float = float("nan")
    success: bool = True
    reason: str = ""

    @property
    def num_inliers(self) -> int:
        return len(self.inlier_matches)


@dataclass
class Track:
    """A 3D point's 2D observations: list of (image_id, feature_index)."""

    elements: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.elements)

    @property
    def image_ids(self) -> list[int]:
        return [i for i, _ in self.elements]


@dataclass
class ImageInfo:
    """What the mapper needs to know about one input image.

    Attributes:
        name: file name relative to the image folder.
        camera_id: key into the cameras dict.
        keypoints_px: (N, 2) float64 keypoints in original-image pixels (OpenCV origin).
        colors: (N, 3) uint8 RGB at the keypoints, or None.
    """

    name: str
    camera_id: int
    keypoints_px: np.ndarray
    colors: np.ndarray | None = None
