"""Autocalibration (absolute dual quadric): exact metric upgrade of synthetic projective cameras, and the
Oxford dinosaur's projective cameras upgraded to a turntable (skip when the shared data are absent)."""

import numpy as np
import pytest
from conftest import shared_dataset

from geomvision.errors import InputError
from geomvision.evaluation import load_ground_truth, read_projective_cameras_metric
from geomvision.geometry.autocalibration import (
    AutocalibrationOptions,
    autocalibrate_cameras,
    decompose_projection,
)
from geomvision.geometry.rigid import rotation_angle_deg


def _look_at(centre: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ centre


def _metric_scene(rng, n=8):
    """Cameras on a sphere cap looking at the origin, one K (zero skew, unit aspect), points near the origin."""
    K = np.array([[800.0, 0.0, 331.0], [0.0, 800.0, 236.0], [0.0, 0.0, 1.0]])
    poses = []
    for k in range(n):
        azimuth, elevation = 2 * np.pi * k / n + rng.uniform(-0.2, 0.2), rng.uniform(0.2, 0.8)
        centre = 6.0 * np.array(
            [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)]
        )
        poses.append(_look_at(centre, rng.normal(0, 0.1, 3)))
    points = np.c_[rng.uniform(-1, 1, (200, 3)), np.ones(200)]
    return K, poses, points


def test_synthetic_projective_cameras_are_upgraded_exactly(rng):
    K, poses, points = _metric_scene(rng)
    P_metric = np.array([K @ np.c_[R, t] for R, t in poses])
    H0 = rng.normal(size=(4, 4))  # a random projective distortion of the metric frame
    P = np.array([rng.uniform(0.5, 2.0) * Pi @ H0 for Pi in P_metric])
    X = points @ np.linalg.inv(H0).T
    # General motion observes the principal point: a negligible pull towards the image centre (the default
    # weight is for a turntable's ambiguity) leaves the exact answer.
    result = autocalibrate_cameras(
        P, (640, 480), AutocalibrationOptions(principal_point_weight=1e-9), points_homogeneous=X
    )
    assert result.success, result.reason
    np.testing.assert_allclose(result.K_shared, K, atol=1e-5)
    np.testing.assert_allclose(result.K, np.broadcast_to(K, result.K.shape), atol=1e-5)
    assert result.residual < 1e-9
    # Relative poses (independent of the similarity gauge) equal the true ones; the mirror sign is right.
    for i in range(len(poses)):
        for j in range(i + 1, len(poses)):
            R_true = poses[j][0] @ poses[i][0].T
            R_est = result.cam_from_world_R[j] @ result.cam_from_world_R[i].T
            assert rotation_angle_deg(R_est @ R_true.T) < 1e-6
            t_true = poses[j][1] - R_true @ poses[i][1]
            t_est = result.cam_from_world_t[j] - R_est @ result.cam_from_world_t[i]
            cos = t_true @ t_est / np.linalg.norm(t_true) / np.linalg.norm(t_est)
            assert cos > 1 - 1e-12
    # Reprojection is unchanged by the upgrade: P_i X = (P_i H)(H^-1 X).
    H = result.world_from_projective
    np.testing.assert_allclose(
        np.einsum("nij,mj->nmi", P @ H, X @ np.linalg.inv(H).T),
        np.einsum("nij,mj->nmi", P, X),
        rtol=1e-9,
        atol=1e-9,
    )


def test_default_principal_point_prior_stays_close(rng):
    K, poses, _ = _metric_scene(rng)
    P = np.array([K @ np.c_[R, t] @ np.diag([1.0, 2.0, 0.5, 1.0]) for R, t in poses])
    result = autocalibrate_cameras(P, (640, 480))
    assert result.success, result.reason
    assert abs(result.K_shared[0, 0] - 800.0) < 0.02 * 800.0
    assert np.hypot(*(result.K_shared[:2, 2] - K[:2, 2])) < 15.0


def test_decompose_projection_recovers_k_r_t(rng):
    K, poses, _ = _metric_scene(rng, n=1)
    R, t = poses[0]
    K2, R2, t2 = decompose_projection(-3.0 * K @ np.c_[R, t])
    np.testing.assert_allclose(K2, K, atol=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(t2, t, atol=1e-9)


def test_autocalibration_rejects_bad_input():
    with pytest.raises(InputError, match="at least 3"):
        autocalibrate_cameras(np.zeros((2, 3, 4)), (640, 480))
    with pytest.raises(InputError, match="shape"):
        autocalibrate_cameras(np.zeros((4, 3, 3)), (640, 480))
    with pytest.raises(ValueError, match="principal_point_weight"):
        AutocalibrationOptions(principal_point_weight=0.0)


def test_oxford_dinosaur_ground_truth_is_a_metric_turntable():
    folder = shared_dataset("oxford_dinosaur")
    gt = load_ground_truth(folder)  # detects dino_Ps.mat and autocalibrates
    names = sorted(gt)
    assert len(names) == 36 and names[0] == "viff.000.png"
    K = gt[names[0]].K
    assert K[0, 1] == 0.0 and K[0, 0] == K[1, 1]
    assert abs(K[0, 2] - 359.5) < 60 and abs(K[1, 2] - 287.5) < 60
    R = [gt[n].cam_from_world.rotation for n in names]
    t = [gt[n].cam_from_world.translation for n in names]
    steps = [rotation_angle_deg(R[(i + 1) % 36] @ R[i].T) for i in range(36)]
    assert np.all(np.abs(np.array(steps) - 10.0) < 0.6), steps
    assert abs(sum(steps) - 360.0) < 2.0
    # One rotation axis; camera centres on a circle in the plane normal to it.
    centres = np.array([-Ri.T @ ti for Ri, ti in zip(R, t, strict=True)])
    offsets = centres - centres.mean(axis=0)
    _, s, vt = np.linalg.svd(offsets)
    assert s[2] < 1e-4 * s[0]
    radii = np.linalg.norm(offsets, axis=1)
    assert radii.std() < 0.01 * radii.mean()
    # Each view's own K (RQ of the upgraded P) has ~zero skew and unit aspect.
    from scipy.io import loadmat

    P = np.array([np.asarray(c, float) for c in loadmat(str(folder / "dino_Ps.mat"))["P"].ravel()])
    result = autocalibrate_cameras(P, (720, 576))
    assert np.all(np.abs(result.K[:, 0, 1]) < 0.005 * result.K[:, 0, 0])
    assert np.all(np.abs(result.K[:, 0, 0] / result.K[:, 1, 1] - 1.0) < 1e-3)
    # Reprojection of the Oxford tracks is unchanged by the upgrade (same projective cameras up to H).
    again = read_projective_cameras_metric(folder / "dino_Ps.mat")
    assert all(np.allclose(again[n].cam_from_world.rotation, gt[n].cam_from_world.rotation) for n in names)
