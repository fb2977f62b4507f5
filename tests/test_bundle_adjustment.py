"""Bundle adjustment: analytic Jacobian vs finite differences, accuracy on synthetic scenes with known
noise, both backends, held parameters staying bitwise fixed, robust losses, Reconstruction round trip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.sfm.ba import losses
from geomvision.sfm.ba.model import BundleAdjustmentProblem, evaluate
from geomvision.sfm.ba.synthetic import perturb, problem_to_reconstruction, synthetic_problem
from geomvision.sfm.bundle_adjustment import (
    BundleAdjustmentOptions,
    adjust_problem,
    bundle_adjust,
    points_covering_images,
    refine_points,
)

MODELS = ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"]


def _all_free(problem: BundleAdjustmentProblem) -> None:
    num = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}
    problem.intrinsics_free[:] = False
    for g, m in enumerate(problem.camera_models):
        problem.intrinsics_free[g, : num[m]] = True
    problem._layout = None


def _perturb_free_poses(problem, rng):
    """Perturb poses and points, then restore the held poses (they must stay at the truth)."""
    rotvecs, translations = problem.rotvecs.copy(), problem.translations.copy()
    perturb(problem, rng=rng)
    held = ~problem.pose_free
    problem.rotvecs[held[:, :3]] = rotvecs[held[:, :3]]
    problem.translations[held[:, 3:]] = translations[held[:, 3:]]


def _dense_jacobian(problem, loss, scale):
    ev = evaluate(problem, loss, scale)
    lay = problem.layout
    m = problem.num_observations
    J = np.zeros((2 * m, lay.n_cam + 3 * lay.n_free_points))
    rows = np.arange(2 * m).reshape(m, 2)
    for k in range(lay.image_cols.shape[1]):
        cols = lay.image_cols[problem.obs_image, k]
        ok = cols >= 0
        for a in range(2):
            np.add.at(J, (rows[ok, a], cols[ok]), ev.J_cam[ok, a, k])
    pc = lay.point_col[problem.obs_point]
    ok = pc >= 0
    for a in range(2):
        for k in range(3):
            J[rows[ok, a], lay.n_cam + 3 * pc[ok] + k] = ev.J_point[ok, a, k]
    return J


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("loss", ["linear", "cauchy"])
def test_jacobian_matches_finite_differences(model, loss):
    problem, _ = synthetic_problem(4, 6, model=model, views_per_point=3, noise_px=2.0, rng=3)
    problem.rotvecs[0] = [1e-9, 0.0, 0.0]  # exercise the small-angle branch of the SO(3) Jacobian
    _all_free(problem)
    perturb(problem, rng=4)
    J = _dense_jacobian(problem, loss, 1.5)
    x0 = problem.get_x()
    fd = np.zeros_like(J)
    for c in range(x0.size):
        h = 1e-6 * max(1.0, abs(x0[c]))
        for sign in (1, -1):
            x = x0.copy()
            x[c] += sign * h
            problem.set_x(x)
            fd[:, c] += sign * evaluate(problem, loss, 1.5, jacobians=False).residuals.ravel() / (2 * h)
    problem.set_x(x0)
    np.testing.assert_allclose(J, fd, rtol=1e-5, atol=1e-4 * np.abs(J).max())


@pytest.mark.parametrize("pivot", ["centre", "centroid"])
def test_tangent_pose_jacobian_matches_composed_finite_differences(pivot):
    from geomvision.sfm.ba.model import (
        carried_translation_columns,
        compose_rotation_steps,
        observed_centroids_in_cam,
        rotation_tangent_columns,
    )

    problem, _ = synthetic_problem(4, 6, model="RADIAL", views_per_point=3, noise_px=2.0, rng=3)
    _all_free(problem)
    problem.pose_free[3, 4] = False  # image 3 holds a translation entry: its rotation turns alone
    problem._layout = None
    perturb(problem, rng=4)
    rot_cols = rotation_tangent_columns(problem)
    trans_cols = carried_translation_columns(problem)
    assert rot_cols.shape == (4, 3)
    assert (trans_cols[:3] >= 0).all() and (trans_cols[3] == -1).all()
    # pivots (camera frame) per image, and per row of rot_cols (every image here); None: the camera centre
    pivots = observed_centroids_in_cam(problem) if pivot == "centroid" else None
    ev = evaluate(problem, "cauchy", 1.5, rotation_tangent=True, rotation_pivots=pivots)
    x0 = problem.get_x()

    def step(x, delta):
        return compose_rotation_steps(x, delta, rot_cols, trans_cols, pivots)

    for i in range(4):
        for j in range(3):
            fd = 0.0
            for sign in (1, -1):
                delta = np.zeros_like(x0)
                delta[rot_cols[i, j]] = sign * 1e-6
                # R <- exp(+-h e_j) R, and t <- exp(+-h e_j)(t - p) + p where the whole pose is free
                problem.set_x(step(x0, delta))
                fd = fd + sign * evaluate(problem, "cauchy", 1.5, jacobians=False).residuals / 2e-6
            problem.set_x(x0)
            mine = problem.obs_image == i
            k = list(problem.layout.image_cols[i]).index(rot_cols[i, j])
            np.testing.assert_allclose(ev.J_cam[mine, :, k], fd[mine], rtol=1e-5, atol=1e-4)
    # translations, intrinsics and points are differentiated as before
    plain = evaluate(problem, "cauchy", 1.5)
    np.testing.assert_array_equal(ev.J_cam[:, :, 3:], plain.J_cam[:, :, 3:])
    np.testing.assert_array_equal(ev.J_point, plain.J_point)

    # a rotation step turns a free pose about its pivot: the pivot's world position stays
    def pivots_in_world():
        rot = Rotation.from_rotvec(problem.rotvecs)
        p = 0.0 if pivots is None else pivots
        return rot.inv().apply(p - problem.translations)

    before = pivots_in_world()
    delta = np.zeros_like(x0)
    delta[rot_cols] = 0.3
    problem.set_x(step(x0, delta))
    after = pivots_in_world()
    problem.set_x(x0)
    np.testing.assert_allclose(after[:3], before[:3], atol=1e-12)
    assert np.abs(after[3] - before[3]).max() > 1e-3  # image 3's translation is not carried
    # composing is exact: a step and its inverse return the pose
    np.testing.assert_allclose(step(step(x0, delta), -delta), x0, atol=1e-12)
    problem.pose_free[2, 1] = False  # part of a rotation held: tangent steps are not used
    problem._layout = None
    assert rotation_tangent_columns(problem) is None


def test_schur_ba_is_indifferent_to_where_the_world_origin_lies():
    """Free poses turn about their points' centroid, so moving the world origin far from the cameras
    changes neither the LM path nor the optimum (turning about the origin: 9 -> 16 iterations here)."""

    def far_from_origin(shift):
        problem, _ = synthetic_problem(30, 600, views_per_point=4, noise_px=0.5, rng=7)
        problem.pose_free[:2] = False  # gauge: two held poses
        _perturb_free_poses(problem, rng=8)
        problem.points += shift  # the same scene in a world frame moved by -shift
        problem.translations -= Rotation.from_rotvec(problem.rotvecs).apply(shift)
        return problem

    options = BundleAdjustmentOptions(
        backend="schur", loss="soft_l1", function_tolerance=1e-10, max_iterations=100
    )
    near = adjust_problem(far_from_origin(np.zeros(3)), options)
    far = adjust_problem(far_from_origin(np.array([300.0, -200.0, 100.0])), options)
    assert abs(far.iterations - near.iterations) <= 2
    assert far.final_cost == pytest.approx(near.final_cost, rel=1e-6)
    assert near.final_cost < 0.05 * near.initial_cost


@pytest.mark.parametrize("loss", ["huber", "soft_l1", "cauchy"])
def test_robust_rescaling_reproduces_cost(loss, rng):
    r = rng.normal(0.0, 3.0, (50, 2))
    r[0] = 1e-5  # series branch
    scaled, _ = losses.rescale(loss, 2.0, r)
    s = (r**2).sum(1)
    z = s / 4.0
    rho = {
        "huber": np.where(z <= 1, z, 2 * np.sqrt(z) - 1),
        "soft_l1": 2 * z / (np.sqrt(1 + z) + 1),  # cancellation-free form
        "cauchy": np.log1p(z),
    }[loss] * 4.0
    np.testing.assert_allclose((scaled**2).sum(1), rho, rtol=1e-12)
    np.testing.assert_allclose(losses.robust_cost(loss, 2.0, s), rho, rtol=1e-12)


@pytest.mark.parametrize("backend", ["scipy", "schur"])
@pytest.mark.parametrize("model", ["PINHOLE", "RADIAL", "OPENCV"])
def test_noise_level_recovered(backend, model):
    sigma = 0.5
    problem, _ = synthetic_problem(12, 150, model=model, views_per_point=5, noise_px=sigma, rng=7)
    problem.intrinsics_free[0, :] = False
    problem.intrinsics_free[0, [0, 4] if model != "PINHOLE" else [0]] = True
    problem.pose_free[0] = False  # gauge
    problem.pose_free[1, 3] = False
    cost_at_truth = evaluate(problem, jacobians=False).cost
    _perturb_free_poses(problem, 8)
    result = adjust_problem(problem, BundleAdjustmentOptions(backend=backend, function_tolerance=1e-10))
    assert result.success, result.reason
    rms = np.sqrt(2.0 * result.final_cost / result.num_residuals)
    assert 0.7 * sigma <= rms <= 1.3 * sigma
    assert result.final_cost <= cost_at_truth  # the least-squares optimum fits the noise better than truth


def test_backends_agree_and_schur_solvers_match():
    costs = []
    for backend, solver in (("scipy", "auto"), ("schur", "dense"), ("schur", "sparse"), ("schur", "pcg")):
        problem, _ = synthetic_problem(10, 120, model="RADIAL", views_per_point=4, rng=11)
        problem.intrinsics_free[0, [0, 3, 4]] = True
        perturb(problem, rng=12)
        opts = BundleAdjustmentOptions(
            backend=backend,
            function_tolerance=1e-12,
            schur_solver=solver,
            cg_tolerance=1e-8,
            max_iterations=200,
        )
        costs.append(adjust_problem(problem, opts).final_cost)
    np.testing.assert_allclose(costs, costs[0], rtol=1e-6)


def _reconstruction(model="PINHOLE", seed=21):
    problem, _ = synthetic_problem(8, 80, model=model, views_per_point=4, rng=seed)
    perturb(problem, rng=seed + 1)
    return problem_to_reconstruction(problem)


@pytest.mark.parametrize("backend", ["scipy", "schur"])
def test_fixed_parameters_stay_bitwise_equal(backend):
    rec = _reconstruction()
    fixed_images, fixed_points = (3, 5), (1, 2, 40)
    before_poses = {
        i: (v.cam_from_world.rotation.copy(), v.cam_from_world.translation.copy())
        for i, v in rec.views.items()
    }
    before_points = {p: rec.points3D[p].xyz.copy() for p in rec.points3D}
    before_cam = rec.cameras[1].params.copy()
    opts = BundleAdjustmentOptions(
        backend=backend, intrinsics="fixed", fixed_image_ids=fixed_images, fixed_point_ids=fixed_points
    )
    result = bundle_adjust(rec, opts)
    assert result.success and result.final_cost < result.initial_cost
    for i in fixed_images:
        np.testing.assert_array_equal(rec.views[i].cam_from_world.rotation, before_poses[i][0])
        np.testing.assert_array_equal(rec.views[i].cam_from_world.translation, before_poses[i][1])
    for p in fixed_points:
        np.testing.assert_array_equal(rec.points3D[p].xyz, before_points[p])
    np.testing.assert_array_equal(rec.cameras[1].params, before_cam)
    assert not np.array_equal(rec.views[1].cam_from_world.translation, before_poses[1][1])


def test_auto_gauge_holds_first_pose_and_one_coordinate_of_second():
    rec = _reconstruction(seed=31)
    R1, t1 = rec.views[1].cam_from_world.rotation.copy(), rec.views[1].cam_from_world.translation.copy()
    t2 = rec.views[2].cam_from_world.translation.copy()
    result = bundle_adjust(rec, BundleAdjustmentOptions(intrinsics="fixed"))
    assert result.success
    np.testing.assert_array_equal(rec.views[1].cam_from_world.rotation, R1)
    np.testing.assert_array_equal(rec.views[1].cam_from_world.translation, t1)
    assert np.sum(rec.views[2].cam_from_world.translation == t2) == 1


def test_shared_and_per_image_intrinsics():
    rec = _reconstruction(model="SIMPLE_RADIAL", seed=41)
    rec.cameras[1].params = rec.cameras[1].params * np.array([1.05, 1, 1, 1])  # wrong focal
    result = bundle_adjust(rec, BundleAdjustmentOptions(intrinsics="shared"))
    assert result.success
    assert rec.cameras[1].params[0] == pytest.approx(500.0, rel=0.02)
    assert rec.cameras[1].params[1] == 320.0  # principal point held by default
    rec2 = _reconstruction(model="SIMPLE_RADIAL", seed=41)
    bundle_adjust(rec2, BundleAdjustmentOptions(intrinsics="per_image"))
    assert len(rec2.cameras) == 8
    assert len({v.camera_id for v in rec2.views.values()}) == 8


def test_robust_loss_resists_outliers():
    problem, clean = synthetic_problem(10, 150, model="PINHOLE", views_per_point=5, noise_px=0.3, rng=51)
    truth = problem.points.copy()
    bad = np.random.default_rng(52).choice(problem.num_observations, 40, replace=False)
    problem.obs_px[bad] += np.random.default_rng(53).uniform(30, 60, (40, 2))
    problem.pose_free[0] = False
    problem.pose_free[1] = False
    _perturb_free_poses(problem, 54)
    opts = BundleAdjustmentOptions(
        backend="schur", loss="cauchy", loss_scale_px=1.0, function_tolerance=1e-10
    )
    assert adjust_problem(problem, opts).success
    good = np.setdiff1d(np.arange(problem.num_observations), bad)
    errors = evaluate(problem, jacobians=False).errors_px
    assert np.median(errors[good]) < 0.5
    assert np.median(np.linalg.norm(problem.points - truth, axis=1)) < 0.01


def test_progress_and_options_validation():
    calls = []
    rec = _reconstruction(seed=61)
    bundle_adjust(
        rec, BundleAdjustmentOptions(max_iterations=3), progress=lambda d, t, m: calls.append((d, t))
    )
    assert calls and all(t == 3 for _, t in calls)
    with pytest.raises(InputError, match="'ceres'"):
        BundleAdjustmentOptions(backend="ceres")
    with pytest.raises(InputError, match="-1"):
        BundleAdjustmentOptions(loss="huber", loss_scale_px=-1)


@pytest.mark.parametrize("backend", ["scipy", "schur"])
def test_degenerate_inputs_do_not_break(backend):
    from geomvision.geometry.rigid import Rigid3d
    from geomvision.scene.reconstruction import View

    rec = _reconstruction(seed=71)
    rec.add_view(View(100, "extra.png", 1, Rigid3d(), np.zeros((3, 2))))  # registered, observes nothing
    rec.add_view(View(101, "unreg.png", 1, None, np.full((1, 2), 5.0)))  # unregistered
    rec.add_observation(1, 101, 0)  # its observation must be ignored
    rec.add_point3D(np.array([0.1, 0.2, 0.3]), [(1, len(rec.views[1].keypoints_px) - 1)])  # reuses a keypoint
    result = bundle_adjust(rec, BundleAdjustmentOptions(backend=backend))
    assert result.success and np.isfinite(result.final_cost)
    assert result.final_cost < result.initial_cost
    np.testing.assert_array_equal(rec.views[100].cam_from_world.translation, np.zeros(3))


def test_nothing_to_adjust():
    from geomvision.scene.reconstruction import Reconstruction

    result = bundle_adjust(Reconstruction())
    assert not result.success and "0 registered" in result.reason


def test_schur_threads_give_identical_result(monkeypatch):
    from geomvision.sfm.ba import schur

    def solve(threads):
        problem, _ = synthetic_problem(12, 300, model="SIMPLE_RADIAL", views_per_point=5, rng=31)
        perturb(problem, rng=32)
        opts = BundleAdjustmentOptions(backend="schur", num_threads=threads, function_tolerance=1e-10)
        result = adjust_problem(problem, opts)
        assert result.success and result.final_cost < 0.02 * result.initial_cost  # down to the noise
        return result.final_cost, problem.points.copy()

    single_chunk = solve(2)  # 1500 observations: one chunk, no threads
    # small chunks (4 of ~375 observations): the chunking depends on the problem only, so every thread
    # count computes the same chunks in the same order: bitwise equal results
    monkeypatch.setattr(schur, "_CHUNK_OBS", 300)
    results = [solve(threads) for threads in (1, 2, 3, None)]
    for cost, points in results[1:]:
        assert cost == results[0][0]
        np.testing.assert_array_equal(points, results[0][1])
    # chunked sums differ from the single-chunk ones in rounding only
    np.testing.assert_allclose(results[0][0], single_chunk[0], rtol=1e-9)
    np.testing.assert_allclose(results[0][1], single_chunk[1], rtol=0, atol=1e-7)
    with pytest.raises(InputError, match="num_threads"):
        BundleAdjustmentOptions(num_threads=0)


def test_schur_chunks_split_whole_images(monkeypatch):
    from geomvision.sfm.ba import schur

    img_bounds = np.array([0, 10, 30, 35, 60, 100])
    free = np.flatnonzero(np.arange(100) % 7 != 0)  # every 7th observation sees a held point
    assert len(schur._make_chunks(100, img_bounds, free, all_free=False)) == 1  # < 2 * _CHUNK_OBS
    monkeypatch.setattr(schur, "_CHUNK_OBS", 20)
    # 100 // 20 = 5 -> 4 chunks, cut at the image boundaries nearest 25, 50 and 75 (60 twice)
    chunks = schur._make_chunks(100, img_bounds, free, all_free=False)
    assert [(c.obs.start, c.obs.stop) for c in chunks] == [(0, 30), (30, 60), (60, 100)]
    assert [(c.images.start, c.images.stop) for c in chunks] == [(0, 2), (2, 4), (4, 5)]
    for c in chunks:
        np.testing.assert_array_equal(free[c.free], np.arange(c.obs.start, c.obs.stop)[c.free_local])


def test_evaluate_on_observation_slices_matches_the_whole():
    a, _ = synthetic_problem(6, 60, model="PINHOLE", views_per_point=3, rng=41)
    b, _ = synthetic_problem(6, 60, model="OPENCV", views_per_point=3, rng=42)
    problem = BundleAdjustmentProblem(
        camera_models=["PINHOLE", "OPENCV"],
        intrinsics=np.vstack([np.pad(a.intrinsics, ((0, 0), (0, 4))), b.intrinsics]),
        image_group=np.repeat([0, 1], 6),
        rotvecs=np.vstack([a.rotvecs, b.rotvecs]),
        translations=np.vstack([a.translations, b.translations]),
        points=np.vstack([a.points, b.points]),
        obs_image=np.concatenate([a.obs_image, b.obs_image + 6]),
        obs_point=np.concatenate([a.obs_point, b.obs_point + 60]),
        obs_px=np.vstack([a.obs_px, b.obs_px]),
    )
    _all_free(problem)
    problem = problem.sorted_by_image()
    whole = evaluate(problem, "cauchy", 2.0, zero_fixed_columns=False)
    m = problem.num_observations
    for lo, hi in ((0, m // 3), (m // 3, m - 5), (m - 5, m)):
        part = evaluate(problem, "cauchy", 2.0, zero_fixed_columns=False, observations=slice(lo, hi))
        np.testing.assert_array_equal(part.residuals, whole.residuals[lo:hi])
        np.testing.assert_array_equal(part.J_cam, whole.J_cam[lo:hi])
        np.testing.assert_array_equal(part.J_point, whole.J_point[lo:hi])
    costs = [evaluate(problem, "cauchy", 2.0, observations=slice(k, k + 7)).cost for k in range(0, m, 7)]
    np.testing.assert_allclose(sum(costs), whole.cost, rtol=1e-12)


def test_auto_schur_solver_follows_size_and_fill():
    from geomvision.sfm.ba.schur import _build_structure

    def solver(num_images, **opts):
        problem, _ = synthetic_problem(num_images, 20 * num_images, views_per_point=3, rng=5)
        return _build_structure(problem.sorted_by_image(), BundleAdjustmentOptions(**opts)).solver

    assert solver(12) == "dense"  # 72 camera parameters
    assert solver(80) == "sparse"  # 480 parameters, a ring: 6% of the image-pair blocks are non-zero
    assert solver(80, sparse_schur_max_params=100) == "pcg"
    assert solver(80, schur_solver="dense") == "dense"
    # sparse and dense steps agree on a sparse ring (same iterations, costs equal to rounding)
    costs = []
    for name in ("dense", "sparse"):
        problem, _ = synthetic_problem(80, 1600, views_per_point=3, rng=6)
        problem.pose_free[0] = False
        perturb(problem, rng=7)
        costs.append(adjust_problem(problem, BundleAdjustmentOptions(schur_solver=name)).final_cost)
    np.testing.assert_allclose(costs[1], costs[0], rtol=1e-9)
    with pytest.raises(InputError, match="schur_solver"):
        BundleAdjustmentOptions(schur_solver="cholmod")


@pytest.mark.parametrize("point_steps", [False, True])
def test_schur_rebuilt_linearisation_after_rejected_steps_gives_identical_iterates(monkeypatch, point_steps):
    """Large (chunked) problems drop the linearisation while a candidate step is evaluated and rebuild it
    when the step is rejected: bitwise the same iterates as keeping it, only more evaluations. (With point
    steps the candidate's Jacobians are also dropped while the point steps are evaluated.)"""
    from geomvision.sfm.ba import schur

    calls = {"n": 0}
    linearise = schur._linearise

    def counting(*args):
        calls["n"] += 1
        return linearise(*args)

    monkeypatch.setattr(schur, "_linearise", counting)
    monkeypatch.setattr(schur, "_CHUNK_OBS", 300)  # 1500 observations: 4 chunks

    def solve(min_chunks):
        monkeypatch.setattr(schur, "_REBUILD_REJECTED_MIN_CHUNKS", min_chunks)
        calls["n"] = 0
        problem, _ = synthetic_problem(12, 300, model="SIMPLE_RADIAL", views_per_point=5, rng=41)
        perturb(problem, rotation_rad=0.5, translation=2.5, point=2.5, rng=42)  # far: rejected steps
        options = BundleAdjustmentOptions(
            backend="schur", loss="cauchy", num_threads=1, point_steps=point_steps
        )
        result = adjust_problem(problem, options)
        return result.final_cost, problem.get_x(), calls["n"]

    kept_cost, kept_x, kept_calls = solve(10**9)
    rebuilt_cost, rebuilt_x, rebuilt_calls = solve(2)
    assert rebuilt_calls > kept_calls  # some steps were rejected, and their linearisation was rebuilt
    assert rebuilt_cost == kept_cost
    np.testing.assert_array_equal(rebuilt_x, kept_x)


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_schur_reduced_system_with_held_images_matches_dense_elimination(solver):
    """Held images (a local BA's constant images) drop out of the reduced camera system: its blocks equal
    the dense ``U - W C^-1 W^T`` of the Jacobian with their columns removed, robust loss included."""
    from geomvision.sfm.ba import schur

    problem, _ = synthetic_problem(9, 150, model="SIMPLE_RADIAL", views_per_point=4, rng=51)
    perturb(problem, rng=52)
    problem.pose_free[[1, 4, 5, 7]] = False  # constant images among the free ones
    problem.pose_free[0, 3] = False  # and one held coordinate
    problem = problem.sorted_by_image()
    opts = BundleAdjustmentOptions(loss="soft_l1", schur_solver=solver)
    st = schur._build_structure(problem, opts)
    lin = schur._linearise(problem, st, schur._evaluate(problem, st, opts, jacobians=True))
    S_slots, rhs, _ = schur._reduced_system(problem, st, lin, mu=0.0)
    n = st.n
    if solver == "dense":
        S = S_slots.reshape(n + 1, n + 1)[:n, :n]
    else:
        S = np.zeros((n, n))
        rows = np.repeat(np.arange(n), np.diff(st.csr_indptr))
        S[st.perm[rows], st.perm[st.csr_indices]] = S_slots[:-1]
    J = _dense_jacobian(problem, "soft_l1", 1.0)
    r = evaluate(problem, "soft_l1", 1.0).residuals.ravel()
    U, W, C = J[:, :n].T @ J[:, :n], J[:, :n].T @ J[:, n:], J[:, n:].T @ J[:, n:]
    S_dense = U - W @ np.linalg.solve(C, W.T)
    rhs_dense = -(J[:, :n].T @ r - W @ np.linalg.solve(C, J[:, n:].T @ r))
    np.testing.assert_allclose(S, S_dense, rtol=1e-8, atol=1e-8 * np.abs(S_dense).max())
    np.testing.assert_allclose(rhs, rhs_dense, rtol=1e-8, atol=1e-8 * np.abs(rhs_dense).max())


def test_schur_reports_the_costs_of_the_parameters_it_returns():
    problem, _ = synthetic_problem(8, 120, model="SIMPLE_RADIAL", views_per_point=4, rng=61)
    perturb(problem, rng=62)
    problem.pose_free[0] = False
    start = evaluate(problem, "soft_l1", 1.0, jacobians=False)
    result = adjust_problem(problem, BundleAdjustmentOptions(loss="soft_l1"))
    end = evaluate(problem, "soft_l1", 1.0, jacobians=False)
    assert result.final_cost < 0.1 * result.initial_cost
    np.testing.assert_allclose(result.initial_cost, start.cost, rtol=1e-12)
    np.testing.assert_allclose(result.final_cost, end.cost, rtol=1e-12)
    np.testing.assert_allclose(result.initial_mean_reprojection_error_px, start.errors_px.mean(), rtol=1e-12)
    np.testing.assert_allclose(result.mean_reprojection_error_px, end.errors_px.mean(), rtol=1e-12)


@pytest.mark.parametrize(("loss", "num_threads"), [("linear", 1), ("soft_l1", 1), ("soft_l1", 3)])
def test_refine_points_reaches_the_held_camera_bundle_adjustment_optimum(loss, num_threads):
    problem, _ = synthetic_problem(10, 200, model="RADIAL", views_per_point=3, noise_px=0.5, rng=41)
    problem.points += np.random.default_rng(42).normal(0.0, 0.05, problem.points.shape)  # cameras exact
    reference, refined = problem_to_reconstruction(problem), problem_to_reconstruction(problem)
    options = BundleAdjustmentOptions(
        loss=loss, function_tolerance=1e-14, gradient_tolerance=1e-14, num_threads=num_threads
    )
    held = BundleAdjustmentOptions(
        loss=loss,
        intrinsics="fixed",
        fixed_image_ids=tuple(reference.registered_image_ids),
        function_tolerance=1e-14,
        gradient_tolerance=1e-14,
        parameter_tolerance=1e-14,  # the default 1e-8 stops the reference ~2e-7 from its optimum
        max_iterations=200,
    )
    assert bundle_adjust(reference, held).success
    poses = {i: v.cam_from_world.translation.copy() for i, v in refined.views.items()}
    point_ids = np.array(sorted(refined.points3D))
    # 30 observations a problem: 200 points of 3 observations in 20 problems, each solved on its own
    assert refine_points(refined, point_ids, options, max_iterations=30, max_observations=30) == 20
    for p in point_ids.tolist():
        np.testing.assert_allclose(refined.points3D[p].xyz, reference.points3D[p].xyz, atol=1e-7)
    for i, view in refined.views.items():  # cameras held bitwise
        np.testing.assert_array_equal(view.cam_from_world.translation, poses[i])
    # the problems run on threads: each is independent, so any thread count gives bitwise the same points
    serial = problem_to_reconstruction(problem)
    refine_points(serial, point_ids, replace(options, num_threads=1), max_iterations=30, max_observations=30)
    for p in point_ids.tolist():
        np.testing.assert_array_equal(serial.points3D[p].xyz, refined.points3D[p].xyz)
    with pytest.raises(InputError, match="max_observations"):
        refine_points(refined, point_ids, options, max_observations=0)


def test_points_covering_images_fits_the_budget_and_spreads_over_each_frame():
    problem, _ = synthetic_problem(12, 3000, views_per_point=4, noise_px=0.0, rng=43)
    rec = problem_to_reconstruction(problem)
    total = sum(len(p.track) for p in rec.points3D.values())
    assert len(points_covering_images(rec, total)) == len(rec.points3D)  # everything fits
    chosen = points_covering_images(rec, total // 5, grid_cells=4)
    observations = [(i, k) for p in chosen.tolist() for i, k in rec.points3D[p].track]
    assert total // 5 - 4 < len(observations) <= total // 5  # filled up to the last whole point
    for image_id, view in rec.views.items():
        px = np.array([view.keypoints_px[k] for i, k in observations if i == image_id])
        # every image keeps a fair share, in every cell of its 4 x 4 grid that it has points in
        assert len(px) >= 0.15 * total / 12
        cells = {(int(x * 4 / 640), int(y * 4 / 480)) for x, y in view.keypoints_px}
        assert {(int(x * 4 / 640), int(y * 4 / 480)) for x, y in px} == cells


def test_int_lexsort_is_numpy_lexsort_with_ties_and_past_int64():
    from geomvision.sfm.bundle_adjustment import _int_lexsort

    rng = np.random.default_rng(5)
    keys = (
        rng.integers(0, 3, 5000),
        rng.integers(0, 4, 5000),
        rng.integers(0, 16, 5000),
        rng.integers(0, 40, 5000),
    )
    np.testing.assert_array_equal(_int_lexsort(keys), np.lexsort(keys))  # many ties: stable, as lexsort
    # radices whose product passes int64 take numpy's lexsort
    wide = (rng.integers(0, 2**40, 5000), rng.integers(0, 2**30, 5000))
    np.testing.assert_array_equal(_int_lexsort(wide), np.lexsort(wide))


def test_refine_points_carries_points_along_with_moved_cameras():
    problem, _ = synthetic_problem(8, 120, views_per_point=3, noise_px=0.5, rng=44)
    rec = problem_to_reconstruction(problem)
    options = BundleAdjustmentOptions(function_tolerance=1e-14, gradient_tolerance=1e-14)
    point_ids = np.array(sorted(rec.points3D))
    refine_points(rec, point_ids, options, max_iterations=30)  # at the optimum for these cameras
    optimum = {p: rec.points3D[p].xyz.copy() for p in point_ids.tolist()}
    # the whole rig moves by a rigid motion (what a BA on other points may do far from its gauge)
    new_from_old = Rigid3d.from_rotvec(np.array([0.05, -0.1, 0.2]), np.array([0.8, -0.5, 1.5]))
    poses_before = {i: v.cam_from_world for i, v in rec.views.items()}
    for view in rec.views.values():
        view.cam_from_world = view.cam_from_world @ new_from_old.inverse()
    refine_points(rec, point_ids, options, poses_before=poses_before, max_iterations=0)  # carried only
    for p in point_ids.tolist():
        np.testing.assert_allclose(rec.points3D[p].xyz, new_from_old.apply(optimum[p]), atol=1e-9)
    assert rec.mean_reprojection_error_px() < 0.7


@pytest.mark.parametrize("loss", ["linear", "soft_l1"])
def test_schur_point_steps_reach_the_same_optimum_in_fewer_iterations(loss):
    """Embedded point steps (``point_steps``) after each camera step: the same minimum, fewer iterations
    (without them this ring converges linearly: a constant actual-to-predicted ratio at almost no damping)."""
    results = {}
    for point_steps in (False, True):
        problem, _ = synthetic_problem(200, 20000, model="SIMPLE_RADIAL", rng=61)
        problem.pose_free[0] = False
        problem.pose_free[1, 3] = False  # the scale
        problem.intrinsics_free[0, [0, 3]] = True  # focal and k1
        perturb(problem, rotation_rad=0.01, translation=0.05, point=0.05, rng=62)
        options = BundleAdjustmentOptions(loss=loss, max_iterations=200, point_steps=point_steps)
        results[point_steps] = adjust_problem(problem, options)
    assert results[True].iterations < 0.7 * results[False].iterations
    np.testing.assert_allclose(results[True].final_cost, results[False].final_cost, rtol=1e-5)
