"""nerfstudio transforms.json export/import."""

from __future__ import annotations

import json

import numpy as np
import pytest
from recon_fixtures import ring_reconstruction

from geomvision.errors import InputError
from geomvision.io.nerfstudio import read_transforms_json, write_transforms_json
from geomvision.io.ply import read_point_cloud
from geomvision.scene import Camera


def test_opengl_convention_and_intrinsics(tmp_path):
    rec = ring_reconstruction(num_views=6, num_points=10)
    path = write_transforms_json(rec, tmp_path)
    data = json.loads(path.read_text())
    cam = rec.cameras[1]
    assert data["camera_model"] == "OPENCV" and (data["w"], data["h"]) == (640, 480)
    assert data["fl_x"] == 500.0 and data["fl_y"] == 510.0
    assert data["cx"] == cam.params[2] + 0.5 and data["cy"] == cam.params[3] + 0.5
    assert len(data["frames"]) == 6
    for frame in data["frames"]:
        view = rec.views[frame["colmap_im_id"]]
        assert frame["file_path"] == f"images/{view.name}"
        c2w = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(c2w[:3, 3], view.cam_from_world.center, atol=1e-12)
        np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
        # OpenGL: the camera looks along -z (towards the ring centre) and +y is up (OpenCV y is down)
        forward = -c2w[:3, 2]
        to_origin = -view.cam_from_world.center / np.linalg.norm(view.cam_from_world.center)
        np.testing.assert_allclose(forward, to_origin, atol=1e-12)
        np.testing.assert_allclose(c2w[:3, 1], -view.cam_from_world.rotation[1], atol=1e-12)
    xyz, _ = read_point_cloud(tmp_path / data["ply_file_path"])
    assert len(xyz) == 10


def test_round_trip_single_camera(tmp_path):
    rec = ring_reconstruction(num_views=5, num_points=3)
    back = read_transforms_json(write_transforms_json(rec, tmp_path / "t.json", write_points_ply=False))
    assert not (tmp_path / "sparse_pc.ply").exists()
    assert len(back.cameras) == 1
    cam = back.cameras[1]
    assert cam.model == "PINHOLE"
    np.testing.assert_allclose(cam.params, rec.cameras[1].params, atol=1e-12)
    for image_id, view in rec.views.items():
        other = back.views[image_id]
        assert other.name == view.name
        np.testing.assert_allclose(other.cam_from_world.matrix(), view.cam_from_world.matrix(), atol=1e-12)


def test_round_trip_several_cameras(tmp_path):
    rec = ring_reconstruction(num_views=4, num_points=3)
    rec.add_camera(Camera(2, "OPENCV", 800, 600, [700.0, 705.0, 401.25, 299.5, -0.1, 0.02, 1e-3, -2e-4]))
    rec.views[2].camera_id = 2
    data = json.loads(write_transforms_json(rec, tmp_path).read_text())
    assert "fl_x" not in data and all("fl_x" in f for f in data["frames"])
    back = read_transforms_json(tmp_path)
    assert len(back.cameras) == 2
    opencv = back.cameras[back.views[2].camera_id]
    assert opencv.model == "OPENCV"
    np.testing.assert_allclose(opencv.params, rec.cameras[2].params, atol=1e-12)
    assert back.cameras[back.views[1].camera_id].model == "PINHOLE"


def test_bad_files(tmp_path):
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        read_transforms_json(tmp_path)
    (tmp_path / "transforms.json").write_text(
        json.dumps(
            {
                "fl_x": 1,
                "fl_y": 1,
                "cx": 1,
                "cy": 1,
                "w": 2,
                "h": 2,
                "frames": [{"transform_matrix": [[1, 2]]}],
            }
        )
    )
    with pytest.raises(InputError, match=r"frame 0: transform_matrix must be a finite 4x4 matrix"):
        read_transforms_json(tmp_path)
    (tmp_path / "transforms.json").write_text(
        json.dumps({"frames": [{"transform_matrix": np.eye(4).tolist()}]})
    )
    with pytest.raises(InputError, match="missing intrinsics"):
        read_transforms_json(tmp_path)


def test_applied_transform_is_undone(tmp_path):
    """ns-process-data style: world axes permuted (x, z, -y) and recorded as applied_transform."""
    rec = ring_reconstruction(num_views=4, num_points=3)
    path = write_transforms_json(rec, tmp_path, write_points_ply=False)
    data = json.loads(path.read_text())
    A = np.eye(4)[[0, 2, 1, 3]]
    A[2] *= -1
    for frame in data["frames"]:
        frame["transform_matrix"] = (A @ np.array(frame["transform_matrix"])).tolist()
    data["applied_transform"] = A[:3].tolist()
    path.write_text(json.dumps(data))
    back = read_transforms_json(path)
    for image_id, view in rec.views.items():
        np.testing.assert_allclose(
            back.views[image_id].cam_from_world.matrix(), view.cam_from_world.matrix(), atol=1e-12
        )
    del data["applied_transform"]
    path.write_text(json.dumps(data))
    moved = read_transforms_json(path)  # without it, the centres are in the permuted world
    np.testing.assert_allclose(
        moved.views[1].cam_from_world.center, A[:3, :3] @ rec.views[1].cam_from_world.center, atol=1e-12
    )
