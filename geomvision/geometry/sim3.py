"""Similarity (Sim(3)) helpers for aligning two reconstructions of the same scene.

A :class:`~geomvision.geometry.rigid.Sim3d` ``b_from_a`` maps ``x_b = s R x_a + t``. Two models of
overlapping image sets differ by such a transform (the gauge of structure from motion: H&Z 10.2, the
projective ambiguity reduced to a similarity for calibrated cameras). This module holds the pure maths
of estimating it: the 7-vector parametrisation used by nonlinear refinement, the (3, 4) matrix form used
by RANSAC, the reprojection residuals of points carried from one model into the other's cameras, and the
pose-consistency residuals of cameras present in both models.
"""

from __future__ import annotations

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Sim3d, matrix_to_rotvec, project_to_so3, rotvec_to_matrix

__all__ = [
    "sim3_from_matrix",
    "sim3_to_vector",
    "sim3_from_vector",
    "ProjectionSet",
    "pose_consistency_residuals",
]

#: reprojection error (px) given to an observation whose point lies behind its camera.
BEHIND_CAMERA_ERROR_PX = 1e6


def sim3_from_matrix(matrix: np.ndarray) -> Sim3d:
    """The Sim3d of a (3, 4) matrix ``[s R | t]`` (``s`` = cube root of the determinant, R re-orthonormalised).

    Raises:
        InputError: a matrix with non-positive determinant (a reflection or a collapse).
    """
    M = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
    det = float(np.linalg.det(M[:, :3]))
    if not det > 0:
        raise InputError(f"a similarity needs a positive determinant, got {det}")
    scale = det ** (1.0 / 3.0)
    return Sim3d(scale, project_to_so3(M[:, :3] / scale), M[:, 3])


def sim3_to_vector(sim: Sim3d) -> np.ndarray:
    """(7,) ``[rotvec (3), translation (3), log(scale)]``: a minimal, unconstrained parametrisation."""
    return np.concatenate([matrix_to_rotvec(sim.rotation), sim.translation, [np.log(sim.scale)]])


def sim3_from_vector(vector: np.ndarray) -> Sim3d:
    """Inverse of :func:`sim3_to_vector`."""
    v = np.asarray(vector, dtype=np.float64).reshape(7)
    return Sim3d(float(np.exp(v[6])), rotvec_to_matrix(v[:3]), v[3:6])


class ProjectionSet:
    """Observations of a set of points in the images of one model, grouped by image for vectorised reprojection.

    Args:
        point_index: (M,) int index of the observed point (into the points passed to the methods).
        image_index: (M,) int index of the observing image (into the per-image arrays below).
        rotations: (G, 3, 3) ``cam_from_world`` rotations of the G images.
        translations: (G, 3) ``cam_from_world`` translations.
        camera_models_: G camera model names.
        camera_params: G (P,) parameter arrays.
        pixels: (M, 2) observed keypoints (OpenCV origin).
        num_points: number of points N the observations refer to.
    """

    def __init__(
        self,
        point_index: np.ndarray,
        image_index: np.ndarray,
        rotations: np.ndarray,
        translations: np.ndarray,
        camera_models_: list[str],
        camera_params: list[np.ndarray],
        pixels: np.ndarray,
        num_points: int,
    ) -> None:
        point_index = np.asarray(point_index, dtype=np.int64).reshape(-1)
        image_index = np.asarray(image_index, dtype=np.int64).reshape(-1)
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if not (len(point_index) == len(image_index) == len(pixels)):
            raise InputError(
                f"ProjectionSet arrays disagree in length: {len(point_index)} points, "
                f"{len(image_index)} images, {len(pixels)} pixels"
            )
        order = np.argsort(image_index, kind="stable")
        self.point_index = point_index[order]
        self.pixels = pixels[order]
        self.num_points = int(num_points)
        self.rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        self.translations = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
        self.models = list(camera_models_)
        self.params = [np.asarray(p, dtype=np.float64) for p in camera_params]
        self.image_index = image_index[order]
        # Images with the same camera (model and parameters) project in one call: models with shared
        # intrinsics have one group, whatever their number of images.
        groups: dict[tuple, list[int]] = {}
        for g, (model, params) in enumerate(zip(self.models, self.params, strict=True)):
            groups.setdefault((model, *params.tolist()), []).append(g)
        self._camera_groups = [
            (
                self.models[images[0]],
                self.params[images[0]],
                np.flatnonzero(np.isin(self.image_index, images)),
            )
            for images in groups.values()
        ]

    def __len__(self) -> int:
        return len(self.point_index)

    def residuals_px(self, points_in_world: np.ndarray) -> np.ndarray:
        """(M, 2) reprojection residuals (projected - observed), in the order of ``self.point_index``.

        Points behind a camera get a residual of ``BEHIND_CAMERA_ERROR_PX``.
        """
        X = np.asarray(points_in_world, dtype=np.float64).reshape(-1, 3)[self.point_index]
        in_cam = (
            np.einsum("mij,mj->mi", self.rotations[self.image_index], X) + self.translations[self.image_index]
        )
        residuals = np.empty((len(X), 2))
        for model, params, rows in self._camera_groups:
            residuals[rows] = camera_models.project(model, params, in_cam[rows]) - self.pixels[rows]
        residuals[in_cam[:, 2] <= 0] = BEHIND_CAMERA_ERROR_PX
        return residuals

    def max_error_sq_per_point(self, points_in_world: np.ndarray) -> np.ndarray:
        """(N,) largest squared reprojection error over each point's observations (0 for unobserved points)."""
        err_sq = np.sum(self.residuals_px(points_in_world) ** 2, axis=1)
        out = np.zeros(self.num_points)
        np.maximum.at(out, self.point_index, err_sq)
        return out


def pose_consistency_residuals(
    b_from_a: Sim3d,
    rotations_a: np.ndarray,
    centers_a: np.ndarray,
    rotations_b: np.ndarray,
    centers_b: np.ndarray,
    depths_b: np.ndarray,
    focals_px: np.ndarray,
    radii_px: np.ndarray,
) -> np.ndarray:
    """Pixel-equivalent disagreement of cameras posed in both models once model a is mapped into b.

    How far the disagreement moves the image of a scene point at depth ``d``:

    - a rotation error of ``theta`` radians: about ``f * theta`` pixels;
    - a centre offset ``e`` across the optical axis: about ``f * e / d`` pixels;
    - a centre offset ``e`` along the optical axis: a zoom about the principal point, about
      ``r * e / d`` pixels for image points at distance ``r`` from it (models refining their focal lengths
      apart disagree mostly here: the camera slides along its axis as the focal length changes).

    Expressing all three in pixels lets camera terms sit next to reprojection residuals in one cost.

    Args:
        b_from_a: the similarity.
        rotations_a, rotations_b: (K, 3, 3) ``cam_from_world`` rotations of the K shared images.
        centers_a, centers_b: (K, 3) camera centres in each model's world.
        depths_b: (K,) typical depth of the scene in each camera, in model b's units (> 0).
        focals_px: (K,) focal lengths in pixels.
        radii_px: (K,) typical distance of image points from the principal point, in pixels.

    Returns:
        (K, 6): rotation residual (rotation vector of ``R_b R_pred^T`` times f, 3) and centre residual in
        camera b's axes (x, y times ``f / d``; z times ``r / d``), all in pixels.
    """
    R_a = np.asarray(rotations_a, dtype=np.float64).reshape(-1, 3, 3)
    R_b = np.asarray(rotations_b, dtype=np.float64).reshape(-1, 3, 3)
    # cam_from_b predicted from model a: R_a @ R^T (Sim3d.transform_pose).
    R_pred = R_a @ b_from_a.rotation.T
    delta = R_b @ np.transpose(R_pred, (0, 2, 1))
    rot = matrix_to_rotvec(delta).reshape(-1, 3)
    offset_world = np.asarray(centers_b, dtype=np.float64).reshape(-1, 3) - b_from_a.apply(centers_a)
    offset_cam = np.einsum("kij,kj->ki", R_b, offset_world) / np.asarray(depths_b, dtype=np.float64).reshape(
        -1, 1
    )
    f = np.asarray(focals_px, dtype=np.float64).reshape(-1, 1)
    r = np.asarray(radii_px, dtype=np.float64).reshape(-1, 1)
    return np.hstack([rot * f, offset_cam[:, :2] * f, offset_cam[:, 2:] * r])
