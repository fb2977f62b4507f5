"""Rigid and similarity transforms and rotation parametrisations.

Conventions (docs/conventions.md):
- Poses are stored world-to-camera, ``cam_from_world``: ``x_cam = R @ x_world + t``; centre ``C = -R.T @ t``.
- Rotations are 3x3 float64 matrices in data types, rotation vectors (axis * angle, radians) in bundle
  adjustment, and quaternions only at I/O boundaries, always ordered ``quat_wxyz``.
- scipy's ``Rotation`` uses xyzw quaternions; the conversion lives in this module only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError

__all__ = [
    "Rigid3d",
    "Sim3d",
    "rotvec_to_matrix",
    "matrix_to_rotvec",
    "quat_wxyz_to_matrix",
    "matrix_to_quat_wxyz",
    "euler_to_matrix",
    "matrix_to_euler",
    "rotation_angle",
    "rotation_angle_deg",
    "angle_between_vectors_deg",
    "relative_poses_to_first_cam_to_world",
    "relative_poses_to_first_cam_from_world",
    "umeyama_alignment",
    "skew",
    "project_to_so3",
]


def _as_array(x, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape[arr.ndim - len(shape_tail) :] != shape_tail:
        raise InputError(f"{name} must have trailing shape {shape_tail}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or inf")
    return arr


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrix ``[v]_x`` such that ``skew(v) @ w == cross(v, w)``.

    Args:
        v: (..., 3) vectors.

    Returns:
        (..., 3, 3) skew-symmetric matrices.
    """
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1] = -v[..., 2]
    out[..., 0, 2] = v[..., 1]
    out[..., 1, 0] = v[..., 2]
    out[..., 1, 2] = -v[..., 0]
    out[..., 2, 0] = -v[..., 1]
    out[..., 2, 1] = v[..., 0]
    return out


def project_to_so3(M: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius norm) to each 3x3 matrix of (..., 3, 3), via SVD with det fixed to +1."""
    U, _, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64))
    U[..., :, 2] *= np.sign(np.linalg.det(U @ Vt))[..., None]  # U diag(1, 1, det) V^T
    return U @ Vt


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3), radians, to rotation matrices (..., 3, 3)."""
    rv = _as_array(rotvec, (3,), "rotvec")
    return Rotation.from_rotvec(rv.reshape(-1, 3)).as_matrix().reshape(rv.shape[:-1] + (3, 3))


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to rotation vectors (..., 3) with angle in [0, pi]."""
    R = _as_array(R, (3, 3), "R")
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


def quat_wxyz_to_matrix(quat_wxyz: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) ordered w, x, y, z (normalised here) to rotation matrices (..., 3, 3)."""
    q = _as_array(quat_wxyz, (4,), "quat_wxyz")
    norms = np.linalg.norm(q, axis=-1)
    if np.any(norms < 1e-12):
        raise InputError("quat_wxyz has zero norm")
    q_xyzw = np.roll(q.reshape(-1, 4), -1, axis=-1)
    return Rotation.from_quat(q_xyzw).as_matrix().reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to unit quaternions (..., 4) ordered w, x, y, z with w >= 0."""
    R = _as_array(R, (3, 3), "R")
    q_xyzw = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()
    q = np.roll(q_xyzw, 1, axis=-1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)  # canonical sign: w >= 0
    return q.reshape(R.shape[:-2] + (4,))


def euler_to_matrix(angles_rad: np.ndarray, axes: str = "xyz") -> np.ndarray:
    """Euler angles (..., 3) in radians to rotation matrices.

    Args:
        angles_rad: angles for the named axes, in order.
        axes: scipy axis sequence; lower case = extrinsic (fixed axes), upper case = intrinsic.
    """
    a = _as_array(angles_rad, (3,), "angles_rad")
    if len(axes) != 3 or not (axes.islower() or axes.isupper()) or set(axes.lower()) - set("xyz"):
        raise InputError(f"axes must be three of x/y/z, all lower or all upper case, got {axes!r}")
    return Rotation.from_euler(axes, a.reshape(-1, 3)).as_matrix().reshape(a.shape[:-1] + (3, 3))


def matrix_to_euler(R: np.ndarray, axes: str = "xyz") -> np.ndarray:
    """Rotation matrices (..., 3, 3) to Euler angles (..., 3) in radians for the named axes."""
    R = _as_array(R, (3, 3), "R")
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_euler(axes).reshape(R.shape[:-2] + (3,))


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Geodesic angle (radians, in [0, pi]) of rotation matrices (..., 3, 3).

    Uses atan2 of the sine and cosine parts, which stays accurate for small and near-pi angles
    where arccos((tr - 1) / 2) loses precision.
    """
    R = np.asarray(R, dtype=np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    axis_part = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], axis=-1
    )
    sin = np.linalg.norm(axis_part, axis=-1) / 2.0
    return np.arctan2(sin, cos)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray | None = None) -> np.ndarray:
    """Angle in degrees of ``R_a`` or, given ``R_b``, of the relative rotation ``R_a.T @ R_b``."""
    R_a = np.asarray(R_a, dtype=np.float64)
    if R_b is not None:
        R_a = np.swapaxes(R_a, -1, -2) @ np.asarray(R_b, dtype=np.float64)
    return np.degrees(rotation_angle(R_a))


def angle_between_vectors_deg(a: np.ndarray, b: np.ndarray, *, sign_invariant: bool = False) -> np.ndarray:
    """Angle in degrees between vectors (..., 3); with ``sign_invariant`` the angle to ±b (0..90)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.sum(a * b, axis=-1)
    if sign_invariant:
        dot = np.abs(dot)
    return np.degrees(np.arctan2(cross, dot))


@dataclass(frozen=True)
class Rigid3d:
    """Rigid transform ``b_from_a``: ``x_b = rotation @ x_a + translation``.

    Attributes:
        rotation: (3, 3) float64 rotation matrix.
        translation: (3,) float64 translation.
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        R = _as_array(self.rotation, (3, 3), "rotation").reshape(3, 3).copy()
        t = _as_array(self.translation, (3,), "translation").reshape(3).copy()
        R.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> Rigid3d:
        """From a (3, 4) or (4, 4) matrix ``[R | t]``."""
        T = np.asarray(T, dtype=np.float64)
        if T.shape not in ((3, 4), (4, 4)):
            raise InputError(f"rigid matrix must be 3x4 or 4x4, got {T.shape}")
        return cls(T[:3, :3], T[:3, 3])

    @classmethod
    def from_rotvec(cls, rotvec: np.ndarray, translation: np.ndarray) -> Rigid3d:
        return cls(rotvec_to_matrix(rotvec), translation)

    @classmethod
    def from_quat_wxyz(cls, quat_wxyz: np.ndarray, translation: np.ndarray) -> Rigid3d:
        return cls(quat_wxyz_to_matrix(quat_wxyz), translation)

    @property
    def quat_wxyz(self) -> np.ndarray:
        return matrix_to_quat_wxyz(self.rotation)

    @property
    def rotvec(self) -> np.ndarray:
        return matrix_to_rotvec(self.rotation)

    def matrix(self) -> np.ndarray:
        """(3, 4) matrix ``[R | t]``."""
        return np.hstack([self.rotation, self.translation[:, None]])

    def matrix4(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        M = np.eye(4)
        M[:3, :4] = self.matrix()
        return M

    def inverse(self) -> Rigid3d:
        """``a_from_b`` for this ``b_from_a``."""
        return Rigid3d(self.rotation.T, -self.rotation.T @ self.translation)

    def __matmul__(self, other: Rigid3d) -> Rigid3d:
        """Compose right to left: ``c_from_b @ b_from_a == c_from_a``."""
        if not isinstance(other, Rigid3d):
            return NotImplemented
        return Rigid3d(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)

    def apply(self, points_in_a: np.ndarray) -> np.ndarray:
        """Transform (N, 3) or (3,) points from frame a to frame b."""
        p = np.asarray(points_in_a, dtype=np.float64)
        return p @ self.rotation.T + self.translation

    @property
    def center(self) -> np.ndarray:
        """Origin of frame b expressed in frame a; for ``cam_from_world`` the camera centre in world."""
        return -self.rotation.T @ self.translation


@dataclass(frozen=True)
class Sim3d:
    """Similarity ``b_from_a``: ``x_b = scale * rotation @ x_a + translation``."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise InputError(f"Sim3d scale must be positive and finite, got {self.scale}")
        R = _as_array(self.rotation, (3, 3), "rotation").reshape(3, 3).copy()
        t = _as_array(self.translation, (3,), "translation").reshape(3).copy()
        R.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    def inverse(self) -> Sim3d:
        s_inv = 1.0 / self.scale
        R_inv = self.rotation.T
        return Sim3d(s_inv, R_inv, -s_inv * R_inv @ self.translation)

    def __matmul__(self, other: Sim3d) -> Sim3d:
        if not isinstance(other, Sim3d):
            return NotImplemented
        return Sim3d(
            self.scale * other.scale,
            self.rotation @ other.rotation,
            self.scale * self.rotation @ other.translation + self.translation,
        )

    def apply(self, points_in_a: np.ndarray) -> np.ndarray:
        p = np.asarray(points_in_a, dtype=np.float64)
        return self.scale * p @ self.rotation.T + self.translation

    def transform_pose(self, cam_from_a: Rigid3d) -> Rigid3d:
        """Express a ``cam_from_a`` pose in frame b: returns ``cam_from_b`` (same camera, new world)."""
        # x_cam = R_c x_a + t_c and x_a = (R^T (x_b - t)) / s  =>  scale the camera translation by s.
        R_new = cam_from_a.rotation @ self.rotation.T
        t_new = self.scale * cam_from_a.translation - R_new @ self.translation
        return Rigid3d(R_new, t_new)

    def matrix(self) -> np.ndarray:
        """(3, 4) matrix ``[sR | t]``."""
        return np.hstack([self.scale * self.rotation, self.translation[:, None]])


def relative_poses_to_first_cam_to_world(
    rotations_world_from_cam: np.ndarray, translations_world_from_cam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Express camera-to-world poses relative to the first camera.

    ``R'_i = R_1^T R_i`` and ``t'_i = R_1^T (t_i - t_1)``: the first camera becomes the identity.

    Args:
        rotations_world_from_cam: (N, 3, 3).
        translations_world_from_cam: (N, 3) camera centres in world.

    Returns:
        (R', t') with the same shapes, now ``first_cam_from_cam``.
    """
    R = _as_array(rotations_world_from_cam, (3, 3), "rotations")
    t = _as_array(translations_world_from_cam, (3,), "translations")
    if R.ndim != 3 or t.ndim != 2 or len(R) != len(t) or len(R) == 0:
        raise InputError(f"need matching (N,3,3) and (N,3) arrays, got {R.shape} and {t.shape}")
    R1T = R[0].T
    return R1T @ R, (t - t[0]) @ R1T.T


def relative_poses_to_first_cam_from_world(
    rotations_cam_from_world: np.ndarray, translations_cam_from_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera counterpart: ``cam_i_from_first = cam_i_from_world @ world_from_first``.

    ``R'_i = R_i R_1^T`` and ``t'_i = t_i - R'_i t_1``; the first camera becomes the identity.
    """
    R = _as_array(rotations_cam_from_world, (3, 3), "rotations")
    t = _as_array(translations_cam_from_world, (3,), "translations")
    if R.ndim != 3 or t.ndim != 2 or len(R) != len(t) or len(R) == 0:
        raise InputError(f"need matching (N,3,3) and (N,3) arrays, got {R.shape} and {t.shape}")
    R_rel = R @ R[0].T
    t_rel = t - np.einsum("nij,j->ni", R_rel, t[0])
    return R_rel, t_rel


def umeyama_alignment(points_src: np.ndarray, points_dst: np.ndarray, *, with_scale: bool = True) -> Sim3d:
    """Least-squares similarity ``dst_from_src`` (Umeyama 1991) mapping (N, 3) src onto (N, 3) dst.

    Raises:
        InputError: fewer than 3 points, mismatched shapes, or degenerate (collinear / coincident) points.
    """
    src = _as_array(points_src, (3,), "points_src").reshape(-1, 3)
    dst = _as_array(points_dst, (3,), "points_dst").reshape(-1, 3)
    if src.shape != dst.shape or len(src) < 3:
        raise InputError(f"need >= 3 matching points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = np.mean(np.sum(xs**2, axis=1))
    if var_s < 1e-300:
        raise InputError("umeyama_alignment: source points are all coincident")
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    if S[1] < 1e-12 * max(S[0], 1e-300):
        raise InputError("umeyama_alignment: points are collinear, rotation is undetermined")
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0
    R = U @ D @ Vt
    scale = float(np.sum(S * np.diag(D)) / var_s) if with_scale else 1.0
    t = mu_d - scale * R @ mu_s
    return Sim3d(scale, R, t)
