"""COLMAP model I/O speed: geomvision.io.colmap vs pycolmap (same files, same process).

Builds a random model (images x keypoints, points with fixed track length), then times text and binary
write and read for both libraries, each on its own output, and checks both read the other's files.
Writes benchmarks/results/bench_colmap_io.md.

Usage: python benchmarks/bench_colmap_io.py [--images 100] [--points 50000] [--track 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix
from geomvision.io.colmap import read_model, write_model
from geomvision.scene import Camera, Point3D, Reconstruction, View


def random_model(num_images: int, num_points: int, track: int, seed: int = 0) -> Reconstruction:
    rng = np.random.default_rng(seed)
    rec = Reconstruction()
    rec.add_camera(Camera(1, "OPENCV", 1920, 1080, [1500, 1500, 959.5, 539.5, 0.01, -0.002, 1e-4, 1e-4]))
    obs_image = np.stack([rng.choice(num_images, track, replace=False) for _ in range(num_points)]) + 1
    per_image = np.bincount(obs_image.ravel(), minlength=num_images + 1)
    extra = 200
    next_kp = np.full(num_images + 1, extra)
    kp_index = np.empty_like(obs_image)
    for col in range(track):  # assign keypoint slots image by image, vectorised per track column
        for image_id in range(1, num_images + 1):
            sel = obs_image[:, col] == image_id
            kp_index[sel, col] = next_kp[image_id] + np.arange(sel.sum())
            next_kp[image_id] += sel.sum()
    for image_id in range(1, num_images + 1):
        n = extra + per_image[image_id]
        pose = Rigid3d(rotvec_to_matrix(rng.normal(size=3)), rng.normal(size=3))
        rec.add_view(View(image_id, f"image_{image_id:05d}.jpg", 1, pose, rng.uniform(0, 1900, size=(n, 2))))
    xyz = rng.normal(size=(num_points, 3))
    rgb = rng.integers(0, 256, size=(num_points, 3)).astype(np.uint8)
    for p in range(num_points):
        track = list(zip(obs_image[p].tolist(), kp_index[p].tolist(), strict=True))
        rec.points3D[p + 1] = Point3D(xyz[p], rgb[p], 0.5, track)
    for image_id in range(1, num_images + 1):
        rows, cols = np.nonzero(obs_image == image_id)
        rec.views[image_id].point3D_ids[kp_index[rows, cols]] = rows + 1
    rec.next_point3D_id = num_points + 1
    return rec


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import pycolmap

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--points", type=int, default=50000)
    parser.add_argument("--track", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rec = random_model(args.images, args.points, args.track)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind, binary in (("text", False), ("binary", True)):
            ours, theirs = tmp / f"ours_{kind}", tmp / f"theirs_{kind}"
            t_write_ours = best_of(partial(write_model, rec, ours, binary=binary), args.repeat)
            prec = pycolmap.Reconstruction(str(ours))  # pycolmap reads our files
            theirs.mkdir()
            writer = prec.write_binary if binary else prec.write_text
            t_write_theirs = best_of(partial(writer, str(theirs)), args.repeat)
            t_read_ours = best_of(partial(read_model, theirs), args.repeat)  # we read pycolmap's files
            t_read_theirs = best_of(partial(pycolmap.Reconstruction, str(ours)), args.repeat)
            back = read_model(theirs)
            assert len(back.points3D) == args.points and back.num_observations == rec.num_observations
            rows.append((kind, "write", t_write_ours, t_write_theirs))
            rows.append((kind, "read", t_read_ours, t_read_theirs))
    obs = rec.num_observations
    lines = [
        f"COLMAP model I/O: {args.images} images, {args.points} points, {obs} observations, "
        f"{sum(len(v.keypoints_px) for v in rec.views.values())} keypoints (best of {args.repeat}).",
        "",
        "| format | op | geomvision (s) | pycolmap (s) | ratio ours/pycolmap |",
        "|---|---|---|---|---|",
    ]
    for kind, op, ours_t, theirs_t in rows:
        lines.append(f"| {kind} | {op} | {ours_t:.3f} | {theirs_t:.3f} | {ours_t / theirs_t:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / "bench_colmap_io.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
