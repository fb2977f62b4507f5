"""sfm.trust: models made wrong on purpose are not trusted; correct ones are; exact signal values."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from mapper_fixtures import mapper_inputs, pose_errors

from geomvision.errors import InputError
from geomvision.geometry.epipolar import essential_from_pose, fundamental_from_essential
from geomvision.geometry.rigid import Rigid3d
from geomvision.scene import Camera, Reconstruction
from geomvision.scene.reconstruction import View
from geomvision.sfm.calibration import calibrate_view_graph
from geomvision.sfm.incremental import IncrementalMapperOptions, incremental_mapping
from geomvision.sfm.trust import (
    TrustOptions,
    assess_model_trust,
    assess_models_trust,
    order_by_trust,
    triangulation_angles_deg,
)
from geomvision.synthetic import random_scene


def _narrow_field_model(focal_scale: float, fix_focal: bool):
    """A ring of 8 narrow-field views (true focal 2000 px on 640x480) mapped from a scaled focal prior."""
    scene = random_scene(160, 8, focal_px=2000.0, width=640, height=480, rng=3)
    cameras, images, pairs, _ = mapper_inputs(scene, focal_scale=focal_scale, model="SIMPLE_RADIAL", rng=1)
    for g in pairs.values():  # the verified F of each pair, as verification would report it
        g.F = fundamental_from_essential(essential_from_pose(g.cam2_from_cam1), scene.K, scene.K)
    calibration = calibrate_view_graph(cameras, {i: 1 for i in images}, pairs)
    options = IncrementalMapperOptions(fixed_camera_ids=(1,) if fix_focal else ())
    rec = incremental_mapping(cameras, images, pairs, options, rng=0).reconstructions[0]
    return scene, rec, calibration


def test_focal_prior_4x_off_with_calibration_ignored_gives_an_untrusted_model():
    scene, rec, calibration = _narrow_field_model(0.25, fix_focal=True)
    assert calibration.estimate_px_by_camera[1] == pytest.approx(2000.0, rel=0.01)
    rot_err, _, _ = pose_errors(rec, scene)
    assert np.median(rot_err) > 5.0  # the model is wrong...
    verdict = assess_model_trust(rec, calibrated_focal_px={1: calibration.estimate_px_by_camera[1]})
    assert not verdict.trusted  # ...and says so
    assert any("view-graph estimate" in r for r in verdict.reasons)
    assert verdict.signals["focal_deviation_from_calibration"]["1"] == pytest.approx(-0.75, abs=0.01)
    # without any estimate (the user gave the focal): freeing it in a short BA shows the disagreement
    given = assess_model_trust(rec, fixed_camera_ids=(1,), rng=0)
    assert not given.trusted and given.signals["focal_drift_when_freed"]["1"] > 0.1
    assert any("disagree" in r for r in given.reasons)
    _, verdicts = assess_models_trust([rec], fixed_camera_ids=(1,), rng=0)  # what the pipeline calls
    assert not verdicts[0].trusted and "focal_drift_when_freed" in verdicts[0].signals


def test_same_set_with_the_focal_refined_is_trusted():
    scene, rec, calibration = _narrow_field_model(0.25, fix_focal=False)
    rot_err, _, _ = pose_errors(rec, scene)
    assert rec.num_registered == 8 and np.median(rot_err) < 0.5
    verdict = assess_model_trust(rec, calibrated_focal_px={1: calibration.estimate_px_by_camera[1]})
    assert verdict.trusted, verdict.reasons
    assert verdict.signals["mean_track_length"] > 5
    # the right focal, even held fixed, stays where it is when freed
    held = assess_model_trust(rec, fixed_camera_ids=(1,), rng=0)
    assert held.trusted and abs(held.signals["focal_drift_when_freed"]["1"]) < 0.01


def _two_view_model(angle_deg: float, num_points: int = 50) -> Reconstruction:
    """Two cameras whose rays meet at ``angle_deg`` at every point (points on the bisector plane's circle)."""
    rec = Reconstruction()
    rec.add_camera(Camera(1, "SIMPLE_PINHOLE", 640, 480, np.array([500.0, 319.5, 239.5])))
    half = np.deg2rad(angle_deg) / 2
    centres = [np.array([-np.tan(half), 0.0, 0.0]), np.array([np.tan(half), 0.0, 0.0])]  # points at z = 1
    for k, c in enumerate(centres):
        rec.add_view(View(k + 1, f"{k}.png", 1, Rigid3d(np.eye(3), -c), np.zeros((num_points, 2))))
    for p in range(num_points):
        rec.add_point3D(np.array([0.0, 0.0, 1.0]), [(1, p), (2, p)])
    return rec


def test_triangulation_angles_and_short_tracks_are_measured_exactly():
    rec = _two_view_model(1.0)
    np.testing.assert_allclose(triangulation_angles_deg(rec), 1.0, atol=1e-9)
    verdict = assess_model_trust(rec, TrustOptions(min_registered_images=2, min_median_points_per_image=10))
    assert not verdict.trusted
    assert verdict.signals["mean_track_length"] == 2.0
    assert any("short tracks" in r for r in verdict.reasons)
    assert any("low triangulation angles" in r for r in verdict.reasons)
    wide = assess_model_trust(
        _two_view_model(10.0),
        TrustOptions(min_registered_images=2, min_median_points_per_image=10, min_mean_track_length=2.0),
        calibrated_focal_px={1: 500.0},
    )
    assert wide.trusted and wide.signals["median_triangulation_angle_deg"] == pytest.approx(10.0)
    # The same two-view tracks with a focal that nobody confirmed: weakly constrained, not trusted.
    unconfirmed = assess_model_trust(
        _two_view_model(10.0),
        TrustOptions(min_registered_images=2, min_median_points_per_image=10, min_mean_track_length=2.0),
    )
    assert not unconfirmed.trusted and unconfirmed.signals["cameras_with_unconfirmed_focal"] == [1]
    assert any("neither given nor confirmed" in r for r in unconfirmed.reasons)
    given = assess_model_trust(
        _two_view_model(10.0),
        TrustOptions(min_registered_images=2, min_median_points_per_image=10, min_mean_track_length=2.0),
        fixed_camera_ids=(1,),
        rng=0,
    )
    assert given.signals["cameras_with_unconfirmed_focal"] == []
    assert not any("neither given nor confirmed" in r for r in given.reasons)


def test_order_puts_the_largest_trusted_model_first_and_options_are_checked():
    small, big = _two_view_model(10.0), _two_view_model(10.0)
    big.add_view(View(3, "3.png", 1, Rigid3d(np.eye(3), np.zeros(3)), np.zeros((1, 2))))
    verdicts = [assess_model_trust(r) for r in (big, small)]
    verdicts[1].trusted = True  # pretend only the smaller one passed
    ordered, ordered_verdicts = order_by_trust([big, small], verdicts)
    assert ordered[0] is small and ordered_verdicts[0].trusted
    with pytest.raises(InputError, match="max_focal_deviation"):
        TrustOptions(max_focal_deviation=0.0)


def test_verified_pairs_the_model_contradicts_are_counted_exactly():
    """False pairs (repeated textures linking different places) show as pairs the model's poses contradict.

    On the 1000-image street rendered by an old generator (plain photo crops), 8767 of 11 401 verified
    pairs linked images with no common surface; an 80-image model mapped from them (AUC@2 0.0001,
    0.38 px reprojection) contradicts 127 of its 423 checked pairs (25 % of their matches), the correct
    100-image street model 0 of 444.
    """
    scene = random_scene(200, 6, rng=5)
    cameras, images, pairs, _ = mapper_inputs(scene, rng=2)
    rec = incremental_mapping(cameras, images, pairs, rng=0).reconstructions[0]
    assert rec.num_registered == 6 and len(pairs) == 15
    verdict = assess_model_trust(rec, two_view_geometries=pairs)
    assert verdict.signals["contradicted_pairs"] == 0 and verdict.signals["checked_pairs"] == 15
    assert verdict.trusted, verdict.reasons

    gen = np.random.default_rng(0)

    def with_false_pairs(count: int):
        false = {}
        for k, (key, g) in enumerate(sorted(pairs.items())):
            if k < count:  # the same keypoints of image j, matched to the wrong keypoints of image i
                m = g.inlier_matches.copy()
                m[:, 1] = gen.permutation(m[:, 1])
                g = replace(g, inlier_matches=m)
            false[key] = g
        return false

    sizes = [len(g.inlier_matches) for _, g in sorted(pairs.items())]
    few = assess_model_trust(rec, two_view_geometries=with_false_pairs(1))
    assert few.signals["contradicted_pairs"] == 1 and few.signals["contradicted_matches"] == sizes[0]
    assert few.signals["contradicted_match_ratio"] == pytest.approx(sizes[0] / sum(sizes))
    assert few.signals["contradicted_match_ratio"] <= 0.1 and few.trusted
    many = assess_model_trust(rec, two_view_geometries=with_false_pairs(4))
    assert many.signals["contradicted_pairs"] == 4 and many.signals["checked_pairs"] == 15
    assert many.signals["checked_matches"] == sum(sizes)
    assert many.signals["contradicted_match_ratio"] == pytest.approx(sum(sizes[:4]) / sum(sizes))
    assert not many.trusted and any("contradicts 4 of 15 verified pairs" in r for r in many.reasons)
    # pairs with too few inlier matches, or with an unregistered image, are not checked
    strict = assess_model_trust(rec, TrustOptions(pair_min_inliers=10_000), two_view_geometries=pairs)
    assert strict.signals["checked_pairs"] == 0 and strict.trusted
    _, verdicts = assess_models_trust([rec], two_view_geometries=with_false_pairs(4))  # the pipeline's call
    assert not verdicts[0].trusted
    with pytest.raises(InputError, match="max_contradicted_match_ratio"):
        TrustOptions(max_contradicted_match_ratio=1.5)
