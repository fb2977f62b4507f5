"""Factorize 2D point tracks into affine cameras and 3D points (Tomasi-Kanade with missing data).

Loads the Oxford dinosaur tracks (``../shared/datasets/oxford_dinosaur/pts.txt``) when present, or makes a
synthetic turntable scene otherwise, runs the VarPro missing-data factorization from a few random starts,
and prints the RMS reprojection error over the observed entries.

    python examples/factorize_tracks.py [--pts PATH] [--min-views 6] [--starts 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small dense solves: BLAS threads only add overhead

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from geomvision.geometry import factorization as fz  # noqa: E402
from geomvision.geometry.rigid import rotvec_to_matrix  # noqa: E402
from geomvision.io.tracks import load_dinosaur_tracks  # noqa: E402

DEFAULT_PTS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "oxford_dinosaur" / "pts.txt"
)


def synthetic_turntable(num_frames: int = 36, num_points: int = 300, seed: int = 0) -> np.ndarray:
    """Weak-perspective turntable with 0.5 px noise; each point is seen over 4..10 consecutive frames."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-100, 100, (num_points, 3))
    W = np.full((2 * num_frames, num_points), np.nan)
    start = rng.integers(0, num_frames, num_points)
    length = rng.integers(4, 11, num_points)
    for f in range(num_frames):
        R = rotvec_to_matrix([0.0, np.radians(10.0 * f), 0.0]) @ rotvec_to_matrix([0.3, 0.0, 0.0])
        x = R[:2] @ points.T + np.array([[360.0], [288.0]]) + rng.normal(0, 0.5, (2, num_points))
        seen = (f - start) % num_frames < length
        W[2 * f : 2 * f + 2, seen] = x[:, seen]
    return W


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pts", type=Path, default=DEFAULT_PTS)
    parser.add_argument("--min-views", type=int, default=6)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    if args.pts.is_file():
        W_all, lengths = load_dinosaur_tracks(args.pts)
        W = W_all[:, lengths >= args.min_views]
        print(f"{args.pts}: {W.shape[0] // 2} frames, {W.shape[1]} tracks seen in >= {args.min_views} views")
    else:
        W = synthetic_turntable()
        print(f"{args.pts} not found: synthetic turntable, {W.shape[0] // 2} frames, {W.shape[1]} tracks")
    print(f"missing entries: {np.isnan(W[0::2]).mean():.1%}")
    for seed in range(args.starts):
        result = fz.factorize_affine_missing(W, fz.MissingDataOptions(camera="orthographic"), rng=seed)
        status = "ok" if result.success else f"metric upgrade failed: {result.reason}"
        print(
            f"start {seed}: RMS {result.rms:.4f} px (2D), {result.iterations} iterations, "
            f"{result.time_s:.2f} s, {status}"
        )


if __name__ == "__main__":
    main()
