"""A new user's first hour (issue #21): odd files, mixed image sizes, missing system libraries,
interruptions, the report's first screen, several models, and exports other tools take as they are.

One reconstruction of the sample's photos in a hostile folder (module fixture, images downscaled to
512 px for speed) serves the hostile-folder, report, evaluate and export tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from process_helpers import default_sigint, finished_features
from recon_fixtures import ring_reconstruction
from reliability_images import fast_config, write_set

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d, Sim3d, rotvec_to_matrix
from geomvision.io.camera_setup import scale_pinhole, setup_cameras
from geomvision.io.colmap import read_model
from geomvision.io.images import scan_images
from geomvision.scene import Reconstruction

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "fountain_small"
sys.path.insert(0, str(REPO / "scripts"))


def run_cli(*args, timeout: float = 300, env: dict | None = None, cwd: Path = REPO):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("GEOMVISION_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "geomvision", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


def make_hostile_folder(folder: Path) -> None:
    """The sample's photos plus what real folders hold: a PNG named .jpg, an empty file, a macOS
    resource fork, Windows/notes files and a sub-folder (holding another image, which is not used)."""
    folder.mkdir(parents=True)
    for path in sorted((SAMPLE / "images").glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    image = cv2.imread(str(folder / "0003.jpg"))
    ok, png = cv2.imencode(".png", image)
    assert ok
    (folder / "0003.jpg").write_bytes(png.tobytes())  # a PNG, still named .jpg
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "._0000.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4000))
    (folder / "Thumbs.db").write_bytes(bytes(512))
    (folder / "notes.txt").write_text("shot on a tripod\n")
    (folder / "sub").mkdir()
    shutil.copy(SAMPLE / "images" / "0000.jpg", folder / "sub" / "0000.jpg")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    images, out = root / "images", root / "out"
    make_hostile_folder(images)
    proc = run_cli(
        "reconstruct", images, "-o", out, "--no-progress", "--workers", "2", "--max-image-size", "512"
    )
    return images, out, proc


# --- 1. images ---------------------------------------------------------------------------------------------
def test_hostile_folder_reconstructs_every_usable_photo(hostile_run):
    images, out, proc = hostile_run
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert {s["name"]: s["reason"].split(" ")[0] for s in report["skipped_images"]} == {
        "._0000.jpg": "macOS",
        "empty.jpg": "empty",
    }
    assert report["ignored_files"] == ["Thumbs.db", "notes.txt", "sub/"]
    assert report["num_images"] == 11
    assert report["num_registered"] == 11 and "0003.jpg" in report["registered_images"]
    warnings = [line for line in proc.stderr.splitlines() if "skipping" in line]
    assert len(warnings) == 2 and "Traceback" not in proc.stderr, proc.stderr  # one line per bad file
    assert "registered 11/11 images in 1 model" in proc.stdout
    # evaluate finds the ground truth in the dataset folder (gt_cameras/) as --help promises
    ev = run_cli("evaluate", out, "--gt", SAMPLE)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["num_registered"] == 11 and result["auc@5"] > 0.8, result


def test_scan_images_decodes_by_content(tmp_path):
    make_hostile_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cut.jpg").write_bytes((SAMPLE / "images" / "0001.jpg").read_bytes()[:-3000])
    scan = scan_images(tmp_path / "imgs")
    assert [p.name for p in scan.paths] == [f"{k:04d}.jpg" for k in range(11)]
    assert {s.name for s in scan.skipped} == {"._0000.jpg", "empty.jpg", "cut.jpg"}
    with pytest.raises(InputError, match=r"\._0000\.jpg.*resource fork"):
        scan_images(tmp_path / "imgs", strict=True)


def test_fewer_than_two_usable_images_is_one_clear_line(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(SAMPLE / "images" / "0000.jpg", imgs / "a.jpg")
    (imgs / "b.jpg").write_bytes(b"")
    proc = run_cli("reconstruct", imgs, "-o", tmp_path / "out", "--no-progress", "--workers", "1")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("geomvision:")]
    assert len(errors) == 1 and "need at least 2 usable images" in errors[0] and "b.jpg" in errors[0]


def test_failed_rerun_keeps_the_successful_report(tmp_path):
    from geomvision.pipeline import run_pipeline

    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_set(imgs, 3)
    run_pipeline(imgs, out, fast_config())
    (out / "export").mkdir()
    (out / "export" / "stale.txt").write_text("from an older model")
    (imgs / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png"):
        run_pipeline(imgs, out, fast_config(strict=True))
    assert json.loads((out / "report.json").read_text())["status"] == "success"
    failed = json.loads((out / "report.failed.json").read_text())
    assert failed["status"] == "failed" and "bad.png" in failed["error"]
    result = run_pipeline(imgs, out, fast_config())  # skips bad.png, succeeds
    assert [s["name"] for s in result.report["skipped_images"]] == ["bad.png"]
    assert not (out / "report.failed.json").exists()
    assert not (out / "export").exists()  # exports of the older model do not survive


# --- 2. intrinsics on mixed image sizes -----------------------------------------------------------------------
SIZES = ((640, 427), (768, 512), (1152, 768))


def _gt_K_768() -> np.ndarray:
    """Ground-truth K of the 768x512 sample (full-resolution Strecha K scaled by 1/4, pixel centres)."""
    from geomvision.evaluation import load_ground_truth

    gt = load_ground_truth(SAMPLE / "gt_cameras", image_sizes={f"{k:04d}.jpg": (768, 512) for k in range(11)})
    return gt["0000.jpg"].K


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory) -> Path:
    """The sample's photos resized to three sizes (same aspect ratio), in turn."""
    folder = tmp_path_factory.mktemp("mixed") / "images"
    folder.mkdir()
    for k, path in enumerate(sorted((SAMPLE / "images").glob("*.jpg"))):
        size = SIZES[k % 3]
        image = cv2.imread(str(path))
        cv2.imwrite(str(folder / path.name), cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    return folder


def test_mixed_sizes_with_intrinsics_error_or_scaled_cameras(mixed_sizes):
    paths = sorted(mixed_sizes.glob("*.jpg"))
    ids = list(range(1, len(paths) + 1))
    K = _gt_K_768()
    known = (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    with pytest.raises(InputError, match="3 sizes.*--intrinsics-size"):
        setup_cameras(paths, ids, intrinsics=known)
    with pytest.raises(InputError, match="--scale-intrinsics"):
        setup_cameras(paths, ids, intrinsics=known, intrinsics_size_px=(768, 512))
    cameras, camera_of = setup_cameras(
        paths, ids, intrinsics=known, intrinsics_size_px=(768, 512), scale_intrinsics=True
    )
    assert len(cameras) == 3
    for image_id, path in zip(ids, paths, strict=True):
        camera = cameras[camera_of[image_id]]
        h, w = cv2.imread(str(path)).shape[:2]
        assert (camera.width, camera.height) == (w, h)
        # K of a w-wide image, from the full-resolution ground truth (3072 px wide) directly
        s = w / 768.0
        expected = np.array([[s, 0, (s - 1) / 2], [0, h / 512.0, (h / 512.0 - 1) / 2], [0, 0, 1]]) @ K
        np.testing.assert_allclose(camera.K, expected, atol=1e-9)
    # shared estimated intrinsics: one camera per size, never one for all
    cameras, camera_of = setup_cameras(paths, ids, single_camera=True)
    assert sorted((c.width, c.height) for c in cameras.values()) == sorted(SIZES)


def test_intrinsics_conventions_and_scaling():
    assert scale_pinhole((100.0, 100.0, 49.5, 24.5), (100, 50), (200, 100)) == (200.0, 200.0, 99.5, 49.5)
    with pytest.raises(InputError, match="aspect ratio"):
        scale_pinhole((100.0, 100.0, 49.5, 24.5), (100, 50), (200, 50))
    from geomvision.io.camera_setup import to_opencv_principal_point

    assert to_opencv_principal_point(384.0, 256.0, "colmap") == (383.5, 255.5)
    assert to_opencv_principal_point(384.0, 256.0, "opencv") == (384.0, 256.0)


def test_cli_mixed_sizes_with_intrinsics_is_one_error_line(mixed_sizes, tmp_path):
    K = _gt_K_768()
    proc = run_cli(
        "reconstruct",
        mixed_sizes,
        "-o",
        tmp_path / "out",
        "--no-progress",
        "--intrinsics",
        f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "3 sizes" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_mixed_sizes_scaled_intrinsics_give_a_correct_model(mixed_sizes, tmp_path):
    K = _gt_K_768()
    out = tmp_path / "out"
    proc = run_cli(
        "reconstruct",
        mixed_sizes,
        "-o",
        out,
        "--no-progress",
        "--intrinsics",
        f"{K[0, 0] + 0.0},{K[1, 1]},{K[0, 2] + 0.5},{K[1, 2] + 0.5}",
        "--intrinsics-convention",
        "colmap",
        "--intrinsics-size",
        "768x512",
        "--scale-intrinsics",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_model(out).cameras) == 3
    ev = run_cli("evaluate", out, "--gt", SAMPLE)
    result = json.loads(ev.stdout)
    assert result["num_registered"] == 11 and result["auc@5"] > 0.85, result


# --- 3. system libraries -----------------------------------------------------------------------------------
def _broken_egl_env(tmp_path: Path) -> dict:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "libEGL.so.1").write_bytes(b"")  # found first, and unusable: as if libegl1 were missing
    return {"LD_LIBRARY_PATH": f"{shim}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}


def test_missing_libegl_is_named_fast(tmp_path):
    from geomvision.io.system_libraries import open3d_shared_objects

    if not open3d_shared_objects():
        pytest.skip("open3d not installed")
    code = "from geomvision.io.system_libraries import open3d_library_problem as p; print(p())"
    env = {**os.environ, "PYTHONPATH": str(REPO), **_broken_egl_env(tmp_path)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - t
    assert "libEGL.so.1" in proc.stdout and "apt-get install libegl1" in proc.stdout, proc.stdout
    assert elapsed < 2.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)), elapsed


def test_reconstruct_completes_without_libegl(tmp_path):
    from geomvision.io.system_libraries import open3d_shared_objects

    if not open3d_shared_objects():
        pytest.skip("open3d not installed")
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_set(imgs, 3)
    proc = run_cli(
        "reconstruct", imgs, "-o", out, "--no-progress", "--workers", "1", env=_broken_egl_env(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    named = [line for line in lines if "libegl1" in line]
    assert len(named) == 1 and lines[0] == named[0], proc.stderr  # one line, before any other output
    assert "Traceback" not in proc.stderr
    from geomvision.io.ply import read_point_cloud

    xyz, rgb = read_point_cloud(out / "points.ply")
    assert len(xyz) == json.loads((out / "report.json").read_text())["num_points3D"] > 0
    assert rgb is not None and (out / "report.html").is_file()


# --- 4. interruptions --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signum", "code", "group"), [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)]
)
def test_interrupt_one_line_and_exit_code(tmp_path, signum, code, group):
    """Ctrl-C (SIGINT to the whole process group, as a terminal does) and SIGTERM (to the main pid)."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_set(imgs, 4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "geomvision", "reconstruct", str(imgs), "-o", str(out), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while not finished_features(out) and time.monotonic() < deadline:
        time.sleep(0.02)
    (os.killpg if group else os.kill)(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [
        f"geomvision: interrupted ({signal.Signals(signum).name}); finished stages are cached, rerun to resume"
    ], stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["signal"] == signal.Signals(signum).name


# --- 5. report.html ----------------------------------------------------------------------------------------
def test_report_first_screen_in_chromium(hostile_run):
    from check_report_chromium import check_report, find_chromium

    _, out, proc = hostile_run
    assert proc.returncode == 0, proc.stderr
    doc = (out / "report.html").read_text()
    verdict = doc.index("id='verdict'")
    assert verdict < doc.index("id='render'") < doc.index("id='thumbnails'") < doc.index("<details")
    assert "Registered 11/11 images in 1 model" in doc and "skipped empty.jpg" in doc
    assert doc.count("class='thumb registered'") == 11 and doc.count("class='thumb skipped'") == 2
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed")
    result = check_report(out / "report.html", chromium, window=(1280, 800))
    assert result["images_ok"] == result["images_total"] > 11
    assert result["in_first_screen"], result["first_screen"]


def test_report_verdict_counts_every_model():
    from geomvision.commands.reconstruct import registered_summary
    from geomvision.viz.report import verdict

    rec = ring_reconstruction(6, 30)
    models = [{"num_registered": n} for n in (19, 12, 8, 6)]
    report = {"num_images": 47, "models": models, "num_registered_all_models": 45, "num_points3D": 900}
    report |= {"num_registered": 19, "mean_reprojection_error_px": 0.5, "timings_s": {"total": 12.0}}
    css, line = verdict(report, rec)
    assert line.startswith("Registered 45/47 images in 4 models (19, 12, 8, 6)") and css == "warn"
    assert registered_summary(report).startswith("registered 45/47 images in 4 models (19, 12, 8, 6)")
    report["models"][0] |= {"trusted": False, "trust_reasons": ["focal length implausible"]}
    css, line = verdict(report, rec)
    assert css == "bad" and "NOT trusted" in line


def test_robust_framing_ignores_far_sparse_points():
    from geomvision.viz.open3d_viewer import _project, auto_view

    rec = ring_reconstruction(8, 400, radius=4.0)
    far = np.random.default_rng(0).uniform(-1, 1, (12, 3)) + np.array([40.0, 0.0, 0.0])
    for xyz in far:  # 3 % of the points, ten times further out than the ring
        rec.add_point3D(xyz, [])
    view = auto_view(rec, aspect=4 / 3)
    subject = np.array([p.xyz for p in list(rec.points3D.values())[:400]])
    px, depth = _project(view, 800, 600, subject)
    span = px.max(0) - px.min(0)
    assert np.all(depth > 0) and span[0] > 0.2 * 800  # the subject fills the frame, not a corner


# --- 6. several models -------------------------------------------------------------------------------------
def test_evaluate_scores_every_model_and_their_aligned_union():
    from geomvision.evaluation import GroundTruthCamera, evaluate_models
    from geomvision.scene import View

    full = ring_reconstruction(8, 40)
    gt = {v.name: GroundTruthCamera(v.name, v.cam_from_world) for v in full.views.values()}
    models = []
    for k, ids in enumerate(([1, 2, 3, 4, 5], [6, 7, 8])):
        part = Reconstruction()
        part.add_camera(full.cameras[1])
        move = Sim3d(2.0 + k, rotvec_to_matrix(np.array([0.1, 0.4 * k, 0.2])), np.array([k, 3.0, -1.0]))
        for i in ids:
            pose = move.transform_pose(full.views[i].cam_from_world)
            part.add_view(View(i, full.views[i].name, 1, Rigid3d(pose.rotation, pose.translation)))
        models.append(part)
    result = evaluate_models(models, gt, thresholds_deg=(1.0, 5.0))
    assert result["num_models"] == 2 and result["num_models_in_union"] == 2
    assert result["num_registered"] == 8 and result["auc@1"] == pytest.approx(1.0)
    assert [m["num_registered"] for m in result["models"]] == [5, 3]
    # alone, each model is exact on its own pairs; pairs with images it lacks count as failures
    assert all(m["median_rotation_error_deg"] < 1e-6 for m in result["models"])
    assert result["models"][0]["auc@1"] == pytest.approx(10 / 28)  # 10 of the 28 pairs
    assert "union of 2 of 2 models" in result["scored"]


# --- 7. exports --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("SIMPLE_RADIAL", [700.0, 380.2, 250.7, -0.12]),
        ("RADIAL", [700.0, 380.2, 250.7, -0.12, 0.03]),
        ("OPENCV", [700.0, 705.0, 380.2, 250.7, -0.12, 0.03, 0.001, -0.002]),
        ("PINHOLE", [700.0, 705.0, 380.2, 250.7]),
    ],
)
def test_undistorted_pixels_look_along_the_same_rays(model, params):
    """An image whose pixels hold their own (x, y) is resampled to hold, at each pinhole pixel, the
    distorted pixel :meth:`Camera.project` gives for that pixel's ray."""
    from geomvision.io.undistort import pinhole_camera, undistort_image
    from geomvision.scene import Camera

    camera = Camera(1, model, 768, 512, params)
    x, y = np.meshgrid(np.arange(768, dtype=np.float32), np.arange(512, dtype=np.float32))
    out = undistort_image(np.dstack([x, y]), camera)
    pinhole = pinhole_camera(camera)
    v, u = np.mgrid[20:500:37, 20:750:41].reshape(2, -1)
    rays = np.column_stack([(u - pinhole.K[0, 2]) / pinhole.K[0, 0], (v - pinhole.K[1, 2]) / pinhole.K[1, 1]])
    expected = camera.project(np.column_stack([rays, np.ones(len(u))]))
    inside = np.all((expected >= 0) & (expected <= [767, 511]), axis=1)
    assert inside.sum() > 100
    # cv2.remap interpolates with 1/32-pixel weights: up to 1/64 px from the exact position
    np.testing.assert_allclose(out[v, u][inside], expected[inside], atol=1 / 64 + 1e-4)


def test_colmap_undistorted_export_reads_back_in_pycolmap(hostile_run, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    _, out, _ = hostile_run
    dest = tmp_path / "undistorted"
    proc = run_cli("export", out, "--format", "colmap-undistorted", "-o", dest)
    assert proc.returncode == 0, proc.stderr
    model = pycolmap.Reconstruction(str(dest / "sparse" / "0"))
    assert {c.model.name for c in model.cameras.values()} == {"PINHOLE"}
    assert model.num_reg_images() == 11 and model.num_points3D() > 1000
    for image in model.images.values():
        camera = model.cameras[image.camera_id]
        h, w = cv2.imread(str(dest / "images" / image.name)).shape[:2]
        assert (w, h) == (camera.width, camera.height)
    # the keypoints moved with the images: reprojection errors are those of the original model
    original, undistorted = read_model(out), read_model(dest / "sparse" / "0")
    assert undistorted.mean_reprojection_error_px() == pytest.approx(
        original.mean_reprojection_error_px(), abs=1e-3
    )
    # rerun: the folder is replaced whole (a stray file does not survive)
    (dest / "stray.txt").write_text("x")
    assert run_cli("export", out, "--format", "colmap-undistorted", "-o", dest).returncode == 0
    assert not (dest / "stray.txt").exists()


def test_nerfstudio_export_is_self_contained(hostile_run, tmp_path):
    """Schema test (nerfstudio needs torch, which this project never installs): the fields nerfstudio's
    ``nerfstudio-data`` dataparser reads, every ``file_path`` present relative to the folder, the sparse
    points as ``ply_file_path``, and the poses in the OpenGL camera convention."""
    _, out, _ = hostile_run
    dest = tmp_path / "ns"
    proc = run_cli("export", out, "--format", "nerfstudio", "-o", dest, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((dest / "transforms.json").read_text())
    rec = read_model(out)
    camera = rec.cameras[1]
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2"):
        assert isinstance(data[key], int | float), key
    assert data["camera_model"] == "OPENCV" and data["k1"] == data["k2"] == 0.0  # undistorted images
    assert (data["w"], data["h"]) == (camera.width, camera.height)
    assert data["cx"] == pytest.approx(camera.principal_point[0] + 0.5)  # pixel-corner origin
    assert len(data["frames"]) == 11
    for frame in data["frames"]:
        path = dest / frame["file_path"]
        assert not Path(frame["file_path"]).is_absolute() and path.is_file(), frame["file_path"]
        view = rec.view_by_name(Path(frame["file_path"]).name)
        c2w = np.asarray(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        np.testing.assert_allclose(c2w[:3, 3], view.cam_from_world.center, atol=1e-9)
        np.testing.assert_allclose(c2w[:3, :3], view.cam_from_world.rotation.T, atol=1e-9)
    from geomvision.io.ply import read_point_cloud

    xyz, rgb = read_point_cloud(dest / data["ply_file_path"])
    assert len(xyz) == len(rec.points3D) and rgb is not None
