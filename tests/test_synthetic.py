"""Sanity of the synthetic ground truth that other tests rely on."""

from __future__ import annotations

import numpy as np
import pytest

from geomvision import synthetic as syn
from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, angle_between_vectors_deg


@pytest.mark.parametrize("layout", ["ring", "sphere", "sequence"])
@pytest.mark.parametrize("structure", ["volume", "plane"])
def test_random_scene_projections_and_visibility(layout, structure):
    scene = syn.random_scene(200, 5, layout=layout, structure=structure, rng=3)
    assert scene.points_in_world.shape == (200, 3)
    assert scene.observations_px.shape == (5, 200, 2) and scene.visible.shape == (5, 200)
    if structure == "plane":
        np.testing.assert_allclose(scene.points_in_world[:, 2], 0.0)
    for c, cam in enumerate(scene.cams_from_world):
        R = cam.rotation
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) > 0
        # projection by hand: x = K (R X + t), divided by depth
        X_cam = scene.points_in_world @ R.T + cam.translation
        px = (X_cam @ scene.K.T)[:, :2] / X_cam[:, 2:3]
        np.testing.assert_allclose(scene.observations_px[c], px, atol=1e-9)
        inside = (px[:, 0] >= -0.5) & (px[:, 0] < 639.5) & (px[:, 1] >= -0.5) & (px[:, 1] < 479.5)
        np.testing.assert_array_equal(scene.visible[c], inside & (X_cam[:, 2] > 0))
        # the camera looks at the cloud: the optical axis passes near the origin
        axis = R[2]
        assert angle_between_vectors_deg(axis, -cam.center) < 5.0
    assert scene.visible.mean() > 0.9  # cameras are placed so that the unit cloud fits in the image
    K = scene.K
    assert K[0, 0] == 800.0 and K[0, 2] == 319.5 and K[1, 2] == 239.5


def test_random_scene_is_reproducible():
    a = syn.random_scene(50, 3, rng=5)
    b = syn.random_scene(50, 3, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.points_in_world, b.points_in_world)
    np.testing.assert_array_equal(a.observations_px, b.observations_px)
    c = syn.random_scene(50, 3)
    d = syn.random_scene(50, 3)
    np.testing.assert_array_equal(c.points_in_world, d.points_in_world)  # rng=None is seeded too


def test_visibility_flags_points_behind_and_outside():
    scene = syn.random_scene(10, 1, rng=1)
    cam = scene.cams_from_world[0]
    behind = cam.center + 2.0 * (cam.center - 0.0)  # further away from the scene, behind the camera
    far_side = cam.inverse().apply(np.array([100.0, 0.0, 1.0]))  # in front but far outside the image
    pts = np.vstack([scene.points_in_world[:1], behind, far_side])
    px, depth = syn.project_points(scene.K, cam, pts)
    assert depth[0] > 0 and depth[1] < 0 and depth[2] > 0
    assert px[2, 0] > 640


def test_look_at_axes():
    cam = syn.look_at(np.array([0.0, -5.0, 0.0]), np.zeros(3))
    np.testing.assert_allclose(cam.rotation[2], [0.0, 1.0, 0.0], atol=1e-12)  # z forward
    np.testing.assert_allclose(cam.rotation[1], [0.0, 0.0, -1.0], atol=1e-12)  # y down = -up
    np.testing.assert_allclose(cam.rotation[0], [1.0, 0.0, 0.0], atol=1e-12)  # x right
    straight_down = syn.look_at(np.array([0.0, 0.0, 5.0]), np.zeros(3))
    assert np.linalg.det(straight_down.rotation) > 0.999


def test_noise_and_outliers():
    px = np.zeros((2000, 2))
    noisy = syn.add_pixel_noise(px, 2.0, rng=1)
    assert abs(noisy.std() - 2.0) < 0.1
    np.testing.assert_array_equal(syn.add_pixel_noise(px, 0.0), px)
    px = np.random.default_rng(0).uniform(0, 400, size=(100, 2))
    out, mask = syn.add_outliers(px, 0.3, 640, 480, rng=2, min_distance_px=20.0)
    assert mask.sum() == 30
    np.testing.assert_array_equal(out[~mask], px[~mask])
    assert np.all(np.linalg.norm(out[mask] - px[mask], axis=1) >= 20.0)
    assert np.all((out >= -0.5) & (out < [639.5, 479.5]))
    with pytest.raises(InputError):
        syn.add_outliers(px, 1.5, 640, 480)
    with pytest.raises(InputError):
        syn.add_pixel_noise(px, -1.0)


@pytest.mark.parametrize("planar", [False, True])
def test_two_view_correspondences(planar):
    data = syn.two_view_correspondences(300, outlier_ratio=0.25, planar=planar, rng=8)
    assert data.x1_px.shape == (300, 2) and data.x2_px.shape == (300, 2)
    assert abs(np.linalg.norm(data.cam2_from_cam1.translation) - 1.0) < 1e-12
    assert data.inlier_mask.sum() == 225
    # inliers satisfy the epipolar constraint exactly, outliers are >= 10 px off their epipolar line
    F = data.fundamental
    lines = np.c_[data.x1_px, np.ones(300)] @ F.T
    dist = np.abs(np.sum(lines[:, :2] * data.x2_px, 1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1)
    assert dist[data.inlier_mask].max() < 1e-8
    assert dist[~data.inlier_mask].min() >= 10.0
    # inlier pixels are exact projections of points in front of both cameras, inside both images
    x1, d1 = syn.project_points(data.K, Rigid3d(), data.points_in_cam1)
    x2, d2 = syn.project_points(data.K, data.cam2_from_cam1, data.points_in_cam1)
    np.testing.assert_allclose(x1, data.x1_px, atol=1e-9)
    np.testing.assert_allclose(x2[data.inlier_mask], data.x2_px[data.inlier_mask], atol=1e-9)
    assert (d1 > 0).all() and (d2 > 0).all()
    assert np.all((data.x2_px >= -0.5) & (data.x2_px < [639.5, 479.5]))
    # a useful baseline: median triangulation angle of several degrees
    c2 = data.cam2_from_cam1.center
    angles = angle_between_vectors_deg(-data.points_in_cam1, c2 - data.points_in_cam1)
    assert 3.0 < np.median(angles) < 20.0
    if planar:
        X = data.points_in_cam1 - data.points_in_cam1.mean(0)
        assert np.linalg.svd(X, compute_uv=False)[2] < 1e-9
    E = data.essential
    xn1 = np.c_[data.x1_px, np.ones(300)] @ np.linalg.inv(data.K).T
    xn2 = np.c_[data.x2_px, np.ones(300)] @ np.linalg.inv(data.K).T
    assert np.abs(np.sum((xn2 @ E) * xn1, axis=1))[data.inlier_mask].max() < 1e-12


def test_two_view_noise_is_applied():
    clean = syn.two_view_correspondences(500, rng=4)
    noisy = syn.two_view_correspondences(500, noise_px=1.0, rng=4)
    diff = np.concatenate([noisy.x1_px - clean.x1_px, noisy.x2_px - clean.x2_px])
    assert abs(diff.std() - 1.0) < 0.05


def test_random_texture_deterministic():
    a = syn.random_texture(128, rng=3)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, syn.random_texture(128, rng=3))
    assert a.std() > 20  # textured, not flat


@pytest.fixture(scope="module")
def rendered():
    return syn.render_scene_images(3, width=320, height=240, rng=2)


def test_render_scene_images_shapes_and_determinism(rendered):
    assert len(rendered.images) == 3 and len(rendered.cams_from_world) == 3
    for img, depth in zip(rendered.images, rendered.depth_maps, strict=True):
        assert img.shape == (240, 320, 3) and img.dtype == np.uint8
        assert depth.shape == (240, 320)
        assert np.isfinite(depth).mean() > 0.8  # mostly scene, little sky
    np.testing.assert_allclose(rendered.K[0, 0], 1.2 * 320)
    again = syn.render_scene_images(3, width=320, height=240, rng=2)
    for a, b in zip(rendered.images, again.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_render_depth_is_consistent_with_geometry(rendered):
    """Ground pixels: depth back-projects onto z = 0; transfers between views land on the same colour."""
    K_inv = np.linalg.inv(rendered.K)
    cam = rendered.cams_from_world[0]
    rows, cols = np.nonzero(np.isfinite(rendered.depth_maps[0]))
    px = np.c_[cols, rows].astype(float)
    X_cam = (np.c_[px, np.ones(len(px))] @ K_inv.T) * rendered.depth_maps[0][rows, cols][:, None]
    X_world = cam.inverse().apply(X_cam)
    # every visible surface is the ground (z = 0) or a box (z in [0, 1.4]) within the 16x16 ground
    assert X_world[:, 2].min() > -1e-3 and X_world[:, 2].max() < 1.41
    assert np.abs(X_world[:, :2]).max() <= 8.0 + 1e-3
    on_ground = np.abs(X_world[:, 2]) < 1e-3
    assert on_ground.mean() > 0.3
    # photo-consistency: transferred pixels into view 1 have the same colour (up to interpolation)
    sample = np.random.default_rng(0).choice(len(px), 2000, replace=False)
    px_j, valid = rendered.transfer(0, 1, px[sample])
    assert valid.mean() > 0.5
    src = rendered.images[0][rows[sample][valid], cols[sample][valid]].astype(float)
    dst_px = np.rint(px_j[valid]).astype(int)
    dst = rendered.images[1][dst_px[:, 1], dst_px[:, 0]].astype(float)
    assert np.median(np.abs(src - dst)) < 12.0


def test_bad_arguments():
    with pytest.raises(InputError):
        syn.random_scene(10, 2, layout="spiral")
    with pytest.raises(InputError):
        syn.random_scene(10, 2, structure="torus")
    with pytest.raises(InputError):
        syn.random_scene(0, 2)
    with pytest.raises(InputError):
        syn.two_view_correspondences(10, outlier_ratio=2.0)
    with pytest.raises(InputError):
        syn.as_rng("seed")
    with pytest.raises(InputError):
        syn.intrinsics_matrix(-1.0, 640, 480)


def test_two_view_pure_rotation():
    data = syn.two_view_correspondences(200, pure_rotation=True, outlier_ratio=0.2, rng=6)
    np.testing.assert_array_equal(data.cam2_from_cam1.translation, np.zeros(3))
    angle = np.degrees(np.linalg.norm(data.cam2_from_cam1.rotvec))
    assert 8.0 <= angle <= 12.0
    H = data.K @ data.cam2_from_cam1.rotation @ np.linalg.inv(data.K)
    mapped = np.c_[data.x1_px, np.ones(200)] @ H.T
    dist = np.linalg.norm(mapped[:, :2] / mapped[:, 2:] - data.x2_px, axis=1)
    assert dist[data.inlier_mask].max() < 1e-9
    assert dist[~data.inlier_mask].min() >= 10.0 and (~data.inlier_mask).sum() == 40
    np.testing.assert_array_equal(data.fundamental, np.zeros((3, 3)))
