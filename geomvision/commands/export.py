"""``geomvision export OUT --format ...``: write the model as COLMAP text/binary, PLY, nerfstudio or JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export a reconstruction (colmap-text, colmap-bin, ply, nerfstudio, json)"

FORMATS = ("colmap-text", "colmap-bin", "ply", "nerfstudio", "json")
_DEFAULT_DEST = {
    "colmap-text": "export/colmap_text",
    "colmap-bin": "export/colmap_bin",
    "ply": "export/scene.ply",
    "nerfstudio": "export/nerfstudio/transforms.json",
    "json": "export/reconstruction.json",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="output folder holding sparse/0, or a COLMAP model folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("-o", "--output", help="destination file/folder (default OUT/export/...)")
    parser.add_argument("--no-cameras", action="store_true", help="ply: points only, without camera frustums")
    parser.add_argument(
        "--image-prefix", default="images/", help="nerfstudio: prefix of each frame's file_path"
    )


def run(args: argparse.Namespace) -> int:
    from geomvision.io.colmap import find_model_folder, read_model, write_model

    folder = find_model_folder(args.model)
    rec = read_model(folder)
    root = Path(args.model)
    dest = Path(args.output) if args.output else root / _DEFAULT_DEST[args.format]
    if args.format in ("colmap-text", "colmap-bin"):
        write_model(rec, dest, binary=args.format == "colmap-bin")
    elif args.format == "ply":
        from geomvision.io.ply import write_reconstruction_ply
        from geomvision.viz.scene_ply import write_scene_ply

        (write_reconstruction_ply if args.no_cameras else write_scene_ply)(dest, rec)
    elif args.format == "nerfstudio":
        from geomvision.io.nerfstudio import write_transforms_json

        dest = write_transforms_json(rec, dest, image_prefix=args.image_prefix)
    else:
        from geomvision.io.json_model import write_json_model

        write_json_model(rec, dest)
    print(f"wrote {args.format} ({rec.num_registered} images, {len(rec.points3D)} points) to {dest}")
    return 0
