"""Inference with trained pose models: localisation and the pipeline's relative-pose prior.

Wiring the prior into the pipeline (for the lead): for a verified-pair candidate ``(i, j)`` whose
feature matches fail two-view verification, call::

    from geomvision.plugins.learned.inference import load_checkpoint, relative_pose_prior
    model = load_checkpoint("pose.pt")                     # once; any model kind works
    cam2_from_cam1, confidence = relative_pose_prior(model, image_i, image_j)

``cam2_from_cam1`` is a :class:`~geomvision.geometry.rigid.Rigid3d` with a *unit* translation (the
scale of a two-view pose is unobservable, like an essential matrix's), usable as a weak edge in the view
graph (e.g. ``TwoViewGeometry`` with ``num_inliers=0`` and a flag) or as an initial guess for
registration; ``confidence`` in (0, 1] comes from the consistency of the model's forward and backward
predictions (1 = perfectly consistent) and should gate its use, e.g. ``confidence > 0.5``. Import this
module only inside a ``try`` that catches ``ImportError`` (torch is optional) — or go through
:func:`geomvision.plugins.registry.list_plugins` first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geomvision.errors import InputError
from geomvision.geometry.rigid import (
    Rigid3d,
    angle_between_vectors_deg,
    quat_wxyz_to_matrix,
    rotation_angle_deg,
)
from geomvision.plugins.learned.data import batch_to_tensor, load_image_stack
from geomvision.plugins.learned.train import read_checkpoint, resolve_device
from geomvision.plugins.registry import get_pose_model_factory

__all__ = [
    "LoadedPoseModel",
    "load_checkpoint",
    "predict_absolute_poses",
    "predict_relative_poses",
    "predict_sequence_poses",
    "relative_pose_prior",
    "localize",
]

logger = logging.getLogger(__name__)

ImageInput = str | Path | np.ndarray


@dataclass
class LoadedPoseModel:
    """A trained model in eval mode plus what is needed to undo its label normalisation.

    Attributes:
        model: the ``torch.nn.Module`` (eval mode, on ``device``).
        model_name: registry name; kind: ``absolute``, ``relative`` or ``sequence``.
        image_size: (width, height) network input; crop_fraction: stored-image enlargement (centre crop).
        translation_scale: world units per label unit.
        reference_cam_from_world: pose of the training reference camera (labels are relative to it).
        device: where the model runs.
    """

    model: torch.nn.Module
    model_name: str
    kind: str
    image_size: tuple[int, int]
    crop_fraction: float
    translation_scale: float
    reference_cam_from_world: Rigid3d
    device: torch.device


def load_checkpoint(path: str | Path, *, device: str = "auto") -> LoadedPoseModel:
    """Rebuild a trained model from a checkpoint through the plugin registry."""
    dev = resolve_device(device)
    state = read_checkpoint(path, map_location="cpu")
    model = get_pose_model_factory(state["model_name"])(**state["model_config"])
    model.load_state_dict(state["state_dict"])
    model.to(dev).eval()
    return LoadedPoseModel(
        model=model,
        model_name=state["model_name"],
        kind=state["kind"],
        image_size=(int(state["image_size"][0]), int(state["image_size"][1])),
        crop_fraction=float(state["crop_fraction"]),
        translation_scale=float(state["translation_scale"]),
        reference_cam_from_world=Rigid3d.from_matrix(np.asarray(state["reference_cam_from_world"])),
        device=dev,
    )


def _as_loaded(model: LoadedPoseModel | str | Path, *kinds: str) -> LoadedPoseModel:
    """The model (loaded from its checkpoint when given a path); with ``kinds``, one of those kinds."""
    loaded = model if isinstance(model, LoadedPoseModel) else load_checkpoint(model)
    if kinds and loaded.kind not in kinds:
        raise InputError(
            f"model {loaded.model_name!r} is {loaded.kind}; this needs a {' or '.join(kinds)} model"
        )
    return loaded


def _inputs(loaded: LoadedPoseModel, images: Sequence[ImageInput]) -> torch.Tensor:
    """(N, 3, H, W) standardised centre crops on the model's device."""
    if len(images) == 0:
        raise InputError("no images given")
    stack = torch.as_tensor(
        load_image_stack(images, loaded.image_size, loaded.crop_fraction), device=loaded.device
    )
    return batch_to_tensor(stack, loaded.image_size)


def _ref_from_cam(pred: np.ndarray, scale: float) -> list[Rigid3d]:
    """Rows [centre (3), quat_wxyz (4)] of ``ref_from_cam`` in label units -> Rigid3d in world units."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 7)
    R = quat_wxyz_to_matrix(pred[:, 3:])
    return [Rigid3d(r, c * scale) for r, c in zip(R, pred[:, :3], strict=True)]


@torch.no_grad()
def predict_absolute_poses(
    model: LoadedPoseModel | str | Path, images: Sequence[ImageInput]
) -> list[Rigid3d]:
    """``cam_from_world`` of each image, in the world frame of the model's training reconstruction."""
    loaded = _as_loaded(model, "absolute")
    pred = loaded.model(_inputs(loaded, images)).cpu().numpy()
    ref_from_world = loaded.reference_cam_from_world
    return [
        ref_from_cam.inverse() @ ref_from_world
        for ref_from_cam in _ref_from_cam(pred, loaded.translation_scale)
    ]


@torch.no_grad()
def predict_relative_poses(
    model: LoadedPoseModel | str | Path, images1: Sequence[ImageInput], images2: Sequence[ImageInput]
) -> list[Rigid3d]:
    """``cam2_from_cam1`` for each pair (images1[k], images2[k]); translations are unit directions."""
    loaded = _as_loaded(model, "relative")
    if len(images1) != len(images2):
        raise InputError(f"need as many first as second images, got {len(images1)} and {len(images2)}")
    x = _inputs(loaded, list(images1) + list(images2))
    pred = loaded.model(x[: len(images1)], x[len(images1) :]).cpu().numpy().astype(np.float64)
    R = quat_wxyz_to_matrix(pred[:, :4])
    t = pred[:, 4:] / np.linalg.norm(pred[:, 4:], axis=1, keepdims=True)
    return [Rigid3d(r, d) for r, d in zip(R, t, strict=True)]


@torch.no_grad()
def predict_sequence_poses(
    model: LoadedPoseModel | str | Path, images: Sequence[ImageInput]
) -> list[Rigid3d]:
    """``cam_k_from_cam_0`` for each image of a sequence (first ~ identity), in world units."""
    loaded = _as_loaded(model, "sequence")
    x = _inputs(loaded, images)
    pred = loaded.model(x[None])[0].cpu().numpy()
    return [first_from_cam.inverse() for first_from_cam in _ref_from_cam(pred, loaded.translation_scale)]


def _unit(pose: Rigid3d) -> Rigid3d:
    norm = np.linalg.norm(pose.translation)
    return Rigid3d(pose.rotation, pose.translation / norm if norm > 1e-12 else pose.translation)


def _consistency(forward: Rigid3d, backward: Rigid3d) -> float:
    """Confidence in (0, 1] from how well ``forward`` (2_from_1) agrees with ``backward^-1`` (1_from_2)^-1.

    ``exp(-(rotation disagreement / 10 deg + direction disagreement / 30 deg))``: a heuristic scale chosen
    so that a few degrees of disagreement still give a usable prior (> 0.5) and tens of degrees do not.
    """
    inv = backward.inverse()
    rot_err = float(rotation_angle_deg(forward.rotation, inv.rotation))
    if np.linalg.norm(forward.translation) < 1e-12 or np.linalg.norm(inv.translation) < 1e-12:
        dir_err = 0.0
    else:
        dir_err = float(angle_between_vectors_deg(forward.translation, inv.translation))
    return float(np.exp(-(rot_err / 10.0 + dir_err / 30.0)))


def relative_pose_prior(
    model: LoadedPoseModel | str | Path, image_i: ImageInput, image_j: ImageInput
) -> tuple[Rigid3d, float]:
    """A learned prior on ``cam2_from_cam1`` (camera 1 = image_i, camera 2 = image_j) and its confidence.

    Works with every model kind: a relative model predicts the pair both ways, a sequence model runs on
    ``[i, j]`` and ``[j, i]``, an absolute model composes its two absolute predictions (its backward
    estimate is the same composition, so its confidence comes from two crops of each image instead).

    Args:
        model: a :class:`LoadedPoseModel` or a checkpoint path.
        image_i, image_j: paths or (H, W, 3) uint8 RGB arrays.

    Returns:
        (``cam2_from_cam1`` with unit translation, confidence in (0, 1]).
    """
    loaded = _as_loaded(model)
    if loaded.kind == "relative":
        fwd, bwd = predict_relative_poses(loaded, [image_i, image_j], [image_j, image_i])
    elif loaded.kind == "sequence":
        fwd = predict_sequence_poses(loaded, [image_i, image_j])[1]
        bwd = predict_sequence_poses(loaded, [image_j, image_i])[1]
    else:
        pose_i, pose_j = predict_absolute_poses(loaded, [image_i, image_j])
        fwd = pose_j @ pose_i.inverse()
        # The backward estimate of an absolute model would be the same composition, so perturb the input
        # instead (slightly shifted crops): an unreliable prediction moves more under the perturbation.
        shifted = [_shift(_read(im)) for im in (image_i, image_j)]
        pose_i2, pose_j2 = predict_absolute_poses(loaded, shifted)
        bwd = (pose_j2 @ pose_i2.inverse()).inverse()
    return _unit(fwd), _consistency(_unit(fwd), _unit(bwd))


def _read(image: ImageInput) -> np.ndarray:
    from geomvision.plugins.learned.data import read_rgb

    return read_rgb(image)


def _shift(image: np.ndarray, fraction: float = 0.03) -> np.ndarray:
    """The image cropped by ``fraction`` of its size at the top-left (a mild test-time perturbation)."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[int(h * fraction) :, int(w * fraction) :])


def localize(
    model: LoadedPoseModel | str | Path, images: Sequence[ImageInput], names: Sequence[str] | None = None
) -> list[dict]:
    """JSON-ready poses for images, according to the model's kind.

    - absolute: each image's ``cam_from_world`` in the training reconstruction's world frame;
    - relative: each image after the first relative to the first (``cam_k_from_cam_0``, unit translation)
      with a confidence;
    - sequence: each image's ``cam_k_from_cam_0`` over the whole sequence (world units).

    Returns:
        One dict per image: ``image``, ``frame``, ``quat_wxyz``, ``translation``, ``center`` (and
        ``confidence`` for relative models).
    """
    loaded = _as_loaded(model)
    names = [str(n) for n in (names if names is not None else images)]
    if loaded.kind == "absolute":
        poses = predict_absolute_poses(loaded, images)
        frame, confidences = "world", [None] * len(poses)
    elif loaded.kind == "sequence":
        poses = predict_sequence_poses(loaded, images)
        frame, confidences = f"camera of {names[0]}", [None] * len(poses)
    else:
        if len(images) < 2:
            raise InputError("a relative pose model needs at least two images")
        priors = [relative_pose_prior(loaded, images[0], im) for im in images[1:]]
        poses = [Rigid3d()] + [p for p, _ in priors]
        frame, confidences = f"camera of {names[0]} (unit translation)", [1.0] + [c for _, c in priors]
    out = []
    for name, pose, conf in zip(names, poses, confidences, strict=True):
        entry = {
            "image": name,
            "frame": frame,
            "quat_wxyz": [round(float(v), 8) for v in pose.quat_wxyz],
            "translation": [round(float(v), 8) for v in pose.translation],
            "center": [round(float(v), 8) for v in pose.center],
        }
        if conf is not None:
            entry["confidence"] = round(float(conf), 6)
        out.append(entry)
    return out
