"""features.extract: methods, original-pixel keypoints under downscaling, colours, caching, backends."""

from __future__ import annotations

import numpy as np
import pytest

import geomvision.features.extract as extract_mod
from geomvision.errors import InputError
from geomvision.features.extract import ExtractionOptions, detect_and_describe, extract_features
from geomvision.runtime.runner import open_runner
from geomvision.synthetic import render_scene_images
from tests.image_fixtures import write_rgb_pngs


@pytest.fixture(scope="module")
def scene():
    return render_scene_images(3, width=320, height=240, rng=3)


@pytest.fixture(scope="module")
def image_files(scene, tmp_path_factory):
    return write_rgb_pngs(scene.images, tmp_path_factory.mktemp("imgs"))


@pytest.mark.parametrize(
    ("method", "dtype", "dim"), [("sift", np.float32, 128), ("orb", np.uint8, 32), ("akaze", np.uint8, 61)]
)
def test_methods_find_features(scene, method, dtype, dim):
    f = detect_and_describe(scene.images[0], ExtractionOptions(method=method, max_num_features=500))
    assert 100 <= len(f) <= 500
    assert f.descriptors.dtype == dtype and f.descriptors.shape == (len(f), dim)
    assert f.keypoints_px.shape == (len(f), 2) and f.scales.shape == (len(f),)
    assert np.all((f.keypoints_px > -0.5) & (f.keypoints_px < [319.5, 239.5]))


def test_root_sift_is_unit_and_nonnegative(scene):
    f = detect_and_describe(scene.images[0], ExtractionOptions(root_sift=True, max_num_features=300))
    assert np.all(f.descriptors >= 0)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)


def test_downscaled_keypoints_in_original_pixels(scene):
    # B is A upsampled 2x by pixel replication; INTER_AREA halving gives A back exactly, so detection
    # on B with max size = size(A) must report A's keypoints mapped by x_B = 2 (x_A + 0.5) - 0.5.
    small = scene.images[0]
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    opts = ExtractionOptions(max_num_features=400, max_image_size_px=320)
    f_small = detect_and_describe(small, opts)
    f_big = detect_and_describe(big, opts)
    assert len(f_small) == len(f_big) > 100
    np.testing.assert_allclose(f_big.keypoints_px, 2.0 * (f_small.keypoints_px + 0.5) - 0.5, atol=1e-4)
    np.testing.assert_allclose(f_big.scales, 2.0 * f_small.scales, rtol=1e-6)
    np.testing.assert_array_equal(f_big.descriptors, f_small.descriptors)


def test_colours_sampled_at_keypoints(scene):
    image = scene.images[1]
    f = detect_and_describe(image, ExtractionOptions(max_num_features=200))
    rows = np.rint(f.keypoints_px[:, 1]).astype(int).clip(0, 239)
    cols = np.rint(f.keypoints_px[:, 0]).astype(int).clip(0, 319)
    np.testing.assert_array_equal(f.colors, image[rows, cols])


def test_bad_options():
    with pytest.raises(InputError, match="surf"):
        ExtractionOptions(method="surf")
    with pytest.raises(InputError, match="max_num_features"):
        ExtractionOptions(max_num_features=0)


def test_cache_skips_finished_images(image_files, tmp_path, monkeypatch):
    calls = []
    original = extract_mod.detect_and_describe

    def counting(image, options):
        calls.append(1)
        return original(image, options)

    monkeypatch.setattr(extract_mod, "detect_and_describe", counting)
    opts = ExtractionOptions(max_num_features=300)
    first = extract_features(image_files, opts, cache_dir=tmp_path)
    assert len(calls) == 3
    progress = []
    second = extract_features(
        image_files, opts, cache_dir=tmp_path, progress=lambda d, t, m: progress.append((d, t))
    )
    assert len(calls) == 3  # nothing recomputed
    assert progress[-1] == (3, 3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.keypoints_px, b.keypoints_px)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)
        np.testing.assert_array_equal(a.colors, b.colors)
    # Other options -> other cache entries.
    other = ExtractionOptions(max_num_features=100)
    extract_features(image_files[:1], other, cache_dir=tmp_path)
    assert len(calls) == 4


def test_backends_agree(image_files):
    opts = ExtractionOptions(max_num_features=300)
    serial = extract_features(image_files, opts)
    with open_runner("processes", 2) as runner:
        pooled = extract_features(image_files, opts, runner=runner)
        assert runner.report()["tasks"] == 3 and runner.report()["bytes_received"] > 0
    for a, c in zip(serial, pooled, strict=True):
        np.testing.assert_array_equal(a.keypoints_px, c.keypoints_px)
        np.testing.assert_array_equal(a.descriptors, c.descriptors)
        np.testing.assert_array_equal(a.colors, c.colors)


def test_unreadable_image_raises_with_name(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(InputError, match="broken.png"):
        extract_features([bad], ExtractionOptions())
