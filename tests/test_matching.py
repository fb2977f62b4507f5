"""features.match: exactness against a brute-force reference, ratio/mutual semantics, GT epipolar
error on rendered images, caching and backends."""

from __future__ import annotations

import numpy as np
import pytest

import geomvision.features.match as match_mod
from geomvision.errors import InputError
from geomvision.features.extract import ExtractionOptions, detect_and_describe
from geomvision.features.match import IvfOptions, MatchingOptions, match_descriptors, match_pairs
from geomvision.geometry.epipolar import fundamental_from_essential, sampson_distance_sq
from geomvision.geometry.rigid import skew
from geomvision.runtime.runner import open_runner
from geomvision.synthetic import render_scene_images


def _reference(d1: np.ndarray, d2: np.ndarray, ratio: float, mutual: bool):
    """Plain float64 reference on unit descriptors: all distances, ratio test, cross check."""
    a = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    b = d2 / np.linalg.norm(d2, axis=1, keepdims=True)
    dist = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0))
    order = np.argsort(dist, axis=1)
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(len(a))
    keep = dist[rows, best] < ratio * dist[rows, second]
    if mutual:
        keep &= dist.argmin(axis=0)[best] == rows
    return {(int(i), int(best[i])) for i in np.flatnonzero(keep)}


@pytest.mark.parametrize("mutual", [True, False])
def test_bruteforce_equals_reference(rng, mutual):
    # Clustered descriptors so that many rows have a clear nearest neighbour.
    base = rng.random((150, 32)).astype(np.float32)
    d1 = base + 0.05 * rng.random((150, 32)).astype(np.float32)
    d2 = np.concatenate([base[rng.permutation(150)[:120]], rng.random((60, 32)).astype(np.float32)])
    d2[:120] += 0.05 * rng.random((120, 32)).astype(np.float32)
    idx, dist = match_descriptors(
        d1, d2, MatchingOptions(method="bruteforce", ratio_threshold=0.8, mutual=mutual)
    )
    expected = _reference(d1, d2, 0.8, mutual)
    assert len(expected) > 50
    assert set(map(tuple, idx.tolist())) == expected
    a = d1[idx[:, 0]] / np.linalg.norm(d1[idx[:, 0]], axis=1, keepdims=True)
    b = d2[idx[:, 1]] / np.linalg.norm(d2[idx[:, 1]], axis=1, keepdims=True)
    np.testing.assert_allclose(dist, np.linalg.norm(a - b, axis=1), atol=1e-3)
    if mutual:
        assert len(np.unique(idx[:, 1])) == len(idx)


def test_binary_hamming_distances(rng):
    d1 = rng.integers(0, 256, (80, 32), dtype=np.uint8)
    flips = rng.random((80, 256)) < 0.05
    d2 = np.packbits(np.unpackbits(d1, axis=1) ^ flips, axis=1)[rng.permutation(80)]
    idx, dist = match_descriptors(d1, d2, MatchingOptions(ratio_threshold=0.9))
    hamming = np.unpackbits(d1[idx[:, 0]] ^ d2[idx[:, 1]], axis=1).sum(1)
    np.testing.assert_array_equal(dist, hamming)
    # Every descriptor is the flipped copy of exactly one other: all are found.
    assert len(idx) == 80
    assert np.all(hamming < 40)


def test_kind_mismatch_and_options():
    with pytest.raises(InputError, match="descriptor kinds"):
        match_descriptors(np.zeros((3, 32), np.uint8), np.zeros((3, 128), np.float32))
    with pytest.raises(InputError, match="ratio"):
        MatchingOptions(ratio_threshold=1.5)
    idx, dist = match_descriptors(np.zeros((0, 128), np.float32), np.ones((4, 128), np.float32))
    assert idx.shape == (0, 2) and dist.shape == (0,)


@pytest.fixture(scope="module")
def rendered():
    scene = render_scene_images(3, rng=11)
    feats = {
        k + 1: detect_and_describe(im, ExtractionOptions(max_num_features=2000))
        for k, im in enumerate(scene.images)
    }
    return scene, feats


def _gt_fundamental(scene, i: int, j: int) -> np.ndarray:
    rel = scene.cams_from_world[j] @ scene.cams_from_world[i].inverse()
    E = skew(rel.translation) @ rel.rotation
    return fundamental_from_essential(E, scene.K, scene.K)


@pytest.mark.parametrize("method", ["bruteforce", "ivf", "flann"])
def test_matches_on_rendered_images_obey_gt_epipolar_geometry(rendered, method):
    scene, feats = rendered
    # ivf.min_num_features=0: the inverted file is used even on these small sets.
    options = MatchingOptions(method=method, ivf=IvfOptions(min_num_features=0, num_cells=16, num_probes=3))
    result = match_pairs(feats, [(1, 2), (2, 3)], options)
    for (i, j), m in result.items():
        assert len(m) > 200
        F = _gt_fundamental(scene, i - 1, j - 1)
        err = np.sqrt(
            sampson_distance_sq(
                F, feats[i].keypoints_px[m.indices[:, 0]], feats[j].keypoints_px[m.indices[:, 1]]
            )
        )
        # Before any geometric verification most putative matches are correct.
        assert np.mean(err < 2.0) > 0.85
        assert np.median(err) < 0.5


def test_flann_agrees_with_bruteforce(rendered):
    _, feats = rendered
    exact, _ = match_descriptors(
        feats[1].descriptors, feats[2].descriptors, MatchingOptions(method="bruteforce")
    )
    approx, _ = match_descriptors(feats[1].descriptors, feats[2].descriptors, MatchingOptions(method="flann"))
    common = set(map(tuple, exact.tolist())) & set(map(tuple, approx.tolist()))
    assert len(common) > 0.9 * len(exact)


def test_cache(rendered, tmp_path, monkeypatch):
    _, feats = rendered
    pairs = [(1, 2), (1, 3), (2, 3)]
    calls = []
    original = match_mod._match_prepared

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(match_mod, "_match_prepared", counting)
    opts = MatchingOptions()
    first = match_pairs(feats, pairs, opts, cache_dir=tmp_path)
    assert len(calls) == 3
    second = match_pairs(feats, pairs, opts, cache_dir=tmp_path)
    assert len(calls) == 3  # all three pairs came from the cache
    third = match_pairs(feats, pairs, MatchingOptions(ratio_threshold=0.7))
    assert len(calls) == 6
    for p in pairs:
        np.testing.assert_array_equal(first[p].indices, second[p].indices)
        assert len(third[p]) < len(first[p])  # a stricter ratio keeps fewer matches
        assert (first[p].image_i, first[p].image_j) == p


def test_bad_pairs(rendered):
    _, feats = rendered
    with pytest.raises(InputError, match="image id 9"):
        match_pairs(feats, [(1, 9)], MatchingOptions())
    with pytest.raises(InputError, match="itself"):
        match_pairs(feats, [(2, 2)], MatchingOptions())


def test_pca_search_is_close_to_exact(rendered):
    _, feats = rendered
    d1, d2 = feats[1].descriptors, feats[2].descriptors
    exact, _ = match_descriptors(d1, d2, MatchingOptions(method="bruteforce"))
    approx, dist = match_descriptors(d1, d2, MatchingOptions(method="bruteforce", pca_dims=48))
    common = set(map(tuple, exact.tolist())) & set(map(tuple, approx.tolist()))
    assert len(common) > 0.9 * len(exact)
    # Reported distances are the exact ones in the full descriptor space.
    a = d1[approx[:, 0]] / np.linalg.norm(d1[approx[:, 0]], axis=1, keepdims=True)
    b = d2[approx[:, 1]] / np.linalg.norm(d2[approx[:, 1]], axis=1, keepdims=True)
    np.testing.assert_allclose(dist, np.linalg.norm(a - b, axis=1), atol=1e-5)
    with pytest.raises(InputError, match="pca_dims"):
        MatchingOptions(pca_dims=1)


def test_ivf_probing_every_cell_is_exact(rendered):
    # With every cell probed the inverted file compares all pairs: the exact brute-force answer.
    _, feats = rendered
    d1, d2 = feats[1].descriptors, feats[2].descriptors
    exact, exact_dist = match_descriptors(d1, d2, MatchingOptions(method="bruteforce"))
    opts = MatchingOptions(method="ivf", ivf=IvfOptions(num_cells=8, num_probes=8, min_num_features=0))
    full, full_dist = match_descriptors(d1, d2, opts, rng=3)
    assert len(exact) > 200
    np.testing.assert_array_equal(full, exact)
    # Same matches; the distances come from float32 dot products summed in another order (per-cell
    # blocks), so they agree to a few float32 ulps of the score: ~1e-6 in distance, not bit for bit.
    np.testing.assert_allclose(full_dist, exact_dist, atol=1e-5)


def test_ivf_recall_and_shared_quantiser(rendered, tmp_path):
    _, feats = rendered
    pairs = [(1, 2), (1, 3), (2, 3)]
    exact = match_pairs(feats, pairs, MatchingOptions(method="bruteforce"))
    opts = MatchingOptions(ivf=IvfOptions(num_cells=32, num_probes=4, min_num_features=0))
    approx = match_pairs(feats, pairs, opts, rng=5, cache_dir=tmp_path)
    for p in pairs:
        found = set(map(tuple, approx[p].indices.tolist()))
        truth = set(map(tuple, exact[p].indices.tolist()))
        # 4 of 32 cells: 1/8 of the products, most exact matches kept, few new ones.
        assert len(found & truth) > 0.85 * len(truth)
        assert len(found - truth) < 0.1 * len(truth)
    # Same seed: the cache answers; another seed trains another quantiser (new cache entries).
    again = match_pairs(feats, pairs, opts, rng=5, cache_dir=tmp_path)
    for p in pairs:
        np.testing.assert_array_equal(again[p].indices, approx[p].indices)
    assert len(list((tmp_path / "matches").glob("*.npz"))) == 3
    with open_runner("processes", 2) as runner:
        other = match_pairs(feats, pairs, opts, rng=6, cache_dir=tmp_path, runner=runner)
        # The pool and the client share the quantiser trained on the client: same answer as serial.
        serial = match_pairs(feats, pairs, opts, rng=6)
    for p in pairs:
        np.testing.assert_array_equal(other[p].indices, serial[p].indices)
    assert len(list((tmp_path / "matches").glob("*.npz"))) == 6
    assert all(len(other[p]) > 0.85 * len(exact[p]) for p in pairs)


def test_ivf_quantiser_and_options():
    rng = np.random.default_rng(0)
    sets = [rng.random((300, 16)).astype(np.float32), rng.random((200, 16)).astype(np.float32)]
    centres = match_mod.train_ivf_quantiser(sets, 10, rng=1)
    assert centres.shape == (10, 16)
    np.testing.assert_array_equal(centres, match_mod.train_ivf_quantiser(sets, 10, rng=1))
    with pytest.raises(InputError, match="no descriptors"):
        match_mod.train_ivf_quantiser([np.zeros((0, 16), np.float32)], 4)
    with pytest.raises(InputError, match="7 probes"):
        IvfOptions(num_cells=4, num_probes=7)
    # Binary descriptors never use the inverted file: exact Hamming matching.
    d1 = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    idx, dist = match_descriptors(d1, d1.copy(), MatchingOptions(ivf=IvfOptions(min_num_features=0)))
    np.testing.assert_array_equal(idx, np.stack([np.arange(50), np.arange(50)], axis=1))
    assert np.all(dist == 0)


def test_min_num_matches_empties_weak_pairs(rendered):
    _, feats = rendered
    counts = {p: len(m) for p, m in match_pairs(feats, [(1, 2), (1, 3)], MatchingOptions()).items()}
    cut = (min(counts.values()) + max(counts.values())) // 2 + 1
    assert min(counts.values()) < cut <= max(counts.values())
    result = match_pairs(feats, [(1, 2), (1, 3)], MatchingOptions(min_num_matches=cut))
    for p, m in result.items():
        assert len(m) == (counts[p] if counts[p] >= cut else 0)
        assert m.indices.shape == (len(m), 2)


def test_ivf_cells_and_probes_scale_down_for_small_images():
    from geomvision.features.match import _scaled_ivf

    options = MatchingOptions(
        ivf=IvfOptions(num_probes=6)
    )  # 64 cells, one cell per 100 descriptors of the median image
    large = _scaled_ivf(options, [12312, 12000, 12500])
    assert (large.ivf.num_cells, large.ivf.num_probes) == (64, 6)
    small = _scaled_ivf(options, [1639, 1500, 1700])
    assert (small.ivf.num_cells, small.ivf.num_probes) == (16, 3)
    tiny = _scaled_ivf(options, [150, 180])
    assert (tiny.ivf.num_cells, tiny.ivf.num_probes) == (1, 1)
    fixed = _scaled_ivf(MatchingOptions(ivf=IvfOptions(descriptors_per_cell=0)), [1639])
    assert (fixed.ivf.num_cells, fixed.ivf.num_probes) == (64, 4)
