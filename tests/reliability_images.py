"""Small image sets for the reliability tests: good overlapping views and deliberately bad variants.

Good views come from :func:`geomvision.synthetic.render_scene_images` (textured planes and boxes seen
from an arc), kept small (320x240) so a whole pipeline run takes a few seconds. Every writer encodes in
memory and writes bytes, so non-ASCII file names work regardless of OpenCV's path handling.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from geomvision.config import ReconstructionConfig
from geomvision.synthetic import random_texture, render_scene_images

WIDTH, HEIGHT = 320, 240
SEED = 3


def fast_config(workers: int = 1, seed: int = 0, **pipeline) -> ReconstructionConfig:
    """A configuration for small synthetic sets: in-process, few features, no HTML report."""
    return ReconstructionConfig().with_changes(
        pipeline={"num_workers": workers, "html_report": False, "seed": seed, **pipeline},
        extraction={"max_num_features": 1000},
    )


def render(num_images: int = 4, *, seed: int = SEED, width: int = WIDTH, height: int = HEIGHT):
    """Rendered RGB views of one scene (see ``render_scene_images``)."""
    return render_scene_images(num_images, width=width, height=height, texture_size=256, rng=seed)


def encode(image: np.ndarray, suffix: str = ".png") -> bytes:
    """Encode an RGB (H, W, 3), RGBA (H, W, 4) or grayscale (H, W) array with OpenCV."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(suffix, image)
    assert ok, f"could not encode {suffix}"
    return buf.tobytes()


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image, path.suffix.lower()))
    return path


def write_set(
    folder: Path,
    num_images: int = 4,
    *,
    seed: int = SEED,
    suffix: str = ".png",
    names: list[str] | None = None,
) -> list[Path]:
    """Write ``num_images`` overlapping views into ``folder`` (names ``view_<k>`` by default)."""
    scene = render(num_images, seed=seed)
    names = names or [f"view_{k}{suffix}" for k in range(num_images)]
    return [write_image(folder / name, img) for name, img in zip(names, scene.images, strict=True)]


def palette_png(image: np.ndarray) -> bytes:
    """Encode as an 8-bit palette ("P" mode) PNG with PIL (OpenCV cannot write palettes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(buf, "PNG")
    return buf.getvalue()


def rotation_views(num_images: int = 4, *, seed: int = SEED) -> list[np.ndarray]:
    """Views from one centre turning about the vertical axis: images related by K R K^-1 (no parallax)."""
    # Same focal as the pipeline's default guess (1.2 * max(w, h) of the small views), so the estimated
    # calibration is right and the pairs are recognisably rotation-only.
    f = 1.2 * max(WIDTH, HEIGHT)
    scene = render_scene_images(1, width=2 * WIDTH, height=2 * HEIGHT, focal_px=f, texture_size=256, rng=seed)
    big = scene.images[0]
    K_big = scene.K
    K = np.array([[f, 0.0, (WIDTH - 1) / 2], [0.0, f, (HEIGHT - 1) / 2], [0.0, 0.0, 1.0]])
    views = []
    for angle in np.deg2rad(np.linspace(-3.0, 3.0, num_images)):
        c, s = np.cos(angle), np.sin(angle)
        R = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        H = K @ R @ np.linalg.inv(K_big)  # big-image pixel -> rotated small-image pixel
        views.append(cv2.warpPerspective(big, H, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR))
    return views


def planar_views(num_images: int = 4, *, seed: int = SEED) -> list[np.ndarray]:
    """Views of one textured plane (z = 0) from translated, tilted cameras: H = K [r1 r2 t]."""
    texture = random_texture(512, seed)
    f = 1.2 * WIDTH
    K = np.array([[f, 0.0, (WIDTH - 1) / 2], [0.0, f, (HEIGHT - 1) / 2], [0.0, 0.0, 1.0]])
    # Texel (u, v) -> plane point ((u + 0.5) / 512 * 4 - 2, (v + 0.5) / 512 * 4 - 2, 0).
    texel_to_plane = np.array([[4 / 512, 0.0, 2 / 512 - 2], [0.0, 4 / 512, 2 / 512 - 2], [0.0, 0.0, 1.0]])
    views = []
    for k, x in enumerate(np.linspace(-0.6, 0.6, num_images)):
        tilt = np.deg2rad(8.0 * (k - num_images / 2) / num_images)
        c, s = np.cos(tilt), np.sin(tilt)
        R = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        t = -R @ np.array([x, 0.0, -3.0])  # camera centre (x, 0, -3) looking along +z at the plane
        H = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ texel_to_plane
        views.append(cv2.warpPerspective(texture, H, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR))
    return views
