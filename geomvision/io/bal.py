"""Bundle Adjustment in the Large (BAL) problem files (Agarwal et al., ECCV 2010).

BAL stores ``cam_from_world`` as a Rodrigues vector and translation, with the camera looking down -z,
and observations relative to the image centre with +y up; each camera has its own ``f, k1, k2``.
``read_bal`` converts to this project's convention so costs are identical: the pose is premultiplied by
``F = diag(1, -1, -1)`` (a rotation by pi about x, turning the -z camera into a +z/OpenCV camera), the
observed y is negated, and each camera becomes a ``RADIAL`` camera ``(f, cx=0, cy=0, k1, k2)``.
With ``P' = F P``: ``x = P'x/P'z = -Px/Pz`` (BAL's x) and ``y = P'y/P'z = Py/Pz = -(BAL's y)``, and the
distortion depends only on ``r^2``, which is unchanged. ``write_bal`` applies the inverse mapping.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from geomvision.errors import InputError
from geomvision.geometry.rigid import matrix_to_rotvec, rotvec_to_matrix
from geomvision.runtime.atomic import atomic_write_text

logger = logging.getLogger(__name__)

_FLIP = np.diag([1.0, -1.0, -1.0])


@dataclass
class BALProblem:
    """A BAL problem in the project's convention (OpenCV camera frame, +y down, centred pixels).

    Attributes:
        rotvecs: (C, 3) ``cam_from_world`` rotation vectors (radians).
        translations: (C, 3) ``cam_from_world`` translations.
        intrinsics: (C, 5) RADIAL parameters ``f, cx, cy, k1, k2`` (cx = cy = 0).
        points: (N, 3) world points.
        obs_camera: (M,) camera index per observation.
        obs_point: (M,) point index per observation.
        obs_px: (M, 2) observations, pixels relative to the image centre, +y down.
    """

    rotvecs: np.ndarray
    translations: np.ndarray
    intrinsics: np.ndarray
    points: np.ndarray
    obs_camera: np.ndarray
    obs_point: np.ndarray
    obs_px: np.ndarray

    @property
    def num_cameras(self) -> int:
        return len(self.rotvecs)

    @property
    def num_points(self) -> int:
        return len(self.points)

    @property
    def num_observations(self) -> int:
        return len(self.obs_camera)


def _fail(path, line: int, message: str) -> InputError:
    return InputError(f"{os.fspath(path)}: line {line}: {message}")


def read_bal(path: str | os.PathLike) -> BALProblem:
    """Read a BAL text problem and convert it to the project's convention (see module docstring).

    Raises:
        InputError: missing file, bad header, wrong number of values, non-numeric or non-finite
            values, out-of-range indices or non-positive focal length; the message names the line.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise InputError(f"cannot read BAL file {os.fspath(path)}: {exc.strerror}") from exc
    # blank lines are allowed anywhere (GTSAM's copies have them); keep original numbers for messages
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    header = numbered[0][1].split() if numbered else []
    if len(header) != 3 or not all(h.isdigit() for h in header):
        raise _fail(
            path,
            numbered[0][0] if numbered else 1,
            f"expected header '<num_cameras> <num_points> <num_observations>', got {header}",
        )
    n_cam, n_pt, n_obs = (int(h) for h in header)
    if n_cam == 0 or n_pt == 0 or n_obs == 0:
        raise _fail(
            path, numbered[0][0], f"empty problem: {n_cam} cameras, {n_pt} points, {n_obs} observations"
        )
    obs_lines = numbered[1 : 1 + n_obs]
    if len(obs_lines) < n_obs:
        raise _fail(
            path,
            len(text.splitlines()) + 1,
            f"file truncated: expected {n_obs} observation lines, found {len(obs_lines)}",
        )
    obs = _parse_lines(path, obs_lines, 4, "observation")
    obs_line_numbers = np.array([n for n, _ in obs_lines])
    params, param_lines = _parse_tokens(path, numbered[1 + n_obs :])
    n_params = 9 * n_cam + 3 * n_pt
    if len(params) < n_params:
        raise _fail(
            path,
            len(text.splitlines()) + 1,
            f"file truncated: expected {n_params} camera/point values, found {len(params)}",
        )
    if len(params) > n_params:
        raise _fail(
            path, int(param_lines[n_params]), f"unexpected data after {n_cam} cameras and {n_pt} points"
        )
    cam_idx, pt_idx = obs[:, 0], obs[:, 1]
    for name, idx, bound in (("camera", cam_idx, n_cam), ("point", pt_idx, n_pt)):
        bad = np.flatnonzero((idx < 0) | (idx >= bound) | (idx != np.round(idx)))
        if bad.size:
            raise _fail(
                path, int(obs_line_numbers[bad[0]]), f"{name} index {idx[bad[0]]:g} outside [0, {bound})"
            )
    cams = params[: 9 * n_cam].reshape(n_cam, 9)
    points = params[9 * n_cam :].reshape(n_pt, 3)
    bad_f = np.flatnonzero(cams[:, 6] <= 0)
    if bad_f.size:
        raise _fail(
            path,
            int(param_lines[9 * int(bad_f[0]) + 6]),
            f"camera {bad_f[0]} has non-positive focal length {cams[bad_f[0], 6]:g}",
        )
    R_bal = rotvec_to_matrix(cams[:, :3])
    R = _FLIP @ R_bal
    t = cams[:, 3:6] @ _FLIP
    intrinsics = np.column_stack([cams[:, 6], np.zeros(n_cam), np.zeros(n_cam), cams[:, 7], cams[:, 8]])
    problem = BALProblem(
        matrix_to_rotvec(R),
        t,
        intrinsics,
        points,
        cam_idx.astype(np.int64),
        pt_idx.astype(np.int64),
        obs[:, 2:4] * np.array([1.0, -1.0]),
    )
    _warn_behind(problem)
    return problem


def _parse_lines(path, lines: list[tuple[int, str]], width: int, what: str) -> np.ndarray:
    """Parse numbered lines of exactly ``width`` finite numbers each into a (len(lines), width) array."""
    try:
        values = np.array(" ".join(line for _, line in lines).split(), dtype=np.float64)
    except ValueError:
        values = None
    if values is None or values.size != len(lines) * width:
        for number, line in lines:
            tokens = line.split()
            if len(tokens) != width:
                raise _fail(path, number, f"expected {width} values on an {what} line, got {line.strip()!r}")
            _check_numbers(path, number, tokens)
    values = values.reshape(len(lines), width)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise _fail(path, lines[bad[0]][0], f"non-finite value in {lines[bad[0]][1].strip()!r}")
    return values


def _check_numbers(path, number: int, tokens: list[str]) -> None:
    for tok in tokens:
        try:
            float(tok)
        except ValueError:
            raise _fail(path, number, f"not a number: {tok!r}") from None


def _parse_tokens(path, lines: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """All numbers of the numbered lines (any count per line) and the line number of each."""
    split = [line.split() for _, line in lines]
    line_of = np.repeat([n for n, _ in lines], [len(t) for t in split]).astype(np.int64)
    try:
        values = np.array([tok for tokens in split for tok in tokens], dtype=np.float64)
    except ValueError:
        for (number, _), tokens in zip(lines, split, strict=True):
            _check_numbers(path, number, tokens)
        raise
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise _fail(path, int(line_of[bad[0]]), f"non-finite value {values[bad[0]]}")
    return values, line_of


def _warn_behind(problem: BALProblem) -> None:
    """Observations of points behind their camera are legal in 'pre' problems but worth a warning."""
    R = rotvec_to_matrix(problem.rotvecs)[problem.obs_camera]
    depth = (
        np.einsum("mj,mj->m", R[:, 2], problem.points[problem.obs_point])
        + problem.translations[problem.obs_camera, 2]
    )
    behind = int(np.count_nonzero(depth <= 0))
    if behind:
        logger.warning("BAL: %d of %d observations have the point behind the camera", behind, len(depth))


def write_bal(path: str | os.PathLike, problem: BALProblem) -> None:
    """Write ``problem`` (project convention) as a BAL text file, atomically. ``cx, cy`` must be 0."""
    if np.any(problem.intrinsics[:, 1:3] != 0):
        raise InputError("BAL has no principal point; intrinsics cx, cy must be 0")
    R = _FLIP @ rotvec_to_matrix(problem.rotvecs)
    t = problem.translations @ _FLIP
    cams = np.column_stack([matrix_to_rotvec(R), t, problem.intrinsics[:, [0, 3, 4]]])
    obs_px = problem.obs_px * np.array([1.0, -1.0])
    parts = [f"{problem.num_cameras} {problem.num_points} {problem.num_observations}\n"]
    parts.extend(
        f"{c} {p} {x:.17g} {y:.17g}\n"
        for c, p, (x, y) in zip(
            problem.obs_camera.tolist(), problem.obs_point.tolist(), obs_px.tolist(), strict=True
        )
    )
    parts.append("\n".join(f"{v:.17g}" for v in cams.ravel().tolist()) + "\n")
    parts.append("\n".join(f"{v:.17g}" for v in problem.points.ravel().tolist()) + "\n")
    atomic_write_text(path, "".join(parts))


def bal_to_reconstruction(problem: BALProblem):
    """A ``Reconstruction`` with one RADIAL camera and one view per BAL camera (ids from 1).

    Keypoint ``k`` of view ``i`` is the ``k``-th observation made by BAL camera ``i - 1``; point ids are
    BAL point index + 1. The image size is set just large enough to contain every observation
    (BAL does not store it); the principal point stays at the BAL image centre (0, 0).
    """
    from geomvision.geometry.rigid import Rigid3d
    from geomvision.scene.camera import Camera
    from geomvision.scene.reconstruction import Point3D, Reconstruction, View

    rec = Reconstruction()
    size = int(2 * np.ceil(np.abs(problem.obs_px).max(initial=0.0)) + 2)
    order = np.argsort(problem.obs_camera, kind="stable")
    cam_sorted = problem.obs_camera[order]
    starts = np.searchsorted(cam_sorted, np.arange(problem.num_cameras + 1))
    keypoint_index = np.empty(problem.num_observations, np.int64)
    keypoint_index[order] = np.arange(problem.num_observations) - starts[cam_sorted]
    R = rotvec_to_matrix(problem.rotvecs)
    for c in range(problem.num_cameras):
        rec.add_camera(Camera(c + 1, "RADIAL", size, size, problem.intrinsics[c]))
        obs = order[starts[c] : starts[c + 1]]
        rec.add_view(
            View(
                c + 1,
                f"{c:05d}.jpg",
                c + 1,
                Rigid3d(R[c], problem.translations[c]),
                problem.obs_px[obs],
                problem.obs_point[obs] + 1,
            )
        )
    p_order = np.argsort(problem.obs_point, kind="stable")
    p_starts = np.searchsorted(problem.obs_point[p_order], np.arange(problem.num_points + 1))
    image_ids = (problem.obs_camera + 1).tolist()
    kps = keypoint_index.tolist()
    p_order_list = p_order.tolist()
    for j in range(problem.num_points):
        track = [(image_ids[m], kps[m]) for m in p_order_list[p_starts[j] : p_starts[j + 1]]]
        rec.points3D[j + 1] = Point3D(problem.points[j].copy(), track=track)
    rec.next_point3D_id = problem.num_points + 1
    return rec
