"""Bundle adjustment of a BAL ("Bundle Adjustment in the Large") problem with both backends.

Usage::

    python examples/bundle_adjust_bal.py PROBLEM.txt [--backend schur|scipy] [--loss huber]

Without a file it builds a small synthetic BAL-like problem (known answer, 0.5 px noise) and checks that
the final RMS reprojection error is close to the noise level.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

from geomvision.io.bal import BALProblem, bal_to_reconstruction, read_bal
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust
from geomvision.synthetic import random_scene


def synthetic_problem(noise_px: float = 0.5, rng: int = 0):
    """A ring of 12 cameras around 400 points, observations with Gaussian pixel noise, perturbed start."""
    from geomvision.geometry.rigid import Rigid3d, rotvec_to_matrix
    from geomvision.scene import Camera, Reconstruction, View

    gen = np.random.default_rng(rng)
    scene = random_scene(400, 12, layout="ring", rng=rng)
    rec = Reconstruction()
    fx = scene.K[0, 0]
    rec.add_camera(
        Camera(1, "SIMPLE_RADIAL", scene.width, scene.height, [fx, scene.K[0, 2], scene.K[1, 2], 0.0])
    )
    for c, pose in enumerate(scene.cams_from_world):
        visible = np.flatnonzero(scene.visible[c])
        kp = scene.observations_px[c, visible] + gen.normal(0, noise_px, (len(visible), 2))
        start = Rigid3d(
            rotvec_to_matrix(gen.normal(0, 0.01, 3)) @ pose.rotation,
            pose.translation + gen.normal(0, 0.02, 3),
        )
        rec.add_view(View(c + 1, f"cam{c:02d}", 1, start, kp))
    for p in range(len(scene.points_in_world)):
        track = [
            (c + 1, int(np.searchsorted(np.flatnonzero(scene.visible[c]), p)))
            for c in range(len(scene.cams_from_world))
            if scene.visible[c, p]
        ]
        if len(track) >= 2:
            rec.add_point3D(scene.points_in_world[p] + gen.normal(0, 0.02, 3), track)
    return rec


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problem", nargs="?")
    parser.add_argument("--backend", default="schur", choices=("schur", "scipy"))
    parser.add_argument("--loss", default="linear", choices=("linear", "huber", "soft_l1", "cauchy"))
    args = parser.parse_args()

    if args.problem:
        problem: BALProblem = read_bal(args.problem)
        rec = bal_to_reconstruction(problem)
    else:
        rec = synthetic_problem()
    print(
        f"{rec.num_registered} cameras, {len(rec.points3D)} points, {rec.num_observations} observations, "
        f"initial mean reprojection error {rec.mean_reprojection_error_px():.3f} px"
    )
    for backend in dict.fromkeys([args.backend, "scipy" if args.backend == "schur" else "schur"]):
        work = copy.deepcopy(rec)
        options = BundleAdjustmentOptions(
            backend=backend, loss=args.loss, refine_focal=True, refine_extra_params=True
        )
        result = bundle_adjust(work, options)
        rms = np.sqrt(2 * result.final_cost / max(result.num_residuals, 1))
        print(
            f"{backend:6s}: cost {result.initial_cost:.2f} -> {result.final_cost:.2f} in {result.iterations} "
            f"iterations, {result.time_s:.2f} s, RMS residual {rms:.3f} px, "
            f"mean reprojection error {work.mean_reprojection_error_px():.3f} px"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
