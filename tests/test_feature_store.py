"""features.store: descriptors left in the features cache give the same arrays, matches and pairs as
descriptors held in memory, on every backend, and are read back only where a task needs them."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.features.extract import ExtractionOptions, extract_features
from geomvision.features.match import IvfOptions, MatchingOptions, match_pairs, train_ivf_quantiser
from geomvision.features.pairs import exhaustive_pairs, retrieval_pairs, train_vocabulary
from geomvision.features.store import DescriptorFile, StoredFeatures, descriptor_source, features_hash
from geomvision.runtime import cache as cache_mod
from geomvision.runtime.runner import Stage, StageRunner, open_runner
from geomvision.synthetic import render_scene_images
from tests.image_fixtures import write_rgb_pngs

OPTIONS = ExtractionOptions(max_num_features=600)
#: IVF on these small images too (they have fewer than the default 1024 descriptors).
IVF = MatchingOptions(method="ivf", ivf=IvfOptions(min_num_features=100), min_num_matches=5)


@pytest.fixture(autouse=True)
def _private_key(tmp_path, monkeypatch):
    monkeypatch.setenv(cache_mod.KEY_FILE_ENV, str(tmp_path / "cache.key"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    scene = render_scene_images(5, width=320, height=240, rng=7)
    return write_rgb_pngs(scene.images, tmp_path_factory.mktemp("imgs"))


def _both(image_files, tmp_path):
    in_memory = extract_features(image_files, OPTIONS)
    stored = extract_features(image_files, OPTIONS, cache_dir=tmp_path / "cache", descriptors_on_disk=True)
    return dict(enumerate(in_memory, start=1)), dict(enumerate(stored, start=1))


def test_stored_features_read_back_the_same_arrays(image_files, tmp_path):
    in_memory, stored = _both(image_files, tmp_path)
    for k, f in in_memory.items():
        s = stored[k]
        assert isinstance(s, StoredFeatures) and len(s) == len(f) > 100
        assert "descriptors" not in vars(s)  # only the reference is held
        assert s.descriptor_file.shape == f.descriptors.shape and s.descriptor_file.dtype == np.float32
        np.testing.assert_array_equal(s.keypoints_px, f.keypoints_px)
        np.testing.assert_array_equal(s.colors, f.colors)
        np.testing.assert_array_equal(s.descriptors, f.descriptors)
        assert features_hash(s) == features_hash(f)
    # A rerun loads the cache entries and keeps only references as well.
    again = extract_features(image_files, OPTIONS, cache_dir=tmp_path / "cache", descriptors_on_disk=True)
    assert all(isinstance(s, StoredFeatures) for s in again)
    np.testing.assert_array_equal(again[0].descriptors, in_memory[1].descriptors)


def test_without_a_cache_descriptors_stay_in_memory(image_files):
    features = extract_features(image_files[:2], OPTIONS, descriptors_on_disk=True)
    assert not any(isinstance(f, StoredFeatures) for f in features)
    assert features[0].descriptors.shape == (len(features[0]), 128)


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_matching_stored_features_gives_the_same_matches(image_files, tmp_path, backend):
    in_memory, stored = _both(image_files, tmp_path)
    pairs = exhaustive_pairs(in_memory)
    expected = match_pairs(in_memory, pairs, IVF, rng=3)
    with open_runner(backend, 2) as runner:
        got = match_pairs(stored, pairs, IVF, runner=runner, rng=3)
    assert sum(len(m) for m in expected.values()) > 100
    for pair, m in expected.items():
        np.testing.assert_array_equal(got[pair].indices, m.indices)
        np.testing.assert_array_equal(got[pair].distances, m.distances)


def test_quantiser_vocabulary_and_retrieval_read_files_like_arrays(image_files, tmp_path):
    in_memory, stored = _both(image_files, tmp_path)
    arrays = [f.descriptors for f in in_memory.values()]
    files = [descriptor_source(f) for f in stored.values()]
    assert all(isinstance(f, DescriptorFile) for f in files)
    np.testing.assert_array_equal(
        train_ivf_quantiser(arrays, 8, max_samples=500, rng=2),
        train_ivf_quantiser(files, 8, max_samples=500, rng=2),
    )
    # Sampled (fewer samples than descriptors) and whole (more) vocabulary paths.
    for max_samples in (700, 10_000):
        np.testing.assert_array_equal(
            train_vocabulary(arrays, 8, max_samples=max_samples, rng=4),
            train_vocabulary(files, 8, max_samples=max_samples, rng=4),
        )
    assert retrieval_pairs(stored, 2, num_words=8, rng=5) == retrieval_pairs(in_memory, 2, num_words=8, rng=5)


def test_a_changed_descriptor_file_is_refused(image_files, tmp_path):
    _, stored = _both(image_files, tmp_path)
    reference = stored[1].descriptor_file
    other = stored[2].descriptor_file
    moved = DescriptorFile(other.path, reference.digest, reference.shape, reference.dtype_str)
    with pytest.raises(OSError, match="changed"):
        moved.load()


def _double(x, context):
    return {"value": np.full(3, 2.0 * x)}


class _Codec:
    def encode(self, result):
        return {"value": result["value"]}, {}

    def decode(self, arrays, meta):
        return {"value": arrays["value"]}


def test_runner_keep_sees_each_result_with_its_cache_entry(tmp_path):
    stage = Stage(name="double", task=_double, version=1, codec=_Codec())
    seen = []

    def keep(result, entry):
        seen.append(entry)
        return float(result["value"][0])

    runner = StageRunner(cache_dir=tmp_path / "c")
    kwargs = {"options_key": 0, "item_key": str, "keep": keep}
    assert runner.map(stage, [1, 2, 3], **kwargs) == [2.0, 4.0, 6.0]
    assert all(e is not None and e.is_file() for e in seen)
    seen.clear()
    assert runner.map(stage, [1, 2, 3], **kwargs) == [2.0, 4.0, 6.0]  # now from the cache
    assert len(seen) == 3 and all(e.is_file() for e in seen)
    seen.clear()
    assert StageRunner().map(stage, [5], **kwargs) == [10.0]
    assert seen == [None]
