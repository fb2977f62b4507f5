"""Bundle adjustment: analytic Jacobian vs finite differences, accuracy on synthetic scenes with known
noise, both backends, held parameters staying bitwise fixed, robust losses, Reconstruction round trip."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.sfm.ba import losses
from geomvision.sfm.ba.model import BundleAdjustmentProblem, evaluate
from geomvision.sfm.ba.synthetic import perturb, problem_to_reconstruction, synthetic_problem
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, adjust_problem, bundle_adjust

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


def test_schur_threads_give_identical_result():
    # the threaded pair products compute the same batches, only on other threads: bitwise equal results
    results = []
    for threads in (1, 2, 3):
        problem, _ = synthetic_problem(12, 300, model="SIMPLE_RADIAL", views_per_point=5, rng=31)
        perturb(problem, rng=32)
        opts = BundleAdjustmentOptions(backend="schur", num_threads=threads, function_tolerance=1e-10)
        result = adjust_problem(problem, opts)
        assert result.success and result.final_cost < 0.02 * result.initial_cost  # down to the noise
        results.append((result.final_cost, problem.points.copy()))
    for cost, points in results[1:]:
        assert cost == results[0][0]
        np.testing.assert_array_equal(points, results[0][1])
    with pytest.raises(InputError, match="num_threads"):
        BundleAdjustmentOptions(num_threads=0)


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
