"""One meaning of rng=None (seed 0, through runtime.rng.as_rng) and one BA gauge rule for both bridges."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix
from geomvision.robust.estimators import estimate_fundamental
from geomvision.robust.ransac import LocalOptimizationOptions, RansacOptions
from geomvision.runtime.rng import as_rng
from geomvision.sfm import bundle_adjustment, mapper_ba
from geomvision.sfm.ba.model import gauge_translation_axis
from geomvision.synthetic import two_view_correspondences


def test_as_rng_none_is_seed_zero_and_a_generator_passes_through():
    assert as_rng(None).integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)
    assert as_rng(np.int64(5)).integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)
    gen = np.random.default_rng(3)
    assert as_rng(gen) is gen
    for bad in (True, 1.5, np.random.RandomState(0)):
        with pytest.raises(InputError, match="rng must be"):
            as_rng(bad)


def test_rng_none_makes_ransac_reproducible():
    data = two_view_correspondences(200, noise_px=0.5, outlier_ratio=0.4, rng=2)
    options = RansacOptions(max_error_px=1.0, min_iterations=8, lo=LocalOptimizationOptions(enabled=False))
    a = estimate_fundamental(data.x1_px, data.x2_px, options)
    b = estimate_fundamental(data.x1_px, data.x2_px, options)
    assert a.num_iterations == b.num_iterations and np.array_equal(a.inlier_mask, b.inlier_mask)
    assert np.array_equal(a.model, b.model)


def _t2_scaled(rotation_2, c1, c2, s):
    return -rotation_2 @ (c1 + s * (c2 - c1))


def test_gauge_axis_is_the_coordinate_a_scaling_about_the_first_centre_moves_most():
    gen = np.random.default_rng(0)
    for _ in range(20):
        poses = [Rigid3d(rotvec_to_matrix(gen.normal(size=3)), gen.normal(size=3) * 3) for _ in range(2)]
        axis = gauge_translation_axis(
            poses[0].rotation, poses[0].translation, poses[1].rotation, poses[1].translation
        )
        # Scale the world by s about C1: X' = C1 + s (X - C1); camera 2 keeps R2, its t2' = -R2 C2'.
        c1, c2, rotation_2 = poses[0].center, poses[1].center, poses[1].rotation
        moved = np.abs(_t2_scaled(rotation_2, c1, c2, 1.001) - _t2_scaled(rotation_2, c1, c2, 1.0))
        assert axis == int(np.argmax(moved))
        # Pose 1 is untouched by that scaling: its t1' = -R1 C1 is the same.


def test_both_bundle_adjustment_bridges_use_the_one_gauge_rule():
    assert bundle_adjustment.gauge_translation_axis is gauge_translation_axis
    assert mapper_ba.gauge_translation_axis is gauge_translation_axis
