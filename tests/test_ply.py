"""PLY point clouds and camera frustum meshes through Open3D."""

from __future__ import annotations

import numpy as np
import pytest
from recon_fixtures import ring_reconstruction

from geomvision.errors import InputError
from geomvision.io.ply import read_point_cloud, write_point_cloud, write_reconstruction_ply
from geomvision.viz.geometry import camera_frustums, points_array
from geomvision.viz.scene_ply import write_camera_frustums_mesh, write_scene_ply


def test_point_cloud_round_trip(tmp_path, rng):
    xyz = rng.normal(size=(200, 3))
    rgb = rng.integers(0, 256, size=(200, 3)).astype(np.uint8)
    path = write_point_cloud(tmp_path / "c.ply", xyz, rgb)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian")
    xyz2, rgb2 = read_point_cloud(path)
    np.testing.assert_allclose(xyz2, xyz, atol=1e-12)
    np.testing.assert_array_equal(rgb2, rgb)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left behind


def test_point_cloud_without_colors(tmp_path, rng):
    xyz = rng.normal(size=(5, 3))
    write_point_cloud(tmp_path / "c.ply", xyz)
    xyz2, rgb2 = read_point_cloud(tmp_path / "c.ply")
    np.testing.assert_allclose(xyz2, xyz, atol=1e-12)
    assert rgb2 is None


@pytest.mark.parametrize(
    ("xyz", "rgb", "pattern"),
    [
        (np.zeros((4, 2)), None, r"xyz must be \(N, 3\), got shape \(4, 2\)"),
        (np.full((2, 3), np.nan), None, "NaN"),
        (np.zeros((4, 3)), np.zeros((3, 3), np.uint8), "rgb must be"),
        (np.zeros((2, 3)), np.full((2, 3), 2.0), r"float rgb must lie in \[0, 1\]"),
    ],
)
def test_bad_input(tmp_path, xyz, rgb, pattern):
    with pytest.raises(InputError, match=pattern):
        write_point_cloud(tmp_path / "c.ply", xyz, rgb)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_point_cloud(tmp_path / "nope.ply")


def test_frustum_geometry_matches_projection():
    rec = ring_reconstruction(num_views=5, num_points=10)
    fr = camera_frustums(rec, scale=0.7)
    assert fr.vertices.shape == (25, 3) and fr.lines.shape == (40, 2) and fr.triangles.shape == (30, 3)
    for c, image_id in enumerate(fr.image_ids):
        view = rec.views[int(image_id)]
        cam = rec.cameras[view.camera_id]
        np.testing.assert_allclose(fr.vertices[5 * c], view.cam_from_world.center, atol=1e-12)
        corners_cam = view.cam_from_world.apply(fr.vertices[5 * c + 1 : 5 * c + 5])
        px = corners_cam @ cam.K.T
        px = px[:, :2] / px[:, 2:]
        expected = [
            [-0.5, -0.5],
            [cam.width - 0.5, -0.5],
            [cam.width - 0.5, cam.height - 0.5],
            [-0.5, cam.height - 0.5],
        ]
        np.testing.assert_allclose(px, expected, atol=1e-9)
        # farthest corner at exactly the requested depth from the centre
        assert np.isclose(np.linalg.norm(corners_cam, axis=1).max(), 0.7)


def test_frustum_mesh_and_scene_ply(tmp_path):
    import open3d as o3d

    rec = ring_reconstruction(num_views=6, num_points=40)
    write_camera_frustums_mesh(tmp_path / "f.ply", rec, scale=0.5)
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "f.ply"))
    assert len(mesh.vertices) == 30 and len(mesh.triangles) == 36
    np.testing.assert_allclose(np.asarray(mesh.vertices), camera_frustums(rec, scale=0.5).vertices, atol=1e-6)

    write_scene_ply(tmp_path / "s.ply", rec, scale=0.5)
    scene = o3d.io.read_triangle_mesh(str(tmp_path / "s.ply"))
    assert len(scene.vertices) == 40 + 30 and len(scene.triangles) == 36
    assert np.asarray(scene.triangles).min() == 40  # faces reference only frustum vertices
    xyz, rgb = read_point_cloud(tmp_path / "s.ply")
    ref_xyz, ref_rgb = points_array(rec)
    np.testing.assert_allclose(xyz[:40], ref_xyz, atol=1e-6)  # float32 vertices in mesh PLY
    np.testing.assert_array_equal(rgb[:40], ref_rgb)


def test_reconstruction_ply(tmp_path):
    rec = ring_reconstruction(num_views=3, num_points=12)
    write_reconstruction_ply(tmp_path / "points.ply", rec)
    xyz, rgb = read_point_cloud(tmp_path / "points.ply")
    ref_xyz, ref_rgb = points_array(rec)
    np.testing.assert_allclose(xyz, ref_xyz, atol=1e-12)
    np.testing.assert_array_equal(rgb, ref_rgb)


def test_not_a_ply(tmp_path):
    (tmp_path / "x.ply").write_bytes(b"hello world")
    with pytest.raises(InputError, match="not a PLY file"):
        read_point_cloud(tmp_path / "x.ply")


def test_empty_cloud_round_trip(tmp_path):
    write_point_cloud(tmp_path / "e.ply", np.zeros((0, 3)))
    xyz, rgb = read_point_cloud(tmp_path / "e.ply")
    assert xyz.shape == (0, 3) and rgb is None
