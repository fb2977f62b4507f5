"""End-to-end incremental mapping on synthetic scenes: poses vs ground truth, splits, intrinsics."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import assert_ring_model_matches, mapper_inputs, pose_errors

from geomvision.errors import InputError
from geomvision.scene import Camera, ImageInfo, Reconstruction, View
from geomvision.sfm.incremental import (
    IncrementalMapperOptions,
    MappingResult,
    PairCheckedRegistrationOptions,
    incremental_mapping,
)
from geomvision.synthetic import random_scene


@pytest.fixture(scope="module")
def ring_scene():
    return random_scene(300, 8, rng=3)


@pytest.fixture(scope="module")
def ring_result(ring_scene) -> MappingResult:
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1)
    return incremental_mapping(cameras, images, geoms, IncrementalMapperOptions(), rng=0)


def test_all_images_register_and_poses_match_ground_truth(ring_scene, ring_result):
    assert len(ring_result.reconstructions) == 1
    assert_ring_model_matches(ring_result.reconstructions[0], ring_scene)


def test_report_records_decisions_counts_and_timings(ring_result):
    report = ring_result.report
    model = report["models"][0]
    assert model["initialization"]["success"] and len(model["initialization"]["initial_pair"]) == 2
    assert model["initialization"]["median_tri_angle_deg"] >= 4.0
    assert len(model["registrations"]) == 6  # the 8 images minus the initial pair
    assert all(r["num_inliers"] >= 30 for r in model["registrations"])
    assert report["num_registered"] == 8 and report["num_models"] == 1
    assert report["num_ba_calls"] == model["num_local_ba"] + model["num_global_ba"] >= 7
    assert {"tracks", "initialization", "registration", "local_ba", "global_ba", "total"} <= set(
        report["timings_s"]
    )


def test_same_seed_gives_the_same_model():
    scene = random_scene(120, 5, layout="sequence", rng=4)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.5, rng=2)
    calls = []
    a = incremental_mapping(
        cameras,
        images,
        geoms,
        IncrementalMapperOptions(),
        rng=7,
        progress=lambda d, t, m: calls.append((d, t)),
    ).reconstructions[0]
    assert calls[-1] == (5, 5) and [d for d, _ in calls] == [3, 4, 5]  # one call per registered image
    b = incremental_mapping(cameras, images, geoms, IncrementalMapperOptions(), rng=7).reconstructions[0]
    assert a.registered_image_ids == b.registered_image_ids == [1, 2, 3, 4, 5]
    for i in a.registered_image_ids:
        np.testing.assert_array_equal(a.views[i].cam_from_world.matrix(), b.views[i].cam_from_world.matrix())


def test_disconnected_halves_give_two_models():
    left = random_scene(150, 5, layout="sequence", rng=5)
    right = random_scene(120, 4, layout="sequence", rng=6)
    cam_l, img_l, geo_l, _ = mapper_inputs(left, noise_px=0.3, rng=1)
    _, img_r, geo_r, _ = mapper_inputs(right, noise_px=0.3, rng=2, first_image_id=6)
    images = img_l | img_r
    known = IncrementalMapperOptions(fixed_camera_ids=(1,))  # short arcs cannot tell fx from fy
    result = incremental_mapping(cam_l, images, geo_l | geo_r, known, rng=0)
    assert len(result.reconstructions) == 2
    big, small = result.reconstructions
    assert big.registered_image_ids == [1, 2, 3, 4, 5]
    assert small.registered_image_ids == [6, 7, 8, 9]
    assert pose_errors(big, left)[0].max() < 0.1
    assert pose_errors(small, right, first_image_id=6)[0].max() < 0.1
    assert [m["kept"] for m in result.report["models"]] == [True, True]


def test_unknown_focal_is_refined_and_known_focal_is_kept(ring_scene):
    # Start 10 % off with a radial camera model: BA must find the true focal and no distortion.
    cameras, images, geoms, _ = mapper_inputs(
        ring_scene, noise_px=0.5, rng=1, focal_scale=1.1, model="SIMPLE_RADIAL"
    )
    rec = incremental_mapping(cameras, images, geoms, IncrementalMapperOptions(), rng=0).reconstructions[0]
    focal = rec.cameras[1].params[0]
    assert abs(focal / 800.0 - 1.0) < 0.01
    assert abs(rec.cameras[1].params[3]) < 0.05
    assert rec.num_registered == 8
    assert cameras[1].params[0] == pytest.approx(880.0)  # the caller's cameras are not modified
    # Known calibration: listed as fixed, so it is never touched.
    cameras, images, geoms, _ = mapper_inputs(ring_scene, noise_px=0.5, rng=1, model="SIMPLE_RADIAL")
    options = IncrementalMapperOptions(fixed_camera_ids=(1,))
    rec = incremental_mapping(cameras, images, geoms, options, rng=0).reconstructions[0]
    np.testing.assert_array_equal(rec.cameras[1].params, cameras[1].params)


def test_external_initial_model_seeds_the_mapper():
    scene = random_scene(150, 5, layout="sequence", rng=8)
    cameras, images, geoms, kp_index = mapper_inputs(scene, noise_px=0.3, rng=3)
    seed = Reconstruction()
    seed.add_camera(cameras[1])
    for c in (0, 1, 2):
        seed.add_view(
            View(c + 1, images[c + 1].name, 1, scene.cams_from_world[c], images[c + 1].keypoints_px)
        )
    for p in range(scene.num_points):
        track = [(c + 1, int(kp_index[c, p])) for c in (0, 1, 2) if kp_index[c, p] >= 0]
        if len(track) >= 2:
            seed.add_point3D(scene.points_in_world[p], track)
    options = IncrementalMapperOptions(fixed_camera_ids=(1,))
    result = incremental_mapping(cameras, images, geoms, options, init_reconstruction=seed, rng=0)
    model = result.report["models"][0]
    assert model["initialization"]["method"] == "external"
    assert model["initialization"]["num_images"] == 3
    rec = result.reconstructions[0]
    assert rec.registered_image_ids == [1, 2, 3, 4, 5]
    assert pose_errors(rec, scene)[0].max() < 0.1


def test_bad_input_raises_and_no_overlap_fails_as_a_value():
    cam = Camera.pinhole(1, 500, 500, 320, 240, 640, 480)
    with pytest.raises(InputError, match="unknown camera"):
        incremental_mapping({1: cam}, {1: ImageInfo("a.png", 2, np.zeros((3, 2)))}, {})
    with pytest.raises(InputError, match="global_ba_every"):
        IncrementalMapperOptions(global_ba_every=1.0)
    images = {i: ImageInfo(f"{i}.png", 1, np.zeros((3, 2))) for i in (1, 2)}
    result = incremental_mapping({1: cam}, images, {})
    assert result.reconstructions == [] and "no image pair" in result.report["reason"]


def test_implausible_refined_intrinsics_are_reset_and_frozen():
    from geomvision.sfm.incremental import _ModelBuilder
    from geomvision.sfm.mapper_state import MapperState, StepTimer, TrackTable

    scene = random_scene(30, 3, rng=0)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.0, model="SIMPLE_RADIAL")
    state = MapperState(cameras, images, TrackTable.from_tracks([], images))
    builder = _ModelBuilder(
        state, IncrementalMapperOptions(), set(images), np.random.default_rng(0), StepTimer(), None, 3
    )
    assert not builder.reset_bogus_cameras({1})  # initial values are plausible
    state.cameras[1].params = np.array([9000.0, 319.5, 239.5, 0.0])  # focal 14x the image size
    assert builder.reset_bogus_cameras({1})
    np.testing.assert_array_equal(state.cameras[1].params, cameras[1].params)
    assert 1 in builder.frozen_cameras and builder.report["num_camera_resets"] == 1
    state.cameras[1].params = np.array([800.0, 319.5, 239.5, 1.5])  # |k| > 1
    assert builder.reset_bogus_cameras({1})
    pinhole = Camera.pinhole(2, 2248.0, 1473.0, 320.0, 240.0, 640, 480)  # fx / fy = 1.53: not a real camera
    state.cameras[2] = pinhole
    builder.initial_params[2] = np.array([1520.0, 1525.0, 320.0, 240.0])
    assert builder.reset_bogus_cameras({2})
    np.testing.assert_array_equal(state.cameras[2].params, [1520.0, 1525.0, 320.0, 240.0])


@pytest.mark.slow
def test_real_images_templering_register_with_accurate_poses():
    """SIFT -> matching -> verification -> mapping on 8 consecutive templeRing views (known K)."""
    from conftest import shared_dataset

    from geomvision.evaluation import read_middlebury_par
    from geomvision.features.extract import ExtractionOptions, extract_features
    from geomvision.features.match import MatchingOptions, match_pairs
    from geomvision.features.pairs import exhaustive_pairs
    from geomvision.geometry.rigid import project_to_so3, rotation_angle_deg
    from geomvision.sfm.two_view import TwoViewOptions, verify_pairs

    root = shared_dataset("middlebury_templeRing")
    paths = sorted(root.glob("templeR0*.png"))[12:20]  # views 13-20: one contiguous arc, ~8 deg apart
    gt = read_middlebury_par(root / "templeR_par.txt")
    K = gt[paths[0].name].K
    features = dict(enumerate(extract_features(paths, ExtractionOptions()), start=1))
    matches = match_pairs(features, exhaustive_pairs(list(features)), MatchingOptions())
    cam = Camera.pinhole(1, K[0, 0], K[1, 1], K[0, 2], K[1, 2], 640, 480)
    verified = verify_pairs(features, matches, dict.fromkeys(features, cam), TwoViewOptions(), rng=0)
    verified = {p: g for p, g in verified.items() if g.success}
    images = {i: ImageInfo(paths[i - 1].name, 1, f.keypoints_px, f.colors) for i, f in features.items()}
    result = incremental_mapping(
        {1: cam}, images, verified, IncrementalMapperOptions(fixed_camera_ids=(1,)), rng=0
    )
    rec = result.reconstructions[0]
    assert rec.num_registered == 8 and len(rec.points3D) > 1000
    assert rec.mean_reprojection_error_px() < 0.6
    ids = rec.registered_image_ids
    R_est = np.array([rec.views[i].cam_from_world.rotation for i in ids])
    R_gt = np.array([gt[images[i].name].cam_from_world.rotation for i in ids])
    world = project_to_so3(np.einsum("nji,njk->ik", R_gt, R_est))
    errors = [float(rotation_angle_deg(g @ world, e)) for g, e in zip(R_gt, R_est, strict=True)]
    assert np.median(errors) < 0.5 and max(errors) < 1.0


def _weakly_attached_last_image(num_shared_points: int):
    """A 6-image sequence whose last image sees only ``num_shared_points`` points of the first five.

    Images 1-5 are matched on the first half of the points only; the pair (5, 6) on the second half plus
    ``num_shared_points`` of the first. Registered images 1-5 then give image 6 that few triangulated
    points (fewer than PnP's default 30 inliers), while the pair (5, 6) has some 200 verified matches.
    """
    scene = random_scene(400, 6, layout="sequence", rng=11)
    cameras, images, geoms, kp_index = mapper_inputs(scene, noise_px=0.3, rng=4)
    first_half = np.arange(scene.visible.shape[1]) < 200
    for (i, j), g in geoms.items():
        keep_points = first_half.copy() if j != 6 else ~first_half
        if j == 6:
            keep_points[:num_shared_points] = True
        point_of_kp = np.full(len(images[i].keypoints_px), -1)
        point_of_kp[kp_index[i - 1][kp_index[i - 1] >= 0]] = np.flatnonzero(kp_index[i - 1] >= 0)
        points = point_of_kp[g.inlier_matches[:, 0]]
        g.inlier_matches = g.inlier_matches[keep_points[points]]
    geoms = {pair: g for pair, g in geoms.items() if pair[1] != 6 or pair[0] == 5}
    return scene, cameras, images, geoms


def test_pair_checked_registration_joins_a_weakly_attached_image():
    scene, cameras, images, geoms = _weakly_attached_last_image(num_shared_points=16)
    assert geoms[(5, 6)].num_inliers >= 100
    known = IncrementalMapperOptions(
        fixed_camera_ids=(1,), pair_checked=PairCheckedRegistrationOptions(min_inliers=10)
    )
    result = incremental_mapping(cameras, images, geoms, known, rng=0)
    rec = result.reconstructions[0]
    assert sorted(rec.registered_image_ids) == [1, 2, 3, 4, 5, 6]
    assert pose_errors(rec, scene)[0].max() < 0.1  # degrees
    model = result.report["models"][0]
    assert model["num_pair_checked"] == 1
    assert [r["image_id"] for r in model["registrations"] if "pair_checked_with" in r] == [6]

    off = incremental_mapping(
        cameras,
        images,
        geoms,
        IncrementalMapperOptions(fixed_camera_ids=(1,)),  # the default: off
        rng=0,
    )
    assert 6 not in off.reconstructions[0].registered_image_ids


def test_mappers_pause_the_cyclic_collector_and_restore_it():
    """Both mappers run with CPython's cyclic collector off (runtime.collector) and leave it as found."""
    import gc

    from geomvision.sfm.global_mapper import global_mapping

    scene = random_scene(120, 5, layout="sequence", rng=4)
    cameras, images, geoms, _ = mapper_inputs(scene, noise_px=0.5, rng=2)
    for mapper in (incremental_mapping, global_mapping):
        seen = []
        mapper(cameras, images, geoms, rng=7, progress=lambda d, t, m, seen=seen: seen.append(gc.isenabled()))
        assert seen and not any(seen), mapper.__name__
        assert gc.isenabled()
