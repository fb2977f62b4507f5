"""Bad input through the Python API (``geomvision.pipeline.run_pipeline`` / ``reconstruct``).

Every failing case must raise a specific exception type with a one-line message naming the problem,
keep the caches of the stages that finished and record the failure in ``OUT/report.json``. Unusual but
valid inputs (16-bit, grayscale, RGBA, palette, huge, tiny, mixed sizes, odd names, duplicates, a
planar scene) must reconstruct.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from reliability_images import (
    HEIGHT,
    WIDTH,
    encode,
    fast_config,
    palette_png,
    planar_views,
    render,
    rotation_views,
    write_image,
)

from geomvision.config import ReconstructionConfig
from geomvision.errors import InputError, ReconstructionError
from geomvision.pipeline import reconstruct, run_pipeline


@pytest.fixture(scope="module")
def views() -> list[np.ndarray]:
    """Four overlapping 320x240 RGB views of one textured scene (rendered once per module)."""
    return render(4).images


def _write_views(folder: Path, views, names=None, suffix=".png") -> list[Path]:
    names = names or [f"view_{k}{suffix}" for k in range(len(views))]
    return [write_image(folder / n, v) for n, v in zip(names, views, strict=True)]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _cache_files(out: Path, stage: str) -> list[Path]:
    return sorted((out / "cache" / stage).glob("*"))


def _assert_success(out: Path, num_registered: int, num_images: int | None = None) -> dict:
    report = _report(out)
    assert report["status"] == "success"
    assert report["num_registered"] == num_registered
    if num_images is not None:
        assert report["num_images"] == num_images
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        assert (out / "sparse" / "0" / name).stat().st_size > 0
    assert report["num_points3D"] > 50
    return report


# --- folders and files that are not a usable image set ----------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        run_pipeline(tmp_path / "nope", tmp_path / "out", fast_config())
    assert "nope" in _one_line(info.value)


def test_empty_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(InputError, match="contains no images") as info:
        run_pipeline(tmp_path / "imgs", tmp_path / "out", fast_config())
    _one_line(info.value)
    # The failure is recorded even though no stage ran.
    assert _report(tmp_path / "out")["status"] == "failed"


def test_only_non_image_files(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "notes.txt").write_text("hello")
    (imgs / "data.csv").write_text("1,2,3")
    (imgs / "sub.jpg").mkdir()  # a folder named like an image is skipped, not read
    with pytest.raises(InputError, match="contains no images"):
        run_pipeline(imgs, tmp_path / "out", fast_config())


def test_one_image(tmp_path, views):
    _write_views(tmp_path / "imgs", views[:1])
    with pytest.raises(InputError, match="need at least 2 usable images.*found 1") as info:
        reconstruct(tmp_path / "imgs", tmp_path / "out", fast_config())
    _one_line(info.value)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("z_corrupt.jpg", lambda good: np.random.default_rng(1).bytes(3000) + b"\xff\xd9", "corrupt"),
        ("z_trunc.jpg", lambda good: encode(good, ".jpg")[:-2000], "truncated"),
        ("z_trunc.png", lambda good: encode(good, ".png")[: len(encode(good, ".png")) // 2], "truncated"),
        ("z_empty.png", lambda good: b"", "empty"),
    ],
    ids=["corrupt-jpeg", "truncated-jpeg", "truncated-png", "empty-file"],
)
def test_bad_image_file_is_skipped_or_strict_aborts(tmp_path, views, name, make, message):
    """A bad image is skipped and listed in report.json; ``strict`` aborts before any work instead."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _write_views(imgs, views)
    (imgs / name).write_bytes(make(views[0]))
    with pytest.raises(InputError, match=message) as info:
        run_pipeline(imgs, out, fast_config(strict=True))
    assert name in _one_line(info.value)
    report = _report(out)
    assert report["status"] == "failed" and report["error_type"] == "InputError"
    assert name in report["error"] and report["failed_stage"] == "setup"
    assert not _cache_files(out, "features")  # nothing was extracted before the check

    result = run_pipeline(imgs, out, fast_config())
    assert [s["name"] for s in result.report["skipped_images"]] == [name]
    assert message in result.report["skipped_images"][0]["reason"]
    assert result.report["num_images"] == len(views)
    assert len(_cache_files(out, "features")) == len(views)
    assert _report(out)["status"] == "success"


def test_unreadable_image(tmp_path, views, monkeypatch):
    """Tests run as root, where chmod 000 does not block reads: simulate EACCES on one file."""
    imgs = tmp_path / "imgs"
    paths = _write_views(imgs, views)
    blocked = paths[2]
    if os.geteuid() != 0:
        blocked.chmod(0)
    else:
        real_read_bytes = Path.read_bytes

        def read_bytes(self):
            if self == blocked:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(InputError, match="Permission denied") as info:
        run_pipeline(imgs, tmp_path / "out", fast_config(strict=True))
    assert blocked.name in _one_line(info.value)


def test_output_folder_is_a_file(tmp_path, views):
    _write_views(tmp_path / "imgs", views[:2])
    (tmp_path / "out").write_text("I am a file")
    with pytest.raises(InputError, match="exists and is not a folder") as info:
        run_pipeline(tmp_path / "imgs", tmp_path / "out", fast_config())
    _one_line(info.value)
    assert (tmp_path / "out").read_text() == "I am a file"


# --- options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("intrinsics", "message"),
    [
        ((float("nan"), 300.0, 160.0, 120.0), "finite"),
        ((300.0, float("inf"), 160.0, 120.0), "finite"),
        ((-300.0, 300.0, 160.0, 120.0), "positive"),
        ((300.0, 300.0, 160.0), "4 finite numbers"),
    ],
    ids=["nan", "inf", "negative-focal", "three-numbers"],
)
def test_bad_intrinsics_option(intrinsics, message):
    with pytest.raises(InputError, match=message) as info:
        ReconstructionConfig().with_changes(pipeline={"intrinsics": intrinsics})
    _one_line(info.value)


def test_principal_point_outside_image(tmp_path, views):
    _write_views(tmp_path / "imgs", views[:2])
    config = fast_config(intrinsics=(384.0, 384.0, 5000.0, 120.0))
    with pytest.raises(InputError, match="principal point.*outside") as info:
        run_pipeline(tmp_path / "imgs", tmp_path / "out", config)
    assert "5000" in _one_line(info.value)


# --- images that cannot give a model -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["black", "textureless"])
def test_blank_images(tmp_path, kind):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    ramp = np.linspace(60, 200, WIDTH, dtype=np.uint8)[None, :, None]
    image = (
        np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        if kind == "black"
        else np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)).copy()
    )
    for k in range(3):
        write_image(imgs / f"{kind}_{k}.png", image)
    with pytest.raises(ReconstructionError, match="blank or textureless") as info:
        run_pipeline(imgs, out, fast_config())
    _one_line(info.value)
    report = _report(out)
    assert report["failed_stage"] == "features" and report["features"]["min"] == 0


def test_no_overlap_keeps_features_and_matches(tmp_path):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_image(imgs / "a.png", render(1, seed=1).images[0])
    write_image(imgs / "b.png", render(1, seed=2).images[0])
    with pytest.raises(ReconstructionError, match="no image pair could be verified") as info:
        run_pipeline(imgs, out, fast_config())
    _one_line(info.value)
    report = _report(out)
    assert report["status"] == "failed" and report["failed_stage"] == "verification"
    assert report["verification"]["num_verified"] == 0
    assert len(_cache_files(out, "features")) == 2 and len(_cache_files(out, "matches")) == 1
    assert len(_cache_files(out, "two_view")) == 1


def test_pure_rotation_fails_in_mapping_with_caches(tmp_path):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    for k, view in enumerate(rotation_views(4)):
        write_image(imgs / f"rot_{k}.png", view)
    with pytest.raises(ReconstructionError, match="parallax") as info:
        run_pipeline(imgs, out, fast_config())
    _one_line(info.value)
    report = _report(out)
    assert report["failed_stage"] == "mapping"
    assert report["verification"]["configs"] == {"panoramic": 6}  # recognised as rotation-only
    # One verification entry per pair (4 images: 6 pairs).
    assert len(_cache_files(out, "two_view")) == 6 and len(_cache_files(out, "features")) == 4


# --- a full disk -------------------------------------------------------------------------------------------
def test_full_disk_during_export_keeps_caches(tmp_path, views, monkeypatch):
    import geomvision.runtime.atomic as atomic

    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _write_views(imgs, views[:3])
    real_replace = os.replace

    def replace(src, dst):
        if "sparse" in str(dst) or str(dst).endswith(("report.json", ".ply")):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError) as info:
        run_pipeline(imgs, out, fast_config())
    assert info.value.errno == errno.ENOSPC
    # No temporary file is left behind and no half-written output exists.
    assert [p.name for p in out.rglob(".*")] == []
    assert not (out / "sparse" / "0" / "images.txt").exists() and not (out / "report.json").exists()
    assert len(_cache_files(out, "features")) == 3 and len(_cache_files(out, "two_view")) == 3
    # Space is back: the rerun resumes from the caches and finishes.
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    run_pipeline(imgs, out, fast_config())
    _assert_success(out, 3)


def test_stale_temp_files_are_removed(tmp_path, views):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _write_views(imgs, views[:2])
    (out / "sparse" / "0").mkdir(parents=True)
    stale = [out / ".report.k2j4h6g8.json", out / "sparse" / "0" / ".images.abc_1234.txt"]
    for path in stale:
        path.write_text("half")
    half_swapped = [out / "sparse" / ".tmp-0", out / "sparse" / ".old-1"]  # a kill mid model swap
    for folder in half_swapped:
        folder.mkdir()
        (folder / "cameras.txt").write_text("# old\n")
    keep = out / ".hidden_note"  # not an atomic temp name: left alone
    keep.write_text("mine")
    with pytest.raises(InputError):
        run_pipeline(imgs, out, fast_config(intrinsics=(1.0, 1.0, -1.0, 0.0)))
    assert not any(p.exists() for p in stale + half_swapped) and keep.exists()


# --- unusual but valid input: must reconstruct -------------------------------------------------------------
def _gray16(view):
    gray = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    return encode(gray, ".png")


FORMATS = ["rgb16", "gray8", "gray16", "rgba", "palette", "jpeg"]


def _encode_variant(view: np.ndarray, variant: str) -> tuple[bytes, str]:
    if variant == "rgb16":
        return encode(view.astype(np.uint16) * 257, ".png"), ".png"
    if variant == "gray8":
        return encode(cv2.cvtColor(view, cv2.COLOR_RGB2GRAY), ".png"), ".png"
    if variant == "gray16":
        return _gray16(view), ".png"
    if variant == "rgba":
        alpha = np.full(view.shape[:2] + (1,), 200, np.uint8)
        return encode(np.concatenate([view, alpha], axis=2), ".png"), ".png"
    if variant == "palette":
        return palette_png(view), ".png"
    return encode(view, ".jpg"), ".jpg"


def test_mixed_image_formats_reconstruct(tmp_path):
    """One set whose views are 16-bit RGB, 8/16-bit gray, RGBA, palette and JPEG: all register."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    imgs.mkdir()
    for k, (view, variant) in enumerate(zip(render(len(FORMATS)).images, FORMATS, strict=True)):
        data, suffix = _encode_variant(view, variant)
        (imgs / f"{k}_{variant}{suffix}").write_bytes(data)
    result = run_pipeline(imgs, out, fast_config())
    _assert_success(out, len(FORMATS))
    # Gray views share the camera of the colour ones (same size): one camera for all.
    assert len(result.reconstruction.cameras) == 1


@pytest.mark.slow
@pytest.mark.parametrize("variant", FORMATS)
def test_image_formats_reconstruct(tmp_path, views, variant):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    imgs.mkdir()
    for k, view in enumerate(views[:3]):
        data, suffix = _encode_variant(view, variant)
        (imgs / f"{variant}_{k}{suffix}").write_bytes(data)
    run_pipeline(imgs, out, fast_config())
    _assert_success(out, 3)


def test_non_ascii_and_space_names(tmp_path, views):
    imgs, out = tmp_path / "mes images été", tmp_path / "sortie ü"
    names = ["vue été 1.png", "写真 2.png", "view (3).PNG"]
    _write_views(imgs, views[:3], names)
    result = run_pipeline(imgs, out, fast_config())
    _assert_success(out, 3)
    assert sorted(result.report["registered_images"]) == sorted(names)
    assert "vue été 1.png" in (out / "sparse" / "0" / "images.txt").read_text(encoding="utf-8")


def test_duplicated_and_tiny_images(tmp_path, views):
    """An exact duplicate registers (same pose); an 8x8 image has no features and is left out."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    paths = _write_views(imgs, views[:3])
    shutil.copy(paths[0], imgs / "view_0_copy.png")
    write_image(imgs / "tiny.png", np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    result = run_pipeline(imgs, out, fast_config())
    report = _assert_success(out, 4, num_images=5)
    assert "tiny.png" not in report["registered_images"]
    rec = result.reconstruction
    by_name = {v.name: v for v in rec.views.values()}
    a, b = by_name["view_0.png"].cam_from_world, by_name["view_0_copy.png"].cam_from_world
    assert np.allclose(a.rotation, b.rotation, atol=1e-3)
    assert np.allclose(a.translation, b.translation, atol=1e-2 * np.linalg.norm(a.translation) + 1e-3)


def test_mixed_sizes_and_very_large_image(tmp_path, views):
    """One view at 10x resolution (3200x2400, downscaled for features) and one at 1.5x."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _write_views(imgs, views[:2])
    write_image(imgs / "view_2_big.png", cv2.resize(views[2], (10 * WIDTH, 10 * HEIGHT)))
    write_image(imgs / "view_3_mid.png", cv2.resize(views[3], (WIDTH * 3 // 2, HEIGHT * 3 // 2)))
    config = fast_config().with_changes(extraction={"max_image_size_px": 640, "max_num_features": 1000})
    result = run_pipeline(imgs, out, config)
    _assert_success(out, 4)
    sizes = {(c.width, c.height) for c in result.reconstruction.cameras.values()}
    assert sizes == {(WIDTH, HEIGHT), (10 * WIDTH, 10 * HEIGHT), (WIDTH * 3 // 2, HEIGHT * 3 // 2)}


def test_planar_scene_reconstructs(tmp_path):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    for k, view in enumerate(planar_views(4)):
        write_image(imgs / f"plane_{k}.png", view)
    # Known calibration: a plane alone cannot fix the focal length (a self-calibration degeneracy).
    f = 1.2 * WIDTH
    result = run_pipeline(imgs, out, fast_config(intrinsics=(f, f, (WIDTH - 1) / 2, (HEIGHT - 1) / 2)))
    _assert_success(out, 4)
    # report.json records the options the mappers ran with: the known camera held.
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["mapper"]["fixed_camera_ids"] == config["global_mapper"]["fixed_camera_ids"] == [1]
    rec = result.reconstruction
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    centre = np.median(xyz, axis=0)
    normal = np.linalg.svd(xyz - centre, full_matrices=False)[2][2]
    # The points lie on one plane (median distance ~1% of the cloud's radius; a few outliers allowed).
    assert np.median(np.abs((xyz - centre) @ normal)) < 0.03 * np.median(np.linalg.norm(xyz - centre, axis=1))
    # The true camera centres are equally spaced on a line: so are the recovered ones (any scale).
    centres = np.array([rec.views[i].cam_from_world.inverse().translation for i in sorted(rec.views)])
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert np.allclose(steps, steps.mean(), rtol=0.05)
