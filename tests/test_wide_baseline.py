"""The wide-baseline pass: adds a verified pair that ordinary SIFT misses, and does nothing on an easy set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.features.extract import ExtractionOptions, detect_and_describe
from geomvision.features.match import MatchingOptions, match_descriptors
from geomvision.io.images import read_image
from geomvision.scene.types import Features, TwoViewGeometry
from geomvision.sfm.two_view import verify_pair
from geomvision.sfm.wide_baseline import (
    GlobalFallbackOptions,
    WideBaselineOptions,
    bridge_and_merge_models,
    densify_wide_baseline_pairs,
    needs_global_fallback,
    weak_images,
)
from geomvision.synthetic import random_scene
from tests.mapper_fixtures import pose_errors
from tests.test_merge import split_scene

SAMPLE = Path(__file__).resolve().parent.parent / "datasets" / "fountain_small" / "images" / "0000.jpg"


def _tilted_pair(tilt: float, angle_deg: float, width: int = 360):
    """A photo and its affine warp by ``diag(1/tilt, 1) R(angle)`` about the centre, and that (2, 3) map."""
    image = read_image(SAMPLE)
    image = cv2.resize(
        image, (width, round(width * image.shape[0] / image.shape[1])), interpolation=cv2.INTER_AREA
    )
    h, w = image.shape[:2]
    a = np.deg2rad(angle_deg)
    A = np.diag([1.0 / tilt, 1.0]) @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([w / 2, h / 2])
    warp = np.hstack([A, (centre - A @ centre)[:, None]])
    return image, cv2.warpAffine(image, warp, (w, h)), warp


def test_weak_images_by_degree_and_component():
    # 1-2-3 a chain, 4-5 a separate component, 6 alone
    weak = weak_images([1, 2, 3, 4, 5, 6], [(1, 2), (2, 3), (4, 5)], min_verified_neighbors=2)
    assert weak == [1, 3, 4, 5, 6]
    assert weak_images([1, 2, 3], [(1, 2), (2, 3), (1, 3)], 2) == []


def test_adds_pair_that_ordinary_matching_misses(tmp_path):
    image_1, image_2, warp = _tilted_pair(tilt=3.0, angle_deg=40.0)
    paths = {1: tmp_path / "a.png", 2: tmp_path / "b.png"}
    for k, image in ((1, image_1), (2, image_2)):
        cv2.imwrite(str(paths[k]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    extraction = ExtractionOptions()
    features = {1: detect_and_describe(image_1, extraction), 2: detect_and_describe(image_2, extraction)}
    matches, _ = match_descriptors(features[1].descriptors, features[2].descriptors, MatchingOptions())
    ordinary = verify_pair(
        features[1].keypoints_px, features[2].keypoints_px, matches, image_ids=(1, 2), rng=0
    )
    assert not ordinary.success  # the premise: a tilt of 3 defeats similarity-invariant SIFT

    options = WideBaselineOptions(enabled=True, max_tilt_index=3, max_num_features=4000)
    result = densify_wide_baseline_pairs(
        paths, features, {(1, 2): len(matches)}, {(1, 2): ordinary}, {1: None, 2: None}, options, rng=0
    )
    assert result.report["weak_images"] == [1, 2]
    assert result.report["pairs_retried"] == 1 and result.report["pairs_added"] == 1
    geometry = result.two_view_geometries[(1, 2)]
    assert geometry.success and geometry.num_inliers >= 50
    # existing keypoints keep their indices; the inliers index the grown features and obey the true warp
    for k in (1, 2):
        grown = result.features[k]
        np.testing.assert_array_equal(grown.keypoints_px[: len(features[k])], features[k].keypoints_px)
        assert len(grown.descriptors) == len(grown.keypoints_px) == len(grown.colors)
    x1 = result.features[1].keypoints_px[geometry.inlier_matches[:, 0]]
    x2 = result.features[2].keypoints_px[geometry.inlier_matches[:, 1]]
    transfer_px = np.linalg.norm(x1 @ warp[:, :2].T + warp[:, 2] - x2, axis=1)
    assert np.median(transfer_px) < 2.0
    assert np.mean(transfer_px < 4.0) > 0.9


def test_does_nothing_on_a_well_connected_set(tmp_path):
    rng = np.random.default_rng(0)
    ids = (1, 2, 3, 4)
    features = {
        i: Features(rng.uniform(0, 100, (40, 2)), rng.random((40, 128)).astype(np.float32)) for i in ids
    }
    pairs = [(i, j) for i in ids for j in ids if i < j]  # every image has 3 neighbours, 40 inliers each
    verified = {p: TwoViewGeometry(*p, "calibrated", np.stack([np.arange(40)] * 2, axis=1)) for p in pairs}
    missing = {i: tmp_path / f"missing{i}.png" for i in features}  # never read: nothing is retried
    result = densify_wide_baseline_pairs(
        missing,
        features,
        dict.fromkeys(pairs, 40),
        verified,
        dict.fromkeys(features),
        WideBaselineOptions(enabled=True),
    )
    assert result.report["weak_images"] == [] and result.report["pairs_retried"] == 0
    assert result.report["pairs_added"] == 0 and result.report["keypoints_added"] == 0
    assert result.two_view_geometries == verified
    assert all(result.features[i] is features[i] for i in features)
    # one thin pair less (fewer inliers than min_pair_inliers): image 4 becomes weak and is retried
    thin = dict(verified)
    thin[(3, 4)] = TwoViewGeometry(3, 4, "calibrated", np.stack([np.arange(20)] * 2, axis=1))
    with pytest.raises(InputError, match=r"missing[34]\.png"):
        densify_wide_baseline_pairs(
            missing,
            features,
            dict.fromkeys(pairs, 40),
            thin,
            dict.fromkeys(features),
            WideBaselineOptions(enabled=True),
        )


def test_options_check_values():
    with pytest.raises(InputError, match="max_tilt_index"):
        WideBaselineOptions(max_tilt_index=9)
    with pytest.raises(InputError, match="candidates_per_image"):
        WideBaselineOptions(candidates_per_image=0)


def _true_pairs(scene, kp_of_point) -> dict[tuple[int, int], TwoViewGeometry]:
    """Verified pairs of every two images with their true matches (both see the point)."""
    C = scene.visible.shape[0]
    pairs = {}
    for a in range(C):
        for b in range(a + 1, C):
            both = np.flatnonzero(scene.visible[a] & scene.visible[b])
            inliers = np.stack([kp_of_point[a + 1][both], kp_of_point[b + 1][both]], axis=1)
            pairs[(a + 1, b + 1)] = TwoViewGeometry(a + 1, b + 1, "calibrated", inliers)
    return pairs


def test_bridge_joins_disjoint_models_of_one_run():
    scene = random_scene(300, 10, rng=0)
    # two models of one mapper run: disjoint images, each in its own similarity frame
    models, _, kp_of_point = split_scene(scene, [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]], outlier_ratio=0.0)
    verified = _true_pairs(scene, kp_of_point)
    joined, report = bridge_and_merge_models(models, verified, rng=0)
    assert report["num_models_before"] == 2 and report["num_models_after"] == 1
    assert len(joined) == 1 and joined[0].num_registered == 10
    rotation_errors, centre_errors, _ = pose_errors(joined[0], scene)
    assert rotation_errors.max() < 1e-3 and centre_errors.max() < 1e-4
    # without any verified pair between the models they stay apart, with the reason
    inside = {p: g for p, g in verified.items() if (p[0] <= 6) == (p[1] <= 6)}
    apart, report = bridge_and_merge_models(models, inside, rng=0)
    assert [m.num_registered for m in apart] == [6, 4]
    assert "could be posed" in report["attempts"][0]["reason"]


def test_global_fallback_runs_only_when_the_incremental_mapper_left_images_out():
    options = GlobalFallbackOptions()  # min_registered_share 0.9
    models = [SimpleNamespace(num_registered=n) for n in (10, 2)]
    assert needs_global_fallback(models, 12, options, mapper="incremental")  # 10 < 0.9 * 12
    assert needs_global_fallback([], 12, options, mapper="incremental")  # the mapper found nothing
    assert not needs_global_fallback([SimpleNamespace(num_registered=11)], 12, options, mapper="incremental")
    assert not needs_global_fallback(models, 12, options, mapper="global")
    assert not needs_global_fallback(models, 12, GlobalFallbackOptions(enabled=False), mapper="incremental")
    with pytest.raises(InputError, match="min_registered_share"):
        GlobalFallbackOptions(min_registered_share=0.0)
