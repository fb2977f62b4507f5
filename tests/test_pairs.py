"""features.pairs: exhaustive, sequential (+ loop closure) and VLAD retrieval pairs."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.features.pairs import (
    exhaustive_pairs,
    retrieval_pairs,
    sequential_pairs,
    train_vocabulary,
    vlad_descriptor,
)
from geomvision.scene.types import Features


def test_exhaustive():
    pairs = exhaustive_pairs([4, 1, 3, 2])
    assert pairs == [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    assert len(exhaustive_pairs(range(1, 11))) == 45
    with pytest.raises(InputError, match="unique"):
        exhaustive_pairs([1, 1])


def test_sequential_and_loop_closure():
    assert sequential_pairs([1, 2, 3, 4], 1) == [(1, 2), (2, 3), (3, 4)]
    assert sequential_pairs([1, 2, 3, 4, 5], 2) == [(1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (3, 5), (4, 5)]
    ring = sequential_pairs(list(range(1, 7)), 2, loop_closure=True)
    assert (1, 6) in ring and (1, 5) in ring and (2, 6) in ring and (1, 4) not in ring
    # With wrap-around every image has exactly 2 * window neighbours.
    degree = np.bincount(np.array(ring).reshape(-1), minlength=7)[1:]
    assert np.all(degree == 4)
    with pytest.raises(InputError, match="window"):
        sequential_pairs([1, 2], 0)


def _two_scene_features(rng) -> dict[int, Features]:
    """Images 1-4 see 'scene A' (its own descriptor set), 5-8 see 'scene B'."""
    scene_a = rng.random((300, 128)).astype(np.float32) ** 3
    scene_b = rng.random((300, 128)).astype(np.float32) ** 3
    feats = {}
    for k in range(1, 9):
        source = scene_a if k <= 4 else scene_b
        rows = source[rng.choice(300, 200, replace=False)]
        rows = rows + 0.02 * rng.random(rows.shape).astype(np.float32)
        feats[k] = Features(keypoints_px=rng.random((200, 2)) * 100, descriptors=rows)
    return feats


def test_vlad_is_unit_norm_and_deterministic(rng):
    feats = _two_scene_features(rng)
    vocab = train_vocabulary([f.descriptors for f in feats.values()], 16, rng=0)
    assert vocab.shape == (16, 128)
    v1 = vlad_descriptor(feats[1].descriptors, vocab)
    assert v1.shape == (16 * 128,)
    assert np.linalg.norm(v1) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(v1, vlad_descriptor(feats[1].descriptors, vocab))
    vocab2 = train_vocabulary([f.descriptors for f in feats.values()], 16, rng=0)
    np.testing.assert_array_equal(vocab, vocab2)


def test_retrieval_finds_images_of_the_same_scene(rng):
    feats = _two_scene_features(rng)
    pairs = retrieval_pairs(feats, 3, num_words=16, rng=0)
    # Each image's 3 nearest neighbours are the other 3 images of its scene: exactly the two cliques.
    expected = exhaustive_pairs([1, 2, 3, 4]) + exhaustive_pairs([5, 6, 7, 8])
    assert pairs == sorted(expected)
    with_seq = retrieval_pairs(feats, 1, num_words=16, sequential_window=1, rng=0)
    assert (4, 5) in with_seq  # only the sequential union links the two scenes
    assert all(i < j for i, j in with_seq)
