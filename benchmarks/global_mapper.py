"""Global vs incremental mapping: geomvision's two mappers against pycolmap's (GLOMAP and COLMAP).

For each dataset and intrinsics mode (unknown: every tool estimates the focal length; known: every tool
gets the ground-truth pinhole K), four rows:

* geomvision global: ``run_pipeline`` with ``pipeline.mapper = "global"``;
* geomvision incremental: the same pipeline with the incremental mapper — features and matches come from
  the pipeline's cache (OUT/cache), so both mappers see exactly the same matches; the global run verifies
  them at ``pipeline.global_verification_max_error_px`` (3 px), the incremental at
  ``two_view.ransac.max_error_px`` (2 px);
* pycolmap global (``pycolmap.global_mapping``, GLOMAP) and pycolmap incremental
  (``pycolmap.incremental_mapping``) on one pycolmap database: pycolmap runs its own SIFT and exhaustive
  matching (so the two pycolmap rows share features and pairs, which differ from ours).

Scores come from ``geomvision.evaluation.evaluate_reconstruction`` (the numbers of ``geomvision
evaluate``): AUC@T of the pairwise relative pose error (max of rotation and translation-direction error;
unregistered images count 180 deg). "mapping s" is the mapping stage alone (ours: ``timings_s.mapping``
of report.json; pycolmap: the ``*_mapping`` call). Datasets run one at a time; the load average is
recorded beside each row because the machine is shared.

Usage::

    python benchmarks/global_mapper.py --datasets temple,fountain --modes known,unknown --keep /tmp/gm
"""

from __future__ import annotations

import json
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
import reconstruct as common  # noqa: E402 (the datasets, ground truth and scoring of the other benchmark)

RESULTS = common.RESULTS
_f = shared.fmt_number  # table cell of a number
DATASETS = dict(common.DATASETS)
DATASETS["dtu37"] = common.Dataset("dtu37", "dtu_scan37", "images", "dtu_scan37_par.txt")


def run_ours(image_dir: Path, out: Path, intrinsics, mapper: str, seed: int = 0):
    config = shared.pipeline_config(intrinsics, seed=seed, pipeline={"mapper": mapper})
    result, seconds, error = shared.run_pipeline_timed(image_dir, out, config)
    if result is None:
        return None, {"error": error, "total": seconds}, {}
    return result.reconstruction, result.report["timings_s"], result.report["mapping"]


def run_pycolmap(image_dir: Path, work: Path, intrinsics) -> dict[str, tuple]:
    """pycolmap SIFT + exhaustive matching once, then both mappers on that database."""
    import pycolmap

    from geomvision.io.colmap import read_model

    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    timings: dict[str, float] = {}
    if not db.exists():
        reader, extraction, matching = shared.pycolmap_options(intrinsics)
        t = time.perf_counter()
        shared.pycolmap_extract(db, image_dir, extraction, reader)
        pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
        timings["features+matching"] = time.perf_counter() - t
    out: dict[str, tuple] = {}
    for kind in ("global", "incremental"):
        sparse = work / f"sparse_{kind}"
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir(parents=True)
        if kind == "global":
            options = pycolmap.GlobalPipelineOptions()
            options.num_threads = 2
            options.random_seed = 0
            if intrinsics is not None:
                options.mapper.bundle_adjustment.refine_focal_length = False
                options.mapper.bundle_adjustment.refine_extra_params = False
                options.mapper.bundle_adjustment.refine_principal_point = False
            t = time.perf_counter()
            maps = pycolmap.global_mapping(db, image_dir, sparse, options=options)
        else:
            options = pycolmap.IncrementalPipelineOptions()
            options.num_threads = 2
            options.random_seed = 0
            if intrinsics is not None:
                options.ba_refine_focal_length = False
                options.ba_refine_extra_params = False
                options.ba_refine_principal_point = False
            t = time.perf_counter()
            maps = pycolmap.incremental_mapping(db, image_dir, sparse, options=options)
        mapping_s = time.perf_counter() - t
        rec = None
        if maps:
            best = max(maps.values(), key=lambda r: r.num_reg_images())
            text_dir = work / f"best_{kind}"
            text_dir.mkdir(exist_ok=True)
            best.write_text(str(text_dir))
            rec = read_model(text_dir)
        out[kind] = (rec, {"mapping": mapping_s, **timings})
    return out


def street_mapper_inputs(folder: Path, *, noise_px=0.5, outlier_ratio=0.05, min_shared=30, seed=0):
    """Mapper inputs from a ``geomvision synth-scene`` dataset's exact observations (mapping stage only).

    Keypoints are the ground-truth observations with Gaussian noise; each pair sharing ``min_shared`` points
    gets those correspondences plus ``outlier_ratio`` random wrong ones, verified by ``verify_pair`` with the
    known K (so relative poses carry realistic estimation noise).
    """
    import scipy.sparse as sp

    from geomvision.io.colmap import read_model
    from geomvision.scene import ImageInfo
    from geomvision.sfm.two_view import verify_pair

    gt = read_model(folder / "sparse" / "0")
    rng = np.random.default_rng(seed)
    images, point_of = {}, {}
    for image_id, view in gt.views.items():
        keypoints = view.keypoints_px + rng.normal(scale=noise_px, size=view.keypoints_px.shape)
        images[image_id] = ImageInfo(view.name, view.camera_id, keypoints)
        point_of[image_id] = view.point3D_ids
    ids = sorted(images)
    rows = np.concatenate([np.full(int((point_of[i] >= 0).sum()), k) for k, i in enumerate(ids)])
    cols = np.concatenate([point_of[i][point_of[i] >= 0] for i in ids])
    incidence = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), cols.max() + 1))
    shared = sp.triu(incidence @ incidence.T, k=1).tocoo()
    pairs = [
        (ids[a], ids[b])
        for a, b, n in zip(shared.row, shared.col, shared.data, strict=True)
        if n >= min_shared
    ]
    geometries = {}
    t = time.perf_counter()
    for i, j in pairs:
        kp_i = {p: k for k, p in enumerate(point_of[i].tolist()) if p >= 0}
        matches = np.array([(kp_i[p], k) for k, p in enumerate(point_of[j].tolist()) if p in kp_i])
        num_bad = int(outlier_ratio * len(matches))
        wrong = np.stack(
            [rng.integers(0, len(point_of[i]), num_bad), rng.integers(0, len(point_of[j]), num_bad)], axis=1
        )
        matches = np.concatenate([matches, wrong]) if num_bad else matches
        cam_i, cam_j = gt.cameras[images[i].camera_id], gt.cameras[images[j].camera_id]
        g = verify_pair(
            images[i].keypoints_px, images[j].keypoints_px, matches, cam_i, cam_j, image_ids=(i, j), rng=seed
        )
        if g.success:
            geometries[(i, j)] = g
    verification_s = time.perf_counter() - t
    return dict(gt.cameras), images, geometries, verification_s


def compare_street(folder: Path) -> dict:
    """Our two mappers on a synthetic street (known K, same inputs): mapping time and accuracy."""
    from geomvision.evaluation import evaluate_reconstruction, load_ground_truth
    from geomvision.sfm.global_mapper import GlobalMapperOptions, global_mapping
    from geomvision.sfm.incremental import IncrementalMapperOptions, incremental_mapping

    cameras, images, geometries, verification_s = street_mapper_inputs(folder)
    gt = load_ground_truth(folder / "sparse" / "0")
    fixed = tuple(sorted(cameras))
    results = {}
    for name, run in (
        (
            "geomvision global",
            lambda: global_mapping(
                cameras, images, geometries, GlobalMapperOptions(fixed_camera_ids=fixed), rng=0
            ),
        ),
        (
            "geomvision incremental",
            lambda: incremental_mapping(
                cameras, images, geometries, IncrementalMapperOptions(fixed_camera_ids=fixed), rng=0
            ),
        ),
    ):
        load = _load()
        t = time.perf_counter()
        result = run()
        mapping_s = time.perf_counter() - t
        rec = result.reconstructions[0] if result.reconstructions else None
        scores = evaluate_reconstruction(rec, gt, include_per_image=False) if rec else common.score(None, gt)
        if rec is not None:
            scores["mean_reprojection_error_px"] = rec.mean_reprojection_error_px()
        results[name] = {
            **common._brief(scores),
            "mapping_s": mapping_s,
            "load": load,
            "mapper_timings_s": result.report.get("timings_s", {}),
        }
    row = {
        "dataset": f"street{len(images)} (synthetic)",
        "intrinsics": "known",
        "images": len(images),
        "num_pairs": len(geometries),
        "verification_s": verification_s,
        "results": results,
    }
    print(json.dumps(row, default=str), flush=True)
    return row


def _load() -> float:
    return os.getloadavg()[0]


def compare(datasets: list[str], modes: list[str], work: Path, tools: set[str], output: Path) -> list[dict]:
    rows = []
    for key in datasets:
        ds = DATASETS[key]
        image_dir = common.SHARED / ds.folder / ds.images
        names = [p.name for p in common.image_paths(image_dir)]
        gt = common.load_gt(ds, names, image_dir)
        for mode in modes:
            intr = common.known_intrinsics(gt) if mode == "known" else None
            results: dict[str, dict] = {}
            out = work / f"gv_{key}_{mode}"
            # Incremental first: it fills the feature/match/verification cache the global run reuses.
            for mapper in ("incremental", "global"):
                if f"ours_{mapper}" not in tools:
                    continue
                load = _load()
                rec, timings, report = run_ours(image_dir, out, intr, mapper)
                results[f"geomvision {mapper}"] = {
                    **common._brief(common.score(rec, gt)),
                    "mapping_s": timings.get("mapping", float("nan")),
                    "timings_s": timings,
                    "mapper_timings_s": report.get("timings_s", {}),
                    "load": load,
                }
            if "pycolmap" in tools:
                load = _load()
                for kind, (rec, timings) in run_pycolmap(
                    image_dir, work / f"colmap_{key}_{mode}", intr
                ).items():
                    results[f"pycolmap {kind}"] = {
                        **common._brief(common.score(rec, gt)),
                        "mapping_s": timings["mapping"],
                        "timings_s": timings,
                        "load": load,
                    }
            row = {"dataset": key, "intrinsics": mode, "images": len(names), "results": results}
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
            write_markdown(rows, output)  # after every row: a long run interrupted keeps what it measured
    return rows


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = [
        "# Global vs incremental mapping: geomvision vs pycolmap (GLOMAP / COLMAP)",
        "",
        f"Run {date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores, shared with other "
        "jobs: the load average at the start of each run is in the last column); 2 threads/workers per tool. "
        "Our two mappers share features and matches (pipeline cache) and verify them at their own "
        "thresholds (global 3 px, incremental 2 px); the two pycolmap "
        "mappers share pycolmap's own SIFT database. AUC of the pairwise relative pose error via "
        "`geomvision.evaluation` (unregistered = 180 deg). *mapping s* = mapping stage only.",
        "",
        "| dataset | K | images | mapper | registered | AUC@1 | AUC@2 | AUC@5 | mean reproj px | mapping s | "
        "load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for tool, s in r["results"].items():
            lines.append(
                f"| {r['dataset']} | {r['intrinsics']} | {r['images']} | {tool} | {s['num_registered']} | "
                f"{_f(s['auc@1'])} | {_f(s['auc@2'])} | {_f(s['auc@5'])} | "
                f"{_f(s['mean_reprojection_error_px'])} | {_f(s['mapping_s'], 2)} | {s['load']:.1f} |"
            )
    shared.write_lines(path, lines)


def main() -> int:
    parser = shared.argument_parser(__doc__)
    parser.add_argument("--datasets", default="fountain,temple,entry,castle,dtu37")
    parser.add_argument("--modes", default="unknown,known")
    parser.add_argument("--tools", default="ours_incremental,ours_global,pycolmap")
    parser.add_argument("--keep", help="keep work folders (and caches) here")
    parser.add_argument(
        "--street",
        action="append",
        default=[],
        help="a `geomvision synth-scene --kind street` folder: adds a mapping-only row (repeatable)",
    )
    parser.add_argument("--output", default=str(RESULTS / "global_mapper.md"))
    args = parser.parse_args()
    if not common.SHARED.is_dir():
        print(f"shared datasets not found at {common.SHARED}", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gv_global_"))
    try:
        rows = []
        if args.datasets:
            rows = compare(
                args.datasets.split(","),
                args.modes.split(","),
                work,
                set(args.tools.split(",")),
                Path(args.output),
            )
        for folder in args.street:
            rows.append(compare_street(Path(folder)))
            write_markdown(rows, Path(args.output))
        write_markdown(rows, Path(args.output))
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
        print(f"wrote {args.output}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
