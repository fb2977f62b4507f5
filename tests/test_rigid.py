"""Round trips and conventions of geomvision.geometry.rigid (docs/conventions.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError
from geomvision.geometry import rigid
from geomvision.geometry.rigid import Rigid3d, Sim3d

TOL = 1e-12


def random_rotations(rng, n):
    return Rotation.random(n, random_state=int(rng.integers(1 << 31))).as_matrix()


def random_rigid(rng):
    return Rigid3d(random_rotations(rng, 1)[0], rng.normal(size=3) * 3)


# ---------------------------------------------------------------------------------------------- rotations


def test_rotvec_round_trip(rng):
    R = random_rotations(rng, 50)
    rv = rigid.matrix_to_rotvec(R)
    assert rv.shape == (50, 3)
    assert np.all(np.linalg.norm(rv, axis=1) <= np.pi + TOL)
    np.testing.assert_allclose(rigid.rotvec_to_matrix(rv), R, atol=TOL)


def test_rotvec_known_value():
    # 90 degrees about z maps x to y (right-handed, active rotation).
    R = rigid.rotvec_to_matrix(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(R @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=TOL)


def test_small_rotvec_precision():
    rv = np.array([1e-9, -2e-9, 3e-9])
    np.testing.assert_allclose(rigid.matrix_to_rotvec(rigid.rotvec_to_matrix(rv)), rv, rtol=1e-6, atol=1e-20)


def test_quat_wxyz_round_trip_and_order(rng):
    R = random_rotations(rng, 50)
    q = rigid.matrix_to_quat_wxyz(R)
    assert q.shape == (50, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=TOL)
    assert np.all(q[:, 0] >= 0)  # canonical sign
    np.testing.assert_allclose(rigid.quat_wxyz_to_matrix(q), R, atol=TOL)
    # -q is the same rotation; scale is normalised away
    np.testing.assert_allclose(rigid.quat_wxyz_to_matrix(-3.0 * q), R, atol=TOL)


def test_quat_wxyz_known_value():
    # 180 degrees about x: w = cos(90deg) = 0, x = 1. Order must be w first (scipy is xyzw).
    R = rigid.quat_wxyz_to_matrix(np.array([0.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(R, np.diag([1.0, -1.0, -1.0]), atol=TOL)
    q = rigid.matrix_to_quat_wxyz(rigid.rotvec_to_matrix(np.array([0.0, 0.0, np.pi / 2])))
    np.testing.assert_allclose(q, [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)], atol=TOL)


@pytest.mark.parametrize("axes", ["xyz", "zyx", "XYZ", "ZYX", "zxz"])
def test_euler_round_trip(rng, axes):
    R = random_rotations(rng, 30)
    angles = rigid.matrix_to_euler(R, axes)
    np.testing.assert_allclose(rigid.euler_to_matrix(angles, axes), R, atol=1e-11)


def test_euler_extrinsic_vs_intrinsic():
    a = np.array([0.3, -0.2, 0.7])
    Rx, Ry, Rz = (rigid.rotvec_to_matrix(np.eye(3)[k] * a[k]) for k in range(3))
    # extrinsic xyz: first about fixed x, then y, then z  =>  Rz Ry Rx
    np.testing.assert_allclose(rigid.euler_to_matrix(a, "xyz"), Rz @ Ry @ Rx, atol=TOL)
    # intrinsic XYZ: about x, then the new y, then the new z  =>  Rx Ry Rz
    np.testing.assert_allclose(rigid.euler_to_matrix(a, "XYZ"), Rx @ Ry @ Rz, atol=TOL)


def test_rotation_angle_accuracy():
    for angle in [0.0, 1e-8, 0.3, np.pi / 2, np.pi - 1e-7, np.pi]:
        R = rigid.rotvec_to_matrix(np.array([0.0, angle, 0.0]))
        assert abs(rigid.rotation_angle(R) - angle) < 1e-12
    R1 = rigid.rotvec_to_matrix(np.array([0.1, 0.0, 0.0]))
    R2 = rigid.rotvec_to_matrix(np.array([0.4, 0.0, 0.0]))
    assert abs(rigid.rotation_angle_deg(R1, R2) - np.degrees(0.3)) < 1e-10


def test_angle_between_vectors_deg():
    assert abs(rigid.angle_between_vectors_deg([1, 0, 0], [0, 1, 0]) - 90.0) < TOL
    assert abs(rigid.angle_between_vectors_deg([1, 0, 0], [-1, 1e-9, 0]) - 180.0) < 1e-6
    assert abs(rigid.angle_between_vectors_deg([1, 0, 0], [-1, 0, 0], sign_invariant=True)) < TOL


def test_skew_and_project_to_so3(rng):
    v, w = rng.normal(size=3), rng.normal(size=3)
    np.testing.assert_allclose(rigid.skew(v) @ w, np.cross(v, w), atol=TOL)
    R = random_rotations(rng, 1)[0]
    noisy = R + 1e-6 * rng.normal(size=(3, 3))
    P = rigid.project_to_so3(noisy)
    np.testing.assert_allclose(P @ P.T, np.eye(3), atol=TOL)
    assert abs(np.linalg.det(P) - 1.0) < TOL
    assert rigid.rotation_angle_deg(P, R) < 1e-3


# ------------------------------------------------------------------------------------------------ Rigid3d


def test_rigid_apply_and_center(rng):
    T = random_rigid(rng)
    X = rng.normal(size=(20, 3))
    np.testing.assert_allclose(T.apply(X), X @ T.rotation.T + T.translation, atol=TOL)
    # cam_from_world: the camera centre maps to the camera origin
    np.testing.assert_allclose(T.apply(T.center), np.zeros(3), atol=1e-12)
    np.testing.assert_allclose(T.center, -T.rotation.T @ T.translation, atol=TOL)


def test_rigid_inverse_and_compose(rng):
    a_from_w, b_from_a = random_rigid(rng), random_rigid(rng)
    X = rng.normal(size=(10, 3))
    identity = a_from_w @ a_from_w.inverse()
    np.testing.assert_allclose(identity.rotation, np.eye(3), atol=TOL)
    np.testing.assert_allclose(identity.translation, np.zeros(3), atol=TOL)
    np.testing.assert_allclose(a_from_w.inverse().apply(a_from_w.apply(X)), X, atol=1e-12)
    # right-to-left composition: (b_from_a @ a_from_w) x == b_from_a(a_from_w(x))
    np.testing.assert_allclose((b_from_a @ a_from_w).apply(X), b_from_a.apply(a_from_w.apply(X)), atol=1e-12)
    np.testing.assert_allclose(
        (b_from_a @ a_from_w).matrix4(), b_from_a.matrix4() @ a_from_w.matrix4(), atol=1e-12
    )


def test_rigid_constructors_round_trip(rng):
    T = random_rigid(rng)
    for other in (
        Rigid3d.from_matrix(T.matrix()),
        Rigid3d.from_matrix(T.matrix4()),
        Rigid3d.from_rotvec(T.rotvec, T.translation),
        Rigid3d.from_quat_wxyz(T.quat_wxyz, T.translation),
    ):
        np.testing.assert_allclose(other.rotation, T.rotation, atol=TOL)
        np.testing.assert_allclose(other.translation, T.translation, atol=TOL)


def test_rigid_is_immutable(rng):
    T = random_rigid(rng)
    with pytest.raises(ValueError):
        T.rotation[0, 0] = 2.0
    R = np.eye(3)
    T2 = Rigid3d(R, np.zeros(3))
    R[0, 0] = 5.0  # the caller's array is copied
    assert T2.rotation[0, 0] == 1.0


# -------------------------------------------------------------------------------------------------- Sim3d


def random_sim(rng):
    return Sim3d(float(rng.uniform(0.2, 5.0)), random_rotations(rng, 1)[0], rng.normal(size=3))


def test_sim3d_inverse_compose_apply(rng):
    S1, S2 = random_sim(rng), random_sim(rng)
    X = rng.normal(size=(10, 3))
    np.testing.assert_allclose(S1.inverse().apply(S1.apply(X)), X, atol=1e-12)
    np.testing.assert_allclose((S1 @ S2).apply(X), S1.apply(S2.apply(X)), atol=1e-12)
    np.testing.assert_allclose(S1.apply(X), X @ S1.matrix()[:, :3].T + S1.matrix()[:, 3], atol=1e-12)


def test_sim3d_transform_pose_keeps_projections(rng):
    # A camera sees the same normalised image point before and after a similarity of the world.
    cam_from_a, b_from_a = random_rigid(rng), random_sim(rng)
    X_a = rng.normal(size=(10, 3)) + 10 * cam_from_a.center
    cam_from_b = b_from_a.transform_pose(cam_from_a)
    x_before = cam_from_a.apply(X_a)
    x_after = cam_from_b.apply(b_from_a.apply(X_a))
    np.testing.assert_allclose(x_after, b_from_a.scale * x_before, atol=1e-10)
    np.testing.assert_allclose(cam_from_b.center, b_from_a.apply(cam_from_a.center), atol=1e-10)


# ----------------------------------------------------------------------------------------- relative poses


def test_relative_poses_both_directions_agree(rng):
    cams_from_world = [random_rigid(rng) for _ in range(6)]
    R_cw = np.stack([c.rotation for c in cams_from_world])
    t_cw = np.stack([c.translation for c in cams_from_world])
    R_rel, t_rel = rigid.relative_poses_to_first_cam_from_world(R_cw, t_cw)
    # first camera becomes the identity
    np.testing.assert_allclose(R_rel[0], np.eye(3), atol=TOL)
    np.testing.assert_allclose(t_rel[0], np.zeros(3), atol=TOL)
    # equals the composition cam_i_from_world @ world_from_cam0
    for i, c in enumerate(cams_from_world):
        expected = c @ cams_from_world[0].inverse()
        np.testing.assert_allclose(R_rel[i], expected.rotation, atol=TOL)
        np.testing.assert_allclose(t_rel[i], expected.translation, atol=1e-12)
    # camera-to-world direction: world_from_cam_i = inverse, result is first_cam_from_cam_i
    world_from_cams = [c.inverse() for c in cams_from_world]
    R_wc = np.stack([w.rotation for w in world_from_cams])
    t_wc = np.stack([w.translation for w in world_from_cams])
    R_rel2, t_rel2 = rigid.relative_poses_to_first_cam_to_world(R_wc, t_wc)
    for i in range(6):
        inv = Rigid3d(R_rel[i], t_rel[i]).inverse()
        np.testing.assert_allclose(R_rel2[i], inv.rotation, atol=TOL)
        np.testing.assert_allclose(t_rel2[i], inv.translation, atol=1e-12)


def test_relative_poses_bad_input():
    with pytest.raises(InputError):
        rigid.relative_poses_to_first_cam_from_world(np.zeros((2, 3, 3)), np.zeros((3, 3)))
    with pytest.raises(InputError):
        rigid.relative_poses_to_first_cam_to_world(np.zeros((0, 3, 3)), np.zeros((0, 3)))


# ---------------------------------------------------------------------------------------------- umeyama


@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_similarity(rng, with_scale):
    truth = random_sim(rng)
    if not with_scale:
        truth = Sim3d(1.0, truth.rotation, truth.translation)
    src = rng.normal(size=(40, 3)) * [3.0, 1.0, 0.5]
    est = rigid.umeyama_alignment(src, truth.apply(src), with_scale=with_scale)
    assert abs(est.scale - truth.scale) < 1e-12
    np.testing.assert_allclose(est.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(est.translation, truth.translation, atol=1e-11)


def test_umeyama_handles_reflection_case(rng):
    # Planar points: the SVD could return a reflection; the det fix must give a proper rotation.
    truth = random_sim(rng)
    src = np.c_[rng.normal(size=(30, 2)), np.zeros(30)]
    est = rigid.umeyama_alignment(src, truth.apply(src))
    assert abs(np.linalg.det(est.rotation) - 1.0) < 1e-12
    np.testing.assert_allclose(est.apply(src), truth.apply(src), atol=1e-10)


def test_umeyama_bad_input():
    with pytest.raises(InputError):
        rigid.umeyama_alignment(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="coincident"):
        rigid.umeyama_alignment(np.ones((5, 3)), np.ones((5, 3)))
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="collinear"):
        rigid.umeyama_alignment(line, line)
    with pytest.raises(InputError):
        rigid.umeyama_alignment(np.zeros((5, 3)), np.zeros((4, 3)))


# ------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        Rigid3d(np.eye(2), np.zeros(3))
    with pytest.raises(InputError):
        Rigid3d(np.eye(3), np.array([0.0, np.nan, 0.0]))
    with pytest.raises(InputError):
        Rigid3d.from_matrix(np.eye(3))
    with pytest.raises(InputError):
        Sim3d(0.0)
    with pytest.raises(InputError):
        Sim3d(float("nan"))
    with pytest.raises(InputError):
        rigid.quat_wxyz_to_matrix(np.zeros(4))
    with pytest.raises(InputError):
        rigid.rotvec_to_matrix(np.array([1.0, 2.0]))
    with pytest.raises(InputError):
        rigid.euler_to_matrix(np.zeros(3), "xYz")
    with pytest.raises(InputError):
        rigid.euler_to_matrix(np.zeros(3), "abc")


# ------------------------------------------------------------------------------------- property tests

_finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(rv=arrays(np.float64, 3, elements=_finite), t=arrays(np.float64, 3, elements=_finite))
def test_property_pose_round_trips(rv, t):
    """Any rotation vector and translation: rotvec/quat/matrix agree, inverse undoes, centre maps to 0."""
    T = Rigid3d.from_rotvec(rv, t)
    R = T.rotation
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rigid.quat_wxyz_to_matrix(T.quat_wxyz), R, atol=1e-12)
    np.testing.assert_allclose(rigid.rotvec_to_matrix(T.rotvec), R, atol=1e-12)
    assert abs(np.linalg.norm(T.rotvec) - rigid.rotation_angle(R)) < 1e-9
    ident = T.inverse() @ T
    np.testing.assert_allclose(ident.matrix4(), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(T.apply(T.center), np.zeros(3), atol=1e-12)


def test_project_to_so3_of_a_stack_matches_each_matrix():
    """A stack is projected matrix by matrix; a noisy rotation comes back to a proper rotation near it,
    and a reflection (det -1) to a rotation, not to itself."""
    rng = np.random.default_rng(4)
    truth = Rotation.random(5, random_state=4).as_matrix()
    noisy = truth + 1e-3 * rng.standard_normal((5, 3, 3))
    noisy[4] = -truth[4]  # det -1
    stacked = rigid.project_to_so3(noisy)
    for k in range(5):
        np.testing.assert_array_equal(stacked[k], rigid.project_to_so3(noisy[k]))
        np.testing.assert_allclose(stacked[k] @ stacked[k].T, np.eye(3), atol=1e-12)
        assert np.linalg.det(stacked[k]) == pytest.approx(1.0)
    assert np.max(rigid.rotation_angle(np.swapaxes(stacked[:4], 1, 2) @ truth[:4])) < 3e-3
