"""``geomvision synth-scene --kind street --images N -o DIR``: a photo-textured synthetic dataset with ground truth."""

from __future__ import annotations

import argparse
import sys

from geomvision.commands._args import option_values

NAME = "synth-scene"
HELP = (
    "render a synthetic street/courtyard/ring dataset with exact ground truth "
    "(images/, sparse/0 COLMAP text, depth/, scene.json)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind", choices=("street", "courtyard", "ring"), default="street", help="scene layout"
    )
    parser.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    parser.add_argument("--width", type=int, default=640, help="image width in pixels (default 640)")
    parser.add_argument("--height", type=int, default=480, help="image height in pixels (default 480)")
    parser.add_argument(
        "--focal-factor",
        type=float,
        default=1.2,
        help="focal length as a multiple of max(w, h) (default 1.2)",
    )
    parser.add_argument(
        "--radial-k", type=float, default=0.0, help="SIMPLE_RADIAL distortion k (default 0: PINHOLE camera)"
    )
    parser.add_argument(
        "--noise", type=float, default=2.0, help="image noise sigma in grey levels (default 2)"
    )
    parser.add_argument(
        "--photos",
        action="append",
        metavar="DIR",
        help="folder of photos to crop facade textures from (repeatable; default: datasets/fountain_small/images)",
    )
    parser.add_argument("--no-depth", action="store_true", help="do not write depth/*.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from geomvision.progress import tqdm_progress
    from geomvision.synthetic_scenes import SceneDatasetOptions, write_scene_dataset

    options = SceneDatasetOptions(
        **option_values(
            args,
            "kind",
            "width",
            "height",
            "focal_factor",
            "radial_k",
            num_images="images",
            noise_sigma="noise",
        ),
        photo_dirs=tuple(args.photos) if args.photos else None,
        write_depth=not args.no_depth,
    )
    show = not args.no_progress and sys.stderr.isatty()
    with tqdm_progress("render", enabled=show) as progress:
        result = write_scene_dataset(args.output, options, rng=args.seed, progress=progress)
    print(
        f"wrote {len(result.image_names)} images of a {args.kind} scene ({result.num_quads} faces, "
        f"{result.num_points3D} ground-truth points) to {result.output_dir} in {result.total_time_s:.1f} s "
        f"({result.seconds_per_image:.3f} s/image); ground truth: {result.output_dir}/sparse/0"
    )
    return 0
