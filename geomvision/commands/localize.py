"""``geomvision localize --model CKPT IMAGE...``: poses of images from a trained pose model, as JSON.

An absolute model (posenet) gives each image's ``cam_from_world`` in its training reconstruction's frame;
a relative model gives each image relative to the first (unit translation, with a confidence); a sequence
model gives each image relative to the first, in world units. Needs torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "localize"
HELP = "estimate camera poses of images with a trained learned pose model (JSON on stdout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint written by geomvision train-pose")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from geomvision.errors import InputError
    from geomvision.plugins.registry import import_learned

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise InputError(f"image not found: {missing[0]}")
    inference = import_learned("inference")
    loaded = inference.load_checkpoint(args.model, device=args.device)
    poses = inference.localize(loaded, [Path(p) for p in args.images], names=args.images)
    print(json.dumps({"model": loaded.model_name, "kind": loaded.kind, "poses": poses}, indent=1))
    return 0
