"""COLMAP text/binary model I/O: exact round trips, pixel-origin shift, pycolmap interoperability, errors."""

from __future__ import annotations

import numpy as np
import pytest
from recon_fixtures import ring_reconstruction

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.io.colmap import find_model_folder, read_model, write_model
from geomvision.scene import Camera, Reconstruction, View


def assert_same_reconstruction(a: Reconstruction, b: Reconstruction, tol: float = 1e-12) -> None:
    assert sorted(a.cameras) == sorted(b.cameras)
    for cid, cam in a.cameras.items():
        other = b.cameras[cid]
        assert (cam.model, cam.width, cam.height) == (other.model, other.width, other.height)
        np.testing.assert_allclose(cam.params, other.params, rtol=0, atol=tol)
    assert a.registered_image_ids == b.registered_image_ids
    for iid in a.registered_image_ids:
        va, vb = a.views[iid], b.views[iid]
        assert (va.name, va.camera_id) == (vb.name, vb.camera_id)
        np.testing.assert_allclose(va.cam_from_world.rotation, vb.cam_from_world.rotation, rtol=0, atol=tol)
        np.testing.assert_allclose(
            va.cam_from_world.translation, vb.cam_from_world.translation, rtol=0, atol=tol
        )
        np.testing.assert_allclose(va.keypoints_px, vb.keypoints_px, rtol=0, atol=tol)
        np.testing.assert_array_equal(va.point3D_ids, vb.point3D_ids)
    assert sorted(a.points3D) == sorted(b.points3D)
    for pid, pa in a.points3D.items():
        pb = b.points3D[pid]
        np.testing.assert_allclose(pa.xyz, pb.xyz, rtol=0, atol=tol)
        np.testing.assert_array_equal(pa.color, pb.color)
        assert abs(pa.error - pb.error) <= tol
        assert sorted(pa.track) == sorted(pb.track)


def _mixed_camera_reconstruction() -> Reconstruction:
    """Ring model plus a second camera of each distorted model, to exercise every parameter layout."""
    rec = ring_reconstruction(num_views=6, num_points=25, rng=3)
    rec.add_camera(Camera(2, "OPENCV", 800, 600, [700.0, 705.0, 401.25, 299.5, -0.1, 0.02, 1e-3, -2e-4]))
    rec.add_camera(Camera(3, "SIMPLE_RADIAL", 320, 240, [300.0, 160.0, 120.0, 0.05]))
    rec.add_camera(Camera(4, "RADIAL", 320, 240, [310.0, 159.5, 119.5, 0.05, -0.01]))
    rec.add_camera(Camera(5, "SIMPLE_PINHOLE", 320, 240, [290.0, 161.0, 118.0]))
    for cid, view in zip((2, 3, 4, 5), list(rec.views.values())[:4], strict=False):
        view.camera_id = cid
    return rec


@pytest.mark.parametrize("binary", [False, True])
def test_round_trip_is_exact(tmp_path, binary):
    rec = _mixed_camera_reconstruction()
    write_model(rec, tmp_path / "m", binary=binary)
    ext = ".bin" if binary else ".txt"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        f"cameras{ext}",
        f"images{ext}",
        f"points3D{ext}",
    ]
    back = read_model(tmp_path / "m")
    assert_same_reconstruction(rec, back, tol=1e-12)
    assert back.next_point3D_id == max(rec.points3D) + 1


def test_text_and_binary_agree(tmp_path):
    rec = _mixed_camera_reconstruction()
    write_model(rec, tmp_path / "t")
    write_model(read_model(tmp_path / "t"), tmp_path / "b", binary=True)
    assert_same_reconstruction(read_model(tmp_path / "t"), read_model(tmp_path / "b"), tol=1e-14)


def test_pixel_origin_shift_in_files(tmp_path):
    rec = Reconstruction()
    rec.add_camera(Camera.pinhole(1, 100.0, 100.0, 49.5, 39.5, 100, 80))
    rec.add_view(View(1, "a.png", 1, Rigid3d(), np.array([[0.0, 0.0], [10.25, 20.0]])))
    write_model(rec, tmp_path)
    cam_line = [ln for ln in (tmp_path / "cameras.txt").read_text().splitlines() if not ln.startswith("#")][0]
    assert cam_line.split() == ["1", "PINHOLE", "100", "80", "100.0", "100.0", "50.0", "40.0"]
    lines = [ln for ln in (tmp_path / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    assert lines[0].split() == ["1", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "1", "a.png"]
    assert lines[1].split() == ["0.5", "0.5", "-1", "10.75", "20.5", "-1"]


def test_unregistered_views_and_empty_points_lines(tmp_path):
    rec = ring_reconstruction(num_views=4, num_points=5)
    rec.views[2].cam_from_world = None  # drop a registration: view and its track elements are not written
    rec.add_view(View(9, "no_keypoints.png", 1, Rigid3d(), np.zeros((0, 2))))
    write_model(rec, tmp_path)
    back = read_model(tmp_path)
    assert back.registered_image_ids == [1, 3, 4, 9]
    assert len(back.views[9].keypoints_px) == 0
    for point in back.points3D.values():
        assert sorted({i for i, _ in point.track}) == [1, 3, 4]


def test_find_model_folder(tmp_path):
    rec = ring_reconstruction(num_views=3, num_points=4)
    write_model(rec, tmp_path / "out" / "sparse" / "0", binary=True)
    assert find_model_folder(tmp_path / "out") == tmp_path / "out" / "sparse" / "0"
    assert len(read_model(tmp_path / "out").points3D) == 4
    with pytest.raises(InputError, match="no COLMAP model"):
        find_model_folder(tmp_path)


@pytest.mark.parametrize(
    ("fname", "bad_line", "lineno", "pattern"),
    [
        ("cameras.txt", "1 PINHOLE 640 480 500 510 323", 4, r"cameras\.txt:4: PINHOLE takes 4 params, got 3"),
        (
            "cameras.txt",
            "1 FISHEYE_X 640 480 1 2 3",
            4,
            r"cameras\.txt:4: unsupported camera model 'FISHEYE_X'",
        ),
        ("points3D.txt", "1 0.1 0.2 abc 1 2 3 0.5 1 0", 4, r"points3D\.txt:4: bad XYZ"),
        ("points3D.txt", "1 0.1 0.2 0.3 1 2 3 0.5 1", 4, r"points3D\.txt:4: expected"),
    ],
)
def test_malformed_text_names_file_and_line(tmp_path, fname, bad_line, lineno, pattern):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path)
    path = tmp_path / fname
    lines = path.read_text().splitlines()
    lines[lineno - 1] = bad_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=pattern):
        read_model(tmp_path)


def test_malformed_points2D_line(tmp_path):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path)
    path = tmp_path / "images.txt"
    lines = path.read_text().splitlines()
    lines[5] = lines[5] + " 1.0"  # line 6 = first POINTS2D line; now not a multiple of 3
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"images\.txt:6: POINTS2D line has \d+ values"):
        read_model(tmp_path)


def test_truncated_binary(tmp_path):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path, binary=True)
    data = (tmp_path / "images.bin").read_bytes()
    (tmp_path / "images.bin").write_bytes(data[:-5])
    with pytest.raises(InputError, match=r"images\.bin: truncated at byte"):
        read_model(tmp_path)


def test_track_pointing_to_missing_image(tmp_path):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path)
    path = tmp_path / "points3D.txt"
    path.write_text(path.read_text() + "99 0 0 0 1 2 3 0.1 42 0 1 0\n")
    with pytest.raises(InputError, match="point3D 99 observes missing image 42"):
        read_model(tmp_path)


# -------------------------------------------------------------------------------------------------
# pycolmap interoperability
# -------------------------------------------------------------------------------------------------
def _compare_with_pycolmap(rec: Reconstruction, prec) -> None:
    assert sorted(prec.cameras) == sorted(rec.cameras)
    for cid, cam in rec.cameras.items():
        pcam = prec.cameras[cid]
        assert pcam.model.name == cam.model and (pcam.width, pcam.height) == (cam.width, cam.height)
        expected = cam.params.copy()
        expected[[cam.param_names.index("cx"), cam.param_names.index("cy")]] += 0.5
        np.testing.assert_allclose(pcam.params, expected, atol=1e-12)
    assert sorted(prec.reg_image_ids()) == rec.registered_image_ids
    for iid in rec.registered_image_ids:
        view, pim = rec.views[iid], prec.images[iid]
        assert pim.name == view.name and pim.camera_id == view.camera_id
        pose = pim.cam_from_world()
        np.testing.assert_allclose(pose.rotation.matrix(), view.cam_from_world.rotation, atol=1e-12)
        np.testing.assert_allclose(pose.translation, view.cam_from_world.translation, atol=1e-12)
        xy = np.array([p.xy for p in pim.points2D]).reshape(-1, 2)
        np.testing.assert_allclose(xy, view.keypoints_px + 0.5, atol=1e-12)
        ids = np.array([p.point3D_id if p.has_point3D() else -1 for p in pim.points2D])
        np.testing.assert_array_equal(ids, view.point3D_ids)
    assert sorted(prec.points3D) == sorted(rec.points3D)
    for pid, point in rec.points3D.items():
        pp = prec.points3D[pid]
        np.testing.assert_allclose(pp.xyz, point.xyz, atol=1e-12)
        np.testing.assert_array_equal(pp.color, point.color)
        assert sorted((e.image_id, e.point2D_idx) for e in pp.track.elements) == sorted(point.track)


@pytest.mark.parametrize("binary", [False, True])
def test_pycolmap_reads_our_model(tmp_path, binary):
    pycolmap = pytest.importorskip("pycolmap")
    rec = _mixed_camera_reconstruction()
    write_model(rec, tmp_path, binary=binary)
    _compare_with_pycolmap(rec, pycolmap.Reconstruction(str(tmp_path)))


@pytest.mark.parametrize("binary", [False, True])
def test_we_read_pycolmap_model(tmp_path, binary):
    pycolmap = pytest.importorskip("pycolmap")
    rec = _mixed_camera_reconstruction()
    write_model(rec, tmp_path / "ours")
    prec = pycolmap.Reconstruction(str(tmp_path / "ours"))
    (tmp_path / "theirs").mkdir()
    if binary:
        prec.write_binary(str(tmp_path / "theirs"))
    else:
        prec.write_text(str(tmp_path / "theirs"))
    back = read_model(tmp_path / "theirs")
    _compare_with_pycolmap(back, prec)
    assert_same_reconstruction(rec, back, tol=1e-12)


@pytest.mark.parametrize("binary", [False, True])
def test_model_without_points(tmp_path, binary):
    rec = ring_reconstruction(num_views=3, num_points=4)
    for pid in list(rec.points3D):
        rec.delete_point3D(pid)
    write_model(rec, tmp_path, binary=binary)
    back = read_model(tmp_path)
    assert back.points3D == {} and back.registered_image_ids == [1, 2, 3] and back.next_point3D_id == 1
    assert np.all(back.views[1].point3D_ids == -1)


@pytest.mark.parametrize(
    ("suffix", "pattern"),
    [
        (" 1 0.5", r"points3D\.txt:\d+: TRACK values must be integers"),
        (" 1", r"points3D\.txt:\d+: expected 'POINT3D_ID"),
    ],
)
def test_malformed_track(tmp_path, suffix, pattern):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path)
    path = tmp_path / "points3D.txt"
    lines = path.read_text().splitlines()
    lines[-1] += suffix
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=pattern):
        read_model(tmp_path)


def test_rgb_out_of_range(tmp_path):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path)
    path = tmp_path / "points3D.txt"
    lines = path.read_text().splitlines()
    tokens = lines[4].split()
    tokens[5] = "300"
    lines[4] = " ".join(tokens)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"points3D\.txt:5: RGB must be integers in 0\.\.255"):
        read_model(tmp_path)


@pytest.mark.parametrize("cut", [3, 30])
def test_truncated_points3D_binary(tmp_path, cut):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path, binary=True)
    data = (tmp_path / "points3D.bin").read_bytes()
    (tmp_path / "points3D.bin").write_bytes(data[:-cut])
    with pytest.raises(InputError, match=r"points3D\.bin: truncated at byte \d+"):
        read_model(tmp_path)
    (tmp_path / "points3D.bin").write_bytes(data + b"\0")
    with pytest.raises(InputError, match=r"points3D\.bin: 1 trailing bytes"):
        read_model(tmp_path)


@pytest.mark.parametrize(
    ("name", "edit", "pattern"),
    [
        (
            "cameras.txt",
            lambda t: t[:2],
            r"cameras\.txt:\d+: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS\.\.\.'",
        ),
        ("cameras.txt", lambda t: t[:2] + ["0"] + t[3:], r"cameras\.txt:\d+: camera size must be positive"),
        (
            "images.txt",
            lambda t: t[:9],
            r"images\.txt:\d+: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'",
        ),
    ],
)
def test_malformed_text_record(tmp_path, name, edit, pattern):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path)
    path = tmp_path / name
    lines = path.read_text().splitlines()
    first = next(k for k, line in enumerate(lines) if line and not line.startswith("#"))
    lines[first] = " ".join(edit(lines[first].split()))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=pattern):
        read_model(tmp_path)


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin"])
def test_binary_record_count_and_trailing_bytes(tmp_path, name):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path, binary=True)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data + b"\0\0")
    with pytest.raises(
        InputError, match=rf"{name.replace('.', '[.]')}: 2 trailing bytes after byte {len(data)}"
    ):
        read_model(tmp_path)
    (tmp_path / name).write_bytes(data[:-1])
    with pytest.raises(InputError, match=r"truncated at byte \d+"):
        read_model(tmp_path)


def test_binary_camera_error_names_the_record_offset(tmp_path):
    write_model(ring_reconstruction(num_views=3, num_points=4), tmp_path, binary=True)
    data = bytearray((tmp_path / "cameras.bin").read_bytes())
    data[8 + 8 : 8 + 16] = bytes(
        8
    )  # first record (after the uint64 count): int32 id, int32 model, uint64 width
    (tmp_path / "cameras.bin").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"cameras\.bin: byte 8: camera size must be positive"):
        read_model(tmp_path)


def _random_model(seed: int) -> Reconstruction:
    """Random cameras of every model, random poses/keypoints, random tracks (ids not contiguous)."""
    from geomvision.geometry.rigid import rotvec_to_matrix
    from geomvision.scene.camera import CAMERA_MODELS

    gen = np.random.default_rng(seed)
    rec = Reconstruction()
    models = sorted(CAMERA_MODELS)
    for cid in range(1, gen.integers(1, 4) + 1):
        model = models[gen.integers(len(models))]
        params = gen.normal(size=len(CAMERA_MODELS[model])) * 1e-2
        params[:3] = gen.uniform(100, 2000, size=3)
        rec.add_camera(Camera(cid * 7, model, int(gen.integers(1, 5000)), int(gen.integers(1, 5000)), params))
    cam_ids = sorted(rec.cameras)
    image_ids = sorted(gen.choice(10_000, size=int(gen.integers(1, 6)), replace=False).tolist())
    for iid in image_ids:
        pose = Rigid3d(rotvec_to_matrix(gen.normal(size=3)), gen.normal(size=3) * 10)
        kps = gen.uniform(-0.5, 4000, size=(int(gen.integers(0, 30)), 2))
        rec.add_view(View(iid, f"dir/im {iid}.jpg", cam_ids[gen.integers(len(cam_ids))], pose, kps))
    for _ in range(int(gen.integers(0, 20))):
        track = []
        for iid in image_ids:
            free = np.flatnonzero(rec.views[iid].point3D_ids < 0)
            if len(free) and gen.random() < 0.7:
                track.append((iid, int(free[0])))
        if track:
            rec.next_point3D_id += int(gen.integers(0, 1000))
            rec.add_point3D(
                gen.normal(size=3) * 100, track, gen.integers(0, 256, 3), float(gen.uniform(0, 3))
            )
    return rec


@pytest.mark.parametrize("binary", [False, True])
def test_random_models_round_trip(tmp_path, binary):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None)
    @given(st.integers(0, 2**32 - 1))
    def check(seed):
        rec = _random_model(seed)
        folder = tmp_path / f"m{seed}"
        write_model(rec, folder, binary=binary)
        assert_same_reconstruction(rec, read_model(folder), tol=1e-12)

    check()
