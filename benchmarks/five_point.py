"""Per-sample cost of essential-matrix RANSAC: the five-point solver and estimate_essential at the cap.

Measures, in one process with single-threaded BLAS / OpenCV:

- the batched five-point solver on B random minimal samples: ``essential_5point_hypotheses`` (Nistér's
  degree-10 polynomial, real roots by Sturm sequences) against the action-matrix path it falls back on
  (Stewénius et al. 2006: eigen-decomposition of the 10x10 action matrix, every complex solution);
- ``estimate_essential`` on a weak pair (140 matches, 15 % inliers, 0.5 px noise) that runs RANSAC to
  its ``max_iterations`` cap, as geometric verification does on many castle-P19 pairs, against OpenCV
  ``findEssentialMat`` (RANSAC, confidence 1 - 1e-9 so that it also runs to its cap).

Times are CPU seconds (``time.process_time``), the minimum over repetitions, per minimal sample.

Usage::

    python benchmarks/five_point.py            # B = 1000, 5 repetitions, 3 RANSAC seeds
    python benchmarks/five_point.py --reps 2 --seeds 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: a busy shared machine makes BLAS
# threads many times slower on the medium-size products of the solver.

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from geomvision.geometry import epipolar  # noqa: E402
from geomvision.geometry.rigid import rotvec_to_matrix  # noqa: E402
from geomvision.robust.estimators import estimate_essential  # noqa: E402
from geomvision.robust.ransac import RansacOptions  # noqa: E402
from geomvision.runtime.atomic import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "five_point.md"


def random_samples(B: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, 5, 2) normalised coordinates of random scenes seen from random relative poses."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (B, 5, 3)) + [0.0, 0.0, 5.0]
    R = rotvec_to_matrix(rng.normal(0, 0.3, (B, 3)))
    X2 = np.einsum("bij,bnj->bni", R, X) + rng.normal(0, 1, (B, 3))[:, None]
    return X[..., :2] / X[..., 2:], X2[..., :2] / X2[..., 2:]


def action_matrix_solutions(xn1: np.ndarray, xn2: np.ndarray) -> np.ndarray:
    """Reference solver: all real solutions from the eigenvectors of the action matrix."""
    basis, M20 = epipolar._five_point_system(xn1, xn2)
    xyz, valid = epipolar._five_point_action(M20)
    E = np.einsum("bsk,bkn->bsn", xyz, basis[:, :3]) + basis[:, None, 3]
    return E[valid]


def weak_pair(seed: int = 3, n: int = 140, inlier_ratio: float = 0.15):
    """A pair like castle-P19's weak ones: n matches, 15 % inliers with 0.5 px noise, 3072 x 2048 px."""
    rng = np.random.default_rng(seed)
    K = np.array([[2760.0, 0.0, 1536.0], [0.0, 2760.0, 1024.0], [0.0, 0.0, 1.0]])
    n_in = int(round(inlier_ratio * n))
    X = rng.uniform(-2, 2, (n_in, 3)) + [0.0, 0.0, 8.0]
    R, t = rotvec_to_matrix(np.array([0.05, 0.2, 0.02])), np.array([-1.0, 0.1, 0.05])
    x1 = X @ K.T
    X2 = X @ R.T + t
    x2 = X2 @ K.T
    x1 = x1[:, :2] / x1[:, 2:] + rng.normal(0, 0.5, (n_in, 2))
    x2 = x2[:, :2] / x2[:, 2:] + rng.normal(0, 0.5, (n_in, 2))
    size = np.array([3072.0, 2048.0])
    x1 = np.vstack([x1, rng.uniform(0, 1, (n - n_in, 2)) * size])
    x2 = np.vstack([x2, rng.uniform(0, 1, (n - n_in, 2)) * size])
    return x1, x2, K


def cpu_min(fn, reps: int) -> float:
    best = np.inf
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1000, help="minimal samples per solver call")
    ap.add_argument("--reps", type=int, default=9, help="repetitions (minimum time is kept)")
    ap.add_argument("--seeds", type=int, default=3, help="RANSAC seeds for the weak pair")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)

    xn1, xn2 = random_samples(args.batch, 0)
    new, ref = np.inf, np.inf
    for _ in range(args.reps):  # interleaved: both see the same machine load
        new = min(new, cpu_min(lambda: epipolar.essential_5point_hypotheses(xn1, xn2), 1))
        ref = min(ref, cpu_min(lambda: action_matrix_solutions(xn1, xn2), 1))
    num_solutions = len(epipolar.essential_5point_hypotheses(xn1, xn2)[1])

    x1, x2, K = weak_pair()
    opts = RansacOptions(max_error_px=2.0, max_iterations=10_000)
    ours, cv = [], []
    for seed in range(args.seeds):
        t0 = time.process_time()
        res = estimate_essential(x1, x2, K, K, opts, rng=seed)
        ours.append((time.process_time() - t0) / res.num_iterations)
        cv2.setRNGSeed(seed)
        t0 = time.process_time()
        cv2.findEssentialMat(x1, x2, K, method=cv2.RANSAC, prob=1 - 1e-9, threshold=2.0, maxIters=10_000)
        cv.append((time.process_time() - t0) / 10_000)
    us = 1e6
    rows = [
        ("five-point solver, Sturm (ours)", new / args.batch * us, ""),
        ("five-point solver, action matrix (reference)", ref / args.batch * us, f"{ref / new:.2f}x ours"),
        (
            f"estimate_essential at the cap ({res.num_iterations} samples, {res.num_inliers} inliers)",
            min(ours) * us,
            "",
        ),
        (
            "cv2.findEssentialMat RANSAC at the cap (10000 samples)",
            min(cv) * us,
            f"ours {min(ours) / min(cv):.1f}x",
        ),
    ]
    lines = [
        "# Five-point RANSAC: cost per minimal sample",
        "",
        f"Produced by `benchmarks/five_point.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
        f"(Python {sys.version.split()[0]}, numpy {np.__version__}, OpenCV {cv2.__version__}); CPU time, "
        f"minimum of {args.reps} repetitions / {args.seeds} seeds, single-threaded BLAS and OpenCV. "
        f"Solver: {args.batch} random samples, {num_solutions / args.batch:.2f} real solutions per sample.",
        "",
        "| what | us per sample | note |",
        "|---|---|---|",
        *[f"| {name} | {t:.1f} | {note} |" for name, t, note in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.output, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
