"""End-to-end reconstruction: geomvision vs pycolmap (COLMAP) in the same run, same machine.

For each dataset and intrinsics mode (unknown: both tools estimate the focal length; known: both get the
ground-truth pinhole K), runs

* geomvision: ``geomvision.pipeline.run_pipeline`` (SIFT, exhaustive matching, verification, incremental
  mapping with bundle adjustment), and
* pycolmap: ``extract_features`` + ``match_exhaustive`` + ``incremental_mapping``,

with the same thread budget, and scores both with ``geomvision.evaluation.evaluate_reconstruction``
(the function behind ``geomvision evaluate``): AUC@T of the pairwise relative pose error
(max of rotation and translation-direction error, unregistered = 180 deg), registered images, mean
reprojection error, wall time. A second table times geomvision against the number of images on
templeRing with sequential and retrieval pairs.

Usage::

    python benchmarks/reconstruct.py                       # everything (long: ~1 h on 2 cores)
    python benchmarks/reconstruct.py --datasets fountain --modes unknown --no-scaling
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sibling benchmark module: shared helpers)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOMVISION_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = REPO / "benchmarks" / "results"
_f = common.fmt_number  # table cell of a number


@dataclass(frozen=True)
class Dataset:
    key: str
    folder: str
    images: str  # sub-folder with the images ("" = the folder itself)
    gt: str  # ground truth path relative to the folder


DATASETS = {
    "fountain": Dataset("fountain", "strecha_fountain-P11", "images", "gt_dense_cameras"),
    "entry": Dataset("entry", "strecha_entry-P10", "images", "gt_dense_cameras"),
    "castle": Dataset("castle", "strecha_castle-P19", "images", "gt_dense_cameras"),
    "temple": Dataset("temple", "middlebury_templeRing", "", "templeR_par.txt"),
}


def image_paths(folder: Path) -> list[Path]:
    from geomvision.io.images import list_images

    return list_images(folder)


def load_gt(ds: Dataset, names: list[str], image_dir: Path):
    from geomvision.evaluation import load_ground_truth
    from geomvision.io.images import image_size

    sizes = {p.name: image_size(p) for p in image_paths(image_dir) if p.name in names}
    gt = load_ground_truth(SHARED / ds.folder / ds.gt, image_sizes=sizes)
    return {n: gt[n] for n in names if n in gt}


def link_subset(image_dir: Path, names: list[str], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        os.symlink(image_dir / n, dest / n)
    return dest


# --- geomvision -----------------------------------------------------------------------------------
def run_geomvision(image_dir: Path, out: Path, intrinsics, pairing="exhaustive", seed=0):
    config = common.pipeline_config(intrinsics, seed=seed, pipeline={"pairing": pairing})
    result, seconds, error = common.run_pipeline_timed(image_dir, out, config)
    if result is None:
        return None, seconds, {"error": error}
    return result.reconstruction, seconds, result.report["timings_s"]


# --- pycolmap -------------------------------------------------------------------------------------
def run_pycolmap(image_dir: Path, work: Path, intrinsics):
    import pycolmap

    from geomvision.io.colmap import read_model

    work.mkdir(parents=True, exist_ok=True)
    db = work / "database.db"
    reader, extraction, matching = common.pycolmap_options(intrinsics)
    mapper = pycolmap.IncrementalPipelineOptions()
    mapper.num_threads = 2
    mapper.random_seed = 0
    if intrinsics is not None:
        mapper.ba_refine_focal_length = False
        mapper.ba_refine_extra_params = False
        mapper.ba_refine_principal_point = False
    timings = {}
    t0 = time.perf_counter()
    common.pycolmap_extract(db, image_dir, extraction, reader)
    timings["features"] = time.perf_counter() - t0
    t = time.perf_counter()
    pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
    timings["matching+verification"] = time.perf_counter() - t
    t = time.perf_counter()
    maps = pycolmap.incremental_mapping(db, image_dir, work / "sparse", options=mapper)
    timings["mapping"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    if not maps:
        return None, total, timings
    best = max(maps.values(), key=lambda r: r.num_reg_images())
    text_dir = work / "best_text"
    text_dir.mkdir(exist_ok=True)
    best.write_text(str(text_dir))
    return read_model(text_dir), total, timings


def score(rec, gt) -> dict:
    from geomvision.evaluation import evaluate_reconstruction

    if rec is None:
        return {
            "auc@1": 0.0,
            "auc@2": 0.0,
            "auc@5": 0.0,
            "auc@10": 0.0,
            "num_registered": 0,
            "mean_reprojection_error_px": float("nan"),
        }
    metrics = evaluate_reconstruction(rec, gt, include_per_image=False)
    metrics["mean_reprojection_error_px"] = rec.mean_reprojection_error_px()
    return metrics


def known_intrinsics(gt) -> tuple[float, float, float, float]:
    K = next(iter(gt.values())).K
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])


# --- tables ---------------------------------------------------------------------------------------
def compare(datasets: list[str], modes: list[str], work: Path) -> list[dict]:
    rows = []
    for key in datasets:
        ds = DATASETS[key]
        image_dir = SHARED / ds.folder / ds.images
        names = [p.name for p in image_paths(image_dir)]
        gt = load_gt(ds, names, image_dir)
        for mode in modes:
            intr = known_intrinsics(gt) if mode == "known" else None
            rec_g, t_g, tim_g = run_geomvision(image_dir, work / f"gv_{key}_{mode}", intr)
            rec_c, t_c, tim_c = run_pycolmap(image_dir, work / f"colmap_{key}_{mode}", intr)
            s_g, s_c = score(rec_g, gt), score(rec_c, gt)
            row = {
                "dataset": key,
                "intrinsics": mode,
                "images": len(names),
                "geomvision": {**_brief(s_g), "time_s": t_g, "timings_s": tim_g},
                "pycolmap": {**_brief(s_c), "time_s": t_c, "timings_s": tim_c},
                "time_ratio": t_g / t_c,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _brief(s: dict) -> dict:
    keys = (
        "auc@1",
        "auc@2",
        "auc@5",
        "auc@10",
        "num_registered",
        "mean_reprojection_error_px",
        "median_rotation_error_deg",
        "median_translation_error_deg",
    )
    return {k: s.get(k) for k in keys}


def scaling(work: Path, sizes=(8, 16, 32, 47), pairings=("sequential", "retrieval")) -> list[dict]:
    ds = DATASETS["temple"]
    image_dir = SHARED / ds.folder
    all_names = [p.name for p in image_paths(image_dir)]
    rows = []
    for n in sizes:
        names = all_names[:n]
        subset = link_subset(image_dir, names, work / f"temple_{n}")
        gt = load_gt(ds, names, image_dir)
        for pairing in pairings:
            rec, t, tim = run_geomvision(
                subset, work / f"gv_temple_{n}_{pairing}", known_intrinsics(gt), pairing
            )
            s = score(rec, gt)
            row = {"images": n, "pairing": pairing, "time_s": t, "timings_s": tim, **_brief(s)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def write_markdown(rows: list[dict], scale_rows: list[dict], path: Path) -> None:
    lines = [
        "# End-to-end reconstruction: geomvision vs pycolmap",
        "",
        f"Run {date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores); "
        "both tools limited to 2 threads/workers, SIFT up to 8192 features, exhaustive pairs, same process. "
        "AUC of the pairwise relative pose error (max of rotation and translation-direction error, "
        "unregistered = 180 deg), via `geomvision.evaluation` (same numbers as `geomvision evaluate`).",
        "",
        "| dataset | K | images | tool | registered | AUC@1 | AUC@2 | AUC@5 | AUC@10 | mean reproj px | time s | time ratio gv/colmap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for tool in ("geomvision", "pycolmap"):
            s = r[tool]
            ratio = f"{r['time_ratio']:.2f}" if tool == "geomvision" else ""
            lines.append(
                f"| {r['dataset']} | {r['intrinsics']} | {r['images']} | {tool} | {s['num_registered']} | "
                f"{_f(s['auc@1'])} | {_f(s['auc@2'])} | {_f(s['auc@5'])} | {_f(s['auc@10'])} | "
                f"{_f(s['mean_reprojection_error_px'])} | {s['time_s']:.1f} | {ratio} |"
            )
    if scale_rows:
        lines += [
            "",
            "## geomvision time versus number of images (templeRing, known K)",
            "",
            "| images | pairing | registered | AUC@2 | time s | features | matching | verification | mapping |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scale_rows:
            t = r["timings_s"]
            lines.append(
                f"| {r['images']} | {r['pairing']} | {r['num_registered']} | {_f(r['auc@2'])} | {r['time_s']:.1f} | "
                + " | ".join(_f(t.get(k)) for k in ("features", "matching", "verification", "mapping"))
                + " |"
            )
    common.write_lines(path, lines)


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--datasets", default="fountain,entry,castle,temple")
    parser.add_argument("--modes", default="unknown,known")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--sizes", default="8,16,32,47")
    parser.add_argument("--keep", help="keep work folders here")
    parser.add_argument("--output", default=str(RESULTS / "reconstruct.md"))
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"shared datasets not found at {SHARED}", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gv_bench_"))
    try:
        rows = [] if args.no_compare else compare(args.datasets.split(","), args.modes.split(","), work)
        sizes = tuple(int(s) for s in args.sizes.split(","))
        scale_rows = [] if args.no_scaling else scaling(work, sizes)
        write_markdown(rows, scale_rows, Path(args.output))
        json_path = Path(args.output).with_suffix(".json")
        json_path.write_text(json.dumps({"compare": rows, "scaling": scale_rows}, indent=1, default=str))
        print(f"wrote {args.output}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
