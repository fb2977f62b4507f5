"""The photo-textured scene generator: its renderings agree with the projection of known 3D points."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from geomvision.cli import main
from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.io.colmap import read_model
from geomvision.io.images import read_exif_focal_px, read_image
from geomvision.scene.camera import Camera
from geomvision.synthetic import look_at
from geomvision.synthetic_scenes import (
    DEPTH_PNG_SCALE_M,
    SceneDatasetOptions,
    TexturedScene,
    build_scene,
    render_view,
    write_scene_dataset,
)

SMALL = dict(width=320, height=240, texels_per_m=40.0)


def _points_on_drawn_faces(
    scene: TexturedScene, drawn: np.ndarray, rng: np.random.Generator, per_face: int = 20
):
    q = np.repeat(drawn, per_face)
    ab = rng.uniform(0.05, 0.95, size=(len(q), 2))
    return scene.origins[q] + ab[:, :1] * scene.axes_u[q] + ab[:, 1:] * scene.axes_v[q], q


def _face_depth_at_pixels(scene, cam, quads, cols, rows) -> np.ndarray:
    """Depth along +z where the rays of pixel centres (cols, rows) meet the planes of faces ``quads``."""
    K = scene.camera.K
    rays = np.c_[(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones(len(cols))]
    normals = np.cross(scene.axes_u[quads], scene.axes_v[quads]) @ cam.rotation.T
    origins = cam.apply(scene.origins[quads])
    return np.sum(normals * origins, axis=1) / np.sum(normals * rays, axis=1)


def _plane_homography(scene: TexturedScene, q: int, cam_i: Rigid3d, cam_j: Rigid3d) -> np.ndarray:
    """H mapping pixels of image i to image j through the plane of face q (H&Z 13.1)."""
    K = scene.camera.K
    j_from_i = cam_j @ cam_i.inverse()
    origin_i = cam_i.apply(scene.origins[q][None])[0]
    normal_i = cam_i.rotation @ np.cross(scene.axes_u[q], scene.axes_v[q])
    normal_i /= np.linalg.norm(normal_i)
    d = float(normal_i @ origin_i)
    H = K @ (j_from_i.rotation + np.outer(j_from_i.translation, normal_i) / d) @ np.linalg.inv(K)
    return H / H[2, 2]


@pytest.mark.parametrize("kind", ["street", "courtyard", "ring"])
def test_depth_map_agrees_with_projected_face_points(kind):
    """Every point of a drawn face lands where the depth map is its depth, or nearer (occluded); never farther."""
    options = SceneDatasetOptions(kind=kind, num_images=12, noise_sigma=0.0, **SMALL)
    scene = build_scene(options, rng=3)
    rng = np.random.default_rng(0)
    checked = 0
    for i in (0, 5, 7):
        _, depth, drawn = render_view(scene, i, far_m=options.far_m)
        assert len(drawn) > 0
        cam = scene.cams_from_world[i]
        xyz, quads = _points_on_drawn_faces(scene, drawn, rng)
        in_cam = cam.apply(xyz)
        px = scene.camera.project(np.where(in_cam[:, 2:3] > 0.05, in_cam, np.nan))
        inside = (
            (px[:, 0] >= 1)
            & (px[:, 0] <= options.width - 2)
            & (px[:, 1] >= 1)
            & (px[:, 1] <= options.height - 2)
        )
        # A face seen within 1 deg of edge-on (its plane passes next to the camera centre: 7 mm in the
        # street's view 7) covers no pixel area, and the depth of its plane along a pixel-centre ray is
        # ill-conditioned (it can fall behind the camera): its points are not checked.
        normals = np.cross(scene.axes_u[quads], scene.axes_v[quads])
        rays = xyz - cam.center
        grazing = np.abs(np.sum(normals * rays, axis=1)) < np.sin(np.radians(1.0)) * np.linalg.norm(
            normals, axis=1
        ) * np.linalg.norm(rays, axis=1)
        inside &= ~grazing
        cols, rows = np.rint(px[inside, 0]).astype(int), np.rint(px[inside, 1]).astype(int)
        seen = depth[rows, cols]
        # The depth of the point's own face along the ray of the pixel centre it falls in: exact.
        z = _face_depth_at_pixels(scene, cam, quads[inside], cols, rows)
        visible = np.abs(seen - z) <= 1e-4 * z
        hidden = seen < z
        assert np.mean(visible | hidden) > 0.995, kind
        assert np.mean(visible) > 0.2, kind  # a fair share of the sampled points is not hidden
        checked += int(inside.sum())
    assert checked > 100


def test_textures_are_photo_consistent_across_views():
    """A patch around a face point in view i matches view j warped by the face's plane homography."""
    options = SceneDatasetOptions(
        kind="street", num_images=10, noise_sigma=0.0, exposure_range=(1.0, 1.0), **SMALL
    )
    scene = build_scene(options, rng=1)
    renders = [render_view(scene, i, far_m=options.far_m) for i in range(options.num_images)]
    rng = np.random.default_rng(1)
    scores = []
    half = 7
    for i, j in ((0, 1), (1, 2), (2, 3), (7, 8)):
        img_i, depth_i, drawn_i = renders[i]
        img_j, depth_j, drawn_j = renders[j]
        common = np.intersect1d(drawn_i, drawn_j)
        xyz, quads = _points_on_drawn_faces(scene, common, rng, per_face=30)
        cam_i, cam_j = scene.cams_from_world[i], scene.cams_from_world[j]
        for x, q in zip(xyz, quads, strict=True):
            pi = cam_i.apply(x[None])[0]
            pj = cam_j.apply(x[None])[0]
            if pi[2] < 0.1 or pj[2] < 0.1:
                continue
            ui, uj = scene.camera.project(pi[None])[0], scene.camera.project(pj[None])[0]
            lo, hi_x, hi_y = half + 2, options.width - half - 3, options.height - half - 3
            if not (
                lo <= ui[0] <= hi_x and lo <= ui[1] <= hi_y and lo <= uj[0] <= hi_x and lo <= uj[1] <= hi_y
            ):
                continue
            ci, ri = np.rint(ui).astype(int)
            cj, rj = np.rint(uj).astype(int)
            # Visible in both (no occluder) and the whole patch on the same face's plane in view i.
            zi = pi[2]
            if abs(depth_i[ri, ci] - zi) > 0.01 * zi or abs(depth_j[rj, cj] - pj[2]) > 0.01 * pj[2]:
                continue
            H = _plane_homography(scene, int(q), cam_i, cam_j)
            patch_d = depth_i[ri - half : ri + half + 1, ci - half : ci + half + 1]
            if not np.isfinite(patch_d).all():
                continue
            # All patch pixels on face q's plane: their depth matches the plane's.
            normal_i = cam_i.rotation @ np.cross(scene.axes_u[q], scene.axes_v[q])
            d = normal_i @ cam_i.apply(scene.origins[q][None])[0]
            cols, rows = np.meshgrid(np.arange(ci - half, ci + half + 1), np.arange(ri - half, ri + half + 1))
            r = np.stack(
                [
                    (cols - scene.camera.K[0, 2]) / scene.camera.K[0, 0],
                    (rows - scene.camera.K[1, 2]) / scene.camera.K[1, 1],
                    np.ones_like(cols, float),
                ],
                -1,
            )
            plane_depth = d / (r @ normal_i)
            if np.abs(patch_d - plane_depth).max() > 0.01 * zi:
                continue
            # Bring view j into view i's pixel grid through the plane: sample j at H (x_i).
            warped = cv2.warpPerspective(
                img_j, H, (options.width, options.height), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR
            )
            a = img_i[ri - half : ri + half + 1, ci - half : ci + half + 1].astype(np.float64).ravel()
            b = warped[ri - half : ri + half + 1, ci - half : ci + half + 1].astype(np.float64).ravel()
            if a.std() < 8:  # textureless patch: NCC is meaningless
                continue
            scores.append(np.corrcoef(a, b)[0, 1])
    assert len(scores) > 40
    assert np.median(scores) > 0.9
    assert np.mean(np.asarray(scores) > 0.7) > 0.9


def test_near_plane_clipping_of_a_face_behind_the_camera():
    """A ground plane that extends behind the camera: bottom half is ground at the exact depth, top half sky."""
    w, h, f = 160, 120, 100.0
    camera = Camera(1, "PINHOLE", w, h, np.array([f, f, (w - 1) / 2, (h - 1) / 2]))
    height_m = 1.5
    cam = look_at(np.array([0.0, 0.0, height_m]), np.array([0.0, 10.0, height_m]))  # horizontal optical axis
    scene = TexturedScene(
        origins=np.array([[-50.0, -50.0, 0.0]]),
        axes_u=np.array([[100.0, 0.0, 0.0]]),
        axes_v=np.array([[0.0, 100.0, 0.0]]),
        texture_sizes=np.array([[256, 256]]),
        texture_kinds=np.array([1]),
        cams_from_world=[cam],
        camera=camera,
        exposures=np.array([1.0]),
        seed=0,
    )
    image, depth, drawn = render_view(scene, 0, far_m=1000.0)
    assert drawn.tolist() == [0]
    cy = (h - 1) / 2
    rows = np.arange(h)
    with np.errstate(divide="ignore"):
        expected_all = height_m * f / (rows - cy)  # ray (x, (row - cy) / f, 1) meets z = 0 at this depth
    below = (rows > cy) & (expected_all < 49.0)  # the ground ends 50 m ahead
    expected = expected_all[below]
    np.testing.assert_allclose(depth[below, w // 2], expected, rtol=1e-5)
    assert np.isinf(depth[rows < cy - 0.5]).all()  # the part behind the camera folds nowhere into the sky
    sky = image[: int(cy) - 1]
    assert np.abs(np.diff(sky.astype(int), axis=1)).max() <= 1  # sky is a smooth vertical ramp


def test_radial_distortion_moves_texture_with_the_projection():
    """With SIMPLE_RADIAL k, the distorted image at the distorted projection shows what the pinhole one shows."""
    base = dict(kind="street", num_images=4, noise_sigma=0.0, exposure_range=(1.0, 1.0), **SMALL)
    pin = build_scene(SceneDatasetOptions(**base), rng=2)
    dis = build_scene(SceneDatasetOptions(radial_k=-0.2, **base), rng=2)
    assert dis.camera.model == "SIMPLE_RADIAL"
    img_p, depth_p, drawn = render_view(pin, 2)
    img_d, depth_d, _ = render_view(dis, 2)
    rng = np.random.default_rng(0)
    xyz, _ = _points_on_drawn_faces(pin, drawn, rng, per_face=40)
    in_cam = pin.cams_from_world[2].apply(xyz)
    in_cam = in_cam[in_cam[:, 2] > 0.1]
    pp, pd = pin.camera.project(in_cam), dis.camera.project(in_cam)
    ok = (
        (np.minimum(pp, pd).min(axis=1) >= 3)
        & (pp[:, 0] <= 316)
        & (pd[:, 0] <= 316)
        & (pp[:, 1] <= 236)
        & (pd[:, 1] <= 236)
    )
    assert np.abs(pp[ok] - pd[ok]).max() > 3  # the distortion is large enough to matter
    zp = depth_p[np.rint(pp[ok, 1]).astype(int), np.rint(pp[ok, 0]).astype(int)]
    zd = depth_d[np.rint(pd[ok, 1]).astype(int), np.rint(pd[ok, 0]).astype(int)]
    same = np.abs(zp - in_cam[ok, 2]) < 0.01 * in_cam[ok, 2]
    assert same.sum() > 30
    # Pixel rounding at occlusion edges may pick the neighbouring surface: nearly all agree.
    assert np.mean(np.abs(zd[same] - zp[same]) <= 0.02 * zp[same]) > 0.95
    diffs = [
        np.abs(
            cv2.getRectSubPix(img_p, (5, 5), tuple(map(float, p))).astype(int)
            - cv2.getRectSubPix(img_d, (5, 5), tuple(map(float, d))).astype(int)
        ).mean()
        for p, d in zip(pp[ok][same], pd[ok][same], strict=True)
    ]
    assert np.median(diffs) < 12


def test_rendering_is_deterministic_from_the_seed():
    options = SceneDatasetOptions(kind="courtyard", num_images=6, **SMALL)
    a = render_view(build_scene(options, rng=5), 3, noise_sigma=2.0)[0]
    b = render_view(build_scene(options, rng=5), 3, noise_sigma=2.0)[0]
    c = render_view(build_scene(options, rng=6), 3, noise_sigma=2.0)[0]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_written_dataset_round_trips(tmp_path):
    """Files on disk: GT keypoints are projections of GT points, depth PNGs agree, EXIF focal is readable."""
    options = SceneDatasetOptions(kind="street", num_images=8, radial_k=-0.05, points_per_m2=4.0, **SMALL)
    result = write_scene_dataset(tmp_path / "ds", options, rng=4)
    assert len(result.image_names) == 8 and result.num_points3D > 20
    rec = read_model(tmp_path / "ds")
    assert len(rec.views) == 8 and rec.cameras[1].model == "SIMPLE_RADIAL"
    # Keypoints are the exact projections (through the writer's 0.5 px origin shift and back).
    assert rec.mean_reprojection_error_px() < 1e-3
    with_points = 0
    for view in rec.views.values():
        img = read_image(tmp_path / "ds" / "images" / view.name)
        assert img.shape == (240, 320, 3)
        depth_mm = cv2.imread(
            str(tmp_path / "ds" / "depth" / view.name.replace(".jpg", ".png")), cv2.IMREAD_UNCHANGED
        )
        assert depth_mm.dtype == np.uint16
        has = view.point3D_ids >= 0
        if not has.any():
            continue
        with_points += 1
        xyz = np.array([rec.points3D[int(p)].xyz for p in view.point3D_ids[has]])
        z = view.cam_from_world.apply(xyz)[:, 2]
        kp = view.keypoints_px[has]
        seen = depth_mm[np.rint(kp[:, 1]).astype(int), np.rint(kp[:, 0]).astype(int)] * DEPTH_PNG_SCALE_M
        assert np.all(np.abs(seen - z) <= 0.006 * z + 0.001)
    assert with_points >= 6
    focal = read_exif_focal_px(tmp_path / "ds" / "images" / result.image_names[0])
    assert focal == pytest.approx(options.focal_px, rel=1e-4)
    meta = json.loads((tmp_path / "ds" / "scene.json").read_text())
    assert meta["seed"] == 4 and meta["num_images"] == 8


def test_cli_writes_a_dataset_that_evaluate_reads(tmp_path, capsys):
    out = tmp_path / "scene"
    code = main(
        [
            "synth-scene",
            "--kind",
            "ring",
            "--images",
            "6",
            "-o",
            str(out),
            "--width",
            "320",
            "--height",
            "240",
            "--no-depth",
            "--no-progress",
        ]
    )
    assert code == 0
    assert not (out / "depth").exists()
    assert len(list((out / "images").glob("*.jpg"))) == 6
    capsys.readouterr()
    assert main(["evaluate", str(out), "--gt", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["num_registered"] == 6 and summary["auc@2"] == pytest.approx(1.0)


def test_options_name_the_bad_value():
    with pytest.raises(InputError, match="'tower'"):
        SceneDatasetOptions(kind="tower")
    with pytest.raises(InputError, match="1"):
        SceneDatasetOptions(num_images=1)


@pytest.mark.slow
def test_images_of_unrelated_facades_do_not_verify(tmp_path):
    """Facade textures must not repeat: pairs of images with no common surface fail geometric verification.

    Plain crops of the few sample photos repeated over many faces verified 137 of 150 such pairs.
    """
    import collections

    from geomvision.features.extract import ExtractionOptions, extract_features
    from geomvision.features.match import MatchingOptions, match_pairs
    from geomvision.features.pairs import exhaustive_pairs
    from geomvision.sfm.two_view import verify_pairs

    write_scene_dataset(tmp_path, SceneDatasetOptions(kind="street", num_images=40, write_depth=False), rng=0)
    rec = read_model(tmp_path)
    paths = sorted((tmp_path / "images").glob("*.jpg"))
    features = dict(enumerate(extract_features(paths, ExtractionOptions(root_sift=True)), start=1))
    shared = collections.Counter()
    for point in rec.points3D.values():
        ids = sorted({i for i, _ in point.track})
        shared.update((a, b) for k, a in enumerate(ids) for b in ids[k + 1 :])
    pairs = exhaustive_pairs(features)
    rng = np.random.default_rng(0)
    unrelated = [tuple(int(i) for i in p) for p in rng.permutation([p for p in pairs if shared[p] == 0])[:60]]
    related = [p for p in pairs if shared[p] >= 10 and p[1] - p[0] == 1]  # consecutive views, common surface
    matches = match_pairs(features, unrelated + related, MatchingOptions(max_distance=0.4))
    cameras = {i: rec.cameras[1] for i in features}
    verified = verify_pairs(features, matches, cameras)
    assert sum(verified[p].success for p in unrelated) <= 1
    assert len(related) >= 15
    assert sum(verified[p].success for p in related) >= 0.8 * len(related)
