"""The pipeline's hook for the learned pose prior: a trained checkpoint as ``prior_fn`` of
:func:`geomvision.sfm.pose_prior.register_with_pose_priors`.

It sits in ``plugins`` (above ``sfm``) because it loads the learned models through the plugin registry;
torch is imported only by :mod:`geomvision.plugins.learned`, lazily, when a checkpoint is requested.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geomvision.errors import InputError
from geomvision.geometry.rigid import Rigid3d
from geomvision.plugins.registry import PluginUnavailableError, import_learned
from geomvision.scene import Camera, ImageInfo, Reconstruction
from geomvision.sfm.pose_prior import CandidatePairs, PosePriorOptions, PriorFn, register_with_pose_priors


def check_learned_prior(checkpoint: str | Path):
    """Fail early (before hours of matching) if the prior cannot run; returns the inference module.

    Raises:
        InputError: the checkpoint does not exist, or torch is not installed
            ("torch not installed: pip install geomvision[learned]").
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"pose prior checkpoint not found: {path}")
    try:
        return import_learned("inference")
    except PluginUnavailableError as exc:
        raise InputError(str(exc)) from exc


def learned_prior_fn(checkpoint: str | Path, *, device: str = "auto") -> PriorFn:
    """``prior_fn`` from a trained pose-model checkpoint (any kind; see ``relative_pose_prior``).

    Raises:
        InputError: the checkpoint does not exist, or torch is not installed
            ("torch not installed: pip install geomvision[learned]").
    """
    inference = check_learned_prior(checkpoint)
    model = inference.load_checkpoint(Path(checkpoint), device=device)

    def prior(path_1: Path, path_2: Path) -> tuple[Rigid3d, float]:
        return inference.relative_pose_prior(model, path_1, path_2)

    return prior


def apply_learned_pose_prior(
    reconstructions: list[Reconstruction],
    cameras: Mapping[int, Camera],
    images: Mapping[int, ImageInfo],
    image_paths: Mapping[int, Path],
    candidate_pairs: CandidatePairs | None,
    checkpoint: str | Path,
    options: PosePriorOptions | None = None,
    *,
    prior_fn: PriorFn | None = None,
) -> dict[str, Any]:
    """The pipeline's hook: place images registered in no model into the largest one.

    Images registered in another model are left alone (their pose is in that model's frame). ``prior_fn``
    overrides the checkpoint (tests).

    Returns:
        The report of :func:`register_with_pose_priors` plus ``checkpoint`` and ``num_registered_by_prior``.
    """
    if not reconstructions:
        raise InputError("pose prior needs at least one reconstruction, got none")
    fn = prior_fn if prior_fn is not None else learned_prior_fn(checkpoint)
    elsewhere = {i for r in reconstructions[1:] for i in r.registered_image_ids}
    report = register_with_pose_priors(
        reconstructions[0],
        images,
        image_paths,
        fn,
        candidate_pairs,
        options,
        cameras=cameras,
        skip_image_ids=elsewhere,
    )
    report["checkpoint"] = str(checkpoint)
    report["num_registered_by_prior"] = len(report["registered_by_prior"])
    return report
