"""``geomvision reconstruct IMAGES -o OUT``: the whole pipeline from a folder of photos."""

from __future__ import annotations

import argparse
import logging
import sys

from geomvision.commands._args import option_values

NAME = "reconstruct"
HELP = "reconstruct cameras and a sparse point cloud from a folder of images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", help="folder of images")
    parser.add_argument(
        "-o", "--output", required=True, help="output folder (sparse/0, points.ply, report.json)"
    )
    parser.add_argument("--config", help="TOML config file (tables: pipeline, extraction, matching, ...)")
    parser.add_argument("--preset", help="named preset: default, fast, accurate")
    parser.add_argument(
        "--intrinsics",
        help="known pinhole intrinsics fx,fy,cx,cy in pixels, shared by all images of their size; the "
        "principal point's origin is the centre of the top-left pixel (OpenCV) unless "
        "--intrinsics-convention colmap",
    )
    parser.add_argument(
        "--intrinsics-convention",
        choices=("opencv", "colmap"),
        help="origin of cx,cy: opencv (default; top-left pixel centre = 0,0) or colmap (as in COLMAP's "
        "cameras.txt; top-left pixel corner = 0,0, so cx_opencv = cx_colmap - 0.5)",
    )
    parser.add_argument(
        "--intrinsics-size",
        metavar="WxH",
        help="image size the --intrinsics belong to (default: the images' size when they all share one)",
    )
    parser.add_argument(
        "--scale-intrinsics",
        action="store_true",
        help="rescale --intrinsics for images of another size (resized, same aspect ratio): one camera "
        "per size; without it, images of another size are an error",
    )
    parser.add_argument("--init", choices=("two-view", "factorization"), help="initialiser")
    parser.add_argument(
        "--mapper", choices=("incremental", "global"), help="mapper: incremental (default) or global"
    )
    parser.add_argument(
        "--pairing",
        choices=("auto", "exhaustive", "sequential", "retrieval"),
        help="pair selection (default auto: exhaustive up to 50 images, retrieval above)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes for per-image/per-pair work (default: the usable cores; 1: in-process)",
    )
    parser.add_argument(
        "--backend", choices=("serial", "processes", "dask"), help="where that work runs (default: processes)"
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on Dask: 'local' (a LocalCluster of --workers processes on 127.0.0.1) or tcp://HOST:PORT "
        "(tls://HOST:PORT with --tls-*) of a running scheduler",
    )
    parser.add_argument(
        "--images-visible-to-workers",
        action="store_true",
        default=None,
        help="dask workers can read the image paths (shared filesystem); default: the client ships the bytes",
    )
    parser.add_argument("--tls-ca-file", help="dask TLS: CA certificate of the cluster")
    parser.add_argument("--tls-cert-file", help="dask TLS: this client's certificate")
    parser.add_argument("--tls-key-file", help="dask TLS: this client's private key")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same result)")
    parser.add_argument("--max-features", type=int, help="maximum features per image")
    parser.add_argument("--max-image-size", type=int, help="downscale images larger than this (px)")
    parser.add_argument(
        "--max-cluster-images",
        type=int,
        metavar="N",
        help="map clusters of at most N images and merge them (0 = one piece; default: partition only "
        "above 500 images)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="abort on an image file that cannot be decoded (default: skip it with a warning and list it "
        "in report.json skipped_images)",
    )
    parser.add_argument(
        "--pose-prior",
        metavar="CKPT",
        help="learned pose checkpoint: place images that fail to register from its prior (needs torch)",
    )


def parse_intrinsics(text: str) -> tuple[float, float, float, float]:
    from geomvision.errors import InputError

    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"--intrinsics must be four numbers fx,fy,cx,cy, got {text!r}") from None
    if len(values) != 4:
        raise InputError(f"--intrinsics must be four numbers fx,fy,cx,cy, got {len(values)} in {text!r}")
    return values  # type: ignore[return-value]


def parse_size(text: str) -> tuple[int, int]:
    from geomvision.errors import InputError

    parts = text.lower().replace(",", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"--intrinsics-size must be WxH in pixels (e.g. 768x512), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise InputError(f"--intrinsics-size must be positive, got {text!r}")
    return width, height


def build_config(args: argparse.Namespace):
    from geomvision.config import ReconstructionConfig, load_config, preset

    config = preset(args.preset) if args.preset else ReconstructionConfig()
    if args.config:
        config = load_config(args.config, base=config)
    pipeline = {}
    if args.intrinsics is not None:
        pipeline["intrinsics"] = parse_intrinsics(args.intrinsics)
    if args.intrinsics_convention is not None:
        pipeline["intrinsics_convention"] = args.intrinsics_convention
    if args.intrinsics_size is not None:
        pipeline["intrinsics_size"] = parse_size(args.intrinsics_size)
    if args.scale_intrinsics:
        pipeline["scale_intrinsics"] = True
    if args.pose_prior is not None:
        pipeline["pose_prior_checkpoint"] = args.pose_prior
    pipeline |= option_values(
        args,
        "init",
        "mapper",
        "pairing",
        "seed",
        "backend",
        "scheduler",
        "images_visible_to_workers",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        num_workers="workers",
        skip_none=True,
    )
    if args.strict:
        pipeline["strict"] = True
    changes = {"pipeline": pipeline} if pipeline else {}
    extraction = {}
    if args.max_features is not None:
        extraction["max_num_features"] = args.max_features
    if args.max_image_size is not None:
        extraction["max_image_size_px"] = args.max_image_size
    if extraction:
        changes["extraction"] = extraction
    if args.max_cluster_images is not None:
        changes["partition"] = {"max_cluster_images": args.max_cluster_images}
    return config.with_changes(**changes) if changes else config


def registered_summary(report: dict) -> str:
    """``registered 45/47 images in 4 models (19, 12, 8, 6); sparse/0:`` (or ``... in 1 model,``)."""
    models = report.get("models") or []
    if len(models) <= 1:
        return f"registered {report['num_registered']}/{report['num_images']} images in 1 model,"
    total = report.get("num_registered_all_models", sum(m["num_registered"] for m in models))
    sizes = ", ".join(str(m["num_registered"]) for m in models)
    return (
        f"registered {total}/{report['num_images']} images in {len(models)} models ({sizes}); model sparse/0:"
    )


def _quiet_dask(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith("distributed")


def run(args: argparse.Namespace) -> int:
    from geomvision.pipeline import run_pipeline
    from geomvision.progress import tqdm_progress

    config = build_config(args)
    # Dask logs its cluster's life at INFO through the root handler (its import resets its logger's
    # level, so filter at the handlers): keep the terminal to our lines unless -vv.
    quiet = logging.getLogger().level > logging.DEBUG
    for handler in logging.getLogger().handlers:
        if quiet:
            handler.addFilter(_quiet_dask)
    show = not args.no_progress and sys.stderr.isatty()
    result = run_pipeline(
        args.images,
        args.output,
        config,
        progress_factory=lambda stage: tqdm_progress(stage, enabled=show),
    )
    report = result.report
    t = report["timings_s"]
    print(
        f"{registered_summary(report)} "
        f"{report['num_points3D']} points, mean reprojection error "
        f"{report['mean_reprojection_error_px']:.3f} px, "
        f"{t['total']:.1f} s (features {t['features']:.1f}, matching {t['matching']:.1f}, "
        f"verification {t['verification']:.1f}, mapping {t['mapping']:.1f})"
    )
    if report.get("models"):  # one line on trust: a wrong model must not pass as a success
        first, trusted = report["models"][0], sum(bool(m.get("trusted")) for m in report["models"])
        verdict = (
            "trusted"
            if first.get("trusted")
            else "NOT trusted (" + "; ".join(first.get("trust_reasons", [])) + ")"
        )
        print(f"model sparse/0 is {verdict}; {trusted} of {report['num_models']} model(s) trusted")
    if "pose_prior" in report:  # say plainly which registrations are learned guesses, not PnP
        placed = report["pose_prior"]["num_registered_by_prior"]
        print(f"{placed} of the registered images placed by the learned pose prior only (no points)")
    print(f"wrote {result.output_dir}/sparse/0 (COLMAP text), points.ply, report.json")
    return 0
