"""Guided matching under a known fundamental matrix: recovers the planted correspondences exactly."""

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.features.match import MatchingOptions, match_descriptors
from geomvision.geometry.epipolar import sampson_distance_sq
from geomvision.scene.types import Features, TwoViewGeometry
from geomvision.sfm.guided_matching import (
    GuidedMatchingOptions,
    densify_weak_pairs,
    guided_match_pair,
)


def _skew(v):
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _pair(rng, n=200):
    """Two views of n points with known F; each planted match has a look-alike in image 2 off its line."""
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    angle = np.deg2rad(20)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([-1.0, 0.1, 0.2])
    X = np.c_[rng.uniform(-1, 1, (n, 2)), rng.uniform(4, 6, n)]
    x1 = (X @ K.T)[:, :2] / X[:, 2:]
    Xc2 = X @ R.T + t
    x2 = (Xc2 @ K.T)[:, :2] / Xc2[:, 2:]
    F = np.linalg.inv(K).T @ _skew(t) @ R @ np.linalg.inv(K)
    base = rng.normal(size=(n, 128))
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def noisy(d):
        d = d + rng.normal(scale=0.02, size=d.shape)
        return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)

    # Look-alikes: same descriptor, 30-60 px away from the planted point, perpendicular to its epipolar line.
    lines = np.c_[x1, np.ones(n)] @ F.T
    normal = lines[:, :2] / np.linalg.norm(lines[:, :2], axis=1, keepdims=True)
    decoys = x2 + normal * rng.uniform(30, 60, (n, 1)) * rng.choice([-1, 1], (n, 1))
    f1 = Features(keypoints_px=x1, descriptors=noisy(base))
    order = rng.permutation(2 * n)  # shuffle image 2 so indices do not give the answer away
    kp2 = np.r_[x2, decoys][order]
    d2 = np.r_[noisy(base), noisy(base)][order]
    f2 = Features(keypoints_px=kp2, descriptors=d2)
    planted = {(k, int(np.flatnonzero(order == k)[0])) for k in range(n)}
    return f1, f2, F, planted


def test_guided_matching_recovers_the_planted_correspondences(rng):
    f1, f2, F, planted = _pair(rng)
    assert np.allclose(
        sampson_distance_sq(F, f1.keypoints_px, f2.keypoints_px[[j for _, j in sorted(planted)]]),
        0,
        atol=1e-12,
    )
    result = guided_match_pair(f1, f2, F, GuidedMatchingOptions())
    assert {tuple(m) for m in result.matches.tolist()} == planted
    # The ordinary ratio test loses most of them to the look-alikes.
    plain, _ = match_descriptors(f1.descriptors, f2.descriptors, MatchingOptions(method="bruteforce"))
    assert len({tuple(m) for m in plain.tolist()} & planted) < 0.2 * len(planted)


def test_guided_matching_in_weak_pairs_only(rng):
    f1, f2, F, planted = _pair(rng)
    seed = np.array(sorted(planted)[:10], dtype=np.int64)
    geometry = TwoViewGeometry(1, 2, "uncalibrated", inlier_matches=seed, F=F)
    out, report = densify_weak_pairs({1: f1, 2: f2}, {(1, 2): geometry}, {}, GuidedMatchingOptions())
    assert report["weak_images"] == [1, 2] and report["matches_added"] == len(planted) - 10
    assert {tuple(m) for m in out[(1, 2)].inlier_matches.tolist()} == planted
    # Both images strong (enough strong neighbours required: 1): nothing runs, the pair is untouched.
    strong = GuidedMatchingOptions(min_verified_neighbors=1, strong_pair_inliers=10)
    out, report = densify_weak_pairs({1: f1, 2: f2}, {(1, 2): geometry}, {}, strong)
    assert report["pairs_guided"] == 0 and out[(1, 2)] is geometry


def test_guided_matching_rejects_bad_input(rng):
    f1, f2, F, _ = _pair(rng, n=10)
    with pytest.raises(InputError, match="3x3"):
        guided_match_pair(f1, f2, np.eye(4))
    with pytest.raises(InputError, match="float"):
        guided_match_pair(Features(f1.keypoints_px, np.zeros((10, 32), np.uint8)), f2, F)
    with pytest.raises(ValueError, match="max_ratio"):
        GuidedMatchingOptions(max_ratio=1.5)
