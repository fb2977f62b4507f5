"""Translation averaging: baseline directions from rays, LUD centres, and the stage on synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest
from mapper_fixtures import scene_rays

from geomvision.errors import InputError
from geomvision.geometry.rigid import umeyama_alignment
from geomvision.geometry.translation_averaging import baseline_directions, lud_centers, lud_cost
from geomvision.sfm.translation_averaging import (
    TranslationAveragingOptions,
    average_translations,
    centers_from_directions,
    track_pairs,
)
from geomvision.synthetic import random_scene


def _aligned_errors(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distances after the best similarity from ``estimate`` to ``truth``, in units of ``truth``."""
    return np.linalg.norm(umeyama_alignment(estimate, truth).apply(estimate) - truth, axis=1)


def _random_graph(num_cameras: int, density: float, rng: np.random.Generator):
    centers = rng.normal(size=(num_cameras, 3)) * 5
    edges = np.array(
        [(a, b) for a in range(num_cameras) for b in range(a + 1, num_cameras) if rng.random() < density]
    )
    directions = centers[edges[:, 1]] - centers[edges[:, 0]]
    return centers, edges, directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _random_unit(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_lud_recovers_exact_centres_from_exact_directions():
    truth, edges, directions = _random_graph(30, 0.3, np.random.default_rng(1))
    centers, scales, iterations = lud_centers(edges, directions, 30, gauge_camera=4)
    assert np.allclose(centers[4], 0.0)
    assert _aligned_errors(centers, truth).max() < 1e-6  # scene spread ~5
    assert scales.min() >= 1.0 - 1e-12
    assert lud_cost(centers, edges, directions)[0] < 1e-5
    assert iterations < 100


def test_lud_then_filtering_recovers_exact_centres_despite_20_percent_wrong_directions():
    rng = np.random.default_rng(0)
    truth, edges, directions = _random_graph(40, 0.4, rng)
    wrong = rng.random(len(edges)) < 0.2
    directions[wrong] = _random_unit(int(wrong.sum()), rng)
    # One LUD solve alone is pulled by the wrong directions ...
    once, _, _ = lud_centers(edges, directions, 40, max_iterations=500)
    assert _aligned_errors(once, truth).max() > 0.1
    # ... the stage's second solve without the directions the first leaves far off is exact.
    options = TranslationAveragingOptions(max_iterations=500, function_tolerance=1e-12)
    centers, num_edges, iterations = centers_from_directions(edges, directions, 40, options)
    assert _aligned_errors(centers, truth).max() < 1e-6
    assert num_edges <= int((~wrong).sum()) and len(iterations) == 2


def test_lud_with_noisy_directions_stays_within_the_noise():
    rng = np.random.default_rng(3)
    truth, edges, directions = _random_graph(30, 0.5, rng)
    noisy = directions + rng.normal(scale=np.deg2rad(0.5), size=directions.shape)  # ~0.5 deg per axis
    centers, _, _ = lud_centers(edges, noisy / np.linalg.norm(noisy, axis=1, keepdims=True), 30)
    spread = np.linalg.norm(truth - truth.mean(axis=0), axis=1).mean()
    errors = _aligned_errors(centers, truth)
    assert 1e-4 * spread < errors.max() < 0.05 * spread  # noise moves the centres, by about its angle


def test_baseline_directions_exact_signed_and_robust_to_wrong_correspondences():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(2, 3))
    points = rng.normal(size=(60, 3)) * 3 + np.array([0.0, 0.0, 10.0])
    first = points - centers[0]
    second = points - centers[1]
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    truth = (centers[1] - centers[0]) / np.linalg.norm(centers[1] - centers[0])
    # Two pairs: the images in both orders (the sign must follow).
    rays_a = np.vstack([first, second])
    rays_b = np.vstack([second, first])
    pair = np.repeat([0, 1], 60)
    directions, in_front = baseline_directions(rays_a, rays_b, pair, 2, iterations=0)
    assert np.allclose(directions[0], truth, atol=1e-10) and np.allclose(directions[1], -truth, atol=1e-10)
    assert np.allclose(in_front, 1.0)
    # 20 % of the correspondences wrong: the sampled start and the inlier fit keep the direction exact.
    wrong = rng.random(60) < 0.2
    second_bad = second.copy()
    second_bad[wrong] = _random_unit(int(wrong.sum()), rng)
    pair = np.zeros(60, dtype=int)
    plain, _ = baseline_directions(first, second_bad, pair, 1, num_hypotheses=0, iterations=0)
    robust, _ = baseline_directions(first, second_bad, pair, 1, rng=0)
    assert np.degrees(np.arccos(np.clip(plain[0] @ truth, -1, 1))) > 1.0
    assert np.allclose(robust[0], truth, atol=1e-8)


def test_track_pairs_lists_every_pair_of_a_track_once_in_image_order():
    obs_image = np.array([5, 2, 9, 2, 5])
    obs_track = np.array([0, 0, 0, 1, 1])
    first, second = track_pairs(obs_image, obs_track)
    got = sorted(
        zip(obs_image[first].tolist(), obs_image[second].tolist(), obs_track[first].tolist(), strict=True)
    )
    assert got == [(2, 5, 0), (2, 5, 1), (2, 9, 0), (5, 9, 0)]


@pytest.mark.parametrize(("noise_px", "tolerance"), [(0.0, 1e-6), (0.5, 0.02)])
def test_stage_recovers_the_centres_of_a_synthetic_scene(noise_px, tolerance):
    scene = random_scene(300, 12, layout="sphere", rng=7)
    rotations, obs_image, obs_track, rays = scene_rays(scene, noise_px)
    converge = TranslationAveragingOptions(function_tolerance=1e-12)
    result = average_translations(rotations, obs_image, obs_track, rays, converge)
    assert result.success and sorted(result.centers) == list(range(1, 13))
    est = np.array([result.centers[i] for i in range(1, 13)])
    truth = np.array([pose.center for pose in scene.cams_from_world])
    # Cameras ~4.6 from the unit cloud: 0.02 is about a quarter of a degree seen from the cloud.
    assert _aligned_errors(est, truth).max() < tolerance
    assert result.report["num_pairs"] == 66
    # each direction from at most max_correspondences_per_pair of the pair's ~250
    cap = converge.max_correspondences_per_pair
    assert result.report["num_correspondences_used"] == 66 * cap < result.report["num_correspondences"]


def test_bad_input_raises_and_too_little_fails_as_a_value():
    with pytest.raises(InputError, match="itself"):
        lud_centers(np.array([[0, 0]]), np.array([[1.0, 0, 0]]), 2)
    with pytest.raises(InputError, match="out of range"):
        lud_centers(np.array([[0, 3]]), np.array([[1.0, 0, 0]]), 2)
    with pytest.raises(InputError, match="min_shared_tracks"):
        TranslationAveragingOptions(min_shared_tracks=1)
    rotations = {1: np.eye(3), 2: np.eye(3)}
    result = average_translations(rotations, np.array([1, 2]), np.array([0, 0]), np.ones((2, 3)))
    assert not result.success and "fewer than two" in result.reason


def test_pair_grouping_matches_unique_and_lexsort():
    """The counting group-by and the one-sort order equal numpy's unique and lexsort exactly."""
    from geomvision.sfm.translation_averaging import _argsort_within_groups, _group_keys

    rng = np.random.default_rng(7)
    key = rng.integers(0, 400, 5000) * 37 % 900
    for bound in (900, 10**9):  # counted, and sorted (a bound too large to count)
        got = _group_keys(key, bound)
        want = np.unique(key, return_inverse=True, return_counts=True)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    group, value = got[1], rng.random(len(key))
    np.testing.assert_array_equal(_argsort_within_groups(group, value), np.lexsort((value, group)))
