"""Camera projection models with analytic Jacobians (COLMAP model names and parameter order).

Models and parameters (same order as ``geomvision.scene.camera.CAMERA_MODELS``):

==================  =====================================
``SIMPLE_PINHOLE``  f, cx, cy
``PINHOLE``         fx, fy, cx, cy
``SIMPLE_RADIAL``   f, cx, cy, k
``RADIAL``          f, cx, cy, k1, k2
``OPENCV``          fx, fy, cx, cy, k1, k2, p1, p2
==================  =====================================

Projection of a camera-frame point ``(X, Y, Z)`` (x right, y down, z forward): normalised coordinates
``u = X/Z, v = Y/Z`` (H&Z 6.1), distortion ``(u, v) -> (ud, vd)`` (Brown-Conrady as in COLMAP/OpenCV:
radial ``1 + k1 r^2 + k2 r^4``, tangential ``p1, p2``), then pixels ``x = fx ud + cx, y = fy vd + cy``
with the OpenCV origin (centre of the top-left pixel).

Every function accepts ``params`` either as one (P,) vector shared by all points or as an (N, P) array
(one camera per point), so bundle adjustment can evaluate all observations in one vectorised call.
Pure numpy; this module imports nothing from ``scene``.
"""

from __future__ import annotations

import numpy as np

from geomvision.errors import InputError, check_choice

#: model name -> number of parameters (kept here so the geometry layer does not import scene).
NUM_PARAMS: dict[str, int] = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}

#: indices of focal length, principal point and extra (distortion) parameters per model.
FOCAL_INDICES: dict[str, tuple[int, ...]] = {
    "SIMPLE_PINHOLE": (0,),
    "PINHOLE": (0, 1),
    "SIMPLE_RADIAL": (0,),
    "RADIAL": (0,),
    "OPENCV": (0, 1),
}
PRINCIPAL_POINT_INDICES: dict[str, tuple[int, ...]] = {
    "SIMPLE_PINHOLE": (1, 2),
    "PINHOLE": (2, 3),
    "SIMPLE_RADIAL": (1, 2),
    "RADIAL": (1, 2),
    "OPENCV": (2, 3),
}
EXTRA_INDICES: dict[str, tuple[int, ...]] = {
    "SIMPLE_PINHOLE": (),
    "PINHOLE": (),
    "SIMPLE_RADIAL": (3,),
    "RADIAL": (3, 4),
    "OPENCV": (4, 5, 6, 7),
}

# Depths below this are clamped when dividing, so points behind/at the camera give large finite residuals
# instead of inf/NaN that would poison a least-squares solver.
_MIN_DEPTH = 1e-12


def _check_model(model: str) -> int:
    check_choice("camera model", model, sorted(NUM_PARAMS))
    return NUM_PARAMS[model]


def _as_params(model: str, params: np.ndarray, n: int) -> np.ndarray:
    """Parameters as an (n, P) array (broadcast from (P,) when shared)."""
    num = _check_model(model)
    p = np.asarray(params, dtype=np.float64)
    if p.ndim == 1:
        if p.size != num:
            raise InputError(f"{model} takes {num} params, got {p.size}")
        return np.broadcast_to(p, (n, num))
    if p.shape != (n, num):
        raise InputError(f"{model} params must be ({num},) or ({n}, {num}), got {p.shape}")
    return p


def _as_points(points: np.ndarray, dim: int, name: str) -> np.ndarray:
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{name} must be (N, {dim}), got {x.shape}")
    return x


def _intrinsics(model: str, p: np.ndarray):
    """Split (N, P) params into fx, fy, cx, cy (each (N,)) and the distortion block (N, D)."""
    if model in ("PINHOLE", "OPENCV"):
        return p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4:]
    return p[:, 0], p[:, 0], p[:, 1], p[:, 2], p[:, 3:]


def _distort(model: str, dist: np.ndarray, u: np.ndarray, v: np.ndarray, *, jacobians: bool):
    """Apply the lens distortion to normalised coordinates.

    Returns:
        ``(ud, vd)`` and, with ``jacobians``, ``d_uvd_d_uv`` (N, 2, 2) and ``d_uvd_d_dist`` (N, 2, D).
    """
    n = len(u)
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        if not jacobians:
            return u, v
        J = np.zeros((2, 2, n))
        J[0, 0] = 1.0
        J[1, 1] = 1.0
        return u, v, J.transpose(2, 0, 1), np.zeros((2, 0, n)).transpose(2, 0, 1)
    uu, vv, uv = u * u, v * v, u * v
    r2 = uu + vv
    k1 = dist[:, 0]
    k2 = dist[:, 1] if model in ("RADIAL", "OPENCV") else np.zeros(n)
    radial = k1 * r2 + k2 * r2 * r2
    ud = u + u * radial
    vd = v + v * radial
    if model == "OPENCV":
        p1, p2 = dist[:, 2], dist[:, 3]
        ud = ud + 2.0 * p1 * uv + p2 * (r2 + 2.0 * uu)
        vd = vd + 2.0 * p2 * uv + p1 * (r2 + 2.0 * vv)
    if not jacobians:
        return ud, vd
    # d radial / d r2, and d r2 / d(u, v) = 2 (u, v). The Jacobians are filled component-major ((2, 2, N),
    # contiguous rows) and returned as (N, 2, .) transposed views.
    d_radial = k1 + 2.0 * k2 * r2
    J = np.empty((2, 2, n))
    base = 1.0 + radial
    J[0, 0] = base + 2.0 * uu * d_radial
    J[0, 1] = 2.0 * uv * d_radial
    J[1, 0] = J[0, 1]
    J[1, 1] = base + 2.0 * vv * d_radial
    if model == "SIMPLE_RADIAL":
        Jd = np.empty((2, 1, n))
        np.multiply(u, r2, out=Jd[0, 0])
        np.multiply(v, r2, out=Jd[1, 0])
    elif model == "RADIAL":
        Jd = np.empty((2, 2, n))
        Jd[0, 0], Jd[1, 0] = u * r2, v * r2
        Jd[0, 1], Jd[1, 1] = Jd[0, 0] * r2, Jd[1, 0] * r2
    else:  # OPENCV
        J[0, 0] += 2.0 * p1 * v + 6.0 * p2 * u
        J[0, 1] += 2.0 * p1 * u + 2.0 * p2 * v
        J[1, 0] += 2.0 * p2 * v + 2.0 * p1 * u
        J[1, 1] += 2.0 * p2 * u + 6.0 * p1 * v
        Jd = np.empty((2, 4, n))
        Jd[0, 0], Jd[0, 1], Jd[0, 2], Jd[0, 3] = u * r2, u * r2 * r2, 2.0 * uv, r2 + 2.0 * uu
        Jd[1, 0], Jd[1, 1], Jd[1, 2], Jd[1, 3] = v * r2, v * r2 * r2, r2 + 2.0 * vv, 2.0 * uv
    return ud, vd, J.transpose(2, 0, 1), Jd.transpose(2, 0, 1)


def project(model: str, params: np.ndarray, points_in_cam: np.ndarray) -> np.ndarray:
    """Project camera-frame points to pixels.

    Args:
        model: camera model name.
        params: (P,) or (N, P) parameters in the model's order.
        points_in_cam: (N, 3) points in the camera frame (z forward).

    Returns:
        (N, 2) pixels, OpenCV origin. Points with z <= 0 are projected with z clamped to a tiny positive
        value (finite but meaningless); callers filter them by depth.
    """
    X = _as_points(points_in_cam, 3, "points_in_cam")
    p = _as_params(model, params, len(X))
    fx, fy, cx, cy, dist = _intrinsics(model, p)
    z = np.where(np.abs(X[:, 2]) < _MIN_DEPTH, _MIN_DEPTH, X[:, 2])
    ud, vd = _distort(model, dist, X[:, 0] / z, X[:, 1] / z, jacobians=False)
    return np.stack([fx * ud + cx, fy * vd + cy], axis=1)


def project_with_jacobians(model: str, params: np.ndarray, points_in_cam: np.ndarray):
    """Project points and return the analytic Jacobians.

    Args:
        model: camera model name.
        params: (P,) or (N, P) parameters.
        points_in_cam: (N, 3) camera-frame points.

    Returns:
        ``pixels`` (N, 2), ``d_px_d_point`` (N, 2, 3) w.r.t. the camera-frame point and
        ``d_px_d_params`` (N, 2, P) w.r.t. the model parameters (in the model's order).
    """
    X = _as_points(points_in_cam, 3, "points_in_cam")
    n = len(X)
    p = _as_params(model, params, n)
    fx, fy, cx, cy, dist = _intrinsics(model, p)
    # computed component-major ((2, ., N), every product a contiguous vector op when ``points_in_cam`` is a
    # transposed (3, N) array) and returned as (N, 2, .) transposed views
    x, y, z = X.T
    z = np.where(np.abs(z) < _MIN_DEPTH, _MIN_DEPTH, z)
    inv_z = 1.0 / z
    u, v = x * inv_z, y * inv_z
    ud, vd, J_dist, J_dist_params = _distort(model, dist, u, v, jacobians=True)
    J_dist = J_dist.transpose(1, 2, 0)  # (2, 2, N)
    pixels = np.empty((2, n))
    pixels[0] = fx * ud + cx
    pixels[1] = fy * vd + cy

    # d(u, v)/d(X, Y, Z) = [[1/z, 0, -u/z], [0, 1/z, -v/z]]; chained with the distortion Jacobian and the
    # focal scaling written out per entry (batched 2x2 @ 2x3 matmuls are slow for large N)
    d_px_d_point = np.empty((2, 3, n))
    f_inv_z = np.empty(n)
    for row, f_row in ((0, fx), (1, fy)):
        np.multiply(inv_z, f_row, out=f_inv_z)
        a = np.multiply(J_dist[row, 0], f_inv_z, out=d_px_d_point[row, 0])
        b = np.multiply(J_dist[row, 1], f_inv_z, out=d_px_d_point[row, 1])
        c = np.multiply(a, u, out=d_px_d_point[row, 2])
        c += b * v
        np.negative(c, out=c)

    num = p.shape[1]
    d_px_d_params = np.zeros((2, num, n))
    if model in ("PINHOLE", "OPENCV"):
        d_px_d_params[0, 0] = ud
        d_px_d_params[1, 1] = vd
        d_px_d_params[0, 2] = 1.0
        d_px_d_params[1, 3] = 1.0
        first_extra = 4
    else:
        d_px_d_params[0, 0] = ud
        d_px_d_params[1, 0] = vd
        d_px_d_params[0, 1] = 1.0
        d_px_d_params[1, 2] = 1.0
        first_extra = 3
    if num > first_extra:
        J_dist_params = J_dist_params.transpose(1, 2, 0)  # (2, D, N)
        np.multiply(fx, J_dist_params[0], out=d_px_d_params[0, first_extra:])
        np.multiply(fy, J_dist_params[1], out=d_px_d_params[1, first_extra:])
    return pixels.T, d_px_d_point.transpose(2, 0, 1), d_px_d_params.transpose(2, 0, 1)


def unproject(
    model: str, params: np.ndarray, pixels: np.ndarray, *, max_iterations: int = 100, tolerance: float = 1e-14
) -> np.ndarray:
    """Pixels to undistorted normalised image coordinates (the ray through the pixel has z = 1).

    The distortion is inverted with vectorised Newton iterations on ``distort(u, v) = (ud, vd)``
    starting from the distorted coordinates; each point stops updating once its step is below
    ``tolerance`` (normalised units).

    Args:
        model: camera model name.
        params: (P,) or (N, P) parameters.
        pixels: (N, 2) pixels, OpenCV origin.
        max_iterations: Newton iteration cap.
        tolerance: convergence threshold on the step size.

    Returns:
        (N, 2) normalised coordinates ``(X/Z, Y/Z)``.
    """
    x = _as_points(pixels, 2, "pixels")
    p = _as_params(model, params, len(x))
    fx, fy, cx, cy, dist = _intrinsics(model, p)
    ud = (x[:, 0] - cx) / fx
    vd = (x[:, 1] - cy) / fy
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        return np.stack([ud, vd], axis=1)
    if model in ("SIMPLE_RADIAL", "RADIAL"):
        # shared parameters: one row of coefficients, broadcast (a gather per iteration costs as much as the
        # Newton step itself)
        coeffs = dist[:1] if np.asarray(params).ndim == 1 else dist
        scale = _undistort_radius_scale(model, coeffs, ud * ud + vd * vd, max_iterations, tolerance)
        return np.stack([ud * scale, vd * scale], axis=1)
    u, v = ud.copy(), vd.copy()
    active = np.arange(len(u))
    for _ in range(max_iterations):
        if active.size == 0:
            break
        du_, dv_, J, _ = _distort(model, dist[active], u[active], v[active], jacobians=True)
        ru, rv = du_ - ud[active], dv_ - vd[active]
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
        det = np.where(np.abs(det) < 1e-15, 1e-15, det)
        step_u = (J[:, 1, 1] * ru - J[:, 0, 1] * rv) / det
        step_v = (-J[:, 1, 0] * ru + J[:, 0, 0] * rv) / det
        u[active] -= step_u
        v[active] -= step_v
        keep = np.abs(step_u) + np.abs(step_v) > tolerance
        active = active[keep]
    return np.stack([u, v], axis=1)


def _undistort_radius_scale(
    model: str, coeffs: np.ndarray, rd2: np.ndarray, max_iterations: int, tolerance: float
) -> np.ndarray:
    """(N,) ratio undistorted / distorted radius of normalised points at squared distorted radius ``rd2``
    under a radial model (``r (1 + k1 r^2 + k2 r^4) = r_d``); ``coeffs``: (1, D) shared or (N, D)
    distortion coefficients.

    Radial distortion keeps a point on its ray from the principal point, so Newton's method in the image
    plane stays on that ray: solving for the radius alone gives the same root at a fraction of the work
    (no 2 x 2 Jacobians; unprojecting every observation after a BA round moved the focal was ~1.5 s of the
    1000-image global mapping).
    """
    k1 = coeffs[:, 0]
    k2 = coeffs[:, 1] if model == "RADIAL" else np.zeros_like(k1)
    shared = len(coeffs) == 1
    rd = np.sqrt(rd2)
    r = rd.copy()
    active = np.arange(len(r))
    for _ in range(max_iterations):
        if active.size == 0:
            break
        ra = r[active]
        a1, a2 = (k1, k2) if shared else (k1[active], k2[active])
        r2 = ra * ra
        f = ra * (1.0 + r2 * (a1 + a2 * r2)) - rd[active]
        df = 1.0 + r2 * (3.0 * a1 + 5.0 * a2 * r2)
        step = f / np.where(np.abs(df) < 1e-15, 1e-15, df)
        r[active] = ra - step
        active = active[np.abs(step) > tolerance]
    return np.divide(r, rd, out=np.ones_like(r), where=rd > 0)


def default_focal_px(
    width: int, height: int, exif_focal_mm: float | None = None, sensor_width_mm: float | None = None
) -> float:
    """Focal length in pixels from EXIF when possible, else the COLMAP-style prior ``1.2 * max(w, h)``.

    Args:
        width, height: image size in pixels.
        exif_focal_mm: focal length from EXIF in millimetres.
        sensor_width_mm: physical sensor width (along the longer image side) in millimetres.
    """
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    if exif_focal_mm and sensor_width_mm and exif_focal_mm > 0 and sensor_width_mm > 0:
        return float(exif_focal_mm) / float(sensor_width_mm) * float(max(width, height))
    return 1.2 * float(max(width, height))


def default_params(model: str, width: int, height: int, focal_px: float) -> np.ndarray:
    """Initial parameters: given focal, principal point at the image centre, zero distortion.

    With the OpenCV pixel origin the centre of a ``w x h`` image is ``((w - 1) / 2, (h - 1) / 2)``.
    """
    num = _check_model(model)
    params = np.zeros(num)
    params[list(FOCAL_INDICES[model])] = focal_px
    params[list(PRINCIPAL_POINT_INDICES[model])] = ((width - 1) / 2.0, (height - 1) / 2.0)
    return params


def params_to_K(model: str, params: np.ndarray) -> np.ndarray:
    """(3, 3) calibration matrix of the pinhole part (distortion ignored)."""
    p = _as_params(model, params, 1)
    fx, fy, cx, cy, _ = _intrinsics(model, p)
    return np.array([[fx[0], 0.0, cx[0]], [0.0, fy[0], cy[0]], [0.0, 0.0, 1.0]])
