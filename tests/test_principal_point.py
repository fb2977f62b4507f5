"""sfm.principal_point: refined where observable (exact synthetic answer), left alone where not."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision.geometry.rigid import Rigid3d
from geomvision.scene import Camera, Reconstruction
from geomvision.scene.reconstruction import View
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust
from geomvision.sfm.principal_point import (
    PrincipalPointOptions,
    covisible_image_subset,
    principal_point_std_px,
    refine_principal_point,
    sub_reconstruction,
)
from geomvision.synthetic import random_scene

W, H = 640, 480
OFFSET_PX = np.array([14.0, -9.0])  # true principal point minus the image centre


def _model_with_centred_principal_point(
    focal_px: float, num_cameras: int = 12, seed: int = 0
) -> Reconstruction:
    """Ground-truth poses and points, observations made with the true (off-centre) principal point, and a
    camera that assumes the image centre; bundle-adjusted with that principal point held, as the mapper
    leaves a model (the offset is then mostly absorbed by the rotations)."""
    scene = random_scene(300, num_cameras, layout="sphere", focal_px=focal_px, width=W, height=H, rng=seed)
    rng = np.random.default_rng(seed)
    rec = Reconstruction()
    rec.add_camera(Camera(1, "SIMPLE_RADIAL", W, H, np.array([focal_px, (W - 1) / 2, (H - 1) / 2, 0.0])))
    for c, pose in enumerate(scene.cams_from_world):
        px = scene.observations_px[c] + OFFSET_PX + rng.normal(scale=0.3, size=(scene.num_points, 2))
        rec.add_view(View(c + 1, f"{c}.png", 1, pose, px))
    for p in range(scene.num_points):
        track = [(c + 1, p) for c in np.flatnonzero(scene.visible[:, p])]
        if len(track) >= 2:
            rec.add_point3D(scene.points_in_world[p], track)
    bundle_adjust(rec, BundleAdjustmentOptions(loss="soft_l1"))
    return rec


def test_observable_principal_point_is_recovered():
    rec = _model_with_centred_principal_point(500.0)
    result = refine_principal_point(rec, rng=0)
    assert result.success, result.reason
    np.testing.assert_allclose(
        rec.cameras[1].principal_point, np.array([(W - 1) / 2, (H - 1) / 2]) + OFFSET_PX, atol=1.0
    )
    assert max(result.std_px_by_camera[1]) < 1.0
    assert rec.cameras[1].focal_xy[0] == pytest.approx(500.0, rel=0.01)


def test_narrow_field_principal_point_is_not_observable_and_left_alone():
    rec = _model_with_centred_principal_point(6000.0)
    before = rec.cameras[1].params.copy()
    result = refine_principal_point(rec, PrincipalPointOptions(max_std_deg=0.05), rng=0)
    assert not result.success and result.reason.startswith("not observable")
    np.testing.assert_array_equal(rec.cameras[1].params, before)
    # the deviation grows with the focal length: the wide-field model pins it far better
    wide = principal_point_std_px(_model_with_centred_principal_point(500.0))[1]
    narrow = principal_point_std_px(rec)[1]
    assert np.all(narrow > 10 * wide)


def test_gauge_fixed_deviation_equals_the_pseudo_inverse(monkeypatch):
    """The principal point does not move under the similarity gauge, so holding the gauge (Cholesky) gives
    the pseudo-inverse's deviation."""
    import geomvision.sfm.principal_point as pp

    rec = _model_with_centred_principal_point(500.0)
    fast = principal_point_std_px(rec)
    monkeypatch.setattr(pp, "_gauge_fixed_variances", lambda *args: None)  # the pseudo-inverse path
    reference = principal_point_std_px(rec)
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-7)


def test_large_model_is_tested_on_an_image_subset_then_refined_whole():
    """Above ``max_images`` the test and the first refinement run on a connected subset; a significant shift
    is then refined on the whole model, which ends at the true principal point."""
    rec = _model_with_centred_principal_point(500.0, num_cameras=24)
    result = refine_principal_point(rec, PrincipalPointOptions(max_images=12), rng=0)
    assert result.success, result.reason
    assert result.report["subset_images"] == 12
    np.testing.assert_allclose(
        rec.cameras[1].principal_point, np.array([(W - 1) / 2, (H - 1) / 2]) + OFFSET_PX, atol=1.0
    )
    np.testing.assert_allclose(result.report["subset_shift_px"]["1"], OFFSET_PX, atol=2.0)


def test_shift_not_significant_on_the_subset_leaves_the_whole_model_alone():
    rec = _model_with_centred_principal_point(500.0, num_cameras=24)
    poses = {i: v.cam_from_world for i, v in rec.views.items()}
    before = rec.cameras[1].params.copy()
    options = PrincipalPointOptions(max_images=12, min_significance=1e6)
    result = refine_principal_point(rec, options, rng=0)
    assert not result.success
    assert result.reason.startswith("on 12 of 24 images: shift not significant")
    np.testing.assert_array_equal(rec.cameras[1].params, before)
    assert all(rec.views[i].cam_from_world is pose for i, pose in poses.items())


def test_covisible_subset_grows_along_shared_points_and_stays_connected():
    """Images 1-2-3-4 form a chain (1-2 share 5 points, 2-3 share 3, 3-4 share 4), image 5 shares nothing:
    from the image with most points (2), the strongest links first, never the unconnected image."""
    rec = Reconstruction()
    rec.add_camera(Camera(1, "SIMPLE_RADIAL", W, H, np.array([500.0, W / 2, H / 2, 0.0])))
    for i in range(1, 6):
        rec.add_view(View(i, f"{i}.png", 1, Rigid3d(), np.zeros((20, 2))))
    kp = dict.fromkeys(range(1, 6), 0)

    def point(*images):
        track = []
        for i in images:
            track.append((i, kp[i]))
            kp[i] += 1
        rec.add_point3D(np.zeros(3), track)

    for _ in range(5):
        point(1, 2)
    for _ in range(3):
        point(2, 3)
    for _ in range(4):
        point(3, 4)
    point(5, 5)  # a point seen twice by image 5 alone
    assert covisible_image_subset(rec, 10) == [2, 1, 3, 4]
    assert covisible_image_subset(rec, 2) == [2, 1]
    sub = sub_reconstruction(rec, [2, 3])
    assert sorted(sub.views) == [2, 3] and len(sub.points3D) == 3
    assert all(sorted(i for i, _ in p.track) == [2, 3] for p in sub.points3D.values())
    assert sub.cameras[1] is not rec.cameras[1]
