"""Incremental mapper vs COLMAP's (pycolmap) on identical inputs: same keypoints, same verified pairs.

pycolmap extracts SIFT, matches exhaustively and verifies the pairs into a database; both mappers then
start from that database (our ``incremental_mapping`` reads its keypoints and inlier matches), with the
known calibration held fixed. Reported: registered images, points, mean reprojection error, pose
accuracy against the ground truth (AUC of pairwise relative-pose errors, median rotation error after
alignment) and mapping wall time.

Run by hand (never in the test suite):
    python benchmarks/bench_incremental_mapper.py --start 12 --num-images 12
Writes ``benchmarks/results/bench_incremental_mapper.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from geomvision.evaluation import evaluate_reconstruction, read_middlebury_par
from geomvision.geometry.rigid import Rigid3d
from geomvision.io.colmap import read_model
from geomvision.runtime.atomic import atomic_write_text
from geomvision.scene import Camera, ImageInfo, TwoViewGeometry
from geomvision.sfm.incremental import IncrementalMapperOptions, incremental_mapping

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "middlebury_templeRing"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_incremental_mapper.md"


def colmap_database(paths: list[Path], K: np.ndarray, tmp: Path, workers: int) -> Path:
    """SIFT + exhaustive matching + geometric verification by pycolmap into ``tmp/database.db``."""
    import pycolmap

    db_path = tmp / "database.db"
    # COLMAP pixels have the corner origin: the principal point shifts by +0.5.
    params = f"{K[0, 0]},{K[1, 1]},{K[0, 2] + 0.5},{K[1, 2] + 0.5}"
    reader = pycolmap.ImageReaderOptions(camera_model="PINHOLE", camera_params=params)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = workers
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = workers
    pycolmap.extract_features(
        db_path,
        paths[0].parent,
        image_names=[p.name for p in paths],
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    pycolmap.match_exhaustive(db_path, matching_options=matching, device=pycolmap.Device.cpu)
    return db_path


_CONFIGS = {
    "CALIBRATED": "calibrated",
    "UNCALIBRATED": "uncalibrated",
    "PLANAR": "planar",
    "PANORAMIC": "panoramic",
    "PLANAR_OR_PANORAMIC": "planar",
}


def mapper_inputs_from_database(db_path: Path, K: np.ndarray, width: int, height: int):
    """Our cameras / images / verified pairs from a COLMAP database (pixels back to the OpenCV origin)."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    images, ids = {}, {}
    for im in sorted(db.read_all_images(), key=lambda im: im.name):
        ids[im.image_id] = len(ids) + 1
        kp = np.asarray(db.read_keypoints(im.image_id))[:, :2].astype(np.float64) - 0.5
        images[ids[im.image_id]] = ImageInfo(im.name, 1, kp)
    geometries = {}
    pair_ids, geoms = db.read_two_view_geometries()
    for pair_id, g in zip(pair_ids, geoms, strict=True):
        config = _CONFIGS.get(pycolmap.TwoViewGeometryConfiguration(int(g.config)).name)
        m = np.asarray(g.inlier_matches, dtype=np.int64).reshape(-1, 2)
        if config is None or len(m) == 0:
            continue
        a, b = (ids[x] for x in pycolmap.pair_id_to_image_pair(pair_id))
        pose = None
        if g.cam2_from_cam1 is not None:  # the database may not store the pose: we re-estimate E then
            T = np.asarray(g.cam2_from_cam1.matrix())
            if np.all(np.isfinite(T)) and np.linalg.norm(T[:, 3]) > 1e-9:
                pose = Rigid3d(T[:, :3], T[:, 3])
        if a > b:  # store as (i < j): swap the images and invert the relative pose
            a, b, m = b, a, m[:, ::-1]
            pose = pose.inverse() if pose is not None else None
        geometries[(a, b)] = TwoViewGeometry(a, b, config, np.ascontiguousarray(m), cam2_from_cam1=pose)
    db.close()
    cameras = {1: Camera.pinhole(1, K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height)}
    return cameras, images, geometries


def run_colmap_mapper(db_path: Path, image_dir: Path, out: Path, seed: int):
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.ba_refine_focal_length = False
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    options.random_seed = seed
    options.num_threads = 1
    t0 = time.perf_counter()
    models = pycolmap.incremental_mapping(db_path, image_dir, out, options)
    elapsed = time.perf_counter() - t0
    recs = []
    for k in sorted(models):
        folder = out / str(k)
        models[k].write_text(str(folder))
        recs.append(read_model(folder))
    recs.sort(key=lambda r: -r.num_registered)
    return recs, elapsed


def summarise(recs, gt, elapsed: float) -> dict:
    best = recs[0] if recs else None
    ev = evaluate_reconstruction(best, gt, include_per_image=False) if best else {}
    return {
        "models": len(recs),
        "registered": sum(r.num_registered for r in recs),
        "largest": best.num_registered if best else 0,
        "points": len(best.points3D) if best else 0,
        "reproj_px": best.mean_reprojection_error_px() if best else float("nan"),
        "auc@1": ev.get("auc@1", float("nan")),
        "auc@5": ev.get("auc@5", float("nan")),
        "pair_rot_err_med_deg": ev.get("median_rotation_error_deg", float("nan")),
        "time_s": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=12, help="index of the first image (sorted names)")
    parser.add_argument("--num-images", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not DATASET.is_dir():
        print(f"dataset not found: {DATASET}", file=sys.stderr)
        return 2
    gt = read_middlebury_par(DATASET / "templeR_par.txt")
    paths = sorted(DATASET.glob("templeR0*.png"))[args.start : args.start + args.num_images]
    gt = {p.name: gt[p.name] for p in paths}
    K = gt[paths[0].name].K
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db_path = colmap_database(paths, K, tmp, args.workers)
        cameras, images, geometries = mapper_inputs_from_database(db_path, K, 640, 480)
        t0 = time.perf_counter()
        ours = incremental_mapping(
            cameras, images, geometries, IncrementalMapperOptions(fixed_camera_ids=(1,)), rng=args.seed
        )
        ours_time = time.perf_counter() - t0
        (tmp / "colmap").mkdir()
        colmap_recs, colmap_time = run_colmap_mapper(db_path, paths[0].parent, tmp / "colmap", args.seed)
    rows = {
        "geomvision": summarise(ours.reconstructions, gt, ours_time),
        "pycolmap": summarise(colmap_recs, gt, colmap_time),
    }
    keys = list(rows["geomvision"])
    lines = [
        f"# Incremental mapper: geomvision vs pycolmap {__import__('pycolmap').__version__}",
        "",
        f"templeRing images {args.start + 1}-{args.start + args.num_images} (known K, fixed), identical "
        f"pycolmap SIFT keypoints and verified pairs ({len(geometries)} pairs) for both mappers; "
        "single-threaded mapping.",
        "",
        "| mapper | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    ratio = rows["geomvision"]["time_s"] / max(rows["pycolmap"]["time_s"], 1e-9)
    lines += ["", f"Mapping time ratio geomvision / pycolmap: {ratio:.2f}x", ""]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, text)
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
