"""``geomvision train-pose --model posenet|relpose|sequence OUT --images DIR``: train a learned pose model.

``OUT`` is a reconstruction (a ``geomvision reconstruct`` output folder, a COLMAP model folder) or a
Middlebury ``*_par.txt`` ground-truth file; labels are its registered poses relative to the first camera.
Needs torch (``pip install geomvision[learned]``). Prints one JSON line with the checkpoint and timings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geomvision.commands._args import option_values

NAME = "train-pose"
HELP = "train a learned camera-pose model (posenet, relpose, sequence) on a reconstruction's posed images"


def _size(text: str) -> tuple[int, int]:
    from geomvision.errors import InputError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--image-size must look like 160x120, got {text!r}") from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "reconstruction", help="reconstruction folder (sparse/0 or COLMAP model) or *_par.txt file"
    )
    parser.add_argument(
        "--model", default="posenet", help="pose model plugin: posenet, relpose, sequence, ..."
    )
    parser.add_argument("--images", help="image folder (default: the *_par.txt file's folder)")
    parser.add_argument("-o", "--output", help="checkpoint file (default: OUT/pose_<model>.pt)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--beta", type=float, default=2.0, help="weight of the rotation loss term")
    parser.add_argument(
        "--image-size", type=_size, default=(160, 120), help="network input WxH (default 160x120)"
    )
    parser.add_argument("--backbone", default="auto", help="auto, small, resnet18, resnet34 (random init)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (fewer than cores helps on a busy machine)"
    )
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if the checkpoint exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_checkpoint(reconstruction: Path, model: str) -> Path:
    folder = reconstruction.parent if reconstruction.is_file() else reconstruction
    return folder / f"pose_{model}.pt"


def run(args: argparse.Namespace) -> int:
    from geomvision.plugins.registry import import_learned
    from geomvision.progress import tqdm_progress

    data = import_learned("data")
    train = import_learned("train")
    source = Path(args.reconstruction)
    posed = data.load_posed_images(source, args.images)
    checkpoint = Path(args.output) if args.output else default_checkpoint(source, args.model)
    options = train.TrainOptions(
        **option_values(
            args,
            "model",
            "epochs",
            "batch_size",
            "lr",
            "beta",
            "image_size",
            "device",
            "seed",
            num_threads="threads",
        ),
        model_config={"backbone": args.backbone},
        resume=not args.no_resume,
    )
    with tqdm_progress(f"train {args.model}", enabled=not args.no_progress) as progress:
        result = train.train_pose_model(posed, checkpoint, options, progress=progress)
    print(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint_path),
                "model": args.model,
                "num_images": len(posed),
                "epochs_run": result.epochs_run,
                "start_epoch": result.start_epoch,
                "final_loss": result.losses[-1] if result.losses else None,
                "train_time_s": round(result.train_time_s, 3),
                "device": result.device,
            }
        )
    )
    return 0
