"""Our global mapper against COLMAP's (GLOMAP, ``pycolmap.global_mapping``) on the SAME inputs.

``benchmarks/global_mapper.py`` runs pycolmap on its own SIFT features and matches, so its pycolmap rows
compare whole pipelines. This script isolates the mappers: for each dataset (known K), it runs our
pipeline with the global mapper and keeps the exact inputs the pipeline hands the mapper (cameras,
keypoints, verified pairs), writes them into a COLMAP database, and runs ``pycolmap.global_mapping`` on
that database:

* keypoints shift by +0.5 px (COLMAP's pixel origin is the corner of the first pixel, ours its centre),
  and F and H are conjugated by that shift (E is in normalised coordinates and does not change);
* each verified pair is written with its configuration (calibrated / uncalibrated / planar /
  panoramic), its inlier matches as both the matches and the two-view geometry's inliers;
* the cameras are PINHOLE with the ground-truth K, which neither mapper refines.

Both mappers then get the same images, keypoints, pairs and inlier matches; GLOMAP estimates its own
relative poses from them (as ours does for the pairs it poses again). AUC@T of the pairwise relative pose
error via ``geomvision.evaluation`` (unregistered images count 180 deg). Our row is the mapper alone on
the captured inputs (``global_mapping``), as pycolmap's is its ``global_mapping`` call.

A third row turns it round: our mapper on pycolmap's own inputs (its SIFT, exhaustive matching and 4 px
verification, read back from its database: keypoints -0.5 px, F and H conjugated back, no relative
poses, which our mapper estimates itself). Rows one and three differ only in the front end.

Usage::

    python benchmarks/glomap_same_pairs.py --datasets entry,fountain,castle,temple,dtu37 --keep /tmp/gs
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as shared  # noqa: E402  (sibling benchmark module: shared helpers)
import reconstruct as common  # noqa: E402 (datasets, ground truth, scoring)
from global_mapper import DATASETS  # noqa: E402

RESULTS = common.RESULTS / "glomap_same_pairs.md"
#: the row of our mapper on pycolmap's own features and verified pairs
THEIR_PAIRS = "geomvision global, pycolmap's pairs"

#: COLMAP's pixel origin is the corner of the first pixel: x_colmap = x_ours + 0.5.
_TO_COLMAP = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])


def capture_mapper_inputs(image_dir: Path, out: Path, intrinsics) -> tuple:
    """Run our pipeline (global mapper) and return the inputs it gave the mapper:
    ``(cameras, images, verified_pairs, config)``. The pipeline's own model is discarded."""
    import geomvision.pipeline as pipeline

    captured = []
    original = pipeline._run_global_mapping

    def keep_inputs(cameras, images, verified, config, progress_factory):
        captured.append((cameras, images, verified, config))
        return original(cameras, images, verified, config, progress_factory)

    pipeline._run_global_mapping = keep_inputs  # the one place the pipeline calls the global mapper
    try:
        config = shared.pipeline_config(intrinsics, seed=0, pipeline={"mapper": "global"})
        shared.run_pipeline_timed(image_dir, out, config)
    finally:
        pipeline._run_global_mapping = original
    if not captured:
        raise RuntimeError(f"the pipeline on {image_dir} did not reach the mapper")
    return captured[0]


def write_colmap_database(path: Path, cameras, images, verified) -> int:
    """A COLMAP database of our cameras, keypoints and verified pairs; returns the pairs written."""
    import pycolmap

    configs = {
        "calibrated": pycolmap.TwoViewGeometryConfiguration.CALIBRATED,
        "uncalibrated": pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED,
        "planar": pycolmap.TwoViewGeometryConfiguration.PLANAR,
        "panoramic": pycolmap.TwoViewGeometryConfiguration.PANORAMIC,
    }
    from_colmap = np.linalg.inv(_TO_COLMAP)
    db = pycolmap.Database.open(path)
    try:
        for camera_id, camera in cameras.items():
            fx, fy, cx, cy = camera.pinhole_params
            colmap_camera = pycolmap.Camera(
                model="PINHOLE", width=camera.width, height=camera.height, params=[fx, fy, cx + 0.5, cy + 0.5]
            )
            colmap_camera.camera_id = camera_id
            colmap_camera.has_prior_focal_length = True
            db.write_camera(colmap_camera, use_camera_id=True)
        for image_id in sorted(images):
            info = images[image_id]
            image = pycolmap.Image(name=info.name, camera_id=info.camera_id)
            image.image_id = image_id
            db.write_image(image, use_image_id=True)
            db.write_keypoints(image_id, np.asarray(info.keypoints_px, np.float32) + 0.5)
        written = 0
        for (i, j), g in sorted(verified.items()):
            if not g.success or g.config not in configs or len(g.inlier_matches) == 0:
                continue
            matches = np.ascontiguousarray(g.inlier_matches, dtype=np.uint32)
            db.write_matches(i, j, matches)
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = configs[g.config]
            geometry.inlier_matches = matches
            if g.F is not None:  # x_j^T F x_i = 0 in our pixels -> in COLMAP's
                geometry.F = from_colmap.T @ g.F @ from_colmap
            if g.E is not None:
                geometry.E = g.E
            if g.H is not None:
                geometry.H = _TO_COLMAP @ g.H @ from_colmap
            db.write_two_view_geometry(i, j, geometry)
            written += 1
    finally:
        db.close()
    return written


def read_colmap_database(path: Path, images: dict) -> tuple[dict, dict]:
    """Keypoints and verified pairs of a pycolmap database in our terms: ``(images, verified_pairs)``,
    with ``images``' ids and cameras (matched by file name); pairs of an unusable configuration are left out."""
    import pycolmap

    from geomvision.scene import ImageInfo, TwoViewGeometry

    configs = {
        "CALIBRATED": "calibrated",
        "UNCALIBRATED": "uncalibrated",
        "PLANAR": "planar",
        "PANORAMIC": "panoramic",
        "PLANAR_OR_PANORAMIC": "planar",
    }
    from_colmap = np.linalg.inv(_TO_COLMAP)
    our_id = {info.name: image_id for image_id, info in images.items()}
    db = pycolmap.Database.open(path)
    try:
        id_map, ours = {}, {}
        for image in db.read_all_images():
            image_id = our_id[image.name]
            id_map[image.image_id] = image_id
            keypoints = np.asarray(db.read_keypoints(image.image_id)[:, :2], np.float64) - 0.5
            ours[image_id] = ImageInfo(image.name, images[image_id].camera_id, keypoints)
        verified = {}
        for pair_id, g in zip(*db.read_two_view_geometries(), strict=True):
            config = configs.get(pycolmap.TwoViewGeometryConfiguration(g.config).name)
            if config is None or len(g.inlier_matches) == 0:
                continue
            colmap_i, colmap_j = pycolmap.pair_id_to_image_pair(pair_id)
            i, j = id_map[colmap_i], id_map[colmap_j]
            matches = np.asarray(g.inlier_matches, np.int64)
            F, E, H = _TO_COLMAP.T @ g.F @ _TO_COLMAP, np.asarray(g.E), from_colmap @ g.H @ _TO_COLMAP
            if i > j:  # our pairs are (smaller id, larger id)
                i, j, matches, F, E, H = j, i, matches[:, ::-1].copy(), F.T, E.T, np.linalg.inv(H)
            verified[(i, j)] = TwoViewGeometry(
                image_i=i,
                image_j=j,
                config=config,
                inlier_matches=matches,
                F=F,
                E=E,
                H=H,
                num_putative=len(matches),
            )
    finally:
        db.close()
    return ours, verified


def pycolmap_inputs(image_dir: Path, db_path: Path, intrinsics, images: dict) -> tuple[dict, dict]:
    """pycolmap's SIFT, exhaustive matching and verification into ``db_path``, read back as ours."""
    import pycolmap

    db_path.unlink(missing_ok=True)
    reader, extraction, matching = shared.pycolmap_options(intrinsics)
    shared.pycolmap_extract(db_path, image_dir, extraction, reader)
    pycolmap.match_exhaustive(db_path, matching_options=matching, device=pycolmap.Device.cpu)
    return read_colmap_database(db_path, images)


def run_glomap(db_path: Path, image_dir: Path, work: Path):
    """``pycolmap.global_mapping`` with the intrinsics held; (largest model as ours or None, seconds)."""
    import pycolmap

    from geomvision.io.colmap import read_model

    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = 2
    options.random_seed = 0
    options.mapper.bundle_adjustment.refine_focal_length = False
    options.mapper.bundle_adjustment.refine_extra_params = False
    options.mapper.bundle_adjustment.refine_principal_point = False
    sparse = work / "sparse_glomap"
    shutil.rmtree(sparse, ignore_errors=True)
    sparse.mkdir(parents=True)
    t = time.perf_counter()
    maps = pycolmap.global_mapping(db_path, image_dir, sparse, options=options)
    seconds = time.perf_counter() - t
    if not maps:
        return None, seconds
    best = max(maps.values(), key=lambda r: r.num_reg_images())
    text_dir = work / "best_glomap"
    shutil.rmtree(text_dir, ignore_errors=True)
    text_dir.mkdir()
    best.write_text(str(text_dir))
    return read_model(text_dir), seconds


def compare(datasets: list[str], work: Path) -> list[dict]:
    from geomvision.sfm.global_mapper import global_mapping

    rows = []
    for key in datasets:
        ds = DATASETS[key]
        image_dir = common.SHARED / ds.folder / ds.images
        names = [p.name for p in common.image_paths(image_dir)]
        gt = common.load_gt(ds, names, image_dir)
        folder = work / f"same_pairs_{key}"
        intrinsics = common.known_intrinsics(gt)
        cameras, images, verified, config = capture_mapper_inputs(image_dir, folder / "ours", intrinsics)
        db_path = folder / "database.db"
        db_path.unlink(missing_ok=True)
        num_pairs = write_colmap_database(db_path, cameras, images, verified)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        ours = global_mapping(cameras, images, verified, config.global_mapper, rng=config.pipeline.seed)
        ours_s = time.perf_counter() - t
        ours_rec = ours.reconstructions[0] if ours.reconstructions else None
        glomap_rec, glomap_s = run_glomap(db_path, image_dir, folder)
        their_images, their_pairs = pycolmap_inputs(image_dir, folder / "pycolmap.db", intrinsics, images)
        t = time.perf_counter()
        theirs = global_mapping(
            cameras, their_images, their_pairs, config.global_mapper, rng=config.pipeline.seed
        )
        theirs_s = time.perf_counter() - t
        row = {"dataset": key, "images": len(images), "load": load}
        for name, rec, seconds, pairs in (
            ("geomvision global", ours_rec, ours_s, num_pairs),
            ("pycolmap global", glomap_rec, glomap_s, num_pairs),
            (
                THEIR_PAIRS,
                theirs.reconstructions[0] if theirs.reconstructions else None,
                theirs_s,
                len(their_pairs),
            ),
        ):
            row[name] = {**common._brief(common.score(rec, gt)), "mapping_s": seconds, "pairs": pairs}
        print(row, flush=True)
        rows.append(row)
    return rows


def write_table(rows: list[dict], output: Path) -> None:
    lines = [
        "# Global mappers on the same inputs: geomvision vs pycolmap.global_mapping (GLOMAP)",
        "",
        f"Run {date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores, shared: load average "
        "per row). "
        "Known K (PINHOLE, not refined). Both mappers get our pipeline's cameras, keypoints and verified "
        "pairs with their inlier matches (a COLMAP database written from them; keypoints +0.5 px). The third "
        "row per set is our mapper on pycolmap's own SIFT, matches and verified pairs. AUC of "
        "the pairwise relative pose error, 5 decimals because the rows differ in the third.",
        "",
        "| dataset | images | pairs | mapper | registered | AUC@1 | AUC@2 | AUC@5 | mapping s | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name in ("geomvision global", "pycolmap global", THEIR_PAIRS):
            r = row[name]
            lines.append(
                f"| {row['dataset']} | {row['images']} | {r['pairs']} | {name} | {r['num_registered']} | "
                f"{r['auc@1']:.5f} | {r['auc@2']:.5f} | {r['auc@5']:.5f} | {r['mapping_s']:.2f} | "
                f"{row['load']:.1f} |"
            )
    lines += [
        "",
        "Command: `python benchmarks/glomap_same_pairs.py --datasets "
        + ",".join(row["dataset"] for row in rows)
        + "`",
        "",
    ]
    # hand-written notes below the table survive a rerun
    previous = output.read_text() if output.is_file() else ""
    notes = previous[previous.index("\n## Notes") :] if "\n## Notes" in previous else ""
    output.write_text("\n".join(lines) + notes)


def main() -> None:
    parser = shared.argument_parser(__doc__)
    parser.add_argument("--datasets", default="entry,fountain,castle,temple,dtu37")
    parser.add_argument("--keep", type=Path, help="keep work folders here")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    available = [k for k in args.datasets.split(",") if (common.SHARED / DATASETS[k].folder).is_dir()]
    if not available:
        sys.exit(f"none of the datasets is under {common.SHARED}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="glomap_same_pairs_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = compare(available, work)
    write_table(rows, args.output)
    print(f"wrote {args.output}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
