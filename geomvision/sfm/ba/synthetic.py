"""Synthetic bundle-adjustment problems with exact ground truth (tests and benchmarks).

Cameras sit on a ring of radius 10 around a point cloud of radius ~2 at the origin and look at it;
each point is observed by the ``views_per_point`` cameras nearest to it in azimuth (so the visibility graph
is a sparse band, like a real sequence), with Gaussian pixel noise.
"""

from __future__ import annotations

import numpy as np

from geomvision.geometry import camera_models
from geomvision.geometry.rigid import Rigid3d, matrix_to_rotvec
from geomvision.runtime.rng import as_rng
from geomvision.scene.camera import Camera
from geomvision.scene.reconstruction import Point3D, Reconstruction, View
from geomvision.sfm.ba.model import BundleAdjustmentProblem

_EXAMPLE_PARAMS = {
    "SIMPLE_PINHOLE": [500.0, 320.0, 240.0],
    "PINHOLE": [500.0, 510.0, 320.0, 240.0],
    "SIMPLE_RADIAL": [500.0, 320.0, 240.0, -0.05],
    "RADIAL": [500.0, 320.0, 240.0, -0.05, 0.01],
    "OPENCV": [500.0, 510.0, 320.0, 240.0, -0.05, 0.01, 0.001, -0.001],
}


def _look_at(center: np.ndarray) -> np.ndarray:
    """Rotation ``cam_from_world`` of a camera at ``center`` looking at the origin, world z up."""
    z = -center / np.linalg.norm(center)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def synthetic_problem(
    num_images: int,
    num_points: int,
    *,
    model: str = "PINHOLE",
    views_per_point: int = 4,
    noise_px: float = 0.5,
    rng: np.random.Generator | int | None = 0,
) -> tuple[BundleAdjustmentProblem, np.ndarray]:
    """An exact scene plus noisy observations, as a ``BundleAdjustmentProblem`` (one shared camera).

    Returns:
        the problem at the ground-truth parameters with noisy ``obs_px``, and the (M, 2) noise-free pixels.
    """
    rng = as_rng(rng)
    angles = np.linspace(0.0, 2.0 * np.pi, num_images, endpoint=False)
    centers = np.column_stack(
        [10.0 * np.cos(angles), 10.0 * np.sin(angles), rng.normal(0.0, 0.3, num_images)]
    )
    R = np.stack([_look_at(c) for c in centers])
    t = -np.einsum("nij,nj->ni", R, centers)
    points = rng.normal(0.0, 1.0, (num_points, 3))
    # visibility: the cameras nearest in azimuth to a random direction per point
    first = rng.integers(0, num_images, num_points)
    k = min(views_per_point, num_images)
    obs_image = ((first[:, None] + np.arange(k)) % num_images).ravel()
    obs_point = np.repeat(np.arange(num_points), k)
    params = np.asarray(_EXAMPLE_PARAMS[model])
    points_in_cam = np.einsum("mij,mj->mi", R[obs_image], points[obs_point]) + t[obs_image]
    clean = camera_models.project(model, params, points_in_cam)
    problem = BundleAdjustmentProblem(
        camera_models=[model],
        intrinsics=params[None],
        image_group=np.zeros(num_images, np.int64),
        rotvecs=matrix_to_rotvec(R),
        translations=t,
        points=points,
        obs_image=obs_image,
        obs_point=obs_point,
        obs_px=clean + rng.normal(0.0, noise_px, clean.shape),
    )
    return problem, clean


def perturb(
    problem: BundleAdjustmentProblem,
    *,
    rotation_rad: float = 0.01,
    translation: float = 0.05,
    point: float = 0.05,
    rng: np.random.Generator | int | None = 1,
) -> None:
    """Add Gaussian noise to poses and points in place (an initial guess for a solver)."""
    rng = as_rng(rng)
    problem.rotvecs += rng.normal(0.0, rotation_rad, problem.rotvecs.shape)
    problem.translations += rng.normal(0.0, translation, problem.translations.shape)
    problem.points += rng.normal(0.0, point, problem.points.shape)


def problem_to_reconstruction(
    problem: BundleAdjustmentProblem, *, width: int = 640, height: int = 480
) -> Reconstruction:
    """A ``Reconstruction`` with the problem's cameras (ids 1..G), views (ids 1..I) and points (ids 1..N)."""
    rec = Reconstruction()
    for g, model in enumerate(problem.camera_models):
        num = camera_models.NUM_PARAMS[model]
        rec.add_camera(Camera(g + 1, model, width, height, problem.intrinsics[g, :num]))
    order = np.argsort(problem.obs_image, kind="stable")
    starts = np.searchsorted(problem.obs_image[order], np.arange(len(problem.rotvecs) + 1))
    keypoint = np.empty(problem.num_observations, np.int64)
    keypoint[order] = np.arange(problem.num_observations) - starts[problem.obs_image[order]]
    for i in range(len(problem.rotvecs)):
        obs = order[starts[i] : starts[i + 1]]
        rec.add_view(
            View(
                i + 1,
                f"{i:05d}.png",
                int(problem.image_group[i]) + 1,
                Rigid3d.from_rotvec(problem.rotvecs[i], problem.translations[i]),
                problem.obs_px[obs],
                problem.obs_point[obs] + 1,
            )
        )
    tracks: list[list[tuple[int, int]]] = [[] for _ in range(len(problem.points))]
    for m, (i, j) in enumerate(zip(problem.obs_image.tolist(), problem.obs_point.tolist(), strict=True)):
        tracks[j].append((i + 1, int(keypoint[m])))
    for j, track in enumerate(tracks):
        rec.points3D[j + 1] = Point3D(problem.points[j].copy(), track=track)
    rec.next_point3D_id = len(problem.points) + 1
    return rec
