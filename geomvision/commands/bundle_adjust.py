"""``geomvision bundle-adjust PROBLEM.txt``: bundle-adjust a BAL problem, print one JSON line."""

from __future__ import annotations

import argparse
import json
import math

from geomvision.commands._args import option_values

NAME = "bundle-adjust"
HELP = "bundle-adjust a BAL problem file; prints JSON with costs (0.5*sum r^2), error, iterations, time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("problem", help="BAL text problem (e.g. problem-49-7776-pre.txt)")
    parser.add_argument(
        "--backend",
        choices=("scipy", "schur"),
        default="schur",
        help="solver: scipy least_squares (TRF) or Schur-complement LM (default)",
    )
    parser.add_argument(
        "--loss",
        choices=("linear", "huber", "soft_l1", "cauchy"),
        default="linear",
        help="robust loss per observation (default linear)",
    )
    parser.add_argument("--loss-scale-px", type=float, default=1.0, help="robust loss scale in pixels")
    parser.add_argument("--max-iterations", type=int, default=100, help="iteration cap (default 100)")
    parser.add_argument(
        "--function-tolerance",
        type=float,
        default=1e-4,
        help="stop at this relative cost decrease (default 1e-4)",
    )
    parser.add_argument("--fix-intrinsics", action="store_true", help="hold f, k1, k2 of every camera")
    parser.add_argument("-o", "--output", help="write the adjusted problem here (BAL format)")


def _finite(value: float):
    return value if math.isfinite(value) else None


def run(args: argparse.Namespace) -> int:
    from geomvision.errors import InputError
    from geomvision.io.bal import read_bal, write_bal
    from geomvision.sfm.ba.bal import bal_to_ba_problem, update_bal_from_ba_problem
    from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, adjust_problem

    if args.max_iterations < 1:
        raise InputError(f"--max-iterations must be >= 1, got {args.max_iterations}")
    if not args.loss_scale_px > 0:
        raise InputError(f"--loss-scale-px must be > 0, got {args.loss_scale_px}")
    bal = read_bal(args.problem)
    problem = bal_to_ba_problem(bal, refine_intrinsics=not args.fix_intrinsics)
    options = BundleAdjustmentOptions(
        **option_values(args, "backend", "loss", "loss_scale_px", "max_iterations", "function_tolerance")
    )
    result = adjust_problem(problem, options)
    if args.output:
        update_bal_from_ba_problem(bal, problem)
        write_bal(args.output, bal)
    print(
        json.dumps(
            {
                "problem": str(args.problem),
                "backend": args.backend,
                "loss": args.loss,
                "num_cameras": bal.num_cameras,
                "num_points": bal.num_points,
                "num_observations": bal.num_observations,
                "initial_cost": _finite(result.initial_cost),
                "final_cost": _finite(result.final_cost),
                "initial_mean_reprojection_error_px": _finite(result.initial_mean_reprojection_error_px),
                "mean_reprojection_error_px": _finite(result.mean_reprojection_error_px),
                "iterations": result.iterations,
                "time_s": result.time_s,
                "success": bool(result.success),
                "reason": result.reason,
            }
        )
    )
    return 0 if result.success else 1
