"""Train the learned pose models on posed images, with atomic checkpoints and resume.

One function, :func:`train_pose_model`, trains any of the three model kinds. A checkpoint holds the
model's name and config (so :mod:`~geomvision.plugins.learned.inference` can rebuild it through the plugin
registry), its weights, the optimiser and random-generator states (so training resumes exactly), and the
label normalisation (reference pose, translation scale, image size).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geomvision.errors import InputError
from geomvision.plugins.learned.common import pose_regression_loss
from geomvision.plugins.learned.data import (
    PosedImages,
    absolute_labels,
    batch_to_tensor,
    load_image_stack,
    neighbour_pairs,
    relative_labels,
    sequence_labels,
    sequence_windows,
    translation_scale,
)
from geomvision.plugins.registry import get_pose_model_factory
from geomvision.progress import ProgressCallback, report
from geomvision.runtime.atomic import atomic_path

__all__ = [
    "TrainOptions",
    "TrainResult",
    "train_pose_model",
    "resolve_device",
    "save_checkpoint",
    "read_checkpoint",
    "CHECKPOINT_FORMAT",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "geomvision-pose-checkpoint-1"


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Options of :func:`train_pose_model`.

    Attributes:
        model: registered pose model name (``posenet``, ``relpose``, ``sequence`` or a plugin's).
        model_config: keyword arguments for the model factory (e.g. ``{"backbone": "small"}``).
        epochs: passes over the training samples (images, pairs or windows).
        batch_size: samples per step (a sequence window counts as one sample).
        lr: Adam learning rate, decayed by a cosine schedule to 1 % over ``epochs``.
        weight_decay: Adam L2 weight decay.
        beta: weight of the quaternion term of the loss.
        image_size: (width, height) of the network input in pixels.
        crop_fraction: images are stored this much larger and randomly cropped (0 disables crops).
        jitter: colour-jitter strength (relative brightness / contrast / saturation change).
        pair_window: relative model: pairs of images at most this many apart in name order.
        sequence_length: sequence model: frames per window.
        sequence_max_stride: sequence model: windows also skip up to this many images.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        seed: seeds torch and the sampling / augmentation generator.
        checkpoint_every: save every this many epochs (and always at the end).
        resume: continue from ``checkpoint_path`` when it exists.
        num_threads: torch intra-op CPU threads for this process (None: torch's default); fewer threads
            than cores avoids oversubscription on a shared machine.
    """

    model: str = "posenet"
    model_config: dict = dataclasses.field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    beta: float = 2.0
    image_size: tuple[int, int] = (160, 120)
    crop_fraction: float = 0.08
    jitter: float = 0.2
    pair_window: int = 3
    sequence_length: int = 4
    sequence_max_stride: int = 2
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 5
    resume: bool = True
    num_threads: int | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train_pose_model`.

    Attributes:
        checkpoint_path: where the final checkpoint was written.
        epochs_run: epochs trained in this call (0 when a finished checkpoint was resumed).
        start_epoch: epoch training started from (> 0 after a resume).
        losses: mean training loss of every epoch so far (resumed ones included).
        train_time_s: wall time of this call's training loop.
        device: the device used.
    """

    checkpoint_path: Path
    epochs_run: int
    start_epoch: int
    losses: list[float]
    train_time_s: float
    device: str


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with ``torch.save`` atomically (a crash leaves the previous checkpoint intact)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain Python data only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of all kinds mean "not our checkpoint"
        raise InputError(f"cannot read checkpoint {path}: {' '.join(str(exc).split())[:200]}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a geomvision pose checkpoint")
    return state


def _samples(kind: str, posed: PosedImages, options: TrainOptions, reference, scale: float):
    """(sample index arrays into the image stack, labels) for the model kind."""
    n = len(posed)
    if kind == "absolute":
        return np.arange(n)[:, None], absolute_labels(posed.cam_from_world, reference, scale)
    if kind == "relative":
        pairs = neighbour_pairs(n, options.pair_window)
        return pairs, relative_labels(posed.cam_from_world, pairs)
    if kind == "sequence":
        windows = sequence_windows(n, options.sequence_length, options.sequence_max_stride)
        return windows, sequence_labels(posed.cam_from_world, windows, scale)
    raise InputError(f"model kind must be absolute, relative or sequence, got {kind!r}")


def _forward(
    model,
    kind: str,
    stack: torch.Tensor,
    index: np.ndarray,
    options: TrainOptions,
    rng: np.random.Generator | None,
) -> torch.Tensor:
    """Run the model on the images of a batch of samples (B, k) -> predictions (B, 7) or (B, T, 7)."""
    b, k = index.shape
    flat = torch.as_tensor(index.reshape(-1), device=stack.device)
    images = batch_to_tensor(stack[flat], options.image_size, rng=rng, jitter=options.jitter if rng else 0.0)
    if kind == "absolute":
        return model(images)
    if kind == "relative":
        images = images.view(b, 2, *images.shape[1:])
        return model(images[:, 0], images[:, 1])
    return model(images.view(b, k, *images.shape[1:]))


def _check_options(options: TrainOptions, posed: PosedImages) -> None:
    if options.epochs < 0 or options.batch_size < 1:
        raise InputError(f"need epochs >= 0 and batch_size >= 1, got {options.epochs}, {options.batch_size}")
    w, h = options.image_size
    if w < 32 or h < 32:
        raise InputError(f"image_size must be at least 32x32, got {w}x{h}")
    if len(posed) < 2:
        raise InputError(f"need at least 2 posed images to train, got {len(posed)}")


def train_pose_model(
    posed: PosedImages,
    checkpoint_path: str | Path,
    options: TrainOptions,
    *,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a pose model on posed images and save it to ``checkpoint_path``.

    Labels are relative to ``posed``'s first image (the reference) and translations are divided by the
    median centre distance from it (see :mod:`geomvision.plugins.learned.data`).

    Args:
        posed: training images with ``cam_from_world`` poses.
        checkpoint_path: checkpoint to write (and to resume from when ``options.resume``).
        options: see :class:`TrainOptions`.
        progress: called as ``progress(epoch, epochs, "loss ...")`` after every epoch.

    Returns:
        :class:`TrainResult`.
    """
    _check_options(options, posed)
    checkpoint_path = Path(checkpoint_path)
    device = resolve_device(options.device)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)

    model = get_pose_model_factory(options.model)(**options.model_config)
    kind = model.kind
    reference = posed.cam_from_world[0]
    scale = translation_scale(posed.cam_from_world, reference)
    index, labels = _samples(kind, posed, options, reference, scale)
    stack = torch.as_tensor(
        load_image_stack(posed.paths, options.image_size, options.crop_fraction), device=device
    )
    targets = torch.as_tensor(labels, dtype=torch.float32, device=device)
    model.to(device)

    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    total = max(options.epochs, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(e, total) / total))
    )
    start_epoch, losses = 0, []
    if options.resume and checkpoint_path.is_file():
        state = read_checkpoint(checkpoint_path, map_location=device)
        if state["model_name"] != options.model or state["model_config"] != dict(model.config):
            raise InputError(
                f"{checkpoint_path} holds a different model ({state['model_name']} "
                f"{state['model_config']}); remove it or pick another output"
            )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        start_epoch, losses = int(state["epoch"]), list(state["losses"])
        logger.info("resuming %s from epoch %d", checkpoint_path, start_epoch)

    def snapshot(epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": options.model,
            "model_config": dict(model.config),
            "kind": kind,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "losses": losses,
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "image_size": list(options.image_size),
            "crop_fraction": float(options.crop_fraction),
            "translation_scale": scale,
            "reference_cam_from_world": reference.matrix().tolist(),
            "train_images": list(posed.names),
            "options": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()
            },
        }

    t0 = time.perf_counter()
    num_samples = len(index)
    for epoch in range(start_epoch, options.epochs):
        model.train()
        order = rng.permutation(num_samples)
        epoch_loss = 0.0
        # Drop a last batch of one: BatchNorm cannot normalise a single sample.
        batches = [order[s : s + options.batch_size] for s in range(0, num_samples, options.batch_size)]
        batches = [bt for bt in batches if len(bt) > 1 or num_samples == 1]
        for batch in batches:
            pred = _forward(model, kind, stack, index[batch], options, rng)
            loss = pose_regression_loss(
                pred,
                targets[torch.as_tensor(batch, device=device)],
                beta=options.beta,
                position_first=kind != "relative",
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach()) * len(batch)
        scheduler.step()
        losses.append(epoch_loss / max(sum(len(bt) for bt in batches), 1))
        if (epoch + 1) % options.checkpoint_every == 0 and epoch + 1 < options.epochs:
            save_checkpoint(checkpoint_path, snapshot(epoch + 1))
        report(progress, epoch + 1, options.epochs, f"loss {losses[-1]:.4f}")
    train_time = time.perf_counter() - t0
    save_checkpoint(checkpoint_path, snapshot(max(options.epochs, start_epoch)))
    logger.info(
        "trained %s for %d epochs in %.1f s on %s",
        options.model,
        options.epochs - start_epoch,
        train_time,
        device,
    )
    return TrainResult(
        checkpoint_path, max(options.epochs - start_epoch, 0), start_epoch, losses, train_time, str(device)
    )
