"""Mapper inputs built from synthetic scenes: keypoints, verified pairs and ground-truth comparison.

The verified inlier matches of a pair are exactly the true correspondences (points visible in both
images), keypoints carry Gaussian pixel noise, and each image's keypoint order is shuffled so that no
test can pass by accident through aligned indices.
"""

from __future__ import annotations

import numpy as np

from geomvision.geometry.rigid import Rigid3d, project_to_so3, rotation_angle_deg, umeyama_alignment
from geomvision.geometry.triangulation import triangulation_angle_deg
from geomvision.scene import Camera, ImageInfo, Reconstruction, TwoViewGeometry
from geomvision.synthetic import SyntheticScene


def mapper_inputs(
    scene: SyntheticScene,
    *,
    noise_px: float = 0.5,
    rng: int = 0,
    focal_scale: float = 1.0,
    model: str = "PINHOLE",
    with_pose: bool = True,
    min_shared: int = 20,
    extra_keypoints: int = 5,
    pairs: list[tuple[int, int]] | None = None,
    first_image_id: int = 1,
) -> tuple[dict[int, Camera], dict[int, ImageInfo], dict[tuple[int, int], TwoViewGeometry], np.ndarray]:
    """Cameras, images and verified pairs for ``incremental_mapping`` from a synthetic scene.

    Returns:
        (cameras, images, two_view_geometries, kp_index) where kp_index (C, N) is the keypoint index of
        each point in each image (-1 when not visible).
    """
    gen = np.random.default_rng(rng)
    C, N = scene.visible.shape
    f, cx, cy = scene.K[0, 0] * focal_scale, scene.K[0, 2], scene.K[1, 2]
    params = {"PINHOLE": [f, f, cx, cy], "SIMPLE_PINHOLE": [f, cx, cy], "SIMPLE_RADIAL": [f, cx, cy, 0.0]}[
        model
    ]
    cameras = {1: Camera(1, model, scene.width, scene.height, np.array(params))}
    images = {}
    kp_index = np.full((C, N), -1, dtype=np.int64)
    for c in range(C):
        vis = np.flatnonzero(scene.visible[c])
        px = scene.observations_px[c, vis] + gen.normal(scale=noise_px, size=(len(vis), 2))
        extra = gen.uniform([0, 0], [scene.width - 1, scene.height - 1], size=(extra_keypoints, 2))
        keypoints = np.vstack([px, extra])
        perm = gen.permutation(len(keypoints))  # keypoint k of the image is keypoints[perm[k]]
        inv = np.argsort(perm)
        kp_index[c, vis] = inv[: len(vis)]
        image_id = first_image_id + c
        images[image_id] = ImageInfo(f"img_{image_id:03d}.png", 1, keypoints[perm])
    geometries = {}
    candidate_pairs = pairs if pairs is not None else [(i, j) for i in range(C) for j in range(i + 1, C)]
    for i, j in candidate_pairs:
        common = np.flatnonzero(scene.visible[i] & scene.visible[j])
        if len(common) < min_shared:
            continue
        matches = np.stack([kp_index[i, common], kp_index[j, common]], axis=1)
        rel = scene.cams_from_world[j] @ scene.cams_from_world[i].inverse()
        rel = Rigid3d(rel.rotation, rel.translation / np.linalg.norm(rel.translation))
        angles = triangulation_angle_deg(
            scene.cams_from_world[i].center, scene.cams_from_world[j].center, scene.points_in_world[common]
        )
        key = (first_image_id + i, first_image_id + j)
        geometries[key] = TwoViewGeometry(
            key[0],
            key[1],
            "calibrated",
            matches,
            cam2_from_cam1=rel if with_pose else None,
            num_putative=len(matches),
            median_triangulation_angle_deg=float(np.median(angles)),
        )
    return cameras, images, geometries, kp_index


def pose_errors(
    rec: Reconstruction, scene: SyntheticScene, first_image_id: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotation errors (deg) after the best common world rotation, and centre errors after a similarity fit.

    The world rotation is the chordal L2 mean ``proj_SO3(sum_i R_gt_i^T R_est_i)`` (each
    ``cam_from_world`` rotation differs from the truth by the same world rotation, up to noise);
    centres are compared after the least-squares similarity (Umeyama), relative to the scene radius 1.

    Returns:
        (rotation errors (R,), centre errors (R,), scale of the similarity fit).
    """
    ids = rec.registered_image_ids
    R_est = np.array([rec.views[i].cam_from_world.rotation for i in ids])
    R_gt = np.array([scene.cams_from_world[i - first_image_id].rotation for i in ids])
    world_rot = project_to_so3(np.einsum("nji,njk->ik", R_gt, R_est))
    rot_err = np.array(
        [float(rotation_angle_deg(g @ world_rot, e)) for g, e in zip(R_gt, R_est, strict=True)]
    )
    est = np.array([rec.views[i].cam_from_world.center for i in ids])
    gt = np.array([scene.cams_from_world[i - first_image_id].center for i in ids])
    gt_from_est = umeyama_alignment(est, gt)
    centre_err = np.linalg.norm(gt_from_est.apply(est) - gt, axis=1)
    return rot_err, centre_err, gt_from_est.scale


def assert_ring_model_matches(rec: Reconstruction, scene: SyntheticScene) -> None:
    """The checks both mappers must pass on ``random_scene(300, 8)`` with 0.5 px noise: every image in
    one model, poses at the noise level, every point kept, and ids / tracks / keypoints consistent."""
    assert rec.registered_image_ids == list(range(1, len(scene.cams_from_world) + 1))
    rot_err, centre_err, _ = pose_errors(rec, scene)
    assert rot_err.max() < 0.1  # degrees, 0.5 px noise
    assert centre_err.max() < 0.01  # the cloud has radius 1, cameras stand ~4.6 away
    assert len(rec.points3D) == len(scene.points_in_world)
    # Residual of a consistent fit: 0.5 px per axis -> mean norm ~0.63 px minus the fitted DOF.
    assert 0.45 < rec.mean_reprojection_error_px() < 0.65
    for pid, point in list(rec.points3D.items())[:20]:
        for image_id, kp in point.track:
            assert rec.views[image_id].point3D_ids[kp] == pid


def scene_rays(scene: SyntheticScene, noise_px: float = 0.0, seed: int = 0):
    """Positioning inputs of every visible point of ``scene``: (rotations {image id: (3, 3) cam_from_world},
    obs_image (M,) ids from 1, obs_track (M,) point index, rays_in_cam (M, 3)), pixels optionally noisy."""
    cams, pts = np.nonzero(scene.visible)
    px = scene.observations_px[cams, pts]
    if noise_px:
        px = px + np.random.default_rng(seed).normal(scale=noise_px, size=px.shape)
    rays = np.column_stack([px, np.ones(len(px))]) @ np.linalg.inv(scene.K).T
    rotations = {i + 1: pose.rotation for i, pose in enumerate(scene.cams_from_world)}
    return rotations, cams + 1, pts, rays
