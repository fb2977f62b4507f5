"""Large photo-textured synthetic scenes with exact ground truth (streets, a courtyard, an object ring).

A scene is a set of textured planar quads: box-shaped buildings along the streets of a city block, the walls of a
courtyard, or a cluster of boxes on a plinth, plus a textured ground. Facade textures are crops of real photos
(the sample set shipped in ``datasets/fountain_small/images``, and any extra folders given), colour-jittered,
flipped, blended with a procedural layer of the face's own and overprinted with a few posters/signs, so that no
two facades look alike (plain crops of a few photos repeated over many faces link unrelated images).

Rendering (:func:`render_view`) is a z-buffered per-face homography warp (Hartley & Zisserman 2.3, 13.1: a
plane maps to the image by a homography): for every face inside the view frustum the polygon is clipped at the
near plane (faces partly behind the camera keep only their front part), projected, rasterised as a convex
mask, and its texture is warped into the face's bounding box by one ``cv2.warpPerspective`` with a mip level
chosen from the face's on-screen size. Depth is the exact ray-plane intersection per pixel, so the depth map is
exact at pixel centres and a z-test resolves occlusion. Faces whose nearest corner is farther than ``far_m``
are not drawn (the sky shows there, like haze); the depth map says so (no surface).

Cameras follow trajectories where each image sees a small part of the scene:

- ``street``: a walk along a rectangular loop of streets (rounded corners), starting with oblique and forward
  views, looking at the left facades for a few steps, turning through oblique and forward views (yaw steps of
  about half the field of view) to the right facades, and back; the walk covers the whole loop at large
  sizes, so the sequence closes on itself.
- ``courtyard``: a walk inside a walled courtyard, alternating between the nearby wall and views across the
  courtyard at the central pavilion and the far walls.
- ``ring``: rings of cameras around a cluster of boxes, looking at its centre (templeRing-like).

The scene, the textures, the cameras and the image noise are all derived from one seed, so a seed reproduces the
dataset byte for byte. :func:`write_scene_dataset` writes ``images/*.jpg`` (with EXIF focal-length tags),
``sparse/0/{cameras,images,points3D}.txt`` (COLMAP text: exact poses and intrinsics; points3D are points
sampled on the faces, observed where they are visible), ``depth/*.png`` (16-bit, millimetres, 0 = no surface)
and ``scene.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from geomvision.errors import InputError, check_at_least, check_positive
from geomvision.geometry.rigid import Rigid3d
from geomvision.io.colmap import write_model
from geomvision.io.images import list_images, read_image
from geomvision.scene.camera import Camera
from geomvision.scene.reconstruction import Point3D, Reconstruction, View
from geomvision.synthetic import look_at, random_texture

logger = logging.getLogger(__name__)

__all__ = [
    "SceneKind",
    "SceneDatasetOptions",
    "SceneDatasetResult",
    "TexturedScene",
    "build_scene",
    "render_view",
    "write_scene_dataset",
    "DEPTH_PNG_SCALE_M",
    "default_photo_dirs",
]

SceneKind = Literal["street", "courtyard", "ring"]
_KINDS = ("street", "courtyard", "ring")

#: Metres per unit of the 16-bit depth PNGs (millimetres); 0 means no surface (sky) or farther than 65.535 m.
DEPTH_PNG_SCALE_M = 0.001

#: The sample photos shipped with the repository (present in a source checkout).
_SAMPLE_PHOTOS = Path(__file__).resolve().parent.parent / "datasets" / "fountain_small" / "images"

#: Near clipping plane, metres.
_NEAR_M = 0.05
#: Longest side of a facade tile, metres (large faces are split into tiles of at most this size).
_TILE_M = 5.0
#: Share of the photo crop in a face's texture (the rest is the face's own procedural layer).
_PHOTO_WEIGHT = 0.4
_SKY_TOP = np.array([120.0, 150.0, 200.0])
_SKY_BOTTOM = np.array([200.0, 210.0, 220.0])


def default_photo_dirs() -> tuple[str, ...]:
    """The folders used when no photo folder is given: the repository's sample set, if present."""
    return (str(_SAMPLE_PHOTOS),) if _SAMPLE_PHOTOS.is_dir() else ()


@dataclass(frozen=True, kw_only=True)
class SceneDatasetOptions:
    """What :func:`write_scene_dataset` generates."""

    kind: SceneKind = "street"
    """Scene layout: ``street`` (a loop of streets between buildings), ``courtyard`` or ``ring``."""
    num_images: int = 100
    """Number of images (>= 2)."""
    width: int = 640
    """Image width in pixels."""
    height: int = 480
    """Image height in pixels."""
    focal_factor: float = 1.2
    """Focal length in pixels as a multiple of max(width, height) (1.2 is the project's default focal)."""
    radial_k: float = 0.0
    """SIMPLE_RADIAL coefficient k (x_d = x (1 + k r^2) in normalised coordinates); 0 writes PINHOLE."""
    noise_sigma: float = 2.0
    """Standard deviation of the additive Gaussian image noise, in 8-bit grey levels."""
    exposure_range: tuple[float, float] = (0.8, 1.2)
    """Per-image exposure gain drawn uniformly from this range (1, 1 = no change)."""
    texels_per_m: float = 80.0
    """Texture resolution of the faces, texels per metre."""
    far_m: float = 70.0
    """Faces whose nearest corner is farther than this (metres) are not drawn."""
    points_per_m2: float = 1.0
    """Density of the ground-truth 3D points sampled on the faces (points per square metre)."""
    photo_dirs: tuple[str, ...] | None = None
    """Folders of photos to crop facade textures from; None = :func:`default_photo_dirs`. Without any
    photo the textures are procedural (``synthetic.random_texture``)."""
    max_photos_per_dir: int = 12
    """At most this many photos are read from each folder (evenly spaced in name order)."""
    jpeg_quality: int = 92
    """JPEG quality of the written images."""
    write_depth: bool = True
    """Write ``depth/NAME.png`` (16-bit millimetres)."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if int(self.num_images) < 2:
            raise InputError(f"num_images must be >= 2, got {self.num_images}")
        if not (64 <= int(self.width) <= 8192 and 64 <= int(self.height) <= 8192):
            raise InputError(f"image size must be within 64..8192 px, got {self.width}x{self.height}")
        if not (0.2 <= self.focal_factor <= 10):
            raise InputError(f"focal_factor must be within 0.2..10, got {self.focal_factor}")
        if not (-0.5 <= self.radial_k <= 0.5):
            raise InputError(f"radial_k must be within -0.5..0.5, got {self.radial_k}")
        if not (0 <= self.noise_sigma <= 50):
            raise InputError(f"noise_sigma must be within 0..50 grey levels, got {self.noise_sigma}")
        lo, hi = self.exposure_range
        if not (0.1 <= lo <= hi <= 10):
            raise InputError(f"exposure_range must satisfy 0.1 <= lo <= hi <= 10, got {self.exposure_range}")
        if not (5 <= self.texels_per_m <= 1000):
            raise InputError(f"texels_per_m must be within 5..1000, got {self.texels_per_m}")
        if not self.far_m > 1:
            raise InputError(f"far_m must be > 1 m, got {self.far_m}")
        check_positive("points_per_m2", self.points_per_m2)
        check_at_least("max_photos_per_dir", self.max_photos_per_dir, 1)
        if not (1 <= self.jpeg_quality <= 100):
            raise InputError(f"jpeg_quality must be within 1..100, got {self.jpeg_quality}")

    @property
    def focal_px(self) -> float:
        return float(self.focal_factor) * max(int(self.width), int(self.height))


# --------------------------------------------------------------------------------------------------
# scene geometry
# --------------------------------------------------------------------------------------------------
@dataclass
class TexturedScene:
    """Quads, their texture recipes and the cameras of one scene.

    Attributes:
        origins, axes_u, axes_v: (Q, 3) world points/vectors; quad q is ``origin + a axis_u + b axis_v`` for
            (a, b) in [0, 1]^2, textured with texel (s, t) at ``a = (s + 0.5) / tex_w``, ``b = (t + 0.5) / tex_h``.
        texture_sizes: (Q, 2) int (tex_w, tex_h) in texels.
        texture_kinds: (Q,) int, 0 = facade (photo crop), 1 = ground (desaturated crop).
        cams_from_world: one pose per image, in trajectory order.
        camera: the shared intrinsics (PINHOLE, or SIMPLE_RADIAL when ``radial_k`` != 0).
        exposures: (N,) per-image exposure gains.
        seed: the seed everything derives from.
    """

    origins: np.ndarray
    axes_u: np.ndarray
    axes_v: np.ndarray
    texture_sizes: np.ndarray
    texture_kinds: np.ndarray
    cams_from_world: list[Rigid3d]
    camera: Camera
    exposures: np.ndarray
    seed: int
    photos: list[np.ndarray] = field(default_factory=list, repr=False)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cache_limit: int = 600
    _canvas: tuple | None = field(default=None, repr=False)

    @property
    def num_quads(self) -> int:
        return len(self.origins)

    @property
    def corners(self) -> np.ndarray:
        """(Q, 4, 3) quad corners in world, in polygon order."""
        o, u, v = self.origins, self.axes_u, self.axes_v
        return np.stack([o, o + u, o + u + v, o + v], axis=1)

    def texture_pyramid(self, q: int) -> list[np.ndarray]:
        """Texture of quad ``q`` and its mip levels (each half the previous), made on first use and cached.

        The texture is a pure function of (seed, q), so the cache never changes a rendering.
        """
        hit = self._cache.get(q)
        if hit is not None:
            self._cache.move_to_end(q)
            return hit
        tex = _make_texture(self, q)
        levels = [tex]
        while min(levels[-1].shape[:2]) >= 16:
            levels.append(cv2.pyrDown(levels[-1]))
        self._cache[q] = levels
        if len(self._cache) > self._cache_limit:
            self._cache.popitem(last=False)
        return levels


def _make_texture(scene: TexturedScene, q: int) -> np.ndarray:
    """Texture of quad q: a small jittered photo crop blended with a procedural layer unique to the face.

    A few dozen photos texture hundreds or thousands of faces, so plain crops repeat the same structures on
    many faces, and geometric verification then links images of unrelated facades: on a 60-image street,
    137 of 150 pairs of images with no common surface verified with large (30%-75% of the photo) crops. Small
    crops (15-40%), contrast reversal of half the faces and the face's own procedural layer
    (``synthetic.random_texture``: multi-scale colour noise and shapes, 60% of the texture) bring this to 0 of
    150 (100 images: 105 false verified pairs with 50/50 blends of large crops). Without photos the texture is
    procedural only.
    """
    rng = np.random.default_rng([scene.seed, 7919, int(q)])
    tw, th = (int(x) for x in scene.texture_sizes[q])
    if not scene.photos:
        side = max(16, max(tw, th))
        return cv2.resize(random_texture(side, rng), (tw, th), interpolation=cv2.INTER_AREA)
    photo = scene.photos[int(rng.integers(len(scene.photos)))]
    ph, pw = photo.shape[:2]
    aspect = tw / th
    # Crop 15-40% of the photo's width at the face's aspect ratio (clamped to the photo): small crops
    # overlap less often between faces.
    cw = int(pw * rng.uniform(0.15, 0.4))
    ch = int(cw / aspect)
    if ch > ph:
        ch = ph
        cw = max(8, min(pw, int(ch * aspect)))
    x0 = int(rng.integers(0, pw - cw + 1))
    y0 = int(rng.integers(0, ph - ch + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    tex = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if cw > tw else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        tex = tex[:, ::-1]
    tex = tex.astype(np.float32)
    if scene.texture_kinds[q] == 1:  # ground: desaturated, darker
        grey = tex.mean(axis=2, keepdims=True)
        tex = 0.6 * (0.8 * grey + 0.2 * tex)
    else:
        # Colour jitter: per-channel gains plus a channel rotation, so crops of one photo differ in colour.
        tex = tex[:, :, rng.permutation(3)] * rng.uniform(0.75, 1.25, size=3)
    if rng.random() < 0.5:  # contrast reversal: SIFT is not invariant to it, so it halves chance look-alikes
        tex = 255.0 - tex
    own = cv2.resize(random_texture(max(16, tw, th), rng), (tw, th), interpolation=cv2.INTER_AREA)
    tex = np.ascontiguousarray(
        np.clip(_PHOTO_WEIGHT * tex + (1 - _PHOTO_WEIGHT) * own, 0, 255).astype(np.uint8)
    )
    # Posters and signs: a few filled shapes with sharp edges make each face distinctive.
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cx, cy = int(rng.integers(0, tw)), int(rng.integers(0, th))
        rx, ry = int(rng.integers(4, max(5, tw // 8))), int(rng.integers(4, max(5, th // 8)))
        if rng.random() < 0.5:
            cv2.rectangle(tex, (cx - rx, cy - ry), (cx + rx, cy + ry), colour, -1)
        else:
            cv2.ellipse(tex, (cx, cy), (rx, ry), 0.0, 0.0, 360.0, colour, -1, cv2.LINE_AA)
    return tex


class _QuadList:
    """Accumulates quads, splitting large faces into tiles of at most ``_TILE_M``."""

    def __init__(self, texels_per_m: float) -> None:
        self.texels_per_m = texels_per_m
        self.origins: list[np.ndarray] = []
        self.axes_u: list[np.ndarray] = []
        self.axes_v: list[np.ndarray] = []
        self.sizes: list[tuple[int, int]] = []
        self.kinds: list[int] = []

    def add_face(self, origin, axis_u, axis_v, kind: int = 0, tile_m: float = _TILE_M) -> None:
        origin, axis_u, axis_v = (np.asarray(a, dtype=np.float64) for a in (origin, axis_u, axis_v))
        lu, lv = float(np.linalg.norm(axis_u)), float(np.linalg.norm(axis_v))
        if lu < 1e-6 or lv < 1e-6:
            return
        nu, nv = max(1, math.ceil(lu / tile_m - 1e-9)), max(1, math.ceil(lv / tile_m - 1e-9))
        du, dv = axis_u / nu, axis_v / nv
        size = (max(8, round(lu / nu * self.texels_per_m)), max(8, round(lv / nv * self.texels_per_m)))
        for i in range(nu):
            for j in range(nv):
                self.origins.append(origin + i * du + j * dv)
                self.axes_u.append(du)
                self.axes_v.append(dv)
                self.sizes.append(size)
                self.kinds.append(kind)

    def add_box(self, corner, ex, ey, height: float, *, faces=(True, True, True, True), top=False) -> None:
        """A box on the ground: ``corner`` + [0,1] ex + [0,1] ey, up to ``height``; faces -ey, +ex, +ey, -ex."""
        corner, ex, ey = (np.asarray(a, dtype=np.float64) for a in (corner, ex, ey))
        ez = np.array([0.0, 0.0, float(height)])
        # Each vertical face: texture u runs along the facade, v downwards (image rows), so photos stand upright.
        sides = [
            (corner + ez, ex, -ez),
            (corner + ex + ez, ey, -ez),
            (corner + ex + ey + ez, -ex, -ez),
            (corner + ey + ez, -ey, -ez),
        ]
        for keep, (o, u, v) in zip(faces, sides, strict=True):
            if keep:
                self.add_face(o, u, v)
        if top:
            self.add_face(corner + ez, ex, ey)

    def add_ground(self, x0: float, y0: float, x1: float, y1: float, tile_m: float = 6.0) -> None:
        self.add_face([x0, y0, 0.0], [x1 - x0, 0.0, 0.0], [0.0, y1 - y0, 0.0], kind=1, tile_m=tile_m)


def _row_of_buildings(
    quads: _QuadList,
    start,
    direction,
    outward,
    length: float,
    rng: np.random.Generator,
    *,
    depth_m: float = 10.0,
) -> None:
    """Buildings whose fronts stand on the line ``start + s direction`` (s in [0, length]), facing ``-outward``.

    Widths 6-14 m, heights 6-16 m, setbacks 0-1.5 m, alleys 0-3 m between some; the first and last buildings
    stand flush at the row's ends (they form the block corners).
    """
    start, direction, outward = (np.asarray(a, dtype=np.float64) for a in (start, direction, outward))
    s = 0.0
    first = True
    while s < length - 1.0:
        width = min(float(rng.uniform(6.0, 14.0)), length - s)
        if length - s - width < 4.0:  # no sliver at the end
            width = length - s
        last = s + width >= length - 1e-6
        setback = 0.0 if (first or last) else float(rng.uniform(0.0, 1.5)) * (rng.random() < 0.6)
        height = float(rng.uniform(6.0, 16.0))
        corner = start + s * direction + setback * outward
        quads.add_box(
            corner, width * direction, (depth_m - setback) * outward, height, faces=(True, True, False, True)
        )
        s += width
        first = False
        if not last and rng.random() < 0.3:
            s += float(rng.uniform(1.0, 3.0))  # an alley


def _rounded_rectangle_path(half_x: float, half_y: float, radius: float, step_m: float = 0.05) -> np.ndarray:
    """(M, 2) dense closed polyline of a rectangle with rounded corners, counter-clockwise, starting mid-south."""
    r = min(radius, half_x * 0.9, half_y * 0.9)
    pts = [np.array([0.0, -half_y])]
    corners = [(half_x - r, -half_y + r, -np.pi / 2), (half_x - r, half_y - r, 0.0)]
    corners += [(-half_x + r, half_y - r, np.pi / 2), (-half_x + r, -half_y + r, np.pi)]
    for cx, cy, a0 in corners:
        a = a0 + np.linspace(0, np.pi / 2, 24)
        pts.extend(np.c_[cx + r * np.cos(a), cy + r * np.sin(a)])
    pts.append(np.array([0.0, -half_y]))
    poly = np.array(pts)
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    fine = np.arange(0.0, s[-1], step_m)
    return np.c_[np.interp(fine, s, poly[:, 0]), np.interp(fine, s, poly[:, 1])]


# The walk's looking pattern: (yaw from the heading in degrees, +90 = left; metres walked before the shot).
# Side views look 70 degrees off the heading; the turns between sides go in steps of about 23 degrees, well
# below the 45-degree field of view of the default focal (1.2 max(w, h)), so consecutive images always overlap.
def _look_pattern(side_shots: int) -> list[tuple[float, float]]:
    """(yaw off the heading in degrees, metres walked) of one period of the walk's views.

    The walk starts with a turn (right, forward, left) before its first block of side views: a block is
    joined to the rest by the oblique and forward views before it, which see its facades from behind.
    Started with a side block (the order left, turn, right, turn), the first block of the 100-image
    street shared no track with images 7-100 and reached them only through image 6 (the pair (6, 7):
    611 matches at a 0.9 deg triangulation angle): its scale about image 6 could not be recovered
    from the images, and the mapper made it a model of its own.
    """
    left = [(70.0, 0.8)] * side_shots
    right = [(-70.0, 0.8)] * side_shots
    turn = [(47.0, 0.4), (23.0, 0.4), (0.0, 0.4), (-23.0, 0.4), (-47.0, 0.4)]
    return [(-yaw, step) for yaw, step in turn] + left + turn + right


def _walk_cameras(
    path: np.ndarray, num_images: int, rng: np.random.Generator, *, side_shots: int, height_m: float
) -> list[Rigid3d]:
    """Cameras along a closed path: position by walked distance, yaw by the looking pattern, small jitter."""
    seg = np.linalg.norm(np.diff(path, axis=0, append=path[:1]), axis=1)
    arc = np.r_[0.0, np.cumsum(seg)]
    perimeter = float(arc[-1])
    closed = np.vstack([path, path[:1]])
    pattern = _look_pattern(side_shots)
    walked = 0.0
    cams = []
    for i in range(num_images):
        yaw_deg, advance = pattern[i % len(pattern)]
        walked += advance
        s = walked % perimeter
        pos = np.array([np.interp(s, arc, closed[:, 0]), np.interp(s, arc, closed[:, 1])])
        ahead = np.array([np.interp((s + 1.0) % perimeter, arc, closed[:, 0]), 0.0])
        ahead[1] = np.interp((s + 1.0) % perimeter, arc, closed[:, 1])
        heading = ahead - pos
        heading /= max(float(np.linalg.norm(heading)), 1e-9)
        lateral = np.array([-heading[1], heading[0]])
        pos = pos + lateral * rng.uniform(-0.8, 0.8)
        yaw = np.deg2rad(yaw_deg + rng.uniform(-3.0, 3.0))
        look = np.cos(yaw) * heading + np.sin(yaw) * lateral
        pitch = np.deg2rad(rng.uniform(3.0, 12.0))
        centre = np.array([pos[0], pos[1], height_m + rng.uniform(-0.15, 0.15)])
        target = centre + np.r_[look * np.cos(pitch), np.sin(pitch)]
        cams.append(_with_roll(look_at(centre, target), np.deg2rad(rng.uniform(-2.0, 2.0))))
    return cams


def _with_roll(cam: Rigid3d, roll: float) -> Rigid3d:
    c, s = math.cos(roll), math.sin(roll)
    R_roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Rigid3d(R_roll @ cam.rotation, R_roll @ cam.translation)


#: Metres walked per image, averaged over the looking pattern (sets the size of the street/courtyard loop).
def _metres_per_image(side_shots: int) -> float:
    pattern = _look_pattern(side_shots)
    return sum(a for _, a in pattern) / len(pattern)


def _loop_half_extents(
    num_images: int, side_shots: int, *, min_perimeter_m: float, aspect: float
) -> tuple[float, float]:
    """Half sizes (x, y) in metres of a rectangular walk loop as long as the walk (at least ``min_perimeter_m``).

    ``aspect`` is x over y.
    """
    perimeter = max(num_images * _metres_per_image(side_shots), min_perimeter_m)
    half_y = perimeter / (4 * (1 + aspect))
    return aspect * half_y, half_y


def _street_scene(options: SceneDatasetOptions, rng: np.random.Generator) -> tuple[_QuadList, list[Rigid3d]]:
    side_shots = 5
    half_width = 6.0  # from the street's centre line to the facades
    # The loop is as long as the walk (so large sets close the loop), but never smaller than a city block.
    half_x, half_y = _loop_half_extents(options.num_images, side_shots, min_perimeter_m=140.0, aspect=1.6)
    quads = _QuadList(options.texels_per_m)
    ix, iy = half_x - half_width, half_y - half_width  # inner block's frontage
    ox, oy = half_x + half_width, half_y + half_width  # outer rows' frontage
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    depth = 10.0
    # Inner block: south/north rows span the block; west/east rows fit between them.
    _row_of_buildings(quads, [-ix, -iy, 0], ex, ey, 2 * ix, rng, depth_m=depth)
    _row_of_buildings(quads, [ix, iy, 0], -ex, -ey, 2 * ix, rng, depth_m=depth)
    _row_of_buildings(quads, [ix, -iy + depth, 0], ey, -ex, 2 * iy - 2 * depth, rng, depth_m=depth)
    _row_of_buildings(quads, [-ix, iy - depth, 0], -ey, ex, 2 * iy - 2 * depth, rng, depth_m=depth)
    # Outer rows face the street from outside; they meet in concave corners.
    _row_of_buildings(quads, [ox, -oy, 0], -ex, -ey, 2 * ox, rng, depth_m=depth)
    _row_of_buildings(quads, [-ox, oy, 0], ex, ey, 2 * ox, rng, depth_m=depth)
    _row_of_buildings(quads, [ox, oy, 0], -ey, ex, 2 * oy, rng, depth_m=depth)
    _row_of_buildings(quads, [-ox, -oy, 0], ey, -ex, 2 * oy, rng, depth_m=depth)
    # Street surface: four strips (the inner block's ground is hidden behind its buildings).
    quads.add_ground(-ox, -oy, ox, -iy)
    quads.add_ground(-ox, iy, ox, oy)
    quads.add_ground(-ox, -iy, -ix, iy)
    quads.add_ground(ix, -iy, ox, iy)
    path = _rounded_rectangle_path(half_x, half_y, radius=4.0)
    cams = _walk_cameras(path, options.num_images, rng, side_shots=side_shots, height_m=1.6)
    return quads, cams


def _courtyard_scene(
    options: SceneDatasetOptions, rng: np.random.Generator
) -> tuple[_QuadList, list[Rigid3d]]:
    side_shots = 5
    inset = 7.0  # walk this far from the walls
    half_x, half_y = _loop_half_extents(options.num_images, side_shots, min_perimeter_m=100.0, aspect=1.3)
    quads = _QuadList(options.texels_per_m)
    ox, oy = half_x + inset, half_y + inset
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    _row_of_buildings(quads, [ox, -oy, 0], -ex, -ey, 2 * ox, rng)
    _row_of_buildings(quads, [-ox, oy, 0], ex, ey, 2 * ox, rng)
    _row_of_buildings(quads, [ox, oy, 0], -ey, ex, 2 * oy, rng)
    _row_of_buildings(quads, [-ox, -oy, 0], ey, -ex, 2 * oy, rng)
    quads.add_ground(-ox, -oy, ox, oy)
    # A pavilion of a few boxes in the middle, seen in the views across the courtyard.
    for _ in range(int(rng.integers(3, 6))):
        size = rng.uniform(2.0, 5.0, size=2)
        centre = rng.uniform(-0.4, 0.4, size=2) * [max(half_x - 8, 1.0), max(half_y - 8, 1.0)]
        corner = np.r_[centre - size / 2, 0.0]
        quads.add_box(corner, [size[0], 0, 0], [0, size[1], 0], float(rng.uniform(2.0, 6.0)), top=True)
    path = _rounded_rectangle_path(half_x, half_y, radius=3.0)
    cams = _walk_cameras(path, options.num_images, rng, side_shots=side_shots, height_m=1.6)
    return quads, cams


def _ring_scene(options: SceneDatasetOptions, rng: np.random.Generator) -> tuple[_QuadList, list[Rigid3d]]:
    quads = _QuadList(options.texels_per_m)
    quads.add_ground(-15.0, -15.0, 15.0, 15.0)
    # A cluster of boxes (2-4 m) on and around a plinth: an object with corners and self-occlusion.
    quads.add_box([-2.5, -2.5, 0.0], [5.0, 0, 0], [0, 5.0, 0], 0.8, top=True)
    for _ in range(int(rng.integers(5, 9))):
        size = rng.uniform(0.8, 2.2, size=3)
        yaw = rng.uniform(0, np.pi / 2)
        ax = size[0] * np.array([np.cos(yaw), np.sin(yaw), 0.0])
        ay = size[1] * np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        centre = rng.uniform(-1.6, 1.6, size=2)
        corner = np.r_[centre, 0.8] - ax / 2 - ay / 2
        quads.add_box(corner, ax, ay, float(size[2]), top=True)
    n = options.num_images
    num_rings = max(1, math.ceil(n / 150))
    per_ring = np.diff(np.linspace(0, n, num_rings + 1).round().astype(int))
    cams = []
    for r, count in enumerate(per_ring):
        elevation = np.deg2rad(15.0 + 35.0 * (r / max(1, num_rings - 1)) if num_rings > 1 else 25.0)
        radius = 8.5 + 1.5 * (r % 2)
        az = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, count, endpoint=False)
        for a in az:
            dist = radius * rng.uniform(0.95, 1.05)
            centre = np.array(
                [dist * np.cos(elevation) * np.cos(a), dist * np.cos(elevation) * np.sin(a), 0.0]
            )
            centre[2] = dist * np.sin(elevation)
            target = np.array([0.0, 0.0, 1.5]) + rng.normal(scale=0.4, size=3)
            cams.append(_with_roll(look_at(centre, target), np.deg2rad(rng.uniform(-3.0, 3.0))))
    return quads, cams


def _load_photos(dirs: tuple[str, ...], per_dir: int) -> list[np.ndarray]:
    """RGB photos (longest side at most 1024 px) from each folder, evenly spaced in name order."""
    photos = []
    for folder in dirs:
        paths = list_images(folder)
        if not paths:
            raise InputError(f"photo folder {folder} holds no images")
        pick = np.unique(np.linspace(0, len(paths) - 1, min(per_dir, len(paths))).round().astype(int))
        for i in pick:
            img = read_image(paths[i])
            scale = 1024.0 / max(img.shape[:2])
            if scale < 1:
                img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            photos.append(np.ascontiguousarray(img))
    return photos


def build_scene(
    options: SceneDatasetOptions, *, rng: np.random.Generator | int | None = None
) -> TexturedScene:
    """Geometry, texture recipes and cameras of a scene (textures are made on demand when rendering).

    Args:
        options: what to build.
        rng: seed (an int or None = 0; a Generator is reduced to one drawn seed, so textures stay a pure
            function of (seed, face)).

    Returns:
        The scene, with ``options.num_images`` cameras in trajectory order.
    """
    if isinstance(rng, np.random.Generator):
        seed = int(rng.integers(0, 2**31 - 1))
    else:
        seed = 0 if rng is None else int(rng)
    layout_rng = np.random.default_rng([seed, 1])
    builder = {"street": _street_scene, "courtyard": _courtyard_scene, "ring": _ring_scene}[options.kind]
    quads, cams = builder(options, layout_rng)
    w, h = int(options.width), int(options.height)
    f = options.focal_px
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    if options.radial_k != 0.0:
        camera = Camera(1, "SIMPLE_RADIAL", w, h, np.array([f, cx, cy, options.radial_k]))
    else:
        camera = Camera(1, "PINHOLE", w, h, np.array([f, f, cx, cy]))
    lo, hi = options.exposure_range
    exposures = np.random.default_rng([seed, 2]).uniform(lo, hi, size=len(cams))
    dirs = default_photo_dirs() if options.photo_dirs is None else tuple(options.photo_dirs)
    return TexturedScene(
        origins=np.array(quads.origins),
        axes_u=np.array(quads.axes_u),
        axes_v=np.array(quads.axes_v),
        texture_sizes=np.array(quads.sizes, dtype=np.int64),
        texture_kinds=np.array(quads.kinds, dtype=np.int64),
        cams_from_world=cams,
        camera=camera,
        exposures=exposures,
        seed=seed,
        photos=_load_photos(dirs, options.max_photos_per_dir),
    )


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------
def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a (M, 3) camera-frame polygon to z >= near."""
    out = []
    m = len(poly)
    for k in range(m):
        a, b = poly[k], poly[(k + 1) % m]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))


def _render_canvas(camera: Camera) -> tuple[np.ndarray, int, int, tuple[np.ndarray, np.ndarray] | None]:
    """Pinhole K, canvas size and (for a distorted camera) the remap from the canvas to the distorted image.

    A distorted image sees a different field of view than the pinhole one; the pinhole canvas is padded to
    cover every undistorted ray of the distorted image.
    """
    w, h = camera.width, camera.height
    f = camera.focal_xy
    cx, cy = camera.principal_point
    if camera.model == "PINHOLE":
        return camera.K, w, h, None
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    normalised = camera.unproject(np.c_[cols.ravel(), rows.ravel()])
    ux = f[0] * normalised[:, 0] + cx
    uy = f[1] * normalised[:, 1] + cy
    pad_x = int(math.ceil(max(0.0, -ux.min(), ux.max() - (w - 1)))) + 2
    pad_y = int(math.ceil(max(0.0, -uy.min(), uy.max() - (h - 1)))) + 2
    K = np.array([[f[0], 0.0, cx + pad_x], [0.0, f[1], cy + pad_y], [0.0, 0.0, 1.0]])
    maps = (
        (ux + pad_x).reshape(h, w).astype(np.float32),
        (uy + pad_y).reshape(h, w).astype(np.float32),
    )
    return K, w + 2 * pad_x, h + 2 * pad_y, maps


def _sky(width: int, height: int) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (1 - ramp) * _SKY_TOP + ramp * _SKY_BOTTOM
    return np.ascontiguousarray(np.broadcast_to(sky.astype(np.uint8), (height, width, 3)))


def _visible_quads(
    corners_cam: np.ndarray, K: np.ndarray, width: int, height: int, far_m: float
) -> np.ndarray:
    """Indices of quads not entirely outside one frustum plane and with a corner nearer than ``far_m``."""
    x, y, z = corners_cam[..., 0], corners_cam[..., 1], corners_cam[..., 2]
    left = (-0.5 - K[0, 2]) / K[0, 0]
    right = (width - 0.5 - K[0, 2]) / K[0, 0]
    top = (-0.5 - K[1, 2]) / K[1, 1]
    bottom = (height - 0.5 - K[1, 2]) / K[1, 1]
    outside = (
        (z < _NEAR_M).all(axis=1)
        | (x < left * z).all(axis=1)
        | (x > right * z).all(axis=1)
        | (y < top * z).all(axis=1)
        | (y > bottom * z).all(axis=1)
        | (np.linalg.norm(corners_cam, axis=2).min(axis=1) > far_m)
    )
    return np.flatnonzero(~outside)


def _render_pinhole(
    scene: TexturedScene, cam: Rigid3d, K: np.ndarray, width: int, height: int, far_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffered rendering of the scene's quads into a pinhole canvas: (image, depth, visible quad ids)."""
    image = _sky(width, height)
    zbuf = np.full((height, width), np.inf, dtype=np.float32)
    R, t = cam.rotation, cam.translation
    corners_cam = scene.corners @ R.T + t
    visible = _visible_quads(corners_cam, K, width, height, far_m)
    ray_x = (np.arange(width) - K[0, 2]) / K[0, 0]
    ray_y = (np.arange(height) - K[1, 2]) / K[1, 1]
    drawn = []
    # Near to far: the z-test then rejects most hidden pixels before any blending work.
    order = visible[np.argsort(corners_cam[visible, :, 2].min(axis=1))]
    for q in order:
        poly = _clip_near(corners_cam[q], _NEAR_M)
        if len(poly) < 3:
            continue
        px = poly[:, :2] / poly[:, 2:3] * [K[0, 0], K[1, 1]] + K[:2, 2]
        x0 = max(0, int(math.floor(px[:, 0].min())))
        y0 = max(0, int(math.floor(px[:, 1].min())))
        x1 = min(width, int(math.ceil(px[:, 0].max())) + 1)
        y1 = min(height, int(math.ceil(px[:, 1].max())) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        bw, bh = x1 - x0, y1 - y0
        mask = np.zeros((bh, bw), dtype=np.uint8)
        # 4 fractional bits: the polygon edge is placed to 1/16 px.
        cv2.fillConvexPoly(mask, np.round((px - [x0, y0]) * 16).astype(np.int32), 1, cv2.LINE_8, 4)
        origin_c = R @ scene.origins[q] + t
        au_c, av_c = R @ scene.axes_u[q], R @ scene.axes_v[q]
        normal = np.cross(au_c, av_c)
        offset = float(normal @ origin_c)  # plane: normal . X = offset (camera frame)
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = normal[0] * ray_x[None, x0:x1] + normal[1] * ray_y[y0:y1, None] + normal[2]
            depth = (offset / denom).astype(np.float32)
            keep = (mask > 0) & (depth > _NEAR_M) & (depth < zbuf[y0:y1, x0:x1])
        if not keep.any():
            continue
        tw, th = (int(v) for v in scene.texture_sizes[q])
        # Mip level from the ratio of texels to covered pixels (area), so far faces do not alias.
        area_px = max(float(np.count_nonzero(mask)), 1.0)
        levels = scene.texture_pyramid(int(q))
        level = int(np.clip(math.floor(0.5 * math.log2(max(tw * th / area_px, 1.0))), 0, len(levels) - 1))
        tex = levels[level]
        lh, lw = tex.shape[:2]
        # Texel (s, t) of this level -> origin + (s + 0.5)/lw axis_u + (t + 0.5)/lh axis_v.
        A = np.column_stack([au_c / lw, av_c / lh, origin_c + 0.5 * au_c / lw + 0.5 * av_c / lh])
        shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        warped = cv2.warpPerspective(
            tex, shift @ K @ A, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        np.copyto(image[y0:y1, x0:x1], warped, where=keep[:, :, None])
        np.copyto(zbuf[y0:y1, x0:x1], depth, where=keep)
        drawn.append(int(q))
    return image, zbuf, np.array(drawn, dtype=np.int64)


def render_view(
    scene: TexturedScene, index: int, *, far_m: float = 70.0, noise_sigma: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render image ``index`` of the scene.

    Args:
        scene: the scene.
        index: 0-based image index (trajectory order).
        far_m: faces whose nearest corner is farther than this are not drawn.
        noise_sigma: Gaussian noise (grey levels) added after the exposure gain; its stream derives from
            (seed, index).

    Returns:
        (H, W, 3) uint8 RGB image; (H, W) float32 depth along +z of the surface seen at each pixel centre
        (``inf`` where the sky shows); (V,) int64 ids of the quads drawn.
    """
    if not 0 <= int(index) < len(scene.cams_from_world):
        raise InputError(f"index must be within 0..{len(scene.cams_from_world) - 1}, got {index}")
    if scene._canvas is None:
        scene._canvas = _render_canvas(scene.camera)
    K, cw, ch, maps = scene._canvas
    image, depth, drawn = _render_pinhole(scene, scene.cams_from_world[int(index)], K, cw, ch, far_m)
    if maps is not None:
        image = cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        depth = cv2.remap(depth, maps[0], maps[1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    gain = float(scene.exposures[int(index)])
    if gain != 1.0 or noise_sigma > 0:
        out = image.astype(np.float32) * gain
        if noise_sigma > 0:
            noise_rng = np.random.default_rng([scene.seed, 3, int(index)])
            out += noise_rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_sigma)
        image = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return image, depth, drawn


# --------------------------------------------------------------------------------------------------
# dataset writer
# --------------------------------------------------------------------------------------------------
@dataclass
class SceneDatasetResult:
    """What :func:`write_scene_dataset` wrote.

    Attributes:
        output_dir: the dataset folder.
        image_names: names of ``images/*`` in trajectory order (image id = position + 1).
        num_points3D: ground-truth points written (each seen in at least two images).
        num_quads: textured faces of the scene.
        render_time_s: time spent rendering (warps, z-test, noise), seconds.
        total_time_s: wall time of the whole call, seconds.
    """

    output_dir: Path
    image_names: list[str]
    num_points3D: int
    num_quads: int
    render_time_s: float
    total_time_s: float

    @property
    def seconds_per_image(self) -> float:
        return self.total_time_s / max(1, len(self.image_names))


def _sample_points(scene: TexturedScene, points_per_m2: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth points on the faces: ((P, 3) xyz in world, (P,) quad index), Poisson count per face."""
    rng = np.random.default_rng([seed, 4])
    area = np.linalg.norm(np.cross(scene.axes_u, scene.axes_v), axis=1)
    counts = rng.poisson(area * points_per_m2)
    quad = np.repeat(np.arange(scene.num_quads), counts)
    ab = rng.uniform(0.02, 0.98, size=(len(quad), 2))
    xyz = scene.origins[quad] + ab[:, :1] * scene.axes_u[quad] + ab[:, 1:] * scene.axes_v[quad]
    return xyz, quad


def _observe(
    scene: TexturedScene,
    cam: Rigid3d,
    depth: np.ndarray,
    drawn: np.ndarray,
    points_xyz: np.ndarray,
    points_quad_sorted: np.ndarray,
    quad_starts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(P_i,) ids and (P_i, 2) pixels of the points on drawn faces that are visible in this image.

    Visible: in front, inside the image, and the depth map at the nearest pixel agrees with the point's depth
    to 0.5% (so the point is not hidden by a nearer face).
    """
    if len(drawn) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2))
    ids = np.concatenate([points_quad_sorted[quad_starts[q] : quad_starts[q + 1]] for q in drawn])
    if len(ids) == 0:
        return ids.astype(np.int64), np.zeros((0, 2))
    in_cam = points_xyz[ids] @ cam.rotation.T + cam.translation
    ok = in_cam[:, 2] > _NEAR_M
    ids, in_cam = ids[ok], in_cam[ok]
    px = scene.camera.project(in_cam)
    h, w = depth.shape
    inside = np.isfinite(px).all(axis=1) & (px[:, 0] >= 0) & (px[:, 0] <= w - 1) & (px[:, 1] >= 0)
    inside &= px[:, 1] <= h - 1
    ids, in_cam, px = ids[inside], in_cam[inside], px[inside]
    seen = depth[np.rint(px[:, 1]).astype(int), np.rint(px[:, 0]).astype(int)]
    ok = np.abs(seen - in_cam[:, 2]) <= 0.005 * in_cam[:, 2]
    return ids[ok].astype(np.int64), px[ok]


def _write_jpeg_with_exif(path: Path, image: np.ndarray, focal_px: float, quality: int) -> None:
    """JPEG with EXIF FocalLength + FocalPlaneXResolution (a 6.4 mm-wide virtual sensor), via Pillow."""
    # Pillow ships with matplotlib (a core dependency); imported here because only this writer needs it.
    from PIL import Image

    height, width = image.shape[:2]
    sensor_width_mm = 6.4
    pil = Image.fromarray(image)
    exif = Image.Exif()
    exif[0x010F] = "geomvision"  # Make
    exif[0x0110] = "synth-scene"  # Model
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = round(focal_px * sensor_width_mm / width, 6)  # FocalLength, mm
    sub[0xA20E] = round(width / (sensor_width_mm / 10.0), 6)  # FocalPlaneXResolution, px per cm
    sub[0xA20F] = round(width / (sensor_width_mm / 10.0), 6)  # FocalPlaneYResolution (square pixels)
    sub[0xA210] = 3  # FocalPlaneResolutionUnit: centimetre
    sub[0xA002] = width  # ExifImageWidth
    sub[0xA003] = height  # ExifImageHeight
    pil.save(path, format="JPEG", quality=int(quality), exif=exif)


def write_scene_dataset(
    output_dir: str | Path,
    options: SceneDatasetOptions,
    *,
    rng: np.random.Generator | int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SceneDatasetResult:
    """Build, render and write a synthetic scene dataset with exact ground truth.

    Writes into ``output_dir``: ``images/NNNNN.jpg`` (EXIF focal length), ``sparse/0/*.txt`` (COLMAP text
    ground truth: cameras, exact poses, sampled 3D points with their visible observations), ``depth/NNNNN.png``
    (16-bit mm, 0 = none; if ``options.write_depth``) and ``scene.json`` (options, seed, timings).

    Args:
        output_dir: destination folder (created).
        options: what to generate.
        rng: seed (int / None = 0) or a Generator (reduced to one drawn seed).
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        :class:`SceneDatasetResult`.
    """
    t_start = time.perf_counter()
    out = Path(output_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    depth_dir = out / "depth"
    if options.write_depth:
        depth_dir.mkdir(parents=True, exist_ok=True)
    scene = build_scene(options, rng=rng)
    points_xyz, points_quad = _sample_points(scene, options.points_per_m2, scene.seed)
    order = np.argsort(points_quad, kind="stable")
    quad_starts = np.searchsorted(points_quad[order], np.arange(scene.num_quads + 1))
    n = len(scene.cams_from_world)
    names = [f"{i:05d}.jpg" for i in range(n)]
    observations: list[tuple[np.ndarray, np.ndarray]] = []
    render_s = 0.0
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        image, depth, drawn = render_view(scene, i, far_m=options.far_m, noise_sigma=options.noise_sigma)
        render_s += time.perf_counter() - t0
        observations.append(
            _observe(scene, scene.cams_from_world[i], depth, drawn, points_xyz, order, quad_starts)
        )
        _write_jpeg_with_exif(image_dir / name, image, scene.camera.focal_xy[0], options.jpeg_quality)
        if options.write_depth:
            mm = np.where(np.isfinite(depth), np.rint(depth / DEPTH_PNG_SCALE_M), 0)
            mm[mm > 65535] = 0
            cv2.imwrite(str(depth_dir / name.replace(".jpg", ".png")), mm.astype(np.uint16))
        if progress is not None:
            progress(i + 1, n)
    num_points = _write_ground_truth(out / "sparse" / "0", scene, names, observations, points_xyz)
    total_s = time.perf_counter() - t_start
    meta = {
        "kind": options.kind,
        "seed": scene.seed,
        "options": {k: v for k, v in asdict(options).items()},
        "photo_dirs": list(default_photo_dirs() if options.photo_dirs is None else options.photo_dirs),
        "num_images": n,
        "num_quads": scene.num_quads,
        "num_points3D": num_points,
        "camera": {"model": scene.camera.model, "params": scene.camera.params.tolist()},
        "exposures": scene.exposures.round(6).tolist(),
        "depth_png_scale_m": DEPTH_PNG_SCALE_M,
        "render_time_s": round(render_s, 3),
        "total_time_s": round(total_s, 3),
    }
    (out / "scene.json").write_text(json.dumps(meta, indent=1))
    logger.info(
        "wrote %d images of a %s scene (%d faces) to %s in %.1f s",
        n,
        options.kind,
        scene.num_quads,
        out,
        total_s,
    )
    return SceneDatasetResult(out, names, num_points, scene.num_quads, render_s, total_s)


def _write_ground_truth(
    folder: Path,
    scene: TexturedScene,
    names: list[str],
    observations: list[tuple[np.ndarray, np.ndarray]],
    points_xyz: np.ndarray,
) -> int:
    """COLMAP text model of the exact cameras and the points seen in at least two images; returns #points."""
    rec = Reconstruction()
    rec.add_camera(scene.camera)
    seen_count = np.zeros(len(points_xyz), dtype=np.int64)
    for ids, _ in observations:
        seen_count[ids] += 1
    keep = seen_count >= 2
    new_id = np.full(len(points_xyz), -1, dtype=np.int64)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    tracks: dict[int, list[tuple[int, int]]] = {int(p): [] for p in new_id[keep]}
    for i, (name, (ids, px)) in enumerate(zip(names, observations, strict=True)):
        sel = keep[ids]
        view = View(i + 1, name, scene.camera.camera_id, scene.cams_from_world[i], px[sel], new_id[ids[sel]])
        rec.add_view(view)
        for k, pid in enumerate(new_id[ids[sel]]):
            tracks[int(pid)].append((i + 1, k))
    for old in np.flatnonzero(keep):
        pid = int(new_id[old])
        rec.points3D[pid] = Point3D(
            points_xyz[old].astype(np.float64), np.full(3, 128, np.uint8), 0.0, tracks[pid]
        )
    rec.next_point3D_id = int(keep.sum()) + 1
    write_model(rec, folder)
    return int(keep.sum())
