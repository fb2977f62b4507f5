"""``geomvision export OUT --format ...``: write the model for other tools.

``colmap-text``, ``colmap-bin``, ``ply`` and ``json`` convert the model only. ``nerfstudio`` and
``colmap-undistorted`` write self-contained folders with undistorted images and a PINHOLE model
(``geomvision.io.undistort``), which ``ns-train`` and Gaussian-splatting trainers take as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

NAME = "export"
HELP = (
    "export a reconstruction (colmap-text, colmap-bin, ply, json; nerfstudio and colmap-undistorted "
    "write a folder with undistorted images)"
)

FORMATS = ("colmap-text", "colmap-bin", "ply", "nerfstudio", "colmap-undistorted", "json")
_DEFAULT_DEST = {
    "colmap-text": "export/colmap_text",
    "colmap-bin": "export/colmap_bin",
    "ply": "export/scene.ply",
    "nerfstudio": "export/nerfstudio",
    "colmap-undistorted": "export/colmap_undistorted",
    "json": "export/reconstruction.json",
}

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="output folder holding sparse/0, or a COLMAP model folder")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="nerfstudio: DIR/{transforms.json, images/, sparse_pc.ply} for ns-train --data DIR; "
        "colmap-undistorted: DIR/{images/, sparse/0/*.bin} with PINHOLE cameras (COLMAP image_undistorter "
        "layout, read by Gaussian-splatting trainers)",
    )
    parser.add_argument(
        "-o", "--output", help="destination file/folder (default OUT/export/...); a folder is replaced whole"
    )
    parser.add_argument("--no-cameras", action="store_true", help="ply: points only, without camera frustums")
    parser.add_argument(
        "--images",
        help="nerfstudio, colmap-undistorted: folder of the original images (default: image_dir of "
        "OUT/report.json)",
    )
    parser.add_argument(
        "--no-images",
        action="store_true",
        help="nerfstudio: write only transforms.json and sparse_pc.ply (file_path = images/NAME, original "
        "distortion fields); copy the images into DIR/images yourself",
    )


def _image_dir(args: argparse.Namespace) -> Path:
    from geomvision.errors import InputError

    if args.images:
        return Path(args.images)
    report = Path(args.model) / "report.json"
    try:
        data = json.loads(report.read_text())
        image_dir = data.get("image_dir_absolute") or data.get("image_dir")
    except (OSError, ValueError, AttributeError):
        image_dir = None
    if not image_dir or not Path(image_dir).is_dir():
        raise InputError(
            f"--format {args.format} needs the original images: pass --images DIR "
            f"({report} names {'no image folder' if not image_dir else repr(image_dir) + ', which is not here'})"
        )
    return Path(image_dir)


def run(args: argparse.Namespace) -> int:
    from geomvision.errors import InputError
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
    elif args.format == "nerfstudio" and args.no_images:
        from geomvision.io.nerfstudio import write_transforms_json
        from geomvision.io.undistort import replace_folder

        replace_folder(dest, lambda tmp: write_transforms_json(rec, tmp / "transforms.json"))
        logger.warning("copy the original images into %s/images/ before ns-train", dest)
    elif args.format in ("nerfstudio", "colmap-undistorted"):
        from geomvision.io.undistort import export_undistorted

        if dest.suffix.lower() == ".json":
            raise InputError(f"--format {args.format} writes a folder; give -o DIR, not {dest}")
        layout = "nerfstudio" if args.format == "nerfstudio" else "colmap"
        export_undistorted(rec, _image_dir(args), dest, layout=layout)
    else:
        from geomvision.io.json_model import write_json_model

        write_json_model(rec, dest)
    print(f"wrote {args.format} ({rec.num_registered} images, {len(rec.points3D)} points) to {dest}")
    return 0
