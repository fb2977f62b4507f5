"""io.images: listing, decoding of 16-bit / gray / RGBA / palette / EXIF-rotated files, EXIF focal."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from geomvision.errors import InputError
from geomvision.io.images import image_size, list_images, read_exif_focal_px, read_image


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_list_images_sorted_skips_non_images(tmp_path, rgb):
    for name in ("b.png", "a.JPG", "c.tif"):
        Image.fromarray(rgb).save(tmp_path / name)
    (tmp_path / "K.txt").write_text("1 0 0")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tif"]


def test_list_images_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path)
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "f.png")


def test_read_8bit_png_is_rgb(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_16bit_maps_full_range(tmp_path, rgb):
    img16 = rgb.astype(np.uint16) * 257  # exact 8 -> 16 bit scaling
    cv2.imwrite(str(tmp_path / "x16.png"), img16[:, :, ::-1])
    out = read_image(tmp_path / "x16.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_read_gray_rgba_palette(tmp_path, rgb):
    gray = rgb[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)

    palette_img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_img.save(tmp_path / "p.png")
    expected = np.asarray(palette_img.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (3, lambda a: a[::-1, ::-1]),  # 180 degrees
        (6, lambda a: np.rot90(a, k=-1)),  # stored image must be rotated 90 degrees clockwise
        (8, lambda a: np.rot90(a, k=1)),
    ],
)
def test_exif_orientation_applied(tmp_path, orientation, transform):
    # Large smooth blocks survive JPEG compression, so the check can be strict.
    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:32, :48] = (255, 0, 0)
    stored[:32, 48:] = (0, 255, 0)
    stored[32:, :48] = (0, 0, 255)
    stored[32:, 48:] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    expected = transform(stored)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 6
    assert image_size(tmp_path / "r.jpg") == (expected.shape[1], expected.shape[0])


def test_corrupt_and_truncated_files_name_the_file(tmp_path, rgb):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all" * 10)
    with pytest.raises(InputError, match="bad.png"):
        read_image(bad)
    Image.fromarray(rgb).save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_exif_focal(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "none.jpg")
    assert read_exif_focal_px(tmp_path / "none.jpg") is None

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 36  # 36 mm equivalent: focal = image width (longer side)
    Image.fromarray(rgb).save(tmp_path / "f35.jpg", exif=exif)
    assert read_exif_focal_px(tmp_path / "f35.jpg") == pytest.approx(20.0)

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x920A] = 4.0  # mm
    Image.fromarray(rgb).save(tmp_path / "fmm.jpg", exif=exif)
    assert read_exif_focal_px(tmp_path / "fmm.jpg") is None  # no sensor size known
    assert read_exif_focal_px(tmp_path / "fmm.jpg", sensor_width_mm=8.0) == pytest.approx(10.0)

    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = 4.0
    sub[0xA20E] = 5.0  # pixels per mm on the focal plane
    sub[0xA210] = 4  # unit: mm
    Image.fromarray(rgb).save(tmp_path / "fplane.jpg", exif=exif)
    assert read_exif_focal_px(tmp_path / "fplane.jpg") == pytest.approx(20.0)
