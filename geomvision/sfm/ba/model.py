"""Array-level bundle-adjustment problem: parameter layout, reprojection residuals, analytic Jacobian.

Parameters (all float64):

* per image ``i``: ``cam_from_world`` as rotation vector ``rotvecs[i]`` (rad) and ``translations[i]``
  (``x_cam = R(rotvec) x_world + t``);
* per intrinsics group ``g`` (a camera shared by several images, or one per image): ``intrinsics[g]``
  in the COLMAP order of ``camera_models[g]`` (padded with zeros to the widest model);
* per point ``j``: ``points[j]`` in world coordinates.

The optimisation vector is ``x = [x_cam (n_cam_params), x_points (3 * n_free_points)]``. Each image owns
``D = 6 + P_max`` *camera columns* (its pose, then its group's intrinsics); ``image_cols[i, k]`` is the
index of that column in ``x_cam`` or -1 when held fixed. Several images of a shared camera point to the
same intrinsics columns. Observations are evaluated all at once; nothing loops over observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError
from geomvision.geometry import camera_models
from geomvision.sfm.ba import losses

POSE_DIM = 6


@dataclass
class BundleAdjustmentProblem:
    """Everything a bundle adjuster needs, as arrays (updated in place by the solvers).

    Attributes:
        camera_models: model name per intrinsics group (G,).
        intrinsics: (G, P_max) parameters per group, zero-padded.
        image_group: (I,) intrinsics group of each image.
        rotvecs: (I, 3) ``cam_from_world`` rotation vectors, radians.
        translations: (I, 3) ``cam_from_world`` translations.
        points: (N, 3) world points.
        obs_image: (M,) image index of each observation.
        obs_point: (M,) point index of each observation.
        obs_px: (M, 2) observed pixels (OpenCV origin).
        pose_free: (I, 6) True where a pose entry (rotvec, t) is optimised.
        intrinsics_free: (G, P_max) True where an intrinsic parameter is optimised.
        point_free: (N,) True where a point is optimised.
    """

    camera_models: list[str]
    intrinsics: np.ndarray
    image_group: np.ndarray
    rotvecs: np.ndarray
    translations: np.ndarray
    points: np.ndarray
    obs_image: np.ndarray
    obs_point: np.ndarray
    obs_px: np.ndarray
    pose_free: np.ndarray | None = None
    intrinsics_free: np.ndarray | None = None
    point_free: np.ndarray | None = None
    _layout: Layout | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.intrinsics = np.array(self.intrinsics, dtype=np.float64, ndmin=2)
        self.image_group = np.asarray(self.image_group, dtype=np.int64).reshape(-1)
        self.rotvecs = np.array(self.rotvecs, dtype=np.float64).reshape(-1, 3)
        self.translations = np.array(self.translations, dtype=np.float64).reshape(-1, 3)
        self.points = np.array(self.points, dtype=np.float64).reshape(-1, 3)
        self.obs_image = np.asarray(self.obs_image, dtype=np.int64).reshape(-1)
        self.obs_point = np.asarray(self.obs_point, dtype=np.int64).reshape(-1)
        self.obs_px = np.asarray(self.obs_px, dtype=np.float64).reshape(-1, 2)
        n_img, n_grp, n_pt = len(self.rotvecs), len(self.camera_models), len(self.points)
        if self.pose_free is None:
            self.pose_free = np.ones((n_img, POSE_DIM), bool)
        if self.intrinsics_free is None:
            self.intrinsics_free = np.zeros(self.intrinsics.shape, bool)
        if self.point_free is None:
            self.point_free = np.ones(n_pt, bool)
        self.pose_free = np.asarray(self.pose_free, bool).reshape(n_img, POSE_DIM)
        self.intrinsics_free = np.asarray(self.intrinsics_free, bool).reshape(self.intrinsics.shape)
        self.point_free = np.asarray(self.point_free, bool).reshape(n_pt)
        self._validate(n_img, n_grp, n_pt)

    def _validate(self, n_img: int, n_grp: int, n_pt: int) -> None:
        if len(self.translations) != n_img or len(self.image_group) != n_img:
            raise InputError(
                f"{n_img} rotvecs but {len(self.translations)} translations, "
                f"{len(self.image_group)} image groups"
            )
        if self.intrinsics.shape[0] != n_grp:
            raise InputError(f"{n_grp} camera models but {self.intrinsics.shape[0]} intrinsics rows")
        for model in self.camera_models:
            if camera_models.NUM_PARAMS.get(model, 10**9) > self.intrinsics.shape[1]:
                raise InputError(f"camera model {model!r} does not fit {self.intrinsics.shape[1]} params")
        m = len(self.obs_image)
        if len(self.obs_point) != m or len(self.obs_px) != m:
            raise InputError(f"observation arrays disagree: {m}, {len(self.obs_point)}, {len(self.obs_px)}")
        for name, idx, bound in (
            ("image", self.obs_image, n_img),
            ("point", self.obs_point, n_pt),
            ("group", self.image_group, n_grp),
        ):
            if idx.size and (idx.min() < 0 or idx.max() >= bound):
                raise InputError(f"{name} index out of range [0, {bound}): {idx.min()}..{idx.max()}")
        for name, arr in (
            ("intrinsics", self.intrinsics),
            ("rotvecs", self.rotvecs),
            ("translations", self.translations),
            ("points", self.points),
            ("observations", self.obs_px),
        ):
            if not np.all(np.isfinite(arr)):
                raise InputError(f"{name} contain NaN/inf")

    @property
    def num_observations(self) -> int:
        return len(self.obs_image)

    @property
    def layout(self) -> Layout:
        """Column layout of the free parameters (computed once; masks must not change afterwards)."""
        if self._layout is None:
            self._layout = Layout.build(self)
        return self._layout

    def sorted_by_image(self) -> BundleAdjustmentProblem:
        """A copy with observations ordered by image (same parameters, masks and parameter layout)."""
        order = np.argsort(self.obs_image, kind="stable")
        return BundleAdjustmentProblem(
            camera_models=list(self.camera_models),
            intrinsics=self.intrinsics,
            image_group=self.image_group,
            rotvecs=self.rotvecs,
            translations=self.translations,
            points=self.points,
            obs_image=self.obs_image[order],
            obs_point=self.obs_point[order],
            obs_px=self.obs_px[order],
            pose_free=self.pose_free.copy(),
            intrinsics_free=self.intrinsics_free.copy(),
            point_free=self.point_free.copy(),
        )

    def with_points(self, chosen: np.ndarray) -> BundleAdjustmentProblem:
        """A problem on the points ``chosen`` ((K,) sorted point indices) and their observations only.

        Shares the camera arrays (poses, intrinsics and their masks) with ``self``.
        """
        keep = np.isin(self.obs_point, chosen)
        return replace(
            self,
            points=self.points[chosen],
            obs_image=self.obs_image[keep],
            obs_point=np.searchsorted(chosen, self.obs_point[keep]),
            obs_px=self.obs_px[keep],
            point_free=self.point_free[chosen],
            _layout=None,
        )

    # --- parameter vector ----------------------------------------------------------------------------
    def get_x(self) -> np.ndarray:
        lay = self.layout
        x = np.empty(lay.n_cam + 3 * lay.n_free_points)
        x[lay.pose_cols[self.pose_free]] = np.hstack([self.rotvecs, self.translations])[self.pose_free]
        x[lay.intr_cols[self.intrinsics_free]] = self.intrinsics[self.intrinsics_free]
        x[lay.n_cam :] = self.points[self.point_free].ravel()
        return x

    def set_x(self, x: np.ndarray) -> None:
        """Write a parameter vector back; fixed entries are not touched (they stay bitwise equal)."""
        lay = self.layout
        pose = np.hstack([self.rotvecs, self.translations])
        pose[self.pose_free] = x[lay.pose_cols[self.pose_free]]
        self.rotvecs[:] = pose[:, :3]
        self.translations[:] = pose[:, 3:]
        self.intrinsics[self.intrinsics_free] = x[lay.intr_cols[self.intrinsics_free]]
        self.points[self.point_free] = x[lay.n_cam :].reshape(-1, 3)


def rotation_tangent_columns(problem: BundleAdjustmentProblem) -> np.ndarray | None:
    """(K, 3) x columns of the rotation of every image whose rotation is free, or None when some image has
    only part of its rotation free (tangent steps need all three entries)."""
    free = problem.pose_free[:, :3]
    if np.any(free.any(axis=1) & ~free.all(axis=1)):
        return None
    return problem.layout.pose_cols[free.all(axis=1), :3]


def carried_translation_columns(problem: BundleAdjustmentProblem) -> np.ndarray:
    """(K, 3) x columns of the translations that a tangent rotation step carries along: those of the images
    of :func:`rotation_tangent_columns` (same rows) whose whole pose is free; -1 in the other rows."""
    free = problem.pose_free[:, :3].all(axis=1)
    cols = problem.layout.pose_cols[free, 3:].copy()
    cols[~problem.pose_free[free, 3:].all(axis=1)] = -1
    return cols


def compose_rotation_steps(
    x: np.ndarray,
    delta: np.ndarray,
    rot_cols: np.ndarray,
    trans_cols: np.ndarray | None = None,
    pivots: np.ndarray | None = None,
) -> np.ndarray:
    """``x + delta`` with the rotation entries ``rot_cols`` (K, 3) composed instead: ``exp(dw) R(x)``.

    ``x`` holds rotation vectors there and ``delta`` left (camera-frame) tangent steps ``dw``, radians. Where
    ``trans_cols`` (K, 3, from :func:`carried_translation_columns`) names a translation, the step turns the
    whole pose about the camera-frame point ``p`` of that row of ``pivots`` (K, 3; None: the camera centre):
    ``t <- exp(dw) (t - p) + p + dt``, so ``p`` stays where it is under a pure rotation step (see
    :func:`evaluate`'s ``rotation_pivots``).
    """
    x_new = x + delta
    if rot_cols.size:
        step = Rotation.from_rotvec(delta[rot_cols])
        composed = step * Rotation.from_rotvec(x[rot_cols])
        x_new[rot_cols] = composed.as_rotvec()
        if trans_cols is not None:
            carry = np.flatnonzero(trans_cols[:, 0] >= 0)
            if carry.size:
                t_cols = trans_cols[carry]
                p = 0.0 if pivots is None else pivots[carry]
                x_new[t_cols] = step[carry].apply(x[t_cols] - p) + p + delta[t_cols]
    return x_new


def observed_centroids_in_cam(problem: BundleAdjustmentProblem) -> np.ndarray:
    """(I, 3) mean camera-frame position of the points each image observes (zeros for an image without
    observations): the pivot about which its rotation steps turn it (see :func:`evaluate`)."""
    rot = Rotation.from_rotvec(problem.rotvecs[problem.obs_image])
    in_cam = rot.apply(problem.points[problem.obs_point]) + problem.translations[problem.obs_image]
    n = len(problem.rotvecs)
    counts = np.maximum(np.bincount(problem.obs_image, minlength=n), 1)
    sums = [np.bincount(problem.obs_image, weights=in_cam[:, k], minlength=n) for k in range(3)]
    return np.stack(sums, axis=1) / counts[:, None]


def gauge_translation_axis(
    rotation_1: np.ndarray, translation_1: np.ndarray, rotation_2: np.ndarray, translation_2: np.ndarray
) -> int:
    """Which translation coordinate of the second gauge image to hold, the first pose being held.

    The one gauge rule of both BA bridges (:mod:`geomvision.sfm.bundle_adjustment` and
    :mod:`geomvision.sfm.mapper_ba`): with pose 1 fixed, the only similarity left is a scaling ``s``
    about its centre ``C_1``, which moves ``t_2' = s (t_2 + R_2 C_1) - R_2 C_1``, i.e. along
    ``R_2 (C_1 - C_2)``; holding the largest coordinate of that baseline removes the scale freedom
    best conditioned (COLMAP makes the same choice).

    Args:
        rotation_1, translation_1: ``cam_from_world`` of the held image, (3, 3) and (3,).
        rotation_2, translation_2: ``cam_from_world`` of the second image.

    Returns:
        0, 1 or 2.
    """
    center_1 = -np.asarray(rotation_1).T @ np.asarray(translation_1)
    center_2 = -np.asarray(rotation_2).T @ np.asarray(translation_2)
    return int(np.argmax(np.abs(np.asarray(rotation_2) @ (center_1 - center_2))))


@dataclass
class Layout:
    """Where each free parameter lives in ``x`` (see module docstring)."""

    n_cam: int
    n_free_points: int
    pose_cols: np.ndarray  # (I, 6) column in x_cam or -1
    intr_cols: np.ndarray  # (G, P_max) column in x_cam or -1
    image_cols: np.ndarray  # (I, D) pose then intrinsics columns, -1 where fixed (active slots only)
    active_slots: np.ndarray  # (6 + P_max,) which of pose+intrinsics slots are free for some image
    has_fixed_cols: bool  # some image holds some active slot
    point_col: np.ndarray  # (N,) index of the point among free points, or -1
    model_obs: list[tuple[str, np.ndarray]]  # (model, observation indices) per camera model present

    @classmethod
    def build(cls, problem: BundleAdjustmentProblem) -> Layout:
        pose_cols = np.full(problem.pose_free.shape, -1, np.int64)
        n_pose = int(problem.pose_free.sum())
        pose_cols[problem.pose_free] = np.arange(n_pose)
        intr_cols = np.full(problem.intrinsics_free.shape, -1, np.int64)
        n_intr = int(problem.intrinsics_free.sum())
        intr_cols[problem.intrinsics_free] = n_pose + np.arange(n_intr)
        image_cols = np.hstack([pose_cols, intr_cols[problem.image_group]])
        # slots held for every image (e.g. the principal point) are dropped from the per-observation
        # Jacobian blocks, which keeps the Schur products at D x D with D as small as possible
        active_slots = (image_cols >= 0).any(axis=0)
        image_cols = image_cols[:, active_slots]
        point_col = np.full(len(problem.points), -1, np.int64)
        n_free_points = int(problem.point_free.sum())
        point_col[problem.point_free] = np.arange(n_free_points)
        models = sorted(set(problem.camera_models))
        if len(models) == 1:  # the usual case: every observation, no per-observation compare
            model_obs = [(models[0], np.arange(problem.num_observations))]
        else:  # integer model ids per observation (comparing an object array of names was ~3 ms per BA)
            model_of_group = np.array([models.index(m) for m in problem.camera_models], dtype=np.int64)
            obs_model = model_of_group[problem.image_group[problem.obs_image]]
            model_obs = [(m, np.flatnonzero(obs_model == k)) for k, m in enumerate(models)]
        return cls(
            n_pose + n_intr,
            n_free_points,
            pose_cols,
            intr_cols,
            image_cols,
            active_slots,
            bool((image_cols < 0).any()),
            point_col,
            [(m, idx) for m, idx in model_obs if idx.size],
        )


def _right_jacobian_so3(rotvecs: np.ndarray) -> np.ndarray:
    """Right Jacobian of SO(3) (I, 3, 3): ``R(w + d) ~= R(w) exp(J_r(w) d)`` for small ``d``."""
    theta2 = np.einsum("ij,ij->i", rotvecs, rotvecs)
    theta = np.sqrt(theta2)
    small = theta < 1e-6
    ts = np.where(small, 1.0, theta)
    # (1 - cos t) / t^2 and (t - sin t) / t^3 with their Taylor limits near zero
    a = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(ts)) / ts**2)
    b = np.where(small, 1.0 / 6.0 - theta2 / 120.0, (ts - np.sin(ts)) / ts**3)
    K = np.zeros((len(rotvecs), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -rotvecs[:, 2], rotvecs[:, 1], -rotvecs[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = rotvecs[:, 2], -rotvecs[:, 1], rotvecs[:, 0]
    return np.eye(3) - a[:, None, None] * K + b[:, None, None] * (K @ K)


def _point_rows(dpc_row: np.ndarray, Rt: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
    """One residual row of the point Jacobian, ``(d px / d x_cam)_row R`` (3, M), into ``out``; ``dpc_row``
    (3, M), ``Rt`` (9, M) the row-major rotations of each observation's image, ``tmp`` (M,) scratch."""
    d0, d1, d2 = dpc_row
    for j in range(3):
        np.multiply(d0, Rt[j], out=out[j])
        out[j] += np.multiply(d1, Rt[3 + j], out=tmp)
        out[j] += np.multiply(d2, Rt[6 + j], out=tmp)


@dataclass
class Evaluation:
    """Residuals and Jacobian blocks at one parameter state (robust rescaling already applied).

    Attributes:
        residuals: (M, 2) rescaled residuals ``r~`` (plain pixel residuals for the linear loss).
        cost: ``0.5 * sum rho(|r|^2)``.
        errors_px: (M,) plain reprojection error norms.
        J_cam: (M, 2, D) derivative w.r.t. the image's camera columns (zero in fixed columns).
        J_point: (M, 2, 3) derivative w.r.t. the observed point.
    """

    residuals: np.ndarray
    cost: float
    errors_px: np.ndarray
    J_cam: np.ndarray | None = None
    J_point: np.ndarray | None = None


def evaluate(
    problem: BundleAdjustmentProblem,
    loss: str = "linear",
    loss_scale_px: float = 1.0,
    *,
    jacobians: bool = True,
    zero_fixed_columns: bool = True,
    observations: slice | None = None,
    rotation_tangent: bool = False,
    rotation_pivots: np.ndarray | None = None,
    camera_jacobians: bool = True,
) -> Evaluation:
    """Reprojection residuals ``project(cam_from_world(X)) - observed`` and their analytic Jacobian.

    ``zero_fixed_columns=False`` leaves the Jacobian of held camera columns as computed (a solver that drops
    those columns itself, such as the schur backend, saves a pass over all observations).
    ``observations`` (a slice with step 1) evaluates only those observations (the schur backend evaluates
    chunks of observations in parallel threads); every returned array then covers the slice only.
    ``rotation_tangent=True`` differentiates the rotation columns with respect to a left perturbation
    ``R <- exp([dw]_x) R`` (the camera-frame tangent ``dw``) instead of the rotation vector, no right Jacobian
    of SO(3); a solver using it must update rotations by composition (see :func:`compose_rotation_steps`). It
    needs the three rotation entries of every image free or held together. An image whose whole pose is free
    turns about a camera-frame pivot ``p`` (its row of ``rotation_pivots`` (I, 3); None: the camera centre):
    ``x_cam <- exp(dw) (x_cam - p) + p``, so ``d x_cam / d dw = -[R X + t - p]_x``; an image with a held
    translation entry turns about the world origin (``t`` stays): ``-[R X]_x``. The pivot is where a rotation
    step and a translation step are least coupled: the centroid of the image's points
    (:func:`observed_centroids_in_cam`; for 3D residuals the cross term ``sum [x - p]_x`` is then zero). About
    the world origin, a camera far from it swings by ``|t| dw``: on a 1000-image street (origin at one end) the
    joint BA then crept along the street's bending by Gauss-Newton steps of ratio ~0.7 and stopped at a
    higher cost.
    ``camera_jacobians=False`` (with ``jacobians``) returns the point Jacobian only (``J_cam`` None): what a
    step of the points with the cameras held needs, at about half the work.
    """
    lay = problem.layout
    R_img = Rotation.from_rotvec(problem.rotvecs).as_matrix()
    sl = slice(None) if observations is None else observations
    img, pt, obs_px = problem.obs_image[sl], problem.obs_point[sl], problem.obs_px[sl]
    model_obs = lay.model_obs
    if observations is not None and len(model_obs) > 1:
        lo, hi, _ = sl.indices(problem.num_observations)
        model_obs = [
            (m, idx[np.searchsorted(idx, lo) : np.searchsorted(idx, hi)] - lo) for m, idx in model_obs
        ]
        model_obs = [(m, idx) for m, idx in model_obs if idx.size]
    # component-major per-observation arrays: Rt[3 i + j] = R[i, j] of each observation's image (9, M),
    # Xt (3, M); every product below is one contiguous vector op over all M observations (``take`` along
    # the last axis: ~2x faster than fancy indexing there)
    Rt = np.take(R_img.reshape(-1, 9).T, img, axis=1)
    Xt = np.take(problem.points.T, pt, axis=1)
    pc_t = np.take(problem.translations.T, img, axis=1)  # (3, M), becomes the camera-frame points
    rotated_t = np.empty_like(Xt)
    tmp = np.empty(len(img))
    for i in range(3):
        np.multiply(Rt[3 * i], Xt[0], out=rotated_t[i])
        rotated_t[i] += np.multiply(Rt[3 * i + 1], Xt[1], out=tmp)
        rotated_t[i] += np.multiply(Rt[3 * i + 2], Xt[2], out=tmp)
    pc_t += rotated_t
    points_in_cam = pc_t.T
    m = len(img)
    single = len(model_obs) == 1  # one camera model: no per-model gather/scatter
    one_group = len(problem.camera_models) == 1  # one set of intrinsics: broadcast, no per-observation gather
    pixels = np.empty((m, 2))
    d_px_d_pc = np.empty((m, 2, 3)) if jacobians and not single else None
    d_px_d_intr = np.zeros((m, 2, problem.intrinsics.shape[1])) if jacobians and not single else None
    for model, idx in model_obs:  # one vectorised call per camera model present (<= 5)
        num = camera_models.NUM_PARAMS[model]
        sel = slice(None) if single else idx
        params = (
            problem.intrinsics[0, :num]
            if one_group
            else problem.intrinsics[problem.image_group[img[sel]], :num]
        )
        if not jacobians:
            pixels[sel] = camera_models.project(model, params, points_in_cam[sel])
        elif single:
            pixels, d_px_d_pc, d_px_d_intr = camera_models.project_with_jacobians(
                model, params, points_in_cam
            )
        else:
            pixels[sel], d_px_d_pc[sel], d_px_d_intr[sel, :, :num] = camera_models.project_with_jacobians(
                model, params, points_in_cam[sel]
            )
    # residuals component-major (2, M); the robust loss enters through one symmetric 2 x 2 matrix per
    # observation, A = w I + k r r^T (J~ = A J), applied to d pixel / d camera-frame point and to the
    # intrinsics columns before the chain rule: 3 + (free intrinsics) rescaled rows instead of D + 3
    raw_t = pixels.T - obs_px.T
    sq = raw_t[0] * raw_t[0]
    sq += raw_t[1] * raw_t[1]
    rho, w, k = losses.robust_weights(loss, loss_scale_px, sq)
    cost = 0.5 * float(rho.sum())
    mix = None
    if w is not None:
        if jacobians:
            mix = losses.mixing_matrix(raw_t, w, k)
        raw_t *= w  # r~ = w r
    errors_px = np.sqrt(sq, out=sq)
    if not jacobians:
        return Evaluation(raw_t.T, cost, errors_px)
    # d x_cam / d rotvec = -[R X]_x R J_r  ->  row form: (d_px/d_pc)_row x (-[rotated]_x) = rotated x row
    # Jacobians are assembled component-major, (2, slots, M), active camera slots only: every write below is a
    # contiguous vector. They are returned as (M, 2, slots) transposed views, so the Schur solver gets its
    # (2, D, M) layout back without a copy.
    active = lay.active_slots
    col = np.cumsum(active) - 1  # row of each pose/intrinsics slot in J_cam (where active)
    J_cam = np.empty((2, int(active.sum()), m)) if camera_jacobians else None
    J_point = np.empty((2, 3, m))
    dpc_t = d_px_d_pc.transpose(1, 2, 0)  # (2, 3, M), contiguous when projected in one call
    dintr_t = d_px_d_intr.transpose(1, 2, 0)
    # the (rescaled) d pixel / d camera-frame point is the translation block: written there directly when
    # all three translation slots are active (they are then adjacent rows of J_cam)
    if camera_jacobians and active[3:6].all():
        dpc = J_cam[:, col[3] : col[3] + 3]
    else:
        dpc = np.empty((2, 3, m))
    if mix is None:
        dpc[...] = dpc_t
    else:
        losses.mix_rows(*mix, dpc_t[0], dpc_t[1], dpc[0], dpc[1])
    if not camera_jacobians:
        for row in range(2):
            _point_rows(dpc[row], Rt, J_point[row], tmp)
        return Evaluation(raw_t.T, cost, errors_px, None, J_point.transpose(2, 0, 1))
    for k_slot in np.flatnonzero(active[6:]).tolist():  # slots past the model's parameters stay zero
        c = col[6 + k_slot]
        if k_slot >= dintr_t.shape[1]:
            J_cam[:, c] = 0.0
        elif mix is None:
            J_cam[:, c] = dintr_t[:, k_slot]
        else:
            losses.mix_rows(*mix, dintr_t[0, k_slot], dintr_t[1, k_slot], J_cam[0, c], J_cam[1, c])
    RJr_t = None
    if active[:3].any() and not rotation_tangent:
        RJr_t = np.take((R_img @ _right_jacobian_so3(problem.rotvecs)).reshape(-1, 9).T, img, axis=1)
    lever_t = rotated_t
    if rotation_tangent and active[:3].all():
        # images whose whole pose is free turn about their pivot p: d x_cam / d dw = -[R X + t - p]_x
        carry = problem.pose_free.all(axis=1)
        if carry.any():
            lever_t = pc_t if rotation_pivots is None else pc_t - np.take(rotation_pivots.T, img, axis=1)
            if not carry.all():
                lever_t = np.where(carry[img], lever_t, rotated_t)
    r0, r1, r2 = lever_t
    for row in range(2):
        d0, d1, d2 = dpc[row]
        _point_rows(dpc[row], Rt, J_point[row], tmp)
        if rotation_tangent and active[:3].all():  # rotated x row, written in place
            for j, (p, q, dq, dp) in enumerate(((r1, r2, d2, d1), (r2, r0, d0, d2), (r0, r1, d1, d0))):
                out = J_cam[row, col[j]]
                np.multiply(p, dq, out=out)
                out -= np.multiply(q, dp, out=tmp)
        elif RJr_t is not None:
            a = (r1 * d2 - r2 * d1, r2 * d0 - r0 * d2, r0 * d1 - r1 * d0)  # rotated x row
            for j in np.flatnonzero(active[:3]).tolist():
                out = J_cam[row, col[j]]
                np.multiply(a[0], RJr_t[j], out=out)
                out += np.multiply(a[1], RJr_t[3 + j], out=tmp)
                out += np.multiply(a[2], RJr_t[6 + j], out=tmp)
        if not active[3:6].all():
            for j in np.flatnonzero(active[3:6]).tolist():
                J_cam[row, col[3 + j]] = dpc[row, j]
    if lay.has_fixed_cols and zero_fixed_columns:
        J_cam *= (lay.image_cols[img] >= 0).T[None]  # fixed columns contribute nothing
    return Evaluation(raw_t.T, cost, errors_px, J_cam.transpose(2, 0, 1), J_point.transpose(2, 0, 1))
