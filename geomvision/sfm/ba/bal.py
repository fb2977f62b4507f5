"""BAL problems (:mod:`geomvision.io.bal`) as bundle-adjustment problems, and the solution back.

The reader lives in ``io`` (below ``sfm``), so the conversion to the solver's arrays lives here.
"""

from __future__ import annotations

import numpy as np

from geomvision.io.bal import BALProblem
from geomvision.sfm.ba.model import BundleAdjustmentProblem


def bal_to_ba_problem(bal: BALProblem, *, refine_intrinsics: bool = True) -> BundleAdjustmentProblem:
    """A ``BundleAdjustmentProblem`` sharing nothing with ``bal`` (one RADIAL camera per image; f, k1, k2
    optimised when ``refine_intrinsics``, the zero principal point held)."""
    free = np.zeros((bal.num_cameras, 5), bool)
    if refine_intrinsics:
        free[:, [0, 3, 4]] = True
    return BundleAdjustmentProblem(
        camera_models=["RADIAL"] * bal.num_cameras,
        intrinsics=bal.intrinsics.copy(),
        image_group=np.arange(bal.num_cameras),
        rotvecs=bal.rotvecs.copy(),
        translations=bal.translations.copy(),
        points=bal.points.copy(),
        obs_image=bal.obs_camera,
        obs_point=bal.obs_point,
        obs_px=bal.obs_px,
        intrinsics_free=free,
    )


def update_bal_from_ba_problem(bal: BALProblem, problem: BundleAdjustmentProblem) -> None:
    """Copy poses, intrinsics and points of a solved problem back into ``bal``."""
    bal.rotvecs = problem.rotvecs.copy()
    bal.translations = problem.translations.copy()
    bal.intrinsics = problem.intrinsics.copy()
    bal.points = problem.points.copy()
