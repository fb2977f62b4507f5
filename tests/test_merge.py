"""Sim(3) alignment and merging of overlapping models: synthetic clusters with exact answers.

A ``random_scene`` is split into overlapping clusters of images; each cluster becomes a Reconstruction
of the points it sees (in >= 2 of its images), moved into its own random similarity frame, with 30 % of
its points replaced by outliers (random positions, so they match nothing). Keypoint order is shuffled
per image so no test passes through aligned indices.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, Sim3d, rotvec_to_matrix
from geomvision.geometry.sim3 import sim3_from_matrix, sim3_from_vector, sim3_to_vector
from geomvision.scene import Camera, Reconstruction, TwoViewGeometry, View
from geomvision.sfm.bundle_adjustment import bundle_adjust
from geomvision.sfm.merge import (
    AlignmentOptions,
    MergeOptions,
    _finish_group,
    _join_group,
    align_reconstructions,
    merge_reconstructions,
    shared_point_pairs,
)
from geomvision.synthetic import random_scene
from tests.mapper_fixtures import pose_errors


def random_sim3(gen: np.random.Generator) -> Sim3d:
    return Sim3d(
        float(np.exp(gen.uniform(-1.0, 1.0))),
        rotvec_to_matrix(gen.normal(size=3)),
        gen.uniform(-5.0, 5.0, size=3),
    )


def split_scene(
    scene,
    clusters: list[list[int]],
    *,
    noise_px: float = 0.0,
    pose_noise: float = 0.0,
    outlier_ratio: float = 0.3,
    rng: int = 0,
) -> tuple[list[Reconstruction], list[Sim3d], dict[int, np.ndarray]]:
    """One model per cluster (0-based camera indices; image_id = index + 1), each in a random frame.

    Returns:
        (models, model_from_world per model, keypoint index (N,) of each point per image_id).
    """
    gen = np.random.default_rng(rng)
    C, N = scene.visible.shape
    K = scene.K
    camera = Camera.pinhole(1, K[0, 0], K[1, 1], K[0, 2], K[1, 2], scene.width, scene.height)
    keypoints, kp_of_point = {}, {}
    for c in range(C):
        px = (
            scene.observations_px[c] + gen.normal(scale=noise_px, size=(N, 2))
            if noise_px
            else scene.observations_px[c]
        )
        perm = gen.permutation(N)
        keypoints[c + 1] = px[perm]
        kp_of_point[c + 1] = np.argsort(perm)
    models, frames = [], []
    for members in clusters:
        model_from_world = random_sim3(gen)
        rec = Reconstruction()
        rec.add_camera(Camera(1, camera.model, camera.width, camera.height, camera.params.copy()))
        for c in members:
            pose = scene.cams_from_world[c]
            if pose_noise:
                pose = Rigid3d(
                    rotvec_to_matrix(gen.normal(scale=pose_noise, size=3)) @ pose.rotation,
                    pose.translation + gen.normal(scale=pose_noise, size=3),
                )
            rec.add_view(
                View(
                    c + 1, f"img_{c + 1:03d}.png", 1, model_from_world.transform_pose(pose), keypoints[c + 1]
                )
            )
        seen = scene.visible[members].sum(axis=0) >= 2
        point_ids = np.flatnonzero(seen)
        outliers = set(
            gen.choice(point_ids, size=int(round(outlier_ratio * len(point_ids))), replace=False).tolist()
        )
        for p in point_ids.tolist():
            xyz = scene.points_in_world[p]
            if p in outliers:
                xyz = gen.uniform(-3.0, 3.0, size=3)
            elif pose_noise:
                xyz = xyz + gen.normal(scale=pose_noise, size=3)
            track = [(c + 1, int(kp_of_point[c + 1][p])) for c in members if scene.visible[c, p]]
            rec.add_point3D(model_from_world.apply(xyz), track)
        models.append(rec)
        frames.append(model_from_world)
    return models, frames, kp_of_point


def _merge_group(models, transforms, cores, options):
    """One group's whole merge: join (needs the input models), then filter and adjust."""
    merged, report, dropped = _join_group(models, transforms, cores, options, np.random.default_rng(0))
    return merged, report, dropped + _finish_group(merged, report, options)


def test_sim3_parametrisations_round_trip():
    gen = np.random.default_rng(3)
    for _ in range(5):
        sim = random_sim3(gen)
        back = sim3_from_vector(sim3_to_vector(sim))
        assert np.allclose(back.matrix(), sim.matrix(), atol=1e-12)
        assert np.allclose(sim3_from_matrix(sim.matrix()).matrix(), sim.matrix(), atol=1e-12)


def test_shared_point_pairs_link_points_through_keypoints():
    scene = random_scene(150, 8, rng=1)
    models, _, _ = split_scene(scene, [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]], outlier_ratio=0.0)
    pairs = shared_point_pairs(models[0], models[1])
    # Points of model 0 seen by a shared image (3 or 4 -> image ids 4, 5) and also in model 1.
    in_0 = set(models[0].points3D)
    expected = 0
    for point in models[0].points3D.values():
        keys = [(i, kp) for i, kp in point.track if i in (4, 5)]
        if any(models[1].views[i].point3D_ids[kp] >= 0 for i, kp in keys):
            expected += 1
    assert len(pairs) == expected > 50
    assert set(pairs[:, 0]) <= in_0


@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_is_exact_without_noise_despite_30_percent_outliers(seed):
    scene = random_scene(300, 10, rng=seed)
    models, frames, _ = split_scene(scene, [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9]], rng=seed)
    result = align_reconstructions(models[1], models[0], rng=seed)
    assert result.success, result.reason
    expected = frames[0] @ frames[1].inverse()  # model0_from_model1
    assert abs(result.dst_from_src.scale / expected.scale - 1) < 1e-9
    assert np.allclose(result.dst_from_src.rotation, expected.rotation, atol=1e-9)
    assert np.allclose(result.dst_from_src.translation, expected.translation, atol=1e-8 * expected.scale)
    # Outliers (random positions in either model) are rejected; the other shared points are inliers.
    assert 0.3 < result.num_inliers / result.num_shared_points < 0.7
    assert result.stats["reprojection_error_dst_px"]["max"] < 1e-6
    assert result.stats["camera_error_px"]["max"] < 1e-6


def test_alignment_fails_with_a_reason_when_models_share_nothing_consistent():
    scene = random_scene(200, 8, rng=4)
    models, _, _ = split_scene(scene, [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]], outlier_ratio=0.0, rng=4)
    broken = models[1]
    gen = np.random.default_rng(0)
    for point in broken.points3D.values():
        point.xyz = gen.uniform(-3, 3, size=3)
    result = align_reconstructions(broken, models[0], rng=0)
    assert not result.success
    assert result.reason
    disjoint, _, _ = split_scene(scene, [[0, 1, 2], [5, 6, 7]], outlier_ratio=0.0)
    result = align_reconstructions(disjoint[1], disjoint[0])
    assert not result.success and "shared 3D points" in result.reason


def _merged_pose_errors(rec, scene):
    rot_err, centre_err, _ = pose_errors(rec, scene)
    return rot_err, centre_err


def test_merge_returns_exact_poses_without_noise():
    scene = random_scene(400, 15, rng=7)
    clusters = [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14]]
    models, _, _ = split_scene(scene, clusters, rng=7)
    result = merge_reconstructions(
        models, core_image_ids=[{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14, 15}], rng=0
    )
    assert len(result.reconstructions) == 1
    rec = result.reconstructions[0]
    assert rec.registered_image_ids == list(range(1, 16))
    rot_err, centre_err = _merged_pose_errors(rec, scene)
    assert rot_err.max() < 1e-6
    assert centre_err.max() < 1e-6
    assert rec.mean_reprojection_error_px() < 1e-6
    # Tracks were joined: some merged point is observed in images of all three clusters.
    spans = [len({(i - 1) // 5 for i, _ in p.track}) for p in rec.points3D.values()]
    assert max(spans) == 3
    report = result.report
    assert report["num_output_models"] == 1 and all(a["success"] for a in report["alignments"])
    assert report["groups"][0]["tree"]


def _whole_scene_bundle_adjustment(scene, noise_px, rng):
    """The reference: every image in one model (same noisy keypoints), bundle-adjusted from the truth."""
    reference, _, _ = split_scene(
        scene, [list(range(scene.num_cameras))], noise_px=noise_px, outlier_ratio=0.0, rng=rng
    )
    bundle_adjust(reference[0], MergeOptions().bundle_adjustment)
    return reference[0]


@pytest.mark.parametrize("outlier_ratio", [0.0, 0.3])
def test_merge_with_noise_stays_within_the_noise_level(outlier_ratio):
    scene = random_scene(400, 15, rng=8)
    clusters = [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14]]
    noise_px = 0.5
    models, _, _ = split_scene(
        scene, clusters, noise_px=noise_px, pose_noise=0.002, outlier_ratio=outlier_ratio, rng=8
    )
    result = merge_reconstructions(models, rng=0)
    assert len(result.reconstructions) == 1
    rec = result.reconstructions[0]
    assert rec.num_registered == 15
    rot_err, centre_err = _merged_pose_errors(rec, scene)
    # The noise level: the poses a bundle adjustment of the whole scene gets from the same keypoints.
    ref_rot, ref_centre = _merged_pose_errors(_whole_scene_bundle_adjustment(scene, noise_px, 8), scene)
    if outlier_ratio == 0:  # same data: the merge lands on the whole-scene optimum
        assert np.abs(rot_err - ref_rot).max() < 1e-3
        assert np.abs(centre_err - ref_centre).max() < 1e-4
    else:  # 30 % of each cluster's points are lost as outliers: errors grow like 1/sqrt(points kept)
        assert np.median(rot_err) < 2.5 * np.median(ref_rot)
        assert centre_err.max() < 2.5 * ref_centre.max()
    assert rec.mean_reprojection_error_px() < 1.5 * noise_px


def test_unmergeable_models_stay_separate_with_the_reason():
    scene = random_scene(300, 12, rng=9)
    models, _, _ = split_scene(
        scene, [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7], [9, 10, 11]], outlier_ratio=0.0, rng=9
    )
    result = merge_reconstructions(models, rng=0)
    assert len(result.reconstructions) == 2
    assert result.groups == [[0, 1], [2]]
    separate = result.report["groups"][1]
    assert not separate["merged"] and "shares no 3D point" in separate["reason"]
    # A model whose points are garbage fails its alignment and is reported with RANSAC's reason.
    gen = np.random.default_rng(1)
    for point in models[1].points3D.values():
        point.xyz = gen.uniform(-3, 3, size=3)
    result = merge_reconstructions(models, MergeOptions(alignment=AlignmentOptions()), rng=0)
    assert len(result.reconstructions) == 3
    reasons = {tuple(g["models"]): g.get("reason", "") for g in result.report["groups"]}
    assert "onto model 0" in reasons[(1,)]


def test_an_image_posed_a_few_pixels_off_by_its_owner_is_kept_for_the_final_bundle_adjustment():
    """Where the alignment tree leaves an overlap out (a loop closing), the owner's pose of an image there
    reprojects the joined points a few pixels off (the drift around the loop). Filtered at 4 px before the
    final BA, such images lost every point and were dropped (6 of the 1000-image street's); kept, the final
    BA puts them right. The models are joined with their exact similarities (no alignment: the perturbed
    image would fail it, as it did not take part in the street's)."""
    scene = random_scene(400, 15, rng=7)
    clusters = [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14]]
    models, frames, _ = split_scene(scene, clusters, outlier_ratio=0.0, rng=7)
    view = models[0].views[6]  # owned by model 0 (its core): turned 0.5 deg about its centre, ~7 px
    rotation = rotvec_to_matrix([0.0, 0.0087, 0.0]) @ view.cam_from_world.rotation
    view.cam_from_world = Rigid3d(rotation, -rotation @ view.cam_from_world.center)
    root_from_model = [frames[0] @ f.inverse() for f in frames]
    cores = [{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14, 15}]
    strict = MergeOptions(max_reproj_error_before_ba_px=4.0, reregister=False)  # the old behaviour
    _, _, dropped = _merge_group(models, root_from_model, cores, strict)
    assert [d["image_id"] for d in dropped] == [6] and "0 points" in dropped[0]["reason"]
    rec, report, dropped = _merge_group(models, root_from_model, cores, MergeOptions())
    assert dropped == [] and rec.registered_image_ids == list(range(1, 16))
    rot_err, _ = _merged_pose_errors(rec, scene)
    assert rot_err.max() < 1e-3 and rec.mean_reprojection_error_px() < 1e-3
    with pytest.raises(InputError, match="max_reproj_error_before_ba_px"):
        MergeOptions(max_reproj_error_before_ba_px=2.0)


def _misregister(model: Reconstruction, image_id: int) -> None:
    """Turn the image's pose by 10 deg and take its observations out of the model."""
    view = model.views[image_id]
    turn = rotvec_to_matrix(np.deg2rad(10.0) * np.array([0.0, 1.0, 0.0]))
    view.cam_from_world = Rigid3d(turn @ view.cam_from_world.rotation, view.cam_from_world.translation)
    for kp in np.flatnonzero(view.point3D_ids >= 0).tolist():
        model.delete_observation(int(view.point3D_ids[kp]), image_id, kp)


def _scene_with_image_5_misregistered():
    """Three overlapping cluster models of a 15-image scene; image 5 (core of model 1) is misregistered
    there (turned by 10 deg, no points of its own in model 1), while model 0 poses it right. Returns the
    scene, the models and the core image ids of each model."""
    scene = random_scene(400, 15, rng=7)
    clusters = [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8, 9, 10], [8, 9, 10, 11, 12, 13, 14]]
    models, _, _ = split_scene(scene, clusters, outlier_ratio=0.0, rng=7)
    _misregister(models[1], 5)
    return scene, models, [{1, 2, 3, 4}, {5, 6, 7, 8, 9, 10}, {11, 12, 13, 14, 15}]


def test_image_posed_wrongly_by_its_owner_is_registered_again_by_pnp():
    scene, models, cores = _scene_with_image_5_misregistered()
    # filtered at 4 px before the final BA, the image loses its points at the join (at the default 16 px,
    # kept for the loop-closing final BA, a few of its observations survive and the BA alone corrects it)
    strict = MergeOptions(max_reproj_error_before_ba_px=4.0)

    without = merge_reconstructions(models, replace(strict, reregister=False), core_image_ids=cores, rng=0)
    assert [d["image_id"] for d in without.dropped_images] == [5]
    assert "after joining tracks" in without.dropped_images[0]["reason"]
    assert 5 not in without.reconstructions[0].views

    result = merge_reconstructions(models, strict, core_image_ids=cores, rng=0)
    assert len(result.reconstructions) == 1 and not result.dropped_images
    rec = result.reconstructions[0]
    assert rec.registered_image_ids == list(range(1, 16))
    rot_err, centre_err = _merged_pose_errors(rec, scene)
    assert rot_err.max() < 1e-6 and centre_err.max() < 1e-6
    again = result.report["groups"][0]["reregistered_images"]
    assert [r["image_id"] for r in again] == [5]
    # Every point image 5 sees in the scene (and in a merged track) is observed again.
    assert again[0]["num_inliers"] == again[0]["num_correspondences"] == rec.views[5].num_points3D > 50


def test_image_pnp_cannot_register_stays_dropped_with_both_reasons():
    _, models, cores = _scene_with_image_5_misregistered()
    options = MergeOptions(
        min_image_points=10,
        max_reproj_error_before_ba_px=4.0,  # the image loses its points at the join (see above)
        registration=replace(MergeOptions().registration, min_num_inliers=10_000),
    )
    result = merge_reconstructions(models, options, core_image_ids=cores, rng=0)
    assert [d["image_id"] for d in result.dropped_images] == [5]
    reason = result.dropped_images[0]["reason"]
    assert "after joining tracks" in reason and "correspondences < 10000" in reason


def _verified_pairs(scene, kp_of_point, min_common: int = 15) -> dict[tuple[int, int], TwoViewGeometry]:
    """Exact verified pairs of the scene's images: the keypoints of the points both images see."""
    pairs = {}
    num_images = scene.visible.shape[0]
    for i in range(num_images):
        for j in range(i + 1, num_images):
            common = np.flatnonzero(scene.visible[i] & scene.visible[j])
            if len(common) >= min_common:
                matches = np.stack([kp_of_point[i + 1][common], kp_of_point[j + 1][common]], axis=1)
                pairs[(i + 1, j + 1)] = TwoViewGeometry(i + 1, j + 1, "calibrated", inlier_matches=matches)
    return pairs


def test_images_only_their_owner_posed_wrongly_come_back_through_the_verified_pairs():
    """Images 5 and 6 are in one cluster model only, which misregistered both (turned 10 deg, no points):
    the input models' tracks give them no 2D-3D correspondence at all, so the merge dropped them. Their
    verified pairs with the merged images do (the way an incremental mapper registers an image), and new
    points are triangulated from their matches: both come back at their exact poses, on exact points."""
    scene = random_scene(400, 15, rng=7)
    clusters = [[0, 1, 2, 3, 6], [3, 4, 5, 6, 7, 8, 9, 10], [8, 9, 10, 11, 12, 13, 14]]
    models, _, kp_of_point = split_scene(scene, clusters, outlier_ratio=0.0, rng=7)
    _misregister(models[1], 5)
    _misregister(models[1], 6)
    # 40 scene points image 5 sees are in no model (as if only its track had held them)
    lost = np.flatnonzero(scene.visible[4])[:40]
    for model in models:
        for view in model.views.values():
            pids = view.point3D_ids[kp_of_point[view.image_id][lost]]
            for pid in set(pids[pids >= 0].tolist()) & set(model.points3D):
                model.delete_point3D(pid)
    cores = [{1, 2, 3, 4, 7}, {5, 6, 8, 9, 10, 11}, {12, 13, 14, 15}]
    options = MergeOptions(max_reproj_error_before_ba_px=4.0)

    without = merge_reconstructions(models, options, core_image_ids=cores, rng=0)
    assert sorted(d["image_id"] for d in without.dropped_images) == [5, 6]
    assert all("0 2D-3D correspondences" in d["reason"] for d in without.dropped_images)

    pairs = _verified_pairs(scene, kp_of_point)
    result = merge_reconstructions(models, options, core_image_ids=cores, two_view_geometries=pairs, rng=0)
    assert len(result.reconstructions) == 1 and not result.dropped_images
    rec = result.reconstructions[0]
    assert rec.registered_image_ids == list(range(1, 16))
    rot_err, centre_err = _merged_pose_errors(rec, scene)
    assert rot_err.max() < 1e-6 and centre_err.max() < 1e-6
    assert rec.mean_reprojection_error_px() < 1e-6
    again = {r["image_id"]: r for r in result.report["groups"][0]["reregistered_images"]}
    assert sorted(again) == [5, 6]
    assert again[5]["num_retriangulated_points"] >= 40  # the lost points at least, from its neighbours
    # every scene point image 5 sees with another image is observed by it again (joined or new)
    seen_with_others = np.flatnonzero(scene.visible[4] & (scene.visible.sum(axis=0) >= 2))
    assert rec.views[5].num_points3D == len(seen_with_others)


def test_released_input_models_give_the_same_merged_model():
    """``release_models`` empties the input list once the groups are joined (their memory goes before the
    final bundle adjustment); the merged model is the same, and a model that stays alone is returned."""
    scene = random_scene(400, 15, rng=7)
    clusters = [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14]]
    models, _, _ = split_scene(scene, clusters, noise_px=0.5, rng=7)
    (other,), _, _ = split_scene(random_scene(100, 4, rng=1), [[0, 1, 2, 3]], rng=1)
    alone = [Reconstruction(cameras=other.cameras)]  # the same model with image ids 101-104: no overlap
    for view in other.views.values():
        alone[0].add_view(View(view.image_id + 100, view.name, 1, view.cam_from_world, view.keypoints_px))
    for point in other.points3D.values():
        alone[0].add_point3D(point.xyz, [(i + 100, kp) for i, kp in point.track])
    cores = [{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14, 15}, set()]
    kept = merge_reconstructions([*models, *alone], core_image_ids=cores, rng=0)
    inputs = [*models, *alone]
    released = merge_reconstructions(inputs, core_image_ids=cores, release_models=True, rng=0)
    assert inputs == []
    assert len(released.reconstructions) == len(kept.reconstructions) == 2
    assert released.reconstructions[1] is alone[0]
    a, b = kept.reconstructions[0], released.reconstructions[0]
    assert a.registered_image_ids == b.registered_image_ids == list(range(1, 16))
    for i in a.registered_image_ids:
        np.testing.assert_array_equal(a.views[i].cam_from_world.matrix(), b.views[i].cam_from_world.matrix())
    assert len(a.points3D) == len(b.points3D)
    assert released.report["num_input_models"] == 4


def test_final_bundle_adjustment_on_a_point_subset_stays_at_the_noise_level():
    scene = random_scene(400, 15, rng=8)
    clusters = [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14]]
    noise_px = 0.5
    models, _, _ = split_scene(scene, clusters, noise_px=noise_px, pose_noise=0.002, outlier_ratio=0.0, rng=8)
    whole = merge_reconstructions(models, rng=0).reconstructions[0]
    num_observations = sum(len(p.track) for p in whole.points3D.values())
    options = MergeOptions(final_ba_max_observations=num_observations // 3)
    result = merge_reconstructions(models, options, rng=0)
    rec = result.reconstructions[0]
    final_ba = result.report["groups"][0]["final_ba"]
    assert final_ba["num_points_adjusted"] < len(rec.points3D) // 2
    assert final_ba["num_points_adjusted"] + final_ba["num_points_refined"] == len(rec.points3D)
    rot_err, centre_err = _merged_pose_errors(rec, scene)
    ref_rot, ref_centre = _merged_pose_errors(whole, scene)
    # a third of the observations: the poses' errors grow by about sqrt(3) at most
    assert np.median(rot_err) < 1.8 * np.median(ref_rot)
    assert np.median(centre_err) < 1.8 * np.median(ref_centre)
    # every point, adjusted or refined with the cameras held, fits its observations to the noise level
    assert rec.mean_reprojection_error_px() < 1.5 * noise_px
    errors = rec.reprojection_errors_px()["errors_px"]
    assert np.percentile(errors, 99) < 4 * noise_px
    with pytest.raises(InputError, match="final_ba_max_observations"):
        MergeOptions(final_ba_max_observations=-1)


def test_subset_pass_before_the_final_bundle_adjustment_reaches_the_same_optimum():
    scene = random_scene(400, 15, rng=8)
    clusters = [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10], [9, 10, 11, 12, 13, 14]]
    models, _, _ = split_scene(scene, clusters, noise_px=0.5, pose_noise=0.002, outlier_ratio=0.0, rng=8)
    # the default budget (100k observations at least) leaves a model this small without the pass
    plain = merge_reconstructions(models, rng=0)
    assert "pre_ba" not in plain.report["groups"][0]["final_ba"]
    options = MergeOptions(pre_ba_observations_per_image=40, pre_ba_min_observations=1)
    result = merge_reconstructions(models, options, rng=0)
    rec = result.reconstructions[0]
    pre = result.report["groups"][0]["final_ba"]["pre_ba"]
    assert pre["success"] and pre["iterations"] > 0
    assert 0 < pre["num_points_adjusted"] < len(rec.points3D) // 2
    assert pre["num_points_adjusted"] + pre["num_points_refined"] == len(rec.points3D)
    # the final BA over every point ends where the merge without the pass ends
    rot_err, centre_err = _merged_pose_errors(rec, scene)
    ref_rot, ref_centre = _merged_pose_errors(plain.reconstructions[0], scene)
    assert np.abs(rot_err - ref_rot).max() < 1e-3
    assert np.abs(centre_err - ref_centre).max() < 1e-4
    with pytest.raises(InputError, match="pre_ba_observations_per_image"):
        MergeOptions(pre_ba_observations_per_image=-1)
