"""End-to-end global mapping on synthetic scenes: poses vs ground truth, components, intrinsics, config."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from mapper_fixtures import assert_ring_model_matches, mapper_inputs, pose_errors

from geomvision.config import ReconstructionConfig, config_from_dict, dump_config_toml
from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix
from geomvision.scene import TwoViewGeometry
from geomvision.sfm.global_mapper import GlobalMapperOptions, _centers_in_frame, global_mapping
from geomvision.sfm.global_positioning import GlobalPositioningOptions
from geomvision.sfm.incremental import MappingResult
from geomvision.synthetic import random_scene


@pytest.fixture(scope="module")
def ring_scene():
    return random_scene(300, 8, rng=3)


@pytest.fixture(scope="module")
def ring_result(ring_scene) -> MappingResult:
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    return global_mapping(cameras, images, geoms, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0)


def test_all_images_register_and_poses_match_ground_truth(ring_scene, ring_result):
    assert len(ring_result.reconstructions) == 1
    assert_ring_model_matches(ring_result.reconstructions[0], ring_scene)


def test_report_has_per_step_counts_iterations_and_timings(ring_result):
    report = ring_result.report
    assert report["num_registered"] == 8 and report["num_models"] == 1
    rotation = report["rotation_averaging"]
    assert rotation["num_pairs_used"] == 28 and rotation["num_pairs_dropped"] == 0
    assert rotation["residual_deg_median"] < 1e-6  # the fixture's relative rotations are exact
    model = report["models"][0]
    assert model["positioning"]["num_images"] == 8 and model["positioning"]["iterations"] >= 1
    assert model["ba_rounds"][0]["fix_rotations"] and not model["ba_rounds"][1]["fix_rotations"]
    assert len(model["ba_rounds"]) == GlobalMapperOptions().num_ba_rounds + 1
    assert all(r["iterations"] >= 1 for r in model["ba_rounds"][:1])
    assert {"rotation_averaging", "tracks", "positioning", "bundle_adjustment", "total"} <= set(
        report["timings_s"]
    )


def test_outlier_pair_is_dropped_and_disconnected_sets_give_two_models():
    left = random_scene(200, 6, layout="sequence", rng=5)
    right = random_scene(150, 5, layout="sequence", rng=6)
    cam_l, img_l, geo_l, _ = mapper_inputs(left, noise_px=0.3, rng=1)
    _, img_r, geo_r, _ = mapper_inputs(right, noise_px=0.3, rng=2, first_image_id=7)
    # One pair of the left set carries a wrong relative rotation (20 degrees off).
    bad = geo_l[(1, 4)]
    wrong = Rigid3d.from_rotvec([0.0, np.deg2rad(20.0), 0.0], np.zeros(3)) @ bad.cam2_from_cam1
    geo_l[(1, 4)] = TwoViewGeometry(1, 4, "calibrated", bad.inlier_matches, cam2_from_cam1=wrong)
    result = global_mapping(
        cam_l, img_l | img_r, geo_l | geo_r, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0
    )
    assert result.report["rotation_averaging"]["num_pairs_dropped"] == 1
    assert len(result.reconstructions) == 2
    big, small = result.reconstructions
    assert big.registered_image_ids == [1, 2, 3, 4, 5, 6]
    assert small.registered_image_ids == [7, 8, 9, 10, 11]
    assert pose_errors(big, left)[0].max() < 0.1
    assert pose_errors(small, right, first_image_id=7)[0].max() < 0.1


def test_unknown_focal_is_refined_and_known_focal_is_kept(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(
        ring_scene, noise_px=0.5, rng=1, focal_scale=1.1, model="SIMPLE_RADIAL"
    )
    result = global_mapping(cameras, images, geoms, GlobalMapperOptions(), rng=0)
    rec = result.reconstructions[0]
    assert abs(rec.cameras[1].params[0] / 800.0 - 1.0) < 0.01
    # BA moved the focal by ~10 % (> recalibrate_focal_change): the pairs were re-verified and mapped again.
    before, after = result.report["recalibration"]["focal_px_before_after"]["1"]
    assert before == pytest.approx(880.0) and abs(after / 800.0 - 1.0) < 0.02
    assert abs(rec.cameras[1].params[3]) < 0.05
    assert rec.num_registered == 8
    assert cameras[1].params[0] == pytest.approx(880.0)  # the caller's cameras are not modified
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1, model="SIMPLE_RADIAL")
    rec = global_mapping(
        cameras, images, geoms, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0
    ).reconstructions[0]
    np.testing.assert_array_equal(rec.cameras[1].params, cameras[1].params)


def test_a_first_pass_whose_focal_moved_triangulates_no_new_tracks(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(
        ring_scene, noise_px=0.5, rng=1, focal_scale=1.2, model="SIMPLE_RADIAL"
    )
    # Positioning takes 40 tracks an image (~40 points): the other ~260 are left to triangulation.
    options = GlobalMapperOptions(positioning=GlobalPositioningOptions(max_points_per_image=40))
    result = global_mapping(cameras, images, geoms, options, rng=0)
    first = result.report["recalibration"]["first_pass"]["models"][0]["ba_rounds"]
    # The first joint round moved the focal (880 -> ~800 px): from then on, no track is triangulated.
    assert first[1]["refocusing"] and abs(first[1]["focal_px"]["1"] / 960.0 - 1.0) > 0.05
    assert all(r["num_points_created"] == 0 for r in first[:-1])
    assert first[-1]["num_points"] == first[1]["num_points"] < 60  # the positioned points, none added
    second = result.report["models"][0]["ba_rounds"]
    assert (
        sum(r["num_points_created"] for r in second[:-1]) > 0
        and second[-1]["num_points"] > first[-1]["num_points"]
    )
    rec = result.reconstructions[0]
    assert rec.num_registered == 8 and abs(rec.cameras[1].params[0] / 800.0 - 1.0) < 0.01
    assert pose_errors(rec, ring_scene)[0].max() < 0.1
    # Without the lean first pass, its rounds triangulate the other tracks, with the same end.
    full = global_mapping(cameras, images, geoms, replace(options, lean_first_pass=False), rng=0)
    first = full.report["recalibration"]["first_pass"]["models"][0]["ba_rounds"]
    assert first[0]["num_points_created"] > 0 and "refocusing" not in first[1]
    assert pose_errors(full.reconstructions[0], ring_scene)[0].max() < 0.1
    # A focal that does not move: no re-mapping; the tracks held back by the first round are triangulated.
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1, model="SIMPLE_RADIAL")
    kept = global_mapping(cameras, images, geoms, options, rng=0)
    rounds = kept.report["models"][0]["ba_rounds"]
    assert "recalibration" not in kept.report and rounds[1]["refocusing"] is False
    assert rounds[0]["num_points_created"] == 0 and rounds[1]["num_points_created"] > 0
    assert pose_errors(kept.reconstructions[0], ring_scene)[0].max() < 0.1
    # A known focal is not watched: the first round triangulates the other tracks at once.
    fixed = global_mapping(cameras, images, geoms, replace(options, fixed_camera_ids=(1,)), rng=0)
    rounds = fixed.report["models"][0]["ba_rounds"]
    assert "refocusing" not in rounds[1] and rounds[0]["num_points_created"] > 200


def test_same_seed_gives_the_same_model(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    options = GlobalMapperOptions(fixed_camera_ids=(1,))
    a = global_mapping(cameras, images, geoms, options, rng=3).reconstructions[0]
    b = global_mapping(cameras, images, geoms, options, rng=3).reconstructions[0]
    for i in a.registered_image_ids:
        np.testing.assert_array_equal(a.views[i].cam_from_world.matrix(), b.views[i].cam_from_world.matrix())


def test_bad_input_raises_and_no_posed_pair_fails_as_a_value(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1, with_pose=False)
    options = GlobalMapperOptions(fixed_camera_ids=(1,), pose_unposed_pairs=False)
    result = global_mapping(cameras, images, geoms, options)
    assert result.reconstructions == [] and "2+ images" in result.report["reason"]
    # With pose_unposed_pairs (default) the 28 pairs are posed from their inliers: the model comes back.
    result = global_mapping(cameras, images, geoms, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0)
    assert result.report["relative_poses"]["num_pairs"] == 28
    assert result.report["relative_poses"]["num_failed"] == 0
    assert result.reconstructions[0].num_registered == 8
    assert pose_errors(result.reconstructions[0], ring_scene)[0].max() < 0.1
    with pytest.raises(InputError, match="unknown image"):
        global_mapping(cameras, {1: images[1]}, geoms)
    with pytest.raises(InputError, match="num_ba_rounds"):
        GlobalMapperOptions(num_ba_rounds=0)


def test_config_selects_the_mapper_and_round_trips_the_global_options():
    config = config_from_dict(
        {
            "pipeline": {"mapper": "global"},
            "global_mapper": {"num_ba_rounds": 3, "rotation_averaging": {"max_residual_deg": 3.0}},
        }
    )
    assert config.pipeline.mapper == "global"
    assert config.global_mapper.num_ba_rounds == 3
    assert config.global_mapper.rotation_averaging.max_residual_deg == 3.0
    assert config.global_mapper.positioning.loss == "huber"  # untouched nested defaults stay
    import tomllib

    again = config_from_dict(tomllib.loads(dump_config_toml(config)))
    assert again.global_mapper == config.global_mapper and again.pipeline.mapper == "global"
    with pytest.raises(InputError, match="mapper"):
        ReconstructionConfig().with_changes(pipeline={"mapper": "hybrid"})


def test_a_global_run_verifies_at_its_own_threshold(tmp_path):
    from reliability_images import fast_config, render, write_image

    from geomvision.pipeline import run_pipeline, verification_options

    incremental = ReconstructionConfig().with_changes(two_view={"ransac": {"max_error_px": 1.5}})
    assert verification_options(incremental).ransac.max_error_px == 1.5
    global_run = incremental.with_changes(pipeline={"mapper": "global"})
    assert verification_options(global_run).ransac == replace(incremental.two_view.ransac, max_error_px=3.0)
    own = global_run.with_changes(pipeline={"global_verification_max_error_px": None})
    assert verification_options(own) == incremental.two_view

    # Through the pipeline: the global run's verification is its own (a second cache entry per pair), and
    # the looser threshold keeps every pair's 2 px inliers and more.
    for k, view in enumerate(render(5).images):
        write_image(tmp_path / "img" / f"v{k}.png", view)
    out = tmp_path / "out"
    looser = run_pipeline(tmp_path / "img", out, fast_config(mapper="global"))
    pairs = len(list((out / "cache" / "two_view").glob("*")))
    strict = run_pipeline(tmp_path / "img", out, fast_config(mapper="incremental"))
    assert len(list((out / "cache" / "two_view").glob("*"))) == 2 * pairs > 0
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["max_error_px"] == 2.0
    assert looser.report["verification"]["max_error_px"] == 3.0
    verified = [p for p, g in strict.two_view_geometries.items() if g.success]
    assert verified and all(looser.two_view_geometries[p].success for p in verified)
    more = [
        len(looser.two_view_geometries[p].inlier_matches) - len(strict.two_view_geometries[p].inlier_matches)
        for p in verified
    ]
    assert sum(more) > 0 and min(more) >= -2, more
    assert looser.reconstruction.num_registered == 5


def _with_consistent_wrong_matches(scene, cameras, images, geoms, pair=(1, 2), num=1500, angle_deg=1.0):
    """Add ``num`` wrong matches to ``pair`` that agree with each other, as repeated structure does.

    Fake points project into the first image by its true pose and into the second by a pose rotated by
    ``angle_deg``: they satisfy one consistent (wrong) epipolar geometry, so a two-view point fits them.
    """
    gen = np.random.default_rng(7)
    i, j = pair
    wrong_pose = (
        Rigid3d.from_rotvec([0.0, np.deg2rad(angle_deg), 0.0], np.zeros(3)) @ scene.cams_from_world[j - 1]
    )
    fake = gen.uniform(-1.0, 1.0, size=(num, 3))
    K = cameras[1].K
    px = []
    for pose in (scene.cams_from_world[i - 1], wrong_pose):
        cam = pose.apply(fake)
        px.append(cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2])
    inside = np.all([(p >= 0).all(1) & (p < [scene.width, scene.height]).all(1) for p in px], axis=0)
    px = [p[inside] for p in px]
    images, geoms = dict(images), dict(geoms)
    matches = []
    for image_id, new_px in zip(pair, px, strict=True):
        info = images[image_id]
        matches.append(len(info.keypoints_px) + np.arange(len(new_px)))
        images[image_id] = type(info)(info.name, info.camera_id, np.vstack([info.keypoints_px, new_px]))
    g = geoms[pair]
    geoms[pair] = TwoViewGeometry(
        i,
        j,
        g.config,
        np.vstack([g.inlier_matches, np.stack(matches, axis=1)]),
        cam2_from_cam1=g.cam2_from_cam1,
    )
    return images, geoms


def test_two_view_points_of_consistent_wrong_matches_do_not_bend_the_model(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    images, geoms = _with_consistent_wrong_matches(ring_scene, cameras, images, geoms)
    errors = {}
    for min_obs in (2, 3):
        options = GlobalMapperOptions(fixed_camera_ids=(1,), min_point_observations=min_obs)
        rec = global_mapping(cameras, images, geoms, options, rng=0).reconstructions[0]
        assert rec.num_registered == 8
        errors[min_obs] = pose_errors(rec, ring_scene)[0].max()
    assert errors[3] < 0.1  # the wrong matches form two-view points only: deleted, no effect
    assert errors[2] > 0.15  # kept, they pull the pair's relative rotation towards the wrong one


def test_planar_pairs_are_posed_again_by_five_point_by_default(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    # A "planar" pair whose (homography) pose is the wrong one: 15 degrees off.
    g = geoms[(1, 3)]
    wrong = Rigid3d.from_rotvec([0.0, np.deg2rad(15.0), 0.0], np.zeros(3)) @ g.cam2_from_cam1
    geoms[(1, 3)] = TwoViewGeometry(1, 3, "planar", g.inlier_matches, cam2_from_cam1=wrong)
    # A second planar pair whose inliers are noise: RANSAC cannot pose it, its own pose stays.
    junk = np.stack([np.arange(40), (np.arange(40) * 7) % 40], axis=1)
    geoms[(2, 4)] = TwoViewGeometry(2, 4, "planar", junk, cam2_from_cam1=geoms[(2, 4)].cam2_from_cam1)
    fixed = GlobalMapperOptions(fixed_camera_ids=(1,))
    plain = global_mapping(cameras, images, geoms, replace(fixed, pose_planar_pairs=False), rng=0)
    assert plain.report["rotation_averaging"]["num_pairs_dropped"] >= 1  # the wrong pose disagrees
    posed = global_mapping(cameras, images, geoms, fixed, rng=0)
    assert posed.report["relative_poses"]["num_planar"] == 2
    assert posed.report["relative_poses"]["num_planar_kept"] == 1
    assert posed.report["rotation_averaging"]["num_pairs_dropped"] == 0
    assert posed.report["rotation_averaging"]["residual_deg_median"] < 0.1
    assert pose_errors(posed.reconstructions[0], ring_scene)[0].max() < 0.1


def test_round_ba_options_apply_to_the_rounds_before_the_last(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    base = GlobalMapperOptions(fixed_camera_ids=(1,))
    one_step = replace(base.ba, max_iterations=1)
    result = global_mapping(cameras, images, geoms, replace(base, round_ba=one_step), rng=0)
    rounds = result.report["models"][0]["ba_rounds"]
    assert [r["iterations"] for r in rounds[:-1]] == [1] * base.num_ba_rounds
    assert rounds[-1]["iterations"] > 1  # the last round runs with ``ba``
    assert_ring_model_matches(result.reconstructions[0], ring_scene)


def test_the_rounds_before_the_last_stop_at_their_own_function_tolerance(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    base = GlobalMapperOptions(fixed_camera_ids=(1,), round_function_tolerance=0.0)
    strict = global_mapping(cameras, images, geoms, base, rng=0).report["models"][0]["ba_rounds"]
    loose = global_mapping(cameras, images, geoms, replace(base, round_function_tolerance=1e-2), rng=0)
    rounds = loose.report["models"][0]["ba_rounds"]
    assert sum(r["iterations"] for r in rounds[:-1]) < sum(r["iterations"] for r in strict[:-1])
    assert_ring_model_matches(loose.reconstructions[0], ring_scene)  # the last BA still converges
    with pytest.raises(InputError, match="round_function_tolerance"):
        GlobalMapperOptions(round_function_tolerance=-1.0)


def test_the_round_with_fixed_rotations_is_capped_by_its_own_option(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    base = GlobalMapperOptions(
        fixed_camera_ids=(1,), fixed_rotation_max_iterations=0, round_function_tolerance=0.0
    )
    free = global_mapping(cameras, images, geoms, base, rng=0).report["models"][0]["ba_rounds"]
    assert free[0]["fix_rotations"] and free[0]["iterations"] > 2
    capped = global_mapping(cameras, images, geoms, replace(base, fixed_rotation_max_iterations=2), rng=0)
    rounds = capped.report["models"][0]["ba_rounds"]
    assert rounds[0]["iterations"] == 2 and not any(r["fix_rotations"] for r in rounds[1:])
    assert_ring_model_matches(capped.reconstructions[0], ring_scene)


def test_an_earlier_models_centres_are_turned_into_the_new_rotations_frame():
    rng = np.random.default_rng(4)
    rotations_before = {i: rotvec_to_matrix(rng.normal(size=3)) for i in range(1, 6)}
    centers_before = {i: rng.normal(size=3) for i in range(1, 6)}
    # The new rotation averaging fixed another world frame: world_now = Q world_before.
    q = rotvec_to_matrix(np.array([0.3, -1.2, 0.7]))
    rotations_now = {i: r @ q.T for i, r in rotations_before.items()}
    moved = _centers_in_frame(centers_before, rotations_before, rotations_now)
    for i in range(1, 6):
        assert np.allclose(moved[i], q @ centers_before[i], atol=1e-12)
        # Same camera, both frames: the pose maps the centre to the camera's origin.
        assert np.allclose(rotations_now[i] @ moved[i], rotations_before[i] @ centers_before[i], atol=1e-12)
    assert _centers_in_frame(centers_before, {}, rotations_now) is centers_before  # nothing shared


def test_rounds_before_the_last_adjust_a_covering_subset_of_the_points(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    options = GlobalMapperOptions(
        fixed_camera_ids=(1,), round_observations_per_image=60, round_min_observations=0
    )
    result = global_mapping(cameras, images, geoms, options, rng=0)
    rounds = result.report["models"][0]["ba_rounds"]
    assert all(r["num_points_held"] > 0 for r in rounds[:-1])
    assert all(r["num_observations"] <= 60 * 8 for r in rounds[:-1])
    assert rounds[-1]["num_points_held"] == 0  # the last BA adjusts every point
    rec = result.reconstructions[0]
    assert len(rec.points3D) > 250  # the held points were triangulated again
    assert_ring_model_matches(rec, ring_scene)
    # The budget is at least round_min_observations: this small model keeps every point by default.
    default = global_mapping(cameras, images, geoms, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0)
    assert all(r["num_points_held"] == 0 for r in default.report["models"][0]["ba_rounds"])


def test_the_final_ba_adjusts_a_covering_subset_above_its_budget(ring_scene):
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    options = GlobalMapperOptions(fixed_camera_ids=(1,), final_max_observations=800)
    result = global_mapping(cameras, images, geoms, options, rng=0)
    final = result.report["models"][0]["ba_rounds"][-1]
    assert final["num_points_held"] > 0 and final["num_observations"] <= 800
    rec = result.reconstructions[0]
    assert len(rec.points3D) > 250  # the held points followed the adjusted cameras
    assert_ring_model_matches(rec, ring_scene)
    assert final["num_points"] < len(rec.points3D)
    # Under the default budget (600k) this small model's final BA adjusts every point.
    default = global_mapping(cameras, images, geoms, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0)
    assert default.report["models"][0]["ba_rounds"][-1]["num_points_held"] == 0
    with pytest.raises(ValueError):
        GlobalMapperOptions(final_max_observations=-1)


def _with_a_sparse_image(scene, *, num_two_view: int = 150, num_shared: int = 10):
    """The scene with its last image seeing ``num_two_view`` points only the image before it sees too,
    and ``num_shared`` points of longer tracks: most of its tracks have two views, as on a sparse ring."""
    visible = scene.visible.copy()
    last, before = scene.num_cameras - 1, scene.num_cameras - 2
    both = np.flatnonzero(visible[last] & visible[before])
    two_view, shared = both[:num_two_view], both[num_two_view : num_two_view + num_shared]
    assert len(two_view) == num_two_view and len(shared) == num_shared
    visible[last] = False
    visible[last, two_view] = visible[last, shared] = True
    others = np.ones(scene.num_cameras, dtype=bool)
    others[[last, before]] = False
    visible[np.ix_(others, two_view)] = False
    return replace(scene, visible=visible)


def test_an_image_seen_mostly_by_two_view_tracks_keeps_its_two_view_points(ring_scene):
    scene = _with_a_sparse_image(ring_scene)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.5, rng=1)
    last = scene.num_cameras  # image ids start at 1
    kept = global_mapping(cameras, images, geoms, GlobalMapperOptions(fixed_camera_ids=(1,)), rng=0)
    rec = kept.reconstructions[0]
    assert rec.num_registered == 8
    assert kept.report["models"][0]["sparse_image_ids"] == [last]
    assert rec.views[last].num_points3D > 100
    rotation_errors_deg = pose_errors(rec, scene)[0]
    assert rotation_errors_deg.max() < 0.25  # the sparse image hangs on one pair: a little looser
    assert np.median(rotation_errors_deg) < 0.1
    # Without the rule the image keeps only its 10 longer tracks: too few, so it is left out.
    options = GlobalMapperOptions(fixed_camera_ids=(1,), sparse_image_observations=0)
    dropped = global_mapping(cameras, images, geoms, options, rng=0)
    assert dropped.reconstructions[0].num_registered == 7
    assert last in dropped.report["models"][0]["dropped_image_ids"]


@pytest.mark.parametrize("from_first_centers", [False, True])
def test_the_second_pass_after_a_refocus_starts_afresh_or_from_the_first_centres(
    ring_scene, from_first_centers
):
    cameras, images, geoms, _ = mapper_inputs(
        ring_scene, noise_px=0.5, rng=1, focal_scale=1.2, model="SIMPLE_RADIAL"
    )
    options = GlobalMapperOptions(second_pass_from_first_centers=from_first_centers)
    result = global_mapping(cameras, images, geoms, options, rng=0)
    assert "recalibration" in result.report  # the focal moved 960 -> ~800 px: a second pass ran
    second = result.report["models"][0]["ba_rounds"]
    # From the first centres (warm) the round with fixed rotations is skipped; a fresh start has it.
    assert second[0]["fix_rotations"] is (not from_first_centers)
    rec = result.reconstructions[0]
    assert rec.num_registered == 8 and abs(rec.cameras[1].params[0] / 800.0 - 1.0) < 0.01
    assert pose_errors(rec, ring_scene)[0].max() < 0.1
