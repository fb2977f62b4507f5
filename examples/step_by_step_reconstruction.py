"""A reconstruction stage by stage through the Python API, with the view graph in the middle.

Usage::

    python examples/step_by_step_reconstruction.py [IMAGE_DIR] [--num-images N] [-o OUT]

Shows what ``geomvision reconstruct`` does internally: features -> pairs -> matches -> verified two-view
geometries -> networkx view graph (pruned, drawn) -> incremental mapping -> final bundle adjustment ->
COLMAP text model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import networkx as nx

from geomvision.config import ReconstructionConfig
from geomvision.features.extract import extract_features
from geomvision.features.match import match_pairs
from geomvision.features.pairs import exhaustive_pairs
from geomvision.io.colmap import write_model
from geomvision.io.images import list_images
from geomvision.pipeline import setup_cameras
from geomvision.scene import ImageInfo
from geomvision.sfm.bundle_adjustment import BundleAdjustmentOptions, bundle_adjust
from geomvision.sfm.incremental import incremental_mapping
from geomvision.sfm.tracks import build_tracks, track_length_stats
from geomvision.sfm.two_view import verify_pairs
from geomvision.sfm.view_graph import build_view_graph, draw_view_graph, maximum_spanning_tree

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "fountain_small" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="?", default=str(SAMPLE))
    parser.add_argument("--num-images", type=int, default=None, help="use only the first N images")
    parser.add_argument("-o", "--output", default="out/step_by_step")
    args = parser.parse_args()
    out = Path(args.output)
    config = ReconstructionConfig()

    # 1. images and initial intrinsics (EXIF focal or 1.2 * max(w, h); one shared camera here)
    paths = list_images(args.images)[: args.num_images]
    image_ids = list(range(1, len(paths) + 1))
    cameras, camera_of_image = setup_cameras(paths, image_ids, config)
    print(f"{len(paths)} images, initial camera {cameras[1].model} params {cameras[1].params.round(1)}")

    # 2. features and 3. exhaustive matching
    features = dict(zip(image_ids, extract_features(paths, config.extraction), strict=True))
    matches = match_pairs(features, exhaustive_pairs(image_ids), config.matching)
    print(f"{sum(len(f) for f in features.values())} features, {len(matches)} matched pairs")

    # 4. geometric verification (E / F / H per pair)
    cameras_by_image = {i: cameras[camera_of_image[i]] for i in image_ids}
    two_view = verify_pairs(features, matches, cameras_by_image, config.two_view, rng=0)
    verified = {pair: g for pair, g in two_view.items() if g.success}
    print(f"{len(verified)}/{len(two_view)} pairs verified")

    # 5. the view graph: nodes are images, edges verified pairs weighted by inliers
    names = {i: p.name for i, p in zip(image_ids, paths, strict=True)}
    graph = build_view_graph(verified, names)
    tree = maximum_spanning_tree(graph)
    print(
        f"view graph: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges, "
        f"{nx.number_connected_components(graph)} component(s); spanning tree weight "
        f"{tree.size(weight='weight'):.0f} inliers"
    )
    out.mkdir(parents=True, exist_ok=True)
    draw_view_graph(graph, out / "view_graph.png")

    # 6. feature tracks over the verified inlier matches
    tracks = build_tracks({pair: g.inlier_matches for pair, g in verified.items()})
    print(f"tracks: {track_length_stats(tracks)}")

    # 7. incremental mapping (initial pair, PnP registration, triangulation, local/global BA)
    images = {
        i: ImageInfo(names[i], camera_of_image[i], features[i].keypoints_px, features[i].colors)
        for i in image_ids
    }
    mapping = incremental_mapping(cameras, images, verified, config.mapper, rng=0)
    rec = mapping.reconstructions[0]
    print(f"model: {rec.num_registered}/{len(paths)} images, {len(rec.points3D)} points")

    # 8. one more global bundle adjustment with a robust loss, then write the COLMAP model
    result = bundle_adjust(rec, BundleAdjustmentOptions(loss="huber", loss_scale_px=1.0))
    print(
        f"final BA: cost {result.initial_cost:.1f} -> {result.final_cost:.1f}, "
        f"mean reprojection error {rec.mean_reprojection_error_px():.3f} px"
    )
    write_model(rec, out / "sparse" / "0")
    print(f"wrote {out / 'sparse' / '0'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
