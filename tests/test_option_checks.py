"""The shared option checks of geomvision.errors name the bad field and value, whichever class uses them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from geomvision.errors import InputError, check_choice, check_fields_at_least
from geomvision.features.extract import ExtractionOptions
from geomvision.features.match import MatchingOptions
from geomvision.robust.estimators import TwoViewEstimate
from geomvision.robust.ransac import LocalOptimizationOptions, RansacOptions, RansacResult, RobustFit
from geomvision.scene.camera import Camera
from geomvision.sfm.partition import PartitionOptions
from geomvision.sfm.trust import TrustOptions


def test_check_choice_message_names_value_and_choices():
    check_choice("colour", "red", ("red", "green"))
    with pytest.raises(InputError) as info:
        check_choice("colour", "blue", ("red", "green"))
    assert str(info.value) == "unknown colour 'blue'; expected one of ('red', 'green')"


def test_check_fields_at_least_reports_the_first_bad_field():
    options = RansacOptions()
    check_fields_at_least(options, min_iterations=64, batch_size=16)  # bounds are inclusive
    with pytest.raises(InputError) as info:
        check_fields_at_least(options, min_iterations=0, batch_size=17)
    assert str(info.value) == "batch_size must be >= 17, got 16"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RansacOptions(min_iterations=-1), "min_iterations must be >= 0, got -1"),
        (
            lambda: LocalOptimizationOptions(threshold_multiplier=0.5),
            "threshold_multiplier must be >= 1, got 0.5",
        ),
        (lambda: RansacOptions(batch_size=0), "batch_size must be >= 1, got 0"),
        (lambda: TrustOptions(drift_max_points=9), "drift_max_points must be >= 10, got 9"),
        (lambda: TrustOptions(min_registered_images=1), "min_registered_images must be >= 2, got 1"),
        (lambda: TrustOptions(max_focal_drift=0.0), "max_focal_drift must be > 0, got 0.0"),
        (lambda: PartitionOptions(auto_cluster_images=1), "auto_cluster_images must be >= 2, got 1"),
        (lambda: PartitionOptions(min_cluster_images=0), "min_cluster_images must be >= 1, got 0"),
        (lambda: ExtractionOptions(method="surf"), "unknown feature method 'surf'; expected one of"),
        (lambda: MatchingOptions(method="flann2"), "unknown matcher 'flann2'; expected one of"),
        (lambda: Camera(1, "FISHEYE", 640, 480, [500.0]), "unknown camera model 'FISHEYE'; expected one of"),
    ],
)
def test_options_messages_name_the_bad_value(make, message):
    with pytest.raises(InputError) as info:
        make()
    assert str(info.value).startswith(message)


def test_pinhole_params_of_one_and_two_focal_models():
    simple = Camera(1, "SIMPLE_RADIAL", 640, 480, [500.0, 320.0, 240.0, 0.01])
    assert simple.pinhole_params == (500.0, 500.0, 320.0, 240.0)
    assert simple.focal_xy == (500.0, 500.0) and simple.principal_point == (320.0, 240.0)
    opencv = Camera(2, "OPENCV", 640, 480, [500.0, 510.0, 321.0, 239.0, 0, 0, 0, 0])
    assert opencv.pinhole_params == (500.0, 510.0, 321.0, 239.0)
    np.testing.assert_array_equal(opencv.K, [[500.0, 0, 321.0], [0, 510.0, 239.0], [0, 0, 1]])


def test_robust_results_share_the_robust_fit_fields_in_order():
    shared = [f.name for f in dataclasses.fields(RobustFit)]
    assert shared == ["success", "reason", "model", "inlier_mask", "num_iterations", "score"]
    assert [f.name for f in dataclasses.fields(RansacResult)] == shared + [
        "residuals_sq",
        "locally_optimized",
    ]
    assert [f.name for f in dataclasses.fields(TwoViewEstimate)] == shared + [
        "cam2_from_cam1",
        "cheirality_mask",
    ]
    estimate = TwoViewEstimate(True, "", np.eye(3), np.array([True, False, True]), 5, 1.5, None, None)
    assert estimate.num_inliers == 2 and estimate.cam2_from_cam1 is None
