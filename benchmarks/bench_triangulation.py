"""Triangulation and homography DLT: geomvision vs OpenCV (and a per-point loop) in one process.

Measures wall time (best of ``--repeats``) and accuracy on noisy synthetic data with exact ground truth:

- two-view DLT: ``triangulate_dlt`` vs ``cv2.triangulatePoints``;
- N-view DLT: ``triangulate_nview`` (batched) vs a Python loop of one SVD per point (the textbook way);
- homography DLT: ``homography_dlt`` vs ``cv2.findHomography(method=0)`` (least squares on all points).

Writes ``benchmarks/results/bench_triangulation.md``. Run by hand:
``python benchmarks/bench_triangulation.py [--points 20000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from geomvision.geometry.homography import homography_dlt, homography_transfer_errors_sq
from geomvision.geometry.triangulation import triangulate_dlt, triangulate_nview
from geomvision.synthetic import add_pixel_noise, random_scene, two_view_correspondences


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def nview_loop(projections, x, point_index, num_points):
    """Reference: one (2k, 4) SVD per point in a Python loop."""
    order = np.argsort(point_index, kind="stable")
    starts = np.searchsorted(point_index[order], np.arange(num_points + 1))
    out = np.empty((num_points, 3))
    for p in range(num_points):
        sel = order[starts[p] : starts[p + 1]]
        P, xs = projections[sel], x[sel]
        A = np.concatenate([xs[:, :1] * P[:, 2] - P[:, 0], xs[:, 1:] * P[:, 2] - P[:, 1]])
        X = np.linalg.svd(A)[2][-1]
        out[p] = X[:3] / X[3]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--cameras", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise-px", type=float, default=0.5)
    default_out = Path(__file__).parent / "results" / "bench_triangulation.md"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []

    scene = random_scene(args.points, args.cameras, layout="ring", rng=rng)
    P = scene.projection_matrices()
    both = scene.visible[0] & scene.visible[1]
    x1 = add_pixel_noise(scene.observations_px[0, both], args.noise_px, rng)
    x2 = add_pixel_noise(scene.observations_px[1, both], args.noise_px, rng)
    truth = scene.points_in_world[both]
    t_ours, X_ours = best_time(lambda: triangulate_dlt(P[0], P[1], x1, x2), args.repeats)
    t_cv, X_h = best_time(lambda: cv2.triangulatePoints(P[0], P[1], x1.T, x2.T), args.repeats)
    X_cv = (X_h[:3] / X_h[3]).T
    err_ours = np.median(np.linalg.norm(X_ours - truth, axis=1))
    err_cv = np.median(np.linalg.norm(X_cv - truth, axis=1))
    rows.append(("two-view DLT", f"{len(x1)} pts", "cv2.triangulatePoints", t_ours, t_cv, err_ours, err_cv))

    cam_idx, pt_idx = np.nonzero(scene.visible)
    proj, x = P[cam_idx], add_pixel_noise(scene.observations_px[cam_idx, pt_idx], args.noise_px, rng)
    t_ours, X_ours = best_time(lambda: triangulate_nview(proj, x, pt_idx, scene.num_points), args.repeats)
    t_loop, X_loop = best_time(lambda: nview_loop(proj, x, pt_idx, scene.num_points), 1)
    rows.append(
        (
            "N-view DLT",
            f"{scene.num_points} pts x {args.cameras} views",
            "per-point SVD loop",
            t_ours,
            t_loop,
            np.median(np.linalg.norm(X_ours - scene.points_in_world, axis=1)),
            np.median(np.linalg.norm(X_loop - scene.points_in_world, axis=1)),
        )
    )

    data = two_view_correspondences(1000, noise_px=args.noise_px, planar=True, rng=rng)
    t_ours, H_ours = best_time(lambda: homography_dlt(data.x1_px, data.x2_px), args.repeats * 10)
    t_cv, (H_cv, _) = best_time(lambda: cv2.findHomography(data.x1_px, data.x2_px, 0), args.repeats * 10)

    def err(H):  # RMS of the forward and backward transfer error on the (noisy) input, px
        return float(np.sqrt(np.median(homography_transfer_errors_sq(H, data.x1_px, data.x2_px) / 2)))

    rows.append(("homography DLT", "1000 pts", "cv2.findHomography(0)", t_ours, t_cv, err(H_ours), err(H_cv)))
    H4 = data.x1_px[:4], data.x2_px[:4]
    t_ours, _ = best_time(lambda: homography_dlt(*H4), args.repeats * 100)
    t_cv, _ = best_time(lambda: cv2.findHomography(*H4, 0), args.repeats * 100)
    nan = float("nan")
    rows.append(("homography 4-pt", "4 pts", "cv2.findHomography(0)", t_ours, t_cv, nan, nan))

    lines = [
        f"Noise {args.noise_px} px, best of {args.repeats} runs; error = median 3D error (scene units, "
        "cloud radius 1) for triangulation, median RMS transfer error (px) for homographies.",
        "",
        "| task | size | peer | ours (s) | peer (s) | peer/ours time | ours error | peer error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, size, peer, t_o, t_p, e_o, e_p in rows:
        lines.append(
            f"| {task} | {size} | {peer} | {t_o:.4g} | {t_p:.4g} | {t_p / t_o:.2f} | {e_o:.3g} | {e_p:.3g} |"
        )
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
