"""``geomvision view OUT``: open the point cloud and cameras in a window, or save a PNG headless."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "view"
HELP = "show a reconstruction (Open3D window) or render it to a PNG with --screenshot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="output folder holding sparse/0, or a COLMAP model folder")
    parser.add_argument(
        "--screenshot", metavar="FILE.png", help="render headless to this PNG instead of a window"
    )
    parser.add_argument("--width", type=int, default=1280, help="image/window width in pixels")
    parser.add_argument("--height", type=int, default=960, help="image/window height in pixels")
    parser.add_argument(
        "--show-graph",
        action="store_true",
        help="draw view-graph edges between camera centres (OUT/view_graph.json, else co-visibility)",
    )
    parser.add_argument("--min-shared", type=int, default=15, help="--show-graph: shared points for an edge")
    parser.add_argument(
        "--frustum-scale", type=float, help="camera frustum depth in world units (default auto)"
    )
    parser.add_argument(
        "--renderer",
        choices=("auto", "open3d", "software"),
        default="auto",
        help="screenshot backend (default: Open3D offscreen, software fallback)",
    )


def _load_graph(rec, out: Path, min_shared: int):
    """The pipeline's verified view graph (OUT/view_graph.json), else 3D-point co-visibility."""
    saved = out / "view_graph.json"
    if saved.is_file():
        from geomvision.sfm.view_graph import load_view_graph

        return load_view_graph(saved)
    from geomvision.viz.geometry import covisibility_graph

    return covisibility_graph(rec, min_shared=min_shared)


def run(args: argparse.Namespace) -> int:
    from geomvision.io.colmap import find_model_folder, read_model

    rec = read_model(find_model_folder(args.model))
    graph = _load_graph(rec, Path(args.model), args.min_shared) if args.show_graph else None
    if args.screenshot:
        from geomvision.viz.open3d_viewer import screenshot

        used = screenshot(
            rec,
            Path(args.screenshot),
            args.width,
            args.height,
            view_graph=graph,
            frustum_scale=args.frustum_scale,
            backend=args.renderer,
        )
        print(f"wrote {args.screenshot} ({args.width}x{args.height}, {used} renderer)")
        return 0
    from geomvision.viz.open3d_viewer import show

    show(rec, view_graph=graph, width=args.width, height=args.height, frustum_scale=args.frustum_scale)
    return 0
